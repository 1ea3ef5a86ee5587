//! The Bolt transport (and the graph sink over it) against a fake Bolt 4.4
//! server ([`fake_bolt`]) that fails on cue: what a real server cannot be
//! made to do on demand. A refused statement rolls back (seen on the wire)
//! and is permanent, a transient code and a dropped connection are retried
//! on a new connection. Everything else (statements, parameters,
//! transactions, reads, the checkpoint, a multi-column read refused) runs
//! against a real Neo4j in the workspace's `tests/graph_sink.rs` and
//! `tests/graph_correctness.rs`.

mod fake_bolt;

use std::collections::BTreeMap;
use std::time::Duration;

use fake_bolt::{FakeBolt, Outcome, Request, Value};
use pgfanout_core::{ErrorKind, Lsn, Sink};
use pgfanout_sink_graph::bolt::{BoltTransport, MAX_COMBINED};
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

/// `count` statements merging users 1, 2, …
fn statements(count: usize) -> Vec<Statement> {
    (1..=count).map(|id| Statement { cypher: format!("MERGE (n:`User` {{`id`: {id}}})"), params: vec![] }).collect()
}

/// Statements enough for an explicit transaction (more than one combined
/// statement holds).
fn transaction_statements() -> Vec<Statement> {
    statements(MAX_COMBINED + 1)
}

#[tokio::test]
async fn a_few_statements_are_one_auto_commit_statement_all_or_nothing() {
    let server = FakeBolt::start().await;
    let bolt = transport(&server);
    server.script(
        "{`id`: 2}",
        Outcome::Fail {
            code: "Neo.ClientError.Schema.ConstraintValidationFailed",
            message: "Node(0) already exists with label `User` and property `id` = 2",
        },
    );

    let err = bolt.run_all(&statements(2)).await.expect_err("the server refused the statement");

    assert!(!err.is_retriable(), "a refused statement is not retried: {err}");
    let message = err.to_string();
    assert!(message.contains("2 statements in one, the first MERGE (n:`User` {`id`: 1})"), "{message}");
    let combined = "CALL { MERGE (n:`User` {`id`: 1}) } CALL { MERGE (n:`User` {`id`: 2}) }";
    let work = server.work();
    assert_eq!(work.len(), 2, "one RUN, no transaction around it: {work:?}");
    assert!(matches!(&work[0], Request::Run { query, .. } if query == combined), "{work:?}");
    assert_eq!(work[1], discard_all());

    server.clear_log();
    bolt.run_all(&statements(2)).await.expect("the next batch runs");
    let work = server.work();
    assert!(
        matches!(&work[..], [Request::Run { query, .. }, discard] if query == combined && *discard == discard_all()),
        "{work:?}"
    );
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

    let err = bolt.run_all(&transaction_statements()).await.expect_err("the server refused the statement");

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
    bolt.run_all(&transaction_statements()).await.expect("the next batch runs");
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

    let err = bolt.run_all(&transaction_statements()).await.expect_err("the server failed the transaction");

    assert!(err.is_retriable(), "a deadlock is worth another try: {err}");
    assert!(!server.work().contains(&Request::Commit));
}

#[tokio::test]
async fn a_dropped_connection_is_transient_and_the_next_batch_reconnects() {
    let server = FakeBolt::start().await;
    let sink = GraphSink::new(config(&server)).expect("the sink builds");
    server.script("{`id`: 2}", Outcome::Hangup);
    let bolt = transport(&server);

    let err = bolt.run_all(&transaction_statements()).await.expect_err("the server hung up");
    assert!(err.is_retriable(), "a lost connection is retried: {err}");

    server.script("SET c.lsn", Outcome::Hangup);
    let err = sink.apply(&[], Some(Lsn(0x30))).await.expect_err("the server hung up");
    assert_eq!(err.kind, ErrorKind::Transient, "{err:?}");

    server.clear_log();
    bolt.run_all(&transaction_statements()).await.expect("the next batch runs on a new connection");
    let log = server.log();
    assert!(log.iter().all(|(connection, _)| *connection == 3), "a third connection: {log:?}");
    assert!(matches!(log.first(), Some((_, Request::Hello(_)))), "{log:?}");
    assert_eq!(log.last().map(|(_, request)| request), Some(&Request::Commit));
}
