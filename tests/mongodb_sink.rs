//! End to end: PostgreSQL → pgfanout → the local stack's MongoDB wire server (nx-27017).
//!
//! nx-27017 stores neither Decimal128 nor DateTimes before year 1000, so these tests run
//! `numeric` as text and out-of-range dates as text; Decimal128 and clamping are covered
//! statement by statement in the crate's unit tests.

mod common;

use std::time::Duration;

use bson::{doc, Bson, Document};
use common::*;
use futures_util::TryStreamExt;

/// A client of the stack's MongoDB-wire server.
async fn mongo() -> mongodb::Client {
    mongodb::Client::with_uri_str(required_env("PGFANOUT_TEST_MONGODB_URL")).await.unwrap()
}

/// Every document of `database.collection`, by `_id` (as canonical JSON).
async fn documents(client: &mongodb::Client, database: &str, collection: &str) -> Vec<Document> {
    let cursor = client.database(database).collection::<Document>(collection).find(doc! {}).await.unwrap();
    let mut all: Vec<Document> = cursor.try_collect().await.unwrap();
    all.sort_by_key(|d| d.get("_id").cloned().unwrap_or(Bson::Null).into_canonical_extjson().to_string());
    all
}

/// Whether `field` is true; nx-27017 stores a boolean `$set` on an existing document as 1.
fn is_true(document: &Document, field: &str) -> bool {
    matches!(document.get(field), Some(Bson::Boolean(true) | Bson::Int32(1) | Bson::Int64(1)))
}

async fn document(client: &mongodb::Client, database: &str, collection: &str, id: Bson) -> Option<Document> {
    client.database(database).collection::<Document>(collection).find_one(doc! { "_id": id }).await.unwrap()
}

