//! pgfanout's configuration: one TOML file, every value overridable from the
//! environment as `PGFANOUT_<SECTION>__<KEY>` (e.g. `PGFANOUT_SOURCE__URL`).
//!
//! Secrets (the source password) come only from the environment or a file
//! named in the config, are held as `SecretString` and are never logged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use pgfanout_core::{SpillSettings, WorkerSettings};

pub use crate::sinks::SinkConfig;
pub use pgfanout_source::SourceConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Sections that environment variables may override.
const ENV_SECTIONS: [&str; 4] = ["source__", "http__", "pipeline__", "archive__"];

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The PostgreSQL server to replicate from.
    pub source: SourceConfig,
    /// Metrics and health endpoint.
    #[serde(default)]
    pub http: HttpConfig,
    /// Batching and queueing shared by every sink worker.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// The stores to keep in sync; at least one.
    #[serde(rename = "sink", default)]
    pub sinks: Vec<SinkConfig>,
    /// Copying the rows tables already hold (first start, new tables).
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    /// The change archive `replay` reads; off unless the section is present.
    #[serde(default)]
    pub archive: Option<ArchiveConfig>,
}

/// `[archive]`: a local log of every routed transaction, so that `replay
/// --from <LSN>` can apply past changes again. It acknowledges like a sink:
/// the slot is confirmed past a transaction only once it is durable here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Folder of the archive's segment files, on a disk that outlives the
    /// process (a persistent volume). Required. Example: `/var/lib/pgfanout/archive`.
    pub path: PathBuf,
    /// Megabytes per segment file; retention removes whole segments. Default: 64.
    #[serde(default = "default_archive_segment_mb")]
    pub segment_mb: u64,
    /// `batch`: one fsync per applied batch, before it is acknowledged
    /// (survives power loss); `os`: leave write-back to the OS (survives a
    /// crash of pgfanout, not of the machine). Default: `batch`.
    #[serde(default)]
    pub fsync: ArchiveFsync,
    /// Keep at most this many megabytes, removing the oldest segments first.
    /// Default: no size limit.
    pub retention_mb: Option<u64>,
    /// Remove segments last written more than this many hours ago; 0 keeps
    /// them forever. Default: 168 (7 days).
    #[serde(default = "default_archive_retention_hours")]
    pub retention_hours: u64,
}

/// `[archive] fsync` values.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveFsync {
    /// One fsync per applied batch.
    #[default]
    Batch,
    /// No fsync; the OS writes back.
    Os,
}

impl ArchiveConfig {
    /// What serde cannot check: sizes that retention can work with.
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.path.as_os_str().is_empty() {
            problems.push("archive.path: must not be empty, e.g. /var/lib/pgfanout/archive".to_owned());
        }
        if !(1..=4096).contains(&self.segment_mb) {
            problems.push(format!("archive.segment_mb: {} is not between 1 and 4096 (default 64)", self.segment_mb));
        }
        if let Some(retention_mb) = self.retention_mb.filter(|&mb| mb < self.segment_mb.max(1)) {
            problems.push(format!(
                "archive.retention_mb ({retention_mb}) is below archive.segment_mb ({}): retention removes \
                 whole segments; raise retention_mb to a few segments or lower segment_mb",
                self.segment_mb
            ));
        }
        problems
    }

    /// The archive writer's options.
    pub fn options(&self) -> pgfanout_archive::ArchiveOptions {
        pgfanout_archive::ArchiveOptions {
            segment_bytes: self.segment_mb.max(1).saturating_mul(1024 * 1024),
            fsync: match self.fsync {
                ArchiveFsync::Batch => pgfanout_archive::FsyncPolicy::Batch,
                ArchiveFsync::Os => pgfanout_archive::FsyncPolicy::Os,
            },
            retention: pgfanout_archive::Retention {
                max_bytes: self.retention_mb.map(|mb| mb.saturating_mul(1024 * 1024)),
                max_age: (self.retention_hours > 0).then(|| Duration::from_secs(self.retention_hours * 3600)),
            },
        }
    }
}

