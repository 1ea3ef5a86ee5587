//! `pgfanout inspect` end to end: on the golden captures (no server needed) and live against
//! the local stack's PostgreSQL.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The output settings pgfanout's replication connection pins, for `pg_recvlogical` runs
/// whose bytes are compared with pgfanout's.
const PINNED_OPTIONS: &str =
    "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c timezone=UTC -c bytea_output=hex";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/pgoutput/tests/golden")
}

fn pgfanout(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgfanout"))
        .args(["--log-format", "text", "inspect"])
        .args(args)
        .env("PGFANOUT_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run the pgfanout binary")
}

fn success(output: Output) -> String {
    assert!(output.status.success(), "pgfanout inspect failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect()
}

/// `inspect` arguments for each capture, from the pgoutput options it was recorded with
/// (captures.txt, last column).
fn golden_captures() -> Vec<(String, Vec<String>)> {
    let manifest = std::fs::read_to_string(golden_dir().join("captures.txt")).unwrap();
    manifest
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|line| {
            let fields: Vec<&str> = line.split('|').map(str::trim).collect();
            let mut args = Vec::new();
            for option in fields[5].split_whitespace().filter(|w| *w != "-o") {
                match option.split_once('=') {
                    Some(("proto_version", version)) => args.extend(["--proto-version".to_owned(), version.into()]),
                    Some(("streaming", mode)) => args.push(format!("--streaming={mode}")),
                    Some(("binary", "true")) => args.push("--binary".to_owned()),
                    _ => {}
                }
            }
            (fields[0].to_owned(), args)
        })
        .collect()
}

#[test]
fn golden_captures_render_as_recorded() {
    let captures = golden_captures();
    assert!(captures.len() >= 12);
    for (name, args) in captures {
        let capture = golden_dir().join(format!("{name}.bin"));
        let mut all_args = vec!["--capture", capture.to_str().unwrap()];
        all_args.extend(args.iter().map(String::as_str));
        let stdout = success(pgfanout(&all_args));
        let expected = std::fs::read_to_string(golden_dir().join(format!("{name}.jsonl"))).unwrap();
        // Line by line first, so a difference names the message.
        for (index, (actual, expected)) in stdout.lines().zip(expected.lines()).enumerate() {
            assert_eq!(actual, expected, "{name}: message {index} renders differently (re-run record.sh if intended)");
        }
        assert_eq!(stdout, expected, "{name}: same number of lines");
    }
}

#[test]
fn capture_formats_agree() {
    let capture = golden_dir().join("stream_commit.bin");
    let capture = capture.to_str().unwrap();
    let base = ["--capture", capture, "--proto-version", "2", "--streaming"];
    let raw = pgfanout(&[&base[..], &["--format", "raw"]].concat());
    assert!(raw.status.success());
    assert_eq!(raw.stdout, std::fs::read(capture).unwrap(), "raw output is the capture, byte for byte");

    let lines = json_lines(&success(pgfanout(&base)));
    let summary = json_lines(&success(pgfanout(&[&base[..], &["--format", "none"]].concat())));
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0]["messages"], lines.len());
    let payload_bytes = std::fs::metadata(capture).unwrap().len() - lines.len() as u64;
    assert_eq!(summary[0]["payload_bytes"], payload_bytes, "everything but the newlines");

    let first_three = json_lines(&success(pgfanout(&[&base[..], &["--count", "3"]].concat())));
    assert_eq!(first_three, lines[..3]);
}

#[test]
fn capture_errors_are_explained() {
    let missing = pgfanout(&["--capture", "/nonexistent/capture.bin", "--proto-version", "1"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("cannot read capture /nonexistent/capture.bin"), "{stderr}");

    // Read as v4 with parallel streaming, the 9-byte Stream Aborts are taken for 25-byte ones.
    let capture = golden_dir().join("stream_abort.bin");
    let wrong = pgfanout(&["--capture", capture.to_str().unwrap(), "--proto-version", "4", "--streaming=parallel"]);
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("--proto-version 4 --streaming parallel"), "{stderr}");
    assert!(stderr.contains("of the capture"), "names the message index and offset: {stderr}");
    let first_abort = json_lines(&success(pgfanout(&["--capture", capture.to_str().unwrap(), "--proto-version", "2"])))
        .iter()
        .position(|line| line["type"] == "stream_abort")
        .unwrap();
    assert!(stderr.contains(&format!("message {first_abort} at byte")), "the first Stream Abort fails: {stderr}");
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

async fn insert_lsn(db: &TestDatabase) -> String {
    db.client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0)
}

