//! The replication connection against the local stack's PostgreSQL 15:
//! authentication methods, socket kinds, slot commands and a short stream
//! whose confirmation must reach `pg_replication_slots`.
//!
//! Needs `PGFANOUT_TEST_PG_URL` (a trusted superuser over TCP) and
//! `PGFANOUT_TEST_PG_SOCKET_DIR`; `make test` provides both.

mod common;

use std::time::Duration;

use pg_replication::{
    ConnectOptions, ReplicationConnection, ReplicationError, ReplicationEvent, StartOptions, StreamSettings,
};
use pgoutput::{Decoder, Lsn, PgOutputMessage, TupleColumn};

use common::{admin, confirmed_flush, create_role, database_with_table, required_env, with_database};

fn tcp_address() -> String {
    let url = required_env("PGFANOUT_TEST_PG_URL");
    let after_at = url.split_once('@').map(|(_, rest)| rest).expect("PGFANOUT_TEST_PG_URL has a user");
    after_at.split('/').next().unwrap().to_owned()
}

async fn system_identifier() -> String {
    let client = admin("postgres").await;
    let row = client.query_one("SELECT system_identifier::text FROM pg_control_system()", &[]).await.unwrap();
    row.get(0)
}

#[tokio::test]
async fn scram_user_authenticates_and_identifies_the_system() {
    create_role("pgfanout_scram", "s3cret pass", "REPLICATION", "scram-sha-256").await;
    let url = format!("postgres://pgfanout_scram@{}/postgres", tcp_address());
    let options = ConnectOptions::parse(&url).unwrap().with_password("s3cret pass");
    let mut connection = ReplicationConnection::connect(&options).await.expect("SCRAM login");
    assert!(connection.server_version() >= 150000, "server_version {}", connection.server_version());

    let identity = connection.identify_system().await.unwrap();
    assert_eq!(identity.system_id, system_identifier().await);
    assert_eq!(identity.database.as_deref(), Some("postgres"));
    assert!(identity.timeline >= 1);
    assert!(identity.xlog_position > Lsn::ZERO);
    connection.close().await.unwrap();
}

