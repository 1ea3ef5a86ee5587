//! `pgfanout verify`: rows changed, added and removed in a store behind
//! pgfanout's back are reported by key and repaired; writes that continue
//! during a verify are not reported as drift. Real servers of the local stack.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

const SCHEMA: &str = r#"
CREATE TABLE items (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    price numeric(12,2),
    tags text[],
    doc jsonb,
    seen timestamptz,
    notes text
);
ALTER TABLE items ALTER COLUMN notes SET STORAGE EXTERNAL;
"#;

/// Rows 1..=count with every kind of value, a long (TOASTed) note on some.
async fn insert_items(db: &TestDatabase, count: i64) {
    db.client
        .execute(
            "INSERT INTO items SELECT i, 'item ' || i, i * 1.25, ARRAY['a', 'b' || i], \
             jsonb_build_object('n', i, 'nested', jsonb_build_object('x', 1.50)), \
             '2026-12-01 10:00:00+00'::timestamptz + i * interval '1 minute', \
             CASE WHEN i % 10 = 0 THEN repeat('long note ', 500) END \
             FROM generate_series(1, $1::bigint) AS i",
            &[&count],
        )
        .await
        .unwrap();
}

/// `pgfanout verify --config <config> <extra…>`: exit code and stdout.
async fn run_verify(config: &PathBuf, extra: &[&str]) -> (i32, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pgfanout"));
    command.args(["--log-format", "json", "verify", "--config"]).arg(config).args(extra);
    command.env("PGFANOUT_LOG", "warn");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (
        output.status.code().unwrap_or(-1),
        format!("{stdout}{}", if stderr.is_empty() { String::new() } else { format!("\nstderr:\n{stderr}") }),
    )
}

/// The lines naming a key, sorted.
fn key_lines(output: &str) -> Vec<String> {
    let mut lines: Vec<String> = output.lines().filter(|line| line.contains(" key (")).map(str::to_owned).collect();
    lines.sort();
    lines
}

fn write_config(name: &str, config: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgfanout-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-verify.toml"));
    std::fs::write(&path, config).unwrap();
    path
}

#[tokio::test]
async fn redis_drift_is_reported_by_key_and_repaired() {
    let db = create_database("verify_redis").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let redis_url = fresh_redis_db(11).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.items", "item:{id}")]);
    let config_path = write_config("verify_redis", &config);
    let pgfanout = Pgfanout::start("verify_redis", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    insert_items(&db, 200).await;
    wait_for_redis_match(&db, "items", "id", &mut redis, "item:", &pgfanout).await;

    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 0, "a store equal to PostgreSQL verifies:\n{output}");

    // Behind pgfanout's back: one row changed, one removed, one added.
    redis::cmd("HSET").arg("item:3").arg("name").arg("tampered").query_async::<()>(&mut redis).await.unwrap();
    redis::cmd("HDEL").arg("item:10").arg("notes").query_async::<()>(&mut redis).await.unwrap();
    redis::cmd("DEL").arg("item:5").query_async::<()>(&mut redis).await.unwrap();
    redis::cmd("HSET")
        .arg("item:999")
        .arg("id")
        .arg("999")
        .arg("name")
        .arg("ghost")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();

    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 1, "drift exits 1:\n{output}");
    let sink = "sink verify_redis, table public.items";
    assert_eq!(
        key_lines(&output),
        vec![
            format!("{sink}: key (id=10): columns differ: notes"),
            format!("{sink}: key (id=3): columns differ: name"),
            format!("{sink}: key (id=5): missing in the store"),
            format!("{sink}: key (id=999): extra in the store (not in PostgreSQL)"),
        ],
        "{output}"
    );
    assert!(output.contains("verify: 4 rows differ"), "{output}");

    let (code, output) = run_verify(&config_path, &["--repair"]).await;
    assert_eq!(code, 0, "repair fixes every row:\n{output}");
    assert!(output.contains("repaired 4 rows"), "{output}");

    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 0, "after repair the store verifies:\n{output}");
    wait_for_redis_match(&db, "items", "id", &mut redis, "item:", &pgfanout).await;

    // A repaired row still takes later streamed changes (the repair's version loses to them).
    db.client.execute("UPDATE items SET name = 'after repair' WHERE id = 3", &[]).await.unwrap();
    wait_for_redis_match(&db, "items", "id", &mut redis, "item:", &pgfanout).await;
}

