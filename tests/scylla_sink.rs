//! End to end: PostgreSQL → pgfanout → a CQL server, against PostgreSQL of
//! the local stack and the in-memory kassandra engine served by this test
//! process ([`CqlDevServer`], one per test, on a free port).
//!
//! The in-memory server has no `USING TIMESTAMP`, `TRUNCATE`, `ALTER TABLE`,
//! `decimal` or `smallint`: these tests run with write timestamps and
//! truncate off and keep numeric values in text columns; the statements
//! with timestamps, truncates and decimals are tested in the sink crate's
//! unit tests.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use pgfanout_cql_dev_server::CqlDevServer;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::value::{CqlValue, Row};

const SCHEMA: &str = r#"
CREATE TYPE reservation_status AS ENUM ('pending', 'paid', 'cancelled');
CREATE TABLE reservations (
    id bigint PRIMARY KEY,
    guest_id int NOT NULL,
    property_id int NOT NULL,
    check_in date NOT NULL,
    status reservation_status,
    total_price numeric(12,2),
    notes text
);
-- Query tables are keyed by guest and property: a change of either must
-- find the old row, so the old image carries every column.
ALTER TABLE reservations REPLICA IDENTITY FULL;
-- Long notes stay out of line (TOAST), sent as "unchanged" when untouched.
ALTER TABLE reservations ALTER COLUMN notes SET STORAGE EXTERNAL;
"#;

/// Query tables of `reservations`: by id, by guest, by property and day.
const TARGETS: &str = r#"
[[sink.table]]
source = "public.reservations"
rename = { status = "state" }
types = { total_price = "text" }

[[sink.table.target]]
table = "reservations"
partition_key = ["id"]

[[sink.table.target]]
table = "reservations_by_guest"
partition_key = ["guest_id"]
clustering_key = ["id"]
columns = ["state", "total_price"]

[[sink.table.target]]
table = "reservations_by_property"
partition_key = ["property_id"]
clustering_key = ["check_in", "id"]
columns = ["state"]
"#;

/// A CQL server of the test's own, and a session on it.
async fn cql_server() -> (CqlDevServer, Session) {
    let server = CqlDevServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let session = cql_session(server.address()).await;
    (server, session)
}

async fn cql_session(address: SocketAddr) -> Session {
    SessionBuilder::new()
        .known_node_addr(address)
        .auto_await_schema_agreement(false)
        .fetch_schema_metadata(false)
        .build()
        .await
        .unwrap_or_else(|err| panic!("cannot reach the test CQL server at {address}: {err}"))
}

/// A pgfanout config for `db` and the CQL server at `address`; `extra` goes
/// into the `[[sink]]` table, then `tables`.
fn scylla_config(db: &TestDatabase, address: SocketAddr, http: &str, extra: &str, tables: &str) -> String {
    format!(
        r#"{source}
[[sink]]
name = "{name}"
kind = "scylla"
nodes = ["{address}"]
keyspace = "{name}"
consistency = "one"
write_timestamps = false
truncate = false
manage_schema = true
replication = "{{'class': 'SimpleStrategy', 'replication_factor': 1}}"
await_schema_agreement = false
fetch_schema_metadata = false
{extra}
{tables}"#,
        source = source_config(db, &db.name, http),
        name = db.name,
    )
}

/// A CQL value as text comparable with PostgreSQL's `::text` output.
fn render(value: &CqlValue) -> String {
    match value {
        CqlValue::Text(text) | CqlValue::Ascii(text) => text.clone(),
        CqlValue::Int(v) => v.to_string(),
        CqlValue::BigInt(v) => v.to_string(),
        CqlValue::Boolean(v) => if *v { "t" } else { "f" }.to_owned(),
        CqlValue::Double(v) => v.to_string(),
        CqlValue::Float(v) => v.to_string(),
        // Days since 1970-01-01.
        CqlValue::Date(date) => (i64::from(date.0) - (1 << 31)).to_string(),
        // Milliseconds since 1970-01-01.
        CqlValue::Timestamp(ts) => ts.0.to_string(),
        CqlValue::Uuid(uuid) => uuid.to_string(),
        CqlValue::Inet(addr) => addr.to_string(),
        CqlValue::Blob(bytes) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        CqlValue::List(items) => format!("[{}]", items.iter().map(render).collect::<Vec<_>>().join(",")),
        CqlValue::Map(entries) => {
            let sorted: BTreeMap<String, String> = entries.iter().map(|(k, v)| (render(k), render(v))).collect();
            format!("{sorted:?}")
        }
        other => format!("{other:?}"),
    }
}