/// The longest `source.busy_read_pause_us` accepted (100 ms).
const MAX_BUSY_READ_PAUSE_US: u64 = 100_000;

/// `[snapshot]`: the copy of existing rows into a sink that starts without
/// them (no checkpoint yet, or a table newly added to its config).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Copy existing rows at all. With `false`, a new sink or table only
    /// gets the changes made from now on. Default: true.
    #[serde(default = "default_snapshot_enabled")]
    pub enabled: bool,
    /// Tables copied at the same time, over all sinks; each holds
    /// 1 + `readers_per_table` PostgreSQL connections while it copies (the
    /// readers read the next chunks while the other merges the last; each
    /// counts against `max_wal_senders`). Default: 2.
    #[serde(default = "default_parallel_tables")]
    pub parallel_tables: usize,
    /// Rows per chunk (one short read transaction each; larger chunks
    /// spread each chunk's two watermark round trips over more rows). A
    /// plain table without TOASTed values is read by heap block range, in
    /// chunks of about this many rows by its statistics. Default: 20000.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: usize,
    /// Megabytes of values per chunk at most (the row crossing it ends the
    /// chunk; a chunk of heap blocks spans 8 MB of heap at most). Default: 8.
    #[serde(default = "default_chunk_mb")]
    pub chunk_mb: usize,
    /// Chunks of a table merged while the oldest one's high watermark
    /// travels through the replication stream (1: one at a time; the next
    /// chunk is read meanwhile all the same). Each holds up to a chunk of
    /// rows in memory. Pays off when the stream is slow to bring watermarks
    /// back. Default: 1.
    #[serde(default = "default_chunks_in_flight")]
    pub chunks_in_flight: usize,
    /// Connections reading chunks of one table at the same time. A plain
    /// table without TOASTed values (read by heap block range) is read by
    /// this many, each taking every `readers_per_table`-th chunk, so the
    /// server reads it on as many cores; a table read in key order has one
    /// reader. Each holds up to two chunks of rows in memory. Default: 2.
    #[serde(default = "default_readers_per_table")]
    pub readers_per_table: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            enabled: default_snapshot_enabled(),
            parallel_tables: default_parallel_tables(),
            chunk_rows: default_chunk_rows(),
            chunk_mb: default_chunk_mb(),
            chunks_in_flight: default_chunks_in_flight(),
            readers_per_table: default_readers_per_table(),
        }
    }
}

fn default_archive_segment_mb() -> u64 {
    64
}
fn default_archive_retention_hours() -> u64 {
    168
}
fn default_snapshot_enabled() -> bool {
    true
}
fn default_parallel_tables() -> usize {
    2
}
fn default_chunk_rows() -> usize {
    20_000
}
fn default_chunk_mb() -> usize {
    8
}
fn default_chunks_in_flight() -> usize {
    1
}
fn default_readers_per_table() -> usize {
    2
}

/// `[http]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address serving `/metrics`, `/healthz`, `/readyz` and `/rebuild` (what `pgfanout rebuild`
    /// talks to). Default: `127.0.0.1:9187`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `/healthz` fails once a sink with work pending has made no progress
    /// for this long (seconds): the pipeline is wedged, a restart may help.
    /// Default: 300.
    #[serde(default = "default_wedged_after_secs")]
    pub wedged_after_secs: u64,
}