#[tokio::test]
async fn writes_during_verify_are_not_drift() {
    let db = create_database("verify_live").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let redis_url = fresh_redis_db(12).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.items", "item:{id}")]);
    let config_path = write_config("verify_live", &config);
    let pgfanout = Pgfanout::start("verify_live", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    insert_items(&db, 2000).await;
    wait_for_redis_match(&db, "items", "id", &mut redis, "item:", &pgfanout).await;

    // Updates, inserts and deletes keep coming while verify runs.
    let writer_client = connect(&db.url).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer_stop = stop.clone();
    let writer = tokio::spawn(async move {
        let mut round: i64 = 0;
        while !writer_stop.load(std::sync::atomic::Ordering::Relaxed) {
            round += 1;
            let id = (round * 7919) % 2000 + 1;
            writer_client
                .batch_execute(&format!(
                    "UPDATE items SET name = 'round {round}', price = price + 1 WHERE id = {id}; \
                     INSERT INTO items (id, name) VALUES ({}, 'new'); DELETE FROM items WHERE id = {}",
                    10_000 + round,
                    (round * 104_729) % 2000 + 1
                ))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        round
    });
    let (code, output) = run_verify(&config_path, &[]).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = writer.await.unwrap();
    assert!(rounds > 10, "the writer kept writing during verify ({rounds} rounds)");
    assert_eq!(code, 0, "changes in flight are not drift:\n{output}");
    wait_for_redis_match(&db, "items", "id", &mut redis, "item:", &pgfanout).await;
}

#[tokio::test]
async fn mongodb_drift_is_reported_by_key_and_repaired() {
    use bson::doc;
    let db = create_database("verify_mongo").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let url = required_env("PGFANOUT_TEST_MONGODB_URL");
    let client = mongodb::Client::with_uri_str(&url).await.unwrap();
    client.database("verify_mongo").drop().await.unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let config = format!(
        r#"{header}
[[sink]]
name = "docs"
kind = "mongodb"
url = "{url}"
database = "verify_mongo"
[sink.types]
numeric = "string"
[[sink.table]]
source = "public.items"
# The local MongoDB-wire server stores a DateTime that `$set` writes into an existing
# document as a string (verify reports that, rightly), so timestamps stay out here.
exclude = ["seen"]
"#,
        header = source_config(&db, "verify_mongo", &http)
    );
    let config_path = write_config("verify_mongo", &config);
    let _pgfanout = Pgfanout::start("verify_mongo", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    insert_items(&db, 100).await;
    let items = client.database("verify_mongo").collection::<bson::Document>("items");
    wait_until("100 documents", Duration::from_secs(30), || async {
        items.count_documents(doc! {}).await.unwrap() == 100
    })
    .await;
    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 0, "equal documents verify:\n{output}");

    // Behind pgfanout's back: a field changed, a nested jsonb value changed, a document
    // removed, one added; a field another application added is not drift.
    items.update_one(doc! { "_id": 3i64 }, doc! { "$set": { "name": "tampered", "foreign": 1 } }).await.unwrap();
    items.update_one(doc! { "_id": 4i64 }, doc! { "$set": { "doc.n": 40 } }).await.unwrap();
    items.delete_one(doc! { "_id": 5i64 }).await.unwrap();
    // The extra document carries an old version, as one pgfanout wrote and whose delete was
    // lost: the local MongoDB-wire server evaluates an upsert's `{_id, $or: [...]}` guard
    // wrongly against a document without any version (it updates that one instead).
    items
        .insert_one(
            doc! { "_id": 999i64, "id": 999i64, "name": "ghost", "_pgfanout_version": "0000000000000001.00000000" },
        )
        .await
        .unwrap();

    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 1, "drift exits 1:\n{output}");
    let sink = "sink docs, table public.items";
    assert_eq!(
        key_lines(&output),
        vec![
            format!("{sink}: key (id=3): columns differ: name"),
            format!("{sink}: key (id=4): columns differ: doc"),
            format!("{sink}: key (id=5): missing in the store"),
            format!("{sink}: key (id=999): extra in the store (not in PostgreSQL)"),
        ],
        "{output}"
    );
    let (code, output) = run_verify(&config_path, &["--repair"]).await;
    assert_eq!(code, 0, "repair fixes every document:\n{output}");
    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 0, "after repair the store verifies:\n{output}");
    let repaired = items.find_one(doc! { "_id": 3i64 }).await.unwrap().unwrap();
    assert_eq!(repaired.get_str("name").unwrap(), "item 3");
    assert!(repaired.contains_key("foreign"), "another application's field survives a repair");
}

