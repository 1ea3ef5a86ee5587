//! End to end: a routed partitioned table replicates under its own name (the
//! publication publishes via the partition root), across a restart; an
//! existing publication that does not is refused with the fix. Changes of
//! a published table that no sink routes are logged once and counted.

mod common;

use std::time::Duration;

use common::*;

const SCHEMA: &str = "CREATE TABLE events (id bigint NOT NULL, region text NOT NULL, note text, \
                        PRIMARY KEY (id, region)) PARTITION BY LIST (region); \
                      CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu'); \
                      CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');";

async fn wait_for_readiness(http: &str) {
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(http, "/readyz").await.is_some() })
        .await;
}

#[tokio::test]
async fn a_partitioned_table_arrives_under_its_root_name_across_a_restart() {
    let db = create_database("e2e_partitions").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let redis_url = fresh_redis_db(7).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.events", "event:{id}:{region}")]);
    let mut pgfanout = Pgfanout::start("e2e_partitions", &config, &http);
    wait_for_readiness(&http).await;
    db.client
        .batch_execute(
            "INSERT INTO events VALUES (1, 'eu', 'a'), (2, 'us', 'b'); UPDATE events SET note = 'c' WHERE id = 2",
        )
        .await
        .unwrap();
    let expected = |rows: &[(&str, &str, &str)]| {
        rows.iter()
            .map(|(id, region, note)| {
                let fields = [("id", *id), ("region", *region), ("note", *note)]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect::<std::collections::BTreeMap<_, _>>();
                (format!("{id}:{region}"), fields)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let first = expected(&[("1", "eu", "a"), ("2", "us", "c")]);
    wait_until("both partitions' rows arrive under public.events", Duration::from_secs(20), || {
        let url = redis_url.clone();
        let first = first.clone();
        async move { redis_hashes(&mut redis_connection(&url).await, "event:").await == first }
    })
    .await;
    let published: i64 = db
        .client
        .query_one("SELECT count(*) FROM pg_publication WHERE pubname = 'e2e_partitions' AND pubviaroot", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(published, 1, "the publication publishes via the partition root");
    pgfanout.signal("TERM");
    assert_eq!(pgfanout.wait_exit(Duration::from_secs(20)).await, Some(0), "{}", pgfanout.log_text());

    // A restart finds the publication complete and streams on.
    let pgfanout = Pgfanout::start("e2e_partitions", &config, &http);
    wait_for_readiness(&http).await;
    db.client.batch_execute("DELETE FROM events WHERE id = 1; INSERT INTO events VALUES (3, 'eu', 'd')").await.unwrap();
    let second = expected(&[("2", "us", "c"), ("3", "eu", "d")]);
    wait_until("the changes after the restart arrive", Duration::from_secs(20), || {
        let url = redis_url.clone();
        let second = second.clone();
        async move { redis_hashes(&mut redis_connection(&url).await, "event:").await == second }
    })
    .await;
    assert!(!pgfanout.log_text().contains("added routed tables"), "{}", pgfanout.log_text());
}

#[tokio::test]
async fn a_publication_sending_partitions_under_their_own_names_is_refused_with_the_fix() {
    let db = create_database("e2e_partitions_old").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    db.client.batch_execute("CREATE PUBLICATION e2e_partitions_old FOR TABLE events").await.unwrap();
    let redis_url = fresh_redis_db(8).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.events", "event:{id}:{region}")]);
    let mut pgfanout = Pgfanout::start("e2e_partitions_old", &config, &http);
    assert_ne!(pgfanout.wait_exit(Duration::from_secs(30)).await, Some(0), "{}", pgfanout.log_text());
    let log = pgfanout.log_text();
    assert!(
        log.contains(r#"ALTER PUBLICATION \"e2e_partitions_old\" SET (publish_via_partition_root = true)"#)
            || log.contains(r#"ALTER PUBLICATION "e2e_partitions_old" SET (publish_via_partition_root = true)"#),
        "{log}"
    );
    let slots: i64 = db
        .client
        .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'e2e_partitions_old'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "nothing created");
}

#[tokio::test]
async fn changes_of_a_published_table_no_sink_routes_are_logged_once_and_counted() {
    let db = create_database("e2e_unrouted").await;
    db.client
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY); CREATE TABLE audit (id bigint PRIMARY KEY); \
             CREATE PUBLICATION e2e_unrouted FOR TABLE orders, audit \
             WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)",
        )
        .await
        .unwrap();
    let redis_url = fresh_redis_db(5).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.orders", "order:{id}")]);
    let pgfanout = Pgfanout::start("e2e_unrouted", &config, &http);
    wait_for_readiness(&http).await;
    db.client
        .batch_execute("INSERT INTO audit VALUES (1); INSERT INTO orders VALUES (1); INSERT INTO audit VALUES (2)")
        .await
        .unwrap();
    wait_until("the unrouted changes are counted", Duration::from_secs(20), || async {
        pgfanout.metric(r#"pgfanout_unrouted_changes_total{table="public.audit"}"#).await == Some(2.0)
    })
    .await;
    let warnings = pgfanout.log_text().matches("a table no sink routes").count();
    assert_eq!(warnings, 1, "logged once per table:\n{}", pgfanout.log_text());
}