/// `[pipeline]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Transactions queued per sink before reading from PostgreSQL pauses. Default: 1024.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Megabytes of changes queued per sink (approximate, including the batch
    /// being applied) before reading from PostgreSQL pauses. With
    /// `spill_memory_mb`, this bounds the memory a slow sink can cost: peak
    /// RSS stays under about 12 MB + 3 × (`spill_memory_mb` + `queue_mb`)
    /// per sink (measured while a 10,000,000-row transaction is spilled and
    /// applied: 57-58 MB with the defaults, 8 and 8; 67-71 MB with
    /// `spill_memory_mb = 16`; keep the two together at 16 or less for
    /// under 64 MB).
    /// Default: 8.
    #[serde(default = "default_queue_mb")]
    pub queue_mb: usize,
    /// Most changes per sink batch: what queued up while the sink was busy
    /// is applied together, up to this many. Default: 1000.
    #[serde(default = "default_max_batch_changes")]
    pub max_batch_changes: usize,
    /// Milliseconds a batch waits for more transactions after its first
    /// one. 0 waits for none: an idle sink applies a lone transaction at
    /// once, a busy one batches what queued up meanwhile. Default: 0.
    #[serde(default = "default_max_batch_delay_ms")]
    pub max_batch_delay_ms: u64,
    /// Seconds to drain in-flight batches on shutdown before giving up. Default: 30.
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// Megabytes of changes of transactions not yet complete (streamed ones,
    /// and ordinary ones past 1,000 changes or 4 MB) held in memory before the
    /// largest is written to a temporary file; such a transaction is read
    /// back and applied in pieces. Default: 8.
    #[serde(default = "default_spill_memory_mb")]
    pub spill_memory_mb: usize,
    /// Folder for those temporary files. Default: the system's temp folder.
    #[serde(default)]
    pub spill_dir: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: default_listen(), wedged_after_secs: default_wedged_after_secs() }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            queue_capacity: default_queue_capacity(),
            queue_mb: default_queue_mb(),
            max_batch_changes: default_max_batch_changes(),
            max_batch_delay_ms: default_max_batch_delay_ms(),
            shutdown_timeout_secs: default_shutdown_timeout_secs(),
            spill_memory_mb: default_spill_memory_mb(),
            spill_dir: None,
        }
    }
}

fn default_spill_memory_mb() -> usize {
    8
}
fn default_wedged_after_secs() -> u64 {
    300
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9187))
}
fn default_queue_mb() -> usize {
    8
}
fn default_queue_capacity() -> usize {
    1024
}
fn default_max_batch_changes() -> usize {
    1000
}
fn default_max_batch_delay_ms() -> u64 {
    0
}
fn default_shutdown_timeout_secs() -> u64 {
    30
}

