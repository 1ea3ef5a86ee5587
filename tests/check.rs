//! `pgfanout check` against the local stack's PostgreSQL and Redis: each test
//! sets up one misconfiguration in a database of its own, runs the binary,
//! and expects the one problem line that names it with its fix — and, where
//! the fix is a statement, that running it makes `check` pass.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{create_database, free_port, redis_config, required_env, wait_until, TestDatabase};

/// What one `pgfanout check` run printed.
struct CheckRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl CheckRun {
    fn lines(&self, prefix: &str) -> Vec<&str> {
        self.stdout.lines().filter_map(|line| line.strip_prefix(prefix)).collect()
    }

    fn problems(&self) -> Vec<&str> {
        self.lines("problem: ")
    }

    fn warnings(&self) -> Vec<&str> {
        self.lines("warning: ")
    }

    /// The single problem line mentioning `subject`.
    fn problem_about(&self, subject: &str) -> &str {
        let matching: Vec<&str> = self.problems().into_iter().filter(|line| line.contains(subject)).collect();
        assert_eq!(matching.len(), 1, "expected one problem about {subject}:\n{}", self.report());
        matching[0]
    }

    fn assert_failed(&self) {
        assert_eq!(self.code, Some(1), "check must exit 1:\n{}", self.report());
        assert!(!self.stdout.lines().any(|line| line.starts_with("ok:")), "no ok line:\n{}", self.report());
        assert!(self.stderr.contains("problem(s)"), "summary on stderr:\n{}", self.report());
    }

    fn assert_ok(&self) {
        assert_eq!(self.code, Some(0), "check must pass:\n{}", self.report());
        assert!(self.problems().is_empty(), "{}", self.report());
        assert!(self.stdout.lines().last().is_some_and(|line| line.starts_with("ok: ")), "{}", self.report());
    }

