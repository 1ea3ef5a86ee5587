//! The batch script against a real Redis (`PGFANOUT_TEST_REDIS_URL`, as
//! `make test` starts it): version guard, tombstones, truncate, JSON rows,
//! key moves, script reloading and error atomicity, driven through
//! [`RedisSink::apply`] with hand-built changes. Each test owns a key prefix
//! in database 15.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use pgfanout_core::{
    Change, ChangeOp, ChangeRef, ColumnSchema, ColumnValue, Lsn, Sink, TableName, TableSchema, Transaction,
};
use pgfanout_sink_redis::{RedisSink, RedisSinkConfig};
use pgoutput::{Oid, PgTimestamp, ReplicaIdentity, Xid};
use redis::AsyncCommands;

fn redis_url() -> String {
    let url = std::env::var("PGFANOUT_TEST_REDIS_URL")
        .unwrap_or_else(|_| panic!("PGFANOUT_TEST_REDIS_URL is not set; run the tests with `make test`"));
    format!("{}/15", url.trim_end_matches('/'))
}

async fn connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// A sink for table `public.<table>` with the table's settings given as JSON.
fn sink(table: &str, table_settings: serde_json::Value) -> RedisSink {
    let mut table_config = serde_json::json!({ "source": table, "key": format!("{table}:{{id}}") });
    table_config.as_object_mut().unwrap().extend(table_settings.as_object().unwrap().clone());
    let config: RedisSinkConfig = serde_json::from_value(serde_json::json!({
        "name": table,
        "url": redis_url(),
        "table": [table_config],
    }))
    .unwrap();
    config.validate().unwrap();
    RedisSink::new(config).unwrap()
}

fn schema(table: &str) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        oid: Oid(1),
        table: TableName::new("public", table),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            ColumnSchema { name: "id".into(), type_oid: Oid(20), is_key: true },
            ColumnSchema { name: "status".into(), type_oid: Oid(25), is_key: false },
            ColumnSchema { name: "notes".into(), type_oid: Oid(25), is_key: false },
        ],
        types: Default::default(),
    })
}

fn value(text: &str) -> ColumnValue {
    if text == "NULL" {
        ColumnValue::Null
    } else if text == "TOAST" {
        ColumnValue::UnchangedToast
    } else {
        ColumnValue::Text(Bytes::from(text.to_owned()))
    }
}

fn row(values: [&str; 3]) -> Vec<ColumnValue> {
    values.into_iter().map(value).collect()
}

/// One transaction committed at `commit_lsn` with `ops`.
fn transaction(table: &str, commit_lsn: u64, ops: Vec<ChangeOp>) -> Transaction {
    let schema = schema(table);
    Transaction {
        xid: Xid(1),
        commit_lsn: Lsn(commit_lsn),
        end_lsn: Lsn(commit_lsn + 8),
        commit_time: PgTimestamp(0),
        changes: ops
            .into_iter()
            .enumerate()
            .map(|(ordinal, op)| Change { table: Arc::clone(&schema), op, ordinal: ordinal as u32 })
            .collect(),
    }
}

fn insert(values: [&str; 3]) -> ChangeOp {
    ChangeOp::Insert { new: row(values) }
}

fn update(old: Option<[&str; 3]>, new: [&str; 3]) -> ChangeOp {
    ChangeOp::Update { old: old.map(row), new: row(new) }
}

fn delete(id: &str) -> ChangeOp {
    ChangeOp::Delete { old: row([id, "NULL", "NULL"]) }
}

async fn apply(sink: &RedisSink, transactions: &[&Transaction]) {
    let refs: Vec<ChangeRef<'_>> = transactions
        .iter()
        .flat_map(|transaction| transaction.changes.iter().map(move |change| ChangeRef { transaction, change }))
        .collect();
    let checkpoint = transactions.last().map(|t| t.end_lsn);
    sink.apply(&refs, checkpoint).await.unwrap();
}

async fn hash(key: &str) -> HashMap<String, String> {
    let mut hash: HashMap<String, String> = connection().await.hgetall(key).await.unwrap();
    hash.remove("_pgfanout_version");
    hash
}

fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn clear(prefix: &str) {
    let mut redis = connection().await;
    let keys: Vec<String> = redis.keys(format!("*{prefix}*")).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis.del(keys).await.unwrap();
    }
}

