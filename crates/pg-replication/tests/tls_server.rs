//! TLS against the local stack's PostgreSQL 15: every `sslmode`, certificate
//! checks that must pass and must fail, SCRAM-SHA-256-PLUS channel binding,
//! a client certificate, and a whole replication stream over TLS. A few
//! fake servers cover answers to `SSLRequest` a healthy PostgreSQL never gives.
//!
//! The first test to run turns TLS on in the stack's server (see
//! [`server_pki`]): it writes a fresh CA-signed certificate into the data
//! directory (`PGFANOUT_TEST_PG_DATA`), sets `ssl = on` and reloads. Plain
//! connections keep working (the `host` lines of pg_hba.conf match both), so
//! the other test files are unaffected. Test binaries run one after the
//! other, so no two processes rewrite the certificate at the same time.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{admin, create_role, database_with_table, pg_port, required_env, wait_until};
use pg_replication::{
    ConnectOptions, ReplicationConnection, ReplicationError, ReplicationEvent, SslMode, StartOptions, StreamSettings,
};
use pgoutput::{Decoder, Lsn, PgOutputMessage, TupleColumn};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::OnceCell;

/// The role that logs in with a client certificate (its CN) and nothing else.
const CERT_ROLE: &str = "pgfanout_tls_cert";
/// Put first in pg_hba.conf so it wins over the catch-all scram line.
const CERT_HBA_LINE: &str = "hostssl all pgfanout_tls_cert 127.0.0.1/32 cert";

/// Files the tests hand to the client.
struct Pki {
    /// The CA that signed the server's certificate (SANs `localhost`, `127.0.0.1`).
    ca: PathBuf,
    /// A CA that signed nothing the server shows.
    unrelated_ca: PathBuf,
    /// Certificate and key for [`CERT_ROLE`], signed by `ca`.
    client_cert: PathBuf,
    client_key: PathBuf,
}

static SERVER_PKI: OnceCell<Pki> = OnceCell::const_new();

/// Turns TLS on in the stack's server once per test process, however many
/// tests ask at the same time.
async fn server_pki() -> &'static Pki {
    SERVER_PKI.get_or_init(enable_server_tls).await
}

fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Writes a file the server (running as the data directory's owner) must
/// read: same owner, `mode`, and renamed into place so a concurrent reload
/// never sees half a file.
fn write_server_file(data_dir: &Path, name: &str, contents: &str, mode: u32) {
    let owner = std::fs::metadata(data_dir).expect("PGFANOUT_TEST_PG_DATA exists");
    let staging = data_dir.join(format!("{name}.{}.tmp", std::process::id()));
    std::fs::write(&staging, contents).unwrap();
    std::os::unix::fs::chown(&staging, Some(owner.uid()), Some(owner.gid())).unwrap();
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&staging, data_dir.join(name)).unwrap();
}

async fn enable_server_tls() -> Pki {
    let data_dir = PathBuf::from(required_env("PGFANOUT_TEST_PG_DATA"));
    let ca = certificate_authority("pgfanout test CA");
    let unrelated_ca = certificate_authority("pgfanout unrelated CA");

    let server_key = KeyPair::generate().unwrap();
    let mut server_params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    server_params.distinguished_name.push(DnType::CommonName, "localhost");
    let server_cert = server_params.signed_by(&server_key, &ca).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params.distinguished_name.push(DnType::CommonName, CERT_ROLE);
    let client_cert = client_params.signed_by(&client_key, &ca).unwrap();

    write_server_file(&data_dir, "server.crt", &server_cert.pem(), 0o644);
    write_server_file(&data_dir, "server.key", &server_key.serialize_pem(), 0o600);
    write_server_file(&data_dir, "pgfanout-test-ca.crt", &ca.pem(), 0o644);
    let hba = std::fs::read_to_string(data_dir.join("pg_hba.conf")).unwrap();
    if !hba.lines().any(|line| line == CERT_HBA_LINE) {
        write_server_file(&data_dir, "pg_hba.conf", &format!("{CERT_HBA_LINE}\n{hba}"), 0o600);
    }

    // Next to the data directory, inside the stack's folder, so the files go when the stack does.
    let client_dir = data_dir.parent().unwrap_or(&data_dir).join(format!("tls-test-client-{}", std::process::id()));
    std::fs::create_dir_all(&client_dir).unwrap();
    let pki = Pki {
        ca: client_dir.join("ca.pem"),
        unrelated_ca: client_dir.join("unrelated-ca.pem"),
        client_cert: client_dir.join("client.pem"),
        client_key: client_dir.join("client.key"),
    };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(&pki.unrelated_ca, unrelated_ca.pem()).unwrap();
    std::fs::write(&pki.client_cert, client_cert.pem()).unwrap();
    std::fs::write(&pki.client_key, client_key.serialize_pem()).unwrap();

    let postgres = admin("postgres").await;
    // ALTER SYSTEM cannot share an implicit transaction with other statements.
    for statement in [
        "ALTER SYSTEM SET ssl = on",
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "ALTER SYSTEM SET ssl_ca_file = 'pgfanout-test-ca.crt'",
    ] {
        postgres.batch_execute(statement).await.unwrap();
    }
    postgres.query_one("SELECT pg_reload_conf()", &[]).await.unwrap();

    // The reload is asynchronous, and an earlier run may have left TLS on
    // with another CA: wait until a new session sees ssl on and the server
    // shows the certificate just written.
    wait_until(Duration::from_secs(20), "a new session reports ssl = on", || async {
        let row = admin("postgres").await.query_one("SHOW ssl", &[]).await.unwrap();
        row.get::<_, String>(0) == "on"
    })
    .await;
    let verified = tls_options(&format!("sslmode=verify-full sslrootcert='{}'", pki.ca.display()));
    wait_until(Duration::from_secs(20), "the server presents the new certificate", || async {
        ReplicationConnection::connect(&verified).await.is_ok()
    })
    .await;
    pki
}