#[tokio::test]
async fn a_sink_kind_without_read_back_is_named_not_faked() {
    let db = create_database("verify_discard").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    db.client.batch_execute("CREATE PUBLICATION verify_discard FOR TABLE items").await.unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "{}\n[[sink]]\nname = \"null\"\nkind = \"discard\"\n[[sink.table]]\nsource = \"public.items\"\n",
        source_config(&db, "verify_discard", &http)
    );
    let config_path = write_config("verify_discard", &config);
    let (code, output) = run_verify(&config_path, &["--sink", "null"]).await;
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("sink null: verify cannot read this sink kind back"), "{output}");
    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 2, "nothing verified is not success:\n{output}");
    assert!(output.contains("nothing was verified"), "{output}");
}

/// A CQL session on the local stack's Cassandra, after dropping `keyspace`.
async fn cassandra(keyspace: &str) -> (scylla::client::session::Session, String) {
    let nodes = required_env("PGFANOUT_TEST_CASSANDRA_NODES");
    let address = nodes.split(',').next().unwrap_or_default().trim().to_owned();
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(&address)
        .build()
        .await
        .unwrap_or_else(|err| panic!("cannot reach Cassandra at {address}: {err}"));
    session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ()).await.unwrap();
    (session, address)
}

async fn cql_count(session: &scylla::client::session::Session, table: &str) -> i64 {
    match session.query_unpaged(format!("SELECT count(*) FROM {table}"), ()).await {
        Ok(result) => result.into_rows_result().unwrap().first_row::<(i64,)>().unwrap().0,
        // Not created yet.
        Err(_) => 0,
    }
}

#[tokio::test]
async fn cassandra_drift_is_reported_by_key_and_repaired() {
    let db = create_database("verify_cql").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let (session, address) = cassandra(&db.name).await;
    let http = format!("127.0.0.1:{}", free_port());
    // Two query tables: by id, and by id split into partition and clustering
    // columns; both hold every row.
    let config = format!(
        r#"{header}
[[sink]]
name = "cql"
kind = "scylla"
nodes = ["{address}"]
keyspace = "{keyspace}"
consistency = "one"
manage_schema = true
replication = "{{'class': 'SimpleStrategy', 'replication_factor': 1}}"
[[sink.table]]
source = "public.items"
[[sink.table.target]]
table = "items"
partition_key = ["id"]
[[sink.table.target]]
table = "item_names"
partition_key = ["id"]
columns = ["name", "tags"]
"#,
        header = source_config(&db, "verify_cql", &http),
        keyspace = db.name,
    );
    let config_path = write_config("verify_cql", &config);
    let _pgfanout = Pgfanout::start("verify_cql", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(60), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    insert_items(&db, 100).await;
    let items = format!("{}.items", db.name);
    let names = format!("{}.item_names", db.name);
    wait_until("100 rows in each query table", Duration::from_secs(60), || async {
        cql_count(&session, &items).await == 100 && cql_count(&session, &names).await == 100
    })
    .await;
    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 0, "equal tables verify:\n{output}");

    // Behind pgfanout's back: a column changed, a list changed in the second
    // table, a row removed from one table, a row added.
    for cql in [
        format!("UPDATE {items} SET name = 'tampered' WHERE id = 3"),
        format!("UPDATE {names} SET tags = ['x'] WHERE id = 4"),
        format!("DELETE FROM {items} WHERE id = 5"),
        format!("INSERT INTO {items} (id, name) VALUES (999, 'ghost')"),
    ] {
        session.query_unpaged(cql, ()).await.unwrap();
    }
    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 1, "drift exits 1:\n{output}");
    let sink = "sink cql, table public.items";
    let missing = ["items.doc", "items.id", "items.name", "items.price", "items.seen", "items.tags"].join(", ");
    assert_eq!(
        key_lines(&output),
        vec![
            format!("{sink}: key (id=3): columns differ: items.name"),
            format!("{sink}: key (id=4): columns differ: item_names.tags"),
            format!("{sink}: key (id=5): columns differ: {missing}"),
            format!("{sink}: key (id=999): extra in the store (not in PostgreSQL)"),
        ],
        "{output}"
    );
    let (code, output) = run_verify(&config_path, &["--repair"]).await;
    assert_eq!(code, 0, "repair fixes every row:\n{output}");
    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 0, "after repair the tables verify:\n{output}");
    assert_eq!(cql_count(&session, &items).await, 100);
}

