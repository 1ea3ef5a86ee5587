//! End to end: a store that fails as a whole (full, unauthorised) blocks its
//! sink whatever `on_error` says: nothing is dead-lettered, the slot is not
//! confirmed past the failure, and once the cause is fixed the store ends
//! equal to PostgreSQL. And the circuit breaker: a run of rejected changes
//! blocks the sink instead of dead-lettering the stream.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const SCHEMA: &str =
    "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2) NOT NULL);";

/// A config with one Redis sink at `redis_url` routing `orders`, dead letters
/// to `dead_letters`, and the breaker at `breaker`.
fn dead_letter_config(db: &TestDatabase, redis_url: &str, http: &str, dead_letters: &Path, breaker: u64) -> String {
    redis_config(db, redis_url, http, &[("public.orders", "order:{id}")])
        + &format!(
            "[sink.delivery]\non_error = \"dead_letter\"\nmax_consecutive_dead_letters = {breaker}\n\
             [sink.delivery.dead_letter]\nkind = \"file\"\npath = \"{}\"\n",
            dead_letters.display()
        )
}

fn dead_letter_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{name}_{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn dead_letter_count(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|text| text.lines().count()).unwrap_or(0)
}

/// Starts pgfanout, waits until it streams and has applied a first row, then
/// returns it with a connection to the store.
async fn start_and_sync(
    db: &TestDatabase,
    name: &str,
    config: &str,
    http: &str,
    admin_url: &str,
    env: &[(&str, &str)],
) -> (Pgfanout, redis::aio::MultiplexedConnection) {
    let pgfanout = Pgfanout::start_with_env(name, config, http, env);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(http, "/readyz").await.is_some() })
        .await;
    db.client.batch_execute("INSERT INTO orders VALUES (1, 'first', 1)").await.unwrap();
    let mut admin = redis_connection(admin_url).await;
    wait_for_redis_match(db, "orders", "id", &mut admin, "order:", &pgfanout).await;
    (pgfanout, admin)
}

