//! A key-changing UPDATE that leaves a TOASTed column unchanged, against
//! real servers: pgoutput sends that column as "unchanged TOAST" (no value),
//! so the value reaches the new key only if pgfanout takes it from the old
//! row (identity FULL) or the store carries it over from the object under
//! the old key (identity DEFAULT, whose old row holds only the key). Every
//! store — Redis, MongoDB, FalkorDB, Neo4j, Cassandra — ends equal to
//! PostgreSQL either way, also when moves chain and re-use keys within one
//! transaction, and when the moves are replayed after the old rows are gone.
//! The graph stores also hold a join table's rows as relationships, whose
//! key moves carry the value over the same way.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::graph::{Backend, Cell, GraphStore};
use common::*;

/// One line per row, the same whichever store it is read from:
/// `id|label|note`, NULL as `∅`.
type StoreLines = BTreeSet<String>;

/// The stores every scenario writes to, and how to read them back.
struct Stores {
    redis: redis::aio::MultiplexedConnection,
    mongo: mongodb::Client,
    falkordb: GraphStore,
    neo4j: GraphStore,
    cassandra: scylla::client::session::Session,
    cassandra_node: String,
    /// The MongoDB database and the Cassandra keyspace: the test database's name.
    name: String,
}

const STORES: [&str; 5] = ["redis", "mongodb", "falkordb", "neo4j", "cassandra"];

impl Stores {
    async fn open(name: &str, redis_url: &str) -> Stores {
        let mongo = mongodb::Client::with_uri_str(required_env("PGFANOUT_TEST_MONGODB_URL")).await.unwrap();
        mongo.database(name).drop().await.unwrap();
        let nodes = required_env("PGFANOUT_TEST_CASSANDRA_NODES");
        let cassandra_node = nodes.split(',').next().unwrap_or_default().trim().to_owned();
        let cassandra = scylla::client::session_builder::SessionBuilder::new()
            .known_node(&cassandra_node)
            .build()
            .await
            .unwrap_or_else(|err| panic!("cannot reach Cassandra at {cassandra_node}: {err}"));
        cassandra.query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), ()).await.unwrap();
        Stores {
            redis: redis_connection(redis_url).await,
            mongo,
            falkordb: GraphStore::open(Backend::FalkorDb, name).await,
            neo4j: GraphStore::open(Backend::Neo4j, name).await,
            cassandra,
            cassandra_node,
            name: name.to_owned(),
        }
    }

    /// The `[[sink]]` sections writing `public.item` to every store.
    fn sink_config(&self, redis_url: &str) -> String {
        let graph = |name: &str, store: &GraphStore| {
            format!(
                "[[sink]]\nname = \"{name}\"\nkind = \"graph\"\n{}\n\
                 [[sink.table]]\nsource = \"public.item\"\nlabel = \"Item\"\n\
                 [[sink.table]]\nsource = \"public.visit\"\nrelationship = {{ type = \"VISITED\", \
                 from = {{ column = \"person_id\", label = \"Person\" }}, to = {{ column = \"place_id\", label = \"Place\" }} }}\n",
                store.sink_lines()
            )
        };
        format!(
            r#"
[[sink]]
name = "cache"
kind = "redis"
url = "{redis_url}"
[[sink.table]]
source = "public.item"
key = "item:{{id}}"

[[sink]]
name = "docs"
kind = "mongodb"
url = "{mongo_url}"
database = "{name}"
[[sink.table]]
source = "public.item"

{falkordb}
{neo4j}
[[sink]]
name = "cql"
kind = "scylla"
nodes = ["{node}"]
keyspace = "{name}"
consistency = "one"
manage_schema = true
replication = "{{'class': 'SimpleStrategy', 'replication_factor': 1}}"
[[sink.table]]
source = "public.item"
"#,
            mongo_url = required_env("PGFANOUT_TEST_MONGODB_URL"),
            name = self.name,
            falkordb = graph("falkordb", &self.falkordb),
            neo4j = graph("neo4j", &self.neo4j),
            node = self.cassandra_node,
        )
    }

    async fn lines(&mut self, store: &str) -> StoreLines {
        match store {
            "redis" => redis_lines(&mut self.redis).await,
            "mongodb" => mongo_lines(&self.mongo, &self.name).await,
            "falkordb" => graph_lines(&mut self.falkordb).await,
            "neo4j" => graph_lines(&mut self.neo4j).await,
            _ => cassandra_lines(&self.cassandra, &self.name).await,
        }
    }

    /// Forgets every sink's checkpoint and source record, so that a run on
    /// another slot applies that slot's whole stream again (Cassandra keeps
    /// its timestamp reservation, as after a crash).
    async fn forget_checkpoints(&mut self) {
        let keys: Vec<String> =
            redis::cmd("KEYS").arg("pgfanout:checkpoint:cache*").query_async(&mut self.redis).await.unwrap();
        let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut self.redis).await.unwrap();
        self.mongo.database(&self.name).collection::<bson::Document>("pgfanout_checkpoints").drop().await.unwrap();
        for graph in [&mut self.falkordb, &mut self.neo4j] {
            graph.rows("MATCH (c:PgfanoutCheckpoint) DELETE c").await;
        }
        let table = format!("{}.pgfanout_checkpoints", self.name);
        self.cassandra.query_unpaged(format!("DELETE lsn FROM {table} WHERE sink = 'cql'"), ()).await.unwrap();
        for row in ["cql.source", "cql.snapshot"] {
            self.cassandra.query_unpaged(format!("DELETE FROM {table} WHERE sink = '{row}'"), ()).await.unwrap();
        }
    }
}