/// Options for the stack's trusted superuser over TCP, plus `extra` settings.
fn tls_options(extra: &str) -> ConnectOptions {
    ConnectOptions::parse(&format!("host=127.0.0.1 port={} user=postgres dbname=postgres {extra}", pg_port())).unwrap()
}

async fn backend_pid(connection: &mut ReplicationConnection) -> i32 {
    let result = connection.simple_query("SELECT pg_backend_pid() AS pid").await.unwrap();
    result.get(0, "pid").unwrap().parse().unwrap()
}

/// `pg_stat_ssl.ssl` and `version` for a backend, as the server sees it.
async fn server_side_tls(pid: i32) -> (bool, Option<String>) {
    let row = admin("postgres")
        .await
        .query_one("SELECT ssl, version FROM pg_stat_ssl WHERE pid = $1", &[&pid])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn tls_reason(result: Result<ReplicationConnection, ReplicationError>) -> String {
    match result {
        Err(err @ ReplicationError::Tls { .. }) => {
            assert!(!err.is_transient(), "a certificate verdict does not change by retrying: {err}");
            err.to_string()
        }
        Err(other) => panic!("expected a TLS error, got {other:?}"),
        Ok(_) => panic!("expected a TLS error, but the connection succeeded"),
    }
}

#[tokio::test]
async fn require_encrypts_and_the_server_sees_it() {
    server_pki().await;
    let mut connection = ReplicationConnection::connect(&tls_options("sslmode=require")).await.unwrap();
    assert!(connection.uses_tls());
    let (ssl, version) = server_side_tls(backend_pid(&mut connection).await).await;
    assert!(ssl, "pg_stat_ssl shows the replication backend as encrypted");
    assert!(version.unwrap_or_default().starts_with("TLSv1."));
    // The session works as before over TLS.
    assert!(connection.identify_system().await.unwrap().xlog_position > Lsn::ZERO);
    connection.close().await.unwrap();
}

#[tokio::test]
async fn verify_full_accepts_the_signing_ca_by_address_and_by_name() {
    let pki = server_pki().await;
    for host in ["127.0.0.1", "localhost"] {
        let options = ConnectOptions::parse(&format!(
            "postgres://postgres@{host}:{}/postgres?sslmode=verify-full&sslrootcert={}",
            pg_port(),
            pki.ca.display()
        ))
        .unwrap();
        assert_eq!(options.ssl_mode(), SslMode::VerifyFull);
        let mut connection = ReplicationConnection::connect(&options).await.unwrap_or_else(|e| panic!("{host}: {e}"));
        assert!(connection.uses_tls());
        assert!(server_side_tls(backend_pid(&mut connection).await).await.0);
    }
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_from_another_ca() {
    let pki = server_pki().await;
    let options = tls_options(&format!("sslmode=verify-full sslrootcert='{}'", pki.unrelated_ca.display()));
    let reason = tls_reason(ReplicationConnection::connect(&options).await);
    assert!(reason.contains("not signed by a CA"), "{reason}");
    assert!(reason.contains(&pki.unrelated_ca.display().to_string()), "names the file: {reason}");
    assert!(reason.contains("sslmode=verify-full"), "{reason}");
}

#[tokio::test]
async fn verify_full_refuses_a_host_name_the_certificate_does_not_list() {
    let pki = server_pki().await;
    // hostaddr connects to the server while host is what the certificate must name.
    let wrong_name = format!(
        "host=db.invalid hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslrootcert='{}'",
        pg_port(),
        pki.ca.display()
    );
    let options = ConnectOptions::parse(&format!("{wrong_name} sslmode=verify-full")).unwrap();
    let reason = tls_reason(ReplicationConnection::connect(&options).await);
    assert!(reason.contains("\"db.invalid\"") && reason.contains("verify-ca"), "{reason}");

    // verify-ca checks the chain only, so the same server passes.
    let options = ConnectOptions::parse(&format!("{wrong_name} sslmode=verify-ca")).unwrap();
    let connection = ReplicationConnection::connect(&options).await.expect("verify-ca ignores the host name");
    assert!(connection.uses_tls());

    // libpq: require with a root certificate behaves like verify-ca.
    let options = ConnectOptions::parse(&format!("{wrong_name} sslmode=require")).unwrap();
    assert!(ReplicationConnection::connect(&options).await.unwrap().uses_tls());
}

#[tokio::test]
async fn require_with_a_root_certificate_checks_the_chain() {
    let pki = server_pki().await;
    let options = tls_options(&format!("sslmode=require sslrootcert='{}'", pki.unrelated_ca.display()));
    let reason = tls_reason(ReplicationConnection::connect(&options).await);
    assert!(reason.contains("sslmode=require"), "{reason}");
}

#[tokio::test]
async fn prefer_uses_tls_and_disable_does_not() {
    server_pki().await;
    let default_options = tls_options("");
    assert_eq!(default_options.ssl_mode(), SslMode::Prefer, "prefer is the default, as in libpq");
    let mut preferring = ReplicationConnection::connect(&default_options).await.unwrap();
    assert!(preferring.uses_tls());
    assert!(server_side_tls(backend_pid(&mut preferring).await).await.0);

    let mut plain = ReplicationConnection::connect(&tls_options("sslmode=disable")).await.unwrap();
    assert!(!plain.uses_tls());
    assert!(!server_side_tls(backend_pid(&mut plain).await).await.0, "pg_stat_ssl shows a plain backend");
}

#[tokio::test]
async fn prefer_falls_back_to_plain_when_the_certificate_check_fails() {
    // libpq retries without TLS when the handshake fails under prefer.
    let pki = server_pki().await;
    let options = tls_options(&format!("sslmode=prefer sslrootcert='{}'", pki.unrelated_ca.display()));
    let mut connection = ReplicationConnection::connect(&options).await.expect("plain retry");
    assert!(!connection.uses_tls());
    assert!(!server_side_tls(backend_pid(&mut connection).await).await.0);
}

#[tokio::test]
async fn unix_sockets_ignore_sslmode_like_libpq() {
    let pki = server_pki().await;
    let options = ConnectOptions::parse(&format!(
        "host={} port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{}'",
        required_env("PGFANOUT_TEST_PG_SOCKET_DIR"),
        pg_port(),
        pki.ca.display()
    ))
    .unwrap();
    let mut connection = ReplicationConnection::connect(&options).await.unwrap();
    assert!(!connection.uses_tls());
    assert!(!server_side_tls(backend_pid(&mut connection).await).await.0);
}

#[tokio::test]
async fn scram_over_tls_binds_to_the_channel() {
    let pki = server_pki().await;
    create_role("pgfanout_tls_scram", "bound pass", "REPLICATION", "scram-sha-256").await;
    let url = |settings: &str| {
        ConnectOptions::parse(&format!(
            "host=localhost port={} user=pgfanout_tls_scram dbname=postgres sslrootcert='{}' {settings}",
            pg_port(),
            pki.ca.display()
        ))
        .unwrap()
        .with_password("bound pass")
    };

    // channel_binding=require only logs in through SCRAM-SHA-256-PLUS.
    let mut bound = ReplicationConnection::connect(&url("sslmode=verify-full channel_binding=require"))
        .await
        .expect("SCRAM-SHA-256-PLUS login");
    assert!(bound.uses_tls() && bound.channel_bound());
    assert!(server_side_tls(backend_pid(&mut bound).await).await.0);

    // The default (prefer) binds too when TLS is up; disable does not.
    assert!(ReplicationConnection::connect(&url("sslmode=require")).await.unwrap().channel_bound());
    let unbound = ReplicationConnection::connect(&url("sslmode=require channel_binding=disable")).await.unwrap();
    assert!(unbound.uses_tls() && !unbound.channel_bound());

    // Without TLS there is no channel to bind to.
    match ReplicationConnection::connect(&url("sslmode=disable channel_binding=require")).await.err() {
        Some(ReplicationError::Auth { reason, .. }) => assert!(reason.contains("needs TLS"), "{reason}"),
        other => panic!("expected an Auth error about TLS, got {other:?}"),
    }
}

#[tokio::test]
async fn channel_binding_require_refuses_methods_that_cannot_bind() {
    server_pki().await;
    // postgres logs in by trust: nothing proves the server knows the password.
    match ReplicationConnection::connect(&tls_options("sslmode=require channel_binding=require")).await.err() {
        Some(ReplicationError::Auth { reason, .. }) => assert!(reason.contains("trust"), "{reason}"),
        other => panic!("expected an Auth error about trust, got {other:?}"),
    }
    // pg_hba.conf of the stack keeps pgfanout_md5 on md5.
    create_role("pgfanout_md5", "md5 pass", "REPLICATION", "md5").await;
    let options = ConnectOptions::parse(&format!(
        "host=127.0.0.1 port={} user=pgfanout_md5 password='md5 pass' dbname=postgres sslmode=require channel_binding=require",
        pg_port()
    ))
    .unwrap();
    match ReplicationConnection::connect(&options).await.err() {
        Some(ReplicationError::Auth { reason, .. }) => assert!(reason.contains("md5"), "{reason}"),
        other => panic!("expected an Auth error about md5, got {other:?}"),
    }
}

#[tokio::test]
async fn client_certificate_logs_in_where_pg_hba_demands_one() {
    let pki = server_pki().await;
    // No password: the certificate's CN is the only credential.
    let postgres = admin("postgres").await;
    postgres.batch_execute(&format!("DROP ROLE IF EXISTS {CERT_ROLE}")).await.unwrap();
    postgres.batch_execute(&format!("CREATE ROLE {CERT_ROLE} LOGIN REPLICATION")).await.unwrap();
    let base = format!(
        "host=127.0.0.1 port={} user={CERT_ROLE} dbname=postgres sslmode=verify-full sslrootcert='{}'",
        pg_port(),
        pki.ca.display()
    );
    let with_cert = ConnectOptions::parse(&format!(
        "{base} sslcert='{}' sslkey='{}'",
        pki.client_cert.display(),
        pki.client_key.display()
    ))
    .unwrap();
    let mut connection = ReplicationConnection::connect(&with_cert).await.expect("certificate login");
    let pid = backend_pid(&mut connection).await;
    let row = postgres.query_one("SELECT client_dn FROM pg_stat_ssl WHERE pid = $1", &[&pid]).await.unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("/CN=pgfanout_tls_cert"));

    match ReplicationConnection::connect(&ConnectOptions::parse(&base).unwrap()).await.err() {
        Some(ReplicationError::Auth { reason, .. }) => assert!(reason.contains("28000"), "{reason}"),
        other => panic!("expected the server to refuse a login without certificate, got {other:?}"),
    }
}

#[tokio::test]
async fn stream_over_tls_delivers_and_confirms() {
    let pki = server_pki().await;
    let sql = database_with_table("tls_stream", "tls_pub").await;
    create_role("pgfanout_tls_stream", "stream pass", "REPLICATION", "scram-sha-256").await;
    let options = ConnectOptions::parse(&format!(
        "postgres://pgfanout_tls_stream@127.0.0.1:{}/tls_stream?sslmode=verify-full&sslrootcert={}&channel_binding=require",
        pg_port(),
        pki.ca.display()
    ))
    .unwrap()
    .with_password("stream pass");

    let mut connection = ReplicationConnection::connect(&options).await.unwrap();
    assert!(connection.channel_bound());
    connection.create_slot("tls_stream").await.unwrap();
    sql.batch_execute("INSERT INTO cities VALUES (1, 'Coimbra')").await.unwrap();

    let settings = StreamSettings { status_interval: Duration::from_secs(1), ..StreamSettings::default() };
    let mut stream =
        connection.start_replication("tls_stream", Lsn::ZERO, &StartOptions::new("tls_pub"), settings).await.unwrap();
    let mut decoder = Decoder::new(1);
    let mut names = Vec::new();
    let commit_end = loop {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.next_event())
            .await
            .expect("the transaction arrives")
            .unwrap()
            .expect("the stream stays open");
        let ReplicationEvent::XLogData { payload, .. } = event else { continue };
        match decoder.decode(payload).unwrap() {
            PgOutputMessage::Insert(insert) => match &insert.new_tuple.columns[1] {
                TupleColumn::Text(name) => names.push(String::from_utf8(name.to_vec()).unwrap()),
                other => panic!("expected a text column, got {other:?}"),
            },
            PgOutputMessage::Commit(commit) => break commit.end_lsn,
            _ => {}
        }
    };
    assert_eq!(names, ["Coimbra"]);

    stream.feedback().confirm(commit_end);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Keep reading so keepalives are answered (over TLS) while we wait.
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.next_event()).await;
        if common::confirmed_flush(&sql, "tls_stream").await == Some(commit_end) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the confirmation never reached pg_replication_slots");
    }
    stream.stop().await.unwrap();

    let mut connection = ReplicationConnection::connect(&options).await.unwrap();
    connection.drop_slot("tls_stream", true).await.unwrap();
}