const GRAPH_SCHEMA: &str = r#"
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);
CREATE TABLE reservations (id bigint PRIMARY KEY, guest_id bigint REFERENCES users, total numeric(12, 2), status text);
CREATE TABLE favorites (id bigint PRIMARY KEY, user_id bigint REFERENCES users, reservation_id bigint REFERENCES reservations);
"#;

/// Nodes with a foreign-key relationship, and a join table's relationships.
const GRAPH_TABLES: &str = r#"
[[sink.table]]
source = "public.users"
label = "User"
[[sink.table]]
source = "public.reservations"
label = "Reservation"
relationships = [{ column = "guest_id", type = "BOOKED_BY", to = "User" }]
[[sink.table]]
source = "public.favorites"
relationship = { type = "FAVORITE", from = { column = "user_id", label = "User" }, to = { column = "reservation_id", label = "Reservation" } }
"#;

/// A database with `schema`, a graph store on `backend`, and pgfanout
/// streaming the `tables` into it as sink "graph".
struct GraphScenario {
    db: TestDatabase,
    store: common::graph::GraphStore,
    config_path: PathBuf,
    _pgfanout: Pgfanout,
}

impl GraphScenario {
    async fn start(backend: common::graph::Backend, name: &str, schema: &str, tables: &str) -> GraphScenario {
        let db = create_database(name).await;
        db.client.batch_execute(schema).await.unwrap();
        let store = common::graph::GraphStore::open(backend, name).await;
        let http = format!("127.0.0.1:{}", free_port());
        let config = format!(
            "{header}\n[[sink]]\nname = \"graph\"\nkind = \"graph\"\n{store}\n{tables}",
            header = source_config(&db, name, &http),
            store = store.sink_lines(),
        );
        let config_path = write_config(name, &config);
        let pgfanout = Pgfanout::start(name, &config, &http);
        wait_until("pgfanout streams", Duration::from_secs(60), || async {
            http_get(&http, "/readyz").await.is_some()
        })
        .await;
        GraphScenario { db, store, config_path, _pgfanout: pgfanout }
    }
}

#[tokio::test]
async fn falkordb_drift_in_nodes_and_relationships_is_reported_and_repaired() {
    graph_drift_is_reported_and_repaired(common::graph::Backend::FalkorDb, "verify_falkor").await;
}

#[tokio::test]
async fn neo4j_drift_in_nodes_and_relationships_is_reported_and_repaired() {
    graph_drift_is_reported_and_repaired(common::graph::Backend::Neo4j, "verify_neo4j").await;
}