async fn confirmed_flush(db: &TestDatabase, slot: &str) -> Option<String> {
    db.client
        .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn live_slot_is_printed_and_only_confirmed_on_request() {
    let db = create_database("inspect_live").await;
    let slot = db.name.as_str();
    db.client
        .batch_execute(
            "CREATE TABLE items (id integer PRIMARY KEY, label text, seen date);
             CREATE PUBLICATION inspect_live FOR TABLE items;",
        )
        .await
        .unwrap();
    // On its own: a multi-statement batch is one transaction, and a slot cannot be created
    // in a transaction that wrote.
    db.client.batch_execute("SELECT pg_create_logical_replication_slot('inspect_live', 'pgoutput')").await.unwrap();
    // One statement per call: a multi-statement batch would be one transaction.
    for statement in [
        "INSERT INTO items VALUES (1, 'one', '2024-03-01'), (2, NULL, NULL)",
        "UPDATE items SET label = 'uno' WHERE id = 1",
        "SELECT pg_logical_emit_message(false, 'note', 'hello')",
    ] {
        db.client.batch_execute(statement).await.unwrap();
    }
    let end = insert_lsn(&db).await;
    let before = confirmed_flush(&db, slot).await;

    let live = ["--url", &db.url, "--slot", slot, "--publication", "inspect_live", "--until-lsn", &end];
    let lines = json_lines(&success(pgfanout(&[&live[..], &["--messages"]].concat())));
    let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["begin", "relation", "insert", "insert", "commit", "begin", "update", "commit", "message"]);
    assert_eq!(lines[1]["name"], "items");
    assert_eq!(
        lines[2]["new_tuple"],
        serde_json::json!([{"name": "id", "text": "1"}, {"name": "label", "text": "one"}, {"name": "seen", "text": "2024-03-01"}])
    );
    assert_eq!(lines[3]["new_tuple"][1], serde_json::json!({"name": "label", "null": true}));
    assert_eq!(lines[8]["content"], serde_json::json!({"text": "hello"}));
    // Live lines say where each message was; a commit's position is its end LSN.
    assert_eq!(lines[4]["wal_start"], lines[4]["end_lsn"]);
    assert_eq!(lines[1]["wal_start"], "0/0", "Relation messages have no WAL position");
    assert_eq!(confirmed_flush(&db, slot).await, before, "inspect without --confirm does not move the slot");

    // Run again: the same changes, since nothing was confirmed; this time confirm them.
    let again = json_lines(&success(pgfanout(&[&live[..], &["--confirm"]].concat())));
    assert_eq!(again.len(), 8, "the same transactions (no --messages this time)");
    assert_eq!(again[..5], lines[..5]);
    let confirmed = confirmed_flush(&db, slot).await.expect("confirmed");
    let last_commit_end = again[7]["end_lsn"].as_str().unwrap().to_owned();
    assert!(lsn(&confirmed) >= lsn(&last_commit_end), "confirmed {confirmed} covers the last commit {last_commit_end}");

    // Once confirmed, the slot has nothing more for us.
    let idle =
        success(pgfanout(&["--url", &db.url, "--slot", slot, "--publication", "inspect_live", "--until-idle", "1"]));
    assert_eq!(idle, "", "confirmed transactions are not sent again");
}

