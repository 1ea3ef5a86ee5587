//! End to end: one transaction of millions of row changes reaches Redis and
//! MongoDB in bounded pieces, with bounded memory, and the checkpoint moves
//! only once all of it is applied.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mongodb::bson::{doc, Document};

const SCHEMA: &str = "CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL);
                      CREATE TABLE ledger (id int PRIMARY KEY, n int NOT NULL);";

/// Rows of the big UPDATE; `PGFANOUT_TEST_HUGE_ROWS` overrides it (for
/// measuring memory against another build with the same command, or 2,000,000
/// in a release build: a debug build applies about 2,000 rows a second).
fn huge_rows() -> i32 {
    std::env::var("PGFANOUT_TEST_HUGE_ROWS").ok().and_then(|rows| rows.parse().ok()).unwrap_or(1_000_000)
}

/// MongoDB's share, in the same transaction (nx-27017 writes slowly).
const LEDGER_ROWS: i32 = 5_000;

/// Peak resident memory of a process, from /proc.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `command`, asking again while Redis answers BUSY (a long script is
/// running: a whole huge transaction in one call did that).
async fn query<T: redis::FromRedisValue>(redis: &mut redis::aio::MultiplexedConnection, command: &redis::Cmd) -> T {
    loop {
        match command.query_async(redis).await {
            Ok(value) => return value,
            Err(err) if err.code() == Some("BUSY") => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(err) => panic!("redis: {err}"),
        }
    }
}

async fn redis_checkpoint(redis: &mut redis::aio::MultiplexedConnection, sink: &str) -> u64 {
    let stored: Option<String> = query(redis, redis::cmd("GET").arg(format!("pgfanout:checkpoint:{sink}"))).await;
    stored.map(|text| text.parse::<pgoutput::Lsn>().unwrap().0).unwrap_or(0)
}

/// The set the Redis sink keeps of the counters' keys, for TRUNCATE.
const INDEX_SET: &str = "pgfanout:index:cache:public.counters";

/// Counter rows in Redis: every key but the sink's bookkeeping.
async fn counter_keys(redis: &mut redis::aio::MultiplexedConnection) -> usize {
    let keys: usize = query(redis, &redis::cmd("DBSIZE")).await;
    // Besides the counters, the database holds the sink's bookkeeping: its
    // checkpoint, its source record, its snapshot progress and the counters'
    // index set (once written).
    let bookkeeping: usize = query(
        redis,
        redis::cmd("EXISTS")
            .arg("pgfanout:checkpoint:cache")
            .arg("pgfanout:checkpoint:cache:source")
            .arg("pgfanout:checkpoint:cache:snapshot")
            .arg(INDEX_SET),
    )
    .await;
    keys - bookkeeping
}

