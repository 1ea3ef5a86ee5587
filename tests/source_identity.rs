//! End to end: pgfanout never resumes blind. Each sink stores the source's
//! identity beside its checkpoint; a dropped, re-created or advanced slot,
//! another cluster or a timeline switch stops pgfanout before anything is
//! applied. Also: nothing is created on the primary while a sink is
//! unreachable, and the shutdown log reports what the slot really holds.

mod common;

use std::time::Duration;

use common::*;

const SCHEMA: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL);";

async fn wait_for_readiness(http: &str) {
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(http, "/readyz").await.is_some() })
        .await;
}

/// The Redis key of a sink's source record.
fn record_key(sink: &str) -> String {
    format!("pgfanout:checkpoint:{sink}:source")
}

async fn stored_record(redis: &mut redis::aio::MultiplexedConnection, sink: &str) -> Option<serde_json::Value> {
    let text: Option<String> = redis::cmd("GET").arg(record_key(sink)).query_async(redis).await.unwrap();
    text.map(|text| serde_json::from_str(&text).unwrap())
}

async fn store_record(redis: &mut redis::aio::MultiplexedConnection, sink: &str, record: &serde_json::Value) {
    redis::cmd("SET").arg(record_key(sink)).arg(record.to_string()).query_async::<()>(redis).await.unwrap();
}

/// Runs pgfanout until it streams, runs `sql`, waits until every row is
/// applied, then stops pgfanout with SIGTERM.
async fn run_once(
    name: &str,
    config: &str,
    http: &str,
    db: &TestDatabase,
    redis: &mut redis::aio::MultiplexedConnection,
    sql: &str,
) {
    let mut pgfanout = Pgfanout::start(name, config, http);
    wait_for_readiness(http).await;
    db.client.batch_execute(sql).await.unwrap();
    wait_for_redis_match(db, "orders", "id", redis, "order:", &pgfanout).await;
    pgfanout.signal("TERM");
    assert_eq!(pgfanout.wait_exit(Duration::from_secs(20)).await, Some(0), "log:\n{}", pgfanout.log_text());
}

/// Starts pgfanout and expects it to exit with an error whose log contains `expected`.
async fn expect_refusal(name: &str, config: &str, http: &str, expected: &str) -> String {
    let mut pgfanout = Pgfanout::start(name, config, http);
    let code = pgfanout.wait_exit(Duration::from_secs(30)).await;
    let log = pgfanout.log_text();
    assert_ne!(code, Some(0), "pgfanout must refuse to start; log:\n{log}");
    assert!(log.contains(expected), "the refusal must say {expected:?}; log:\n{log}");
    log
}

#[tokio::test]
async fn a_dropped_or_recreated_slot_stops_pgfanout_before_anything_is_applied() {
    let db = create_database("e2e_slot_recreated").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let redis_url = fresh_redis_db(12).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.orders", "order:{id}")]);
    run_once("e2e_slot_recreated", &config, &http, &db, &mut redis, "INSERT INTO orders VALUES (1, 'a')").await;
    let record = stored_record(&mut redis, "e2e_slot_recreated").await.expect("the sink holds a source record");
    assert_eq!(record["slot"], "e2e_slot_recreated");
    assert_eq!(record["database"], "e2e_slot_recreated");
    assert!(record["slot_created_at"].is_string(), "pgfanout created the slot: {record}");

    // The slot is dropped; changes go on.
    db.client.execute("SELECT pg_drop_replication_slot('e2e_slot_recreated')", &[]).await.unwrap();
    db.client.batch_execute("INSERT INTO orders VALUES (2, 'lost')").await.unwrap();
    expect_refusal("e2e_slot_recreated", &config, &http, "slot e2e_slot_recreated does not exist, but sink(s)").await;
    let exists = db
        .client
        .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'e2e_slot_recreated'", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(exists, 0, "the slot is not re-created silently");

    // Someone re-creates it by hand: it starts after the lost change.
    db.client
        .execute("SELECT pg_create_logical_replication_slot('e2e_slot_recreated', 'pgoutput')", &[])
        .await
        .unwrap();
    db.client.batch_execute("INSERT INTO orders VALUES (3, 'c')").await.unwrap();
    expect_refusal("e2e_slot_recreated", &config, &http, "has confirmed_flush_lsn").await;
    assert_eq!(redis_hashes(&mut redis, "order:").await.len(), 1, "nothing was applied");

    // The explicit flag accepts the loss: the slot is created anew and streaming resumes.
    db.client.execute("SELECT pg_drop_replication_slot('e2e_slot_recreated')", &[]).await.unwrap();
    let recreate = config.replace("[source]\n", "[source]\nrecreate_slot = true\n");
    let pgfanout = Pgfanout::start("e2e_slot_recreated", &recreate, &http);
    wait_for_readiness(&http).await;
    db.client.batch_execute("INSERT INTO orders VALUES (4, 'd')").await.unwrap();
    wait_until("the change after the re-creation arrives", Duration::from_secs(20), || {
        let url = redis_url.clone();
        async move { redis_hashes(&mut redis_connection(&url).await, "order:").await.contains_key("4") }
    })
    .await;
    assert!(pgfanout.log_text().contains("misses the changes between its checkpoint and the consistent point"));
}

