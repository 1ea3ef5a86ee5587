//! Two pgfanout processes on one slot: the second stands by (ready, `/readyz`
//! says "standby", nothing streamed), takes over within its poll interval
//! once the active one is killed (SIGKILL: no clean stop), and the killed
//! one, started again, stands by in turn instead of failing.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// `/readyz`'s body, whatever the status code.
async fn readyz(http: &str) -> String {
    let response = raw_http_get(http, "/readyz").await;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

/// The number of "streaming" log lines (one per replication stream started).
fn streams_started(pgfanout: &Pgfanout) -> usize {
    pgfanout.log_text().lines().filter(|line| line.contains("\"message\":\"streaming\"")).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_over_after_the_active_instance_is_killed() {
    let db = create_database("e2e_standby").await;
    db.client.batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text)").await.unwrap();
    let redis_server = OwnRedisServer::start().await;
    let mut redis = redis_connection(&redis_server.url).await;
    let config = |http: &str| {
        redis_config(&db, &redis_server.url, http, &[("public.items", "item:{id}")]).replacen(
            "[source]\n",
            "[source]\nstandby_poll_secs = 1\n",
            1,
        )
    };
    let (http_a, http_b) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));

    let first = Pgfanout::start("e2e_standby_first", &config(&http_a), &http_a);
    wait_until("the first instance streams", Duration::from_secs(30), || async {
        readyz(&http_a).await.contains("\"status\":\"ready\"")
    })
    .await;
    let second = Pgfanout::start("e2e_standby_second", &config(&http_b), &http_b);
    wait_until("the second instance stands by", Duration::from_secs(30), || async {
        readyz(&http_b).await.contains("\"status\":\"standby\"")
    })
    .await;
    assert!(http_get(&http_b, "/readyz").await.is_some(), "a standby answers /readyz with 200");

    db.client.batch_execute("INSERT INTO items VALUES (1, 'one')").await.unwrap();
    wait_for_redis_match(&db, "items", "id", &mut redis, "item:", &first).await;
    // Never both: while the first streams, the second has started no stream
    // (several looks over its poll interval, each after a write went through).
    for id in 2..5 {
        db.client.execute("INSERT INTO items VALUES ($1, 'while both run')", &[&id]).await.unwrap();
        wait_for_redis_match(&db, "items", "id", &mut redis, "item:", &first).await;
        assert!(readyz(&http_b).await.contains("\"status\":\"standby\""), "{}", second.log_text());
        assert_eq!(streams_started(&second), 0, "the standby streamed:\n{}", second.log_text());
    }

    first.signal("KILL");
    let killed = Instant::now();
    db.client
        .batch_execute("INSERT INTO items VALUES (10, 'after the kill'); DELETE FROM items WHERE id = 2")
        .await
        .unwrap();
    wait_until("the standby takes over", Duration::from_secs(20), || async {
        readyz(&http_b).await.contains("\"status\":\"ready\"")
    })
    .await;
    let took = killed.elapsed();
    wait_for_redis_match(&db, "items", "id", &mut redis, "item:", &second).await;
    assert_eq!(streams_started(&second), 1);
    // PostgreSQL frees the slot as soon as the killed process's connection
    // closes; then one poll interval (1 s) and the start-up.
    assert!(took < Duration::from_secs(10), "took over after {took:?}:\n{}", second.log_text());
    drop(first);

    // The killed instance, restarted, finds the slot taken: it stands by
    // instead of failing, and the second keeps streaming.
    let mut again = Pgfanout::start("e2e_standby_again", &config(&http_a), &http_a);
    wait_until("the restarted instance stands by", Duration::from_secs(30), || async {
        readyz(&http_a).await.contains("\"status\":\"standby\"")
    })
    .await;
    db.client.batch_execute("UPDATE items SET name = 'still flowing' WHERE id = 1").await.unwrap();
    wait_for_redis_match(&db, "items", "id", &mut redis, "item:", &second).await;
    assert!(again.is_running(), "the restarted instance exited:\n{}", again.log_text());
    assert_eq!(streams_started(&again), 0, "{}", again.log_text());
}

