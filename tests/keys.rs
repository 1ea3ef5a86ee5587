//! End to end: sinks key rows by the table's primary key, read from the
//! catalog, not by pgoutput's key flags (which mark every column under
//! REPLICA IDENTITY FULL).

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn a_table_switched_to_full_identity_keeps_its_redis_keys() {
    let db = create_database("e2e_full_keys").await;
    db.client
        .batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2));")
        .await
        .unwrap();
    let server = OwnRedisServer::start().await;
    let redis_url = server.url.clone();
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    // No key template: the default, `orders:{primary key}`.
    let config = format!(
        "{}\n[[sink]]\nname = \"e2e_full_keys\"\nkind = \"redis\"\nurl = \"{redis_url}\"\n\
         [[sink.table]]\nsource = \"public.orders\"\n",
        source_config(&db, "e2e_full_keys", &http)
    );
    db.client.batch_execute("INSERT INTO orders VALUES (1, 'ana', 10)").await.unwrap();
    let pgfanout = Pgfanout::start("e2e_full_keys", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    db.client.batch_execute("INSERT INTO orders VALUES (2, 'bo', 20), (3, 'cy', 30)").await.unwrap();
    // Row 1 predates the slot: only its update brings it in.
    db.client.batch_execute("UPDATE orders SET amount = 11 WHERE id = 1").await.unwrap();
    wait_for_redis_match(&db, "orders", "id", &mut redis, "orders:", &pgfanout).await;

    // FULL (as `check` advises for running aggregates): pgoutput now flags
    // every column as key. The Redis keys must stay `orders:<id>`.
    db.client.batch_execute("ALTER TABLE orders REPLICA IDENTITY FULL").await.unwrap();
    db.client.batch_execute("UPDATE orders SET amount = amount + 1, customer = customer || '!'").await.unwrap();
    db.client.batch_execute("INSERT INTO orders VALUES (4, 'dee', 40)").await.unwrap();
    db.client.batch_execute("DELETE FROM orders WHERE id = 2").await.unwrap();
    wait_for_redis_match(&db, "orders", "id", &mut redis, "orders:", &pgfanout).await;
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("orders:*").query_async(&mut redis).await.unwrap();
    keys.sort();
    assert_eq!(keys, ["orders:1", "orders:3", "orders:4"]);
}