#[tokio::test]
async fn an_advanced_slot_another_cluster_or_a_timeline_switch_is_refused() {
    let db = create_database("e2e_slot_identity").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let redis_url = fresh_redis_db(13).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.orders", "order:{id}")]);
    run_once("e2e_slot_identity", &config, &http, &db, &mut redis, "INSERT INTO orders VALUES (1, 'a')").await;
    let record = stored_record(&mut redis, "e2e_slot_identity").await.unwrap();
    let system_id: String =
        db.client.query_one("SELECT system_identifier::text FROM pg_control_system()", &[]).await.unwrap().get(0);
    assert_eq!(record["system_id"], system_id.as_str());

    // Another cluster.
    let mut other = record.clone();
    other["system_id"] = "1234567890".into();
    store_record(&mut redis, "e2e_slot_identity", &other).await;
    expect_refusal("e2e_slot_identity", &config, &http, "another PostgreSQL cluster (system identifier 1234567890)")
        .await;

    // A timeline switch (the record was written on timeline 7).
    let mut switched = record.clone();
    switched["timeline"] = 7.into();
    store_record(&mut redis, "e2e_slot_identity", &switched).await;
    expect_refusal("e2e_slot_identity", &config, &http, "switched from timeline 7 to 1").await;

    // A record written by an older pgfanout (none): adopted once, with a log line.
    redis::cmd("DEL").arg(record_key("e2e_slot_identity")).query_async::<()>(&mut redis).await.unwrap();
    db.client.batch_execute("INSERT INTO orders VALUES (2, 'b')").await.unwrap();
    let mut pgfanout = Pgfanout::start("e2e_slot_identity", &config, &http);
    wait_for_redis_match(&db, "orders", "id", &mut redis, "order:", &pgfanout).await;
    assert!(pgfanout.log_text().contains("adopting this server and slot as its source"), "{}", pgfanout.log_text());
    assert_eq!(stored_record(&mut redis, "e2e_slot_identity").await.unwrap()["system_id"], system_id.as_str());
    pgfanout.signal("TERM");
    assert_eq!(pgfanout.wait_exit(Duration::from_secs(20)).await, Some(0));

    // Advanced behind pgfanout's back: the change in between is lost to the sink.
    // (Flushed at commit: the slot cannot be advanced past unflushed WAL,
    // and the test server runs with synchronous_commit = off.)
    db.client
        .batch_execute("BEGIN; SET LOCAL synchronous_commit = on; INSERT INTO orders VALUES (3, 'skipped'); COMMIT")
        .await
        .unwrap();
    db.client
        .execute("SELECT pg_replication_slot_advance('e2e_slot_identity', pg_current_wal_insert_lsn())", &[])
        .await
        .unwrap();
    expect_refusal("e2e_slot_identity", &config, &http, "advanced (pg_replication_slot_advance)").await;
    assert!(!redis_hashes(&mut redis, "order:").await.contains_key("3"), "nothing was applied");
}

#[tokio::test]
async fn an_unreachable_sink_leaves_no_slot_and_no_publication() {
    let db = create_database("e2e_sink_first").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let nothing_listens = format!("redis://127.0.0.1:{}/0", free_port());
    let config = redis_config(&db, &nothing_listens, &http, &[("public.orders", "order:{id}")]);
    let mut pgfanout = Pgfanout::start("e2e_sink_first", &config, &http);
    wait_until("pgfanout retries the unreachable sink", Duration::from_secs(20), || async {
        pgfanout.log_text().matches("sink unreachable; retrying").count() >= 2
    })
    .await;
    assert!(pgfanout.is_running());
    let count = |sql: &'static str| {
        let client = &db.client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'e2e_sink_first'").await, 0);
    assert_eq!(count("SELECT count(*) FROM pg_publication WHERE pubname = 'e2e_sink_first'").await, 0);
}

#[tokio::test]
async fn the_shutdown_log_reports_the_position_the_slot_holds() {
    let db = create_database("e2e_shutdown_log").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let mut server = OwnRedisServer::start().await;
    let mut redis = redis_connection(&server.url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &server.url, &http, &[("public.orders", "order:{id}")]);
    run_once("e2e_shutdown_log", &config, &http, &db, &mut redis, "INSERT INTO orders VALUES (1, 'a')").await;

    // A second run whose store goes away with a change in flight: the
    // workers cannot drain, and the error must name what the slot holds.
    let mut pgfanout = Pgfanout::start("e2e_shutdown_log_2", &config, &http);
    wait_for_readiness(&http).await;
    server.kill();
    db.client.batch_execute("INSERT INTO orders VALUES (2, 'b')").await.unwrap();
    wait_until("the sink fails on the change", Duration::from_secs(20), || async {
        pgfanout.log_text().contains("sink apply failed; retrying")
    })
    .await;
    pgfanout.signal("TERM");
    assert_ne!(pgfanout.wait_exit(Duration::from_secs(30)).await, Some(0), "the workers could not drain");
    let log = pgfanout.log_text();
    let reported = log
        .split("confirmed only up to ")
        .nth(1)
        .map(|rest| rest.chars().take_while(|c| c.is_ascii_hexdigit() || *c == '/').collect::<String>())
        .unwrap_or_else(|| panic!("no shutdown report in the log:\n{log}"));
    let slot: String = db
        .client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'e2e_shutdown_log'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(reported, "0/0", "{log}");
    assert_eq!(reported, slot, "the log reports what pg_replication_slots shows");
}