#[tokio::test]
async fn a_replayed_older_change_never_moves_a_row_backwards() {
    clear("guarded").await;
    let sink = sink("guarded", serde_json::json!({}));
    let first = transaction("guarded", 0x1000, vec![insert(["1", "new", "a"])]);
    let second = transaction("guarded", 0x2000, vec![update(None, ["1", "paid", "NULL"])]);
    apply(&sink, &[&first, &second]).await;
    assert_eq!(hash("guarded:1").await, fields(&[("id", "1"), ("status", "paid")]));

    // Replay of the first transaction alone: the row holds a newer version.
    apply(&sink, &[&first]).await;
    assert_eq!(hash("guarded:1").await, fields(&[("id", "1"), ("status", "paid")]));
    let stored: String = connection().await.hget("guarded:1", "_pgfanout_version").await.unwrap();
    assert_eq!(stored, pgfanout_core::Version { commit_lsn: Lsn(0x2000), ordinal: 0 }.to_sortable_string());

    // The whole stream again: identical state.
    apply(&sink, &[&first, &second]).await;
    assert_eq!(hash("guarded:1").await, fields(&[("id", "1"), ("status", "paid")]));
    let checkpoint: String = connection().await.get("pgfanout:checkpoint:guarded").await.unwrap();
    assert_eq!(checkpoint, Lsn(0x2008).to_string());
}

#[tokio::test]
async fn an_insert_replaces_whatever_its_key_held() {
    // The script skips the guard's read and the delete for a key that does
    // not exist; a key that does (an older row, or another application's
    // hash without a version) must still be replaced whole.
    clear("replaced").await;
    let sink = sink("replaced", serde_json::json!({}));
    let mut redis = connection().await;
    let _: () = redis.hset_multiple("replaced:1", &[("owner", "billing"), ("status", "stale")]).await.unwrap();
    let older = transaction("replaced", 0x1000, vec![insert(["2", "new", "a"])]);
    let _: () = redis.hset("replaced:2", "leftover", "x").await.unwrap();
    apply(&sink, &[&older]).await;
    let _: () = redis.hset("replaced:2", "leftover", "x").await.unwrap();
    let inserts = transaction("replaced", 0x2000, vec![insert(["1", "new", "NULL"]), insert(["2", "again", "NULL"])]);
    apply(&sink, &[&inserts]).await;
    assert_eq!(hash("replaced:1").await, fields(&[("id", "1"), ("status", "new")]));
    assert_eq!(hash("replaced:2").await, fields(&[("id", "2"), ("status", "again")]));
    let stored: String = redis.hget("replaced:1", "_pgfanout_version").await.unwrap();
    assert_eq!(stored, pgfanout_core::Version { commit_lsn: Lsn(0x2000), ordinal: 0 }.to_sortable_string());
}

#[tokio::test]
async fn a_tombstone_keeps_a_replayed_insert_from_resurrecting_a_deleted_row() {
    clear("buried").await;
    let sink = sink("buried", serde_json::json!({ "tombstone_secs": 600 }));
    let created = transaction("buried", 0x1000, vec![insert(["1", "new", "a"]), insert(["2", "new", "b"])]);
    let deleted = transaction("buried", 0x2000, vec![delete("1")]);
    apply(&sink, &[&created, &deleted]).await;
    let mut redis = connection().await;
    assert!(!redis.exists::<_, bool>("buried:1").await.unwrap());
    let ttl: i64 = redis.ttl("pgfanout:tombstone:buried:1").await.unwrap();
    assert!((1..=600).contains(&ttl), "tombstone TTL {ttl}");

    apply(&sink, &[&created]).await;
    assert!(!redis.exists::<_, bool>("buried:1").await.unwrap(), "the replayed insert stays buried");
    assert_eq!(hash("buried:2").await, fields(&[("id", "2"), ("status", "new"), ("notes", "b")]));

    // A genuinely newer insert of the same key replaces the tombstone.
    let again = transaction("buried", 0x3000, vec![insert(["1", "back", "NULL"])]);
    apply(&sink, &[&again]).await;
    assert_eq!(hash("buried:1").await, fields(&[("id", "1"), ("status", "back")]));
    assert!(!redis.exists::<_, bool>("pgfanout:tombstone:buried:1").await.unwrap());
}

