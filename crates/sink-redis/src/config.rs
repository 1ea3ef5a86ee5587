//! Configuration of a Redis sink (`kind = "redis"` in a `[[sink]]` table).

use std::time::Duration;

use std::collections::HashMap;

use pgfanout_core::{DeliveryConfig, MappingConfig, TableMapping, TlsConfig};
use serde::Deserialize;

use crate::encode::RowFormat;

/// One Redis sink.
///
/// ```toml
/// [[sink]]
/// name = "cache"
/// kind = "redis"
/// url = "redis://127.0.0.1:6379/0"
/// [[sink.table]]
/// source = "public.reservations"
/// key = "reservation:{id}"
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkConfig {
    /// Sink name, unique in the config; letters, digits, `_` and `-`.
    /// Example: `"cache"`.
    pub name: String,
    /// Server URL, `redis://[user@]host:port/db` (or `rediss://`); the password
    /// comes from `PGFANOUT_SINK_<NAME>__PASSWORD`, never from the file.
    /// Example: `"redis://127.0.0.1:6379/0"`.
    pub url: String,
    /// Tables this sink receives and how each maps to keys. At least one.
    #[serde(rename = "table")]
    pub tables: Vec<RedisTableConfig>,
    /// Key holding the sink's checkpoint (end LSN of the last applied
    /// transaction). Default: `pgfanout:checkpoint:<name>`.
    #[serde(default)]
    pub checkpoint_key: Option<String>,
    /// Whether each row stores its change's version and the sink refuses to
    /// write a row older than the one stored, so a replay never moves a key
    /// backwards. Readers see the version as one more field (hash) or
    /// property (JSON). Default: true.
    #[serde(default = "default_true")]
    pub version_guard: bool,
    /// Name of the field or JSON property holding a row's version: a
    /// 25-character string, commit LSN then position in the transaction,
    /// in hex, that sorts in stream order; no column of a mapped table may
    /// have this name. Default: `"_pgfanout_version"`.
    #[serde(default = "default_version_field")]
    pub version_field: String,
    /// Prefix of tombstone keys (tables with `tombstone_secs`): the deleted
    /// row's key follows it. Default: `"pgfanout:tombstone:"`.
    #[serde(default = "default_tombstone_prefix")]
    pub tombstone_prefix: String,
    /// Prefix of the sets tracking each table's row keys for TRUNCATE
    /// (`truncate = "index_set"`); `schema.table` follows it. Default:
    /// `"pgfanout:index:<name>:"`.
    #[serde(default)]
    pub index_prefix: Option<String>,
    /// Milliseconds to wait for Redis to answer one batch before the batch is
    /// retried on a new connection. Default: 30000.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Certificate files for `rediss://`, `[sink.tls]` (`ca_file`,
    /// `cert_file`, `key_file`). The server's certificate is verified against
    /// `ca_file`, else the system's roots, and must name the URL's host.
    /// Default: none.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Lanes and error policy, `[sink.delivery]`.
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

/// How one source table maps to Redis keys.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedisTableConfig {
    /// Source table, `schema.table` (a bare name means `public`).
    /// Example: `"public.reservations"`.
    pub source: String,
    /// Key template: `{column}` is replaced by that column's text value
    /// (`{{`/`}}` for literal braces). Default: the table name (qualified
    /// when not in `public`), then each primary-key column, joined by `:`,
    /// e.g. `reservations:42`. Example: `"reservation:{id}"`. Columns are
    /// named as the sink sees them (after `rename`).
    #[serde(default)]
    pub key: Option<String>,
    /// Only these columns are written (key columns always are).
    /// Example: `["id", "status", "total_price"]`.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// These columns are never written (key columns always are).
    /// Example: `["notes"]`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Field names in Redis for source columns. Example: `{ total_price = "price" }`.
    #[serde(default)]
    pub rename: HashMap<String, String>,
    /// Rows kept in Redis: a boolean expression over column values (source
    /// names), e.g. `'status != "cancelled" && total_price > 100'`.
    #[serde(default)]
    pub filter: Option<String>,
    /// How a row is stored: `"hash"` (one field per non-NULL column) or
    /// `"json"` (a string holding a JSON object: column name → text value,
    /// `null` for NULL). Default: `"hash"`.
    #[serde(default)]
    pub format: RowFormat,
    /// Seconds a row's key lives after each write (`EXPIRE`); none by default.
    /// Example: `3600`.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// When set, a delete leaves a tombstone key (`tombstone_prefix` + the
    /// row's key) holding the delete's version for this many seconds, so a
    /// replayed older write cannot bring the row back while it lives.
    /// Needs `version_guard`. Example: `86400`.
    #[serde(default)]
    pub tombstone_secs: Option<u64>,
    /// How TRUNCATE finds the table's keys: `"index_set"` (every write adds
    /// its key to a set, `index_prefix` + `schema.table` or `index_key`;
    /// truncate deletes the members) or `"scan"` (no set to maintain; a
    /// truncate scans the keyspace with `SCAN … MATCH`, the key template
    /// with each column as `*`, or `scan_match`). Default: `"index_set"`.
    /// Switching an existing table to `index_set` needs a rebuild to list
    /// the keys written before.
    #[serde(default)]
    pub truncate: TruncateMode,
    /// Name of the table's index set, instead of the default.
    /// Example: `"idx:reservations"`.
    #[serde(default)]
    pub index_key: Option<String>,
    /// `SCAN` pattern for `truncate = "scan"`, instead of the one derived
    /// from the key template. Example: `"reservation:*"`.
    #[serde(default)]
    pub scan_match: Option<String>,
    /// Stream receiving one event per change (`XADD`, in the same round trip
    /// as the write): fields `op`, `table`, `key`, `commit_lsn`, `ordinal`,
    /// `commit_time_unix_micros`, `new` and `old` (JSON rows in the same
    /// format as dead letters: unchanged TOAST values are marked, not
    /// omitted). Each change once, in commit order: the entry id is
    /// `<commit_lsn as a number>-<ordinal>`, and a re-delivered change (after
    /// a crash) finds its id taken and adds nothing. Needs
    /// `[sink.delivery] lanes = 1`. Example: `"events:reservations"`.
    #[serde(default)]
    pub stream: Option<String>,
    /// Keys deleted on any change to the table, rendered from the old and
    /// the new row (sink column names), e.g. `["search:city:{city_id}"]`.
    #[serde(default)]
    pub invalidate: Vec<String>,
    /// Sets whose members are deleted (then the set) on any change, e.g. a
    /// set tracking the cached search pages of a city:
    /// `["search:index:{city_id}"]`.
    #[serde(default)]
    pub invalidate_sets: Vec<String>,
    /// Approximate cap on the stream's length (`MAXLEN ~`). Default: 100000.
    #[serde(default = "default_stream_max_len")]
    pub stream_max_len: u64,
}