async fn graph_drift_is_reported_and_repaired(backend: common::graph::Backend, name: &str) {
    let GraphScenario { db, mut store, config_path, _pgfanout } =
        GraphScenario::start(backend, name, GRAPH_SCHEMA, GRAPH_TABLES).await;
    db.client
        .batch_execute(
            "INSERT INTO users SELECT i, 'u' || i || '@example.com' FROM generate_series(1, 20) AS i; \
             INSERT INTO reservations SELECT i, i % 20 + 1, i * 1.5, 'paid' FROM generate_series(1, 50) AS i; \
             INSERT INTO favorites SELECT i, i, 10 + i FROM generate_series(1, 10) AS i;",
        )
        .await
        .unwrap();
    let count = |query: &'static str| query;
    let mut counts = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        counts.clear();
        for query in [
            count("MATCH (:Reservation)-[r:BOOKED_BY]->(:User) RETURN count(r)"),
            count("MATCH (:User)-[r:FAVORITE]->(:Reservation) RETURN count(r)"),
        ] {
            counts.push(store.rows(query).await.first().map(|row| row[0].text()).unwrap_or_default());
        }
        if counts == ["50", "10"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the graph never held every relationship: {counts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 0, "an equal graph verifies:\n{output}");

    // Behind pgfanout's back: a property changed, a foreign-key relationship removed
    // and another added, a node removed and one added, a join relationship removed
    // and one added. FalkorDB finds keys through lookup properties (the sink's own
    // nodes carry both).
    let lookup = |key: i64| match backend {
        common::graph::Backend::FalkorDb => format!(", pgfanout_key_id: {key}"),
        common::graph::Backend::Neo4j => String::new(),
    };
    for query in [
        "MATCH (r:Reservation {id: 3}) SET r.status = 'tampered'".to_owned(),
        "MATCH (:Reservation {id: 4})-[b:BOOKED_BY]->() DELETE b".to_owned(),
        "MATCH (r:Reservation {id: 6}), (u:User {id: 1}) CREATE (r)-[:BOOKED_BY]->(u)".to_owned(),
        "MATCH (r:Reservation {id: 5}) DETACH DELETE r".to_owned(),
        format!("CREATE (:Reservation {{id: 999, status: 'ghost'{}}})", lookup(999)),
        "MATCH ()-[f:FAVORITE {id: 2}]->() DELETE f".to_owned(),
        format!(
            "MATCH (u:User {{id: 1}}), (r:Reservation {{id: 30}}) CREATE (u)-[:FAVORITE {{id: 77{}}}]->(r)",
            lookup(77)
        ),
    ] {
        store.rows(&query).await;
    }
    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 1, "drift exits 1:\n{output}");
    let reservations = "sink graph, table public.reservations";
    let favorites = "sink graph, table public.favorites";
    assert_eq!(
        key_lines(&output),
        vec![
            format!("{favorites}: key (id=2): missing in the store"),
            format!("{favorites}: key (id=77): extra in the store (not in PostgreSQL)"),
            format!("{reservations}: key (id=3): columns differ: status"),
            format!("{reservations}: key (id=4): columns differ: relationship BOOKED_BY"),
            format!("{reservations}: key (id=5): missing in the store"),
            format!("{reservations}: key (id=6): columns differ: relationship BOOKED_BY"),
            format!("{reservations}: key (id=999): extra in the store (not in PostgreSQL)"),
        ],
        "{output}"
    );
    let (code, output) = run_verify(&config_path, &["--repair"]).await;
    assert_eq!(code, 0, "repair fixes every node and relationship:\n{output}");
    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 0, "after repair the graph verifies:\n{output}");
    let booked = store.rows("MATCH (:Reservation)-[r:BOOKED_BY]->(:User) RETURN count(r)").await;
    assert_eq!(booked[0][0].text(), "50", "one BOOKED_BY per reservation again");
}

/// Guests and hosts of reservations, and the derived host–guest relationship.
const DERIVED_SCHEMA: &str = r#"
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);
CREATE TABLE reservations (id bigint PRIMARY KEY, guest_id bigint REFERENCES users, host_id bigint REFERENCES users);
"#;

const DERIVED_TABLES: &str = r#"
[[sink.table]]
source = "public.users"
label = "User"
[[sink.table]]
source = "public.reservations"
label = "Reservation"
relationships = [
  { column = "guest_id", type = "BOOKED_BY", to = "User" },
  { column = "host_id", type = "HOSTED_BY", to = "User" },
]
[[sink.derived]]
type = "INTERACTED_WITH"
match = "(source:User)<-[:BOOKED_BY]-(r:Reservation)-[:HOSTED_BY]->(target:User)"
count = "r"
collect = { reservations = "r.id" }
on = { "public.reservations" = "r" }
"#;

