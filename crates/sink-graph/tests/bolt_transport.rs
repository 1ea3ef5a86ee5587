//! The Bolt transport (and the graph sink over it) against a fake Bolt 4.4
//! server ([`fake_bolt`]): the messages `neo4rs` sends for a batch, the
//! Cypher and typed parameters in them, transactions, error classification
//! and reading rows. The Cypher itself runs against FalkorDB in the
//! workspace's `tests/graph_sink.rs`; no Neo4j runs here.

mod fake_bolt;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fake_bolt::{FakeBolt, Outcome, Request, Value};
use pgfanout_core::{
    Change, ChangeOp, ChangeRef, ColumnSchema, ColumnValue, ErrorKind, Lsn, Row, Sink, TableName, TableSchema,
    Transaction,
};
use pgfanout_sink_graph::bolt::BoltTransport;
use pgfanout_sink_graph::encode::{GraphEncoder, IndexSpec, Statement};
use pgfanout_sink_graph::value::GraphValue;
use pgfanout_sink_graph::{GraphSink, GraphSinkConfig};
use pgoutput::{Oid, PgTimestamp, ReplicaIdentity, Xid};

const TIMEOUT: Duration = Duration::from_secs(5);

fn transport(server: &FakeBolt, database: Option<&str>) -> BoltTransport {
    BoltTransport::new(&server.url, Some("neo4j"), Some("secret"), database.map(str::to_owned), TIMEOUT)
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

/// A table whose first column is its key; `(name, type OID)` per column.
fn table(name: &str, columns: &[(&str, u32)]) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        oid: Oid(1),
        table: TableName::new("public", name),
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .enumerate()
            .map(|(i, (column, type_oid))| ColumnSchema {
                name: (*column).into(),
                type_oid: Oid(*type_oid),
                is_key: i == 0,
            })
            .collect(),
        types: Default::default(),
    })
}

fn row(values: &[Option<&str>]) -> Row {
    values
        .iter()
        .map(|value| match value {
            Some(text) => ColumnValue::Text(Bytes::copy_from_slice(text.as_bytes())),
            None => ColumnValue::Null,
        })
        .collect()
}

fn transaction(lsn: u64, changes: Vec<(Arc<TableSchema>, ChangeOp)>) -> Transaction {
    Transaction {
        xid: Xid(1),
        commit_lsn: Lsn(lsn),
        end_lsn: Lsn(lsn + 1),
        commit_time: PgTimestamp(0),
        changes: changes
            .into_iter()
            .enumerate()
            .map(|(ordinal, (table, op))| Change { table, op, ordinal: ordinal as u32 })
            .collect(),
    }
}

fn refs(transaction: &Transaction) -> Vec<ChangeRef<'_>> {
    transaction.changes.iter().map(|change| ChangeRef { transaction, change }).collect()
}

/// A graph value as the server should decode it.
fn wire(value: &GraphValue) -> Value {
    match value {
        GraphValue::Null => Value::Null,
        GraphValue::Bool(b) => Value::Bool(*b),
        GraphValue::Int(i) => Value::Int(*i),
        GraphValue::Float(f) => Value::Float(*f),
        GraphValue::String(s) => Value::String(s.clone()),
        GraphValue::List(items) => Value::List(items.iter().map(wire).collect()),
        GraphValue::Map(fields) => Value::Map(fields.iter().map(|(key, item)| (key.clone(), wire(item))).collect()),
    }
}