async fn postgres_lines(db: &TestDatabase) -> StoreLines {
    let sql = "SELECT id || '|' || label || '|' || coalesce(note, '∅') FROM item";
    db.client.query(sql, &[]).await.unwrap().iter().map(|row| row.get(0)).collect()
}

async fn redis_lines(redis: &mut redis::aio::MultiplexedConnection) -> StoreLines {
    let field = |fields: &std::collections::BTreeMap<String, String>, name: &str| {
        fields.get(name).cloned().unwrap_or_else(|| "∅".into())
    };
    redis_hashes(redis, "item:")
        .await
        .values()
        .map(|fields| format!("{}|{}|{}", field(fields, "id"), field(fields, "label"), field(fields, "note")))
        .collect()
}

async fn mongo_lines(client: &mongodb::Client, database: &str) -> StoreLines {
    use futures_util::TryStreamExt;
    let text = |value: Option<&bson::Bson>| match value {
        Some(bson::Bson::Int32(i)) => i.to_string(),
        Some(bson::Bson::String(s)) => s.clone(),
        None | Some(bson::Bson::Null) => "∅".into(),
        Some(other) => format!("{other:?}"),
    };
    let collection = client.database(database).collection::<bson::Document>("item");
    let documents: Vec<bson::Document> = collection.find(bson::doc! {}).await.unwrap().try_collect().await.unwrap();
    documents
        .iter()
        .map(|d| format!("{}|{}|{}", text(d.get("_id")), text(d.get("label")), text(d.get("note"))))
        .collect()
}

/// The visits (join rows) as `visit id|person|place|note` lines.
async fn postgres_visit_lines(db: &TestDatabase) -> StoreLines {
    let sql = "SELECT 'visit ' || id || '|' || person_id || '|' || place_id || '|' || coalesce(note, '∅') FROM visit";
    db.client.query(sql, &[]).await.unwrap().iter().map(|row| row.get(0)).collect()
}

/// The items' lines and the visits' (relationships), as PostgreSQL's.
async fn graph_lines(store: &mut GraphStore) -> StoreLines {
    let text = |cell: &Cell| match cell {
        Cell::Null => "∅".to_owned(),
        other => other.text(),
    };
    let join = |rows: Vec<Vec<Cell>>| {
        rows.iter().map(|row| row.iter().map(text).collect::<Vec<_>>().join("|")).collect::<Vec<_>>()
    };
    let mut lines: StoreLines =
        join(store.rows("MATCH (n:Item) RETURN n.id, n.label, n.note").await).into_iter().collect();
    let visits = store.rows("MATCH (a:Person)-[r:VISITED]->(b:Place) RETURN r.id, a.id, b.id, r.note").await;
    lines.extend(join(visits).into_iter().map(|line| format!("visit {line}")));
    lines
}

async fn cassandra_lines(session: &scylla::client::session::Session, keyspace: &str) -> StoreLines {
    let Ok(result) = session.query_unpaged(format!("SELECT id, label, note FROM {keyspace}.item"), ()).await else {
        // Not created yet.
        return StoreLines::new();
    };
    let rows = result.into_rows_result().unwrap();
    rows.rows::<(i32, Option<String>, Option<String>)>()
        .unwrap()
        .map(|row| {
            let (id, label, note) = row.unwrap();
            let none = || "∅".to_owned();
            format!("{id}|{}|{}", label.unwrap_or_else(none), note.unwrap_or_else(none))
        })
        .collect()
}

/// What differs between PostgreSQL's lines and a store's (values shortened).
fn difference(expected: &StoreLines, actual: &StoreLines) -> String {
    let short = |line: &String| line.chars().take(40).collect::<String>();
    let missing: Vec<_> = expected.difference(actual).map(short).collect();
    let extra: Vec<_> = actual.difference(expected).map(short).collect();
    format!("missing {missing:?}, extra {extra:?}")
}