/// Every row `select` returns, each as its rendered columns (NULL as "∅").
async fn cql_rows(session: &Session, select: &str) -> BTreeSet<Vec<String>> {
    let result = match session.query_unpaged(select, ()).await {
        Ok(result) => result,
        // Not created yet: nothing replicated so far.
        Err(_) => return BTreeSet::new(),
    };
    let rows = result.into_rows_result().unwrap();
    rows.rows::<Row>()
        .unwrap()
        .map(|row| row.unwrap().columns.iter().map(|c| c.as_ref().map_or("∅".to_owned(), render)).collect())
        .collect()
}

/// Every row `select` returns on PostgreSQL, text columns (NULL as "∅").
async fn pg_rows(db: &TestDatabase, select: &str) -> BTreeSet<Vec<String>> {
    db.client
        .query(select, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (0..row.len()).map(|i| row.get::<_, Option<String>>(i).unwrap_or_else(|| "∅".into())).collect())
        .collect()
}

/// Pairs of (PostgreSQL query, CQL query) giving the same rows when the
/// query tables equal the source table.
const REPRESENTATIONS: [(&str, &str); 3] = [
    (
        "SELECT id::text, guest_id::text, property_id::text, (check_in - date '1970-01-01')::text, status::text, total_price::text, notes FROM reservations",
        "SELECT id, guest_id, property_id, check_in, state, total_price, notes FROM {ks}.reservations",
    ),
    (
        "SELECT guest_id::text, id::text, status::text, total_price::text FROM reservations",
        "SELECT guest_id, id, state, total_price FROM {ks}.reservations_by_guest",
    ),
    (
        "SELECT property_id::text, (check_in - date '1970-01-01')::text, id::text, status::text FROM reservations",
        "SELECT property_id, check_in, id, state FROM {ks}.reservations_by_property",
    ),
];

/// Waits until every query table equals PostgreSQL; panics with the
/// difference and pgfanout's log after 60 s.
async fn wait_for_query_tables(db: &TestDatabase, session: &Session, pgfanout: &Pgfanout) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut differences = Vec::new();
        for (pg, cql) in REPRESENTATIONS {
            let expected = pg_rows(db, pg).await;
            let actual = cql_rows(session, &cql.replace("{ks}", &db.name)).await;
            if expected != actual {
                let missing: Vec<_> = expected.difference(&actual).take(3).collect();
                let extra: Vec<_> = actual.difference(&expected).take(3).collect();
                differences.push(format!("{cql}: missing {missing:?}, extra {extra:?}"));
            }
        }
        if differences.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "query tables never matched:\n{}\nlog:\n{}",
            differences.join("\n"),
            pgfanout.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_streaming(name: &str, config: &str, http: &str) -> Pgfanout {
    let pgfanout = Pgfanout::start(name, config, http);
    wait_until("pgfanout streams", Duration::from_secs(30), || async { http_get(http, "/readyz").await.is_some() })
        .await;
    pgfanout
}

/// The checkpoint row's LSN.
async fn stored_checkpoint(session: &Session, keyspace: &str, sink: &str) -> Option<pgoutput::Lsn> {
    let select = format!("SELECT lsn FROM {keyspace}.pgfanout_checkpoints WHERE sink = '{sink}'");
    let rows = cql_rows(session, &select).await;
    rows.into_iter().next().and_then(|row| row[0].parse().ok())
}

