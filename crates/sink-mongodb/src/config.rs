//! Configuration of a MongoDB sink (`kind = "mongodb"` in a `[[sink]]` table).
//!
//! Every key is documented with its default and an example; [`MongoSinkConfig::validate`]
//! checks what serde cannot and says what to change, one message per problem.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use pgfanout_core::{DeliveryConfig, MappingConfig, TableMapping, TlsConfig};
use serde::Deserialize;

/// One MongoDB sink.
///
/// ```toml
/// [[sink]]
/// name = "documents"
/// kind = "mongodb"
/// url = "mongodb://127.0.0.1:27017"
/// database = "app"
/// [[sink.table]]
/// source = "public.reservations"
/// collection = "reservations"
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MongoSinkConfig {
    /// Sink name, unique in the config; letters, digits, `_` and `-`. Example: `"documents"`.
    pub name: String,
    /// Connection string, `mongodb://[user@]host:port[/?options]` or `mongodb+srv://…`;
    /// the password comes from `PGFANOUT_SINK_<NAME>__PASSWORD`, never from the file.
    /// Example: `"mongodb://127.0.0.1:27017/?appName=pgfanout"`.
    pub url: String,
    /// Database of the collections (and of the checkpoint collection) unless a table names
    /// its own. Example: `"app"`.
    pub database: String,
    /// Tables this sink receives and how each maps to documents. At least one.
    #[serde(rename = "table")]
    pub tables: Vec<MongoTableConfig>,
    /// Collection holding one checkpoint document per sink (`_id` = sink name, field `lsn`).
    /// Default: `"pgfanout_checkpoints"`.
    #[serde(default = "default_checkpoint_collection")]
    pub checkpoint_collection: String,
    /// Field holding the version (commit LSN and position, as fixed-width sortable text) of
    /// the change that last wrote a document; the guard every write filters on. Documents
    /// without it are not pgfanout's and are never truncated. Default: `"_pgfanout_version"`.
    #[serde(default = "default_version_field")]
    pub version_field: String,
    /// Keep a tombstone `{_id, <version_field>, <deleted_field>: true}` (foreign fields
    /// kept, replicated fields removed) instead of removing the document on DELETE and
    /// TRUNCATE, so a late, stale write cannot bring the row back. Readers must skip
    /// documents with the deleted field. Default: false.
    #[serde(default)]
    pub tombstones: bool,
    /// Field marking tombstones. Default: `"_deleted"`.
    #[serde(default = "default_deleted_field")]
    pub deleted_field: String,
    /// How PostgreSQL types become BSON, `[sink.types]`.
    #[serde(default)]
    pub types: TypeOptions,
    /// Milliseconds to wait for MongoDB to answer one command before the batch is retried.
    /// Default: 30000.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// TLS, `[sink.tls]`: its presence turns TLS on (as `tls=true` in the
    /// url does); `ca_file` verifies the server (else the system's roots).
    /// MongoDB's driver reads a client certificate and its key from one
    /// file: put both in one PEM file and name it as `cert_file` and
    /// `key_file`. Default: none.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Lanes and error policy, `[sink.delivery]`.
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

/// How PostgreSQL values become BSON values (`[sink.types]`); see the crate docs for the
/// full mapping.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TypeOptions {
    /// `numeric` as `"decimal128"` (exact, default), `"string"` (PostgreSQL's text) or
    /// `"double"` (nearest binary float; inexact).
    #[serde(default)]
    pub numeric: NumericFormat,
    /// A `numeric` that Decimal128 cannot hold exactly (more than 34 significant digits):
    /// `"error"` (reject the change: blocks or dead-letters it, default) or `"string"`.
    #[serde(default)]
    pub numeric_unrepresentable: Unrepresentable,
    /// `timestamp`, `timestamptz` and `date` as `"datetime"` (BSON UTC DateTime,
    /// milliseconds: sub-millisecond digits are dropped; default) or `"string"` (ISO 8601
    /// text, exact).
    #[serde(default)]
    pub timestamps: TimestampFormat,
    /// A date/time outside years 1–9999 (including `±infinity`), which many MongoDB
    /// drivers cannot read: `"clamp"` (to 0001-01-01 or 9999-12-31 23:59:59.999, default),
    /// `"string"` (PostgreSQL's text, e.g. `"infinity"`), `"null"` or `"error"`.
    #[serde(default)]
    pub timestamp_out_of_range: OutOfRange,
    /// `uuid` as `"binary"` (BSON Binary subtype 4, default) or `"string"` (canonical text).
    #[serde(default)]
    pub uuid: UuidFormat,
    /// SQL NULL as `"null"` (field set to null, default) or `"unset"` (field removed).
    #[serde(default)]
    pub nulls: NullFormat,
}

/// `types.numeric`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NumericFormat {
    /// BSON Decimal128.
    #[default]
    Decimal128,
    /// Text.
    String,
    /// BSON double.
    Double,
}

/// `types.numeric_unrepresentable`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Unrepresentable {
    /// Reject the change.
    #[default]
    Error,
    /// Write PostgreSQL's text.
    String,
}

