//! The initial snapshot against real servers: a database that already
//! holds ~200,000 rows (composite keys, TOAST, numeric, jsonb, arrays, a
//! partitioned table) is copied into Redis while writes, updates and
//! deletes go on, and Redis ends equal to PostgreSQL; a `kill -9` halfway
//! resumes after the last chunk the sink stored; a table read by heap block
//! range keeps the rows updates move between blocks, and resumes at the
//! first block not stored. A leaner scenario copies
//! into one sink of every kind (Redis, MongoDB, FalkorDB, Cassandra) under
//! writes, updates, deletes and key moves, and each store ends equal.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const SCHEMA: &str = "
    CREATE TABLE item (id int PRIMARY KEY, amount numeric(14,4), data jsonb, tags text[], note text);
    CREATE TABLE line (order_id int, line_no int, qty int, PRIMARY KEY (order_id, line_no));
    CREATE TABLE event (id int, day date, kind text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
    CREATE TABLE event_a PARTITION OF event FOR VALUES FROM ('2020-01-01') TO ('2025-01-01');
    CREATE TABLE event_b PARTITION OF event FOR VALUES FROM ('2025-01-01') TO ('2030-01-01');
";

/// Fills the tables: `items` rows of item (every 1000th with a TOASTed
/// note, so it is read in key order), 60,000 lines (read by block range)
/// and 20,000 events (partitioned: key order); then their statistics, which
/// size the chunks of blocks.
async fn fill(db: &TestDatabase, items: i32) {
    db.client
        .batch_execute(&format!(
            "INSERT INTO item SELECT i, i * 1.5, jsonb_build_object('i', i, 'a', jsonb_build_array(i, 'x')),
                ARRAY['t' || i, NULL], CASE WHEN i % 1000 = 0
                THEN (SELECT string_agg(md5(i::text || g::text), '') FROM generate_series(1, 300) g)
                ELSE 'n' || i END
             FROM generate_series(1, {items}) i;
             INSERT INTO line SELECT i / 4, i % 4, i FROM generate_series(1, 60000) i;
             INSERT INTO event SELECT i, DATE '2021-01-01' + (i % 3000), 'k' || i FROM generate_series(1, 20000) i;
             ANALYZE;"
        ))
        .await
        .unwrap();
}

/// A Redis sink of `items`, `lines` and `events` with small chunks, read
/// ahead (the other scenarios read one chunk at a time, the default).
fn config(db: &TestDatabase, redis_url: &str, http: &str, parallel: usize, chunk_rows: usize) -> String {
    format!(
        "{}\n[snapshot]\nparallel_tables = {parallel}\nchunk_rows = {chunk_rows}\nchunks_in_flight = 3\n\n\
         [[sink]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"{redis_url}\"\n\
         [[sink.table]]\nsource = \"public.item\"\nkey = \"item:{{id}}\"\n\
         [[sink.table]]\nsource = \"public.line\"\nkey = \"line:{{order_id}}:{{line_no}}\"\n\
         [[sink.table]]\nsource = \"public.event\"\nkey = \"event:{{id}}:{{day}}\"\n",
        source_config(db, &db.name, http)
    )
}

/// Writes, updates and deletes across the three tables until `stop`, one
/// small transaction each; counts them in `done`.
fn spawn_writer(url: String, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = connect(&url).await;
        // A fixed pseudo-random sequence: reproducible, no extra crate.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below) as i32
        };
        let mut new_id = 1_000_000;
        while !stop.load(Ordering::Relaxed) {
            let id = next(120_000) + 1;
            let statement = match next(8) {
                0 => format!("DELETE FROM item WHERE id = {id}"),
                1 => {
                    new_id += 1;
                    format!("INSERT INTO item VALUES ({new_id}, 1, '{{}}', '{{}}', 'new')")
                }
                // Leaves the TOASTed note out of the stream (unchanged TOAST).
                2 => format!("UPDATE item SET amount = amount + 1 WHERE id = {}", (id / 1000).max(1) * 1000),
                3 => format!("DELETE FROM line WHERE order_id = {}", next(15_000)),
                4 => format!("UPDATE line SET qty = qty + 1 WHERE order_id = {}", next(15_000)),
                5 => format!("DELETE FROM event WHERE id = {}", next(20_000)),
                6 => format!(
                    "UPDATE item SET data = data || '{{\"u\": 1}}', tags = tags || 'u'::text WHERE id BETWEEN {id} AND {}",
                    id + 3
                ),
                _ => format!("UPDATE item SET id = id + 500000 WHERE id = {id}"),
            };
            client.batch_execute(&statement).await.unwrap();
            done.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// One table copied into a Redis server of the test's own: the server, a
/// connection to it, pgfanout's HTTP address and its config (one Redis
/// sink of `table` with key template `key`, one table copied at a time,
/// plus the `[snapshot]` lines `snapshot`).
async fn one_table_into_redis(
    db: &TestDatabase,
    table: &str,
    key: &str,
    snapshot: &str,
) -> (OwnRedisServer, redis::aio::MultiplexedConnection, String, String) {
    let server = OwnRedisServer::start().await;
    let redis = redis_connection(&server.url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let settings = format!(
        "{}\n[snapshot]\nparallel_tables = 1\n{snapshot}",
        redis_config(db, &server.url, &http, &[(table, key)])
    );
    (server, redis, http, settings)
}

async fn wait_snapshot_done(pgfanout: &Pgfanout) {
    wait_until("the snapshot to finish", Duration::from_secs(480), || async {
        pgfanout.metric("pgfanout_snapshot_tables_remaining{sink=\"cache\"}").await == Some(0.0)
    })
    .await;
}

async fn wait_all_equal(db: &TestDatabase, redis: &mut redis::aio::MultiplexedConnection, pgfanout: &Pgfanout) {
    wait_for_redis_match(db, "item", "id", redis, "item:", pgfanout).await;
    wait_for_redis_match(db, "line", "(order_id || ':' || line_no)", redis, "line:", pgfanout).await;
    wait_for_redis_match(db, "event", "(id || ':' || day)", redis, "event:", pgfanout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_rows_are_copied_while_writes_go_on_and_every_row_ends_equal() {
    let db = create_database("snapshot_copy").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    fill(&db, 120_000).await;
    let server = OwnRedisServer::start().await;
    let mut redis = redis_connection(&server.url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let pgfanout = Pgfanout::start("snapshot_copy", &config(&db, &server.url, &http, 2, 3000), &http);

    let (stop, writes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writer = spawn_writer(db.url.clone(), stop.clone(), writes.clone());
    wait_until("/readyz to say snapshotting", Duration::from_secs(30), || async {
        raw_http_get(&http, "/readyz").await.contains("snapshotting")
    })
    .await;
    wait_snapshot_done(&pgfanout).await;
    let during = writes.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(during > 50, "writes went on during the snapshot ({during})");
    wait_all_equal(&db, &mut redis, &pgfanout).await;
    let copied = pgfanout.metric("pgfanout_snapshot_rows_total{sink=\"cache\",table=\"public.item\"}").await;
    assert!(copied.is_some_and(|rows| rows >= 100_000.0), "item rows counted: {copied:?}");
    wait_until("/readyz to say ready", Duration::from_secs(30), || async {
        http_get(&http, "/readyz").await.is_some_and(|body| body.contains("\"ready\""))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_killed_halfway_resumes_after_the_last_stored_chunk() {
    let db = create_database("snapshot_resume").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    fill(&db, 60_000).await;
    let server = OwnRedisServer::start().await;
    let mut redis = redis_connection(&server.url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let settings = config(&db, &server.url, &http, 1, 1000);
    let mut first = Pgfanout::start("snapshot_resume", &settings, &http);
    let progress_key = "pgfanout:checkpoint:cache:snapshot";
    let progress_of = |text: &str| -> serde_json::Value { serde_json::from_str(text).unwrap() };
    wait_until("a few chunks of item to be stored", Duration::from_secs(60), || {
        let mut redis = redis.clone();
        async move {
            let stored: Option<String> = redis::cmd("GET").arg(progress_key).query_async(&mut redis).await.unwrap();
            stored.is_some_and(|text| progress_of(&text)["tables"]["public.item"]["chunks"].as_u64() >= Some(5))
        }
    })
    .await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10)).await;
    let stored: String = redis::cmd("GET").arg(progress_key).query_async(&mut redis).await.unwrap();
    let item = &progress_of(&stored)["tables"]["public.item"];
    assert_eq!(item["state"], "copying", "killed halfway: {stored}");
    let rows_before = item["rows"].as_u64().unwrap();
    let after: i64 = item["after"][0].as_str().unwrap().parse().unwrap();
    assert!((5000..60_000).contains(&rows_before), "{stored}");

    let second = Pgfanout::start("snapshot_resume", &settings, &http);
    wait_snapshot_done(&second).await;
    wait_all_equal(&db, &mut redis, &second).await;
    // Chunks the sink had stored were not read again: the second run wrote
    // exactly the rows after the stored key.
    let copied = second.metric("pgfanout_snapshot_rows_total{sink=\"cache\",table=\"public.item\"}").await;
    let remaining: i64 =
        db.client.query_one("SELECT count(*) FROM item WHERE id > $1", &[&(after as i32)]).await.unwrap().get(0);
    assert_eq!(copied, Some(remaining as f64), "rows copied after the restart ({stored})");
    assert_eq!(remaining as u64 + rows_before, 60_000);
}

/// The lean schema every store kind can hold as is: a table with a TOASTed
/// column and one with a composite key.
const ALL_STORES_SCHEMA: &str = "
    CREATE TABLE item (id int PRIMARY KEY, qty int NOT NULL, label text NOT NULL, note text);
    ALTER TABLE item ALTER COLUMN note SET STORAGE EXTERNAL;
    CREATE TABLE line (order_id int, line_no int, qty int NOT NULL, PRIMARY KEY (order_id, line_no));
    INSERT INTO item SELECT i, i % 97, 'item ' || i,
        CASE WHEN i % 100 = 0 THEN repeat('long note ' || i, 400) WHEN i % 3 = 0 THEN NULL ELSE 'n' || i END
        FROM generate_series(1, 2500) i;
    INSERT INTO line SELECT i / 4, i % 4, i FROM generate_series(1, 2000) i;
";

/// One line per row, the same whichever store it is read from:
/// `item id|qty|label|note` and `line order_id|line_no|qty`, NULL as `∅`.
type StoreLines = std::collections::BTreeSet<String>;

async fn postgres_lines(db: &TestDatabase) -> StoreLines {
    let sql = "SELECT 'item ' || id || '|' || qty || '|' || label || '|' || coalesce(note, '∅') FROM item
               UNION ALL SELECT 'line ' || order_id || '|' || line_no || '|' || qty FROM line";
    db.client.query(sql, &[]).await.unwrap().iter().map(|row| row.get(0)).collect()
}

fn bson_text(value: Option<&bson::Bson>) -> String {
    match value {
        Some(bson::Bson::Int32(i)) => i.to_string(),
        Some(bson::Bson::Int64(i)) => i.to_string(),
        Some(bson::Bson::String(s)) => s.clone(),
        None | Some(bson::Bson::Null) => "∅".into(),
        Some(other) => format!("{other:?}"),
    }
}

async fn mongo_lines(client: &mongodb::Client, database: &str) -> StoreLines {
    use futures_util::TryStreamExt;
    let mut lines = StoreLines::new();
    for table in ["item"] {
        let collection = client.database(database).collection::<bson::Document>(table);
        let documents: Vec<bson::Document> = collection.find(bson::doc! {}).await.unwrap().try_collect().await.unwrap();
        for d in documents {
            lines.insert(match table {
                "item" => format!(
                    "item {}|{}|{}|{}",
                    bson_text(d.get("_id")),
                    bson_text(d.get("qty")),
                    bson_text(d.get("label")),
                    bson_text(d.get("note"))
                ),
                _ => format!(
                    "line {}|{}|{}",
                    bson_text(d.get("order_id")),
                    bson_text(d.get("line_no")),
                    bson_text(d.get("qty"))
                ),
            });
        }
    }
    lines
}

async fn cassandra_lines(session: &scylla::client::session::Session, keyspace: &str) -> StoreLines {
    use scylla::value::{CqlValue, Row};
    let text = |value: &Option<CqlValue>| match value {
        Some(CqlValue::Int(i)) => i.to_string(),
        Some(CqlValue::Text(s)) => s.clone(),
        None => "∅".into(),
        Some(other) => format!("{other:?}"),
    };
    let mut lines = StoreLines::new();
    for (what, select) in [
        ("item", format!("SELECT id, qty, label, note FROM {keyspace}.item")),
        ("line", format!("SELECT order_id, line_no, qty FROM {keyspace}.line")),
    ] {
        // Not created yet: nothing to read so far.
        let Ok(result) = session.query_unpaged(select, ()).await else { continue };
        let rows = result.into_rows_result().unwrap();
        for row in rows.rows::<Row>().unwrap() {
            let cells: Vec<String> = row.unwrap().columns.iter().map(text).collect();
            lines.insert(format!("{what} {}", cells.join("|")));
        }
    }
    lines
}

async fn graph_lines(store: &mut common::graph::GraphStore) -> StoreLines {
    let text = |cell: &common::graph::Cell| match cell {
        common::graph::Cell::Null => "∅".to_owned(),
        other => other.text(),
    };
    let mut lines = StoreLines::new();
    for (what, query) in [
        ("item", "MATCH (n:Item) RETURN n.id, n.qty, n.label, n.note"),
        ("line", "MATCH (n:Line) RETURN n.order_id, n.line_no, n.qty"),
    ] {
        for row in store.rows(query).await {
            lines.insert(format!("{what} {}", row.iter().map(text).collect::<Vec<_>>().join("|")));
        }
    }
    lines
}

/// What differs between PostgreSQL's lines and a store's, a few of each.
fn difference(expected: &StoreLines, actual: &StoreLines) -> String {
    let short = |line: &String| line.chars().take(60).collect::<String>();
    let missing: Vec<_> = expected.difference(actual).take(3).map(short).collect();
    let extra: Vec<_> = actual.difference(expected).take(3).map(short).collect();
    format!("{} rows vs {}: missing {missing:?}, extra {extra:?}", expected.len(), actual.len())
}

/// Writes, updates (some leaving the TOASTed note out), deletes and key
/// moves on both tables until `stop`, one small transaction each.
fn spawn_lean_writer(url: String, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = connect(&url).await;
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below) as i32
        };
        let mut new_id = 100_000;
        while !stop.load(Ordering::Relaxed) {
            let id = next(2_500) + 1;
            let statement = match next(7) {
                0 => format!("DELETE FROM item WHERE id = {id}"),
                1 => {
                    new_id += 1;
                    format!("INSERT INTO item VALUES ({new_id}, 1, 'new {new_id}', NULL)")
                }
                2 => format!("UPDATE item SET qty = qty + 1 WHERE id = {}", (id / 100).max(1) * 100),
                3 => format!("UPDATE item SET label = label || '+', note = 'changed' WHERE id = {id}"),
                // Not a row with a TOASTed note: a streamed key move sent with the note
                // "unchanged" loses it in MongoDB, Cassandra and FalkorDB (a sink
                // limitation under REPLICA IDENTITY DEFAULT, not the snapshot's).
                4 => format!("UPDATE item SET id = id + 50000 WHERE id = {id} AND id % 100 <> 0"),
                5 => format!("DELETE FROM line WHERE order_id = {}", next(500)),
                _ => format!("UPDATE line SET qty = qty + 1, line_no = line_no + 10 WHERE order_id = {}", next(500)),
            };
            client.batch_execute(&statement).await.unwrap();
            done.fetch_add(1, Ordering::Relaxed);
            // Paced (not a synchronisation): the slowest stand-in store keeps up.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// PostgreSQL with one sink of each kind: Redis (`cache`), MongoDB
/// (`docs`, `item` only), FalkorDB (`graph`) and Cassandra (`wide`).
struct AllStores {
    db: TestDatabase,
    _redis_server: OwnRedisServer,
    redis: redis::aio::MultiplexedConnection,
    mongo: mongodb::Client,
    session: scylla::client::session::Session,
    graph: common::graph::GraphStore,
    pgfanout: Pgfanout,
}

const ALL_SINKS: [&str; 4] = ["cache", "docs", "graph", "wide"];

impl AllStores {
    /// Database `name` with `schema`, the stores emptied, pgfanout started.
    async fn start(name: &str, schema: &str) -> AllStores {
        let db = create_database(name).await;
        db.client.batch_execute(schema).await.unwrap();
        let server = OwnRedisServer::start().await;
        let redis = redis_connection(&server.url).await;
        let mongo_url = required_env("PGFANOUT_TEST_MONGODB_URL");
        let mongo = mongodb::Client::with_uri_str(&mongo_url).await.unwrap();
        mongo.database(&db.name).drop().await.unwrap();
        let cassandra_node = required_env("PGFANOUT_TEST_CASSANDRA_NODES");
        let cassandra_node = cassandra_node.split(',').next().unwrap().trim().to_owned();
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_node(&cassandra_node)
            .build()
            .await
            .unwrap_or_else(|err| panic!("cannot reach Cassandra at {cassandra_node}: {err}"));
        session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", db.name), ()).await.unwrap();
        let graph = common::graph::GraphStore::open(common::graph::Backend::FalkorDb, &db.name).await;
        let http = format!("127.0.0.1:{}", free_port());
        let config = format!(
            r#"{source}
    [snapshot]
    parallel_tables = 8
    chunk_rows = 200

    [[sink]]
    name = "cache"
    kind = "redis"
    url = "{redis_url}"
    [[sink.table]]
    source = "public.item"
    key = "item:{{id}}"
    [[sink.table]]
    source = "public.line"
    key = "line:{{order_id}}:{{line_no}}"

    [[sink]]
    name = "docs"
    kind = "mongodb"
    url = "{mongo_url}"
    database = "{name}"
    [[sink.table]]
    source = "public.item"

    [[sink]]
    name = "graph"
    kind = "graph"
    {graph_lines}
    [[sink.table]]
    source = "public.item"
    label = "Item"
    [[sink.table]]
    source = "public.line"
    label = "Line"

    [[sink]]
    name = "wide"
    kind = "scylla"
    nodes = ["{cassandra_node}"]
    keyspace = "{name}"
    consistency = "one"
    manage_schema = true
    replication = "{{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    [[sink.table]]
    source = "public.item"
    [[sink.table]]
    source = "public.line"
    "#,
            source = source_config(&db, &db.name, &http),
            redis_url = server.url,
            name = db.name,
            graph_lines = graph.sink_lines(),
        );
        let pgfanout = Pgfanout::start(name, &config, &http);
        AllStores { db, _redis_server: server, redis, mongo, session, graph, pgfanout }
    }

    /// Waits until every store equals PostgreSQL; panics with what differs.
    async fn wait_equal(&mut self, what: &str) {
        let db = &self.db;
        let expected = postgres_lines(db).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let mut differences = Vec::new();
            let redis_items = table_as_text(db, "item", "id").await == redis_hashes(&mut self.redis, "item:").await;
            let redis_lines = table_as_text(db, "line", "(order_id || ':' || line_no)").await
                == redis_hashes(&mut self.redis, "line:").await;
            if !(redis_items && redis_lines) {
                differences.push("redis differs".to_owned());
            }
            // nx-27017 cannot match a composite `_id` (a sub-document): MongoDB gets `item` only.
            let items_only: StoreLines = expected.iter().filter(|line| line.starts_with("item ")).cloned().collect();
            let mongo_items = mongo_lines(&self.mongo, &db.name).await;
            if mongo_items != items_only {
                differences.push(format!("mongodb: {}", difference(&items_only, &mongo_items)));
            }
            let stores = [
                ("cassandra", cassandra_lines(&self.session, &db.name).await),
                ("falkordb", graph_lines(&mut self.graph).await),
            ];
            for (store, actual) in &stores {
                if *actual != expected {
                    differences.push(format!("{store}: {}", difference(&expected, actual)));
                }
            }
            if differences.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "stores never matched PostgreSQL {what}:\n{}\nlog:\n{}",
                differences.join("\n"),
                self.pgfanout.log_text()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_kind_ends_equal_after_a_snapshot_under_writes() {
    let mut stores = AllStores::start("snapshot_all_stores", ALL_STORES_SCHEMA).await;
    let (stop, writes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writer = spawn_lean_writer(stores.db.url.clone(), stop.clone(), writes.clone());
    let pgfanout = &stores.pgfanout;
    wait_until("every sink's snapshot to finish", Duration::from_secs(120), || async {
        let mut remaining = 0.0;
        for sink in ALL_SINKS {
            let series = format!("pgfanout_snapshot_tables_remaining{{sink=\"{sink}\"}}");
            remaining += pgfanout.metric(&series).await.unwrap_or(1.0);
        }
        remaining == 0.0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let during = writes.load(Ordering::Relaxed);
    assert!(during > 50, "writes went on during the snapshot ({during})");
    stores.wait_equal(&format!("after {during} writes during the snapshot")).await;
    for sink in ALL_SINKS {
        let series = format!("pgfanout_snapshot_rows_total{{sink=\"{sink}\",table=\"public.item\"}}");
        let copied = stores.pgfanout.metric(&series).await;
        assert!(copied.is_some_and(|rows| rows >= 2_000.0), "{sink}: item rows copied {copied:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_the_source_refuses_is_reported_retried_and_copied_once_fixed() {
    let db = create_database("snapshot_refused").await;
    let role = format!("{}_role", db.name);
    // Roles are cluster-wide: start from none, so the role script creates it.
    db.client
        .batch_execute(&format!(
            "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                 DROP OWNED BY {role} CASCADE; DROP ROLE {role}; END IF; END $$;
             CREATE TABLE item (id int PRIMARY KEY, note text);
             CREATE TABLE line (order_id int, line_no int, qty int, PRIMARY KEY (order_id, line_no));
             INSERT INTO item SELECT i, 'n' || i FROM generate_series(1, 3000) i;
             INSERT INTO line SELECT i / 4, i % 4, i FROM generate_series(1, 3000) i;"
        ))
        .await
        .unwrap();
    let login = least_privilege_role(&db, "public.item,public.line");
    // The role may stream `line` but not read it: its copy fails for good until granted.
    db.client.batch_execute(&format!("REVOKE SELECT ON line FROM {role}")).await.unwrap();
    let server = OwnRedisServer::start().await;
    let mut redis = redis_connection(&server.url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let settings = redis_config(
        &db,
        &server.url,
        &http,
        &[("public.item", "item:{id}"), ("public.line", "line:{order_id}:{line_no}")],
    )
    .replace(&format!("url = \"{}\"", db.url), &format!("url = \"{}\"", login.url));
    let settings = format!("{settings}\n[snapshot]\nchunk_rows = 500\n");
    let pgfanout = Pgfanout::start_with_env("snapshot_refused", &settings, &http, &login.env());
    let sink = db.name.clone();
    wait_until("/readyz to say the snapshot failed", Duration::from_secs(60), || async {
        raw_http_get(&http, "/readyz").await.contains("snapshot failed")
    })
    .await;
    let failed = pgfanout.metric(&format!("pgfanout_snapshot_tables_failed{{sink=\"{sink}\"}}")).await;
    assert_eq!(failed, Some(1.0), "{}", pgfanout.log_text());
    let failures = format!("pgfanout_snapshot_failures_total{{sink=\"{sink}\",table=\"public.line\"}}");
    assert!(pgfanout.metric(&failures).await >= Some(1.0));
    assert!(pgfanout.log_text().contains("permission denied"), "the log names the cause");
    // Only the refused table is left; streamed changes to it still arrive meanwhile.
    wait_until("item to be copied", Duration::from_secs(60), || async {
        pgfanout.metric(&format!("pgfanout_snapshot_tables_remaining{{sink=\"{sink}\"}}")).await == Some(1.0)
    })
    .await;
    db.client.batch_execute("UPDATE line SET qty = -qty WHERE order_id < 10").await.unwrap();

    db.client.batch_execute(&format!("GRANT SELECT ON line TO {role}")).await.unwrap();
    wait_until("the snapshot to finish once the table is readable", Duration::from_secs(90), || async {
        pgfanout.metric(&format!("pgfanout_snapshot_tables_remaining{{sink=\"{sink}\"}}")).await == Some(0.0)
    })
    .await;
    wait_for_redis_match(&db, "item", "id", &mut redis, "item:", &pgfanout).await;
    wait_for_redis_match(&db, "line", "(order_id || ':' || line_no)", &mut redis, "line:", &pgfanout).await;
    assert_eq!(pgfanout.metric(&format!("pgfanout_snapshot_tables_failed{{sink=\"{sink}\"}}")).await, Some(0.0));
    wait_until("/readyz to say ready", Duration::from_secs(30), || async {
        http_get(&http, "/readyz").await.is_some_and(|body| body.contains("\"ready\""))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_during_the_snapshot_is_copied_from_then_on() {
    let db = create_database("snapshot_altered").await;
    db.client
        .batch_execute(
            // A TOASTed value: the table is read in key order, whose
            // progress names the last key stored.
            "CREATE TABLE item (id int PRIMARY KEY, note text);
             ALTER TABLE item ALTER COLUMN note SET STORAGE EXTERNAL;
             INSERT INTO item SELECT i, CASE WHEN i = 1 THEN repeat('long ', 1000) ELSE 'n' || i END
                 FROM generate_series(1, 20000) i;",
        )
        .await
        .unwrap();
    let (_server, mut redis, http, settings) =
        one_table_into_redis(&db, "public.item", "item:{id}", "chunk_rows = 500\n").await;
    let pgfanout = Pgfanout::start("snapshot_altered", &settings, &http);
    let sink = db.name.clone();
    let progress_key = format!("pgfanout:checkpoint:{sink}:snapshot");
    let stored_after = |redis: redis::aio::MultiplexedConnection| {
        let progress_key = progress_key.clone();
        async move {
            let mut redis = redis;
            let stored: Option<String> = redis::cmd("GET").arg(&progress_key).query_async(&mut redis).await.unwrap();
            stored.and_then(|text| {
                let progress: serde_json::Value = serde_json::from_str(&text).unwrap();
                progress["tables"]["public.item"]["after"][0].as_str().and_then(|after| after.parse::<i64>().ok())
            })
        }
    };
    wait_until("a few chunks to be stored", Duration::from_secs(60), || {
        let read = stored_after(redis.clone());
        async move { read.await.is_some_and(|after| after >= 1500) }
    })
    .await;
    db.client.batch_execute("ALTER TABLE item ADD COLUMN extra text DEFAULT 'x'").await.unwrap();
    let at_alter = stored_after(redis.clone()).await.unwrap();
    assert!(at_alter < 15_000, "the ALTER came too late to test anything ({at_alter})");
    wait_until("the snapshot to finish", Duration::from_secs(480), || async {
        pgfanout.metric(&format!("pgfanout_snapshot_tables_remaining{{sink=\"{sink}\"}}")).await == Some(0.0)
    })
    .await;
    // Rows read before the ALTER committed have no `extra` anywhere (adding a
    // column with a default writes no WAL for them); at most four chunks were
    // read past the stored key (one applied, one merged, one waiting, one
    // being read). Every row read afterwards carries it.
    let hashes = redis_hashes(&mut redis, "item:").await;
    assert_eq!(hashes.len(), 20_000);
    let later: Vec<_> = hashes.iter().filter(|(id, _)| id.parse::<i64>().unwrap() > at_alter + 2_000).collect();
    assert!(later.len() > 4_000, "{} rows after the ALTER", later.len());
    let without: Vec<_> =
        later.iter().filter(|(_, fields)| fields.get("extra").map(String::as_str) != Some("x")).take(3).collect();
    assert!(
        without.is_empty(),
        "rows copied after the ALTER lack the new column: {without:?}\n{}",
        pgfanout.log_text()
    );
}

/// A plain table without TOASTed values is read by heap block range, by
/// three readers taking its chunks in turn: rows that updates move into
/// blocks copied already (or not yet) end equal, and a `kill -9` halfway
/// resumes at the first block the sink had not stored, reading no stored
/// block again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_read_by_block_range_keeps_rows_updates_move_and_resumes_at_the_stored_block() {
    let db = create_database("snapshot_blocks").await;
    db.client
        .batch_execute(
            "CREATE TABLE plain (id int PRIMARY KEY, qty int NOT NULL, label text NOT NULL) WITH (fillfactor = 100);
             INSERT INTO plain SELECT i, i, 'l' || i FROM generate_series(1, 60000) i;
             DELETE FROM plain WHERE id % 5 = 0 AND id <= 6000;",
        )
        .await
        .unwrap();
    // Free space in the first blocks (in the free space map), for rows that
    // updates move there; statistics, for chunks of about chunk_rows rows.
    db.client.batch_execute("VACUUM ANALYZE plain").await.unwrap();
    let (_server, mut redis, http, settings) =
        one_table_into_redis(&db, "public.plain", "plain:{id}", "chunk_rows = 1000\nreaders_per_table = 3\n").await;
    let progress_key = format!("pgfanout:checkpoint:{}:snapshot", db.name);
    let stored_progress = |redis: redis::aio::MultiplexedConnection| {
        let progress_key = progress_key.clone();
        async move {
            let mut redis = redis;
            let stored: Option<String> = redis::cmd("GET").arg(&progress_key).query_async(&mut redis).await.unwrap();
            stored
                .map(|text| serde_json::from_str::<serde_json::Value>(&text).unwrap()["tables"]["public.plain"].clone())
        }
    };

    // Updates that grow rows out of their full blocks: each moves its row
    // to a block with room, among the first ones or at the end.
    let mut first = Pgfanout::start("snapshot_blocks", &settings, &http);
    let (stop, moves) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let mover = {
        let (url, stop, moves) = (db.url.clone(), stop.clone(), moves.clone());
        tokio::spawn(async move {
            let client = connect(&url).await;
            let mut id = 60_000;
            while !stop.load(Ordering::Relaxed) {
                id = (id * 7919 + 13) % 60_000 + 1;
                client
                    .batch_execute(&format!(
                        "UPDATE plain SET qty = qty + 1, label = label || '-moved-by-an-update' WHERE id = {id}"
                    ))
                    .await
                    .unwrap();
                moves.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    wait_until("a few chunks of blocks to be stored", Duration::from_secs(60), || {
        let read = stored_progress(redis.clone());
        async move { read.await.is_some_and(|plain| plain["chunks"].as_u64() >= Some(5)) }
    })
    .await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    mover.await.unwrap();
    assert!(moves.load(Ordering::Relaxed) > 20, "rows moved during the copy: {}", moves.load(Ordering::Relaxed));
    let plain = stored_progress(redis.clone()).await.unwrap();
    assert_eq!(plain["state"], "copying_blocks", "killed halfway: {plain}");
    let before = plain["before"].as_u64().unwrap();
    let remaining: i64 = db
        .client
        .query_one(&format!("SELECT count(*) FROM plain WHERE ctid >= '({before},0)'::tid"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(remaining > 0 && remaining < 57_000, "rows after block {before}: {remaining}");

    let second = Pgfanout::start("snapshot_blocks", &settings, &http);
    wait_until("the snapshot to finish", Duration::from_secs(120), || async {
        second.metric(&format!("pgfanout_snapshot_tables_remaining{{sink=\"{}\"}}", db.name)).await == Some(0.0)
    })
    .await;
    wait_for_redis_match(&db, "plain", "id", &mut redis, "plain:", &second).await;
    // The blocks the sink had stored were not read again.
    let copied =
        second.metric(&format!("pgfanout_snapshot_rows_total{{sink=\"{}\",table=\"public.plain\"}}", db.name)).await;
    assert_eq!(copied, Some(remaining as f64), "rows copied after the restart ({plain})");
}

/// Transactions on a table no sink routes (so not published, and never on
/// the stream) commit all through the copy: a read that could not see one
/// committing meanwhile is merged, not read again, because the stream's
/// record of the copied table shows that transaction never changed it.
/// Only those that began before the copy did may cost a second read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_an_unpublished_table_do_not_make_chunks_be_read_again() {
    const WRITERS: u64 = 4;
    let db = create_database("snapshot_busy_elsewhere").await;
    db.client
        .batch_execute(
            "CREATE TABLE kept (id int PRIMARY KEY, label text NOT NULL);
             INSERT INTO kept SELECT i, 'k' || i FROM generate_series(1, 40000) i;
             CREATE TABLE busy (id bigserial PRIMARY KEY, n int NOT NULL);
             ANALYZE kept;",
        )
        .await
        .unwrap();
    let (_server, mut redis, http, settings) =
        one_table_into_redis(&db, "public.kept", "kept:{id}", "chunk_rows = 1000\n").await;
    let (stop, commits) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (url, stop, commits) = (db.url.clone(), stop.clone(), commits.clone());
        writers.push(tokio::spawn(async move {
            let client = connect(&url).await;
            while !stop.load(Ordering::Relaxed) {
                // In progress for a few milliseconds: most chunk reads see
                // one of them, and one committing before the read ends.
                client
                    .batch_execute("BEGIN; INSERT INTO busy (n) VALUES (1); SELECT pg_sleep(0.002); COMMIT")
                    .await
                    .unwrap();
                commits.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let pgfanout = Pgfanout::start("snapshot_busy_elsewhere", &settings, &http);
    let sink = &db.name;
    wait_until("the snapshot to finish", Duration::from_secs(120), || async {
        pgfanout.metric(&format!("pgfanout_snapshot_tables_remaining{{sink=\"{sink}\"}}")).await == Some(0.0)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let commits = commits.load(Ordering::Relaxed);
    assert!(commits > 500, "transactions on the unpublished table during the copy: {commits}");
    wait_for_redis_match(&db, "kept", "id", &mut redis, "kept:", &pgfanout).await;
    let reread = pgfanout
        .metric(&format!("pgfanout_snapshot_chunks_reread_total{{sink=\"{sink}\",table=\"public.kept\"}}"))
        .await
        .unwrap_or(0.0);
    // Each writer's transaction in progress when the copy began may be
    // seen committing by both readers' first reads.
    assert!(reread <= (2 * WRITERS) as f64, "chunks read again: {reread} (of about 40; {commits} commits beside)");
}