#[tokio::test]
async fn query_tables_follow_inserts_updates_deletes_and_key_moves() {
    let (_server, session) = cql_server().await;
    let db = create_database("e2e_scylla_basic").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let config = scylla_config(&db, _server.address(), &http, "", TARGETS);
    let pgfanout = start_streaming(&db.name, &config, &http).await;

    let notes: String = (0..400).map(|i| format!("{i};")).collect();
    db.client
        .execute(
            "INSERT INTO reservations VALUES
                (1, 10, 100, '2026-12-01', 'pending', 120.50, $1),
                (2, 20, 100, '2026-12-02', NULL, NULL, NULL),
                (3, 10, 200, '2027-01-02', 'paid', 9.99, 'short')",
            &[&notes],
        )
        .await
        .unwrap();
    // A plain update; the TOASTed notes are not sent and must survive.
    db.client.execute("UPDATE reservations SET status = 'paid', total_price = 130 WHERE id = 1", &[]).await.unwrap();
    // The guest changes: the row moves in reservations_by_guest.
    db.client.execute("UPDATE reservations SET guest_id = 30 WHERE id = 3", &[]).await.unwrap();
    // The day changes: the row moves in reservations_by_property (clustering key).
    db.client.execute("UPDATE reservations SET check_in = '2026-12-24' WHERE id = 2", &[]).await.unwrap();
    // The primary key changes: every query table moves, the notes go along.
    db.client.execute("UPDATE reservations SET id = 11 WHERE id = 1", &[]).await.unwrap();
    db.client.execute("DELETE FROM reservations WHERE id = 2", &[]).await.unwrap();
    // Several changes to one row in one transaction end in its last state.
    db.client
        .batch_execute(
            "BEGIN;
             INSERT INTO reservations VALUES (4, 40, 400, '2027-02-01', 'pending', 1, NULL);
             UPDATE reservations SET status = 'cancelled', guest_id = 41 WHERE id = 4;
             UPDATE reservations SET property_id = 401 WHERE id = 4;
             COMMIT",
        )
        .await
        .unwrap();

    wait_for_query_tables(&db, &session, &pgfanout).await;
    let stored_notes = cql_rows(&session, &format!("SELECT notes FROM {}.reservations WHERE id = 11", db.name)).await;
    assert_eq!(stored_notes, BTreeSet::from([vec![notes.clone()]]), "the TOASTed notes follow the row");

    // The checkpoint row is written after the batch; the slot catches up to it.
    let checkpoint = stored_checkpoint(&session, &db.name, &db.name).await.expect("a checkpoint row");
    wait_until("confirmed_flush_lsn reaches the stored checkpoint", Duration::from_secs(10), || async {
        db.confirmed_flush_lsn(&db.name).await >= checkpoint.0
    })
    .await;
    let applied = pgfanout
        .metric(&format!(
            r#"pgfanout_sink_applied_total{{op="update",sink="{name}",table="public.reservations"}}"#,
            name = db.name
        ))
        .await;
    assert_eq!(applied, Some(6.0), "metrics:\n{}", pgfanout.metrics().await.unwrap_or_default());

    // With truncate off (the test server has no TRUNCATE), a truncate is
    // logged and skipped; later rows still arrive.
    db.client
        .batch_execute(
            "TRUNCATE reservations; INSERT INTO reservations VALUES (5, 50, 500, '2027-03-01', NULL, NULL, NULL)",
        )
        .await
        .unwrap();
    wait_until("the row after the truncate arrives", Duration::from_secs(20), || async {
        !cql_rows(&session, &format!("SELECT id FROM {}.reservations WHERE id = 5", db.name)).await.is_empty()
    })
    .await;
    assert!(pgfanout.log_text().contains("truncate not applied"), "log:\n{}", pgfanout.log_text());
    let kept = cql_rows(&session, &format!("SELECT id FROM {}.reservations WHERE id = 11", db.name)).await;
    assert_eq!(kept.len(), 1, "rows before the skipped truncate stay");
}

#[tokio::test]
async fn postgres_types_round_trip_through_cql_types() {
    let (server, session) = cql_server().await;
    let db = create_database("e2e_scylla_types").await;
    db.client
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('calm', 'loud');
             CREATE TABLE typed (
                id int PRIMARY KEY, flag bool, big bigint, ratio float8, small_ratio float4, name varchar(20),
                payload bytea, token uuid, day date, at timestamptz, local_at timestamp, host inet,
                scores int4[], tags text[], doc jsonb, prefs jsonb, feeling mood, amount numeric
             );",
        )
        .await
        .unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let tables = r#"
[[sink.table]]
source = "public.typed"
# The test server lacks decimal: numeric goes to a text column here (the
# decimal conversion is unit-tested); prefs become a map.
types = { amount = "text", prefs = "map<text, text>" }
"#;
    let config = scylla_config(&db, server.address(), &http, "", tables);
    let pgfanout = start_streaming(&db.name, &config, &http).await;
    db.client
        .batch_execute(
            r#"INSERT INTO typed VALUES
               (1, true, 9007199254740993, 0.1, 1.5, 'ana', '\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
                '1969-12-31', '2026-05-01 12:34:56.789123+02', '2026-05-01 12:34:56.5', '10.1.2.3',
                '{1,2,3}', '{"a b",c}', '{"k": [1, {"x": null}]}', '{"lang": "de", "size": 3}', 'loud', 12.5),
               (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);"#,
        )
        .await
        .unwrap();
    let ks = &db.name;
    let select = format!(
        "SELECT id, flag, big, ratio, small_ratio, name, payload, token, day, at, local_at, host, scores, tags, doc, prefs, feeling, amount FROM {ks}.typed"
    );
    wait_until("both rows arrive", Duration::from_secs(30), || async { cql_rows(&session, &select).await.len() == 2 })
        .await;
    let rows = cql_rows(&session, &select).await;
    let expected: BTreeSet<Vec<String>> = [
        vec![
            "1",
            "t",
            "9007199254740993",
            "0.1",
            "1.5",
            "ana",
            "00ff10",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "-1",
            // 10:34:56.789 UTC, microseconds truncated to milliseconds.
            "1777631696789",
            "1777638896500",
            "10.1.2.3",
            "[1,2,3]",
            "[a b,c]",
            r#"{"k": [1, {"x": null}]}"#,
            r#"{"lang": "de", "size": "3"}"#,
            "loud",
            "12.5",
        ],
        std::iter::once("2").chain(std::iter::repeat_n("∅", 17)).collect(),
    ]
    .into_iter()
    .map(|row| row.into_iter().map(str::to_owned).collect())
    .collect();
    assert_eq!(rows, expected, "log:\n{}", pgfanout.log_text());
}

