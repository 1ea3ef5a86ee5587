//! The change archive end to end: `replay --from` into a wiped Redis sink
//! while writes continue, replaying twice (Redis rows, MongoDB documents and
//! running aggregates), the refusals (before the archive's start, a reversed
//! range, past the live position), retention by size and by age, and
//! `kill -9` while appending (the archive against a second slot's stream).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Bson, Document};
use common::items::*;
use common::*;
use futures_util::TryStreamExt;

/// Redis sinks named `sinks` with tombstones (tests/replay.rs covers a
/// store without delete markers).
fn config(db: &TestDatabase, redis_url: &str, http: &str, archive: &std::path::Path, sinks: &[&str]) -> String {
    let mut config = source_config(db, &db.name, http);
    for sink in sinks {
        config.push_str(&format!(
            "\n[[sink]]\nname = \"{sink}\"\nkind = \"redis\"\nurl = \"{redis_url}\"\n[[sink.table]]\nsource = \"public.items\"\nkey = \"{sink}:{{id}}\"\ntombstone_secs = 3600\n"
        ));
    }
    config.push_str(&format!("\n[archive]\npath = \"{}\"\n", archive.display()));
    config
}

fn config_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pgfanout-tests-{}", std::process::id())).join(format!("{name}.toml"))
}