/// Heartbeats (`pgfanout.heartbeat` logical messages) written since the last
/// call, read from a `test_decoding` slot of the test's own.
async fn heartbeats_since_last_look(db: &TestDatabase, counting_slot: &str) -> usize {
    let rows = db
        .client
        .query("SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL)", &[&counting_slot])
        .await
        .unwrap();
    rows.iter().filter(|row| row.get::<_, String>(0).contains("prefix: pgfanout.heartbeat")).count()
}

/// `pg_recvlogical` on pgfanout's slot: "another process" that takes the slot
/// while pgfanout reconnects. Killed on drop.
struct SlotThief(std::process::Child);

impl SlotThief {
    fn start(db: &TestDatabase) -> SlotThief {
        let bin = std::path::PathBuf::from(required_env("PGFANOUT_TEST_PG_BIN")).join("pg_recvlogical");
        let child = std::process::Command::new(bin)
            .args(["-h", &required_env("PGFANOUT_TEST_PG_SOCKET_DIR"), "-p", &required_env("PGFANOUT_TEST_PG_PORT")])
            .args(["-U", "postgres", "-d", &db.name, "--slot", &db.name, "--start", "-f", "/dev/null"])
            .args(["-o", "proto_version=1", "-o", &format!("publication_names={}", db.name)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot run pg_recvlogical");
        SlotThief(child)
    }

    fn has_exited(&mut self) -> bool {
        self.0.try_wait().unwrap().is_some()
    }
}

impl Drop for SlotThief {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_lost_the_slot_stands_by_without_heartbeats_and_streams_again() {
    let db = create_database("e2e_standby_lost").await;
    db.client.batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text)").await.unwrap();
    let redis_server = OwnRedisServer::start().await;
    let mut redis = redis_connection(&redis_server.url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_server.url, &http, &[("public.items", "item:{id}")]).replacen(
        "[source]\n",
        "[source]\nstandby_poll_secs = 1\nheartbeat_interval_secs = 1\n",
        1,
    );
    let pgfanout = Pgfanout::start("e2e_standby_lost", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(30), || async {
        readyz(&http).await.contains("\"status\":\"ready\"")
    })
    .await;
    let counting_slot = format!("{}_count", db.name);
    db.client
        .execute("SELECT pg_create_logical_replication_slot($1, 'test_decoding')", &[&counting_slot])
        .await
        .unwrap();
    assert!(
        wait_for_heartbeat(&db, &counting_slot).await,
        "the streaming instance wrote no heartbeat:\n{}",
        pgfanout.log_text()
    );

    // Cut pgfanout's replication connection and start pg_recvlogical on the
    // slot at once: it connects before pgfanout's reconnect, which then finds
    // the slot taken. Retried should pgfanout win the race.
    let mut thief = None;
    for _ in 0..10 {
        db.client
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
                &[&db.name],
            )
            .await
            .unwrap();
        let mut candidate = SlotThief::start(&db);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !candidate.has_exited() {
            thief = Some(candidate);
            break;
        }
    }
    let thief = thief.expect("pg_recvlogical never got the slot");
    wait_until("pgfanout stands by", Duration::from_secs(30), || async {
        readyz(&http).await.contains("\"status\":\"standby\"")
    })
    .await;

    // A standby writes no heartbeat: the interval is 1 s, so a heartbeat task
    // left running from the lost stream writes several in this window.
    heartbeats_since_last_look(&db, &counting_slot).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let written = heartbeats_since_last_look(&db, &counting_slot).await;
    assert_eq!(written, 0, "the standby wrote {written} heartbeats:\n{}", pgfanout.log_text());

    drop(thief);
    wait_until("pgfanout streams again", Duration::from_secs(30), || async {
        readyz(&http).await.contains("\"status\":\"ready\"")
    })
    .await;
    db.client.batch_execute("INSERT INTO items VALUES (1, 'after the standby')").await.unwrap();
    wait_for_redis_match(&db, "items", "id", &mut redis, "item:", &pgfanout).await;
    assert!(wait_for_heartbeat(&db, &counting_slot).await, "no heartbeat after streaming again");
    db.client.execute("SELECT pg_drop_replication_slot($1)", &[&counting_slot]).await.unwrap();
}

/// Waits up to 10 s for a heartbeat to appear on the counting slot.
async fn wait_for_heartbeat(db: &TestDatabase, counting_slot: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if heartbeats_since_last_look(db, counting_slot).await > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
