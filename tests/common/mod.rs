//! Helpers for end-to-end tests against the local stack started by
//! `make test` (see deploy/local/test.sh for the environment variables).
//!
//! Every test gets its own PostgreSQL database, slot and publication, and its
//! own Redis logical database or server, so tests run in parallel.

#![allow(dead_code)]

pub mod graph;
pub mod items;
pub mod proxy;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// A required environment variable; tests never skip silently.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `make test`, which starts the local stack and sets it")
    })
}

/// A fresh database on the test PostgreSQL server.
pub struct TestDatabase {
    /// Its name.
    pub name: String,
    /// A connection string for it (as the superuser, over TCP).
    pub url: String,
    /// A SQL client connected to it.
    pub client: Client,
}

/// Creates (or re-creates) database `name`.
pub async fn create_database(name: &str) -> TestDatabase {
    let admin_url = required_env("PGFANOUT_TEST_PG_URL");
    let admin = connect(&admin_url).await;
    // A slot left by an earlier run would keep the database in use.
    admin
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active",
            &[&name],
        )
        .await
        .unwrap();
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let url = with_database(&admin_url, name);
    let client = connect(&url).await;
    TestDatabase { name: name.to_owned(), url, client }
}

/// `url` with its database replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let base = url.rsplit_once('/').map(|(base, _)| base).unwrap_or(url);
    format!("{base}/{database}")
}

/// A SQL connection whose driver task runs in the background.
pub async fn connect(url: &str) -> Client {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|err| panic!("cannot connect to {url}: {err}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // The same output settings pgfanout's replication session pins, so text
    // values compare byte for byte.
    client
        .batch_execute(
            "SET datestyle = ISO; SET intervalstyle = postgres; SET extra_float_digits = 3; SET timezone = 'UTC'",
        )
        .await
        .unwrap();
    client
}

impl TestDatabase {
    /// The slot's `confirmed_flush_lsn` as a number, 0 when not set.
    pub async fn confirmed_flush_lsn(&self, slot: &str) -> u64 {
        let row = self
            .client
            .query_opt(
                "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        row.and_then(|r| r.get::<_, Option<i64>>(0)).unwrap_or(0) as u64
    }

    /// The server's current WAL insert position: past every commit so far,
    /// even with `synchronous_commit = off`, where the write position lags.
    pub async fn current_wal_lsn(&self) -> u64 {
        let row = self.client.query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[]).await.unwrap();
        row.get::<_, i64>(0) as u64
    }
}

/// An LSN in PostgreSQL's text form (`16/B374D848`).
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Every row of `table` as column → text value (NULLs left out), keyed by
/// the text of `key_column`, using each type's output function.
pub async fn table_as_text(
    db: &TestDatabase,
    table: &str,
    key_column: &str,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let columns: Vec<String> = db
        .client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let select = columns.iter().map(|c| format!("{c}::text")).collect::<Vec<_>>().join(", ");
    let sql = format!("SELECT {key_column}::text, {select} FROM {table}");
    let mut rows = BTreeMap::new();
    for row in db.client.query(&sql, &[]).await.unwrap() {
        let key: String = row.get(0);
        let mut values = BTreeMap::new();
        for (i, column) in columns.iter().enumerate() {
            if let Some(value) = row.get::<_, Option<String>>(i + 1) {
                values.insert(column.clone(), value);
            }
        }
        rows.insert(key, values);
    }
    rows
}

/// The checkpoint a Redis sink named `sink` stores (its default key), or 0.
pub async fn redis_checkpoint(redis: &mut redis::aio::MultiplexedConnection, sink: &str) -> u64 {
    let stored: Option<String> =
        redis::cmd("GET").arg(format!("pgfanout:checkpoint:{sink}")).query_async(redis).await.unwrap();
    stored.map(|text| text.parse::<pgoutput::Lsn>().unwrap().0).unwrap_or(0)
}

/// A Redis connection to one logical database, emptied first.
///
/// Replies may take seconds on a loaded two-core machine (a graph query while
/// the stack's JVMs compile), so the test connection waits far longer than
/// the driver's default response timeout before calling it a failure.
pub async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    let settings = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    client
        .get_multiplexed_async_connection_with_config(&settings)
        .await
        .unwrap_or_else(|err| panic!("cannot reach redis at {url}: {err}"))
}

/// The test Redis server's URL for logical database `db`, emptied.
pub async fn fresh_redis_db(db: u8) -> String {
    let url = format!("{}/{db}", required_env("PGFANOUT_TEST_REDIS_URL").trim_end_matches('/'));
    let mut connection = redis_connection(&url).await;
    redis::cmd("FLUSHDB").query_async::<()>(&mut connection).await.unwrap();
    url
}