#[tokio::test]
async fn truncate_by_index_set_removes_only_rows_older_than_the_truncate() {
    clear("truncated").await;
    let sink = sink("truncated", serde_json::json!({}));
    let rows = transaction("truncated", 0x1000, (1..=3).map(|id| insert([&id.to_string(), "x", "NULL"])).collect());
    let truncate = transaction("truncated", 0x2000, vec![ChangeOp::Truncate, insert(["9", "after", "NULL"])]);
    apply(&sink, &[&rows, &truncate]).await;
    let mut redis = connection().await;
    let mut left: Vec<String> = redis.keys("truncated:*").await.unwrap();
    left.sort();
    assert_eq!(left, ["truncated:9"]);
    let index: Vec<String> = redis.smembers("pgfanout:index:truncated:public.truncated").await.unwrap();
    assert_eq!(index, ["truncated:9"]);

    // A replayed truncate leaves rows written after it.
    let later = transaction("truncated", 0x3000, vec![insert(["4", "later", "NULL"])]);
    apply(&sink, &[&later]).await;
    apply(&sink, &[&truncate]).await;
    let mut left: Vec<String> = redis.keys("truncated:*").await.unwrap();
    left.sort();
    assert_eq!(left, ["truncated:4", "truncated:9"]);
}

#[tokio::test]
async fn truncate_by_scan_finds_the_keys_by_pattern() {
    clear("scanned").await;
    let sink = sink("scanned", serde_json::json!({ "truncate": "scan" }));
    let rows = transaction("scanned", 0x1000, (1..=2500).map(|id| insert([&id.to_string(), "x", "NULL"])).collect());
    apply(&sink, &[&rows]).await;
    let mut redis = connection().await;
    let _: () = redis.set("scanned_unrelated", "kept").await.unwrap();
    assert!(!redis.exists::<_, bool>("pgfanout:index:scanned:public.scanned").await.unwrap(), "no index set");

    let truncate = transaction("scanned", 0x2000, vec![insert(["0", "before", "NULL"]), ChangeOp::Truncate]);
    apply(&sink, &[&truncate]).await;
    let left: Vec<String> = redis.keys("scanned*").await.unwrap();
    assert_eq!(left, ["scanned_unrelated"]);
    let checkpoint: String = redis.get("pgfanout:checkpoint:scanned").await.unwrap();
    assert_eq!(checkpoint, Lsn(0x2008).to_string());
}

#[tokio::test]
async fn json_rows_keep_unchanged_toast_values_and_follow_key_changes() {
    clear("documents").await;
    let sink = sink("documents", serde_json::json!({ "format": "json" }));
    let big = "é".repeat(3000);
    let created = transaction("documents", 0x1000, vec![insert(["1", "new", &big])]);
    let updated = transaction(
        "documents",
        0x2000,
        vec![
            update(None, ["1", "paid \"now\"", "TOAST"]),
            update(Some(["1", "NULL", "NULL"]), ["2", "moved", "TOAST"]),
        ],
    );
    apply(&sink, &[&created, &updated]).await;
    let mut redis = connection().await;
    assert!(!redis.exists::<_, bool>("documents:1").await.unwrap(), "the old key is gone");
    let text: String = redis.get("documents:2").await.unwrap();
    let mut document: serde_json::Value = serde_json::from_str(&text).unwrap();
    let version = document.as_object_mut().unwrap().remove("_pgfanout_version").unwrap();
    assert_eq!(document, serde_json::json!({"id": "2", "status": "moved", "notes": big}));
    assert_eq!(version, pgfanout_core::Version { commit_lsn: Lsn(0x2000), ordinal: 1 }.to_sortable_string());
    let index: Vec<String> = redis.smembers("pgfanout:index:documents:public.documents").await.unwrap();
    assert_eq!(index, ["documents:2"]);

    // Replaying the whole stream changes nothing.
    apply(&sink, &[&created, &updated]).await;
    let again: String = redis.get("documents:2").await.unwrap();
    assert_eq!(again, text);
    assert!(!redis.exists::<_, bool>("documents:1").await.unwrap());
}

#[tokio::test]
async fn a_forgotten_script_is_loaded_again() {
    clear("reloaded").await;
    let sink = sink("reloaded", serde_json::json!({}));
    apply(&sink, &[&transaction("reloaded", 0x1000, vec![insert(["1", "a", "NULL"])])]).await;
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut connection().await).await.unwrap();
    apply(&sink, &[&transaction("reloaded", 0x2000, vec![insert(["2", "b", "NULL"])])]).await;
    assert_eq!(hash("reloaded:2").await, fields(&[("id", "2"), ("status", "b")]));
}

