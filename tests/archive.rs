//! The change archive end to end: `replay --from` into a wiped Redis sink
//! while writes continue, replaying twice, the refusal before the oldest LSN,
//! and `kill -9` while appending (the archive against a second slot's stream).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text)";

fn config(db: &TestDatabase, redis_url: &str, http: &str, archive: &std::path::Path, sinks: &[&str]) -> String {
    let mut config = source_config(db, &db.name, http);
    for sink in sinks {
        config.push_str(&format!(
            "\n[[sink]]\nname = \"{sink}\"\nkind = \"redis\"\nurl = \"{redis_url}\"\n[[sink.table]]\nsource = \"public.items\"\nkey = \"{sink}:{{id}}\"\n"
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

/// Every hash under `prefix` with every field, the version included.
async fn raw_hashes(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(redis).await.unwrap();
    let mut hashes = BTreeMap::new();
    for key in keys {
        let fields: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&key).query_async(redis).await.unwrap();
        hashes.insert(key, fields);
    }
    hashes
}

/// Writes until stopped: inserts, updates and deletes in small transactions.
fn spawn_writer(db_url: String, stop: Arc<AtomicBool>, first_id: i32) -> tokio::task::JoinHandle<i32> {
    tokio::spawn(async move {
        let client = connect(&db_url).await;
        let mut id = first_id;
        while !stop.load(Ordering::Relaxed) {
            client
                .batch_execute(&format!(
                    "BEGIN; INSERT INTO items VALUES ({id}, 0, 'w'), ({}, 1, 'w'); UPDATE items SET v = v + 1 WHERE id = {}; DELETE FROM items WHERE id = {}; COMMIT",
                    id + 1,
                    id - 7,
                    id - 4
                ))
                .await
                .unwrap();
            id += 2;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        id
    })
}

#[tokio::test]
async fn replay_restores_a_wiped_sink_while_writes_continue_and_twice_changes_nothing() {
    let db = create_database("archive_replay").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let redis_url = own_prefixes_db(&["a:", "b:", "pgfanout:checkpoint:a", "pgfanout:checkpoint:b"]).await;
    let mut redis = redis_connection(&redis_url).await;
    let archive = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let pgfanout =
        Pgfanout::start("archive_replay", &config(&db, &redis_url, &http, archive.path(), &["a", "b"]), &http);
    wait_until("pgfanout streams", Duration::from_secs(30), || async { http_get(&http, "/readyz").await.is_some() })
        .await;

    for n in 0..40 {
        db.client
            .batch_execute(&format!(
                "BEGIN; INSERT INTO items SELECT g, g, 'first' FROM generate_series({}, {}) g; UPDATE items SET v = v + 1 WHERE id % 3 = 0; COMMIT",
                n * 25 + 1,
                n * 25 + 25
            ))
            .await
            .unwrap();
    }
    db.client.batch_execute("DELETE FROM items WHERE id % 10 = 0").await.unwrap();
    wait_for_redis_match(&db, "items", "id", &mut redis, "a:", &pgfanout).await;
    // The first archived transaction: the replay covers the whole table's history.
    let from = pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64;
    assert!(from > 0);

    // Wipe sink a's rows; b keeps streaming, writes continue during the replay.
    let keys: Vec<String> = redis::cmd("KEYS").arg("a:*").query_async(&mut redis).await.unwrap();
    redis::cmd("DEL").arg(&keys).query_async::<()>(&mut redis).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(db.url.clone(), stop.clone(), 5001);
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
    let before = raw_hashes(&mut redis, "a:").await;
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
    assert_eq!(raw_hashes(&mut redis, "a:").await, before);

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
    assert!(stderr.contains(&format!("the archive starts at commit LSN {}", lsn_text(oldest))), "{stderr}");
    assert!(stderr.contains("pgfanout rebuild"), "{stderr}");
}

/// `kill -9` while the archive appends under load, repeated
/// (`PGFANOUT_TEST_ARCHIVE_KILLS`, default 3): afterwards the archive holds
/// every transaction exactly once, in order, as a second slot streams them.
#[tokio::test]
async fn kill_9_while_appending_leaves_every_transaction_archived_once_in_order() {
    let kills: usize = std::env::var("PGFANOUT_TEST_ARCHIVE_KILLS").ok().and_then(|n| n.parse().ok()).unwrap_or(3);
    let db = create_database("archive_kill").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    db.client.batch_execute("CREATE PUBLICATION archive_kill_ref FOR TABLE items").await.unwrap();
    db.client.query("SELECT pg_create_logical_replication_slot('archive_kill_ref', 'pgoutput')", &[]).await.unwrap();
    let redis_url = own_prefixes_db(&["k:", "pgfanout:checkpoint:k"]).await;
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
            writer = Some(spawn_writer(db.url.clone(), stop.clone(), 100));
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
    wait_until("the archive reaches the end", Duration::from_secs(60), || async {
        pgfanout.metric("pgfanout_checkpoint_lsn{sink=\"archive\"}").await.is_some_and(|lsn| lsn as u64 >= end)
    })
    .await;
    pgfanout.signal("TERM");
    let mut pgfanout = pgfanout;
    pgfanout.wait_exit(Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(&pgfanout.log).unwrap();
    assert!(log.contains("change archive opened"), "{log}");

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
    let (ok, archived, stderr) = pgfanout_args(&["inspect", "--archive", &archive.path().display().to_string()]).await;
    assert!(ok, "{stderr}");
    let (ok, reference, stderr) = pgfanout_args(&[
        "inspect",
        "--url",
        &db.url,
        "--slot",
        "archive_kill_ref",
        "--publication",
        "archive_kill_ref",
        "--until-lsn",
        &lsn_text(end),
        "--until-idle",
        "2",
    ])
    .await;
    assert!(ok, "{stderr}");
    let (archived, reference) = (dml(&archived), dml(&reference));
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
    assert_eq!(archived.len(), expected.len(), "archived vs streamed lines after {kills} kills");
    if let Some(at) = archived.iter().zip(&expected).position(|(a, e)| a != e) {
        panic!(
            "the archive differs from the slot's stream after {kills} kills at line {at}:\n{}\n{}",
            archived[at], expected[at]
        );
    }
}

async fn pgfanout_args(args: &[&str]) -> (bool, String, String) {
    run_pgfanout(args.iter().map(|arg| (*arg).to_owned()).collect()).await
}