#[tokio::test]
async fn falkordb_derived_relationship_drift_is_reported_and_repaired() {
    derived_drift_is_reported_and_repaired(common::graph::Backend::FalkorDb, "verify_derived_falkor").await;
}

#[tokio::test]
async fn neo4j_derived_relationship_drift_is_reported_and_repaired() {
    derived_drift_is_reported_and_repaired(common::graph::Backend::Neo4j, "verify_derived_neo4j").await;
}

async fn derived_drift_is_reported_and_repaired(backend: common::graph::Backend, name: &str) {
    let GraphScenario { db, mut store, config_path, _pgfanout } =
        GraphScenario::start(backend, name, DERIVED_SCHEMA, DERIVED_TABLES).await;
    // Guests 1..=5, hosts 6..=8: reservation i joins guest i % 5 + 1 and host
    // i % 3 + 6, so the 15 pairs hold 3 (i % 15 in 1..=10) or 2 reservations.
    db.client
        .batch_execute(
            "INSERT INTO users SELECT i, 'u' || i || '@example.com' FROM generate_series(1, 10) AS i; \
             INSERT INTO reservations SELECT i, i % 5 + 1, i % 3 + 6 FROM generate_series(1, 40) AS i;",
        )
        .await
        .unwrap();
    let interactions = "MATCH (:User)-[d:INTERACTED_WITH]->(:User) RETURN count(d), sum(d.count)";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows = store.rows(interactions).await;
        let counts: Vec<String> =
            rows.first().map(|row| row.iter().map(|cell| cell.text()).collect()).unwrap_or_default();
        if counts == ["15", "40"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the graph never held every derived relationship: {counts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 0, "an equal graph verifies:\n{output}");
    assert!(!output.contains("not compared"), "derived relationships are compared:\n{output}");

    // Behind pgfanout's back: a derived relationship removed, one added that no
    // reservation makes, one with a wrong count, one with a wrong list.
    for query in [
        "MATCH (:User {id: 1})-[d:INTERACTED_WITH]->(:User {id: 6}) DELETE d",
        "MATCH (a:User {id: 9}), (b:User {id: 10}) CREATE (a)-[:INTERACTED_WITH {count: 1, reservations: [1]}]->(b)",
        "MATCH (:User {id: 2})-[d:INTERACTED_WITH]->(:User {id: 7}) SET d.count = 99",
        "MATCH (:User {id: 3})-[d:INTERACTED_WITH]->(:User {id: 8}) SET d.reservations = [2, 17]",
    ] {
        store.rows(query).await;
    }
    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 1, "drift exits 1:\n{output}");
    let derived = "sink graph: derived INTERACTED_WITH";
    assert_eq!(
        key_lines(&output),
        vec![
            format!("{derived}, key (User id=1 -> User id=6): missing in the store"),
            format!("{derived}, key (User id=2 -> User id=7): fields differ: count"),
            format!("{derived}, key (User id=3 -> User id=8): fields differ: reservations"),
            format!("{derived}, key (User id=9 -> User id=10): extra in the store (no row makes it)"),
        ],
        "{output}"
    );
    let (code, output) = run_verify(&config_path, &["--repair"]).await;
    assert_eq!(code, 0, "repair recomputes every derived relationship:\n{output}");
    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 0, "after repair the graph verifies:\n{output}");
    let rows = store.rows(interactions).await;
    assert_eq!(
        rows[0].iter().map(|cell| cell.text()).collect::<Vec<_>>(),
        ["15", "40"],
        "the derived relationships are exact again"
    );
}

/// An aggregate document's count (the local MongoDB-wire server hands small
/// Int64 values back as Int32); 0 without a document.
fn count_of(document: Option<&bson::Document>) -> i64 {
    match document.and_then(|document| document.get("count")) {
        Some(bson::Bson::Int32(n)) => i64::from(*n),
        Some(bson::Bson::Int64(n)) => *n,
        _ => 0,
    }
}