fn default_stream_max_len() -> u64 {
    100_000
}

/// How TRUNCATE finds a table's keys in Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncateMode {
    /// The members of a set every write maintains.
    #[default]
    IndexSet,
    /// A `SCAN` of the keyspace with a pattern.
    Scan,
}

fn default_true() -> bool {
    true
}

fn default_version_field() -> String {
    "_pgfanout_version".into()
}

fn default_tombstone_prefix() -> String {
    "pgfanout:tombstone:".into()
}

impl RedisTableConfig {
    /// The table's column mapping and row filter.
    pub fn mapping(&self) -> MappingConfig {
        MappingConfig {
            columns: self.columns.clone(),
            exclude: self.exclude.clone(),
            rename: self.rename.clone(),
            filter: self.filter.clone(),
        }
    }
}

fn default_response_timeout_ms() -> u64 {
    30_000
}

impl RedisSinkConfig {
    /// The checkpoint key, defaulted.
    pub fn checkpoint_key(&self) -> String {
        self.checkpoint_key.clone().unwrap_or_else(|| format!("pgfanout:checkpoint:{}", self.name))
    }

    /// The index set prefix, defaulted.
    pub fn index_prefix(&self) -> String {
        self.index_prefix.clone().unwrap_or_else(|| format!("pgfanout:index:{}:", self.name))
    }

