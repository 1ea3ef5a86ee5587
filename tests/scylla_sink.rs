//! End to end: PostgreSQL → pgfanout → Apache Cassandra, against the real
//! servers of the local stack (`PGFANOUT_TEST_CASSANDRA_NODES`). Each test
//! writes its own keyspace, named like its database, with the sink's
//! defaults: write timestamps, `TRUNCATE`, schema management (`CREATE`,
//! `ALTER TABLE … ADD`). An outage is a [`TcpProxy`] in front of the shared
//! node, cut and restored.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::proxy::TcpProxy;
use common::*;
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

/// The local stack's Cassandra node.
fn cassandra_address() -> SocketAddr {
    let nodes = required_env("PGFANOUT_TEST_CASSANDRA_NODES");
    let first = nodes.split(',').next().unwrap_or_default().trim();
    first.parse().unwrap_or_else(|err| panic!("PGFANOUT_TEST_CASSANDRA_NODES: {first:?} is not host:port: {err}"))
}

async fn cql_session(address: SocketAddr) -> Session {
    SessionBuilder::new()
        .known_node_addr(address)
        .build()
        .await
        .unwrap_or_else(|err| panic!("cannot reach Cassandra at {address}: {err}"))
}

/// A session on the stack's Cassandra, after dropping `keyspace` (left by an
/// earlier run of the test).
async fn cassandra(keyspace: &str) -> Session {
    let session = cql_session(cassandra_address()).await;
    session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ()).await.unwrap();
    session
}

/// A pgfanout config for `db` and the CQL node at `address`; `extra` goes
/// into the `[[sink]]` table, then `tables`. The sink's defaults otherwise.
fn scylla_config(db: &TestDatabase, address: SocketAddr, http: &str, extra: &str, tables: &str) -> String {
    scylla_config_on_slot(db, &db.name, address, http, extra, tables)
}

fn scylla_config_on_slot(
    db: &TestDatabase,
    slot: &str,
    address: SocketAddr,
    http: &str,
    extra: &str,
    tables: &str,
) -> String {
    format!(
        r#"{source}
[[sink]]
name = "{name}"
kind = "scylla"
nodes = ["{address}"]
keyspace = "{name}"
consistency = "one"
manage_schema = true
replication = "{{'class': 'SimpleStrategy', 'replication_factor': 1}}"
{extra}
{tables}"#,
        source = source_config(db, slot, http),
        name = db.name,
    )
}

/// A two's complement big-endian integer (varint, a decimal's unscaled
/// value) as decimal text; tests keep them within i128.
fn varint_text(bytes: &[u8]) -> String {
    assert!(bytes.len() <= 16, "test values fit in i128");
    let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) { 0xFF } else { 0 };
    let mut wide = [fill; 16];
    wide[16 - bytes.len()..].copy_from_slice(bytes);
    i128::from_be_bytes(wide).to_string()
}

/// `unscaled × 10^-scale` as PostgreSQL prints a numeric.
fn decimal_text(unscaled: &str, scale: i32) -> String {
    let (sign, digits) = unscaled.strip_prefix('-').map_or(("", unscaled), |rest| ("-", rest));
    let scale = usize::try_from(scale).expect("non-negative scales");
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{sign}{whole}.{fraction}")
}

