//! `pgfanout replay` through the running instance into a store that keeps
//! no trace of deletes (Redis without `tombstone_secs`): the sink is paused
//! at a transaction boundary, the archive replayed into it up to what it
//! holds, then it rejoins the live stream, so a row the stream deletes
//! during the replay never comes back; the other sink streams throughout
//! (the paused sink sets aside what reaches its queue, applied from the
//! archive before it rejoins).

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::items::*;
use common::*;

/// Every replay batch waits this long before it is applied (debug builds):
/// the live stream runs far ahead of the replay meanwhile.
const BATCH_DELAY_MS: &str = "1500";

/// Redis sinks `live` (replayed into) and `other`, neither with
/// tombstones, and the archive.
fn config(db: &TestDatabase, redis_url: &str, http: &str, archive: &std::path::Path) -> String {
    let mut config = source_config(db, &db.name, http);
    for sink in ["live", "other"] {
        config.push_str(&format!(
            "\n[[sink]]\nname = \"{sink}\"\nkind = \"redis\"\nurl = \"{redis_url}\"\n[[sink.table]]\nsource = \"public.items\"\nkey = \"rp{sink}:{{id}}\"\n"
        ));
    }
    config.push_str(&format!("\n[archive]\npath = \"{}\"\n", archive.display()));
    config
}