#[tokio::test]
async fn a_transaction_of_millions_of_changes_is_applied_in_pieces_with_bounded_memory() {
    let rows = huge_rows();
    let db = create_database("e2e_huge").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    // Rows written before the slot exists are not streamed: only the UPDATE is.
    db.client.execute("INSERT INTO counters SELECT g, 1 FROM generate_series(1, $1) g", &[&rows]).await.unwrap();
    let redis_url = format!("{}/15", required_env("PGFANOUT_TEST_REDIS_URL").trim_end_matches('/'));
    // Generous response timeout: the server is busy with large script calls.
    let settings = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection_with_config(&settings)
        .await
        .unwrap();
    redis::cmd("FLUSHDB").query_async::<()>(&mut redis).await.unwrap();
    let mongo = mongodb::Client::with_uri_str(required_env("PGFANOUT_TEST_MONGODB_URL")).await.unwrap();
    let database = "e2e_huge";
    mongo.database(database).drop().await.unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let (spill_mb, queue_mb) = (4, 16);
    let config = format!(
        r#"{header}
[[sink]]
name = "cache"
kind = "redis"
url = "{redis_url}"
[[sink.table]]
source = "public.counters"
key = "counter:{{id}}"

[[sink]]
name = "documents"
kind = "mongodb"
url = "{mongo_url}"
database = "{database}"
[[sink.table]]
source = "public.ledger"

# The counters are filled before the start and must arrive only through the
# stream (the pieces under test), not through the initial snapshot.
[snapshot]
enabled = false
"#,
        header = source_config(&db, &db.name, &http)
            .replace("[pipeline]\n", &format!("[pipeline]\nspill_memory_mb = {spill_mb}\nqueue_mb = {queue_mb}\n")),
        mongo_url = required_env("PGFANOUT_TEST_MONGODB_URL"),
    );
    let pgfanout = Pgfanout::start("e2e_huge", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    // A first transaction for both sinks; the UPDATE leaves this counter at 1.
    db.client
        .batch_execute("BEGIN; INSERT INTO counters VALUES (0, 0); INSERT INTO ledger VALUES (0, 0); COMMIT")
        .await
        .unwrap();
    wait_until("the first transaction is applied", Duration::from_secs(30), || async {
        redis_checkpoint(&mut redis.clone(), "cache").await > 0
            && mongo.database(database).collection::<Document>("ledger").count_documents(doc! {}).await.unwrap() == 1
    })
    .await;
    let before = redis_checkpoint(&mut redis, "cache").await;
    let baseline_kb = peak_rss_kb(pgfanout.pid());

    let started = Instant::now();
    db.client
        .batch_execute(&format!(
            "BEGIN;
             UPDATE counters SET n = n + 1;
             INSERT INTO ledger SELECT g, g FROM generate_series(1, {LEDGER_ROWS}) g;
             COMMIT;"
        ))
        .await
        .unwrap();
    let end = db.current_wal_lsn().await;

    // While the transaction is being applied, no checkpoint passes it.
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let checkpoint = redis_checkpoint(&mut redis, "cache").await;
        // The first transaction wrote counter 0; the UPDATE writes the others.
        let updated = counter_keys(&mut redis).await - 1;
        if checkpoint >= end {
            assert_eq!(updated, rows as usize, "the checkpoint passed the transaction before all of it was applied");
            break;
        }
        assert_eq!(checkpoint, before, "a checkpoint inside the transaction ({updated} of {rows} rows applied)");
        assert!(Instant::now() < deadline, "timed out: {updated} of {rows} rows applied\n{}", pgfanout.log_text());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for id in [1, rows / 2, rows] {
        let n: String = redis::cmd("HGET").arg(format!("counter:{id}")).arg("n").query_async(&mut redis).await.unwrap();
        assert_eq!(n, "2", "counter {id}");
    }
    let redis_done = started.elapsed();
    let ledger = mongo.database(database).collection::<Document>("ledger");
    wait_until("MongoDB holds the ledger rows", Duration::from_secs(300), || async {
        ledger.count_documents(doc! {}).await.unwrap() == LEDGER_ROWS as u64 + 1
    })
    .await;
    assert_eq!(ledger.count_documents(doc! { "n": { "$gt": 0 } }).await.unwrap(), LEDGER_ROWS as u64);
    wait_until("the slot confirms the transaction", Duration::from_secs(60), || async {
        db.confirmed_flush_lsn("e2e_huge").await >= end
    })
    .await;

    let peak_kb = peak_rss_kb(pgfanout.pid());
    let spilled = pgfanout.metric("pgfanout_streamed_spilled_bytes_total").await.unwrap_or(0.0);
    println!(
        "{rows} rows in {redis_done:?} (Redis), {:?} (all): baseline {baseline_kb} kB, peak {peak_kb} kB (VmHWM), \
         spilled {spilled} bytes",
        started.elapsed()
    );
    assert!(spilled > 100.0 * f64::from(rows), "the transaction went through the spill file ({spilled} bytes)");
    // The bound: the spill memory, each sink's queue (approximate sizes,
    // which real allocations exceed about threefold), one Redis call (8 MB
    // of arguments plus its wire copy) and the read buffers.
    let bound_kb = baseline_kb + 3 * (spill_mb + 2 * queue_mb) * 1024 + 64 * 1024;
    assert!(peak_kb < bound_kb, "peak {peak_kb} kB over the bound {bound_kb} kB (baseline {baseline_kb} kB)");
    // A million keys are no use to the other tests sharing the server.
    redis::cmd("FLUSHDB").arg("ASYNC").query_async::<()>(&mut redis).await.unwrap();
}