/// A one-connection fake server: reads the 8-byte SSLRequest, sends `answer`,
/// then `after_plain` if the client goes on without TLS.
async fn fake_server(answer: Vec<u8>, after_plain: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0; 8];
        socket.read_exact(&mut request).await.unwrap();
        assert_eq!(request, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], "SSLRequest: length 8, code 80877103");
        socket.write_all(&answer).await.unwrap();
        if !after_plain.is_empty() {
            // Startup message: length-prefixed; then log the client straight in.
            let length = socket.read_u32().await.unwrap() as usize;
            let mut startup = vec![0; length - 4];
            socket.read_exact(&mut startup).await.unwrap();
            socket.write_all(&after_plain).await.unwrap();
        }
        // Hold the socket until the client is done with it.
        let _ = socket.read(&mut [0; 64]).await;
    });
    port
}

fn fake_options(port: u16, sslmode: &str) -> ConnectOptions {
    ConnectOptions::parse(&format!("host=127.0.0.1 port={port} user=u dbname=d sslmode={sslmode}")).unwrap()
}

#[tokio::test]
async fn server_without_tls_is_refused_under_require_and_used_plain_under_prefer() {
    let port = fake_server(b"N".to_vec(), Vec::new()).await;
    let reason = tls_reason(ReplicationConnection::connect(&fake_options(port, "require")).await);
    assert!(reason.contains("does not accept TLS") && reason.contains("sslmode=require"), "{reason}");

    // AuthenticationOk, then ReadyForQuery (idle).
    let logged_in = [&b"R"[..], &8u32.to_be_bytes(), &0u32.to_be_bytes(), b"Z", &5u32.to_be_bytes(), b"I"].concat();
    let port = fake_server(b"N".to_vec(), logged_in).await;
    let connection = ReplicationConnection::connect(&fake_options(port, "prefer")).await.unwrap();
    assert!(!connection.uses_tls());
}

#[tokio::test]
async fn error_response_to_ssl_request_is_a_server_error() {
    let mut body = Vec::new();
    for (field, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', "53300"), (b'M', "sorry, too many clients already")]
    {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let answer = [&b"E"[..], &(body.len() as u32 + 4).to_be_bytes(), &body].concat();
    let port = fake_server(answer, Vec::new()).await;
    let err = ReplicationConnection::connect(&fake_options(port, "require")).await.err().expect("refused");
    assert_eq!(err.sqlstate(), Some("53300"), "{err:?}");
    assert!(err.is_transient(), "too many connections passes");
}

#[tokio::test]
async fn other_answers_to_ssl_request_are_protocol_errors() {
    let port = fake_server(b"X".to_vec(), Vec::new()).await;
    match ReplicationConnection::connect(&fake_options(port, "prefer")).await.err() {
        Some(ReplicationError::Protocol(message)) => assert!(message.contains("0x58"), "{message}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}