/// The field pgfanout's Redis sink keeps each row's version in (default name).
pub const REDIS_VERSION_FIELD: &str = "_pgfanout_version";

/// Every hash under `prefix*` as key suffix → fields, without the sink's
/// version field (PostgreSQL has no such column to compare with).
pub async fn redis_hashes(
    connection: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(connection)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut hashes = BTreeMap::new();
    // Pipelined: one round trip per thousand keys, not per key.
    for batch in keys.chunks(1000) {
        let mut pipe = redis::pipe();
        for key in batch {
            pipe.cmd("HGETALL").arg(key);
        }
        let replies: Vec<BTreeMap<String, String>> = pipe.query_async(connection).await.unwrap();
        for (key, mut fields) in batch.iter().zip(replies) {
            fields.remove(REDIS_VERSION_FIELD);
            hashes.insert(key[prefix.len()..].to_owned(), fields);
        }
    }
    hashes
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `pgfanout run` process; killed when dropped.
pub struct Pgfanout {
    child: Child,
    /// Where its logs go.
    pub log: PathBuf,
    /// Its metrics address.
    pub http: String,
}

impl Pgfanout {
    /// Writes `config` to a file and starts `pgfanout run` with it.
    pub fn start(name: &str, config: &str, http: &str) -> Pgfanout {
        Pgfanout::start_with_env(name, config, http, &[])
    }

    /// [`Pgfanout::start`] with extra environment variables (secrets).
    pub fn start_with_env(name: &str, config: &str, http: &str, env: &[(&str, &str)]) -> Pgfanout {
        Pgfanout::start_with(name, config, http, env, &[])
    }

    /// [`Pgfanout::start`] with extra arguments after `run --config FILE`.
    pub fn start_with_args(name: &str, config: &str, http: &str, args: &[&str]) -> Pgfanout {
        Pgfanout::start_with(name, config, http, &[], args)
    }

    fn start_with(name: &str, config: &str, http: &str, env: &[(&str, &str)], args: &[&str]) -> Pgfanout {
        // One folder per test process: logs of earlier runs do not mix in.
        let dir = std::env::temp_dir().join(format!("pgfanout-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgfanout"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(&config_path)
            .args(args)
            // PGFANOUT_TEST_LOG overrides the filter, e.g. "trace" to see every message.
            .env("PGFANOUT_LOG", std::env::var("PGFANOUT_TEST_LOG").unwrap_or_else(|_| "info,pgfanout=debug".into()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("cannot start the pgfanout binary");
        Pgfanout { child, log, http: http.to_owned() }
    }

    /// Sends a signal (`TERM`, `KILL`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "pgfanout did not exit within {timeout:?}; log: {}", self.log.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The body of `GET /metrics`, or `None` while the endpoint is not up.
    pub async fn metrics(&self) -> Option<String> {
        http_get(&self.http, "/metrics").await
    }

    /// The value of a metric line starting with `name` (exact series text), if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics().await?;
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Pgfanout {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The whole response (status line, headers, body) to a minimal HTTP/1.0
/// GET; empty when nothing answers.
pub async fn raw_http_get(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else { return String::new() };
    if stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes()).await.is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
}

/// The body of a `200` answer to a GET, `None` for any other answer.
pub async fn http_get(address: &str, path: &str) -> Option<String> {
    let response = raw_http_get(address, path).await;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_owned())
}

/// Polls `condition` every 50 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `[source]`, `[http]` and `[pipeline]` sections of a test config:
/// database `db`, replication slot `slot`, publication named like the
/// database, fast status updates, a short shutdown.
pub fn source_config(db: &TestDatabase, slot: &str, http: &str) -> String {
    format!(
        r#"[source]
url = "{url}"
slot = "{slot}"
publication = "{name}"
status_interval_ms = 200

[http]
listen = "{http}"

[pipeline]
shutdown_timeout_secs = 10
"#,
        url = db.url,
        name = db.name,
    )
}

/// A pgfanout config for one database, one Redis URL and the given tables
/// (`(source, key template)`), with fast status updates for tests.
pub fn redis_config(db: &TestDatabase, redis_url: &str, http: &str, tables: &[(&str, &str)]) -> String {
    let mut config = format!(
        "{}\n[[sink]]\nname = \"{name}\"\nkind = \"redis\"\nurl = \"{redis_url}\"\n",
        source_config(db, &db.name, http),
        name = db.name,
    );
    for (source, key) in tables {
        config.push_str(&format!("\n[[sink.table]]\nsource = \"{source}\"\nkey = \"{key}\"\n"));
    }
    config
}

/// A `redis-server` process of a test's own (stopped on drop, even when the
/// test fails), for tests that pause or stop the store. Its data survives
/// [`OwnRedisServer::kill`] + [`OwnRedisServer::restart`] (append-only file,
/// fsync on every write).
pub struct OwnRedisServer {
    /// `redis://` address of the server.
    pub url: String,
    port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl OwnRedisServer {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> OwnRedisServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("pgfanout-tests-redis-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = OwnRedisServer { url: format!("redis://127.0.0.1:{port}/0"), port, child: None, dir };
        server.restart().await;
        server
    }

    /// Stops the server at once (SIGKILL), as a crash or an outage would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data; waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        let child = Command::new(required_env("PGFANOUT_TEST_REDIS_SERVER"))
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start PGFANOUT_TEST_REDIS_SERVER");
        self.child = Some(child);
        wait_until("the test's own redis-server answers", Duration::from_secs(10), || async {
            redis::Client::open(self.url.as_str()).unwrap().get_multiplexed_async_connection().await.is_ok()
        })
        .await;
    }
}

impl Drop for OwnRedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits (up to 60 s) until the hashes under `prefix` equal `table`'s rows;
/// panics with the difference and pgfanout's log otherwise.
pub async fn wait_for_redis_match(
    db: &TestDatabase,
    table: &str,
    key_column: &str,
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    pgfanout: &Pgfanout,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let expected = table_as_text(db, table, key_column).await;
        let actual = redis_hashes(redis, prefix).await;
        if expected == actual {
            return;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = expected.keys().filter(|k| !actual.contains_key(*k)).take(5).collect();
            let extra: Vec<_> = actual.keys().filter(|k| !expected.contains_key(*k)).take(5).collect();
            let differing: Vec<_> = expected
                .iter()
                .filter(|(k, v)| actual.get(*k).is_some_and(|a| a != *v))
                .map(|(k, _)| k)
                .take(5)
                .collect();
            panic!(
                "redis never matched {table}: {} rows vs {} keys, missing {missing:?}, extra {extra:?}, \
                 differing {differing:?}\nlog:\n{}",
                expected.len(),
                actual.len(),
                pgfanout.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The least-privilege role of `sql/pgfanout_role.sql` for `db`: what a
/// pgfanout config's `[source]` uses in place of the superuser.
pub struct RoleLogin {
    /// `db`'s URL with the role as its user (no password in it).
    pub url: String,
    /// The role's password, for `PGFANOUT_SOURCE__PASSWORD`.
    pub password: String,
}

impl RoleLogin {
    /// The environment giving pgfanout the role's password.
    pub fn env(&self) -> [(&str, &str); 1] {
        [("PGFANOUT_SOURCE__PASSWORD", self.password.as_str())]
    }
}

/// Runs the repository's role and publication scripts for `db` and `tables`
/// (`schema.table,…`), as an operator would: the role (named after the
/// database) gets LOGIN, REPLICATION and SELECT on those tables only; the
/// tables' owner (the test's superuser here) makes the publication, named
/// like the database.
pub fn least_privilege_role(db: &TestDatabase, tables: &str) -> RoleLogin {
    let role = format!("{}_role", db.name);
    let password = format!("{}-password", db.name);
    run_sql_script(
        db,
        "postgres",
        "pgfanout_role.sql",
        &[("role", &role), ("password", &password), ("tables", tables)],
    );
    run_sql_script(db, "postgres", "pgfanout_publication.sql", &[("publication", &db.name), ("tables", tables)]);
    let (scheme, rest) = db.url.split_once("://").expect("a URL");
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    RoleLogin { url: format!("{scheme}://{role}@{host}"), password }
}

/// Runs one of the repository's `sql/` scripts with psql as `user` on `db`,
/// with `-v name=value` variables; panics with psql's output when it fails.
pub fn run_sql_script(db: &TestDatabase, user: &str, script: &str, variables: &[(&str, &str)]) {
    let psql = PathBuf::from(required_env("PGFANOUT_TEST_PG_BIN")).join("psql");
    let mut command = Command::new(psql);
    command.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"]).arg(required_env("PGFANOUT_TEST_PG_SOCKET_DIR")).args([
        "-p",
        &required_env("PGFANOUT_TEST_PG_PORT"),
        "-U",
        user,
        "-d",
        &db.name,
    ]);
    for (name, value) in variables {
        command.args(["-v", &format!("{name}={value}")]);
    }
    let script_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql").join(script);
    let output = command.arg("-f").arg(&script_path).output().expect("cannot run psql");
    assert!(
        output.status.success(),
        "sql/{script} as {user} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
