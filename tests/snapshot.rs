//! The initial snapshot against real servers: a database that already
//! holds ~200,000 rows (composite keys, TOAST, numeric, jsonb, arrays, a
//! partitioned table) is copied into Redis while writes, updates and
//! deletes go on, and Redis ends equal to PostgreSQL; a `kill -9` halfway
//! resumes after the last chunk the sink stored.

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
/// note), 60,000 lines and 20,000 events.
async fn fill(db: &TestDatabase, items: i32) {
    db.client
        .batch_execute(&format!(
            "INSERT INTO item SELECT i, i * 1.5, jsonb_build_object('i', i, 'a', jsonb_build_array(i, 'x')),
                ARRAY['t' || i, NULL], CASE WHEN i % 1000 = 0
                THEN (SELECT string_agg(md5(i::text || g::text), '') FROM generate_series(1, 300) g)
                ELSE 'n' || i END
             FROM generate_series(1, {items}) i;
             INSERT INTO line SELECT i / 4, i % 4, i FROM generate_series(1, 60000) i;
             INSERT INTO event SELECT i, DATE '2021-01-01' + (i % 3000), 'k' || i FROM generate_series(1, 20000) i;"
        ))
        .await
        .unwrap();
}

/// A Redis sink of `items`, `lines` and `events` with small chunks.
fn config(db: &TestDatabase, redis_url: &str, http: &str, parallel: usize, chunk_rows: usize) -> String {
    format!(
        "{}\n[snapshot]\nparallel_tables = {parallel}\nchunk_rows = {chunk_rows}\n\n\
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

async fn wait_snapshot_done(pgfanout: &Pgfanout) {
    wait_until("the snapshot to finish", Duration::from_secs(90), || async {
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
