//! End to end: the pipeline's guarantees with real servers — several sinks
//! and the checkpoint, dead letters, and shutdown.

mod common;

use std::time::Duration;

use common::*;

const SCHEMA: &str =
    "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2) NOT NULL);";

async fn wait_for_readiness(http: &str) {
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(http, "/readyz").await.is_some() })
        .await;
}

#[tokio::test]
async fn the_checkpoint_waits_for_the_slowest_of_two_sinks() {
    let db = create_database("e2e_two_sinks").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let fast_url = fresh_redis_db(9).await;
    let slow_server = OwnRedisServer::start().await;
    let mut fast = redis_connection(&fast_url).await;
    let mut slow = redis_connection(&slow_server.url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = format!(
        r#"[source]
url = "{url}"
slot = "e2e_two_sinks"
publication = "e2e_two_sinks"
status_interval_ms = 200

[http]
listen = "{http}"

[[sink]]
name = "fast"
kind = "redis"
url = "{fast_url}"
[[sink.table]]
source = "public.orders"
key = "order:{{id}}"

[[sink]]
name = "slow"
kind = "redis"
url = "{slow_url}"
[[sink.table]]
source = "public.orders"
key = "order:{{id}}"
"#,
        url = db.url,
        slow_url = slow_server.url,
    );
    // As an operator would run it: the least-privilege role, not a superuser.
    let role = least_privilege_role(&db, "public.orders");
    let config = config.replacen(&db.url, &role.url, 1);
    let pgfanout = Pgfanout::start_with_env("e2e_two_sinks", &config, &http, &role.env());
    wait_for_readiness(&http).await;
    db.client.batch_execute("INSERT INTO orders VALUES (1, 'a', 1)").await.unwrap();
    wait_for_redis_match(&db, "orders", "id", &mut fast, "order:", &pgfanout).await;
    wait_for_redis_match(&db, "orders", "id", &mut slow, "order:", &pgfanout).await;
    let both = redis_checkpoint(&mut slow, "slow").await;
    wait_until("the slot reaches what both sinks hold", Duration::from_secs(10), || async {
        db.confirmed_flush_lsn("e2e_two_sinks").await >= both
    })
    .await;

    // The slow sink stops accepting writes; the fast one goes on.
    redis::cmd("CLIENT").arg("PAUSE").arg(60_000).arg("WRITE").query_async::<()>(&mut slow).await.unwrap();
    db.client
        .batch_execute("INSERT INTO orders VALUES (2, 'b', 2); INSERT INTO orders VALUES (3, 'c', 3)")
        .await
        .unwrap();
    let after_writes = db.current_wal_lsn().await;
    wait_for_redis_match(&db, "orders", "id", &mut fast, "order:", &pgfanout).await;
    assert!(redis_checkpoint(&mut fast, "fast").await > both, "the fast sink advanced");
    // Let keepalive-driven confirmations from before the writes land, then watch.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let held = db.confirmed_flush_lsn("e2e_two_sinks").await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let confirmed = db.confirmed_flush_lsn("e2e_two_sinks").await;
        assert_eq!(confirmed, held, "confirmed_flush_lsn moved while the slow sink held nothing new");
        assert!(confirmed < after_writes);
    }
    assert_eq!(redis_checkpoint(&mut slow, "slow").await, both, "the paused sink applied nothing");

    // Back to normal: both end equal to PostgreSQL and the slot catches up.
    redis::cmd("CLIENT").arg("UNPAUSE").query_async::<()>(&mut slow).await.unwrap();
    wait_for_redis_match(&db, "orders", "id", &mut slow, "order:", &pgfanout).await;
    wait_for_redis_match(&db, "orders", "id", &mut fast, "order:", &pgfanout).await;
    let slow_checkpoint = redis_checkpoint(&mut slow, "slow").await;
    wait_until("the slot catches up once both sinks hold everything", Duration::from_secs(10), || async {
        db.confirmed_flush_lsn("e2e_two_sinks").await >= slow_checkpoint
    })
    .await;
}