#[tokio::test]
async fn md5_user_authenticates() {
    // pg_hba.conf of the stack puts this role (only) on md5.
    create_role("pgfanout_md5", "md5 pass", "REPLICATION", "md5").await;
    let url = format!("postgres://pgfanout_md5:md5%20pass@{}/postgres", tcp_address());
    let mut connection =
        ReplicationConnection::connect(&ConnectOptions::parse(&url).unwrap()).await.expect("md5 login");
    assert_eq!(connection.identify_system().await.unwrap().system_id, system_identifier().await);
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_that_says_what_to_check() {
    create_role("pgfanout_wrongpw", "right", "REPLICATION", "scram-sha-256").await;
    let url = format!("postgres://pgfanout_wrongpw@{}/postgres", tcp_address());
    let options = ConnectOptions::parse(&url).unwrap().with_password("wrong");
    let err = ReplicationConnection::connect(&options).await.err().expect("a wrong password must not log in");
    match &err {
        ReplicationError::Auth { user, reason } => {
            assert_eq!(user, "pgfanout_wrongpw");
            assert!(reason.contains("28P01"), "reason names the server's SQLSTATE: {reason}");
            assert!(reason.contains("password"), "reason says what to check: {reason}");
        }
        other => panic!("expected an Auth error, got {other:?}"),
    }
    assert!(!err.is_transient(), "retrying a wrong password cannot help");

    let no_password = ConnectOptions::parse(&url).unwrap();
    match ReplicationConnection::connect(&no_password).await.err() {
        Some(ReplicationError::Auth { reason, .. }) => {
            assert!(reason.contains("PGFANOUT_SOURCE__PASSWORD"), "{reason}")
        }
        other => panic!("expected an Auth error asking for a password, got {other:?}"),
    }
}

#[tokio::test]
async fn role_without_replication_is_told_to_grant_it() {
    create_role("pgfanout_norepl", "pw", "", "scram-sha-256").await;
    let url = format!("postgres://pgfanout_norepl@{}/postgres", tcp_address());
    let options = ConnectOptions::parse(&url).unwrap().with_password("pw");
    match ReplicationConnection::connect(&options).await.err() {
        Some(ReplicationError::Auth { reason, .. }) => assert!(reason.contains("REPLICATION"), "{reason}"),
        other => panic!("expected an Auth error about the REPLICATION attribute, got {other:?}"),
    }
}

#[tokio::test]
async fn unix_socket_connects_with_trust() {
    let socket_dir = required_env("PGFANOUT_TEST_PG_SOCKET_DIR");
    let port = required_env("PGFANOUT_TEST_PG_PORT");
    let options =
        ConnectOptions::parse(&format!("host={socket_dir} port={port} user=postgres dbname=postgres")).unwrap();
    assert!(options.endpoint().ends_with(&format!(".s.PGSQL.{port}")), "{}", options.endpoint());
    let mut connection = ReplicationConnection::connect(&options).await.expect("unix socket login");
    assert_eq!(connection.identify_system().await.unwrap().system_id, system_identifier().await);
}

#[tokio::test]
async fn unreachable_server_is_a_transient_io_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let options = ConnectOptions::parse(&format!("postgres://postgres@127.0.0.1:{port}/postgres")).unwrap();
    let err = ReplicationConnection::connect(&options).await.err().expect("nothing listens there");
    assert!(matches!(err, ReplicationError::Io { .. }), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn stream_delivers_a_transaction_and_confirmation_reaches_the_slot() {
    let sql = database_with_table("replication_client_stream", "client_test").await;
    let url = with_database(&required_env("PGFANOUT_TEST_PG_URL"), "replication_client_stream");
    let options = ConnectOptions::parse(&url).unwrap();

    let mut connection = ReplicationConnection::connect(&options).await.unwrap();
    assert_eq!(connection.slot_state("client_stream").await.unwrap(), None);
    let created = connection.create_slot("client_stream").await.unwrap();
    assert!(created.consistent_point > Lsn::ZERO);
    let state = connection.slot_state("client_stream").await.unwrap().expect("slot exists after creation");
    assert_eq!(state.plugin.as_deref(), Some("pgoutput"));
    assert!(!state.active);
    let creating_again = connection.create_slot("client_stream").await.expect_err("the slot exists");
    assert_eq!(creating_again.sqlstate(), Some("42710"), "{creating_again}");

    sql.batch_execute("INSERT INTO cities VALUES (1, 'Lisbon'), (2, 'Porto')").await.unwrap();

    // A 1 s status interval: the server's keepalives and our timer both run
    // several times during the test.
    let settings = StreamSettings { status_interval: Duration::from_secs(1), ..StreamSettings::default() };
    let mut stream = connection
        .start_replication("client_stream", Lsn::ZERO, &StartOptions::new("client_test"), settings)
        .await
        .unwrap();
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
            PgOutputMessage::Relation(relation) => assert_eq!(relation.name, "cities"),
            PgOutputMessage::Insert(insert) => match &insert.new_tuple.columns[1] {
                TupleColumn::Text(name) => names.push(String::from_utf8(name.to_vec()).unwrap()),
                other => panic!("expected a text column, got {other:?}"),
            },
            PgOutputMessage::Commit(commit) => break commit.end_lsn,
            _ => {}
        }
    };
    assert_eq!(names, ["Lisbon", "Porto"]);

    let before = confirmed_flush(&sql, "client_stream").await.unwrap();
    assert!(before < commit_end, "nothing confirmed yet, so the slot is still before the commit");
    stream.feedback().confirm(commit_end);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Keep reading so keepalives are answered while we wait.
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.next_event()).await;
        if confirmed_flush(&sql, "client_stream").await == Some(commit_end) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the confirmation never reached pg_replication_slots");
    }
    stream.stop().await.unwrap();

    // The slot is released by the clean stop and can be dropped.
    let mut connection = ReplicationConnection::connect(&options).await.unwrap();
    let state = connection.slot_state("client_stream").await.unwrap().unwrap();
    assert_eq!(state.confirmed_flush_lsn, Some(commit_end));
    connection.drop_slot("client_stream", true).await.unwrap();
    assert_eq!(connection.slot_state("client_stream").await.unwrap(), None);
}