#[tokio::test]
async fn live_raw_output_matches_pg_recvlogical() {
    let db = create_database("inspect_raw").await;
    db.client
        .batch_execute(
            "CREATE TABLE t (id integer PRIMARY KEY, at timestamptz, v numeric, b bytea);
             CREATE PUBLICATION inspect_raw FOR TABLE t;",
        )
        .await
        .unwrap();
    db.client.batch_execute("SELECT pg_create_logical_replication_slot('inspect_raw', 'pgoutput')").await.unwrap();
    // A copy starts at the same point: both readers get the same stream.
    db.client
        .batch_execute("SELECT pg_copy_logical_replication_slot('inspect_raw', 'inspect_raw_copy')")
        .await
        .unwrap();
    db.client
        .batch_execute(
            "INSERT INTO t SELECT g, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour', g / 3.0, '\\x00ff'
               FROM generate_series(1, 500) g;
             UPDATE t SET v = -v WHERE id % 7 = 0;
             DELETE FROM t WHERE id % 11 = 0;
             TRUNCATE t;",
        )
        .await
        .unwrap();
    let end = insert_lsn(&db).await;

    let recvlogical_file = std::env::temp_dir().join(format!("inspect_raw-{}.bin", std::process::id()));
    let status = Command::new(Path::new(&required_env("PGFANOUT_TEST_PG_BIN")).join("pg_recvlogical"))
        .args(["-d", &db.url, "--slot", "inspect_raw_copy", "--start", "-o", "proto_version=1"])
        .args(["-o", "publication_names=inspect_raw", "-E", &end, "--no-loop", "-f"])
        .arg(&recvlogical_file)
        .env("PGOPTIONS", PINNED_OPTIONS)
        .status()
        .expect("cannot run pg_recvlogical");
    assert!(status.success());
    let expected = std::fs::read(&recvlogical_file).unwrap();
    let _ = std::fs::remove_file(&recvlogical_file);

    let raw = pgfanout(&[
        "--url",
        &db.url,
        "--slot",
        "inspect_raw",
        "--publication",
        "inspect_raw",
        "--until-lsn",
        &end,
        "--format",
        "raw",
    ]);
    assert!(raw.status.success(), "{}", String::from_utf8_lossy(&raw.stderr));
    assert!(expected.len() > 500 * 20, "pg_recvlogical got the workload");
    assert!(raw.stdout == expected, "pgfanout's raw output differs from pg_recvlogical's file");
}

#[tokio::test]
async fn create_slot_then_stream_until_idle() {
    let db = create_database("inspect_create").await;
    db.client
        .batch_execute("CREATE TABLE t (id integer PRIMARY KEY); CREATE PUBLICATION inspect_create FOR TABLE t;")
        .await
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pgfanout"))
        .args(["--log-format", "text", "inspect", "--url", &db.url, "--slot", "inspect_create"])
        .args(["--publication", "inspect_create", "--create-slot", "--until-idle", "5", "--format", "none"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run the pgfanout binary");
    // Streaming, not just creating: changes made while the slot is still being created
    // come before its consistent point and are never decoded.
    wait_until("inspect created its slot and streams from it", Duration::from_secs(20), || async {
        db.client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
                 WHERE s.slot_name = 'inspect_create' AND r.state = 'streaming'",
                &[],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let before_insert = insert_lsn(&db).await;
    db.client.batch_execute("INSERT INTO t SELECT generate_series(1, 10)").await.unwrap();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let summary = json_lines(&success(output));
    // Begin, Relation, 10 inserts, Commit.
    assert_eq!(summary, [serde_json::json!({"messages": 13, "payload_bytes": summary[0]["payload_bytes"]})]);
    let confirmed = confirmed_flush(&db, "inspect_create").await.expect("a created slot has a position");
    assert!(lsn(&confirmed) <= lsn(&before_insert), "the insert was not confirmed ({confirmed})");

    let exists = pgfanout(&[
        "--url",
        &db.url,
        "--slot",
        "inspect_create",
        "--publication",
        "inspect_create",
        "--create-slot",
        "--count",
        "1",
    ]);
    assert!(!exists.status.success());
    let stderr = String::from_utf8_lossy(&exists.stderr);
    assert!(stderr.contains("cannot create slot inspect_create") && stderr.contains("already exists"), "{stderr}");
}
