//! End to end: row filters decide exactly, also on columns whose values an
//! update leaves out (unchanged TOAST), and refuse what they cannot decide.

mod common;

use std::time::Duration;

use common::*;

/// A text long enough to be stored out of line, starting with `start`.
fn large_text(start: &str, seed: u32) -> String {
    let mut text = start.to_owned();
    text.extend((0..600).map(|i| format!("{seed}-{i};")));
    text
}

#[tokio::test]
async fn a_filter_on_a_large_text_column_keeps_rows_whose_other_columns_change() {
    let db = create_database("e2e_toast_filter").await;
    db.client
        .batch_execute(
            "CREATE TABLE documents (id bigint PRIMARY KEY, body text, views int NOT NULL);
             -- Out of line and uncompressed: an update that does not touch body sends it as unchanged.
             ALTER TABLE documents ALTER COLUMN body SET STORAGE EXTERNAL;
             -- The filter reads body, which only the old row carries then.
             ALTER TABLE documents REPLICA IDENTITY FULL;",
        )
        .await
        .unwrap();
    let server = OwnRedisServer::start().await;
    let mut redis = redis_connection(&server.url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &server.url, &http, &[("public.documents", "document:{id}")])
        + "filter = 'body >= \"published\"'\n";
    let pgfanout = Pgfanout::start("e2e_toast_filter", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;

    for (id, start) in [(1, "published: "), (2, "published: "), (3, "draft: ")] {
        db.client
            .execute("INSERT INTO documents VALUES ($1, $2, 0)", &[&(id as i64), &large_text(start, id)])
            .await
            .unwrap();
    }
    // Only views change: body arrives as "unchanged". Rows 1 and 2 stay in
    // the filter (and in Redis), row 3 stays out.
    db.client.batch_execute("UPDATE documents SET views = views + 1").await.unwrap();
    db.client.batch_execute("UPDATE documents SET views = views + 10 WHERE id = 2").await.unwrap();
    // Then row 1 leaves the filter and row 3 enters it, by their body.
    db.client.batch_execute("UPDATE documents SET body = 'draft again' WHERE id = 1").await.unwrap();
    db.client.execute("UPDATE documents SET body = $1 WHERE id = 3", &[&large_text("published: ", 30)]).await.unwrap();
    db.client.batch_execute("UPDATE documents SET views = views + 100").await.unwrap();
    let done = db.current_wal_lsn().await;
    wait_until("pgfanout applied everything", Duration::from_secs(30), || async {
        db.confirmed_flush_lsn("e2e_toast_filter").await >= done
    })
    .await;

    let expected: std::collections::BTreeMap<_, _> = table_as_text(&db, "documents", "id")
        .await
        .into_iter()
        .filter(|(_, row)| row.get("body").is_some_and(|body| body.as_str() >= "published"))
        .collect();
    assert_eq!(expected.keys().collect::<Vec<_>>(), ["2", "3"]);
    let actual = redis_hashes(&mut redis, "document:").await;
    assert_eq!(actual, expected, "log:\n{}", pgfanout.log_text());
}

#[tokio::test]
async fn run_refuses_to_start_on_a_filter_naming_an_unknown_column() {
    let db = create_database("e2e_filter_typo").await;
    db.client.batch_execute("CREATE TABLE documents (id bigint PRIMARY KEY, views int NOT NULL);").await.unwrap();
    let server = OwnRedisServer::start().await;
    let http = format!("127.0.0.1:{}", free_port());
    let config =
        redis_config(&db, &server.url, &http, &[("public.documents", "document:{id}")]) + "filter = 'veiws > 10'\n";
    let mut pgfanout = Pgfanout::start("e2e_filter_typo", &config, &http);
    // Before, every row failed the filter silently: nothing reached Redis.
    let code = pgfanout.wait_exit(Duration::from_secs(30)).await;
    assert_ne!(code, Some(0), "log:\n{}", pgfanout.log_text());
    let log = pgfanout.log_text();
    assert!(log.contains("reads column veiws, which table public.documents does not publish"), "{log}");
    let slots: i64 = db
        .client
        .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'e2e_filter_typo'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "refused before creating anything on the primary");
}
