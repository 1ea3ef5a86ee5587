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