/// Runs the binary with `args`; (success, stdout, stderr).
async fn run_pgfanout(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = Command::new(env!("CARGO_BIN_EXE_pgfanout"))
            .args(["--log-format", "text"])
            .args(&args)
            .env("PGFANOUT_LOG", "info")
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// Redis database 0, shared by this file's tests: each empties only its own keys.
async fn own_prefixes_db(prefixes: &[&str]) -> String {
    let url = format!("{}/0", required_env("PGFANOUT_TEST_REDIS_URL").trim_end_matches('/'));
    let mut redis = redis_connection(&url).await;
    for prefix in prefixes {
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut redis).await.unwrap();
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).query_async::<()>(&mut redis).await.unwrap();
        }
    }
    url
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[tokio::test]
async fn replay_restores_a_wiped_sink_while_writes_continue_and_twice_changes_nothing() {
    let db = create_database("archive_replay").await;
    db.client.batch_execute(ITEMS_SCHEMA).await.unwrap();
    let redis_url = own_prefixes_db(&[
        "a:",
        "b:",
        "pgfanout:checkpoint:a",
        "pgfanout:checkpoint:b",
        "pgfanout:tombstone:a:",
        "pgfanout:tombstone:b:",
    ])
    .await;
    let mut redis = redis_connection(&redis_url).await;
    let archive = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let pgfanout =
        Pgfanout::start("archive_replay", &config(&db, &redis_url, &http, archive.path(), &["a", "b"]), &http);
    wait_until("pgfanout streams", Duration::from_secs(30), || async { http_get(&http, "/readyz").await.is_some() })
        .await;

    write_items_history(&db.client, 40, 25).await;
    wait_for_redis_match(&db, "items", "id", &mut redis, "a:", &pgfanout).await;
    // The first archived transaction: the replay covers the whole table's history.
    let from = pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64;
    assert!(from > 0);

    // Wipe sink a's rows; b keeps streaming, writes continue during the replay.
    let keys: Vec<String> = redis::cmd("KEYS").arg("a:*").query_async(&mut redis).await.unwrap();
    redis::cmd("DEL").arg(&keys).query_async::<()>(&mut redis).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_items_writer(db.url.clone(), stop.clone(), 5001);
    wait_until("writes flow to b", Duration::from_secs(30), || {
        let mut redis = redis.clone();
        async move { redis::cmd("EXISTS").arg("b:5002").query_async::<bool>(&mut redis).await.unwrap() }
    })
    .await;
    let b_before = redis_checkpoint(&mut redis, "b").await;
    let path = config_path("archive_replay").display().to_string();
    let replay = vec![
        "replay".into(),
        "--config".into(),
        path.clone(),
        "--from".into(),
        lsn_text(from),
        "--sink".into(),
        "a".into(),
    ];
    let (ok, stdout, stderr) = run_pgfanout(replay.clone()).await;
    assert!(ok, "replay failed: {stderr}");
    assert!(stdout.contains(r#""sink":"a""#), "{stdout}");
    let b_after = redis_checkpoint(&mut redis, "b").await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(b_after > b_before, "sink b did not advance while the replay ran ({b_before} → {b_after})");
    wait_for_redis_match(&db, "items", "id", &mut redis, "a:", &pgfanout).await;
    wait_for_redis_match(&db, "items", "id", &mut redis, "b:", &pgfanout).await;

    // The same range again: nothing changes, versions included.
    let before = raw_redis_hashes(&mut redis, "a:").await;
    let end = db.current_wal_lsn().await;
    let again = vec![
        "replay".into(),
        "--config".into(),
        path.clone(),
        "--from".into(),
        lsn_text(from),
        "--to".into(),
        lsn_text(end),
        "--sink".into(),
        "a".into(),
    ];
    let (ok, _, stderr) = run_pgfanout(again).await;
    assert!(ok, "second replay failed: {stderr}");
    assert_eq!(raw_redis_hashes(&mut redis, "a:").await, before);

    // Dry run: counts per table and op, nothing applied.
    let dry = vec![
        "replay".into(),
        "--config".into(),
        path.clone(),
        "--from".into(),
        lsn_text(from),
        "--to".into(),
        lsn_text(end),
        "--dry-run".into(),
    ];
    let (ok, stdout, stderr) = run_pgfanout(dry).await;
    assert!(ok, "dry run failed: {stderr}");
    assert!(
        stdout.contains(r#"{"changes":1000,"op":"insert","table":"public.items"}"#)
            || stdout.contains(r#""op":"insert""#),
        "{stdout}"
    );
    assert!(stdout.contains(r#""op":"delete""#) && stdout.contains(r#""op":"update""#), "{stdout}");

    // Before the oldest transaction: refused, naming it.
    let oldest = pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64;
    let too_old =
        vec!["replay".into(), "--config".into(), path, "--from".into(), "0/1".into(), "--sink".into(), "a".into()];
    let (ok, _, stderr) = run_pgfanout(too_old).await;
    assert!(!ok);
    assert!(stderr.contains(&format!("the archive starts at LSN {}", lsn_text(oldest))), "{stderr}");
    assert!(stderr.contains("pgfanout rebuild"), "{stderr}");
}

/// `kill -9` while the archive appends under load, repeated
/// (`PGFANOUT_TEST_ARCHIVE_KILLS`, default 3): afterwards the archive holds
/// every transaction exactly once, in order, as a second slot streams them.
#[tokio::test]
async fn kill_9_while_appending_leaves_every_transaction_archived_once_in_order() {
    let kills: usize = std::env::var("PGFANOUT_TEST_ARCHIVE_KILLS").ok().and_then(|n| n.parse().ok()).unwrap_or(3);
    let db = create_database("archive_kill").await;
    db.client.batch_execute(ITEMS_SCHEMA).await.unwrap();
    db.client.batch_execute("CREATE PUBLICATION archive_kill_ref FOR TABLE items").await.unwrap();
    db.client.query("SELECT pg_create_logical_replication_slot('archive_kill_ref', 'pgoutput')", &[]).await.unwrap();
    let redis_url = own_prefixes_db(&["k:", "pgfanout:checkpoint:k", "pgfanout:tombstone:k:"]).await;
    let archive = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let config = config(&db, &redis_url, &http, archive.path(), &["k"]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = None;
    for round in 0..kills {
        let mut pgfanout = Pgfanout::start("archive_kill", &config, &http);
        if writer.is_none() {
            // Writes start once pgfanout's slot exists, so both slots see every one.
            wait_until("pgfanout streams", Duration::from_secs(30), || async {
                http_get(&http, "/readyz").await.is_some()
            })
            .await;
            writer = Some(spawn_items_writer(db.url.clone(), stop.clone(), 100));
        }
        let target = (round as f64 + 1.0) * 2000.0;
        wait_until("the archive grows", Duration::from_secs(60), || async {
            pgfanout.metric("pgfanout_archive_bytes").await.is_some_and(|bytes| bytes > target)
        })
        .await;
        pgfanout.signal("KILL");
        pgfanout.wait_exit(Duration::from_secs(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.unwrap().await.unwrap();
    let end = db.current_wal_lsn().await;
    let pgfanout = Pgfanout::start("archive_kill", &config, &http);
    // Confirmed past `end` only once the archive holds everything up to it
    // (the archive's own checkpoint stops at the last routed commit).
    wait_until("the archive reaches the end", Duration::from_secs(60), || async {
        db.confirmed_flush_lsn(&db.name).await >= end
    })
    .await;
    pgfanout.signal("TERM");
    let mut pgfanout = pgfanout;
    pgfanout.wait_exit(Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(&pgfanout.log).unwrap();
    assert!(log.contains("change archive opened"), "{log}");

    assert_archive_matches_slot(&db, archive.path(), "archive_kill_ref", end, &format!("{kills} kills")).await;
}

/// The archive in `archive` holds exactly the routed transactions that slot
/// (and publication) `reference` streams up to `end`, in order, once each.
async fn assert_archive_matches_slot(
    db: &TestDatabase,
    archive: &std::path::Path,
    reference: &str,
    end: u64,
    what: &str,
) {
    let dml = |stdout: &str| -> Vec<serde_json::Value> {
        stdout
            .lines()
            .filter_map(|line| {
                let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
                let kind = value["type"].as_str().unwrap().to_owned();
                let object = value.as_object_mut().unwrap();
                object.remove("wal_start");
                object.remove("wal_end");
                matches!(kind.as_str(), "insert" | "update" | "delete" | "commit").then_some(value)
            })
            .collect()
    };
    let (ok, archived, stderr) = pgfanout_args(&["inspect", "--archive", &archive.display().to_string()]).await;
    assert!(ok, "{stderr}");
    let (ok, streamed, stderr) = pgfanout_args(&[
        "inspect",
        "--url",
        &db.url,
        "--slot",
        reference,
        "--publication",
        reference,
        "--until-lsn",
        &lsn_text(end),
        "--until-idle",
        "2",
    ])
    .await;
    assert!(ok, "{stderr}");
    let (archived, reference) = (dml(&archived), dml(&streamed));
    // The reference stream holds commits of transactions without routed changes too.
    let mut expected = Vec::new();
    let mut changes_since_commit = 0;
    for line in reference {
        if line["type"] == "commit" {
            if changes_since_commit > 0 {
                expected.push(line);
            }
            changes_since_commit = 0;
        } else {
            changes_since_commit += 1;
            expected.push(line);
        }
    }
    let commits = expected.iter().filter(|line| line["type"] == "commit").count();
    assert!(commits > 10, "too few transactions to say anything: {commits}");
    assert_eq!(archived.len(), expected.len(), "archived vs streamed lines after {what}");
    if let Some(at) = archived.iter().zip(&expected).position(|(a, e)| a != e) {
        panic!(
            "the archive differs from the slot's stream after {what} at line {at}:\n{}\n{}",
            archived[at], expected[at]
        );
    }
}

async fn pgfanout_args(args: &[&str]) -> (bool, String, String) {
    run_pgfanout(args.iter().map(|arg| (*arg).to_owned()).collect()).await
}

fn replay_args(path: &str, extra: &[&str]) -> Vec<String> {
    ["replay", "--config", path].iter().chain(extra).map(|arg| (*arg).to_owned()).collect()
}

/// The segment files of the archive in `dir`, oldest first.
fn segments(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    found.sort();
    found
}

/// Inserts `rows` rows of about 1 kB each, 100 per transaction, from `first` on.
async fn write_kilobyte_rows(db: &TestDatabase, first: i32, rows: i32) {
    for at in (first..first + rows).step_by(100) {
        db.client
            .batch_execute(&format!(
                "INSERT INTO items SELECT g, g, repeat(md5(g::text), 32) FROM generate_series({at}, {}) g",
                at + 99
            ))
            .await
            .unwrap();
    }
}

/// Retention under writes: with `segment_mb = 1` and `retention_mb = 2` the
/// oldest segments go and `pgfanout_archive_oldest_lsn` moves forward; a
/// replay from before it is refused naming it; then `retention_hours` removes
/// every sealed segment last written longer ago than that.
#[tokio::test]
async fn retention_removes_old_segments_moves_the_oldest_lsn_and_replay_before_it_is_refused() {
    let db = create_database("archive_retention").await;
    db.client.batch_execute(ITEMS_SCHEMA).await.unwrap();
    let redis_url = own_prefixes_db(&["r:", "pgfanout:checkpoint:r", "pgfanout:tombstone:r:"]).await;
    let archive = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let mut config = config(&db, &redis_url, &http, archive.path(), &["r"]);
    config.push_str("segment_mb = 1\nretention_mb = 2\nretention_hours = 1\n");
    let pgfanout = Pgfanout::start("archive_retention", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(30), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    let first_start = pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64;
    assert!(first_start > 0, "a new archive starts where the slot does");

    // About 5 MB of rows; retention runs between appends, so writes go on until it has.
    write_kilobyte_rows(&db, 1, 5000).await;
    let mut next = 5001;
    loop {
        let oldest = pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64;
        let bytes = pgfanout.metric("pgfanout_archive_bytes").await.unwrap();
        if oldest > first_start && bytes <= 3.5 * 1024.0 * 1024.0 {
            break;
        }
        assert!(next < 30_000, "retention did not act: oldest {oldest}, {bytes} bytes\n{}", pgfanout.log_text());
        write_kilobyte_rows(&db, next, 100).await;
        next += 100;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Retention may just have left only the segment being written (a sealed
    // one plus it went over 2 MB): write on until a sealed segment sits
    // beside it, then take the start once the archive stands still.
    let start_after_size = loop {
        let held = segments(archive.path());
        let oldest = pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64;
        if held.len() < 2 {
            assert!(next < 40_000, "no sealed segment beside the written one: {held:?}");
            write_kilobyte_rows(&db, next, 100).await;
            next += 100;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let still = pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64;
        if held.len() >= 2 && segments(archive.path()) == held && still == oldest {
            break oldest;
        }
    };
    let held = segments(archive.path());
    assert!(!held.iter().any(|path| path.ends_with("0000000000.seg")), "the first segment went: {held:?}");
    assert!(held.len() >= 2, "{held:?}");

    let path = config_path("archive_retention").display().to_string();
    let before = lsn_text(first_start);
    let (ok, _, stderr) = run_pgfanout(replay_args(&path, &["--from", &before, "--sink", "r"])).await;
    assert!(!ok, "a replay from before retention's cut must be refused");
    assert!(stderr.contains(&format!("the archive starts at LSN {}", lsn_text(start_after_size))), "{stderr}");
    assert!(stderr.contains("pgfanout rebuild"), "{stderr}");
    let (ok, stdout, stderr) =
        run_pgfanout(replay_args(&path, &["--from", &lsn_text(start_after_size), "--dry-run"])).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains(r#""op":"insert""#), "{stdout}");

    // By age: every sealed segment last written two hours ago goes (retention_hours = 1).
    let sealed: Vec<PathBuf> = segments(archive.path()).into_iter().rev().skip(1).collect();
    assert!(!sealed.is_empty());
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    for segment in &sealed {
        std::fs::File::options().write(true).open(segment).unwrap().set_modified(two_hours_ago).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while sealed.iter().any(|segment| segment.exists()) {
        assert!(std::time::Instant::now() < deadline, "old segments stayed: {:?}", segments(archive.path()));
        write_kilobyte_rows(&db, next, 100).await;
        next += 100;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_until("the oldest LSN moves again", Duration::from_secs(20), || async {
        pgfanout.metric("pgfanout_archive_oldest_lsn").await.is_some_and(|lsn| lsn as u64 > start_after_size)
    })
    .await;
}

/// `--from` at the archive's start, before its first transaction, replays
/// everything; a reversed range and a `--from` past the live position are
/// refused with what to do.
#[tokio::test]
async fn replay_accepts_a_start_before_the_first_transaction_and_refuses_reversed_or_future_ranges() {
    let db = create_database("archive_edges").await;
    db.client.batch_execute(ITEMS_SCHEMA).await.unwrap();
    let redis_url = own_prefixes_db(&["e:", "pgfanout:checkpoint:e", "pgfanout:tombstone:e:"]).await;
    let mut redis = redis_connection(&redis_url).await;
    let archive = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let pgfanout = Pgfanout::start("archive_edges", &config(&db, &redis_url, &http, archive.path(), &["e"]), &http);
    wait_until("pgfanout streams", Duration::from_secs(30), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    // Unrouted WAL first, so that the archive's start lies well before its first transaction.
    db.client
        .batch_execute("CREATE TABLE other (id int); INSERT INTO other SELECT generate_series(1, 1000)")
        .await
        .unwrap();
    db.client
        .batch_execute(
            "INSERT INTO items SELECT g, g, 'x' FROM generate_series(1, 300) g; DELETE FROM items WHERE id <= 30",
        )
        .await
        .unwrap();
    let end = db.current_wal_lsn().await;
    wait_for_redis_match(&db, "items", "id", &mut redis, "e:", &pgfanout).await;
    // The archive is a sink of its own, which Redis matching says nothing
    // about; the slot confirms only what every sink, the archive included,
    // has applied.
    wait_until("the archive holds the transactions", Duration::from_secs(30), || async {
        db.confirmed_flush_lsn(&db.name).await >= end
    })
    .await;
    let start = pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64;
    let (ok, inspected, stderr) = pgfanout_args(&["inspect", "--archive", &archive.path().display().to_string()]).await;
    assert!(ok, "{stderr}");
    let first_commit = inspected
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|line| line["type"] == "begin")
        .and_then(|line| line["final_lsn"].as_str().map(|lsn| lsn.parse::<pgfanout_core::Lsn>().unwrap().0))
        .unwrap_or_else(|| panic!("no begin in {inspected}"));
    assert!(start < first_commit, "start {start} lies before the first commit {first_commit}");

    // Between the start and the first transaction: accepted, everything replayed.
    let path = config_path("archive_edges").display().to_string();
    let between = lsn_text(start + (first_commit - start) / 2);
    let (ok, stdout, stderr) = run_pgfanout(replay_args(&path, &["--from", &between, "--dry-run"])).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains(r#"{"table":"public.items","op":"insert","changes":300}"#), "{stdout}");
    assert!(stdout.contains(r#"{"table":"public.items","op":"delete","changes":30}"#), "{stdout}");
    redis::cmd("DEL").arg("e:100").query_async::<()>(&mut redis).await.unwrap();
    let (ok, _, stderr) = run_pgfanout(replay_args(&path, &["--from", &between, "--sink", "e"])).await;
    assert!(ok, "{stderr}");
    assert!(redis::cmd("EXISTS").arg("e:100").query_async::<bool>(&mut redis).await.unwrap(), "e:100 replayed");

    // --to before --from.
    let (ok, _, stderr) =
        run_pgfanout(replay_args(&path, &["--from", &lsn_text(first_commit), "--to", &lsn_text(start)])).await;
    assert!(!ok);
    assert!(
        stderr.contains(&format!("--to {} is before --from {}", lsn_text(start), lsn_text(first_commit))),
        "{stderr}"
    );

    // Past the live position, with and without --dry-run.
    let future = lsn_text(db.current_wal_lsn().await + 64 * 1024 * 1024);
    for extra in [&["--sink", "e"][..], &["--dry-run"][..]] {
        let mut args = vec!["--from", future.as_str()];
        args.extend_from_slice(extra);
        let (ok, _, stderr) = run_pgfanout(replay_args(&path, &args)).await;
        assert!(!ok, "a replay from the future must be refused");
        assert!(stderr.contains(&format!("--from {future} is past the live position")), "{stderr}");
        assert!(stderr.contains("the newest archived transaction committed at"), "{stderr}");
    }
}

/// A client of the stack's MongoDB-wire server.
async fn mongo() -> mongodb::Client {
    mongodb::Client::with_uri_str(required_env("PGFANOUT_TEST_MONGODB_URL")).await.unwrap()
}

/// Every document of `database.collection`, by `_id`.
async fn documents(client: &mongodb::Client, database: &str, collection: &str) -> Vec<Document> {
    let cursor = client.database(database).collection::<Document>(collection).find(doc! {}).await.unwrap();
    let mut all: Vec<Document> = cursor.try_collect().await.unwrap();
    all.sort_by_key(|d| d.get("_id").cloned().unwrap_or(Bson::Null).into_canonical_extjson().to_string());
    all
}

/// (host, count, total rating) per host with reviews, from PostgreSQL.
async fn expected_statistics(db: &TestDatabase) -> Vec<(i32, i64, i64)> {
    let rows = db
        .client
        .query("SELECT host_id, count(*), sum(rating)::bigint FROM reviews GROUP BY host_id ORDER BY host_id", &[])
        .await
        .unwrap();
    rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect()
}

/// The aggregate documents with a non-zero count, as (host, count, total rating).
fn statistics(documents: &[Document]) -> Vec<(i32, i64, i64)> {
    let number = |d: &Document, field: &str| match d.get(field) {
        Some(Bson::Int32(i)) => i64::from(*i),
        Some(Bson::Int64(i)) => *i,
        _ => 0,
    };
    let mut found: Vec<(i32, i64, i64)> = documents
        .iter()
        .filter(|d| number(d, "count") != 0)
        .map(|d| (d.get_i32("_id").unwrap_or(-1), number(d, "count"), number(d, "rating")))
        .collect();
    found.sort();
    found
}

/// Replaying the whole archive twice into a MongoDB sink with running
/// aggregates (`$inc` counts and sums per host) leaves every document and
/// every aggregate as it was, versions included; live changes after the
/// replays still move the aggregates.
#[tokio::test]
async fn replaying_twice_leaves_mongodb_documents_and_running_aggregates_unchanged() {
    let db = create_database("archive_aggregates").await;
    db.client
        .batch_execute(
            "CREATE TABLE reviews (id int PRIMARY KEY, host_id int NOT NULL, rating int NOT NULL, comment text);
             ALTER TABLE reviews REPLICA IDENTITY FULL",
        )
        .await
        .unwrap();
    let client = mongo().await;
    let database = "archive_aggregates";
    client.database(database).drop().await.unwrap();
    let archive = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let config = format!(
        r#"{header}
[[sink]]
name = "stays"
kind = "mongodb"
url = "{url}"
database = "{database}"
[sink.delivery]
lanes = 1
[[sink.table]]
source = "public.reviews"
id_columns = ["id"]
[[sink.table.aggregate]]
collection = "host_statistics"
group_by = "host_id"
sum = ["rating"]

[archive]
path = "{archive}"
"#,
        header = source_config(&db, &db.name, &http),
        url = required_env("PGFANOUT_TEST_MONGODB_URL"),
        archive = archive.path().display()
    );
    let pgfanout = Pgfanout::start("archive_aggregates", &config, &http);
    wait_until("pgfanout streams", Duration::from_secs(30), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    db.client
        .batch_execute(
            "INSERT INTO reviews SELECT i, i % 5, i % 7, 'review ' || i FROM generate_series(1, 300) i;
             UPDATE reviews SET rating = rating + 1 WHERE id % 3 = 0;
             UPDATE reviews SET host_id = 9 WHERE id % 10 = 0;
             DELETE FROM reviews WHERE id % 11 = 0;
             BEGIN; UPDATE reviews SET rating = 100 WHERE id = 1; UPDATE reviews SET rating = 2 WHERE id = 1;
               DELETE FROM reviews WHERE id = 2; INSERT INTO reviews VALUES (2, 4, 6, NULL); COMMIT;",
        )
        .await
        .unwrap();
    let expected = expected_statistics(&db).await;
    wait_until("exact statistics", Duration::from_secs(60), || async {
        statistics(&documents(&client, database, "host_statistics").await) == expected
    })
    .await;
    wait_until("every row", Duration::from_secs(60), || async {
        documents(&client, database, "reviews").await.len() == 300 - 27
    })
    .await;
    let aggregates_before = documents(&client, database, "host_statistics").await;
    let rows_before = documents(&client, database, "reviews").await;

    let path = config_path("archive_aggregates").display().to_string();
    let from = lsn_text(pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64);
    let end = lsn_text(db.current_wal_lsn().await);
    for range in [vec!["--from", from.as_str()], vec!["--from", from.as_str(), "--to", end.as_str()]] {
        let mut args = range.clone();
        args.extend(["--sink", "stays"]);
        let (ok, stdout, stderr) = run_pgfanout(replay_args(&path, &args)).await;
        assert!(ok, "replay {range:?} failed: {stderr}");
        assert!(stdout.contains(r#""changes":"#) && !stdout.contains(r#""changes":0,"#), "{stdout}");
        let aggregates = documents(&client, database, "host_statistics").await;
        assert_eq!(statistics(&aggregates), expected, "replay {range:?} counted twice");
        assert_eq!(aggregates, aggregates_before, "aggregate documents unchanged, versions included");
        assert_eq!(documents(&client, database, "reviews").await, rows_before, "row documents unchanged");
    }

    // The live stream still moves the aggregates past the replayed versions.
    db.client.batch_execute("UPDATE reviews SET rating = rating + 10 WHERE host_id = 1").await.unwrap();
    let expected = expected_statistics(&db).await;
    wait_until("statistics after the replays", Duration::from_secs(60), || async {
        statistics(&documents(&client, database, "host_statistics").await) == expected
    })
    .await;
}

/// A crash in the middle of writing a frame (the archive aborts after half
/// of a frame reached the file, `PGFANOUT_TEST_ARCHIVE_CRASH_AT_APPEND`):
/// the restart cuts the torn frame, PostgreSQL sends its transaction again,
/// and the archive matches a second slot's stream exactly.
#[tokio::test]
async fn a_crash_mid_frame_is_cut_at_restart_and_the_archive_matches_the_slot() {
    let db = create_database("archive_torn").await;
    db.client.batch_execute(ITEMS_SCHEMA).await.unwrap();
    db.client.batch_execute("CREATE PUBLICATION archive_torn_ref FOR TABLE items").await.unwrap();
    db.client.query("SELECT pg_create_logical_replication_slot('archive_torn_ref', 'pgoutput')", &[]).await.unwrap();
    let redis_url = own_prefixes_db(&["t:", "pgfanout:checkpoint:t", "pgfanout:tombstone:t:"]).await;
    let archive = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let config = config(&db, &redis_url, &http, archive.path(), &["t"]);
    let mut crashing = Pgfanout::start_with_env(
        "archive_torn",
        &config,
        &http,
        &[(pgfanout_archive::writer::CRASH_MID_FRAME_ENV, "30")],
    );
    wait_until("pgfanout streams", Duration::from_secs(30), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_items_writer(db.url.clone(), stop.clone(), 100);
    let exit = crashing.wait_exit(Duration::from_secs(60)).await;
    assert_ne!(exit, Some(0), "the archive was to abort mid-frame\n{}", crashing.log_text());
    assert!(
        crashing.log_text().contains("aborting mid-frame"),
        "no abort mid-frame: {} works in debug builds only (cargo test without --release)\n{}",
        pgfanout_archive::writer::CRASH_MID_FRAME_ENV,
        crashing.log_text()
    );

    let pgfanout = Pgfanout::start("archive_torn", &config, &http);
    wait_until("pgfanout streams again", Duration::from_secs(30), || async {
        http_get(&http, "/readyz").await.is_some()
    })
    .await;
    assert!(pgfanout.log_text().contains("cutting a torn or unfinished tail"), "{}", pgfanout.log_text());
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let end = db.current_wal_lsn().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // Confirmed past `end` only once the archive holds everything up to it
    // (the archive's own checkpoint stops at the last routed commit).
    while db.confirmed_flush_lsn(&db.name).await < end {
        assert!(std::time::Instant::now() < deadline, "the archive never reached {end}:\n{}", pgfanout.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut pgfanout = pgfanout;
    pgfanout.signal("TERM");
    pgfanout.wait_exit(Duration::from_secs(20)).await;
    assert_archive_matches_slot(&db, archive.path(), "archive_torn_ref", end, "a crash mid-frame").await;
}
