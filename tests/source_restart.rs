//! End to end: pgfanout streams again within seconds after each of several
//! PostgreSQL restarts in a row (the reconnect backoff starts over once a
//! stream is established, and stays short while the server starts up).
//!
//! This file holds a single test on purpose: it restarts the stack's
//! PostgreSQL, which would break any test running beside it in the same
//! binary (cargo runs test binaries one after the other).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// `pg_ctl restart -m fast -w` on the stack's server, as the postgres user.
fn restart_postgres() {
    let pg_ctl = format!("{}/pg_ctl", required_env("PGFANOUT_TEST_PG_BIN"));
    let data = required_env("PGFANOUT_TEST_PG_DATA");
    let log = format!("{}/pg.log", required_env("PGFANOUT_TEST_STACK_DIR"));
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--", &pg_ctl, "-D", &data, "-l", &log, "-m", "fast", "-w", "-t", "60", "restart"])
        .status()
        .expect("cannot run pg_ctl");
    assert!(status.success(), "pg_ctl restart failed");
}

fn streams_started(pgfanout: &Pgfanout) -> usize {
    pgfanout.log_text().lines().filter(|line| line.contains("\"message\":\"streaming\"")).count()
}

#[tokio::test]
async fn after_each_of_several_restarts_pgfanout_streams_again_within_seconds() {
    let db = create_database("e2e_pg_restarts").await;
    db.client.batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL)").await.unwrap();
    let redis_url = fresh_redis_db(15).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.orders", "order:{id}")]);
    let pgfanout = Pgfanout::start("e2e_pg_restarts", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { streams_started(&pgfanout) == 1 }).await;

    for round in 1..=8usize {
        restart_postgres();
        let back = Instant::now();
        wait_until(&format!("streaming again after restart {round}"), Duration::from_secs(3), || async {
            streams_started(&pgfanout) > round
        })
        .await;
        eprintln!("restart {round}: streaming again {:?} after PostgreSQL accepted connections", back.elapsed());
    }
    // And the stream works: a change made now arrives.
    let db = TestDatabase { client: connect(&db.url).await, ..db };
    db.client.batch_execute("INSERT INTO orders VALUES (1, 'after restarts')").await.unwrap();
    wait_for_redis_match(&db, "orders", "id", &mut redis, "order:", &pgfanout).await;
}