impl Config {
    /// Reads `path`, applies environment overrides and validates.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        if !path.exists() {
            bail!("config file {} does not exist; pass --config with the path of a TOML file", path.display());
        }
        // A password in the file ends up in backups, diffs and ConfigMaps:
        // only the environment or a secret file may give it.
        if Figment::from(Toml::file_exact(path)).find_value("source.password").is_ok() {
            return Err(invalid_config(
                path,
                "source.password: do not write the password in the config file; \
                 set PGFANOUT_SOURCE__PASSWORD or source.password_file instead",
            ));
        }
        let environment = Env::prefixed("PGFANOUT_")
            .filter(|key| ENV_SECTIONS.iter().any(|section| key.as_str().to_ascii_lowercase().starts_with(section)))
            .split("__");
        let mut config: Config = Figment::new()
            .merge(Toml::file_exact(path))
            .merge(environment)
            .extract()
            .map_err(|err| invalid_config(path, &describe_figment_error(err)))?;
        let secret_problems = crate::secrets::apply_sink_passwords(&mut config);
        if !secret_problems.is_empty() {
            return Err(invalid_config(path, &secret_problems.join("\n")));
        }
        config.validate().map_err(|err| invalid_config(path, &format!("{err:#}")))?;
        crate::secrets::warn_world_readable(path, &config);
        Ok(config)
    }

    /// Checks what serde cannot; lists every problem at once.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if let Err(err) = pg_replication::validate_slot_name(&self.source.slot) {
            problems.push(format!("source.slot: {err}"));
        }
        if self.source.publication.is_empty() {
            problems.push("source.publication: must not be empty".to_owned());
        }
        if self.source.password.is_some() && self.source.password_file.is_some() {
            problems.push("source: set either password (environment) or password_file, not both".to_owned());
        }
        if self.source.busy_read_pause_us > MAX_BUSY_READ_PAUSE_US {
            problems.push(format!(
                "source.busy_read_pause_us: {} is longer than {MAX_BUSY_READ_PAUSE_US} (100 ms): a busy stream would \
                 be read that rarely; the default, 500, is what pays over TCP (0 turns it off)",
                self.source.busy_read_pause_us
            ));
        }
        if self.sinks.is_empty() {
            problems.push("no [[sink]] configured: add at least one, e.g. kind = \"redis\"".to_owned());
        }
        if self.snapshot.parallel_tables == 0
            || self.snapshot.chunk_rows == 0
            || self.snapshot.chunk_mb == 0
            || self.snapshot.chunks_in_flight == 0
            || self.snapshot.readers_per_table == 0
        {
            problems.push(
                "snapshot.parallel_tables, snapshot.chunk_rows, snapshot.chunk_mb, snapshot.chunks_in_flight and snapshot.readers_per_table must be at least 1".to_owned(),
            );
        }
        if self.pipeline.max_batch_changes == 0 || self.pipeline.queue_capacity == 0 {
            problems.push("pipeline.max_batch_changes and pipeline.queue_capacity must be at least 1".to_owned());
        }
        problems.extend(self.archive.as_ref().map(ArchiveConfig::validate).unwrap_or_default());
        let mut names = std::collections::HashSet::new();
        for sink in &self.sinks {
            if !names.insert(sink.name()) {
                problems.push(format!("sink name {} is used twice", sink.name()));
            }
            problems.extend(sink.validate());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("\n"))
        }
    }

    /// The source password from the environment or the password file.
    pub fn source_password(&self) -> anyhow::Result<Option<SecretString>> {
        Ok(self.source.password()?)
    }

    /// Spill settings for streamed transactions.
    pub fn spill_settings(&self) -> SpillSettings {
        SpillSettings {
            memory_limit: self.pipeline.spill_memory_mb.saturating_mul(1024 * 1024),
            directory: self.pipeline.spill_dir.clone(),
        }
    }

    /// Settings for every sink worker.
    pub fn worker_settings(&self) -> WorkerSettings {
        WorkerSettings {
            queue_capacity: self.pipeline.queue_capacity,
            queue_bytes: self.pipeline.queue_mb.saturating_mul(1024 * 1024),
            max_batch_changes: self.pipeline.max_batch_changes,
            max_batch_delay: Duration::from_millis(self.pipeline.max_batch_delay_ms),
            ..WorkerSettings::default()
        }
    }
}

/// Exposes the secret only to hand it to the connection.
pub fn expose(secret: &SecretString) -> &str {
    secret.expose_secret()
}

/// One line per problem, each naming the file, so that every line of the
/// error stands on its own (`check` and `run` print them as they are).
fn invalid_config(path: &Path, problems: &str) -> anyhow::Error {
    let lines: Vec<String> =
        problems.lines().map(|problem| format!("invalid config {}: {problem}", path.display())).collect();
    anyhow::anyhow!("{}", lines.join("\n"))
}

