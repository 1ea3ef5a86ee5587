//! End to end: PostgreSQL → pgfanout → Redis, against the real servers of
//! the local stack.

mod common;

use std::time::Duration;

use common::*;

const SCHEMA: &str = r#"
CREATE TABLE reservations (
    id bigint PRIMARY KEY,
    guest text NOT NULL,
    total_price numeric(12,2),
    status text,
    check_in date,
    notes text
);
-- Keep long notes out of line (TOAST) and uncompressed, so an update that
-- does not touch them sends them as "unchanged".
ALTER TABLE reservations ALTER COLUMN notes SET STORAGE EXTERNAL;
"#;

/// A text long enough to be stored out of line.
fn long_notes(seed: u32) -> String {
    (0..400).map(|i| format!("{seed}-{i};")).collect()
}

async fn assert_redis_matches(db: &TestDatabase, redis: &mut redis::aio::MultiplexedConnection) {
    let expected = table_as_text(db, "reservations", "id").await;
    let actual = redis_hashes(redis, "reservation:").await;
    assert_eq!(actual.len(), expected.len(), "row count differs");
    assert_eq!(actual, expected);
}

async fn wait_for_match(db: &TestDatabase, redis: &mut redis::aio::MultiplexedConnection, pgfanout: &Pgfanout) {
    wait_for_redis_match(db, "reservations", "id", redis, "reservation:", pgfanout).await;
}

