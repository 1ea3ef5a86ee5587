//! A key-changing UPDATE that leaves a TOASTed column unchanged, against
//! real servers: pgoutput sends that column as "unchanged TOAST" (no value),
//! so the value moves to the new key only if pgfanout takes it from the old
//! row (identity FULL) or the store carries it over from the object under
//! the old key (identity DEFAULT, Redis). A store that cannot do either
//! (MongoDB, FalkorDB under DEFAULT) refuses the move: never a silent loss.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

/// One line per row, the same whichever store it is read from:
/// `id|label|note`, NULL as `∅`.
type StoreLines = BTreeSet<String>;

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

async fn graph_lines(store: &mut common::graph::GraphStore) -> StoreLines {
    let text = |cell: &common::graph::Cell| match cell {
        common::graph::Cell::Null => "∅".to_owned(),
        other => other.text(),
    };
    let rows = store.rows("MATCH (n:Item) RETURN n.id, n.label, n.note").await;
    rows.iter().map(|row| row.iter().map(text).collect::<Vec<_>>().join("|")).collect()
}

/// What differs between PostgreSQL's lines and a store's (values shortened).
fn difference(expected: &StoreLines, actual: &StoreLines) -> String {
    let short = |line: &String| line.chars().take(40).collect::<String>();
    let missing: Vec<_> = expected.difference(actual).map(short).collect();
    let extra: Vec<_> = actual.difference(expected).map(short).collect();
    format!("missing {missing:?}, extra {extra:?}")
}

/// Moves the key of rows with an unchanged TOASTed note under `identity`:
/// under FULL every store ends equal to PostgreSQL; under DEFAULT Redis does
/// and MongoDB and FalkorDB refuse the move, naming the table and the fix.
async fn move_keys_leaving_the_toast_value_unchanged(name: &str, identity: &str) {
    let db = create_database(name).await;
    db.client
        .batch_execute(&format!(
            "CREATE TABLE item (id int PRIMARY KEY, label text NOT NULL, note text);
             ALTER TABLE item ALTER COLUMN note SET STORAGE EXTERNAL;
             ALTER TABLE item REPLICA IDENTITY {identity};"
        ))
        .await
        .unwrap();
    let server = OwnRedisServer::start().await;
    let mut redis = redis_connection(&server.url).await;
    let mongo_url = required_env("PGFANOUT_TEST_MONGODB_URL");
    let mongo = mongodb::Client::with_uri_str(&mongo_url).await.unwrap();
    mongo.database(&db.name).drop().await.unwrap();
    let mut graph = common::graph::GraphStore::open(common::graph::Backend::FalkorDb, &db.name).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = format!(
        r#"{source}
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

    [[sink]]
    name = "graph"
    kind = "graph"
    {graph_lines}
    [[sink.table]]
    source = "public.item"
    label = "Item"
    "#,
        source = source_config(&db, &db.name, &http),
        redis_url = server.url,
        name = db.name,
        graph_lines = graph.sink_lines(),
    );
    let pgfanout = Pgfanout::start(name, &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(60), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    db.client
        .batch_execute(
            "INSERT INTO item SELECT i, 'item ' || i, repeat('long note ' || i, 400) FROM generate_series(1, 3) i",
        )
        .await
        .unwrap();
    let before = postgres_lines(&db).await;
    wait_for_stores(&db, &mut redis, &mongo, &mut graph, &pgfanout, ALL_STORES, "after the inserts").await;
    db.client.batch_execute("UPDATE item SET id = id + 100, label = label || '+' WHERE id <= 2").await.unwrap();
    if identity == "FULL" {
        wait_for_stores(&db, &mut redis, &mongo, &mut graph, &pgfanout, ALL_STORES, "after the key moves").await;
        return;
    }
    // DEFAULT: Redis carries the value over from the hash under the old key;
    // MongoDB and FalkorDB cannot, and refuse the move (the sink blocks on it)
    // rather than write the new row without its value.
    wait_for_stores(&db, &mut redis, &mongo, &mut graph, &pgfanout, &["redis"], "after the key moves").await;
    wait_until("both sinks refuse the move", Duration::from_secs(30), || async {
        let log = pgfanout.log_text();
        let refusals = log.lines().filter(|line| {
            line.contains("public.item")
                && line.contains("column note was an unchanged TOAST value")
                && line.contains("set REPLICA IDENTITY FULL")
        });
        let sinks: BTreeSet<&str> = refusals
            .filter_map(|line| ["\"docs\"", "\"graph\""].into_iter().find(|sink| line.contains(sink)))
            .collect();
        sinks.len() == 2
    })
    .await;
    assert_eq!(mongo_lines(&mongo, &db.name).await, before, "MongoDB keeps the rows as they were");
    assert_eq!(graph_lines(&mut graph).await, before, "FalkorDB keeps the rows as they were");
}

const ALL_STORES: &[&str] = &["redis", "mongodb", "falkordb"];

/// Waits until each of `stores` equals PostgreSQL; panics with what differs.
async fn wait_for_stores(
    db: &TestDatabase,
    redis: &mut redis::aio::MultiplexedConnection,
    mongo: &mongodb::Client,
    graph: &mut common::graph::GraphStore,
    pgfanout: &Pgfanout,
    stores: &[&str],
    what: &str,
) {
    let expected = postgres_lines(db).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut differences = Vec::new();
        for store in stores {
            let actual = match *store {
                "redis" => redis_lines(redis).await,
                "mongodb" => mongo_lines(mongo, &db.name).await,
                _ => graph_lines(graph).await,
            };
            if actual != expected {
                differences.push(format!("{store}: {}", difference(&expected, &actual)));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_move_under_identity_full_keeps_an_unchanged_toast_value() {
    move_keys_leaving_the_toast_value_unchanged("toast_key_move_full", "FULL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_move_under_identity_default_is_carried_over_by_redis_and_refused_elsewhere() {
    move_keys_leaving_the_toast_value_unchanged("toast_key_move_default", "DEFAULT").await;
}
