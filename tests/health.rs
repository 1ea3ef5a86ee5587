//! End to end: the health endpoints tell the truth. `/readyz` names a sink
//! blocked on an error; `/healthz` fails once the pipeline is wedged (work
//! pending, no progress for `http.wedged_after_secs`); both recover.

mod common;

use std::time::Duration;

use common::*;

async fn status_and_body(http: &str, path: &str) -> (String, String) {
    let response = raw_http_get(http, path).await;
    let status = response.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_stopped_store_makes_readyz_name_the_error_and_healthz_report_the_wedge() {
    let db = create_database("e2e_health").await;
    db.client.batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL)").await.unwrap();
    let mut server = OwnRedisServer::start().await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &server.url, &http, &[("public.orders", "order:{id}")])
        .replace(&format!("listen = \"{http}\"\n"), &format!("listen = \"{http}\"\nwedged_after_secs = 2\n"));
    assert!(config.contains("wedged_after_secs = 2"));
    let pgfanout = Pgfanout::start("e2e_health", &config, &http);
    wait_until("ready", Duration::from_secs(20), || async { status_and_body(&http, "/readyz").await.0 == "200" }).await;
    db.client.batch_execute("INSERT INTO orders VALUES (1, 'a')").await.unwrap();
    let mut redis = redis_connection(&server.url).await;
    wait_for_redis_match(&db, "orders", "id", &mut redis, "order:", &pgfanout).await;
    assert_eq!(status_and_body(&http, "/healthz").await.0, "200");

    server.kill();
    db.client.batch_execute("INSERT INTO orders VALUES (2, 'b')").await.unwrap();
    wait_until("readyz names the blocked sink and its error", Duration::from_secs(20), || async {
        let (status, body) = status_and_body(&http, "/readyz").await;
        status == "503" && body.contains("sink e2e_health is blocked: ") && body.contains("cannot reach redis")
    })
    .await;
    wait_until("healthz reports the wedge", Duration::from_secs(20), || async {
        let (status, body) = status_and_body(&http, "/healthz").await;
        status == "503" && body.contains("sink e2e_health is wedged") && body.contains("cannot reach redis")
    })
    .await;

    server.restart().await;
    let mut redis = redis_connection(&server.url).await;
    wait_for_redis_match(&db, "orders", "id", &mut redis, "order:", &pgfanout).await;
    wait_until("both endpoints recover", Duration::from_secs(20), || async {
        status_and_body(&http, "/readyz").await.0 == "200" && status_and_body(&http, "/healthz").await.0 == "200"
    })
    .await;
}
