//! Configuration of a Cassandra/ScyllaDB sink (`kind = "scylla"` in a `[[sink]]` table).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use pgfanout_core::{DeliveryConfig, MappingConfig, TableMapping, TlsConfig};
use scylla::statement::Consistency;
use serde::Deserialize;

/// One Cassandra/ScyllaDB sink.
///
/// ```toml
/// [[sink]]
/// name = "analytics"
/// kind = "scylla"
/// nodes = ["10.0.0.5:9042", "10.0.0.6:9042"]
/// keyspace = "rentals"
/// [[sink.table]]
/// source = "public.reservations"
/// [[sink.table.target]]
/// table = "reservations_by_guest"
/// partition_key = ["guest_id"]
/// clustering_key = ["id"]
/// [[sink.table.target]]
/// table = "reservations_by_property"
/// partition_key = ["property_id"]
/// clustering_key = ["check_in", "id"]
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScyllaSinkConfig {
    /// Sink name, unique in the config; letters, digits, `_` and `-`.
    /// Example: `"analytics"`.
    pub name: String,
    /// Contact points, `host:port`; the driver discovers the rest of the
    /// cluster from them. Example: `["10.0.0.5:9042"]`.
    pub nodes: Vec<String>,
    /// Keyspace of every target table and of the checkpoint table.
    /// Example: `"rentals"`.
    pub keyspace: String,
    /// Tables this sink receives and the query tables each feeds. At least one.
    #[serde(rename = "table")]
    pub tables: Vec<ScyllaTableConfig>,
    /// Consistency of every write and of the checkpoint read: `any`, `one`,
    /// `two`, `three`, `quorum`, `all`, `local_quorum`, `each_quorum`,
    /// `local_one`. Default: `"local_quorum"`.
    #[serde(default = "default_consistency")]
    pub consistency: String,
    /// Write each change with `USING TIMESTAMP` derived from its version (see
    /// the crate docs for the mapping), so deletes and re-sent changes
    /// resolve by commit order. Turn off only for servers without
    /// `USING TIMESTAMP`; writes then carry the coordinator's time.
    /// Default: true.
    #[serde(default = "default_true")]
    pub write_timestamps: bool,
    /// Create the keyspace (with `replication`) and the target tables when
    /// missing (`CREATE … IF NOT EXISTS`, columns typed from PostgreSQL), and
    /// add columns a table lacks when PostgreSQL announces new ones (`ALTER
    /// TABLE … ADD`). Off: tables are managed by hand. Default: false.
    #[serde(default)]
    pub manage_schema: bool,
    /// Replication map for a created keyspace (with `manage_schema`).
    /// Default: `"{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}"`.
    #[serde(default = "default_replication")]
    pub replication: String,
    /// Apply `TRUNCATE` of a source table to its target tables. Off: a
    /// truncate is logged as a warning and skipped (for servers without
    /// `TRUNCATE`). Default: true.
    #[serde(default = "default_true")]
    pub truncate: bool,
    /// Table holding one checkpoint row per sink (created when missing);
    /// beside it `<checkpoint_table>_carried`, what key moves carried over
    /// until the checkpoint (and, with an `[archive]`, its retention)
    /// passes them. At most 40 characters.
    /// Default: `"pgfanout_checkpoints"`.
    #[serde(default = "default_checkpoint_table")]
    pub checkpoint_table: String,
    /// Wait for schema agreement after each schema change (the driver's
    /// `auto_await_schema_agreement`). Default: true; false for servers
    /// without system tables (the in-memory test server).
    #[serde(default = "default_true")]
    pub await_schema_agreement: bool,
    /// Read the cluster's schema (the driver's `fetch_schema_metadata`), used
    /// to find columns a table lacks. Default: true; false for servers
    /// without system tables.
    #[serde(default = "default_true")]
    pub fetch_schema_metadata: bool,
    /// Partitions written concurrently within one batch. Default: 64.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Most statements in one unlogged batch (one partition each); a batch
    /// also stops at 32 KiB of values, under Cassandra's default 50 KiB
    /// `batch_size_fail_threshold`. Default: 100.
    #[serde(default = "default_max_batch_statements")]
    pub max_batch_statements: usize,
    /// Milliseconds one request may take before it counts as failed (and is
    /// retried). Default: 30000.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// User name for password authentication; none by default.
    #[serde(default)]
    pub username: Option<String>,
    /// File whose first line is the password (with `username`), e.g. a
    /// mounted secret. Example: `"/run/secrets/scylla-password"`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS to every node, `[sink.tls]`: its presence turns TLS on (the
    /// nodes' `client_encryption_options`); `ca_file` verifies the nodes
    /// (else the system's roots), `cert_file`/`key_file` are presented when
    /// the nodes require client certificates. The driver connects to the
    /// nodes' addresses, so each node's certificate must name its IP address
    /// (a subjectAltName of type IP). Default: none (plain CQL).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Lanes and error policy, `[sink.delivery]`.
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

/// How one source table maps to CQL tables.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScyllaTableConfig {
    /// Source table, `schema.table` (a bare name means `public`).
    /// Example: `"public.reservations"`.
    pub source: String,
    /// Only these columns are replicated (key columns always are).
    /// Example: `["id", "guest_id", "status"]`.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// These columns are never replicated. Example: `["notes"]`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// CQL column names for source columns. Example: `{ total_price = "price" }`.
    #[serde(default)]
    pub rename: HashMap<String, String>,
    /// Rows replicated: a boolean expression over column values (source
    /// names), e.g. `'status != "cancelled"'`.
    #[serde(default)]
    pub filter: Option<String>,
    /// CQL types of created columns where the default mapping does not suit
    /// (with `manage_schema`), by CQL column name. Values are converted to
    /// the type the column has, so `text` takes anything and `map<text, text>`
    /// takes json objects. Example: `{ total_price = "text", prefs = "map<text, text>" }`.
    #[serde(default)]
    pub types: HashMap<String, String>,
    /// Seconds each written row lives (`USING TTL`); none by default.
    #[serde(default)]
    pub ttl_secs: Option<u32>,
    /// Query tables fed by this source table. Default: one table named like
    /// the source table, keyed by its primary key.
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetTableConfig>,
}