/// Runs the binary with `args` (and the batch delay); (success, stdout, stderr).
async fn run_pgfanout(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = Command::new(env!("CARGO_BIN_EXE_pgfanout"))
            .args(["--log-format", "text"])
            .args(&args)
            .env("PGFANOUT_LOG", "info")
            .env("PGFANOUT_TEST_REPLAY_BATCH_DELAY_MS", BATCH_DELAY_MS)
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

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Deletes every key under `prefix`.
async fn delete_keys(redis: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(redis).await.unwrap();
    if !keys.is_empty() {
        redis::cmd("DEL").arg(&keys).query_async::<()>(redis).await.unwrap();
    }
}

/// The value of `pgfanout_<name>{sink="<sink>"}`, or 0.
async fn sink_metric(pgfanout: &Pgfanout, name: &str, sink: &str) -> f64 {
    pgfanout.metric(&format!("{name}{{sink=\"{sink}\"}}")).await.unwrap_or(0.0)
}

/// Sinks `NAME` and `NAMEother` (keys `rNAME:` and `rNAMEother:`) with
/// queues of 8 transactions each, behind a streaming instance started with
/// `env`: the start of every test of what a paused sink does with a full queue.
struct TinyQueues {
    db: TestDatabase,
    redis: redis::aio::MultiplexedConnection,
    config: String,
    http: String,
    pgfanout: Pgfanout,
    archive: tempfile::TempDir,
}

impl TinyQueues {
    async fn start(name: &str, env: &[(&str, &str)]) -> TinyQueues {
        let db = create_database(&format!("replay_{name}")).await;
        db.client.batch_execute(ITEMS_SCHEMA).await.unwrap();
        let redis_url = format!("{}/0", required_env("PGFANOUT_TEST_REDIS_URL").trim_end_matches('/'));
        let mut redis = redis_connection(&redis_url).await;
        let archive = tempfile::tempdir().unwrap();
        let http = format!("127.0.0.1:{}", free_port());
        let config = config(&db, &redis_url, &http, archive.path())
            .replace("rplive:", &format!("r{name}:"))
            .replace("rpother:", &format!("r{name}other:"))
            .replace("name = \"live\"", &format!("name = \"{name}\""))
            .replace("name = \"other\"", &format!("name = \"{name}other\""))
            .replace("[pipeline]\n", "[pipeline]\nqueue_capacity = 8\n");
        for sink in [name.to_owned(), format!("{name}other")] {
            delete_keys(&mut redis, &format!("r{sink}:")).await;
            delete_keys(&mut redis, &format!("pgfanout:checkpoint:{sink}")).await;
        }
        let pgfanout = Pgfanout::start_with_env(&format!("replay_{name}"), &config, &http, env);
        wait_until("pgfanout streams", Duration::from_secs(30), || async {
            http_get(&http, "/readyz").await.is_some()
        })
        .await;
        TinyQueues { db, redis, config, http, pgfanout, archive }
    }
}

#[tokio::test]
async fn replay_through_the_running_instance_pauses_only_its_sink_and_no_deleted_row_comes_back() {
    let db = create_database("replay_live").await;
    db.client.batch_execute(ITEMS_SCHEMA).await.unwrap();
    let redis_url = format!("{}/0", required_env("PGFANOUT_TEST_REDIS_URL").trim_end_matches('/'));
    let mut redis = redis_connection(&redis_url).await;
    for prefix in ["rplive:", "rpother:", "pgfanout:checkpoint:live", "pgfanout:checkpoint:other"] {
        delete_keys(&mut redis, prefix).await;
    }
    let archive = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    // The instance applies the replay: the batch delay is for it.
    let pgfanout = Pgfanout::start_with_env(
        "replay_live",
        &config(&db, &redis_url, &http, archive.path()),
        &http,
        &[("PGFANOUT_TEST_REPLAY_BATCH_DELAY_MS", BATCH_DELAY_MS)],
    );
    wait_until("pgfanout streams", Duration::from_secs(30), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    write_items_history(&db.client, 20, 50).await;
    wait_for_redis_match(&db, "items", "id", &mut redis, "rplive:", &pgfanout).await;
    let from = pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64;

    // Wipe sink `live`; writes with deletes go on during the replay.
    delete_keys(&mut redis, "rplive:").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_items_writer(db.url.clone(), stop.clone(), 5001);
    wait_until("writes flow", Duration::from_secs(30), || {
        let mut redis = redis.clone();
        async move { redis::cmd("EXISTS").arg("rpother:5002").query_async::<bool>(&mut redis).await.unwrap() }
    })
    .await;
    let path = std::env::temp_dir()
        .join(format!("pgfanout-tests-{}", std::process::id()))
        .join("replay_live.toml")
        .display()
        .to_string();
    let replay_args: Vec<String> =
        ["replay", "--config", &path, "--from", &lsn_text(from), "--sink", "live"].map(str::to_owned).to_vec();
    let replay = tokio::spawn(run_pgfanout(replay_args.clone()));

    // While the replay runs: `live` is paused (its checkpoint stands still,
    // /readyz says why), `other` keeps applying.
    wait_until("the replay pauses sink live", Duration::from_secs(30), || async {
        sink_metric(&pgfanout, "pgfanout_sink_paused", "live").await == 1.0
    })
    .await;
    let live_paused_at = sink_metric(&pgfanout, "pgfanout_checkpoint_lsn", "live").await;
    let other_at_pause = sink_metric(&pgfanout, "pgfanout_checkpoint_lsn", "other").await;
    let readyz = raw_http_get(&http, "/readyz").await;
    assert!(readyz.contains("sink live is paused while the archive is replayed into it"), "{readyz}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut other_advanced = false;
    while sink_metric(&pgfanout, "pgfanout_sink_paused", "live").await == 1.0 {
        let other = sink_metric(&pgfanout, "pgfanout_checkpoint_lsn", "other").await;
        let live = sink_metric(&pgfanout, "pgfanout_checkpoint_lsn", "live").await;
        // Read before the paused flag is checked again: both while paused.
        if sink_metric(&pgfanout, "pgfanout_sink_paused", "live").await == 1.0 {
            other_advanced |= other > other_at_pause;
            assert_eq!(live, live_paused_at, "sink live applied live changes while paused");
        }
        assert!(Instant::now() < deadline, "the replay did not end within 60 s:\n{}", pgfanout.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(other_advanced, "sink other did not advance while sink live was paused");
    let (ok, stdout, stderr) = tokio::time::timeout(Duration::from_secs(60), replay)
        .await
        .expect("the replay did not return while writes went on")
        .unwrap();
    assert!(ok, "replay failed: {stderr}\n{}", pgfanout.log_text());
    assert!(stdout.contains(r#""sink":"live""#) && stdout.contains(r#""paused_at":"#), "{stdout}");
    assert!(!stderr.contains("keep no trace of deletes"), "no warning for an exact replay: {stderr}");
    assert!(sink_metric(&pgfanout, "pgfanout_replay_changes_total", "live").await > 1000.0);

    // The writes go on a little after the replay, then stop: both sinks end
    // exactly equal to PostgreSQL, no deleted row back.
    let resumed_at = sink_metric(&pgfanout, "pgfanout_checkpoint_lsn", "live").await;
    wait_until("sink live streams again", Duration::from_secs(30), || async {
        sink_metric(&pgfanout, "pgfanout_checkpoint_lsn", "live").await > resumed_at
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    wait_for_redis_match(&db, "items", "id", &mut redis, "rplive:", &pgfanout).await;
    wait_for_redis_match(&db, "items", "id", &mut redis, "rpother:", &pgfanout).await;

    // The same replay again: nothing changes, versions included.
    let before = raw_redis_hashes(&mut redis, "rplive:").await;
    let (ok, _, stderr) = run_pgfanout(replay_args).await;
    assert!(ok, "second replay failed: {stderr}");
    assert_eq!(raw_redis_hashes(&mut redis, "rplive:").await, before, "a second replay changed sink live");

    // From before the archive: refused by the instance, naming the oldest LSN.
    let too_old: Vec<String> =
        ["replay", "--config", &path, "--from", "0/1", "--sink", "live"].map(str::to_owned).to_vec();
    let (ok, _, stderr) = run_pgfanout(too_old).await;
    assert!(!ok);
    let oldest = pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64;
    assert!(stderr.contains(&format!("the archive starts at LSN {}", lsn_text(oldest))), "{stderr}");
    assert!(stderr.contains("pgfanout rebuild"), "{stderr}");

    // A table the sink does not route, and a wrong address while pgfanout streams: refused, saying why.
    let unrouted: Vec<String> =
        ["replay", "--config", &path, "--from", &lsn_text(from), "--sink", "live", "--table", "public.nope"]
            .map(str::to_owned)
            .to_vec();
    let (ok, _, stderr) = run_pgfanout(unrouted).await;
    assert!(!ok);
    assert!(stderr.contains("sink live does not route table public.nope; it routes: public.items"), "{stderr}");
    let nobody = format!("127.0.0.1:{}", free_port());
    let elsewhere: Vec<String> =
        ["replay", "--config", &path, "--from", &lsn_text(from), "--sink", "live", "--http", &nobody]
            .map(str::to_owned)
            .to_vec();
    let (ok, _, stderr) = run_pgfanout(elsewhere).await;
    assert!(!ok);
    assert!(stderr.contains("but a process streams from slot"), "{stderr}");
    assert_eq!(raw_redis_hashes(&mut redis, "rplive:").await, before, "a refused replay wrote");

    // Standalone, once pgfanout is stopped: the wiped sink comes back from
    // the archive up to its stored checkpoint, exactly.
    let mut pgfanout = pgfanout;
    pgfanout.signal("TERM");
    pgfanout.wait_exit(Duration::from_secs(30)).await;
    delete_keys(&mut redis, "rplive:").await;
    let standalone: Vec<String> =
        ["replay", "--config", &path, "--from", &lsn_text(from), "--sink", "live"].map(str::to_owned).to_vec();
    let (ok, _, stderr) = run_pgfanout(standalone).await;
    assert!(ok, "standalone replay failed: {stderr}");
    assert!(stderr.contains("replaying standalone"), "{stderr}");
    assert_eq!(raw_redis_hashes(&mut redis, "rplive:").await, before, "the standalone replay differs");
}

/// With a queue of 8 transactions, a long replay (each archive batch
/// delayed 3 s) does not hold the stream: the paused sink sets aside what
/// reaches its queue once the archive holds it, so the other sink keeps
/// applying far more than 8 transactions meanwhile; the replay then applies
/// what was set aside from the archive, and both stores end exactly equal.
#[tokio::test]
async fn a_long_replay_with_a_tiny_queue_never_holds_the_other_sink() {
    let TinyQueues { db, mut redis, pgfanout, archive: _archive, .. } =
        TinyQueues::start("full", &[("PGFANOUT_TEST_REPLAY_BATCH_DELAY_MS", "3000")]).await;
    db.client.batch_execute("INSERT INTO items SELECT g, g, 'first' FROM generate_series(1, 500) g").await.unwrap();
    wait_for_redis_match(&db, "items", "id", &mut redis, "rfull:", &pgfanout).await;
    let from = pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64;
    delete_keys(&mut redis, "rfull:").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_items_writer(db.url.clone(), stop.clone(), 5001);
    let path = std::env::temp_dir()
        .join(format!("pgfanout-tests-{}", std::process::id()))
        .join("replay_full.toml")
        .display()
        .to_string();
    let replay = tokio::spawn(run_pgfanout(
        ["replay", "--config", &path, "--from", &lsn_text(from), "--sink", "full"].map(str::to_owned).to_vec(),
    ));
    wait_until("the replay pauses sink full", Duration::from_secs(30), || async {
        sink_metric(&pgfanout, "pgfanout_sink_paused", "full").await == 1.0
    })
    .await;
    let full_paused_at = sink_metric(&pgfanout, "pgfanout_checkpoint_lsn", "full").await;
    // Far more than 8 transactions pass while the replay's first batch waits its 3 s.
    let transactions_before = pgfanout.metric("pgfanout_transactions_total").await.unwrap_or(0.0);
    let other_before = sink_metric(&pgfanout, "pgfanout_checkpoint_lsn", "fullother").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let other_after = sink_metric(&pgfanout, "pgfanout_checkpoint_lsn", "fullother").await;
    let transactions_after = pgfanout.metric("pgfanout_transactions_total").await.unwrap_or(0.0);
    let full_now = sink_metric(&pgfanout, "pgfanout_checkpoint_lsn", "full").await;
    assert_eq!(sink_metric(&pgfanout, "pgfanout_sink_paused", "full").await, 1.0, "the replay ended too soon");
    assert!(other_after > other_before, "the other sink stood still while sink full was paused");
    assert!(
        transactions_after - transactions_before > 40.0,
        "the stream waited for the paused sink: {} transactions in 1.5 s",
        transactions_after - transactions_before
    );
    assert_eq!(full_now, full_paused_at, "sink full moved its checkpoint while paused");
    assert!(sink_metric(&pgfanout, "pgfanout_sink_queue_depth", "full").await <= 8.0);

    let (ok, stdout, stderr) = tokio::time::timeout(Duration::from_secs(60), replay).await.unwrap().unwrap();
    assert!(ok, "replay failed: {stderr}\n{}", pgfanout.log_text());
    assert!(stdout.contains(r#""sink":"full""#), "{stdout}");
    assert!(pgfanout.log_text().contains("applied what the paused sink set aside"), "{}", pgfanout.log_text());
    // Resumed at the horizon: past where it paused, and streaming on.
    let resumed_at = sink_metric(&pgfanout, "pgfanout_checkpoint_lsn", "full").await;
    assert!(resumed_at > full_paused_at, "sink full resumed at its old checkpoint");
    wait_until("sink full streams again", Duration::from_secs(30), || async {
        sink_metric(&pgfanout, "pgfanout_checkpoint_lsn", "full").await > resumed_at
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    wait_for_redis_match(&db, "items", "id", &mut redis, "rfull:", &pgfanout).await;
    wait_for_redis_match(&db, "items", "id", &mut redis, "rfullother:", &pgfanout).await;
}

/// A replay cut short (pgfanout stops) after the paused sink set
/// transactions aside: the sink is stranded, acknowledging none of them, so
/// the restarted pgfanout gets them again from the slot and the store ends
/// exactly equal (a sink resuming as if nothing was missing would lose them).
#[tokio::test]
async fn a_replay_cut_short_after_setting_aside_loses_nothing_across_a_restart() {
    let env = [("PGFANOUT_TEST_REPLAY_BATCH_DELAY_MS", "5000")];
    let TinyQueues { db, mut redis, config, http, mut pgfanout, archive: _archive } =
        TinyQueues::start("cut", &env).await;
    db.client.batch_execute("INSERT INTO items SELECT g, g, 'first' FROM generate_series(1, 300) g").await.unwrap();
    wait_for_redis_match(&db, "items", "id", &mut redis, "rcut:", &pgfanout).await;
    let from = pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_items_writer(db.url.clone(), stop.clone(), 5001);
    let path = std::env::temp_dir()
        .join(format!("pgfanout-tests-{}", std::process::id()))
        .join("replay_cut.toml")
        .display()
        .to_string();
    let replay = tokio::spawn(run_pgfanout(
        ["replay", "--config", &path, "--from", &lsn_text(from), "--sink", "cut"].map(str::to_owned).to_vec(),
    ));
    wait_until("the replay pauses sink cut", Duration::from_secs(30), || async {
        sink_metric(&pgfanout, "pgfanout_sink_paused", "cut").await == 1.0
    })
    .await;
    // Far more than its queue of 8 reach the paused sink: they are set aside.
    let dispatched = pgfanout.metric("pgfanout_transactions_total").await.unwrap_or(0.0);
    wait_until("transactions pass the paused sink", Duration::from_secs(30), || async {
        pgfanout.metric("pgfanout_transactions_total").await.unwrap_or(0.0) > dispatched + 30.0
    })
    .await;
    assert_eq!(sink_metric(&pgfanout, "pgfanout_sink_paused", "cut").await, 1.0, "the replay ended too soon");
    pgfanout.signal("TERM");
    pgfanout.wait_exit(Duration::from_secs(30)).await;
    let log = pgfanout.log_text();
    assert!(log.contains("a replay ended before applying the transactions this sink set aside"), "{log}");
    let (ok, _, _) = replay.await.unwrap();
    assert!(!ok, "the replay cut short reported success");

    let pgfanout = Pgfanout::start_with_env("replay_cut", &config, &http, &env);
    wait_until("pgfanout streams again", Duration::from_secs(30), || async {
        http_get(&http, "/readyz").await.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    wait_for_redis_match(&db, "items", "id", &mut redis, "rcut:", &pgfanout).await;
    wait_for_redis_match(&db, "items", "id", &mut redis, "rcutother:", &pgfanout).await;
}

/// `--to` bounds only the archive's range: what the paused sink set aside
/// meanwhile is live, so it is applied whatever `--to` says (else the sink
/// would resume past transactions it never applied).
#[tokio::test]
async fn a_replay_up_to_an_early_lsn_still_applies_what_the_sink_set_aside() {
    let TinyQueues { db, mut redis, pgfanout, archive: _archive, .. } =
        TinyQueues::start("to", &[("PGFANOUT_TEST_REPLAY_BATCH_DELAY_MS", "2000")]).await;
    db.client.batch_execute("INSERT INTO items SELECT g, g, 'first' FROM generate_series(1, 300) g").await.unwrap();
    wait_for_redis_match(&db, "items", "id", &mut redis, "rto:", &pgfanout).await;
    let from = pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64;
    let to = sink_metric(&pgfanout, "pgfanout_checkpoint_lsn", "to").await as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_items_writer(db.url.clone(), stop.clone(), 5001);
    let path = std::env::temp_dir()
        .join(format!("pgfanout-tests-{}", std::process::id()))
        .join("replay_to.toml")
        .display()
        .to_string();
    // Only the first transaction (the 300 rows, never deleted) from the archive.
    let replay = ["replay", "--config", &path, "--from", &lsn_text(from), "--to", &lsn_text(to), "--sink", "to"];
    let (ok, _, stderr) = run_pgfanout(replay.map(str::to_owned).to_vec()).await;
    assert!(ok, "replay failed: {stderr}\n{}", pgfanout.log_text());
    assert!(pgfanout.log_text().contains("applied what the paused sink set aside"), "{}", pgfanout.log_text());
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    wait_for_redis_match(&db, "items", "id", &mut redis, "rto:", &pgfanout).await;
    wait_for_redis_match(&db, "items", "id", &mut redis, "rtoother:", &pgfanout).await;
}

/// `id:v` of every row, sorted.
async fn expected_items(db: &TestDatabase) -> Vec<String> {
    let rows = db.client.query("SELECT id::text || ':' || v::text FROM items", &[]).await.unwrap();
    let mut items: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    items.sort();
    items
}

/// `id:v` of every `Item` node, sorted.
async fn graph_items(store: &mut common::graph::GraphStore) -> Vec<String> {
    let rows = store.rows("MATCH (n:Item) RETURN n.id, n.v").await;
    let mut items: Vec<String> = rows.iter().map(|row| format!("{}:{}", row[0].text(), row[1].text())).collect();
    items.sort();
    items
}

/// The same on FalkorDB, whose nodes keep no trace of a delete: an
/// emptied graph replayed (every sink: no `--sink`) beside writes with
/// deletes ends exactly equal.
#[tokio::test]
async fn replay_into_a_wiped_falkordb_graph_beside_deletes_ends_equal() {
    let db = create_database("replay_graph").await;
    db.client.batch_execute(ITEMS_SCHEMA).await.unwrap();
    let mut store = common::graph::GraphStore::open(common::graph::Backend::FalkorDb, "replay_graph").await;
    let archive = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "{}\n[[sink]]\nname = \"graph\"\nkind = \"graph\"\n{}\n[[sink.table]]\nsource = \"public.items\"\nlabel = \"Item\"\n\n[archive]\npath = \"{}\"\n",
        source_config(&db, &db.name, &http),
        store.sink_lines(),
        archive.path().display()
    );
    let pgfanout =
        Pgfanout::start_with_env("replay_graph", &config, &http, &[("PGFANOUT_TEST_REPLAY_BATCH_DELAY_MS", "1000")]);
    wait_until("pgfanout streams", Duration::from_secs(30), || async { http_get(&http, "/readyz").await.is_some() })
        .await;
    db.client
        .batch_execute(
            "INSERT INTO items SELECT g, g, 'first' FROM generate_series(1, 400) g; DELETE FROM items WHERE id % 10 = 0",
        )
        .await
        .unwrap();
    let expected = expected_items(&db).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while graph_items(&mut store).await != expected {
        assert!(Instant::now() < deadline, "the graph never matched\n{}", pgfanout.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let from = pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64;
    store.rows("MATCH (n:Item) DELETE n").await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_items_writer(db.url.clone(), stop.clone(), 5001);
    // Rows the live stream deletes soon are in the archive when the replay reads it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.rows("MATCH (n:Item {id: 5002}) RETURN n.id").await.is_empty() {
        assert!(Instant::now() < deadline, "the writes never reached the graph\n{}", pgfanout.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path = std::env::temp_dir()
        .join(format!("pgfanout-tests-{}", std::process::id()))
        .join("replay_graph.toml")
        .display()
        .to_string();
    let (ok, _, stderr) =
        run_pgfanout(["replay", "--config", &path, "--from", &lsn_text(from)].map(str::to_owned).to_vec()).await;
    assert!(ok, "replay failed: {stderr}\n{}", pgfanout.log_text());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let expected = expected_items(&db).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = graph_items(&mut store).await;
        if have == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the graph never matched: {} rows vs {} nodes; extra {:?}\n{}",
            expected.len(),
            have.len(),
            have.iter().filter(|item| !expected.contains(item)).take(5).collect::<Vec<_>>(),
            pgfanout.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// After a rebuild the sink's checkpoint is the copy's last watermark,
/// which the archive never holds: with the pipeline idle, the replay goes
/// on at once (not after the archive wait's timeout) and brings back the
/// archived rows.
#[tokio::test]
async fn a_checkpoint_at_a_rebuild_watermark_does_not_hold_the_replay() {
    let db = create_database("replay_watermark").await;
    db.client.batch_execute(ITEMS_SCHEMA).await.unwrap();
    db.client.batch_execute("INSERT INTO items SELECT g, g, 'copied' FROM generate_series(1, 100) g").await.unwrap();
    let redis_url = format!("{}/0", required_env("PGFANOUT_TEST_REDIS_URL").trim_end_matches('/'));
    let mut redis = redis_connection(&redis_url).await;
    for prefix in ["rwm:", "pgfanout:checkpoint:wm", "pgfanout:snapshot:wm"] {
        delete_keys(&mut redis, prefix).await;
    }
    let archive = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "{}\n[[sink]]\nname = \"wm\"\nkind = \"redis\"\nurl = \"{redis_url}\"\n[[sink.table]]\nsource = \"public.items\"\nkey = \"rwm:{{id}}\"\n\n[archive]\npath = \"{}\"\n",
        source_config(&db, &db.name, &http),
        archive.path().display()
    );
    let pgfanout = Pgfanout::start("replay_watermark", &config, &http);
    wait_until("the initial copy", Duration::from_secs(60), || async {
        http_get(&http, "/readyz").await.is_some_and(|body| body.contains("\"ready\""))
    })
    .await;
    db.client
        .batch_execute("INSERT INTO items SELECT g, g, 'archived' FROM generate_series(101, 150) g")
        .await
        .unwrap();
    wait_for_redis_match(&db, "items", "id", &mut redis, "rwm:", &pgfanout).await;
    let path = std::env::temp_dir()
        .join(format!("pgfanout-tests-{}", std::process::id()))
        .join("replay_watermark.toml")
        .display()
        .to_string();
    let (ok, _, stderr) =
        run_pgfanout(["rebuild", "--config", &path, "--sink", "wm"].map(str::to_owned).to_vec()).await;
    assert!(ok, "rebuild failed: {stderr}");
    let checkpoint = sink_metric(&pgfanout, "pgfanout_checkpoint_lsn", "wm").await as u64;
    let (ok, inspected, _) =
        run_pgfanout(["inspect", "--archive", &archive.path().display().to_string()].map(str::to_owned).to_vec()).await;
    assert!(ok);
    let archived_to = inspected
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["type"] == "commit")
        .filter_map(|line| line["end_lsn"].as_str().map(|lsn| lsn.parse::<pgfanout_core::Lsn>().unwrap().0))
        .max()
        .unwrap_or_else(|| panic!("no commit in {inspected}"));
    assert!(checkpoint > archived_to, "the checkpoint {checkpoint} is not past the archive's end {archived_to}");

    for id in 101..=150 {
        redis::cmd("DEL").arg(format!("rwm:{id}")).query_async::<()>(&mut redis).await.unwrap();
    }
    let from = pgfanout.metric("pgfanout_archive_oldest_lsn").await.unwrap() as u64;
    let started = Instant::now();
    let (ok, stdout, stderr) =
        run_pgfanout(["replay", "--config", &path, "--from", &lsn_text(from)].map(str::to_owned).to_vec()).await;
    assert!(ok, "replay failed: {stderr}\n{}", pgfanout.log_text());
    assert!(started.elapsed() < Duration::from_secs(20), "the replay waited {:?}", started.elapsed());
    assert!(stdout.contains(r#""changes":50,"#), "{stdout}");
    wait_for_redis_match(&db, "items", "id", &mut redis, "rwm:", &pgfanout).await;
}