#[tokio::test]
async fn inserts_updates_and_deletes_reach_redis() {
    let db = create_database("e2e_basic").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let redis_url = fresh_redis_db(1).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.reservations", "reservation:{id}")]);
    let pgfanout = Pgfanout::start("e2e_basic", &config, &http);
    // Ready = streaming, so the slot's consistent point is behind us. (A slot
    // is already "active" while it is being created, waiting for running
    // transactions; rows written then belong to the initial snapshot.)
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;

    let notes = long_notes(1);
    db.client
        .execute(
            "INSERT INTO reservations VALUES (1, 'ana', 120.50, 'pending', '2026-12-01', $1), (2, 'bo', NULL, NULL, NULL, NULL), (3, 'cy', 9.99, 'pending', '2027-01-02', 'short')",
            &[&notes],
        )
        .await
        .unwrap();
    // Touches neither notes (TOASTed, sent as unchanged) nor the key.
    db.client
        .execute("UPDATE reservations SET status = 'confirmed', total_price = 130 WHERE id = 1", &[])
        .await
        .unwrap();
    // A column becomes NULL: its field must disappear.
    db.client.execute("UPDATE reservations SET status = NULL WHERE id = 3", &[]).await.unwrap();
    // The key changes: the hash moves, keeping the TOASTed notes.
    db.client.execute("UPDATE reservations SET id = 10, guest = 'ana b' WHERE id = 1", &[]).await.unwrap();
    db.client.execute("DELETE FROM reservations WHERE id = 2", &[]).await.unwrap();
    // Several changes to one row in one transaction end in its last state.
    db.client
        .batch_execute("BEGIN; INSERT INTO reservations VALUES (4, 'dee', 1, 'pending', NULL, NULL); UPDATE reservations SET status = 'cancelled' WHERE id = 4; COMMIT")
        .await
        .unwrap();

    wait_for_match(&db, &mut redis, &pgfanout).await;
    assert_redis_matches(&db, &mut redis).await;
    let moved: Option<String> =
        redis::cmd("HGET").arg("reservation:10").arg("notes").query_async(&mut redis).await.unwrap();
    assert_eq!(moved.as_deref(), Some(notes.as_str()), "TOASTed notes must survive updates that do not touch them");

    // The checkpoint is stored with the data, and the slot catches up to it.
    let checkpoint: String =
        redis::cmd("GET").arg("pgfanout:checkpoint:e2e_basic").query_async(&mut redis).await.unwrap();
    let checkpoint: pgoutput::Lsn = checkpoint.parse().unwrap();
    wait_until("confirmed_flush_lsn reaches the redis checkpoint", Duration::from_secs(10), || async {
        db.confirmed_flush_lsn("e2e_basic").await >= checkpoint.0
    })
    .await;

    // Metrics describe what happened.
    let applied = pgfanout
        .metric(r#"pgfanout_sink_applied_total{op="update",sink="e2e_basic",table="public.reservations"}"#)
        .await;
    assert_eq!(
        applied,
        Some(4.0),
        "four updates applied; metrics were:\n{}",
        pgfanout.metrics().await.unwrap_or_default()
    );
    assert!(pgfanout.metric("pgfanout_transactions_total").await.unwrap() >= 6.0);
    assert!(http_get(&http, "/readyz").await.is_some(), "ready while streaming");
}

#[tokio::test]
async fn restarts_mid_stream_lose_and_duplicate_nothing() {
    let db = create_database("e2e_restart").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let redis_url = fresh_redis_db(2).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    // Every change also appends an event: effects are counted, not only the
    // final state compared.
    let config = redis_config(&db, &redis_url, &http, &[("public.reservations", "reservation:{id}")])
        + "stream = \"events:reservations\"\nstream_max_len = 100000\n[sink.delivery]\nlanes = 1\n";
    let mut pgfanout = Pgfanout::start("e2e_restart", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;

    // A workload of inserts, updates and deletes in many small transactions,
    // running while pgfanout is killed, stopped and restarted.
    let writer_url = db.url.clone();
    let workload = tokio::spawn(async move {
        let client = connect(&writer_url).await;
        for i in 0..600i64 {
            let sql = match i % 4 {
                0 | 1 => format!("INSERT INTO reservations VALUES ({i}, 'g{i}', {i}.25, 'pending', NULL, NULL)"),
                2 => format!(
                    "UPDATE reservations SET status = 'confirmed', total_price = total_price + 1 WHERE id = {}",
                    i - 2
                ),
                _ => format!("DELETE FROM reservations WHERE id = {}", i - 2),
            };
            client.batch_execute(&sql).await.unwrap();
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    tokio::time::sleep(Duration::from_millis(400)).await;
    pgfanout.signal("KILL");
    pgfanout.wait_exit(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut pgfanout = Pgfanout::start("e2e_restart", &config, &http);
    tokio::time::sleep(Duration::from_millis(600)).await;
    pgfanout.signal("TERM");
    assert_eq!(pgfanout.wait_exit(Duration::from_secs(15)).await, Some(0), "SIGTERM exits cleanly");
    let pgfanout = Pgfanout::start("e2e_restart", &config, &http);

    workload.await.unwrap();
    wait_for_match(&db, &mut redis, &pgfanout).await;
    assert_redis_matches(&db, &mut redis).await;
    // 600 statements, each changing one row: exactly 600 events, once each,
    // in commit order, though pgfanout was killed mid-stream.
    let end = db.current_wal_lsn().await;
    wait_until("the slot confirms everything", Duration::from_secs(20), || async {
        db.confirmed_flush_lsn("e2e_restart").await >= end
    })
    .await;
    let events: Vec<(String, std::collections::HashMap<String, String>)> =
        redis::cmd("XRANGE").arg("events:reservations").arg("-").arg("+").query_async(&mut redis).await.unwrap();
    let versions: Vec<(u64, u32)> = events
        .iter()
        .map(|(_, fields)| {
            (fields["commit_lsn"].parse::<pgoutput::Lsn>().unwrap().0, fields["ordinal"].parse::<u32>().unwrap())
        })
        .collect();
    let distinct: std::collections::HashSet<&(u64, u32)> = versions.iter().collect();
    assert_eq!(distinct.len(), versions.len(), "an event was added twice");
    assert!(versions.windows(2).all(|pair| pair[0] < pair[1]), "events in commit order");
    assert_eq!(events.len(), 600, "one event per change made in PostgreSQL\n{}", pgfanout.log_text());
}

#[tokio::test]
async fn confirmed_flush_never_passes_what_redis_holds() {
    // A Redis server of its own, so pausing it does not pause other tests.
    let own_redis = OwnRedisServer::start().await;
    let redis_url = own_redis.url.clone();
    let mut redis = redis_connection(&redis_url).await;

    let db = create_database("e2e_pause").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.reservations", "reservation:{id}")]);
    let mut pgfanout = Pgfanout::start("e2e_pause", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;

    db.client.execute("INSERT INTO reservations VALUES (1, 'before', 1, 'pending', NULL, NULL)", &[]).await.unwrap();
    wait_for_match(&db, &mut redis, &pgfanout).await;
    // Let the slot catch up with what Redis holds before pausing it.
    let checkpoint: String =
        redis::cmd("GET").arg("pgfanout:checkpoint:e2e_pause").query_async(&mut redis).await.unwrap();
    let checkpoint: pgoutput::Lsn = checkpoint.parse().unwrap();
    wait_until("confirmed_flush_lsn reaches the redis checkpoint", Duration::from_secs(10), || async {
        db.confirmed_flush_lsn("e2e_pause").await >= checkpoint.0
    })
    .await;
    let transactions_before = pgfanout.metric("pgfanout_transactions_total").await.unwrap();

    // Writes block on the paused server; reads (our checks) still work.
    redis::cmd("CLIENT").arg("PAUSE").arg(60_000).arg("WRITE").query_async::<()>(&mut redis).await.unwrap();
    db.client
        .execute("INSERT INTO reservations VALUES (2, 'during pause', 2, 'pending', NULL, NULL)", &[])
        .await
        .unwrap();
    let after_paused_commit = db.current_wal_lsn().await;
    wait_until("pgfanout received the transaction", Duration::from_secs(10), || async {
        pgfanout.metric("pgfanout_transactions_total").await.unwrap_or(0.0) > transactions_before
    })
    .await;
    // Keepalives read before the transaction arrived may still be on their
    // way to the server (status updates are coalesced); let them land. From
    // then on the stuck transaction pins the position.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let confirmed_while_paused = db.confirmed_flush_lsn("e2e_pause").await;
    // Many status-update intervals (200 ms) pass; nothing more may be confirmed.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let confirmed = db.confirmed_flush_lsn("e2e_pause").await;
        assert_eq!(
            confirmed,
            confirmed_while_paused,
            "confirmed_flush_lsn moved while the only sink was paused; metrics:\n{}\nlog:\n{}",
            pgfanout.metrics().await.unwrap_or_default(),
            pgfanout.log_text()
        );
        assert!(
            confirmed < after_paused_commit,
            "confirmed {confirmed:#x} passed the paused commit {after_paused_commit:#x}; log:\n{}",
            pgfanout.log_text()
        );
    }

    // Crash while the batch is stuck; make sure the stuck batch dies with it.
    pgfanout.signal("KILL");
    pgfanout.wait_exit(Duration::from_secs(5)).await;
    let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut redis).await.unwrap();
    for line in clients.lines().filter(|l| l.contains("name=pgfanout:")) {
        if let Some(id) = line.split_whitespace().find_map(|f| f.strip_prefix("id=")) {
            let _: redis::RedisResult<i64> =
                redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query_async(&mut redis).await;
        }
    }
    redis::cmd("CLIENT").arg("UNPAUSE").query_async::<()>(&mut redis).await.unwrap();
    let lost: bool = redis::cmd("EXISTS").arg("reservation:2").query_async(&mut redis).await.unwrap();
    assert!(!lost, "the paused batch must not have been applied (test setup)");

    // After a restart the unconfirmed transaction is delivered again: proof
    // that the slot never confirmed it.
    let pgfanout = Pgfanout::start("e2e_pause", &config, &http);
    wait_for_match(&db, &mut redis, &pgfanout).await;
    assert_redis_matches(&db, &mut redis).await;
    drop(pgfanout);
    drop(own_redis);
}

#[tokio::test]
async fn rows_expire_and_every_change_lands_in_the_event_stream() {
    let db = create_database("e2e_redis_events").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let redis_url = fresh_redis_db(13).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.reservations", "reservation:{id}")])
        + "ttl_secs = 600\nstream = \"events:reservations\"\nstream_max_len = 1000\n"
        // One lane: events in commit order across keys (with more, per key).
        + "[sink.delivery]\nlanes = 1\n";
    let pgfanout = Pgfanout::start("e2e_redis_events", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    db.client
        .batch_execute(
            "INSERT INTO reservations VALUES (1, 'ana', 10, 'pending', NULL, NULL);
             UPDATE reservations SET status = 'paid' WHERE id = 1;
             INSERT INTO reservations VALUES (2, 'bo', 20, 'pending', NULL, NULL);
             DELETE FROM reservations WHERE id = 2;",
        )
        .await
        .unwrap();
    wait_for_match(&db, &mut redis, &pgfanout).await;
    let ttl: i64 = redis::cmd("TTL").arg("reservation:1").query_async(&mut redis).await.unwrap();
    assert!((1..=600).contains(&ttl), "the row expires: TTL {ttl}");

    wait_until("four events", Duration::from_secs(10), || async {
        redis::cmd("XLEN").arg("events:reservations").query_async::<i64>(&mut redis.clone()).await.unwrap() == 4
    })
    .await;
    let entries: Vec<(String, std::collections::HashMap<String, String>)> =
        redis::cmd("XRANGE").arg("events:reservations").arg("-").arg("+").query_async(&mut redis).await.unwrap();
    let ops: Vec<(&str, &str)> =
        entries.iter().map(|(_, fields)| (fields["op"].as_str(), fields["key"].as_str())).collect();
    assert_eq!(
        ops,
        [
            ("insert", "reservation:1"),
            ("update", "reservation:1"),
            ("insert", "reservation:2"),
            ("delete", "reservation:2")
        ]
    );
    let update: serde_json::Value = serde_json::from_str(&entries[1].1["new"]).unwrap();
    assert_eq!(update["status"], "paid");
    assert_eq!(update["total_price"], "10.00");
    // Commit LSNs grow along the stream: consumers can order and deduplicate.
    let lsns: Vec<pgoutput::Lsn> = entries.iter().map(|(_, f)| f["commit_lsn"].parse().unwrap()).collect();
    assert!(lsns.windows(2).all(|pair| pair[0] <= pair[1]), "{lsns:?}");
}

#[tokio::test]
async fn changes_invalidate_dependent_cache_keys_and_tracked_sets() {
    let db = create_database("e2e_redis_invalidate").await;
    db.client.batch_execute("CREATE TABLE properties (id bigint PRIMARY KEY, city_id int, title text);").await.unwrap();
    let redis_url = fresh_redis_db(14).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.properties", "property:{id}")])
        + "invalidate = [\"city:{city_id}:summary\"]\ninvalidate_sets = [\"search:index:city:{city_id}\"]\n";
    let _pgfanout = Pgfanout::start("e2e_redis_invalidate", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;

    // An application cached two search pages for city 1 (tracked in a set),
    // a summary per city, and a page for city 2.
    redis::pipe()
        .cmd("SET")
        .arg("search:city:1:page:1")
        .arg("cached")
        .cmd("SET")
        .arg("search:city:1:page:2")
        .arg("cached")
        .cmd("SADD")
        .arg("search:index:city:1")
        .arg("search:city:1:page:1")
        .arg("search:city:1:page:2")
        .cmd("SET")
        .arg("city:1:summary")
        .arg("cached")
        .cmd("SET")
        .arg("city:3:summary")
        .arg("cached")
        .cmd("SET")
        .arg("search:city:2:page:1")
        .arg("cached")
        .cmd("SADD")
        .arg("search:index:city:2")
        .arg("search:city:2:page:1")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    // A property moves from city 1 to city 3.
    db.client
        .batch_execute(
            "INSERT INTO properties VALUES (10, 1, 'loft'); UPDATE properties SET city_id = 3 WHERE id = 10;",
        )
        .await
        .unwrap();
    wait_until("the property is in Redis", Duration::from_secs(20), || async {
        redis::cmd("HGET")
            .arg("property:10")
            .arg("city_id")
            .query_async::<Option<String>>(&mut redis.clone())
            .await
            .unwrap()
            == Some("3".into())
    })
    .await;
    let exists = |key: &'static str| {
        let mut redis = redis.clone();
        async move { redis::cmd("EXISTS").arg(key).query_async::<bool>(&mut redis).await.unwrap() }
    };
    for gone in
        ["search:city:1:page:1", "search:city:1:page:2", "search:index:city:1", "city:1:summary", "city:3:summary"]
    {
        assert!(!exists(gone).await, "{gone} must be invalidated");
    }
    for kept in ["search:city:2:page:1", "search:index:city:2"] {
        assert!(exists(kept).await, "{kept} is unrelated and must stay");
    }
}

/// Every key of the database but the checkpoint, with its value as text
/// (hash fields sorted), for comparing whole stores.
async fn redis_dump(redis: &mut redis::aio::MultiplexedConnection) -> std::collections::BTreeMap<String, String> {
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(redis).await.unwrap();
    let mut dump = std::collections::BTreeMap::new();
    for key in keys.into_iter().filter(|key| !key.starts_with("pgfanout:checkpoint:")) {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(redis).await.unwrap();
        let value = match kind.as_str() {
            "hash" => {
                let fields: std::collections::BTreeMap<String, String> =
                    redis::cmd("HGETALL").arg(&key).query_async(redis).await.unwrap();
                format!("{fields:?}")
            }
            "set" => {
                let mut members: Vec<String> = redis::cmd("SMEMBERS").arg(&key).query_async(redis).await.unwrap();
                members.sort();
                format!("{members:?}")
            }
            "string" => redis::cmd("GET").arg(&key).query_async(redis).await.unwrap(),
            other => panic!("unexpected {other} at {key}"),
        };
        dump.insert(key, value);
    }
    dump
}

/// Rows stored as JSON strings under `prefix*`, without the version
/// property, in the shape of [`table_as_text`].
async fn redis_json_rows(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> {
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(redis).await.unwrap();
    let mut rows = std::collections::BTreeMap::new();
    for key in keys {
        let text: String = redis::cmd("GET").arg(&key).query_async(redis).await.unwrap();
        let document: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
        let fields = document
            .into_iter()
            .filter(|(name, _)| name != REDIS_VERSION_FIELD)
            // table_as_text leaves NULL columns out, as hashes do.
            .filter_map(|(name, value)| value.as_str().map(|text| (name, text.to_owned())))
            .collect();
        rows.insert(key[prefix.len()..].to_owned(), fields);
    }
    rows
}

#[tokio::test]
async fn truncates_json_rows_and_a_replay_from_the_start_leave_redis_exactly_as_it_was() {
    let db = create_database("e2e_replay").await;
    db.client
        .batch_execute(&format!(
            "{SCHEMA}
             CREATE TABLE items (sku text PRIMARY KEY, label text, stock int);
             CREATE PUBLICATION e2e_replay FOR TABLE reservations, items WITH (publish = 'insert, update, delete, truncate');"
        ))
        .await
        .unwrap();
    // A second slot, from before any change: the replay's starting point.
    db.client.batch_execute("SELECT pg_create_logical_replication_slot('e2e_replay_again', 'pgoutput')").await.unwrap();
    let redis_url = fresh_redis_db(8).await;
    let mut redis = redis_connection(&redis_url).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.reservations", "reservation:{id}")]).replace(
        "key = \"reservation:{id}\"\n",
        "key = \"reservation:{id}\"\ntombstone_secs = 3600\n\n[[sink.table]]\nsource = \"public.items\"\n\
         key = \"item:{sku}\"\nformat = \"json\"\ntruncate = \"scan\"\n",
    );
    let mut pgfanout = Pgfanout::start("e2e_replay", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(20), || async { http_get(&http, "/readyz").await.is_some() })
        .await;

    let notes = long_notes(7);
    db.client
        .execute(
            "INSERT INTO reservations SELECT g, 'guest ' || g, g * 1.5, 'pending', NULL, CASE WHEN g = 1 THEN $1 END FROM generate_series(1, 20) g",
            &[&notes],
        )
        .await
        .unwrap();
    db.client
        .batch_execute(
            "INSERT INTO items VALUES ('a', 'Apple \"green\" ✓', 3), ('b', NULL, 0), ('c', 'Cherry', 10);
             UPDATE reservations SET status = 'paid' WHERE id % 3 = 0;
             UPDATE reservations SET id = 100 WHERE id = 1;
             DELETE FROM reservations WHERE id BETWEEN 15 AND 17;
             UPDATE items SET stock = stock + 1;
             BEGIN; TRUNCATE items; INSERT INTO items VALUES ('z', 'after the truncate', 1); COMMIT;
             UPDATE items SET label = NULL WHERE sku = 'z';
             TRUNCATE reservations;
             INSERT INTO reservations VALUES (5, 'eve', 1, 'new', NULL, NULL), (6, 'fay', 2, 'new', NULL, NULL);
             DELETE FROM reservations WHERE id = 6;",
        )
        .await
        .unwrap();
    wait_for_match(&db, &mut redis, &pgfanout).await;
    wait_until("items match", Duration::from_secs(20), || async {
        redis_json_rows(&mut redis_connection(&redis_url).await, "item:").await
            == table_as_text(&db, "items", "sku").await
    })
    .await;
    let items = redis_json_rows(&mut redis, "item:").await;
    assert_eq!(items.keys().collect::<Vec<_>>(), ["z"], "the truncate removed a, b and c");
    let index: Vec<String> = redis::cmd("SMEMBERS")
        .arg("pgfanout:index:e2e_replay:public.reservations")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(index, ["reservation:5"], "the index set follows writes, deletes and the truncate");
    let buried: bool =
        redis::cmd("EXISTS").arg("pgfanout:tombstone:reservation:6").query_async(&mut redis).await.unwrap();
    assert!(buried, "the delete left a tombstone");
    pgfanout.signal("TERM");
    assert_eq!(pgfanout.wait_exit(Duration::from_secs(15)).await, Some(0));
    let before = redis_dump(&mut redis).await;

    // Replay the whole stream from a slot created before it, with the
    // checkpoint gone: every change is applied a second time.
    // The source record goes too: it names the first slot, and pgfanout
    // refuses to resume a sink written from another slot.
    redis::cmd("DEL")
        .arg("pgfanout:checkpoint:e2e_replay")
        .arg("pgfanout:checkpoint:e2e_replay:source")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let replay = config.replace("slot = \"e2e_replay\"", "slot = \"e2e_replay_again\"");
    let end = db.current_wal_lsn().await;
    let pgfanout = Pgfanout::start("e2e_replay_again", &replay, &http);
    wait_until("the replay reaches the end of the stream", Duration::from_secs(30), || async {
        db.confirmed_flush_lsn("e2e_replay_again").await >= end
    })
    .await;
    let after = redis_dump(&mut redis).await;
    assert_eq!(after, before, "a replay leaves every key, version and index exactly as it was");
    assert!(pgfanout.log_text().contains("streaming"), "{}", pgfanout.log_text());
}
