//! The Bolt transport (and the graph sink over it) against a fake Bolt 4.4
//! server ([`fake_bolt`]) that fails on cue: what a real server cannot be
//! made to do on demand. A refused statement rolls back and is permanent, a
//! transient code and a dropped connection are retried on a new connection,
//! a multi-column read is refused. Everything else (statements, parameters,
//! transactions, reads, the checkpoint) runs against a real Neo4j in the
//! workspace's `tests/graph_sink.rs`.

mod fake_bolt;

use std::collections::BTreeMap;
use std::time::Duration;

use fake_bolt::{FakeBolt, Outcome, Request, Value};
use pgfanout_core::{ErrorKind, Lsn, Sink};
use pgfanout_sink_graph::bolt::BoltTransport;
use pgfanout_sink_graph::encode::Statement;
use pgfanout_sink_graph::{GraphSink, GraphSinkConfig};

const TIMEOUT: Duration = Duration::from_secs(5);

fn transport(server: &FakeBolt) -> BoltTransport {
    BoltTransport::new(&server.url, Some("neo4j"), Some("secret"), None, TIMEOUT, None)
        .expect("a transport for the fake server")
}

fn config(server: &FakeBolt) -> GraphSinkConfig {
    let text = format!(
        r#"
name = "graph"
transport = "bolt"
url = "{}"
response_timeout_ms = 5000
[[table]]
source = "public.users"
label = "User"
[[table]]
source = "public.reservations"
label = "Reservation"
relationships = [{{ column = "guest_id", type = "BOOKED_BY", to = "User" }}]
"#,
        server.url
    );
    let config: GraphSinkConfig = toml::from_str(&text).expect("the test config parses");
    config.validate().expect("the test config is valid");
    config
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> BTreeMap<String, Value> {
    entries.into_iter().map(|(key, value)| (key.to_owned(), value)).collect()
}

/// `DISCARD` of the whole result of the last query, as `neo4rs` pipelines
/// it behind a `RUN` it does not read.
fn discard_all() -> Request {
    Request::Discard(map([("n", Value::Int(-1)), ("qid", Value::Int(-1))]))
}

#[test]
fn the_fake_servers_packstream_round_trips_every_marker_width() {
    let text_300 = "x".repeat(300);
    let values = [
        (Value::Int(-16), vec![0xF0]),
        (Value::Int(-17), vec![0xC8, 0xEF]),
        (Value::Int(127), vec![0x7F]),
        (Value::Int(128), vec![0xC9, 0x00, 0x80]),
        (Value::Int(-32_769), vec![0xCA, 0xFF, 0xFF, 0x7F, 0xFF]),
        (Value::Int(1 << 40), vec![0xCB, 0, 0, 0x01, 0, 0, 0, 0, 0]),
        (Value::Float(1.5), vec![0xC1, 0x3F, 0xF8, 0, 0, 0, 0, 0, 0]),
        (Value::string("é"), vec![0x82, 0xC3, 0xA9]),
        (Value::List(vec![Value::Null, Value::Bool(true)]), vec![0x92, 0xC0, 0xC3]),
        (Value::map([("a", Value::Int(1))]), vec![0xA1, 0x81, b'a', 0x01]),
        (Value::Struct(0x70, vec![Value::map([])]), vec![0xB1, 0x70, 0xA0]),
        (Value::Bytes(vec![1, 2]), vec![0xCC, 0x02, 1, 2]),
    ];
    for (value, bytes) in values {
        let mut encoded = Vec::new();
        fake_bolt::encode(&value, &mut encoded);
        assert_eq!(encoded, bytes, "{value:?}");
        assert_eq!(fake_bolt::decode(&mut encoded.as_slice()), Some(value));
    }
    let long = Value::String(text_300.clone());
    let mut encoded = Vec::new();
    fake_bolt::encode(&long, &mut encoded);
    assert_eq!(encoded[..3], [0xD1, 0x01, 0x2C], "a 300-byte string has a 16-bit size");
    assert_eq!(fake_bolt::decode(&mut encoded.as_slice()), Some(long));
    assert_eq!(fake_bolt::decode(&mut &[0xD0, 0x05, b'a'][..]), None, "a truncated string is not a value");
}

fn two_statements() -> Vec<Statement> {
    ["MERGE (n:`User` {`id`: 1})", "MERGE (n:`User` {`id`: 2})"]
        .into_iter()
        .map(|cypher| Statement { cypher: cypher.into(), params: vec![] })
        .collect()
}

#[tokio::test]
async fn a_failure_reply_is_permanent_rolls_back_and_leaves_the_connection_usable() {
    let server = FakeBolt::start().await;
    let bolt = transport(&server);
    server.script(
        "{`id`: 1}",
        Outcome::Fail {
            code: "Neo.ClientError.Schema.ConstraintValidationFailed",
            message: "Node(0) already exists with label `User` and property `id` = 1",
        },
    );

    let err = bolt.run_all(&two_statements()).await.expect_err("the server refused the statement");

    assert!(!err.is_retriable(), "a refused statement is not retried: {err}");
    let message = err.to_string();
    assert!(message.contains("Neo.ClientError.Schema.ConstraintValidationFailed"), "{message}");
    assert!(message.contains("MERGE (n:`User` {`id`: 1})"), "names the statement: {message}");
    let work = server.work();
    assert_eq!(work.len(), 4, "{work:?}");
    assert_eq!(work[0], Request::Begin(BTreeMap::new()));
    assert!(matches!(&work[1], Request::Run { query, .. } if query.contains("{`id`: 1}")));
    assert_eq!(work[2], discard_all());
    assert_eq!(work[3], Request::Rollback, "the second statement is not sent, nothing is committed");

    // The pool resets the failed connection and the next batch commits on it.
    server.clear_log();
    bolt.run_all(&two_statements()).await.expect("the next batch runs");
    let log = server.log();
    assert_eq!(log.first().map(|(_, request)| request), Some(&Request::Reset), "{log:?}");
    assert!(log.iter().all(|(connection, _)| *connection == 1), "one connection throughout: {log:?}");
    assert_eq!(log.last().map(|(_, request)| request), Some(&Request::Commit));
}

#[tokio::test]
async fn the_sink_reports_a_refused_batch_as_permanent() {
    let server = FakeBolt::start().await;
    let sink = GraphSink::new(config(&server)).expect("the sink builds");
    server
        .script("SET c.lsn", Outcome::Fail { code: "Neo.ClientError.Statement.SyntaxError", message: "Invalid input" });

    let err = sink.apply(&[], Some(Lsn(0x20))).await.expect_err("the checkpoint was refused");

    assert_eq!(err.kind, ErrorKind::Permanent, "{err:?}");
    assert!(!server.work().contains(&Request::Commit));
}

#[tokio::test]
async fn a_transient_failure_code_is_retried() {
    let server = FakeBolt::start().await;
    let bolt = transport(&server);
    server.script(
        "{`id`: 2}",
        Outcome::Fail {
            code: "Neo.TransientError.Transaction.DeadlockDetected",
            message: "ForsetiClient can't acquire ExclusiveLock",
        },
    );

    let err = bolt.run_all(&two_statements()).await.expect_err("the server failed the transaction");

    assert!(err.is_retriable(), "a deadlock is worth another try: {err}");
    assert!(!server.work().contains(&Request::Commit));
}

#[tokio::test]
async fn a_dropped_connection_is_transient_and_the_next_batch_reconnects() {
    let server = FakeBolt::start().await;
    let sink = GraphSink::new(config(&server)).expect("the sink builds");
    server.script("{`id`: 2}", Outcome::Hangup);
    let bolt = transport(&server);

    let err = bolt.run_all(&two_statements()).await.expect_err("the server hung up");
    assert!(err.is_retriable(), "a lost connection is retried: {err}");

    server.script("SET c.lsn", Outcome::Hangup);
    let err = sink.apply(&[], Some(Lsn(0x30))).await.expect_err("the server hung up");
    assert_eq!(err.kind, ErrorKind::Transient, "{err:?}");

    server.clear_log();
    bolt.run_all(&two_statements()).await.expect("the next batch runs on a new connection");
    let log = server.log();
    assert!(log.iter().all(|(connection, _)| *connection == 3), "a third connection: {log:?}");
    assert!(matches!(log.first(), Some((_, Request::Hello(_)))), "{log:?}");
    assert_eq!(log.last().map(|(_, request)| request), Some(&Request::Commit));
}

#[tokio::test]
async fn a_result_with_several_columns_is_refused_not_read_in_hash_order() {
    let server = FakeBolt::start().await;
    let bolt = transport(&server);
    server.script(
        "RETURN",
        Outcome::Rows { fields: vec!["a", "b"], rows: vec![vec![Value::string("first"), Value::string("second")]] },
    );
    let statement = Statement { cypher: "MATCH (n) RETURN n.a AS a, n.b AS b".into(), params: vec![] };

    let err = bolt.query_first_column(&statement).await.expect_err("two columns are ambiguous");

    assert!(!err.is_retriable());
    assert!(err.to_string().contains("2 columns"), "{err}");
}