/// A CQL value as text comparable with PostgreSQL's `::text` output.
fn render(value: &CqlValue) -> String {
    match value {
        CqlValue::Text(text) | CqlValue::Ascii(text) => text.clone(),
        CqlValue::Int(v) => v.to_string(),
        CqlValue::SmallInt(v) => v.to_string(),
        CqlValue::TinyInt(v) => v.to_string(),
        CqlValue::Varint(v) => varint_text(v.as_signed_bytes_be_slice()),
        CqlValue::Decimal(v) => {
            let (bytes, scale) = v.as_signed_be_bytes_slice_and_exponent();
            decimal_text(&varint_text(bytes), scale)
        }
        // Nanoseconds since midnight.
        CqlValue::Time(time) => time.0.to_string(),
        CqlValue::Duration(d) => format!("{}mo{}d{}ns", d.months, d.days, d.nanoseconds),
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
        CqlValue::List(items) | CqlValue::Set(items) => {
            format!("[{}]", items.iter().map(render).collect::<Vec<_>>().join(","))
        }
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
        // Not created (or altered) yet, or just recreated ("Unknown CF"):
        // nothing to read so far. Printed, for a test that then times out.
        Err(err) => {
            eprintln!("{select}: {err}");
            return BTreeSet::new();
        }
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
async fn query_tables_follow_inserts_updates_deletes_key_moves_new_columns_and_truncate() {
    let db = create_database("e2e_scylla_basic").await;
    let session = cassandra(&db.name).await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let config = scylla_config(&db, cassandra_address(), &http, "", TARGETS);
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
    // Several changes to one row in one transaction end in its last state,
    // a key move back and forth included (each a delete and an insert with
    // timestamps one microsecond apart).
    db.client
        .batch_execute(
            "BEGIN;
             INSERT INTO reservations VALUES (4, 40, 400, '2027-02-01', 'pending', 1, NULL);
             UPDATE reservations SET status = 'cancelled', guest_id = 41 WHERE id = 4;
             UPDATE reservations SET id = 44 WHERE id = 4;
             UPDATE reservations SET id = 4, property_id = 401 WHERE id = 44;
             COMMIT",
        )
        .await
        .unwrap();

    wait_for_query_tables(&db, &session, &pgfanout).await;
    let stored_notes = cql_rows(&session, &format!("SELECT notes FROM {}.reservations WHERE id = 11", db.name)).await;
    assert_eq!(stored_notes, BTreeSet::from([vec![notes.clone()]]), "the TOASTed notes follow the row");
    let decimal = cql_rows(&session, &format!("SELECT total_price FROM {}.reservations WHERE id = 3", db.name)).await;
    assert_eq!(decimal, BTreeSet::from([vec!["9.99".to_owned()]]), "numeric(12,2) is a decimal with its scale");

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
    assert_eq!(applied, Some(7.0), "metrics:\n{}", pgfanout.metrics().await.unwrap_or_default());

    // A new column in PostgreSQL becomes `ALTER TABLE … ADD` on the query
    // table that takes every column, filled from then on.
    db.client
        .batch_execute(
            "ALTER TABLE reservations ADD COLUMN paid_at timestamptz, ADD COLUMN nights smallint;
             UPDATE reservations SET paid_at = '2026-12-05 10:00:00.25+00', nights = 3 WHERE id = 11",
        )
        .await
        .unwrap();
    let select = format!("SELECT paid_at, nights FROM {}.reservations WHERE id = 11", db.name);
    let expected = BTreeSet::from([vec!["1796464800250".to_owned(), "3".to_owned()]]);
    wait_until("the new columns arrive", Duration::from_secs(30), || async {
        cql_rows(&session, &select).await == expected
    })
    .await;
    let by_guest = format!("SELECT * FROM {}.reservations_by_guest WHERE guest_id = 10", db.name);
    assert!(session.query_unpaged(by_guest, ()).await.is_ok());

    // TRUNCATE empties every query table; rows written after it arrive.
    db.client
        .batch_execute(
            "TRUNCATE reservations; INSERT INTO reservations VALUES (5, 50, 500, '2027-03-01', NULL, NULL, NULL)",
        )
        .await
        .unwrap();
    db.client.batch_execute("ALTER TABLE reservations DROP COLUMN paid_at, DROP COLUMN nights").await.unwrap();
    wait_for_query_tables(&db, &session, &pgfanout).await;
    let truncated = pgfanout
        .metric(&format!(
            r#"pgfanout_sink_applied_total{{op="truncate",sink="{name}",table="public.reservations"}}"#,
            name = db.name
        ))
        .await;
    assert_eq!(truncated, Some(1.0), "metrics:\n{}", pgfanout.metrics().await.unwrap_or_default());
}

#[tokio::test]
async fn postgres_types_round_trip_through_cql_types() {
    let db = create_database("e2e_scylla_types").await;
    let session = cassandra(&db.name).await;
    db.client
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('calm', 'loud');
             CREATE DOMAIN positive AS int4 CHECK (VALUE > 0);
             CREATE TABLE typed (
                id int PRIMARY KEY, flag bool, small int2, big bigint, object oid, ratio float8, small_ratio float4,
                amount numeric, price numeric(12, 2), name varchar(20), payload bytea, token uuid, day date,
                clock time, at timestamptz, local_at timestamp, span interval, host inet, net cidr, mac macaddr,
                mac8 macaddr8, clock_tz timetz, doc json, prefs jsonb, markup xml, feeling mood, count positive,
                scores int4[], tags text[], grid int4[], huge int8, tiny int2
             );",
        )
        .await
        .unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    // Overrides: a jsonb object as a map, integers as varint and tinyint, a
    // two-dimensional array as its text.
    let tables = r#"
[[sink.table]]
source = "public.typed"
types = { prefs = "map<text, text>", huge = "varint", tiny = "tinyint", grid = "text" }
"#;
    let config = scylla_config(&db, cassandra_address(), &http, "", tables);
    let pgfanout = start_streaming(&db.name, &config, &http).await;
    db.client
        .batch_execute(
            r#"INSERT INTO typed VALUES
               (1, true, -32768, 9007199254740993, 4294967295, 0.1, 1.5, -12345678901234567890.000125, 120.50,
                'ana', '\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1969-12-31', '13:45:01.5',
                '2026-05-01 12:34:56.789123+02', '2026-05-01 12:34:56.5', '1 year 2 mons 3 days 04:05:06.000007',
                '10.1.2.3', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', '10:00:00+02',
                '{"k": [1, {"x": null}]}', '{"lang": "de", "size": 3}', '<a>b</a>', 'loud', 7,
                '{1,2,3}', '{"a b",c}', '{{1,2},{3,4}}', -9223372036854775808, 127),
               (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);"#,
        )
        .await
        .unwrap();
    let ks = &db.name;
    let columns =
        "id, flag, small, big, object, ratio, small_ratio, amount, price, name, payload, \"token\", day, clock, \
                   at, local_at, span, host, net, mac, mac8, clock_tz, doc, prefs, markup, feeling, count, scores, \
                   tags, grid, huge, tiny";
    let select = format!("SELECT {columns} FROM {ks}.typed");
    wait_until("both rows arrive", Duration::from_secs(30), || async { cql_rows(&session, &select).await.len() == 2 })
        .await;
    let rows = cql_rows(&session, &select).await;
    let expected: BTreeSet<Vec<String>> = [
        vec![
            "1",
            "t",
            "-32768",
            "9007199254740993",
            "4294967295",
            "0.1",
            "1.5",
            "-12345678901234567890.000125",
            "120.50",
            "ana",
            "00ff10",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "-1",
            // Nanoseconds since midnight.
            "49501500000000",
            // 10:34:56.789 UTC, microseconds truncated to milliseconds.
            "1777631696789",
            "1777638896500",
            "14mo3d14706000007000ns",
            "10.1.2.3",
            "10.0.0.0/8",
            "08:00:2b:01:02:03",
            "08:00:2b:01:02:03:04:05",
            "10:00:00+02",
            r#"{"k": [1, {"x": null}]}"#,
            r#"{"lang": "de", "size": "3"}"#,
            "<a>b</a>",
            "loud",
            "7",
            "[1,2,3]",
            "[a b,c]",
            "{{1,2},{3,4}}",
            "-9223372036854775808",
            "127",
        ],
        std::iter::once("2").chain(std::iter::repeat_n("∅", 31)).collect(),
    ]
    .into_iter()
    .map(|row| row.into_iter().map(str::to_owned).collect())
    .collect();
    assert_eq!(rows, expected, "log:\n{}", pgfanout.log_text());

    // The types the sink chose for the created table.
    let types = cql_column_types(&session, ks).await;
    for (column, cql_type) in [
        ("small", "smallint"),
        ("object", "bigint"),
        ("amount", "decimal"),
        ("clock", "time"),
        ("span", "duration"),
        ("scores", "list<int>"),
        ("count", "int"),
        ("feeling", "text"),
        ("huge", "varint"),
        ("tiny", "tinyint"),
    ] {
        assert_eq!(types.get(column).map(String::as_str), Some(cql_type), "type of {column}: {types:?}");
    }
}

/// Column name → CQL type of table `typed` in `keyspace`.
async fn cql_column_types(session: &Session, keyspace: &str) -> BTreeMap<String, String> {
    let select = format!(
        "SELECT column_name, type FROM system_schema.columns WHERE keyspace_name = '{keyspace}' AND table_name = 'typed'"
    );
    let rows = session.query_unpaged(select, ()).await.unwrap().into_rows_result().unwrap();
    rows.rows::<(String, String)>().unwrap().map(Result::unwrap).collect()
}

#[tokio::test]
async fn an_older_change_replayed_after_a_newer_one_leaves_the_newer_value() {
    let db = create_database("e2e_scylla_replay").await;
    let session = cassandra(&db.name).await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let config = scylla_config(&db, cassandra_address(), &http, "", TARGETS);
    let mut pgfanout = start_streaming(&db.name, &config, &http).await;
    // A second slot and publication see the first changes only: the
    // publication loses the table before the newer changes are written.
    db.client.batch_execute("CREATE PUBLICATION e2e_scylla_replay_older FOR TABLE reservations").await.unwrap();
    db.client
        .batch_execute("SELECT pg_create_logical_replication_slot('e2e_scylla_replay_older', 'pgoutput')")
        .await
        .unwrap();
    db.client
        .batch_execute(
            "INSERT INTO reservations VALUES (1, 10, 100, '2026-12-01', 'pending', 1, 'first'),
                                             (2, 20, 100, '2026-12-02', 'pending', 2, NULL);
             ALTER PUBLICATION e2e_scylla_replay_older DROP TABLE reservations;
             UPDATE reservations SET status = 'paid', guest_id = 11, notes = 'second' WHERE id = 1;
             DELETE FROM reservations WHERE id = 2;",
        )
        .await
        .unwrap();
    wait_for_query_tables(&db, &session, &pgfanout).await;
    pgfanout.signal("TERM");
    assert_eq!(pgfanout.wait_exit(Duration::from_secs(15)).await, Some(0));

    // The older changes again, from the second slot, as after restoring an
    // old checkpoint: without a checkpoint row (and its reservation) the
    // writes carry their original timestamps, below those of the newer ones.
    session.query_unpaged(format!("TRUNCATE {}.pgfanout_checkpoints", db.name), ()).await.unwrap();
    let replay = scylla_config_on_slot(&db, "e2e_scylla_replay_older", cassandra_address(), &http, "", TARGETS)
        .replace(&format!("publication = \"{}\"", db.name), "publication = \"e2e_scylla_replay_older\"")
        // Without its checkpoint the sink would first copy the table as it
        // is now (initial snapshot); this test wants the old changes alone.
        + "\n[snapshot]\nenabled = false\n";
    let pgfanout = start_streaming("e2e_scylla_replay_older", &replay, &http).await;
    let end = db.current_wal_lsn().await;
    wait_until("the older changes are applied again", Duration::from_secs(30), || async {
        db.confirmed_flush_lsn("e2e_scylla_replay_older").await >= end
    })
    .await;
    let inserts = pgfanout
        .metric(&format!(
            r#"pgfanout_sink_applied_total{{op="insert",sink="{name}",table="public.reservations"}}"#,
            name = db.name
        ))
        .await;
    assert_eq!(inserts, Some(2.0), "the replay applied the two older inserts");
    // The newer values stand: the update of row 1 and the delete of row 2.
    wait_for_query_tables(&db, &session, &pgfanout).await;
}

#[tokio::test]
async fn a_lost_store_blocks_the_slot_and_restarts_under_load_lose_nothing() {
    let db = create_database("e2e_scylla_outage").await;
    let session = cassandra(&db.name).await;
    let mut proxy = TcpProxy::start(cassandra_address()).await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    // Two lanes: the concurrent path, and a checkpoint stored apart from the data.
    let config = scylla_config(&db, proxy.address(), &http, "", &format!("{TARGETS}\n[sink.delivery]\nlanes = 2\n"));
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
    proxy.cut();
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
    proxy.restore().await;
    wait_for_query_tables(&db, &session, &pgfanout).await;

    // Re-delivery is harmless: a workload while pgfanout is killed and
    // restarted twice ends equal to PostgreSQL. Each restart starts the
    // write clock above the reservation stored before it, so changes sent
    // again win over their first attempt and end in the last state.
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
    let select = format!("SELECT reserved_timestamp FROM {}.pgfanout_checkpoints WHERE sink = '{}'", db.name, db.name);
    let reservation: Vec<i64> =
        cql_rows(&session, &select).await.into_iter().filter_map(|row| row[0].parse().ok()).collect();
    assert_eq!(reservation.len(), 1, "a reservation is stored with the checkpoint: {reservation:?}");
}

/// Items as `id|label|note` lines, NULL as "∅", from PostgreSQL and from
/// the sink's table.
const ITEM_LINES: (&str, &str) = ("SELECT id::text, label, note FROM item", "SELECT id, label, note FROM {ks}.item");

/// Items 1 to 4, each with a note stored out of line (TOAST).
const FOUR_ITEMS_WITH_TOASTED_NOTES: &str =
    "INSERT INTO item SELECT i, 'item ' || i, repeat('long note ' || i, 400) FROM generate_series(1, 4) i";

/// Key moves that carry the unchanged notes into keys re-used in the same
/// transaction: key 2 is deleted before item 1 moves into it, and item 3
/// moves away from key 3 before item 4 moves into it.
const MOVES_INTO_RE_USED_KEYS: &str = "DELETE FROM item WHERE id = 2; UPDATE item SET id = 2 WHERE id = 1; \
    UPDATE item SET id = 5 WHERE id = 3; UPDATE item SET id = 3 WHERE id = 4;";

/// Under identity DEFAULT a key move carries an unchanged TOAST value over
/// from the row under the old key. The changes after the checkpoint are
/// applied again after a crash, with newer write timestamps; among them a
/// delete of key 2 before a move into key 2, and a move away from key 3
/// before a move into key 3. Re-applied, the delete and the move away remove
/// what the later moves had written under those keys the first time, and
/// the later moves, whose old rows are long gone, must still write the
/// values they carried then.
#[tokio::test]
async fn key_moves_re_applied_after_a_crash_keep_the_toast_values_they_carried_into_re_used_keys() {
    let db = create_database("e2e_scylla_carry_crash").await;
    let session = cassandra(&db.name).await;
    db.client
        .batch_execute(
            "CREATE TABLE item (id int PRIMARY KEY, label text NOT NULL, note text);
             ALTER TABLE item ALTER COLUMN note SET STORAGE EXTERNAL;
             CREATE TABLE blocker (id int PRIMARY KEY, v text);",
        )
        .await
        .unwrap();
    // A table the sink cannot write into until it is recreated (its column
    // refuses the value): the batch fails after its key moves, so the
    // checkpoint stays before them until pgfanout is killed.
    let keyspace = &db.name;
    for cql in [
        format!("CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
        format!("CREATE TABLE {keyspace}.blocker (id int PRIMARY KEY, v int)"),
    ] {
        session.query_unpaged(cql, ()).await.unwrap();
    }
    let http = format!("127.0.0.1:{}", free_port());
    let tables = "[[sink.table]]\nsource = \"public.item\"\n[[sink.table]]\nsource = \"public.blocker\"\n";
    let config = scylla_config(&db, cassandra_address(), &http, "", tables) + "\n[snapshot]\nenabled = false\n";
    let mut pgfanout = start_streaming(&db.name, &config, &http).await;
    let (pg_items, cql_items) = (ITEM_LINES.0, ITEM_LINES.1.replace("{ks}", keyspace));
    let items_match = || async { pg_rows(&db, pg_items).await == cql_rows(&session, &cql_items).await };
    db.client.batch_execute(FOUR_ITEMS_WITH_TOASTED_NOTES).await.unwrap();
    wait_until("the items are written", Duration::from_secs(30), items_match).await;
    // The checkpoint row follows the rows it covers.
    wait_until("the checkpoint is stored", Duration::from_secs(30), || async {
        stored_checkpoint(&session, keyspace, &db.name).await.is_some()
    })
    .await;
    let before_moves = stored_checkpoint(&session, keyspace, &db.name).await.unwrap();

    db.client
        .batch_execute(&format!(
            "BEGIN; {MOVES_INTO_RE_USED_KEYS} INSERT INTO blocker VALUES (1, 'not a number'); COMMIT;"
        ))
        .await
        .unwrap();
    let end = db.current_wal_lsn().await;
    wait_until("the key moves are applied", Duration::from_secs(30), items_match).await;
    pgfanout.signal("KILL");
    pgfanout.wait_exit(Duration::from_secs(5)).await;
    let checkpoint = stored_checkpoint(&session, keyspace, &db.name).await.unwrap();
    assert!(checkpoint.0 < end, "the checkpoint {checkpoint} stayed before the moves (was {before_moves})");

    session.query_unpaged(format!("DROP TABLE {keyspace}.blocker"), ()).await.unwrap();
    let pgfanout = Pgfanout::start(&db.name, &config, &http);
    wait_until("the moves are applied again and confirmed", Duration::from_secs(60), || async {
        db.confirmed_flush_lsn(&db.name).await >= end
    })
    .await;
    let expected = pg_rows(&db, pg_items).await;
    let actual = cql_rows(&session, &cql_items).await;
    let short = |lines: &BTreeSet<Vec<String>>| -> Vec<String> {
        lines.iter().map(|line| line.join("|").chars().take(30).collect()).collect()
    };
    assert_eq!(short(&actual), short(&expected), "{}", pgfanout.log_text());
    assert_eq!(actual, expected);
    let carry_log = format!("SELECT ordinal FROM {keyspace}.pgfanout_checkpoints_carried WHERE sink = '{}'", db.name);
    assert_eq!(cql_rows(&session, &carry_log).await.len(), 0, "the checkpoint passed the moves: their entries went");
}

/// The rows of the sink's carry log (`ordinal` each).
async fn carry_log_rows(session: &Session, keyspace: &str, sink: &str) -> usize {
    let select = format!("SELECT ordinal FROM {keyspace}.pgfanout_checkpoints_carried WHERE sink = '{sink}'");
    cql_rows(session, &select).await.len()
}

/// With a change archive, `pgfanout replay` applies key moves into re-used
/// keys again long after the checkpoint passed them: a delete of key 2
/// before a move into 2, a move away from 3 before a move into 3. Replayed
/// with newer write timestamps, the delete and the move away remove what
/// the later moves wrote under 2 and 3, and those moves' old rows are long
/// gone: only the carry log, kept while the archive can replay the moves,
/// still holds their values. Replayed through the running instance, then
/// standalone (a sink that knows of the entries only from the table). Once
/// retention removes the archive segment holding the moves, their entries go.
#[tokio::test]
async fn replay_from_the_archive_over_key_moves_into_re_used_keys_keeps_the_toast_values_they_carried() {
    let db = create_database("e2e_scylla_carry_replay").await;
    let session = cassandra(&db.name).await;
    let keyspace = &db.name;
    db.client
        .batch_execute(
            "CREATE TABLE item (id int PRIMARY KEY, label text NOT NULL, note text);
             ALTER TABLE item ALTER COLUMN note SET STORAGE EXTERNAL;",
        )
        .await
        .unwrap();
    let archive = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let tables = "[[sink.table]]\nsource = \"public.item\"\n";
    // One-megabyte segments, at most one kept: retention drops the moves'
    // segment once a few megabytes follow it.
    let config = scylla_config(&db, cassandra_address(), &http, "", tables)
        + &format!(
            "\n[snapshot]\nenabled = false\n[archive]\npath = \"{}\"\nsegment_mb = 1\nretention_mb = 1\n",
            archive.path().display()
        );
    let pgfanout = start_streaming(&db.name, &config, &http).await;
    let (pg_items, cql_items) = (ITEM_LINES.0, ITEM_LINES.1.replace("{ks}", keyspace));
    let items_match = || async { pg_rows(&db, pg_items).await == cql_rows(&session, &cql_items).await };
    db.client.batch_execute(FOUR_ITEMS_WITH_TOASTED_NOTES).await.unwrap();
    // The replay starts after the inserts: the moves' old rows stay gone.
    let from = db.current_wal_lsn().await;
    db.client.batch_execute(&format!("BEGIN; {MOVES_INTO_RE_USED_KEYS} COMMIT;")).await.unwrap();
    let moved = db.current_wal_lsn().await;
    wait_until("the moves are applied and confirmed", Duration::from_secs(30), || async {
        db.confirmed_flush_lsn(&db.name).await >= moved && items_match().await
    })
    .await;
    assert_eq!(
        carry_log_rows(&session, keyspace, &db.name).await,
        3,
        "the checkpoint passed the three moves, but the archive can replay them: their entries stay"
    );

    let path = std::env::temp_dir()
        .join(format!("pgfanout-tests-{}", std::process::id()))
        .join(format!("{}.toml", db.name))
        .display()
        .to_string();
    let from = format!("{:X}/{:X}", from >> 32, from & 0xffff_ffff);
    let short = |lines: &BTreeSet<Vec<String>>| -> Vec<String> {
        lines.iter().map(|line| line.join("|").chars().take(30).collect()).collect()
    };
    // Through the running instance, then standalone (a fresh sink that
    // finds the entries from what it loads at start).
    let mut pgfanout = pgfanout;
    for standalone in [false, true] {
        if standalone {
            pgfanout.signal("TERM");
            pgfanout.wait_exit(Duration::from_secs(30)).await;
        }
        let (path, from) = (path.clone(), from.clone());
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_pgfanout"))
                .args(["--log-format", "text", "replay", "--config", &path, "--from", &from])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "replay (standalone: {standalone}) failed: {stderr}");
        assert_eq!(stderr.contains("replaying standalone"), standalone, "{stderr}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let done: serde_json::Value =
            serde_json::from_str(stdout.trim()).unwrap_or_else(|err| panic!("{stdout}: {err}"));
        // The delete and the three moves.
        assert!(done["changes"].as_u64().is_some_and(|changes| changes >= 4), "{stdout}");
        let expected = pg_rows(&db, pg_items).await;
        let actual = cql_rows(&session, &cql_items).await;
        assert_eq!(short(&actual), short(&expected), "standalone: {standalone}\n{}", pgfanout.log_text());
        assert_eq!(actual, expected, "every moved item keeps its note (standalone: {standalone})");
    }
    let pgfanout = start_streaming(&db.name, &config, &http).await;

    // About 4 MB of new rows, 5 kB each (batches of them stay under
    // Cassandra's 50 KiB batch limit): retention removes the segment with the moves.
    db.client
        .batch_execute(
            "INSERT INTO item SELECT i, 'item ' || i, repeat('other note ' || i, 400) FROM generate_series(100, 899) i",
        )
        .await
        .unwrap();
    let mut next = 1_000;
    wait_until("retention passes the moves and their entries go", Duration::from_secs(60), || {
        next += 1;
        let insert = format!("INSERT INTO item VALUES ({next}, 'tick', NULL)");
        let (db, session) = (&db, &session);
        async move {
            db.client.batch_execute(&insert).await.unwrap();
            carry_log_rows(session, keyspace, &db.name).await == 0
        }
    })
    .await;
    let oldest = pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64;
    assert!(oldest > moved, "the archive starts at {oldest:X}, after the moves ({moved:X})");
    wait_until("the sink still equals PostgreSQL", Duration::from_secs(30), items_match).await;
}