/// Polls until `condition` holds on the documents of a collection.
async fn wait_for_documents(
    client: &mongodb::Client,
    database: &str,
    collection: &str,
    pgfanout: &Pgfanout,
    what: &str,
    condition: impl Fn(&[Document]) -> bool,
) -> Vec<Document> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let found = documents(client, database, collection).await;
        if condition(&found) {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; documents: {found:#?}\nlog:\n{}",
            pgfanout.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const ZOO: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE zoo (
    id int PRIMARY KEY,
    code text UNIQUE NOT NULL,
    price numeric(30,10),
    at timestamptz,
    naive timestamp,
    day date,
    raw bytea,
    uid uuid,
    doc jsonb,
    tags text[],
    nums int[],
    feeling mood,
    big bigint,
    ratio float8,
    flag bool,
    notes text
);
ALTER TABLE zoo ALTER COLUMN notes SET STORAGE EXTERNAL;
"#;

fn long_notes() -> String {
    (0..500).map(|i| format!("ñ{i};")).collect()
}

#[tokio::test]
async fn types_updates_toast_foreign_fields_and_options() {
    let db = create_database("e2e_mongo_zoo").await;
    db.client.batch_execute(ZOO).await.unwrap();
    let client = mongo().await;
    let (plain, options) = ("e2e_mongo_zoo_a", "e2e_mongo_zoo_b");
    for database in [plain, options] {
        client.database(database).drop().await.unwrap();
    }
    let http = format!("127.0.0.1:{}", free_port());
    let url = required_env("PGFANOUT_TEST_MONGODB_URL");
    let config = format!(
        r#"{header}
[[sink]]
name = "plain"
kind = "mongodb"
url = "{url}"
database = "{plain}"
[sink.types]
numeric = "string"
timestamp_out_of_range = "string"
[[sink.table]]
source = "public.zoo"

[[sink]]
name = "options"
kind = "mongodb"
url = "{url}"
database = "{options}"
tombstones = true
version_field = "_v"
[sink.types]
numeric = "string"
timestamps = "string"
uuid = "string"
nulls = "unset"
[[sink.table]]
source = "public.zoo"
collection = "animals"
id_columns = ["id"]
exclude = ["notes"]
rename = {{ price = "cost" }}
"#,
        header = source_config(&db, &db.name, &http)
    );
    let pgfanout = Pgfanout::start("e2e_mongo_zoo", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;

    // A document another application wrote first, without a version: the row's insert
    // takes it over (the version guard lets a write through to it), keeping its own field.
    let zoo = client.database(plain).collection::<Document>("zoo");
    zoo.insert_one(doc! { "_id": 3, "owner": "app" }).await.unwrap();
    let notes = long_notes();
    db.client
        .execute(
            r#"INSERT INTO zoo VALUES
            (1, 'one', 12345678901234567890.0123456789, '2024-03-01 12:34:56.789+02', '2024-03-01 12:34:56.789',
             '2024-02-29', '\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
             '{"z": 1, "a": {"ü": "é😀", "deep": [1, null, {"x": "y"}]}, "big": 123456789012345678901234567890, "f": 0.5}',
             '{a,NULL,c}', '{{1,NULL},{3,4}}', 'happy', 9007199254740993, 0.1, true, $1),
            (2, 'two', NULL, 'infinity', '-infinity', 'infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
            (3, 'three', -0.5, NULL, NULL, NULL, NULL, NULL, '[]', '{}', NULL, 'sad', NULL, NULL, false, 'short')"#,
            &[&notes],
        )
        .await
        .unwrap();

    let found = wait_for_documents(&client, plain, "zoo", &pgfanout, "three rows", |d| {
        d.len() == 3 && d.iter().all(|doc| doc.contains_key("_pgfanout_version"))
    })
    .await;
    let one = &found[0];
    assert_eq!(one.get("_id"), Some(&Bson::Int32(1)));
    assert_eq!(one.get_str("price").unwrap(), "12345678901234567890.0123456789");
    let instant = |text: &str| Bson::DateTime(bson::DateTime::parse_rfc3339_str(text).unwrap());
    assert_eq!(one.get("at"), Some(&instant("2024-03-01T10:34:56.789Z")));
    assert_eq!(one.get("naive"), Some(&instant("2024-03-01T12:34:56.789Z")));
    assert_eq!(one.get("day"), Some(&instant("2024-02-29T00:00:00Z")));
    assert_eq!(one.get_binary_generic("raw").unwrap(), &vec![0u8, 255]);
    let uuid = [0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11];
    match one.get("uid") {
        Some(Bson::Binary(binary)) => assert_eq!(binary.bytes, uuid),
        other => panic!("uid is {other:?}"),
    }
    let expected_doc = doc! {
        "a": { "ü": "é😀", "deep": [1, Bson::Null, { "x": "y" }] },
        "f": 0.5,
        "z": 1,
        // Too long for a double: Decimal128 by default, text under numeric = "string".
        "big": "123456789012345678901234567890",
    };
    assert_eq!(one.get_document("doc").unwrap(), &expected_doc);
    assert_eq!(one.get_array("tags").unwrap(), &vec![Bson::from("a"), Bson::Null, Bson::from("c")]);
    assert_eq!(
        one.get_array("nums").unwrap(),
        &vec![Bson::Array(vec![Bson::Int32(1), Bson::Null]), Bson::Array(vec![Bson::Int32(3), Bson::Int32(4)])]
    );
    assert_eq!(one.get_str("feeling").unwrap(), "happy");
    assert_eq!(one.get_i64("big").unwrap(), 9_007_199_254_740_993);
    assert_eq!(one.get_f64("ratio").unwrap(), 0.1);
    assert!(one.get_bool("flag").unwrap());
    assert_eq!(one.get_str("notes").unwrap(), notes);
    assert_eq!(one.get_str("_pgfanout_version").unwrap().len(), 25);
    let two = &found[1];
    assert_eq!(two.get_str("at").unwrap(), "infinity");
    assert_eq!(two.get_str("naive").unwrap(), "-infinity");
    assert_eq!(two.get("price"), Some(&Bson::Null));
    assert_eq!(found[2].get_array("tags").unwrap(), &Vec::<Bson>::new());
    assert_eq!(found[2].get_str("owner").unwrap(), "app", "the other application's field stays");

    // A field another application writes survives later updates from PostgreSQL.
    client
        .database(plain)
        .collection::<Document>("zoo")
        .update_one(doc! { "_id": 1 }, doc! { "$set": { "foreign": "kept" } })
        .await
        .unwrap();
    // Touches neither the TOASTed notes nor the key.
    db.client.execute("UPDATE zoo SET flag = false, price = 1.5 WHERE id = 1", &[]).await.unwrap();
    // Key change: the document moves.
    db.client.execute("UPDATE zoo SET id = 20, code = 'twenty' WHERE id = 2", &[]).await.unwrap();
    // A delete removes a document without a version too (here the other application
    // rewrote it and dropped the version).
    zoo.update_one(doc! { "_id": 3 }, doc! { "$unset": { "_pgfanout_version": "" } }).await.unwrap();
    db.client.execute("DELETE FROM zoo WHERE id = 3", &[]).await.unwrap();
    // (nx-27017 itself turns booleans and DateTimes `$set` on an existing document into
    // 0/1 and text, so the types above are asserted on first insert only.)
    let found = wait_for_documents(&client, plain, "zoo", &pgfanout, "the updates", |d| {
        d.len() == 2
            && d.iter().any(|doc| doc.get("_id") == Some(&Bson::Int32(20)))
            && d.iter().any(|doc| doc.get_str("price") == Ok("1.5000000000"))
    })
    .await;
    let one = &found[0];
    assert_eq!(one.get_str("foreign").unwrap(), "kept");
    assert_eq!(one.get_str("notes").unwrap(), notes, "the unchanged TOAST value was kept");
    assert_eq!(one.get_str("price").unwrap(), "1.5000000000");
    assert!(document(&client, plain, "zoo", Bson::Int32(2)).await.is_none());

    // The second sink: id_columns, rename, exclude, tombstones, text options.
    let animals = wait_for_documents(&client, options, "animals", &pgfanout, "the tombstone", |d| {
        d.iter().any(|doc| is_true(doc, "_deleted") && doc.get("_id") == Some(&Bson::Int32(3)))
    })
    .await;
    let one = animals.iter().find(|d| d.get("_id") == Some(&Bson::Int32(1))).unwrap();
    assert_eq!(one.get_str("cost").unwrap(), "1.5000000000");
    assert!(!one.contains_key("notes") && !one.contains_key("price"));
    assert_eq!(one.get_str("uid").unwrap(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(one.get_str("at").unwrap(), "2024-03-01 10:34:56.789+00");
    let twenty = animals.iter().find(|d| d.get("_id") == Some(&Bson::Int32(20))).unwrap();
    assert!(!twenty.contains_key("raw"), "NULL is unset under nulls = \"unset\": {twenty:?}");
    let three = animals.iter().find(|d| d.get("_id") == Some(&Bson::Int32(3))).unwrap();
    assert_eq!(three.keys().filter(|k| !k.starts_with('_')).count(), 0, "a tombstone keeps no column: {three:?}");
    let old_two = animals.iter().find(|d| d.get("_id") == Some(&Bson::Int32(2))).unwrap();
    assert!(is_true(old_two, "_deleted"), "the old key of a key change is a tombstone: {old_two:?}");

    // TRUNCATE removes pgfanout's documents, not foreign ones.
    zoo.insert_one(doc! { "_id": "foreign-doc", "owner": "someone else" }).await.unwrap();
    db.client.batch_execute("TRUNCATE zoo").await.unwrap();
    let left = wait_for_documents(&client, plain, "zoo", &pgfanout, "the truncate", |d| d.len() == 1).await;
    assert_eq!(left[0].get_str("_id").unwrap(), "foreign-doc");

    // The checkpoint document follows the stream.
    let checkpoints = documents(&client, plain, "pgfanout_checkpoints").await;
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    assert_eq!(checkpoints[0].get_str("_id").unwrap(), "plain");
    assert!(checkpoints[0].get_str("lsn").unwrap().contains('/'));
}

const STAYS: &str = r#"
CREATE TABLE reviews (
    id int PRIMARY KEY,
    host_id int NOT NULL,
    rating int NOT NULL,
    comment text
);
ALTER TABLE reviews REPLICA IDENTITY FULL;
"#;

/// The aggregate documents as (host, count, total rating), from PostgreSQL.
async fn expected_statistics(db: &TestDatabase) -> Vec<(i32, i64, i64)> {
    let rows = db
        .client
        .query("SELECT host_id, count(*), sum(rating)::bigint FROM reviews GROUP BY host_id ORDER BY host_id", &[])
        .await
        .unwrap();
    rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect()
}

/// The aggregate documents with a non-zero count, as (host, count, total rating).
fn statistics(documents: &[Document]) -> Vec<(i32, i64, i64)> {
    let number = |d: &Document, field: &str| match d.get(field) {
        Some(Bson::Int32(i)) => i64::from(*i),
        Some(Bson::Int64(i)) => *i,
        _ => 0,
    };
    let mut found: Vec<(i32, i64, i64)> = documents
        .iter()
        .filter(|d| number(d, "count") != 0)
        .map(|d| (d.get_i32("_id").unwrap_or(-1), number(d, "count"), number(d, "rating")))
        .collect();
    found.sort();
    found
}

fn stays_config(db: &TestDatabase, http: &str, slot: &str, database: &str) -> String {
    let url = required_env("PGFANOUT_TEST_MONGODB_URL");
    format!(
        r#"{header}
[[sink]]
name = "stays"
kind = "mongodb"
url = "{url}"
database = "{database}"
[sink.delivery]
lanes = 1
[[sink.table]]
source = "public.reviews"
id_columns = ["id"]
[[sink.table.aggregate]]
collection = "host_statistics"
group_by = "host_id"
sum = ["rating"]
"#,
        header = source_config(db, slot, http)
    )
}

#[tokio::test]
async fn aggregates_stay_exact_and_a_replay_changes_nothing() {
    let db = create_database("e2e_mongo_stats").await;
    db.client.batch_execute(STAYS).await.unwrap();
    let client = mongo().await;
    let database = "e2e_mongo_stats";
    client.database(database).drop().await.unwrap();
    // A second slot made now replays everything below from the start.
    db.client
        .batch_execute("SELECT pg_create_logical_replication_slot('e2e_mongo_stats_replay', 'pgoutput')")
        .await
        .unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let mut pgfanout = Pgfanout::start("e2e_mongo_stats", &stays_config(&db, &http, &db.name, database), &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;

    db.client
        .batch_execute(
            "INSERT INTO reviews SELECT i, i % 5, i % 7, 'review ' || i FROM generate_series(1, 300) i;
             UPDATE reviews SET rating = rating + 1 WHERE id % 3 = 0;
             UPDATE reviews SET host_id = 9 WHERE id % 10 = 0;
             DELETE FROM reviews WHERE id % 11 = 0;
             BEGIN; UPDATE reviews SET rating = 100 WHERE id = 1; UPDATE reviews SET rating = 2 WHERE id = 1;
               DELETE FROM reviews WHERE id = 2; INSERT INTO reviews VALUES (2, 4, 6, NULL); COMMIT;",
        )
        .await
        .unwrap();
    let end = db.current_wal_lsn().await;
    let expected = expected_statistics(&db).await;
    let before = wait_for_documents(&client, database, "host_statistics", &pgfanout, "exact statistics", |d| {
        statistics(d) == expected
    })
    .await;
    let rows_before =
        wait_for_documents(&client, database, "reviews", &pgfanout, "all rows", |d| d.len() == 300 - 27).await;
    pgfanout.signal("TERM");
    assert_eq!(pgfanout.wait_exit(Duration::from_secs(20)).await, Some(0), "{}", pgfanout.log_text());

    // Replay the same stream from the start through the earlier slot. The
    // source record names the first slot, and pgfanout refuses to resume a
    // sink written from another one: removing it is the operator's "yes".
    client
        .database(database)
        .collection::<Document>("pgfanout_checkpoints")
        .update_one(doc! { "_id": "stays" }, doc! { "$unset": { "source": "" } })
        .await
        .unwrap();
    let mut replay =
        Pgfanout::start("e2e_mongo_stats_replay", &stays_config(&db, &http, "e2e_mongo_stats_replay", database), &http);
    // Caught up only once the replay confirmed every write above: before,
    // a replayed insert may stand until its replayed delete follows.
    let replay_slot_done = || async { db.confirmed_flush_lsn("e2e_mongo_stats_replay").await >= end };
    wait_until("the replay slot catches up", Duration::from_secs(60), replay_slot_done).await;
    let after = documents(&client, database, "host_statistics").await;
    assert_eq!(statistics(&after), expected, "a replay must not count twice\nlog:\n{}", replay.log_text());
    assert_eq!(after, before, "aggregate documents unchanged, versions included");
    assert_eq!(documents(&client, database, "reviews").await, rows_before, "row documents unchanged");
    replay.signal("TERM");
    let _ = replay.wait_exit(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn check_reports_an_aggregate_table_without_full_identity() {
    let db = create_database("e2e_mongo_check").await;
    db.client.batch_execute(&STAYS.replace("ALTER TABLE reviews REPLICA IDENTITY FULL;", "")).await.unwrap();
    let dir = std::env::temp_dir().join(format!("pgfanout-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("e2e_mongo_check.toml");
    let http = format!("127.0.0.1:{}", free_port());
    std::fs::write(&path, stays_config(&db, &http, &db.name, "e2e_mongo_check")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pgfanout"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains(r#"run ALTER TABLE "public"."reviews" REPLICA IDENTITY FULL"#) && stdout.contains("sink stays"),
        "{stdout}"
    );
    // With FULL the same config passes the MongoDB part (the sink is reachable).
    db.client.batch_execute("ALTER TABLE reviews REPLICA IDENTITY FULL").await.unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pgfanout"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
}

/// An nx-27017 server of a test's own, on a file database so its data survives
/// [`OwnMongoServer::kill`] + [`OwnMongoServer::restart`]; stopped on drop.
struct OwnMongoServer {
    url: String,
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl OwnMongoServer {
    async fn start() -> OwnMongoServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("pgfanout-tests-mongo-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = OwnMongoServer { url: format!("mongodb://127.0.0.1:{port}"), port, dir, child: None };
        server.restart().await;
        server
    }

    /// Stops the server at once (SIGKILL), as a crash or an outage would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn restart(&mut self) {
        self.kill();
        // The stack's virtualenv (deploy/local/stack.sh install) holds nx-27017.
        let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
        assert!(python.exists(), "{} is missing: run deploy/local/stack.sh install", python.display());
        let child = std::process::Command::new(python)
            .args(["-c", "import sys; from nx_27017.nx_27017 import main; sys.argv[0] = 'nx-27017'; sys.exit(main())"])
            .args(["--db", &self.dir.join("data.db").display().to_string(), "--host", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(["--pid-file", &self.dir.join("pid").display().to_string()])
            .args(["--log-file", &self.dir.join("log").display().to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot start nx-27017");
        self.child = Some(child);
        let url = self.url.clone();
        wait_until("the test's own nx-27017 answers", Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                let Ok(client) = mongodb::Client::with_uri_str(format!("{url}/?serverSelectionTimeoutMS=500")).await
                else {
                    return false;
                };
                client.database("admin").run_command(doc! { "ping": 1 }).await.is_ok()
            }
        })
        .await;
    }
}

impl Drop for OwnMongoServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `items` rows as (id, label, amount) and the documents the same way.
async fn items_in_postgres(db: &TestDatabase) -> Vec<(i32, String, i64)> {
    let rows = db.client.query("SELECT id, label, amount FROM items ORDER BY id", &[]).await.unwrap();
    rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect()
}

fn items_in_mongo(documents: &[Document]) -> Vec<(i32, String, i64)> {
    let mut items: Vec<(i32, String, i64)> = documents
        .iter()
        .map(|d| {
            let amount = d.get_i64("amount").or_else(|_| d.get_i32("amount").map(i64::from)).unwrap_or(-1);
            (d.get_i32("_id").unwrap_or(-1), d.get_str("label").unwrap_or("?").to_owned(), amount)
        })
        .collect();
    items.sort();
    items
}

#[tokio::test]
async fn a_stopped_store_blocks_the_pipeline_until_it_returns() {
    let db = create_database("e2e_mongo_outage").await;
    db.client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL, amount bigint NOT NULL)")
        .await
        .unwrap();
    let mut server = OwnMongoServer::start().await;
    let client = mongodb::Client::with_uri_str(&server.url).await.unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let config = format!(
        r#"{header}
[[sink]]
name = "outage"
kind = "mongodb"
url = "{url}"
database = "outage"
response_timeout_ms = 2000
[[sink.table]]
source = "public.items"
"#,
        header = source_config(&db, &db.name, &http),
        url = server.url
    );
    let mut pgfanout = Pgfanout::start("e2e_mongo_outage", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    db.client.batch_execute("INSERT INTO items SELECT i, 'item ' || i, i FROM generate_series(1, 50) i").await.unwrap();
    let expected = items_in_postgres(&db).await;
    wait_for_documents(&client, "outage", "items", &pgfanout, "the first rows", |d| items_in_mongo(d) == expected)
        .await;
    let applied = db.current_wal_lsn().await;
    wait_until("the slot confirms the first rows", Duration::from_secs(20), || async {
        db.confirmed_flush_lsn(&db.name).await >= applied
    })
    .await;

    server.kill();
    db.client
        .batch_execute(
            "BEGIN;
             INSERT INTO items SELECT i, 'item ' || i, i FROM generate_series(51, 80) i;
             UPDATE items SET amount = amount * 10 WHERE id % 4 = 0;
             DELETE FROM items WHERE id % 9 = 0;
             COMMIT;",
        )
        .await
        .unwrap();
    // The commit record ends at or before this position; a flush position at or past it
    // would confirm the transaction (other databases' WAL can let the slot confirm up to
    // just below the commit while the transaction waits).
    let after_outage_writes = db.current_wal_lsn().await;
    // For a while: pgfanout keeps running and confirms nothing the store does not hold.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        assert!(pgfanout.is_running(), "pgfanout exited during the outage:\n{}", pgfanout.log_text());
        let confirmed = db.confirmed_flush_lsn(&db.name).await;
        assert!(confirmed < after_outage_writes, "the slot confirmed writes the store never got");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    server.restart().await;
    let client = mongodb::Client::with_uri_str(&server.url).await.unwrap();
    let expected = items_in_postgres(&db).await;
    wait_for_documents(&client, "outage", "items", &pgfanout, "the rows after the outage", |d| {
        items_in_mongo(d) == expected
    })
    .await;
    let end = db.current_wal_lsn().await;
    wait_until("the slot confirms everything", Duration::from_secs(30), || async {
        db.confirmed_flush_lsn(&db.name).await >= end
    })
    .await;
    assert!(pgfanout.log_text().contains("transient"), "the outage was retried as transient");
}