#[tokio::test]
async fn a_stopped_store_blocks_the_slot_and_catches_up_after_restarts() {
    let (mut server, session) = cql_server().await;
    let db = create_database("e2e_scylla_outage").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    // Two lanes: the concurrent path, and a checkpoint stored apart from the data.
    let config = scylla_config(&db, server.address(), &http, "", &format!("{TARGETS}\n[sink.delivery]\nlanes = 2\n"));
    let mut pgfanout = start_streaming(&db.name, &config, &http).await;
    db.client
        .execute("INSERT INTO reservations VALUES (1, 10, 100, '2026-12-01', 'pending', 1, NULL)", &[])
        .await
        .unwrap();
    wait_for_query_tables(&db, &session, &pgfanout).await;
    let checkpoint = stored_checkpoint(&session, &db.name, &db.name).await.unwrap();
    wait_until("the slot confirms the stored checkpoint", Duration::from_secs(10), || async {
        db.confirmed_flush_lsn(&db.name).await >= checkpoint.0
    })
    .await;

    // The store goes away: changes keep coming, nothing past them is confirmed.
    server.stop();
    let confirmed_before = db.confirmed_flush_lsn(&db.name).await;
    for i in 2..40i64 {
        db.client
            .execute(
                &format!(
                    "INSERT INTO reservations VALUES ({i}, {guest}, 100, '2026-12-01', 'pending', {i}, NULL)",
                    guest = i % 5
                ),
                &[],
            )
            .await
            .unwrap();
    }
    db.client.execute("UPDATE reservations SET guest_id = 99 WHERE id = 1", &[]).await.unwrap();
    db.client.execute("DELETE FROM reservations WHERE id = 3", &[]).await.unwrap();
    let after_outage_writes = db.current_wal_lsn().await;
    let config_file = std::env::temp_dir().join(format!("{}-{}-check.toml", db.name, std::process::id()));
    std::fs::write(&config_file, &config).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_pgfanout"))
        .args(["check", "--config"])
        .arg(&config_file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&config_file);
    let check_output = String::from_utf8_lossy(&check.stdout);
    assert!(
        check_output.contains(&format!("sink {}", db.name)) && check_output.contains("cannot reach the cluster"),
        "check reports the unreachable store: {check_output}"
    );
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let confirmed = db.confirmed_flush_lsn(&db.name).await;
        assert!(confirmed < after_outage_writes, "confirmed {confirmed:#x} passed writes the store does not hold");
        assert!(confirmed >= confirmed_before);
    }
    // Killed while blocked, restarted, then the store comes back.
    pgfanout.signal("KILL");
    pgfanout.wait_exit(Duration::from_secs(5)).await;
    let pgfanout = Pgfanout::start(&db.name, &config, &http);
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.resume().unwrap();
    wait_for_query_tables(&db, &session, &pgfanout).await;

    // Re-delivery is harmless: a workload while pgfanout is killed and
    // restarted twice ends equal to PostgreSQL.
    let writer_url = db.url.clone();
    let workload = tokio::spawn(async move {
        let client = connect(&writer_url).await;
        for i in 100..400i64 {
            let sql = match i % 4 {
                0 | 1 => format!(
                    "INSERT INTO reservations VALUES ({i}, {g}, {p}, '2027-01-01', 'pending', 1, NULL)",
                    g = i % 7,
                    p = i % 3
                ),
                2 => format!("UPDATE reservations SET guest_id = guest_id + 1, status = 'paid' WHERE id = {}", i - 2),
                _ => format!("DELETE FROM reservations WHERE id = {}", i - 2),
            };
            client.batch_execute(&sql).await.unwrap();
        }
    });
    let mut pgfanout = pgfanout;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        pgfanout.signal("KILL");
        pgfanout.wait_exit(Duration::from_secs(5)).await;
        pgfanout = Pgfanout::start(&db.name, &config, &http);
    }
    workload.await.unwrap();
    wait_for_query_tables(&db, &session, &pgfanout).await;
}