/// The failure the store answers with blocks: the sink counts store errors,
/// dead-letters nothing, and the slot stays before the end of the failing
/// transaction, `failing_end`: the WAL position read right after it
/// committed (other tests write WAL too, and an idle pipeline may confirm
/// the server's position up to the failing transaction, never past it).
async fn assert_blocked_without_dead_letters(
    db: &TestDatabase,
    pgfanout: &Pgfanout,
    sink: &str,
    dead_letters: &Path,
    failing_end: u64,
) {
    let store_errors = format!(r#"pgfanout_sink_errors_total{{kind="store",sink="{sink}"}}"#);
    wait_until("the sink retries the store-wide failure a few times", Duration::from_secs(30), || async {
        pgfanout.metric(&store_errors).await.unwrap_or(0.0) >= 3.0
    })
    .await;
    assert_eq!(dead_letter_count(dead_letters), 0, "a store-wide failure is never a dead letter");
    assert_eq!(pgfanout.metric(&format!(r#"pgfanout_dead_letter_total{{sink="{sink}"}}"#)).await, Some(0.0));
    assert_eq!(
        pgfanout.metric(&format!(r#"pgfanout_sink_errors_total{{kind="permanent",sink="{sink}"}}"#)).await,
        Some(0.0),
        "not classified as a rejected change"
    );
    let confirmed = db.confirmed_flush_lsn(sink).await;
    assert!(
        confirmed < failing_end,
        "the slot was confirmed to {confirmed:X}, past the failing transaction (which ends before {failing_end:X})"
    );
}

#[tokio::test]
async fn redis_out_of_memory_blocks_and_nothing_is_dead_lettered() {
    let db = create_database("e2e_redis_oom").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let server = OwnRedisServer::start().await;
    let http = format!("127.0.0.1:{}", free_port());
    let dead_letters = dead_letter_file("e2e_redis_oom");
    let config = dead_letter_config(&db, &server.url, &http, &dead_letters, 100);
    let (pgfanout, mut admin) = start_and_sync(&db, "e2e_redis_oom", &config, &http, &server.url, &[]).await;

    // Every write now fails with OOM: the server is full, not the rows wrong.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1").query_async::<()>(&mut admin).await.unwrap();
    db.client.batch_execute("INSERT INTO orders SELECT g, 'c', g FROM generate_series(2, 20) g").await.unwrap();
    let failing_end = db.current_wal_lsn().await;
    db.client.batch_execute("UPDATE orders SET amount = amount + 1 WHERE id = 1").await.unwrap();
    assert_blocked_without_dead_letters(&db, &pgfanout, "e2e_redis_oom", &dead_letters, failing_end).await;

    // Room again: everything arrives, and the slot moves past it.
    redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0").query_async::<()>(&mut admin).await.unwrap();
    let done = db.current_wal_lsn().await;
    wait_for_redis_match(&db, "orders", "id", &mut admin, "order:", &pgfanout).await;
    wait_until("the slot moves past the changes once applied", Duration::from_secs(20), || async {
        db.confirmed_flush_lsn("e2e_redis_oom").await >= done
    })
    .await;
    assert_eq!(dead_letter_count(&dead_letters), 0);
    let _ = std::fs::remove_file(&dead_letters);
}

#[tokio::test]
async fn a_redis_user_without_write_permission_blocks_and_nothing_is_dead_lettered() {
    let db = create_database("e2e_redis_noperm").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let server = OwnRedisServer::start().await;
    let mut admin = redis_connection(&server.url).await;
    redis::cmd("ACL")
        .arg(&["SETUSER", "feeder", "on", ">feeder-secret", "~*", "&*", "+@all"])
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    // The user in the URL, its password from the environment (a password
    // written in the config file is refused).
    let feeder_url = server.url.replace("redis://", "redis://feeder@");
    let http = format!("127.0.0.1:{}", free_port());
    let dead_letters = dead_letter_file("e2e_redis_noperm");
    let config = dead_letter_config(&db, &feeder_url, &http, &dead_letters, 100);
    let (pgfanout, mut admin) = start_and_sync(
        &db,
        "e2e_redis_noperm",
        &config,
        &http,
        &server.url,
        &[("PGFANOUT_SINK_E2E_REDIS_NOPERM__PASSWORD", "feeder-secret")],
    )
    .await;

    // An operator takes the write permission away: every write is refused.
    redis::cmd("ACL").arg(&["SETUSER", "feeder", "-@write"]).query_async::<()>(&mut admin).await.unwrap();
    db.client.batch_execute("INSERT INTO orders SELECT g, 'c', g FROM generate_series(2, 20) g").await.unwrap();
    let failing_end = db.current_wal_lsn().await;
    db.client.batch_execute("DELETE FROM orders WHERE id = 1").await.unwrap();
    assert_blocked_without_dead_letters(&db, &pgfanout, "e2e_redis_noperm", &dead_letters, failing_end).await;
    // Inside a script Redis reports the ACL refusal without its NOPERM code:
    // only a code known to be about one key may count as a rejected change.
    assert!(pgfanout.log_text().contains("can't run this command"), "the log names the cause");

    redis::cmd("ACL").arg(&["SETUSER", "feeder", "+@all"]).query_async::<()>(&mut admin).await.unwrap();
    let done = db.current_wal_lsn().await;
    wait_for_redis_match(&db, "orders", "id", &mut admin, "order:", &pgfanout).await;
    wait_until("the slot moves past the changes once applied", Duration::from_secs(20), || async {
        db.confirmed_flush_lsn("e2e_redis_noperm").await >= done
    })
    .await;
    assert_eq!(dead_letter_count(&dead_letters), 0);
    let _ = std::fs::remove_file(&dead_letters);
}

#[tokio::test]
async fn a_run_of_rejected_changes_opens_the_breaker_and_blocks_the_sink() {
    let db = create_database("e2e_breaker").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let server = OwnRedisServer::start().await;
    let http = format!("127.0.0.1:{}", free_port());
    let dead_letters = dead_letter_file("e2e_breaker");
    // One lane: only per-key order is promised, so with several lanes a
    // later key could pass the blocked one, and "nothing after it" would not hold.
    let config = dead_letter_config(&db, &server.url, &http, &dead_letters, 3)
        .replace("[sink.delivery]\n", "[sink.delivery]\nlanes = 1\n");
    let (pgfanout, mut admin) = start_and_sync(&db, "e2e_breaker", &config, &http, &server.url, &[]).await;

    // Another application turns ten keys into strings: each update of those
    // rows is rejected (WRONGTYPE), a change-level error, dead-lettered...
    for id in 2..=11 {
        redis::cmd("SET").arg(format!("order:{id}")).arg("not a hash").query_async::<()>(&mut admin).await.unwrap();
    }
    db.client.batch_execute("INSERT INTO orders SELECT g, 'c', g FROM generate_series(2, 11) g").await.unwrap();
    db.client.batch_execute("INSERT INTO orders VALUES (12, 'after', 12)").await.unwrap();

    // ...but only three in a row: then the sink blocks on the fourth.
    wait_until("the breaker opens", Duration::from_secs(30), || async {
        pgfanout.log_text().contains("max_consecutive_dead_letters")
    })
    .await;
    let retries = r#"pgfanout_sink_errors_total{kind="permanent",sink="e2e_breaker"}"#;
    let seen = pgfanout.metric(retries).await.unwrap_or(0.0);
    wait_until("the blocked change is retried", Duration::from_secs(30), || async {
        pgfanout.metric(retries).await.unwrap_or(0.0) >= seen + 2.0
    })
    .await;
    assert_eq!(dead_letter_count(&dead_letters), 3, "three dead letters, then the breaker");
    assert_eq!(pgfanout.metric(r#"pgfanout_dead_letter_total{sink="e2e_breaker"}"#).await, Some(3.0));
    let exists: bool = redis::cmd("EXISTS").arg("order:12").query_async(&mut admin).await.unwrap();
    assert!(!exists, "nothing after the blocked change is applied");
    // The dead letters name the blocked transaction's commit: the slot stays before it.
    let record: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&dead_letters).unwrap().lines().next().unwrap()).unwrap();
    let commit_lsn: pgoutput::Lsn = record["commit_lsn"].as_str().unwrap().parse().unwrap();
    assert!(db.confirmed_flush_lsn("e2e_breaker").await <= commit_lsn.0);

    // The keys freed, the blocked change and the rest go through; the three
    // dead-lettered rows stay for the operator to replay from the file.
    for id in 2..=11 {
        redis::cmd("DEL").arg(format!("order:{id}")).query_async::<()>(&mut admin).await.unwrap();
    }
    let done = db.current_wal_lsn().await;
    wait_until("the rest is applied once the store accepts changes", Duration::from_secs(30), || async {
        db.confirmed_flush_lsn("e2e_breaker").await >= done
    })
    .await;
    let present: usize = redis::cmd("KEYS").arg("order:*").query_async::<Vec<String>>(&mut admin).await.unwrap().len();
    assert_eq!(present, 12 - 3, "all rows but the three dead-lettered ones");
    assert_eq!(dead_letter_count(&dead_letters), 3);
    let _ = std::fs::remove_file(&dead_letters);
}