/// One query table: the source row under a primary key of its own.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TargetTableConfig {
    /// CQL table name (in the sink's keyspace). Example: `"reservations_by_guest"`.
    pub table: String,
    /// Partition key columns (CQL names). Example: `["guest_id"]`.
    pub partition_key: Vec<String>,
    /// Clustering columns, in order; together with the partition key they
    /// must identify a source row (include the source's key columns).
    /// Example: `["check_in", "id"]`.
    #[serde(default)]
    pub clustering_key: Vec<String>,
    /// Columns written besides the key; default: every replicated column.
    /// Example: `["status", "total_price"]`.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Seconds rows of this table live; overrides the source table's `ttl_secs`.
    #[serde(default)]
    pub ttl_secs: Option<u32>,
}

impl ScyllaTableConfig {
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

fn default_true() -> bool {
    true
}
fn default_consistency() -> String {
    "local_quorum".into()
}
fn default_replication() -> String {
    "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}".into()
}
fn default_checkpoint_table() -> String {
    "pgfanout_checkpoints".into()
}
fn default_concurrency() -> usize {
    64
}
fn default_max_batch_statements() -> usize {
    100
}
fn default_request_timeout_ms() -> u64 {
    30_000
}

/// Parses a consistency name (case-insensitive).
pub fn parse_consistency(name: &str) -> Option<Consistency> {
    Some(match name.to_ascii_lowercase().as_str() {
        "any" => Consistency::Any,
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        _ => return None,
    })
}

/// Whether `name` is a CQL identifier pgfanout writes unquoted: lower-case
/// letters, digits and `_`, starting with a letter, at most 48 characters
/// (Cassandra's limit for table names).
pub fn is_plain_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name.len() <= 48
}

impl ScyllaSinkConfig {
    /// The configured consistency (validated).
    pub fn consistency(&self) -> Consistency {
        parse_consistency(&self.consistency).unwrap_or(Consistency::LocalQuorum)
    }