    /// How long one batch may take.
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }

    /// Checks what serde cannot: names, templates, duplicates. Each problem
    /// is one message saying what to change.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.name.is_empty() || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            problems.push(format!("sink name {:?} must be non-empty and use only letters, digits, _ and -", self.name));
        }
        if !(self.url.starts_with("redis://") || self.url.starts_with("rediss://") || self.url.starts_with("unix://")) {
            problems.push(format!("sink {}: url must start with redis://, rediss:// or unix://", self.name));
        }
        if let Some(tls) = &self.tls {
            if !self.url.starts_with("rediss://") {
                problems.push(format!(
                    "sink {}: [sink.tls] is set but the url does not start with rediss://; use rediss:// to connect with TLS",
                    self.name
                ));
            }
            problems.extend(tls.problems(&self.name));
        }
        if self.version_guard && self.version_field.is_empty() {
            problems.push(format!("sink {}: version_field must be a field name", self.name));
        }
        if self.tables.is_empty() {
            problems.push(format!("sink {}: add at least one [[sink.table]] with a source", self.name));
        }
        let mut seen = std::collections::HashSet::new();
        for table in &self.tables {
            if !seen.insert(&table.source) {
                problems.push(format!("sink {}: table {} is listed twice", self.name, table.source));
            }
            if let Some(key) = &table.key {
                if let Err(err) = crate::encode::KeyTemplate::parse(key) {
                    problems.push(format!("sink {}: table {}: {err}", self.name, table.source));
                }
            }
        }
        for table in &self.tables {
            if let Err(err) = TableMapping::new(table.mapping()) {
                problems.push(format!("sink {}: table {}: {err}", self.name, table.source));
            }
            for template in table.invalidate.iter().chain(&table.invalidate_sets) {
                if let Err(reason) = crate::encode::KeyTemplate::parse(template) {
                    problems.push(format!("sink {}: table {}: invalidate: {reason}", self.name, table.source));
                }
            }
            if table.ttl_secs == Some(0) {
                problems.push(format!("sink {}: table {}: ttl_secs must be at least 1", self.name, table.source));
            }
            if table.tombstone_secs == Some(0) {
                problems.push(format!("sink {}: table {}: tombstone_secs must be at least 1", self.name, table.source));
            }
            if table.tombstone_secs.is_some() && !self.version_guard {
                problems.push(format!(
                    "sink {}: table {}: tombstone_secs needs version_guard = true (a tombstone holds a version)",
                    self.name, table.source
                ));
            }
            match table.truncate {
                TruncateMode::IndexSet if table.scan_match.is_some() => problems.push(format!(
                    "sink {}: table {}: scan_match applies to truncate = \"scan\" only",
                    self.name, table.source
                )),
                TruncateMode::Scan if table.index_key.is_some() => problems.push(format!(
                    "sink {}: table {}: index_key applies to truncate = \"index_set\" only",
                    self.name, table.source
                )),
                _ => {}
            }
            if table.stream.as_deref().is_some_and(str::is_empty) {
                problems.push(format!("sink {}: table {}: stream must be a key name", self.name, table.source));
            }
            if table.stream.is_some() && self.delivery.lanes > 1 {
                problems.push(format!(
                    "sink {}: table {}: an event stream needs [sink.delivery] lanes = 1 (not {}): entry ids are \
                     the changes' versions, which Redis accepts only in order",
                    self.name, table.source, self.delivery.lanes
                ));
            }
        }
        problems.extend(self.delivery.validate(&self.name));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