#[tokio::test]
async fn a_change_the_store_rejects_goes_to_the_dead_letter_file_and_the_rest_flows() {
    let db = create_database("e2e_dead_letter").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let redis_url = fresh_redis_db(10).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let dead_letters = std::env::temp_dir().join(format!("e2e_dead_letter_{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&dead_letters);
    let config = redis_config(&db, &redis_url, &http, &[("public.orders", "order:{id}")])
        + &format!(
        "[sink.delivery]\non_error = \"dead_letter\"\n[sink.delivery.dead_letter]\nkind = \"file\"\npath = \"{}\"\n",
        dead_letters.display()
    );
    let pgfanout = Pgfanout::start("e2e_dead_letter", &config, &http);
    wait_for_readiness(&http).await;
    db.client.batch_execute("INSERT INTO orders SELECT g, 'c', g FROM generate_series(1, 3) g").await.unwrap();
    wait_for_redis_match(&db, "orders", "id", &mut redis, "order:", &pgfanout).await;

    // Another application turns order:2 into a string; HSET on it now fails
    // with WRONGTYPE, which no retry can fix.
    redis::cmd("SET").arg("order:2").arg("not a hash").query_async::<()>(&mut redis).await.unwrap();
    db.client.batch_execute("UPDATE orders SET amount = amount + 10").await.unwrap();
    let update_done = db.current_wal_lsn().await;
    db.client.batch_execute("INSERT INTO orders VALUES (4, 'after', 4)").await.unwrap();

    wait_until("the rejected change is dead-lettered", Duration::from_secs(20), || async {
        pgfanout.metric(r#"pgfanout_dead_letter_total{sink="e2e_dead_letter"}"#).await == Some(1.0)
    })
    .await;
    wait_until("the change after the rejected one arrives", Duration::from_secs(20), || async {
        let exists: bool = redis::cmd("EXISTS").arg("order:4").query_async(&mut redis.clone()).await.unwrap();
        exists
    })
    .await;
    for id in ["1", "3"] {
        let amount: String =
            redis::cmd("HGET").arg(format!("order:{id}")).arg("amount").query_async(&mut redis).await.unwrap();
        assert!(amount.starts_with("1") && amount.len() > 4, "order:{id} got its update: {amount}");
    }
    let untouched: String = redis::cmd("GET").arg("order:2").query_async(&mut redis).await.unwrap();
    assert_eq!(untouched, "not a hash");

    let text = std::fs::read_to_string(&dead_letters).expect("the dead-letter file exists");
    let records: Vec<serde_json::Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(records.len(), 1, "exactly the rejected change: {text}");
    let record = &records[0];
    assert_eq!(record["sink"], "e2e_dead_letter");
    assert_eq!(record["table"], "public.orders");
    assert_eq!(record["op"], "update");
    assert_eq!(record["new"]["id"], "2");
    assert_eq!(record["new"]["amount"], "12.00");
    assert!(record["error"].as_str().unwrap().contains("WRONGTYPE"), "{record}");
    let commit_lsn: pgoutput::Lsn = record["commit_lsn"].as_str().unwrap().parse().unwrap();
    assert!(commit_lsn.0 < update_done);
    assert_eq!(pgfanout.metric(r#"pgfanout_dead_letter_total{sink="e2e_dead_letter"}"#).await, Some(1.0));
    wait_until("the slot moves past the rejected change", Duration::from_secs(10), || async {
        db.confirmed_flush_lsn("e2e_dead_letter").await > commit_lsn.0
    })
    .await;
    let _ = std::fs::remove_file(&dead_letters);
}

#[tokio::test]
async fn sigterm_drains_and_confirms_exactly_what_was_applied() {
    let db = create_database("e2e_sigterm").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let redis_url = fresh_redis_db(11).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.orders", "order:{id}")]);
    let mut pgfanout = Pgfanout::start("e2e_sigterm", &config, &http);
    wait_for_readiness(&http).await;

    let writer_url = db.url.clone();
    let workload = tokio::spawn(async move {
        let writer = connect(&writer_url).await;
        for id in 1..=300i64 {
            writer.execute("INSERT INTO orders VALUES ($1, 'w', 1)", &[&id]).await.unwrap();
        }
    });
    // Stop mid-workload, once Redis holds a first checkpoint (a fixed pause
    // raced the start-up on a loaded machine and sometimes stopped first).
    // (The initial snapshot of the empty table stores a checkpoint of its
    // own, so a first applied row is what says the workload is flowing.)
    wait_until("Redis holds a first checkpoint and row", Duration::from_secs(30), || async {
        let mut redis = redis_connection(&redis_url).await;
        redis_checkpoint(&mut redis, "e2e_sigterm").await > 0 && !redis_hashes(&mut redis, "order:").await.is_empty()
    })
    .await;
    pgfanout.signal("TERM");
    assert_eq!(pgfanout.wait_exit(Duration::from_secs(20)).await, Some(0), "SIGTERM exits cleanly");
    workload.await.unwrap();

    // The slot confirms everything Redis holds (it may confirm further only
    // past WAL that held nothing for this sink) and nothing Redis lacks: the
    // restart below must bring exactly the missing rows.
    let held = redis_checkpoint(&mut redis, "e2e_sigterm").await;
    assert!(held > 0);
    assert!(db.confirmed_flush_lsn("e2e_sigterm").await >= held, "log:\n{}", pgfanout.log_text());
    let applied_rows = redis_hashes(&mut redis, "order:").await.len() as i64;
    assert!(applied_rows > 0 && applied_rows <= 300);

    let pgfanout = Pgfanout::start("e2e_sigterm", &config, &http);
    wait_for_redis_match(&db, "orders", "id", &mut redis, "order:", &pgfanout).await;
    let applied = pgfanout
        .metric(r#"pgfanout_sink_applied_total{op="insert",sink="e2e_sigterm",table="public.orders"}"#)
        .await
        .unwrap_or(0.0) as i64;
    assert_eq!(applied, 300 - applied_rows, "the restart applies exactly the rest");
}

/// `run --until-lsn` stops by itself, like `pg_recvlogical -E`: every
/// transaction committed at or before the LSN is applied and confirmed, a
/// later one is left whole to the next run; past the last transaction a
/// keepalive ends the run.
#[tokio::test]
async fn run_until_an_lsn_applies_what_committed_before_it_then_exits() {
    let db = create_database("e2e_until").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let redis_url = fresh_redis_db(13).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.orders", "order:{id}")]);
    // The slot first (and the empty table's snapshot), so the rows below are streamed.
    let mut pgfanout = Pgfanout::start("e2e_until", &config, &http);
    wait_for_readiness(&http).await;
    pgfanout.signal("TERM");
    assert_eq!(pgfanout.wait_exit(Duration::from_secs(20)).await, Some(0));

    // Every commit flushed when it returns (the stack runs synchronous_commit
    // = off): the run below must find the whole history in the WAL, not
    // catch up with the flush position inside the third transaction first.
    db.client.batch_execute("SET synchronous_commit = on").await.unwrap();
    let insert = |first: i64, last: i64| {
        format!("INSERT INTO orders SELECT id, 'u', 1 FROM generate_series({first}, {last}) AS id")
    };
    db.client.batch_execute(&insert(1, 2)).await.unwrap();
    db.client.batch_execute(&insert(3, 4)).await.unwrap();
    // The LSN falls inside the third transaction, after its rows and before
    // its commit record (which starts at the current insert position at
    // the earliest, hence the - 1: a commit starting at the LSN counts as
    // before it). That transaction must be left out whole.
    let third = connect(&db.url).await;
    third.batch_execute(&format!("BEGIN; {}", insert(5, 6))).await.unwrap();
    let until = db.current_wal_lsn().await - 1;
    third.batch_execute("COMMIT").await.unwrap();
    db.client.batch_execute(&insert(7, 7)).await.unwrap();

    let mut pgfanout = Pgfanout::start_with_args("e2e_until", &config, &http, &["--until-lsn", &lsn_text(until)]);
    let exit = pgfanout.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(exit, Some(0), "exits by itself at the LSN; log:\n{}", pgfanout.log_text());
    let held: Vec<String> = redis_hashes(&mut redis, "order:").await.into_keys().collect();
    assert_eq!(held, ["1", "2", "3", "4"], "the transactions committed before the LSN, whole");
    let confirmed = db.confirmed_flush_lsn("e2e_until").await;
    assert!(
        confirmed >= redis_checkpoint(&mut redis, "e2e_until").await && confirmed <= until,
        "confirmed {} is what was applied, not past the LSN {}",
        lsn_text(confirmed),
        lsn_text(until)
    );

    // Past the last transaction: the keepalive that reaches the LSN ends the run.
    let until = db.current_wal_lsn().await;
    let mut pgfanout = Pgfanout::start_with_args("e2e_until", &config, &http, &["--until-lsn", &lsn_text(until)]);
    let exit = pgfanout.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(exit, Some(0), "exits by itself once caught up; log:\n{}", pgfanout.log_text());
    let held: Vec<String> = redis_hashes(&mut redis, "order:").await.into_keys().collect();
    assert_eq!(held, ["1", "2", "3", "4", "5", "6", "7"]);
    assert!(db.confirmed_flush_lsn("e2e_until").await >= until, "confirmed through the LSN");
}

/// Every metric the operator's guide lists.
const EXPORTED_METRICS: &[&str] = &[
    "pgfanout_events_total",
    "pgfanout_transactions_total",
    "pgfanout_source_lag_bytes",
    "pgfanout_source_lag_seconds_bucket",
    "pgfanout_sink_applied_total",
    "pgfanout_sink_batch_size_bucket",
    "pgfanout_sink_apply_seconds_bucket",
    "pgfanout_sink_errors_total",
    "pgfanout_sink_retries_total",
    "pgfanout_dead_letter_total",
    "pgfanout_sink_queue_depth",
    "pgfanout_checkpoint_lsn",
    "pgfanout_confirmed_flush_lsn",
    "pgfanout_slot_retained_wal_bytes",
    "pgfanout_build_info",
    "pgfanout_sink_up",
];

#[tokio::test]
async fn a_stopped_store_shows_in_metrics_and_readiness_and_loses_nothing() {
    let db = create_database("e2e_store_down").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let mut server = OwnRedisServer::start().await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &server.url, &http, &[("public.orders", "order:{id}")]);
    let pgfanout = Pgfanout::start("e2e_store_down", &config, &http);
    wait_for_readiness(&http).await;
    db.client.batch_execute("INSERT INTO orders VALUES (1, 'a', 1)").await.unwrap();
    let mut redis = redis_connection(&server.url).await;
    wait_for_redis_match(&db, "orders", "id", &mut redis, "order:", &pgfanout).await;
    wait_until("retained WAL is measured", Duration::from_secs(20), || async {
        pgfanout.metric("pgfanout_slot_retained_wal_bytes").await.unwrap_or(0.0) > 0.0
    })
    .await;
    let metrics = pgfanout.metrics().await.unwrap();
    for name in EXPORTED_METRICS {
        assert!(metrics.lines().any(|line| line.starts_with(name)), "{name} missing from /metrics:\n{metrics}");
    }

    // The store goes away; writes continue in PostgreSQL.
    server.kill();
    db.client
        .batch_execute("INSERT INTO orders VALUES (2, 'b', 2); UPDATE orders SET amount = 5 WHERE id = 1")
        .await
        .unwrap();
    let after_writes = db.current_wal_lsn().await;
    wait_until("readiness reports the sink", Duration::from_secs(20), || async {
        let response = raw_http_get(&http, "/readyz").await;
        response.split_whitespace().nth(1) == Some("503") && response.contains("sink(s) not connected: e2e_store_down")
    })
    .await;
    assert_eq!(pgfanout.metric(r#"pgfanout_sink_up{sink="e2e_store_down"}"#).await, Some(0.0));
    assert!(
        pgfanout.metric(r#"pgfanout_sink_errors_total{kind="transient",sink="e2e_store_down"}"#).await.unwrap() > 0.0
    );
    assert!(db.confirmed_flush_lsn("e2e_store_down").await < after_writes, "nothing confirmed past the outage");

    // It comes back: everything arrives, readiness returns.
    server.restart().await;
    let mut redis = redis_connection(&server.url).await;
    wait_for_redis_match(&db, "orders", "id", &mut redis, "order:", &pgfanout).await;
    wait_for_readiness(&http).await;
    assert_eq!(pgfanout.metric(r#"pgfanout_sink_up{sink="e2e_store_down"}"#).await, Some(1.0));
}

#[tokio::test]
async fn columns_and_rows_reach_the_sink_as_mapped() {
    let db = create_database("e2e_mapping").await;
    db.client
        .batch_execute(
            // The filter's columns are never TOASTed (PLAIN storage), so an
            // update always carries their values and the filter can decide.
            "CREATE TABLE reservations (id bigint PRIMARY KEY, status text, total_price numeric(12,2), notes text);
             ALTER TABLE reservations ALTER COLUMN status SET STORAGE PLAIN,
               ALTER COLUMN total_price SET STORAGE PLAIN;",
        )
        .await
        .unwrap();
    let redis_url = fresh_redis_db(12).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.reservations", "booking:{booking}")])
        + r#"exclude = ["notes"]
rename = { id = "booking", total_price = "price" }
filter = 'status != "cancelled" && total_price >= 100'
"#;
    let _pgfanout = Pgfanout::start("e2e_mapping", &config, &http);
    wait_for_readiness(&http).await;
    db.client
        .batch_execute(
            "INSERT INTO reservations VALUES (1, 'paid', 150, 'secret note'), (2, 'paid', 50, 'x'), (3, 'new', 300, NULL);
             UPDATE reservations SET status = 'cancelled' WHERE id = 3;
             UPDATE reservations SET total_price = 120 WHERE id = 2;
             INSERT INTO reservations VALUES (4, 'paid', 999, 'last');",
        )
        .await
        .unwrap();
    wait_until("the last row arrives", Duration::from_secs(20), || async {
        redis::cmd("EXISTS").arg("booking:4").query_async::<bool>(&mut redis.clone()).await.unwrap()
    })
    .await;
    let hashes = redis_hashes(&mut redis, "booking:").await;
    let keys: Vec<&String> = hashes.keys().collect();
    // 1 matches; 2 enters the filter with its update; 3 left it; 4 matches.
    assert_eq!(keys, ["1", "2", "4"], "{hashes:?}");
    let first = &hashes["1"];
    assert_eq!(first.get("booking").map(String::as_str), Some("1"));
    assert_eq!(first.get("price").map(String::as_str), Some("150.00"));
    assert_eq!(first.get("status").map(String::as_str), Some("paid"));
    assert!(!first.contains_key("notes") && !first.contains_key("total_price") && !first.contains_key("id"));
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_stalled_sink_with_a_million_pending_changes_keeps_memory_bounded() {
    let db = create_database("e2e_backpressure").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let server = OwnRedisServer::start().await;
    let mut redis = redis_connection(&server.url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &server.url, &http, &[("public.orders", "order:{id}")])
        .replace("[pipeline]\n", "[pipeline]\nqueue_mb = 16\nspill_memory_mb = 16\n");
    let pgfanout = Pgfanout::start("e2e_backpressure", &config, &http);
    wait_for_readiness(&http).await;
    db.client.batch_execute("INSERT INTO orders VALUES (0, 'first', 0)").await.unwrap();
    wait_for_redis_match(&db, "orders", "id", &mut redis, "order:", &pgfanout).await;
    let baseline_kb = peak_rss_kb(pgfanout.pid());

    // The sink stalls; a million changes pile up in PostgreSQL.
    redis::cmd("CLIENT").arg("PAUSE").arg(600_000).arg("WRITE").query_async::<()>(&mut redis).await.unwrap();
    for chunk in 0..100i64 {
        db.client
            .execute(
                "INSERT INTO orders SELECT g, 'bulk', g FROM generate_series($1::bigint, $2::bigint) g",
                &[&(chunk * 10_000 + 1), &((chunk + 1) * 10_000)],
            )
            .await
            .unwrap();
    }
    // pgfanout reads until its bounded queue is full, then stops reading.
    let mut last = -1.0;
    let mut steady_since = std::time::Instant::now();
    while steady_since.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let received =
            pgfanout.metric("pgfanout_events_total{op=\"insert\",table=\"public.orders\"}").await.unwrap_or(0.0);
        if received != last {
            last = received;
            steady_since = std::time::Instant::now();
        }
    }
    let peak_kb = peak_rss_kb(pgfanout.pid());
    let queued = pgfanout.metric(r#"pgfanout_sink_queue_depth{sink="e2e_backpressure"}"#).await.unwrap_or(0.0);
    println!("baseline {baseline_kb} kB, peak {peak_kb} kB, received {last} changes, {queued} transactions queued");
    assert!(last < 1_000_001.0, "backpressure: pgfanout stopped reading before taking all changes in ({last})");
    // The bound: 16 MB of queued changes (approximate) plus batches in flight,
    // decoder buffers and the runtime; without it, a million changes would
    // take several hundred MB.
    assert!(peak_kb < baseline_kb + 120 * 1024, "peak {peak_kb} kB over baseline {baseline_kb} kB");
    assert!(db.confirmed_flush_lsn("e2e_backpressure").await < db.current_wal_lsn().await);
}