#[tokio::test]
async fn mongodb_aggregate_drift_is_recomputed_and_repaired() {
    use bson::doc;
    use futures_util::TryStreamExt;
    let db = create_database("verify_aggregates").await;
    db.client
        .batch_execute(
            "CREATE TABLE stays (id bigint PRIMARY KEY, host_id text NOT NULL, nights bigint); \
             ALTER TABLE stays REPLICA IDENTITY FULL;",
        )
        .await
        .unwrap();
    let url = required_env("PGFANOUT_TEST_MONGODB_URL");
    let client = mongodb::Client::with_uri_str(&url).await.unwrap();
    client.database("verify_aggregates").drop().await.unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let config = format!(
        r#"{header}
[[sink]]
name = "docs"
kind = "mongodb"
url = "{url}"
database = "verify_aggregates"
[sink.delivery]
lanes = 1
[[sink.table]]
source = "public.stays"
[[sink.table.aggregate]]
collection = "host_statistics"
group_by = "host_id"
sum = ["nights"]
"#,
        header = source_config(&db, "verify_aggregates", &http)
    );
    let config_path = write_config("verify_aggregates", &config);
    let _pgfanout = Pgfanout::start("verify_aggregates", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    // Hosts h1..=h5, four stays each (text ids: the local MongoDB-wire server
    // hands a small Int64 `_id` back as Int32, which the sink's aggregate
    // version lookup does not match); a few stays changed and removed, so the
    // documents hold running sums, not just inserts.
    db.client
        .batch_execute(
            "INSERT INTO stays SELECT i, 'h' || (i % 5 + 1), i FROM generate_series(1, 20) AS i; \
             UPDATE stays SET nights = nights + 10, host_id = 'h1' WHERE id IN (2, 3); \
             DELETE FROM stays WHERE id = 7;",
        )
        .await
        .unwrap();
    let database = client.database("verify_aggregates");
    let stays = database.collection::<bson::Document>("stays");
    let statistics = database.collection::<bson::Document>("host_statistics");
    wait_until("every stay counted", Duration::from_secs(30), || async {
        let counted: i64 = statistics
            .find(doc! {})
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .iter()
            .map(|document| count_of(Some(document)))
            .sum();
        counted == 19 && stays.count_documents(doc! {}).await.unwrap() == 19
    })
    .await;
    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 0, "equal aggregates verify:\n{output}");

    // Behind pgfanout's back: a count changed, a group removed, a group added,
    // and a row removed (whose repair through the apply path counts it again).
    statistics.update_one(doc! { "_id": "h2" }, doc! { "$set": { "count": 99i64 } }).await.unwrap();
    statistics.delete_one(doc! { "_id": "h3" }).await.unwrap();
    statistics.insert_one(doc! { "_id": "h77", "count": 5i64, "nights": 1i64 }).await.unwrap();
    stays.delete_one(doc! { "_id": 5i64 }).await.unwrap();

    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 1, "drift exits 1:\n{output}");
    let sink = "sink docs, table public.stays";
    assert_eq!(
        key_lines(&output),
        vec![
            format!("{sink}: aggregate host_statistics, key (host_id=h2): fields differ: count"),
            format!("{sink}: aggregate host_statistics, key (host_id=h3): missing in the store"),
            format!("{sink}: aggregate host_statistics, key (host_id=h77): extra in the store (no row makes it)"),
            format!("{sink}: key (id=5): missing in the store"),
        ],
        "{output}"
    );
    let (code, output) = run_verify(&config_path, &["--repair"]).await;
    assert_eq!(code, 0, "repair fixes rows and aggregates:\n{output}");
    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 0, "after repair everything verifies:\n{output}");

    // The repaired documents keep counting the stream's changes.
    db.client.batch_execute("INSERT INTO stays VALUES (100, 'h3', 1)").await.unwrap();
    wait_until("the new stay counted on the repaired group", Duration::from_secs(30), || async {
        count_of(statistics.find_one(doc! { "_id": "h3" }).await.unwrap().as_ref()) == 3
    })
    .await;
    let (code, output) = run_verify(&config_path, &[]).await;
    assert_eq!(code, 0, "the stream applies on top of repaired aggregates:\n{output}");
}