    /// How long one request may take.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Checks what serde cannot; each problem is one message saying what to change.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let name = &self.name;
        let mut problems = Vec::new();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            problems.push(format!("sink name {name:?} must be non-empty and use only letters, digits, _ and -"));
        }
        if self.nodes.is_empty() {
            problems.push(format!("sink {name}: nodes must list at least one host:port"));
        }
        if let Some(tls) = &self.tls {
            problems.extend(tls.problems(name));
        }
        for (what, identifier) in [("keyspace", &self.keyspace), ("checkpoint_table", &self.checkpoint_table)] {
            if !is_plain_identifier(identifier) {
                problems.push(format!(
                    "sink {name}: {what} {identifier:?} must be lower-case letters, digits and _, starting with a letter"
                ));
            }
        }
        let carried_table = crate::carried::carried_table(&self.checkpoint_table);
        if is_plain_identifier(&self.checkpoint_table) && !is_plain_identifier(&carried_table) {
            problems.push(format!(
                "sink {name}: checkpoint_table {:?} is too long: the carry log table beside it, {carried_table:?}, \
                 would pass CQL's 48 characters; use at most 40",
                self.checkpoint_table
            ));
        }
        if parse_consistency(&self.consistency).is_none() {
            problems.push(format!(
                "sink {name}: consistency {:?} is not one of any, one, two, three, quorum, all, local_quorum, each_quorum, local_one",
                self.consistency
            ));
        }
        if self.concurrency == 0 || self.max_batch_statements == 0 {
            problems.push(format!("sink {name}: concurrency and max_batch_statements must be at least 1"));
        }
        if self.password_file.is_some() && self.username.is_none() {
            problems.push(format!("sink {name}: password_file needs a username"));
        }
        if self.tables.is_empty() {
            problems.push(format!("sink {name}: add at least one [[sink.table]] with a source"));
        }
        let mut sources = HashSet::new();
        let mut targets = HashSet::new();
        for table in &self.tables {
            let source = &table.source;
            if !sources.insert(source) {
                problems.push(format!("sink {name}: table {source} is listed twice"));
            }
            if let Err(err) = TableMapping::new(table.mapping()) {
                problems.push(format!("sink {name}: table {source}: {err}"));
            }
            for (column, cql_type) in &table.types {
                let allowed = |c: char| c.is_ascii_alphanumeric() || " _<>,".contains(c);
                if cql_type.trim().is_empty() || !cql_type.chars().all(allowed) {
                    problems
                        .push(format!("sink {name}: table {source}: types.{column}: {cql_type:?} is not a CQL type"));
                }
            }
            if table.ttl_secs == Some(0) || table.targets.iter().any(|t| t.ttl_secs == Some(0)) {
                problems.push(format!("sink {name}: table {source}: ttl_secs must be at least 1"));
            }
            for target in &table.targets {
                let label = format!("sink {name}: table {source}: target {}", target.table);
                if !is_plain_identifier(&target.table) {
                    problems.push(format!("{label}: the table name must be lower-case letters, digits and _"));
                }
                if target.table == self.checkpoint_table
                    || target.table == carried_table
                    || !targets.insert(&target.table)
                {
                    problems.push(format!("{label}: the table is fed twice; every target table needs its own name"));
                }
                if target.partition_key.is_empty() {
                    problems.push(format!("{label}: partition_key must name at least one column"));
                }
                let keys: Vec<&String> = target.partition_key.iter().chain(&target.clustering_key).collect();
                let mut seen = HashSet::new();
                for key in &keys {
                    if !seen.insert(*key) {
                        problems.push(format!("{label}: key column {key} is listed twice"));
                    }
                }
                for column in keys.iter().copied().chain(target.columns.iter().flatten()) {
                    if !is_plain_identifier(column) {
                        problems.push(format!(
                            "{label}: column {column:?} must be lower-case letters, digits and _ (rename it with `rename`)"
                        ));
                    }
                }
            }
        }
        problems.extend(self.delivery.validate(name));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ScyllaSinkConfig {
        #[derive(Deserialize)]
        struct Wrapper {
            sink: ScyllaSinkConfig,
        }
        serde_json::from_value::<Wrapper>(
            serde_json::json!({ "sink": serde_json::from_str::<serde_json::Value>(text).unwrap() }),
        )
        .unwrap()
        .sink
    }

    #[test]
    fn defaults_are_right_for_real_clusters() {
        let config = parse(r#"{"name": "a", "nodes": ["db:9042"], "keyspace": "ks", "table": [{"source": "t"}]}"#);
        assert!(config.write_timestamps && config.await_schema_agreement && config.fetch_schema_metadata);
        assert!(!config.manage_schema);
        assert!(config.truncate);
        assert_eq!(config.consistency(), Consistency::LocalQuorum);
        assert_eq!(config.checkpoint_table, "pgfanout_checkpoints");
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn problems_are_listed_with_what_to_change() {
        let config = parse(
            r#"{"name": "a b", "nodes": [], "keyspace": "Bad", "consistency": "most",
                "table": [{"source": "t", "types": {"x": "list<int>; DROP"}, "target": [
                    {"table": "by_guest", "partition_key": []},
                    {"table": "by_guest", "partition_key": ["Guest"], "clustering_key": ["Guest"]}]}]}"#,
        );
        let problems = config.validate().unwrap_err().join("\n");
        for expected in [
            "sink name \"a b\"",
            "nodes must list",
            "keyspace \"Bad\"",
            "consistency \"most\"",
            "is not a CQL type",
            "partition_key must name",
            "fed twice",
            "key column Guest is listed twice",
            "column \"Guest\" must be lower-case",
        ] {
            assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
        }
        let long_name = format!(
            r#"{{"name": "a", "nodes": ["n:9042"], "keyspace": "k", "table": [{{"source": "t"}}],
            "checkpoint_table": "{}"}}"#,
            "c".repeat(41)
        );
        let problems = parse(&long_name).validate().unwrap_err().join("\n");
        assert!(problems.contains("carry log table") && problems.contains("at most 40"), "{problems}");
        let carried_target = r#"{"name": "a", "nodes": ["n:9042"], "keyspace": "k", "table": [{"source": "t",
            "target": [{"table": "pgfanout_checkpoints_carried", "partition_key": ["id"]}]}]}"#;
        assert!(parse(carried_target).validate().unwrap_err().join("\n").contains("fed twice"));
    }
}