/// Waits until every store equals PostgreSQL; panics with what differs.
async fn wait_for_stores(db: &TestDatabase, stores: &mut Stores, pgfanout: &Pgfanout, what: &str) {
    let items = postgres_lines(db).await;
    let mut with_visits = items.clone();
    with_visits.extend(postgres_visit_lines(db).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut differences = Vec::new();
        for store in STORES {
            let expected = if ["falkordb", "neo4j"].contains(&store) { &with_visits } else { &items };
            let actual = stores.lines(store).await;
            if actual != *expected {
                differences.push(format!("{store}: {}", difference(expected, &actual)));
            }
        }
        if differences.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stores never matched PostgreSQL {what}:\n{}\nlog:\n{}",
            differences.join("\n"),
            pgfanout.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Moves keys of rows whose TOASTed note stays unchanged, under `identity`:
/// single moves, then moves that chain and re-use a key within one
/// transaction; every store ends equal to PostgreSQL. Then the single moves
/// are applied once more from a second slot (their old rows long gone, as
/// in a replay after a crash), and every store still equals PostgreSQL.
async fn move_keys_leaving_the_toast_value_unchanged(name: &str, identity: &str) {
    let db = create_database(name).await;
    db.client
        .batch_execute(&format!(
            "CREATE TABLE item (id int PRIMARY KEY, label text NOT NULL, note text);
             ALTER TABLE item ALTER COLUMN note SET STORAGE EXTERNAL;
             ALTER TABLE item REPLICA IDENTITY {identity};
             CREATE TABLE visit (id int PRIMARY KEY, person_id int NOT NULL, place_id int NOT NULL, note text);
             ALTER TABLE visit ALTER COLUMN note SET STORAGE EXTERNAL;
             ALTER TABLE visit REPLICA IDENTITY {identity};"
        ))
        .await
        .unwrap();
    let server = OwnRedisServer::start().await;
    let mut stores = Stores::open(&db.name, &server.url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let sinks = stores.sink_config(&server.url);
    let config = |slot: &str| format!("{}\n[snapshot]\nenabled = false\n{sinks}", source_config(&db, slot, &http));
    let mut pgfanout = Pgfanout::start(name, &config(&db.name), &http);
    wait_until("pgfanout streams", Duration::from_secs(120), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    db.client
        .batch_execute(
            "INSERT INTO item SELECT i, 'item ' || i, repeat('long note ' || i, 400) FROM generate_series(1, 6) i;
             INSERT INTO visit SELECT i, i % 2, i % 3, repeat('visit note ' || i, 400) FROM generate_series(1, 4) i",
        )
        .await
        .unwrap();
    wait_for_stores(&db, &mut stores, &pgfanout, "after the inserts").await;

    // Within one transaction: 1 moves away and 2 takes its key, which moves
    // on twice; 3 moves into the key 2 left.
    db.client
        .batch_execute(
            "BEGIN;
             UPDATE item SET id = 300 WHERE id = 1;
             UPDATE item SET id = 1, label = label || '+' WHERE id = 2;
             UPDATE item SET id = 400 WHERE id = 1;
             UPDATE item SET id = 1 WHERE id = 400;
             UPDATE item SET id = 2 WHERE id = 3;
             UPDATE visit SET id = 100 WHERE id = 1;
             UPDATE visit SET id = 1, place_id = 7 WHERE id = 2;
             COMMIT;",
        )
        .await
        .unwrap();
    wait_for_stores(&db, &mut stores, &pgfanout, "after the chained moves").await;

    // A second slot streams what follows again later.
    let replay_slot = format!("{name}_replay");
    db.client
        .batch_execute(&format!("SELECT pg_create_logical_replication_slot('{replay_slot}', 'pgoutput')"))
        .await
        .unwrap();
    db.client
        .batch_execute(
            "UPDATE item SET id = id + 100, label = label || '+' WHERE id >= 4;
             UPDATE visit SET id = id + 100 WHERE id >= 3",
        )
        .await
        .unwrap();
    wait_for_stores(&db, &mut stores, &pgfanout, "after the key moves").await;

    pgfanout.signal("TERM");
    assert_eq!(pgfanout.wait_exit(Duration::from_secs(30)).await, Some(0), "{}", pgfanout.log_text());
    stores.forget_checkpoints().await;
    let replay = Pgfanout::start(&replay_slot, &config(&replay_slot), &http);
    let end = db.current_wal_lsn().await;
    wait_until("the second slot is applied", Duration::from_secs(120), || async {
        db.confirmed_flush_lsn(&replay_slot).await >= end
    })
    .await;
    wait_for_stores(&db, &mut stores, &replay, "after the moves were applied again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_move_under_identity_full_keeps_an_unchanged_toast_value() {
    move_keys_leaving_the_toast_value_unchanged("toast_key_move_full", "FULL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_move_under_identity_default_carries_an_unchanged_toast_value_over_in_every_store() {
    move_keys_leaving_the_toast_value_unchanged("toast_key_move_default", "DEFAULT").await;
}