/// `types.timestamps`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    /// BSON DateTime.
    #[default]
    Datetime,
    /// ISO 8601 text.
    String,
}

/// `types.timestamp_out_of_range`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutOfRange {
    /// Nearest representable DateTime.
    #[default]
    Clamp,
    /// PostgreSQL's text.
    String,
    /// null.
    Null,
    /// Reject the change.
    Error,
}

/// `types.uuid`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UuidFormat {
    /// Binary subtype 4.
    #[default]
    Binary,
    /// Canonical text.
    String,
}

/// `types.nulls`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NullFormat {
    /// `$set` to null.
    #[default]
    Null,
    /// `$unset`.
    Unset,
}

/// How one source table maps to documents.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MongoTableConfig {
    /// Source table, `schema.table` (a bare name means `public`). Example: `"public.reservations"`.
    pub source: String,
    /// Database of this table's collection. Default: the sink's `database`.
    #[serde(default)]
    pub database: Option<String>,
    /// Collection receiving one document per row. Default: the table name (without schema).
    /// Example: `"reservations"`.
    #[serde(default)]
    pub collection: Option<String>,
    /// Columns whose values make `_id` (sink names, after `rename`): one column gives its
    /// value, several a sub-document `{column: value, …}` in this order. They must identify
    /// rows and be in every row image PostgreSQL sends for deletes, so: the primary key, or
    /// any unique columns under `REPLICA IDENTITY FULL`. Default: the replica identity's key
    /// columns; a `REPLICA IDENTITY FULL` table (whose every column counts as key) must set
    /// it. Example: `["id"]`.
    #[serde(default)]
    pub id_columns: Option<Vec<String>>,
    /// Only these columns are written (key columns always are). Example: `["id", "status"]`.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// These columns are never written (key columns always are). Example: `["notes"]`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Field names in MongoDB for source columns. Example: `{ total_price = "price" }`.
    #[serde(default)]
    pub rename: HashMap<String, String>,
    /// Rows kept in MongoDB: a boolean expression over column values (source names).
    /// Example: `'status != "cancelled"'`.
    #[serde(default)]
    pub filter: Option<String>,
    /// Running aggregates of this table, `[[sink.table.aggregate]]`.
    #[serde(default, rename = "aggregate")]
    pub aggregates: Vec<AggregateConfig>,
}

/// A running aggregate: one document per value of `group_by` in `collection`, holding how
/// many rows have that value and the sums of some of their columns, kept exact with `$inc`.
///
/// ```toml
/// [[sink.table.aggregate]]
/// collection = "host_statistics"
/// group_by = "host_id"
/// sum = ["total_price", "nights"]
/// ```
///
/// Updates need the old row, so the source table needs `REPLICA IDENTITY FULL`
/// (`pgfanout check` says so), and the sink `[sink.delivery] lanes = 1` (aggregates are
/// applied in stream order).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Collection of the aggregate documents (`_id` = the group value), in the table's database.
    pub collection: String,
    /// Column grouped by (sink name, after `rename`). Example: `"host_id"`.
    pub group_by: String,
    /// Field counting the group's rows. Default: `"count"`.
    #[serde(default = "default_count_field")]
    pub count_field: String,
    /// Columns summed, each into a field of the same name (integers as Int64, `numeric` as
    /// Decimal128, floats as double; NULL adds nothing). Example: `["total_price"]`.
    #[serde(default)]
    pub sum: Vec<String>,
}

fn default_checkpoint_collection() -> String {
    "pgfanout_checkpoints".into()
}
fn default_version_field() -> String {
    "_pgfanout_version".into()
}
fn default_deleted_field() -> String {
    "_deleted".into()
}
fn default_count_field() -> String {
    "count".into()
}
fn default_response_timeout_ms() -> u64 {
    30_000
}

impl MongoTableConfig {
    /// The table's column mapping and row filter.
    pub fn mapping(&self) -> MappingConfig {
        MappingConfig {
            columns: self.columns.clone(),
            exclude: self.exclude.clone(),
            rename: self.rename.clone(),
            filter: self.filter.clone(),
        }
    }

    /// The collection name, defaulted to the table name.
    pub fn collection(&self) -> String {
        self.collection.clone().unwrap_or_else(|| pgfanout_core::TableName::parse(&self.source).name)
    }
}

