//! End to end: what the replication stream does to pgfanout — large
//! transactions streamed while in progress (and spilled to disk), aborted
//! streamed transactions and subtransactions, and a walsender killed
//! mid-stream.

mod common;

use std::time::Duration;

use common::*;

const SCHEMA: &str = r#"
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer text NOT NULL,
    amount numeric(12,2) NOT NULL,
    notes text
);
"#;

async fn metric_or_zero(pgfanout: &Pgfanout, series: &str) -> f64 {
    pgfanout.metric(series).await.unwrap_or(0.0)
}

/// Streamed transactions counted by the server for `slot`.
async fn streamed_transactions(db: &TestDatabase, slot: &str) -> i64 {
    let row = db
        .client
        .query_one(
            "SELECT coalesce(sum(stream_txns), 0)::bigint FROM pg_stat_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test]
async fn large_transactions_are_streamed_spilled_and_applied_only_when_committed() {
    let db = create_database("e2e_streaming").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    // Walsenders of this database stream any transaction past 64 kB.
    db.client.batch_execute("ALTER DATABASE e2e_streaming SET logical_decoding_work_mem = '64kB'").await.unwrap();
    let redis_url = fresh_redis_db(3).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let mut config = redis_config(&db, &redis_url, &http, &[("public.orders", "order:{id}")]);
    // 1 MB in memory, then spill: the 3 MB transaction below must spill.
    config = config.replace("[pipeline]\n", "[pipeline]\nspill_memory_mb = 1\n");
    let pgfanout = Pgfanout::start("e2e_streaming", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;

    // A large transaction stays open while small ones commit around it.
    let large = connect(&db.url).await;
    large.batch_execute("BEGIN").await.unwrap();
    large
        .batch_execute(
            "INSERT INTO orders SELECT g, 'large', g, repeat(md5(g::text), 30) FROM generate_series(1, 1500) g;
             SAVEPOINT before_mistake;
             INSERT INTO orders SELECT g, 'rolled back', g, repeat('x', 900) FROM generate_series(1501, 2000) g;
             ROLLBACK TO SAVEPOINT before_mistake;
             INSERT INTO orders SELECT g, 'large', g, repeat(md5(g::text), 30) FROM generate_series(2001, 3500) g;",
        )
        .await
        .unwrap();
    db.client.batch_execute("INSERT INTO orders VALUES (100001, 'small', 1, NULL)").await.unwrap();
    wait_for_redis_match(&db, "orders", "id", &mut redis, "order:", &pgfanout).await;
    // Rows of the open transaction are not visible in PostgreSQL, so the
    // match above also proves none of them reached Redis early.
    let held: bool = redis::cmd("EXISTS").arg("order:1").query_async(&mut redis).await.unwrap();
    assert!(!held, "a change of an uncommitted transaction reached Redis");

    // A second large transaction that aborts entirely.
    let doomed = connect(&db.url).await;
    doomed
        .batch_execute(
            "BEGIN;
             INSERT INTO orders SELECT g, 'aborted', g, repeat(md5(g::text), 30) FROM generate_series(5001, 7000) g;
             ROLLBACK;",
        )
        .await
        .unwrap();
    large.batch_execute("COMMIT").await.unwrap();
    db.client.batch_execute("UPDATE orders SET amount = amount + 1 WHERE id % 100 = 0").await.unwrap();

    wait_for_redis_match(&db, "orders", "id", &mut redis, "order:", &pgfanout).await;
    let rows: i64 = db.client.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
    assert_eq!(rows, 3001, "1500 + 1500 large rows and the small one");

    assert!(streamed_transactions(&db, "e2e_streaming").await >= 2, "the server streamed both large transactions");
    assert!(
        metric_or_zero(&pgfanout, "pgfanout_streamed_spilled_bytes_total").await > 0.0,
        "the in-progress transaction was spilled to disk past 1 MB"
    );
    wait_until("held streamed changes are released", Duration::from_secs(10), || async {
        metric_or_zero(&pgfanout, "pgfanout_streamed_memory_bytes").await == 0.0
    })
    .await;
    let applied_inserts = metric_or_zero(
        &pgfanout,
        r#"pgfanout_sink_applied_total{op="insert",sink="e2e_streaming",table="public.orders"}"#,
    )
    .await;
    assert_eq!(applied_inserts, 3001.0, "rolled-back and aborted inserts are never applied");
}

#[tokio::test]
async fn a_killed_walsender_loses_and_duplicates_nothing() {
    let db = create_database("e2e_terminate").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let redis_url = fresh_redis_db(4).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.orders", "order:{id}")]);
    let pgfanout = Pgfanout::start("e2e_terminate", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;

    const INSERTS: i64 = 400;
    let writer_url = db.url.clone();
    let workload = tokio::spawn(async move {
        let writer = connect(&writer_url).await;
        for id in 1..=INSERTS {
            writer.execute("INSERT INTO orders VALUES ($1, 'c', 1, NULL)", &[&id]).await.unwrap();
            if id % 2 == 0 {
                writer.execute("UPDATE orders SET amount = amount + 1 WHERE id = $1", &[&(id - 1)]).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // Kill the walsender a few times while the workload runs.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        wait_until("the slot is active again", Duration::from_secs(30), || async {
            let row = db
                .client
                .query_one("SELECT active FROM pg_replication_slots WHERE slot_name = 'e2e_terminate'", &[])
                .await
                .unwrap();
            row.get::<_, bool>(0)
        })
        .await;
        db.client
            .batch_execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'e2e_terminate'",
            )
            .await
            .unwrap();
    }
    workload.await.unwrap();
    wait_for_redis_match(&db, "orders", "id", &mut redis, "order:", &pgfanout).await;

    // Exactly once into the store: re-sent transactions were skipped, not re-applied.
    let applied = |op: &'static str| {
        let series = format!(r#"pgfanout_sink_applied_total{{op="{op}",sink="e2e_terminate",table="public.orders"}}"#);
        let pgfanout = &pgfanout;
        async move { metric_or_zero(pgfanout, &series).await }
    };
    assert_eq!(applied("insert").await, INSERTS as f64);
    assert_eq!(applied("update").await, (INSERTS / 2) as f64);
    assert!(
        pgfanout.log_text().matches("replication connection lost; reconnecting").count() >= 3,
        "the walsender was killed and pgfanout reconnected:\n{}",
        pgfanout.log_text()
    );
}

#[tokio::test]
async fn an_idle_database_gets_heartbeats() {
    let db = create_database("e2e_heartbeat").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    // A probe slot made before pgfanout starts sees every logical message written after.
    db.client
        .batch_execute("SELECT pg_create_logical_replication_slot('e2e_heartbeat_probe', 'pgoutput')")
        .await
        .unwrap();
    let redis_url = fresh_redis_db(5).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.orders", "order:{id}")])
        .replace("status_interval_ms = 200\n", "status_interval_ms = 200\nheartbeat_interval_secs = 1\n");
    let pgfanout = Pgfanout::start("e2e_heartbeat", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;

    let heartbeats = || async {
        let rows = db
            .client
            .query(
                "SELECT data FROM pg_logical_slot_peek_binary_changes('e2e_heartbeat_probe', NULL, NULL, \
                 'proto_version', '1', 'publication_names', 'e2e_heartbeat', 'messages', 'true')",
                &[],
            )
            .await
            .unwrap();
        let mut decoder = pgoutput::Decoder::new(1);
        rows.iter()
            .filter_map(|row| decoder.decode(bytes::Bytes::from(row.get::<_, Vec<u8>>(0))).ok())
            .filter(|message| {
                matches!(message, pgoutput::PgOutputMessage::Message(m)
                    if m.prefix == "pgfanout.heartbeat" && !m.transactional)
            })
            .count()
    };
    wait_until("two heartbeats are written while nothing happens", Duration::from_secs(15), || async {
        heartbeats().await >= 2
    })
    .await;

    // While transactions keep arriving, no heartbeat is needed.
    let before = heartbeats().await;
    for id in 0..25 {
        db.client.execute("INSERT INTO orders VALUES ($1, 'busy', 1, NULL)", &[&(id as i64)]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(heartbeats().await <= before + 1, "heartbeats only on an idle database:\n{}", pgfanout.log_text());
    db.client.batch_execute("SELECT pg_drop_replication_slot('e2e_heartbeat_probe')").await.unwrap();
}

#[tokio::test]
async fn routed_tables_missing_from_the_publication_are_added_or_reported() {
    let db = create_database("e2e_publication").await;
    db.client
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2) NOT NULL, notes text);
             CREATE TABLE cities (id int PRIMARY KEY, name text NOT NULL);
             CREATE PUBLICATION e2e_publication FOR TABLE orders;",
        )
        .await
        .unwrap();
    let redis_url = fresh_redis_db(6).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config =
        redis_config(&db, &redis_url, &http, &[("public.orders", "order:{id}"), ("public.cities", "city:{id}")]);

    // With create_publication off, `check` names the fix and fails.
    let strict = config.replace("status_interval_ms = 200\n", "status_interval_ms = 200\ncreate_publication = false\n");
    let strict_path = std::env::temp_dir().join(format!("e2e_publication_strict_{}.toml", std::process::id()));
    std::fs::write(&strict_path, strict).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_pgfanout"))
        .args(["check", "--config"])
        .arg(&strict_path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "check must fail: {report}");
    assert!(
        report.contains(r#"ALTER PUBLICATION "e2e_publication" ADD TABLE "public"."cities""#),
        "check prints the fix:\n{report}"
    );
    let _ = std::fs::remove_file(&strict_path);

    // By default the routed table is added, and its changes flow.
    let pgfanout = Pgfanout::start("e2e_publication", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    let published: i64 = db
        .client
        .query_one("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'e2e_publication'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(published, 2);
    db.client.batch_execute("INSERT INTO cities VALUES (1, 'Lisbon'), (2, 'Porto')").await.unwrap();
    wait_for_redis_match(&db, "cities", "id", &mut redis, "city:", &pgfanout).await;
}

#[tokio::test]
async fn keepalives_keep_the_connection_under_a_short_wal_sender_timeout() {
    let db = create_database("e2e_sender_timeout").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    // The walsender drops clients silent for 2 s; pgfanout's own timer only
    // reports every 10 s, so only answering the server's keepalives keeps it.
    db.client.batch_execute("ALTER DATABASE e2e_sender_timeout SET wal_sender_timeout = '2s'").await.unwrap();
    let redis_url = fresh_redis_db(7).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.orders", "order:{id}")])
        .replace("status_interval_ms = 200\n", "status_interval_ms = 10000\nheartbeat_interval_secs = 0\n");
    let pgfanout = Pgfanout::start("e2e_sender_timeout", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    let walsender_pid = || async {
        let row = db
            .client
            .query_one("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'e2e_sender_timeout'", &[])
            .await
            .unwrap();
        row.get::<_, Option<i32>>(0)
    };
    let first = walsender_pid().await;
    assert!(first.is_some());
    // The walsender really runs with the short timeout.
    let timeout: String = db
        .client
        .query_one(
            "SELECT setting FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, \
             unnest(s.setconfig) setting WHERE d.datname = 'e2e_sender_timeout'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(timeout, "wal_sender_timeout=2s");
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(walsender_pid().await, first, "the same walsender still serves pgfanout:\n{}", pgfanout.log_text());
    assert!(!pgfanout.log_text().contains("reconnecting"), "no reconnect happened:\n{}", pgfanout.log_text());
    db.client.batch_execute("INSERT INTO orders VALUES (1, 'after idle', 1, NULL)").await.unwrap();
    wait_for_redis_match(&db, "orders", "id", &mut redis, "order:", &pgfanout).await;
}