fn wire_params(statement: &Statement) -> BTreeMap<String, Value> {
    statement.params.iter().map(|(name, value)| (name.clone(), wire(value))).collect()
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> BTreeMap<String, Value> {
    entries.into_iter().map(|(key, value)| (key.to_owned(), value)).collect()
}

/// `DISCARD` of the whole result of the last query, as `neo4rs` pipelines
/// it behind a `RUN` it does not read.
fn discard_all() -> Request {
    Request::Discard(map([("n", Value::Int(-1)), ("qid", Value::Int(-1))]))
}

fn runs(work: &[Request]) -> Vec<(&str, &BTreeMap<String, Value>)> {
    work.iter()
        .filter_map(|request| match request {
            Request::Run { query, params, .. } => Some((query.as_str(), params)),
            _ => None,
        })
        .collect()
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

#[tokio::test]
async fn a_batch_and_its_checkpoint_are_one_transaction_of_the_cypher_layers_statements() {
    let server = FakeBolt::start().await;
    let config = config(&server);
    let encoder = GraphEncoder::new(&config);
    let sink = GraphSink::new(config).expect("the sink builds");
    // int8 key, text, float8, int4[] and a NULL.
    let users = table("users", &[("id", 20), ("name", 25), ("score", 701), ("tags", 1007), ("note", 25)]);
    let reservations = table("reservations", &[("id", 20), ("guest_id", 20)]);
    let batch = transaction(
        0x1000,
        vec![
            (
                users.clone(),
                ChangeOp::Insert {
                    new: row(&[Some("9000000000"), Some("Zoë"), Some("4.25"), Some("{1,-2,300}"), None]),
                },
            ),
            (reservations.clone(), ChangeOp::Insert { new: row(&[Some("1"), Some("9000000000")]) }),
            (users, ChangeOp::Delete { old: row(&[Some("7"), None, None, None, None]) }),
        ],
    );
    let changes = refs(&batch);
    let checkpoint = Lsn(0x16B_3748);

    sink.apply(&changes, Some(checkpoint)).await.expect("the batch applies");

    let encoded = encoder.encode(&changes).expect("the batch encodes");
    let mut expected = encoded.statements.clone();
    expected.push(encoder.store_checkpoint(checkpoint));
    assert!(expected.len() >= 3, "the batch needs several statements: {expected:?}");
    let work = server.work();
    // Indexes first, each in its own auto-commit query.
    let (indexes, transaction) = work.split_at(2 * encoded.indexes.len());
    for (pair, index) in indexes.chunks(2).zip(&encoded.indexes) {
        let IndexSpec::Node { label, property } = index else { panic!("only node indexes here: {index:?}") };
        match pair {
            [Request::Run { query, params, .. }, discard] => {
                assert!(query.starts_with("CREATE INDEX IF NOT EXISTS FOR (n:"), "{query}");
                assert!(query.contains(&format!("`{label}`")) && query.contains(&format!("`{property}`")), "{query}");
                assert!(params.is_empty());
                assert_eq!(discard, &discard_all());
            }
            other => panic!("expected RUN and DISCARD for an index, got {other:?}"),
        }
    }
    // Then BEGIN, each statement in order (the checkpoint last), COMMIT.
    assert_eq!(transaction.first(), Some(&Request::Begin(BTreeMap::new())), "{transaction:?}");
    assert_eq!(transaction.last(), Some(&Request::Commit), "{transaction:?}");
    let inside = &transaction[1..transaction.len() - 1];
    assert_eq!(inside.len(), 2 * expected.len(), "one RUN and one DISCARD per statement: {inside:?}");
    for (pair, statement) in inside.chunks(2).zip(&expected) {
        match pair {
            [Request::Run { query, params, extra }, discard] => {
                assert_eq!(query, &statement.cypher);
                assert_eq!(params, &wire_params(statement), "parameters of {query}");
                assert_eq!(extra, &map([("mode", Value::string("w"))]));
                assert_eq!(discard, &discard_all());
            }
            other => panic!("expected RUN and DISCARD, got {other:?}"),
        }
    }
    let (checkpoint_query, checkpoint_params) = runs(inside).pop().expect("a checkpoint statement");
    assert!(checkpoint_query.contains("PgfanoutCheckpoint"), "{checkpoint_query}");
    assert_eq!(checkpoint_params.get("lsn"), Some(&Value::string("0/16B3748")));

    // The typed row as the server decoded it, independent of the encoder.
    let upsert = runs(inside)
        .into_iter()
        .find(|(query, _)| query.contains("MERGE (n:`User`"))
        .map(|(_, params)| params.clone())
        .expect("a user upsert");
    let Some(Value::List(rows)) = upsert.get("rows") else { panic!("$rows is a list: {upsert:?}") };
    let [Value::Map(user)] = &rows[..] else { panic!("one user row: {rows:?}") };
    let Some(Value::Map(properties)) = user.get("p") else { panic!("the row's properties are a map: {user:?}") };
    assert_eq!(properties.get("id"), Some(&Value::Int(9_000_000_000)), "int8 beyond 32 bits");
    assert_eq!(properties.get("name"), Some(&Value::string("Zoë")));
    assert_eq!(properties.get("score"), Some(&Value::Float(4.25)));
    assert_eq!(properties.get("tags"), Some(&Value::List(vec![Value::Int(1), Value::Int(-2), Value::Int(300)])));
    assert_eq!(properties.get("note"), Some(&Value::Null), "NULL removes the property");
}

#[tokio::test]
async fn parameters_keep_their_bolt_types_and_the_database_is_named() {
    let server = FakeBolt::start().await;
    let bolt = transport(&server, Some("analytics"));
    let nested = GraphValue::Map(vec![
        ("ints".into(), GraphValue::List([0, -16, -17, 127, 128, -129, 40_000, i64::MIN].map(GraphValue::Int).into())),
        ("big".into(), GraphValue::Int(i64::MAX)),
        ("float".into(), GraphValue::Float(-2.5e-300)),
        ("text".into(), GraphValue::String("ü".repeat(200))),
        ("empty".into(), GraphValue::String(String::new())),
        ("none".into(), GraphValue::Null),
        ("flag".into(), GraphValue::Bool(false)),
        (
            "deep".into(),
            GraphValue::List(vec![GraphValue::Map(vec![("k".into(), GraphValue::List(vec![GraphValue::Float(1.0)]))])]),
        ),
    ]);
    let statement = Statement {
        cypher: "UNWIND $rows AS row RETURN row".into(),
        params: vec![("rows".into(), GraphValue::List(vec![nested])), ("sink".into(), GraphValue::String("g".into()))],
    };

    bolt.run_all(std::slice::from_ref(&statement)).await.expect("the statement runs");

    let expected_row = Value::map([
        (
            "ints",
            Value::List(
                [0, -16, -17, 127, 128, -129, 40_000, i64::MIN].into_iter().map(Value::Int).collect::<Vec<_>>(),
            ),
        ),
        ("big", Value::Int(i64::MAX)),
        ("float", Value::Float(-2.5e-300)),
        ("text", Value::String("ü".repeat(200))),
        ("empty", Value::string("")),
        ("none", Value::Null),
        ("flag", Value::Bool(false)),
        ("deep", Value::List(vec![Value::map([("k", Value::List(vec![Value::Float(1.0)]))])])),
    ]);
    let work = server.work();
    assert_eq!(
        work,
        vec![
            Request::Begin(map([("db", Value::string("analytics"))])),
            Request::Run {
                query: statement.cypher.clone(),
                params: map([("rows", Value::List(vec![expected_row])), ("sink", Value::string("g"))]),
                extra: map([("db", Value::string("analytics")), ("mode", Value::string("w"))]),
            },
            discard_all(),
            Request::Commit,
        ]
    );
    let hello = server.log().into_iter().find_map(|(_, request)| match request {
        Request::Hello(fields) => Some(fields),
        _ => None,
    });
    let hello = hello.expect("the driver said HELLO");
    assert_eq!(hello.get("scheme"), Some(&Value::string("basic")));
    assert_eq!(hello.get("principal"), Some(&Value::string("neo4j")));
    assert_eq!(hello.get("credentials"), Some(&Value::string("secret")));
}

#[tokio::test]
async fn ensure_index_runs_its_statement_outside_a_transaction() {
    let server = FakeBolt::start().await;
    let bolt = transport(&server, None);

    bolt.ensure_index(&IndexSpec::Relationship { rel_type: "FAVORITE".into(), property: "id".into() })
        .await
        .expect("the index statement runs");

    let work = server.work();
    assert_eq!(
        work,
        vec![
            Request::Run {
                query: "CREATE INDEX IF NOT EXISTS FOR ()-[r:`FAVORITE`]-() ON (r.`id`)".into(),
                params: BTreeMap::new(),
                extra: map([("mode", Value::string("w"))]),
            },
            discard_all(),
        ],
        "schema changes cannot share a transaction with writes"
    );
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
    let bolt = transport(&server, None);
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
    let bolt = transport(&server, None);
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
    let bolt = transport(&server, None);

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
async fn query_first_column_reads_record_values() {
    let server = FakeBolt::start().await;
    let bolt = transport(&server, None);
    server.script(
        "RETURN n.name",
        Outcome::Rows {
            fields: vec!["n.name"],
            rows: vec![vec![Value::string("Ada")], vec![Value::Null], vec![Value::string(&"y".repeat(3000))]],
        },
    );
    let statement = Statement {
        cypher: "MATCH (n:`User` {`id`: $id}) RETURN n.name".into(),
        params: vec![("id".into(), GraphValue::Int(1))],
    };

    let values = bolt.query_first_column(&statement).await.expect("the query runs");

    assert_eq!(values, vec![Some("Ada".to_owned()), None, Some("y".repeat(3000))]);
    let work = server.work();
    assert_eq!(work.len(), 2, "{work:?}");
    assert!(
        matches!(&work[0], Request::Run { query, params, .. } if *query == statement.cypher && params == &map([("id", Value::Int(1))]))
    );
    assert!(matches!(&work[1], Request::Pull(pull) if pull.get("qid") == Some(&Value::Int(-1))), "{work:?}");
}

#[tokio::test]
async fn numbers_in_the_first_column_read_as_text_like_falkordb() {
    let server = FakeBolt::start().await;
    let bolt = transport(&server, None);
    server.script(
        "RETURN",
        Outcome::Rows { fields: vec!["count"], rows: vec![vec![Value::Int(42)], vec![Value::Float(0.5)]] },
    );
    let statement = Statement { cypher: "MATCH (n) RETURN count(n) AS count".into(), params: vec![] };

    let values = bolt.query_first_column(&statement).await.expect("the query runs");

    assert_eq!(values, vec![Some("42".to_owned()), Some("0.5".to_owned())]);
}

#[tokio::test]
async fn a_result_with_several_columns_is_refused_not_read_in_hash_order() {
    let server = FakeBolt::start().await;
    let bolt = transport(&server, None);
    server.script(
        "RETURN",
        Outcome::Rows { fields: vec!["a", "b"], rows: vec![vec![Value::string("first"), Value::string("second")]] },
    );
    let statement = Statement { cypher: "MATCH (n) RETURN n.a AS a, n.b AS b".into(), params: vec![] };

    let err = bolt.query_first_column(&statement).await.expect_err("two columns are ambiguous");

    assert!(!err.is_retriable());
    assert!(err.to_string().contains("2 columns"), "{err}");
}

#[tokio::test]
async fn the_sink_loads_its_checkpoint_from_a_record() {
    let server = FakeBolt::start().await;
    let config = config(&server);
    let encoder = GraphEncoder::new(&config);
    let sink = GraphSink::new(config).expect("the sink builds");
    server
        .script("RETURN c.lsn", Outcome::Rows { fields: vec!["c.lsn"], rows: vec![vec![Value::string("0/16B3748")]] });

    let loaded = sink.load_checkpoint().await.expect("the checkpoint loads");

    assert_eq!(loaded, Some(Lsn(0x16B_3748)));
    let load = encoder.load_checkpoint();
    let work = server.work();
    let queries: Vec<&str> = runs(&work).into_iter().map(|(query, _)| query).collect();
    assert_eq!(queries.len(), 2, "{work:?}");
    assert!(queries[0].starts_with("CREATE INDEX IF NOT EXISTS FOR (n:`PgfanoutCheckpoint`) ON (n.`sink`)"));
    assert_eq!(queries[1], load.cypher);
    assert_eq!(runs(&work)[1].1, &wire_params(&load));
}