impl MongoSinkConfig {
    /// How long one command may take.
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }

    /// Whether any table keeps running aggregates.
    pub fn has_aggregates(&self) -> bool {
        self.tables.iter().any(|table| !table.aggregates.is_empty())
    }

    /// Checks what serde cannot: names, duplicates, field names MongoDB refuses. Each
    /// problem is one message saying what to change.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let name = &self.name;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            problems.push(format!("sink name {name:?} must be non-empty and use only letters, digits, _ and -"));
        }
        if !(self.url.starts_with("mongodb://") || self.url.starts_with("mongodb+srv://")) {
            problems.push(format!("sink {name}: url must start with mongodb:// or mongodb+srv://"));
        }
        if self.tables.is_empty() {
            problems.push(format!("sink {name}: add at least one [[sink.table]] with a source"));
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() && tls.cert_file != tls.key_file {
                problems.push(format!(
                    "sink {name}: tls.cert_file and tls.key_file must name the same file: MongoDB's driver reads \
                     the client certificate and its key from one PEM file holding both"
                ));
            }
            problems.extend(tls.problems(name));
        }
        let mut check_name = |what: &str, value: &str| {
            if let Some(reason) = bad_name(value) {
                problems.push(format!("sink {name}: {what} {value:?} {reason}"));
            }
        };
        check_name("database", &self.database);
        check_name("checkpoint_collection", &self.checkpoint_collection);
        check_name("version_field", &self.version_field);
        check_name("deleted_field", &self.deleted_field);
        for table in &self.tables {
            let what = format!("table {}: collection", table.source);
            check_name(&what, &table.collection());
            if let Some(database) = &table.database {
                check_name(&format!("table {}: database", table.source), database);
            }
            for aggregate in &table.aggregates {
                check_name(&format!("table {}: aggregate collection", table.source), &aggregate.collection);
                check_name(&format!("table {}: aggregate count_field", table.source), &aggregate.count_field);
                for column in &aggregate.sum {
                    check_name(&format!("table {}: aggregate sum", table.source), column);
                }
            }
        }
        if self.version_field == self.deleted_field {
            problems.push(format!("sink {name}: version_field and deleted_field must differ"));
        }
        let mut seen = HashSet::new();
        let mut collections = HashSet::new();
        for table in &self.tables {
            if !seen.insert(&table.source) {
                problems.push(format!("sink {name}: table {} is listed twice", table.source));
            }
            let database = table.database.as_deref().unwrap_or(&self.database);
            if !collections.insert((database.to_owned(), table.collection())) {
                problems.push(format!(
                    "sink {name}: table {}: collection {}.{} already receives another table; set collection",
                    table.source,
                    database,
                    table.collection()
                ));
            }
            if let Err(err) = TableMapping::new(table.mapping()) {
                problems.push(format!("sink {name}: table {}: {err}", table.source));
            }
            if table.id_columns.as_ref().is_some_and(Vec::is_empty) {
                problems.push(format!("sink {name}: table {}: id_columns must name at least one column", table.source));
            }
            if !table.aggregates.is_empty() && table.filter.is_some() {
                problems.push(format!(
                    "sink {name}: table {}: running aggregates cannot be combined with filter (a row leaving or \
                     entering the filter would be counted wrongly); aggregate the whole table",
                    table.source
                ));
            }
            for aggregate in &table.aggregates {
                if aggregate.sum.iter().any(|column| *column == aggregate.count_field || column == "_id") {
                    problems.push(format!(
                        "sink {name}: table {}: aggregate {}: a sum column cannot be named like the count \
                         field or _id; set count_field",
                        table.source, aggregate.collection
                    ));
                }
            }
        }
        if self.has_aggregates() && self.delivery.lanes != 1 {
            problems.push(format!(
                "sink {name}: running aggregates are applied in stream order: set [sink.delivery] lanes = 1"
            ));
        }
        problems.extend(self.delivery.validate(name));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Why MongoDB would refuse `name` as a database, collection or top-level field name.
fn bad_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.starts_with('$') {
        Some("must not start with $")
    } else if name.contains('\0') {
        Some("must not contain NUL")
    } else if name.contains('.') {
        Some("must not contain a dot")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests write configs as JSON (the crate has no TOML parser); the binary's config
    /// tests cover TOML.
    fn parse(text: &str) -> MongoSinkConfig {
        serde_json::from_str(text).unwrap()
    }

    const MINIMAL: &str = r#"{"name": "docs", "url": "mongodb://127.0.0.1:27017", "database": "app",
        "table": [{"source": "public.reservations"}]}"#;

    #[test]
    fn defaults_are_filled_in() {
        let config = parse(MINIMAL);
        assert_eq!(config.checkpoint_collection, "pgfanout_checkpoints");
        assert_eq!(config.version_field, "_pgfanout_version");
        assert!(!config.tombstones);
        assert_eq!(config.types, TypeOptions::default());
        assert_eq!(config.tables[0].collection(), "reservations");
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn problems_are_listed_together() {
        let mut config = parse(MINIMAL);
        config.url = "http://x".into();
        config.version_field = "$v".into();
        config.tables[0].aggregates.push(AggregateConfig {
            collection: "stats".into(),
            group_by: "host_id".into(),
            count_field: "count".into(),
            sum: vec!["count".into()],
        });
        let problems = config.validate().unwrap_err();
        let text = problems.join("\n");
        assert!(text.contains("url must start with mongodb://"), "{text}");
        assert!(text.contains("\"$v\" must not start with $"), "{text}");
        assert!(text.contains("lanes = 1"), "{text}");
        assert!(text.contains("cannot be named like the count field"), "{text}");
    }

    #[test]
    fn two_tables_cannot_share_a_collection() {
        let mut config = parse(MINIMAL);
        let mut second = config.tables[0].clone();
        second.source = "archive.reservations".into();
        config.tables.push(second);
        let text = config.validate().unwrap_err().join("\n");
        assert!(text.contains("already receives another table"), "{text}");
    }
}
