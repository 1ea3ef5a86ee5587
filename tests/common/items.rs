//! The `items` table the archive and replay tests write to, a writer that
//! keeps inserting, updating and deleting in it, and a raw view of the Redis
//! hashes a sink made of it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::connect;

/// The table the writer writes to.
pub const ITEMS_SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text)";

/// Every hash under `prefix` with every field, the version included.
pub async fn raw_redis_hashes(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(redis).await.unwrap();
    let mut hashes = BTreeMap::new();
    for key in keys {
        let fields: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&key).query_async(redis).await.unwrap();
        hashes.insert(key, fields);
    }
    hashes
}

/// A history to replay: `transactions` transactions each inserting the
/// next `rows_each` ids and updating every third row, then one deleting
/// every tenth row.
pub async fn write_items_history(client: &tokio_postgres::Client, transactions: i32, rows_each: i32) {
    for n in 0..transactions {
        client
            .batch_execute(&format!(
                "BEGIN; INSERT INTO items SELECT g, g, 'first' FROM generate_series({}, {}) g; UPDATE items SET v = v + 1 WHERE id % 3 = 0; COMMIT",
                n * rows_each + 1,
                n * rows_each + rows_each
            ))
            .await
            .unwrap();
    }
    client.batch_execute("DELETE FROM items WHERE id % 10 = 0").await.unwrap();
}

/// Writes until stopped: each transaction inserts two rows, updates one and
/// deletes one inserted two transactions before (so rows the replay writes
/// from the archive are deleted live while it runs).
pub fn spawn_items_writer(db_url: String, stop: Arc<AtomicBool>, first_id: i32) -> tokio::task::JoinHandle<i32> {
    tokio::spawn(async move {
        let client = connect(&db_url).await;
        let mut id = first_id;
        while !stop.load(Ordering::Relaxed) {
            client
                .batch_execute(&format!(
                    "BEGIN; INSERT INTO items VALUES ({id}, 0, 'w'), ({}, 1, 'w'); UPDATE items SET v = v + 1 WHERE id = {}; DELETE FROM items WHERE id = {}; COMMIT",
                    id + 1,
                    id - 7,
                    id - 4
                ))
                .await
                .unwrap();
            id += 2;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        id
    })
}