    fn report(&self) -> String {
        format!("exit {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

fn config_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgfanout-check-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.toml"))
}

/// Runs `pgfanout check` on `config` with extra environment variables.
fn run_check_with_env(name: &str, config: &str, env: &[(&str, &str)]) -> CheckRun {
    let path = config_path(name);
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_pgfanout"))
        .args(["--log-format", "json", "check", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("cannot run the pgfanout binary");
    CheckRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn run_check(name: &str, config: &str) -> CheckRun {
    run_check_with_env(name, config, &[])
}

/// A Redis URL on the test server. `check` only reads the checkpoint key,
/// so the logical database is shared, not emptied.
fn redis_url() -> String {
    format!("{}/15", required_env("PGFANOUT_TEST_REDIS_URL").trim_end_matches('/'))
}

/// A config for `db` routing `public.orders` (and `extra` tables) to Redis.
fn config_for(db: &TestDatabase, extra: &[&str]) -> String {
    let mut tables = vec![("public.orders", "order:{id}")];
    tables.extend(extra.iter().map(|table| (*table, "row:{id}")));
    redis_config(db, &redis_url(), "127.0.0.1:0", &tables)
}

/// `config` with `line` added to `[source]`.
fn with_source_setting(config: &str, line: &str) -> String {
    config.replacen("[source]\n", &format!("[source]\n{line}\n"), 1)
}

const ORDERS: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL)";

#[tokio::test]
async fn a_correct_setup_passes_with_only_the_unlimited_wal_warning_and_changes_nothing() {
    let db = create_database("check_ok").await;
    db.client.batch_execute(ORDERS).await.unwrap();
    let keep_size: String = db.client.query_one("SHOW max_slot_wal_keep_size", &[]).await.unwrap().get(0);
    assert_eq!(keep_size, "-1", "this test expects the local stack's default max_slot_wal_keep_size");

    let run = run_check("check_ok", &config_for(&db, &[]));
    run.assert_ok();
    let warnings = run.warnings();
    assert_eq!(warnings.len(), 1, "{}", run.report());
    assert!(warnings[0].starts_with("max_slot_wal_keep_size is -1 (unlimited)"), "{}", run.report());
    assert!(warnings[0].contains("ALTER SYSTEM SET max_slot_wal_keep_size = '"), "{}", run.report());
    assert!(warnings[0].contains("SELECT pg_reload_conf()"), "{}", run.report());

    // check only reads: run creates the publication and the slot, not check.
    let created: i64 = db
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_publication WHERE pubname = 'check_ok') \
             + (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'check_ok')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, 0);
}

#[tokio::test]
async fn a_table_without_primary_key_gets_the_key_or_full_identity_fix() {
    let db = create_database("check_no_primary_key").await;
    db.client.batch_execute("CREATE TABLE orders (id bigint NOT NULL, customer text)").await.unwrap();
    let config = config_for(&db, &[]);

    let run = run_check("check_no_primary_key", &config);
    run.assert_failed();
    let problem = run.problem_about("public.orders");
    assert!(problem.starts_with("table public.orders has no primary key"), "{problem}");
    assert!(problem.contains(r#"run ALTER TABLE "public"."orders" ADD PRIMARY KEY (…)"#), "{problem}");
    assert!(problem.contains(r#"ALTER TABLE "public"."orders" REPLICA IDENTITY FULL"#), "{problem}");
    assert_eq!(run.problems().len(), 1, "{}", run.report());

    db.client.batch_execute(r#"ALTER TABLE "public"."orders" REPLICA IDENTITY FULL"#).await.unwrap();
    run_check("check_no_primary_key", &config).assert_ok();
}

#[tokio::test]
async fn identity_nothing_gets_the_default_identity_fix() {
    let db = create_database("check_identity_nothing").await;
    db.client.batch_execute(&format!("{ORDERS}; ALTER TABLE orders REPLICA IDENTITY NOTHING")).await.unwrap();
    let config = config_for(&db, &[]);

    let run = run_check("check_identity_nothing", &config);
    run.assert_failed();
    let problem = run.problem_about("public.orders");
    assert!(problem.starts_with("table public.orders has REPLICA IDENTITY NOTHING"), "{problem}");
    assert!(problem.ends_with(r#"run ALTER TABLE "public"."orders" REPLICA IDENTITY DEFAULT"#), "{problem}");

    db.client.batch_execute(r#"ALTER TABLE "public"."orders" REPLICA IDENTITY DEFAULT"#).await.unwrap();
    run_check("check_identity_nothing", &config).assert_ok();
}

#[tokio::test]
async fn a_dropped_identity_index_gets_another_unique_index_as_fix() {
    let db = create_database("check_identity_index").await;
    db.client
        .batch_execute(
            "CREATE TABLE orders (id bigint NOT NULL, code text NOT NULL);
             CREATE UNIQUE INDEX orders_id ON orders (id);
             CREATE UNIQUE INDEX orders_code ON orders (code);
             ALTER TABLE orders REPLICA IDENTITY USING INDEX orders_id;
             DROP INDEX orders_id;",
        )
        .await
        .unwrap();
    let config = config_for(&db, &[]);

    let run = run_check("check_identity_index", &config);
    run.assert_failed();
    let problem = run.problem_about("public.orders");
    assert!(problem.contains("REPLICA IDENTITY USING INDEX, but that index was dropped or is invalid"), "{problem}");
    assert!(problem.contains(r#"run ALTER TABLE "public"."orders" REPLICA IDENTITY USING INDEX "orders_code""#));

    db.client
        .batch_execute(r#"ALTER TABLE "public"."orders" REPLICA IDENTITY USING INDEX "orders_code""#)
        .await
        .unwrap();
    // A delete now carries only code: a key built from id could not be found.
    let run = run_check("check_identity_index", &config);
    let problem = run.problem_about("key template column id");
    assert!(problem.contains("replica identity index"), "{problem}");
    run_check("check_identity_index", &config.replace("order:{id}", "order:{code}")).assert_ok();
}

#[tokio::test]
async fn a_routed_table_that_does_not_exist_is_named_with_its_sink() {
    let db = create_database("check_missing_table").await;
    db.client.batch_execute(ORDERS).await.unwrap();

    let run = run_check("check_missing_table", &config_for(&db, &["public.ghosts"]));
    run.assert_failed();
    assert_eq!(
        run.problems(),
        ["routed table public.ghosts (sink check_missing_table) does not exist: create it, or remove its \
          [[sink.table]] from the config"],
        "{}",
        run.report()
    );
}

#[tokio::test]
async fn a_publication_without_updates_and_deletes_gets_the_publish_fix() {
    let db = create_database("check_publish").await;
    db.client
        .batch_execute(&format!(
            "{ORDERS}; CREATE PUBLICATION check_publish FOR TABLE orders WITH (publish = 'insert')"
        ))
        .await
        .unwrap();
    let config = config_for(&db, &[]);

    let run = run_check("check_publish", &config);
    run.assert_failed();
    let problem = run.problem_about("publication check_publish");
    assert!(problem.starts_with("publication check_publish does not publish update, delete, truncate"), "{problem}");
    assert!(
        problem
            .ends_with(r#"run ALTER PUBLICATION "check_publish" SET (publish = 'insert, update, delete, truncate')"#),
        "{problem}"
    );

    db.client
        .batch_execute(r#"ALTER PUBLICATION "check_publish" SET (publish = 'insert, update, delete, truncate')"#)
        .await
        .unwrap();
    run_check("check_publish", &config).assert_ok();
}

#[tokio::test]
async fn a_missing_publication_with_create_publication_off_gets_the_create_statement() {
    let db = create_database("check_no_publication").await;
    db.client.batch_execute(ORDERS).await.unwrap();
    let config = with_source_setting(&config_for(&db, &[]), "create_publication = false");

    let run = run_check("check_no_publication", &config);
    run.assert_failed();
    let problem = run.problem_about("publication check_no_publication");
    let create = r#"CREATE PUBLICATION "check_no_publication" FOR TABLE "public"."orders" WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)"#;
    assert!(problem.ends_with(&format!("run {create}")), "{problem}");

    db.client.batch_execute(create).await.unwrap();
    run_check("check_no_publication", &config).assert_ok();
}

#[tokio::test]
async fn a_slot_with_another_plugin_is_reported_with_how_to_drop_it() {
    let db = create_database("check_slot_plugin").await;
    db.client.batch_execute(ORDERS).await.unwrap();
    db.client
        .execute("SELECT pg_create_logical_replication_slot('check_slot_plugin', 'test_decoding')", &[])
        .await
        .unwrap();

    let run = run_check("check_slot_plugin", &config_for(&db, &[]));
    // Dropped before asserting: a failed assertion must not leave a slot
    // holding back the shared server's WAL.
    db.client.execute("SELECT pg_drop_replication_slot('check_slot_plugin')", &[]).await.unwrap();

    run.assert_failed();
    let problem = run.problem_about("slot check_slot_plugin");
    assert!(problem.starts_with("slot check_slot_plugin uses plugin test_decoding, not pgoutput"), "{problem}");
    assert!(problem.ends_with("SELECT pg_drop_replication_slot('check_slot_plugin')"), "{problem}");
}

/// A child process killed when dropped, even when the test fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_slot_held_by_another_consumer_is_reported_with_its_pid() {
    let db = create_database("check_slot_busy").await;
    db.client.batch_execute(&format!("{ORDERS}; CREATE PUBLICATION check_slot_busy FOR TABLE orders")).await.unwrap();
    // A statement of its own: a slot cannot be created in a transaction that wrote.
    db.client.execute("SELECT pg_create_logical_replication_slot('check_slot_busy', 'pgoutput')", &[]).await.unwrap();
    let receiver = Command::new(format!("{}/pg_recvlogical", required_env("PGFANOUT_TEST_PG_BIN")))
        .args(["--dbname", &db.url, "--slot", "check_slot_busy", "--start", "--file", "/dev/null"])
        .args(["--option", "proto_version=1", "--option", "publication_names=check_slot_busy"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start pg_recvlogical");
    let receiver = KillOnDrop(receiver);
    let active_pid = || async {
        db.client
            .query_one("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'check_slot_busy'", &[])
            .await
            .unwrap()
            .get::<_, Option<i32>>(0)
    };
    wait_until("pg_recvlogical holds the slot", Duration::from_secs(20), || async { active_pid().await.is_some() })
        .await;
    let pid = active_pid().await.unwrap();

    let run = run_check("check_slot_busy", &config_for(&db, &[]));
    drop(receiver);
    wait_until("the slot is released", Duration::from_secs(20), || async { active_pid().await.is_none() }).await;
    db.client.execute("SELECT pg_drop_replication_slot('check_slot_busy')", &[]).await.unwrap();

    run.assert_failed();
    let problem = run.problem_about("slot check_slot_busy");
    assert!(
        problem.starts_with(&format!("slot check_slot_busy is in use by another process (pid {pid}, ")),
        "{problem}"
    );
    assert!(problem.contains("pg_recvlogical"), "names the holder: {problem}");
    assert!(problem.ends_with(&format!("SELECT pg_terminate_backend({pid})")), "{problem}");
}

#[tokio::test]
async fn an_unreachable_sink_is_one_problem_naming_its_address() {
    let db = create_database("check_sink_down").await;
    db.client.batch_execute(ORDERS).await.unwrap();
    let port = free_port();
    let config =
        redis_config(&db, &format!("redis://127.0.0.1:{port}/0"), "127.0.0.1:0", &[("public.orders", "o:{id}")]);

    let run = run_check("check_sink_down", &config);
    run.assert_failed();
    let problems = run.problems();
    assert_eq!(problems.len(), 1, "{}", run.report());
    assert!(problems[0].starts_with("sink check_sink_down: "), "{}", run.report());
    assert!(problems[0].contains(&format!("127.0.0.1:{port}")), "{}", run.report());
}

#[tokio::test]
async fn a_role_without_replication_is_one_problem_saying_so() {
    const ROLE: &str = "check_no_replication_role";
    let db = create_database("check_no_replication").await;
    db.client.batch_execute(ORDERS).await.unwrap();
    // Roles are server-wide: a name of this test's own, dropped at the end.
    db.client
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {ROLE}; CREATE ROLE {ROLE} LOGIN NOREPLICATION PASSWORD 'check-secret'"
        ))
        .await
        .unwrap();
    let config = config_for(&db, &[]).replacen("://postgres@", &format!("://{ROLE}@"), 1);
    assert!(config.contains(ROLE), "the test URL names its user: {config}");

    let run = run_check_with_env("check_no_replication", &config, &[("PGFANOUT_SOURCE__PASSWORD", "check-secret")]);
    db.client.batch_execute(&format!("DROP ROLE {ROLE}")).await.unwrap();

    run.assert_failed();
    let problem = run.problem_about("cannot connect to PostgreSQL");
    assert!(problem.contains(&format!("authentication failed for user {ROLE}")), "{problem}");
    assert!(problem.contains("must be superuser or replication role"), "quotes the server: {problem}");
    assert!(problem.contains("the role has LOGIN and REPLICATION"), "says what to fix: {problem}");
    assert_eq!(run.problems().len(), 1, "{}", run.report());
}

#[tokio::test]
async fn a_config_error_is_one_line_naming_the_file_and_key() {
    let db = create_database("check_config_error").await;
    let config = with_source_setting(&config_for(&db, &[]), "slto = \"typo\"");

    let run = run_check("check_config_error", &config);
    assert_eq!(run.code, Some(1), "{}", run.report());
    // Nothing is checked past a bad config: its problem is the only line.
    let problems = run.problems();
    assert_eq!(problems.len(), 1, "{}", run.report());
    let path = config_path("check_config_error");
    assert!(problems[0].contains(&format!("invalid config {}: ", path.display())), "{}", run.report());
    assert!(problems[0].contains("key source.slto: unknown field"), "{}", run.report());
}

/// A Redis sink routing each `(table, extra lines)` of `db`, the lines
/// added to its `[[sink.table]]` (no key template unless they give one).
fn redis_tables_config(db: &TestDatabase, tables: &[(&str, &str)]) -> String {
    let mut config = format!(
        "[source]\nurl = \"{}\"\nslot = \"{name}\"\npublication = \"{name}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n\
         [[sink]]\nname = \"{name}\"\nkind = \"redis\"\nurl = \"{}\"\n",
        db.url,
        redis_url(),
        name = db.name
    );
    for (table, lines) in tables {
        config.push_str(&format!("\n[[sink.table]]\nsource = \"{table}\"\n{lines}\n"));
    }
    config
}

#[tokio::test]
async fn filters_on_unknown_or_toastable_columns_and_tables_without_a_key_are_problems() {
    let db = create_database("check_tables").await;
    db.client
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, status text, amount int NOT NULL);
             CREATE TABLE notes (id bigint PRIMARY KEY, body text);
             CREATE TABLE events (id bigint NOT NULL, kind text);
             ALTER TABLE events REPLICA IDENTITY FULL;",
        )
        .await
        .unwrap();
    let config = |orders_filter: &str, events_key: &str| {
        redis_tables_config(
            &db,
            &[
                ("public.orders", &format!("key = \"order:{{id}}\"\nfilter = '{orders_filter}'")),
                ("public.notes", "filter = 'body != \"\"'"),
                ("public.events", events_key),
            ],
        )
    };

    let run = run_check("check_tables", &config("stauts != \"x\" && amount > 1", ""));
    run.assert_failed();
    let unknown = run.problem_about("stauts");
    assert!(unknown.contains("reads column stauts, which table public.orders does not publish"), "{unknown}");
    assert!(unknown.contains("columns: id, status, amount"), "{unknown}");
    let toast = run.problem_about("reads column body");
    assert!(toast.contains("ALTER TABLE public.notes REPLICA IDENTITY FULL"), "{toast}");
    assert!(toast.contains("take body out of the filter"), "{toast}");
    let keyless = run.problem_about("table public.events");
    assert!(keyless.contains("has no primary key") && keyless.contains("set `key`"), "{keyless}");
    assert_eq!(run.problems().len(), 3, "{}", run.report());

    // Each fixed as its line says: a known column, FULL, key columns named.
    db.client.batch_execute("ALTER TABLE notes REPLICA IDENTITY FULL").await.unwrap();
    run_check("check_tables", &config("amount > 1", "key = \"event:{id}:{kind}\"")).assert_ok();
}

#[tokio::test]
async fn a_table_under_full_identity_needs_no_id_columns_when_it_has_a_primary_key() {
    let db = create_database("check_mongo_full").await;
    db.client
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer text);
             ALTER TABLE orders REPLICA IDENTITY FULL;
             CREATE TABLE events (id bigint NOT NULL, kind text);
             ALTER TABLE events REPLICA IDENTITY FULL;",
        )
        .await
        .unwrap();
    let config = |events_lines: &str| {
        format!(
            "[source]\nurl = \"{url}\"\nslot = \"{name}\"\npublication = \"{name}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n\
             [[sink]]\nname = \"docs\"\nkind = \"mongodb\"\nurl = \"{mongo}\"\ndatabase = \"{name}\"\n\n\
             [[sink.table]]\nsource = \"public.orders\"\n\n[[sink.table]]\nsource = \"public.events\"\n{events_lines}\n",
            url = db.url,
            name = db.name,
            mongo = required_env("PGFANOUT_TEST_MONGODB_URL"),
        )
    };
    // Before, `check` passed this and `run` stalled on the first change of
    // either table: "under REPLICA IDENTITY FULL every column counts as key".
    let run = run_check("check_mongo_full", &config(""));
    run.assert_failed();
    let problem = run.problem_about("public.events");
    assert!(problem.starts_with("sink docs: table public.events: the table has no primary key"), "{problem}");
    assert!(problem.contains("id_columns"), "{problem}");
    assert_eq!(run.problems().len(), 1, "orders is keyed by its primary key: {}", run.report());
    run_check("check_mongo_full", &config("id_columns = [\"id\", \"kind\"]")).assert_ok();
}

/// Every sink kind carries an unchanged TOAST value over on a key change
/// under identity DEFAULT, Cassandra's also when the changes after its
/// checkpoint are applied again after a crash (its carry log), so no sink
/// gets a warning about such tables.
#[tokio::test]
async fn toastable_tables_under_default_identity_get_no_warning_as_every_sink_carries_a_moved_value() {
    let db = create_database("check_toast_move").await;
    db.client.batch_execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text, n int)").await.unwrap();
    let config = format!(
        "[source]\nurl = \"{url}\"\nslot = \"{name}\"\npublication = \"{name}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n\
         [[sink]]\nname = \"docs\"\nkind = \"mongodb\"\nurl = \"{mongo}\"\ndatabase = \"{name}\"\n\n\
         [[sink.table]]\nsource = \"public.notes\"\n\n\
         [[sink]]\nname = \"cql\"\nkind = \"scylla\"\nnodes = [\"{cassandra}\"]\nkeyspace = \"{name}\"\n\n\
         [[sink.table]]\nsource = \"public.notes\"\n\n\
         [[sink]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"{redis}\"\n\n[[sink.table]]\nsource = \"public.notes\"\n",
        url = db.url,
        name = db.name,
        mongo = required_env("PGFANOUT_TEST_MONGODB_URL"),
        cassandra = required_env("PGFANOUT_TEST_CASSANDRA_NODES").split(',').next().unwrap_or_default(),
        redis = redis_url(),
    );
    let run = run_check("check_toast_move", &config);
    run.assert_ok();
    let about_toast: Vec<&str> = run.warnings().into_iter().filter(|w| w.contains("TOAST")).collect();
    assert_eq!(about_toast, Vec::<&str>::new(), "{}", run.report());
}

#[tokio::test]
async fn a_failover_slot_on_a_server_before_17_is_one_problem_with_the_fix() {
    let db = create_database("check_failover").await;
    db.client.batch_execute(ORDERS).await.unwrap();
    let config = with_source_setting(&config_for(&db, &[]), "failover = true");
    let run = run_check("check_failover", &config);
    run.assert_failed();
    let problem = run.problem_about("source.failover");
    assert!(problem.contains("needs PostgreSQL 17 or later"), "{problem}");
    assert!(problem.ends_with("set source.failover = false"), "{problem}");
}

/// `[archive]` settings `run` could not live with: sizes retention cannot
/// work with (a config problem), a folder under a file, more retention than
/// free space; a sound archive folder passes and is not created by `check`.
#[tokio::test]
async fn archive_settings_that_cannot_work_are_one_problem_each_with_the_fix() {
    let db = create_database("check_archive").await;
    db.client.batch_execute(ORDERS).await.unwrap();
    let parent = tempfile::tempdir().unwrap();
    let with_archive = |path: &std::path::Path, lines: &str| {
        format!("{}\n[archive]\npath = \"{}\"\n{lines}\n", config_for(&db, &[]), path.display())
    };
    let folder = parent.path().join("archive");

    let run = run_check("check_archive", &with_archive(&folder, "segment_mb = 64\nretention_mb = 10"));
    assert_eq!(run.code, Some(1), "{}", run.report());
    let problem = run.problem_about("archive.retention_mb");
    assert!(problem.contains("archive.retention_mb (10) is below archive.segment_mb (64)"), "{}", run.report());

    let file = parent.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let run = run_check("check_archive", &with_archive(&file.join("archive"), "retention_mb = 100"));
    run.assert_failed();
    assert!(run.problem_about("archive.path").contains("is not a folder"), "{}", run.report());

    let run = run_check("check_archive", &with_archive(&folder, "retention_mb = 1000000000"));
    run.assert_failed();
    let problem = run.problem_about("archive.path");
    assert!(problem.contains("MB free on its filesystem"), "{}", run.report());
    assert!(problem.contains("lower archive.retention_mb"), "{}", run.report());

    let run = run_check("check_archive", &with_archive(&folder, "segment_mb = 1\nretention_mb = 8"));
    run.assert_ok();
    assert!(!folder.exists(), "check creates no archive folder");
}