/// One line per figment error, each naming the key and where its value came from.
fn describe_figment_error(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let key = if e.path.is_empty() { String::new() } else { format!("key {}: ", e.path.join(".")) };
            let origin = e.metadata.as_ref().map(|m| format!(" (from {})", m.name)).unwrap_or_default();
            format!("{key}{}{origin}", squeeze_parse_error(&e.kind.to_string()))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A TOML parse error on one line: its position and what was expected, without the
/// source excerpt (`3 | [source`) and caret (`  |   ^`) lines, which only
/// read well in a terminal. Other messages pass through unchanged.
fn squeeze_parse_error(message: &str) -> String {
    let is_excerpt = |line: &str| {
        let line = line.trim();
        line.starts_with('|') || line.split_once(" |").is_some_and(|(number, _)| number.parse::<u32>().is_ok())
    };
    let mut lines = message.lines().map(str::trim).filter(|line| !line.is_empty() && !is_excerpt(line));
    let first = lines.next().unwrap_or_default().to_owned();
    let rest: Vec<&str> = lines.collect();
    if rest.is_empty() {
        first
    } else {
        format!("{first}: {}", rest.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> anyhow::Result<Config> {
        let dir = std::env::temp_dir().join(format!("pgfanout-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{:x}.toml", toml.len() * 31 + toml.as_bytes()[toml.len() / 2] as usize));
        std::fs::write(&path, toml)?;
        let result = Config::load(&path);
        let _ = std::fs::remove_file(&path);
        result
    }

    const MINIMAL: &str = r#"
[source]
url = "postgres://pgfanout@db/app"
[[sink]]
name = "cache"
kind = "redis"
url = "redis://127.0.0.1:6379/0"
[[sink.table]]
source = "public.reservations"
key = "reservation:{id}"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.source.slot, "pgfanout");
        assert_eq!(config.http.listen, default_listen());
        assert_eq!(config.sinks.len(), 1);
        assert_eq!(config.sinks[0].name(), "cache");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = parse(&MINIMAL.replace("slot_typo", "").replace("[source]", "[source]\nslto = \"x\"")).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("slto"), "{text}");
    }

    #[test]
    fn a_busy_read_pause_longer_than_100_ms_is_refused() {
        let slow = MINIMAL.replace("[source]", "[source]\nbusy_read_pause_us = 250000");
        let text = format!("{:#}", parse(&slow).unwrap_err());
        assert!(text.contains("source.busy_read_pause_us: 250000 is longer than 100000"), "{text}");
        assert!(parse(&MINIMAL.replace("[source]", "[source]\nbusy_read_pause_us = 0")).is_ok());
    }

    #[test]
    fn semantic_problems_are_listed_together() {
        let bad = MINIMAL.replace("name = \"cache\"", "name = \"bad name\"").replace("reservation:{id}", "no-column");
        let text = format!("{:#}", parse(&bad).unwrap_err());
        assert!(text.contains("bad name"), "{text}");
        assert!(text.contains("names no {column}"), "{text}");
    }

    #[test]
    fn every_problem_is_one_line_naming_the_file() {
        // (Content unlike the other tests': `parse` names the file after it.)
        let bad = MINIMAL.replace("name = \"cache\"", "name = \"bad/name\"").replace("reservation:{id}", "nocolumn");
        let text = format!("{:#}", parse(&bad).unwrap_err());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines.iter().all(|line| line.starts_with("invalid config ") && line.contains(".toml: ")), "{text}");
    }

    #[test]
    fn toml_syntax_errors_are_one_line_with_their_position() {
        let text = format!("{:#}", parse("[source\nurl = 1\n").unwrap_err());
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("TOML parse error at line 1"), "{text}");
        assert!(text.contains("invalid table header"), "{text}");
        assert!(!text.contains("[source"), "the source excerpt is left out: {text}");
    }

    #[test]
    fn scylla_sinks_parse_with_their_query_tables() {
        let scylla = r#"
[source]
url = "postgres://pgfanout@db/app"
[[sink]]
name = "analytics"
kind = "scylla"
nodes = ["127.0.0.1:9042"]
keyspace = "rentals"
write_timestamps = false
[[sink.table]]
source = "public.reservations"
[[sink.table.target]]
table = "reservations_by_guest"
partition_key = ["guest_id"]
clustering_key = ["id"]
"#;
        let config = parse(scylla).unwrap();
        let SinkConfig::Scylla(sink) = &config.sinks[0] else { panic!("{:?}", config.sinks[0]) };
        assert!(!sink.write_timestamps);
        assert_eq!(sink.tables[0].targets[0].clustering_key, ["id"]);
        let text = format!("{:#}", parse(&scylla.replace("[\"guest_id\"]", "[]")).unwrap_err());
        assert!(text.contains("partition_key must name at least one column"), "{text}");
    }

    #[test]
    fn shipped_example_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let example = "deploy/pgfanout.example.toml";
        let config = Config::load(&root.join(example)).unwrap_or_else(|err| panic!("{example}: {err:#}"));
        assert_eq!(config.sinks.len(), 1, "{example} should configure the example redis sink");
    }
}