#[tokio::test]
async fn a_rejected_change_stops_the_batch_before_its_checkpoint() {
    clear("rejected").await;
    let sink = sink("rejected", serde_json::json!({}));
    let mut redis = connection().await;
    let _: () = redis.set("rejected:2", "not a hash").await.unwrap();
    let batch = transaction(
        "rejected",
        0x1000,
        vec![insert(["1", "a", "NULL"]), update(None, ["2", "b", "NULL"]), insert(["3", "c", "NULL"])],
    );
    let refs: Vec<ChangeRef<'_>> =
        batch.changes.iter().map(|change| ChangeRef { transaction: &batch, change }).collect();
    let err = sink.apply(&refs, Some(batch.end_lsn)).await.unwrap_err();
    assert_eq!(err.kind, pgfanout_core::ErrorKind::Permanent, "{err:?}");
    let chain = pgfanout_core::error_chain(&err);
    assert!(chain.contains("WRONGTYPE"), "{chain}");
    assert!(chain.contains("redis rejected a batch script call with"), "says which command failed: {chain}");
    assert!(!redis.exists::<_, bool>("pgfanout:checkpoint:rejected").await.unwrap());
    assert!(!redis.exists::<_, bool>("rejected:3").await.unwrap(), "nothing after the rejected change");
    // What was written before the rejection is tracked for a truncate: a
    // retry skips that row (same version) and would not add it again.
    let index: Vec<String> = redis.smembers("pgfanout:index:rejected:public.rejected").await.unwrap();
    assert_eq!(index, ["rejected:1"]);
}

#[tokio::test]
async fn values_of_any_length_and_bytes_arrive_unchanged() {
    clear("sized").await;
    let sink = sink("sized", serde_json::json!({}));
    // Each length takes another header in the packed fields argument.
    let lengths = [0usize, 31, 32, 255, 256, 65_535, 65_536, 300_000];
    let values: Vec<Vec<u8>> = lengths.iter().map(|&len| (0..len).map(|i| (i % 256) as u8).collect()).collect();
    let ops = values
        .iter()
        .enumerate()
        .map(|(id, bytes)| ChangeOp::Insert {
            new: vec![value(&id.to_string()), ColumnValue::Binary(Bytes::from(bytes.clone())), value("x")],
        })
        .collect();
    apply(&sink, &[&transaction("sized", 0x1000, ops)]).await;
    let mut redis = connection().await;
    for (id, bytes) in values.iter().enumerate() {
        let stored: Vec<u8> = redis.hget(format!("sized:{id}"), "status").await.unwrap();
        assert_eq!(stored.len(), bytes.len(), "row {id}");
        assert!(stored == *bytes, "row {id}: the {} bytes came back changed", bytes.len());
    }
    let mut index: Vec<String> = redis.smembers("pgfanout:index:sized:public.sized").await.unwrap();
    index.sort();
    assert_eq!(index.len(), lengths.len(), "every row is in the index set once: {index:?}");
}

#[tokio::test]
async fn wipe_removes_only_keys_pgfanout_wrote_below_the_bound() {
    for (table, format) in [("wiped", "hash"), ("wipedjson", "json")] {
        clear(table).await;
        let sink = sink(table, serde_json::json!({ "format": format }));
        let old = transaction(table, 0x1000, (1..=3).map(|id| insert([&id.to_string(), "x", "NULL"])).collect());
        let newer = transaction(table, 0x3000, vec![insert(["4", "newer", "NULL"])]);
        apply(&sink, &[&old, &newer]).await;
        let mut redis = connection().await;
        // Another application's keys under the prefix: a hash without the version field, a string.
        let _: () = redis.hset(format!("{table}:foreign"), "owner", "billing").await.unwrap();
        let _: () = redis.set(format!("{table}:text"), "{\"owner\": \"billing\"}").await.unwrap();

        let bound = pgfanout_core::Version { commit_lsn: Lsn(0x2000), ordinal: 0 };
        let removed = sink.wipe(&schema(table), Some(bound)).await.unwrap();
        assert_eq!(removed, 3, "{format}: the rows written below the bound");
        let mut left: Vec<String> = redis.keys(format!("{table}:*")).await.unwrap();
        left.sort();
        assert_eq!(left, [format!("{table}:4"), format!("{table}:foreign"), format!("{table}:text")], "{format}");
        let index: Vec<String> = redis.smembers(format!("pgfanout:index:{table}:public.{table}")).await.unwrap();
        assert_eq!(index, [format!("{table}:4")], "{format}: removed keys leave the index set");

        // Without a bound (nothing streams): every key pgfanout wrote.
        assert_eq!(sink.wipe(&schema(table), None).await.unwrap(), 1);
        let mut left: Vec<String> = redis.keys(format!("{table}:*")).await.unwrap();
        left.sort();
        assert_eq!(left, [format!("{table}:foreign"), format!("{table}:text")], "{format}");
    }
}
