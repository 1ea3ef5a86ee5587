//! Configuration of a graph sink (`kind = "graph"` in a `[[sink]]` table).
//!
//! The example mirrors the seed documents' graph: users, cities and hosts,
//! `(User)-[:BOOKED_IN {count}]->(City)` recurrence counts and host–guest
//! "communities", derived from the reservations so they stay exact:
//!
//! ```toml
//! [[sink]]
//! name = "graph"
//! kind = "graph"
//! transport = "falkordb"                  # or "bolt" (Neo4j 4.4 and later)
//! url = "redis://127.0.0.1:6379"          # bolt: "bolt://neo4j:7687"
//! graph = "rentals"                       # FalkorDB graph key; bolt: database (optional)
//!
//! [[sink.table]]
//! source = "public.users"
//! label = "User"
//!
//! [[sink.table]]
//! source = "public.cities"
//! label = "City"
//!
//! [[sink.table]]
//! source = "public.properties"
//! label = "Property"
//! relationships = [
//!   { column = "host_id", type = "HOSTED_BY", to = "User" },
//!   { column = "city_id", type = "IN_CITY", to = "City" },
//! ]
//!
//! [[sink.table]]
//! source = "public.reservations"
//! label = "Reservation"
//! relationships = [
//!   { column = "guest_id", type = "BOOKED_BY", to = "User" },
//!   { column = "property_id", type = "FOR", to = "Property" },
//! ]
//!
//! # A join table becomes one relationship per row, its other columns as properties.
//! [[sink.table]]
//! source = "public.favorites"
//! relationship = { type = "FAVORITE", from = { column = "user_id", label = "User" }, to = { column = "property_id", label = "Property" } }
//!
//! # (User)-[:BOOKED_IN {count, reservations}]->(City): recomputed from the
//! # reservation nodes for every guest a change touches.
//! [[sink.derived]]
//! type = "BOOKED_IN"
//! match = "(source:User)<-[:BOOKED_BY]-(r:Reservation)-[:FOR]->(p:Property)-[:IN_CITY]->(target:City)"
//! count = "r"
//! collect = { reservations = "r.id" }
//! on = { "public.reservations" = "r", "public.properties" = "p" }
//!
//! # Host–guest communities: (guest)-[:INTERACTED_WITH {count, reservations, properties}]->(host).
//! [[sink.derived]]
//! type = "INTERACTED_WITH"
//! match = "(source:User)<-[:BOOKED_BY]-(r:Reservation)-[:FOR]->(p:Property)-[:HOSTED_BY]->(target:User)"
//! count = "r"
//! collect = { reservations = "r.id", properties = "p.id" }
//! on = { "public.reservations" = "r", "public.properties" = "p" }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use pgfanout_core::{DeliveryConfig, MappingConfig, TableMapping, TlsConfig};
use secrecy::SecretString;
use serde::Deserialize;

/// One graph sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSinkConfig {
    /// Sink name, unique in the config; letters, digits, `_` and `-`.
    /// Example: `"graph"`.
    pub name: String,
    /// How statements reach the store: `"falkordb"` (Cypher over RESP,
    /// `GRAPH.QUERY`, through a Redis connection) or `"bolt"` (Neo4j 4.4 and
    /// later, through `neo4rs`). Example: `"falkordb"`.
    pub transport: Transport,
    /// Server URL: `redis://host:port[/db]` (or `rediss://`) for FalkorDB,
    /// `bolt://host:port` (or `neo4j://`, `bolt+s://`…) for Bolt.
    /// Example: `"redis://127.0.0.1:6379"`.
    pub url: String,
    /// FalkorDB: the graph's key. Bolt: the database (the server's default
    /// database when unset). Default: `"pgfanout"` for FalkorDB.
    #[serde(default)]
    pub graph: Option<String>,
    /// Bolt user. Example: `"neo4j"`. Default: none (no authentication).
    #[serde(default)]
    pub user: Option<String>,
    /// Bolt password; give it through the environment variable named by
    /// `password_env`, not in the file.
    #[serde(default, skip)]
    pub password: Option<SecretString>,
    /// Environment variable holding the Bolt password.
    /// Example: `"PGFANOUT_GRAPH_PASSWORD"`.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Tables this sink receives: each one a node label or a relationship
    /// type. At least one.
    #[serde(rename = "table")]
    pub tables: Vec<GraphTableConfig>,
    /// Relationships derived from the graph (counts over source rows).
    #[serde(default)]
    pub derived: Vec<DerivedConfig>,
    /// How `numeric` values are stored: `"string"` (exact, the default) or
    /// `"float"` (a 64-bit float: rounded, but comparable in Cypher).
    #[serde(default)]
    pub numeric: NumericAs,
    /// How `timestamp`/`timestamptz` values are stored: `"iso"` (ISO 8601
    /// text, `2026-12-01T10:30:00.5` and `…Z` for `timestamptz`; the
    /// default), `"epoch_millis"` or `"epoch_micros"` (integers since 1970
    /// UTC). Infinite timestamps are the strings `infinity`/`-infinity`.
    #[serde(default)]
    pub timestamps: TimestampAs,
    /// Property holding the version of the change that last wrote a node or
    /// relationship (fixed-width hex: string order is version order); older
    /// changes never overwrite newer ones. Default: `"pgfanout_version"`.
    #[serde(default = "default_version_property")]
    pub version_property: String,
    /// Label of the node holding the checkpoint, one per sink
    /// (`(:PgfanoutCheckpoint {sink: "<name>", lsn: "0/16B3748"})`).
    /// Default: `"PgfanoutCheckpoint"`.
    #[serde(default = "default_checkpoint_label")]
    pub checkpoint_label: String,
    /// Create an index on every label's key properties (and on join-table
    /// relationships' keys) at start, so `MERGE` by key does not scan; on
    /// Neo4j also a uniqueness constraint on each node key, so concurrent
    /// writers never create one node twice. Default: true.
    #[serde(default = "default_true")]
    pub create_indexes: bool,
    /// Milliseconds to wait for the store to answer one batch before the
    /// batch is retried on a new connection. Default: 30000.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Certificate files for TLS, `[sink.tls]` (`ca_file`, `cert_file`,
    /// `key_file`), with a `rediss://` (FalkorDB) or `bolt+s://`/`neo4j+s://`
    /// (Bolt) url. The server's certificate is verified against `ca_file`,
    /// else the system's roots, and must name the URL's host. Default: none.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Lanes and error policy, `[sink.delivery]`.
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

/// `transport` values.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// FalkorDB over RESP (`GRAPH.QUERY`).
    Falkordb,
    /// Bolt 4.4 (Neo4j 4.4 and later) through `neo4rs`.
    Bolt,
}

/// `numeric` values.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NumericAs {
    /// Exact decimal text.
    #[default]
    String,
    /// 64-bit float (NaN and infinities as strings).
    Float,
}

/// `timestamps` values.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimestampAs {
    /// ISO 8601 text.
    #[default]
    Iso,
    /// Milliseconds since 1970-01-01 UTC.
    EpochMillis,
    /// Microseconds since 1970-01-01 UTC.
    EpochMicros,
}

/// How one source table maps to the graph: a node per row (`label`, the
/// default) or a relationship per row (`relationship`, for join tables).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GraphTableConfig {
    /// Source table, `schema.table` (a bare name means `public`).
    /// Example: `"public.reservations"`.
    pub source: String,
    /// Node label. Default: the table name. Example: `"Reservation"`.
    #[serde(default)]
    pub label: Option<String>,
    /// Node properties identifying the row (sink column names). Default: the
    /// table's primary-key (replica identity) columns. Example: `["id"]`.
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// Relationships from foreign-key columns of a node table.
    /// Example: `[{ column = "guest_id", type = "BOOKED_BY", to = "User" }]`.
    #[serde(default)]
    pub relationships: Vec<ForeignKeyConfig>,
    /// Makes the table a join table: each row is one relationship between
    /// the nodes its two columns refer to; the row's other columns become
    /// the relationship's properties.
    #[serde(default)]
    pub relationship: Option<JoinConfig>,
    /// Only these columns are written (key columns always are).
    /// Example: `["id", "status", "total_price"]`.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// These columns are never written (key columns always are).
    /// Example: `["notes"]`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Property names for source columns. Example: `{ total_price = "price" }`.
    #[serde(default)]
    pub rename: HashMap<String, String>,
    /// Rows kept in the graph: a boolean expression over column values
    /// (source names), e.g. `'status != "cancelled"'`.
    #[serde(default)]
    pub filter: Option<String>,
}

/// A relationship from a node table's foreign-key column to the node it
/// refers to. The target is merged by key, so it may arrive later (or
/// never: it then holds its key only).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ForeignKeyConfig {
    /// The column holding the target's key (sink name). Example: `"guest_id"`.
    pub column: String,
    /// Relationship type. Example: `"BOOKED_BY"`.
    #[serde(rename = "type")]
    pub rel_type: String,
    /// Label of the target node. Example: `"User"`.
    pub to: String,
    /// Key property of the target node. Default: `"id"`.
    #[serde(default = "default_key_property")]
    pub to_key: String,
    /// `"out"`: `(row)-[:TYPE]->(target)` (default); `"in"`: `(target)-[:TYPE]->(row)`.
    #[serde(default)]
    pub direction: Direction,
}

/// Which way a foreign-key relationship points.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the row's node to the target.
    #[default]
    Out,
    /// From the target to the row's node.
    In,
}

/// A join table's relationship.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// Relationship type. Example: `"FAVORITE"`.
    #[serde(rename = "type")]
    pub rel_type: String,
    /// The start node.
    pub from: EndpointConfig,
    /// The end node.
    pub to: EndpointConfig,
}

/// One end of a join table's relationship.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Column holding the node's key (sink name). Example: `"user_id"`.
    pub column: String,
    /// Node label. Example: `"User"`.
    pub label: String,
    /// Key property of the node. Default: `"id"`.
    #[serde(default = "default_key_property")]
    pub key: String,
}

/// A relationship derived from a pattern over the graph, kept exact by
/// recomputing it from the pattern's matches (never by incrementing): for
/// every `source` node that a change may affect, all its relationships of
/// this type are replaced by one per `target` the pattern reaches, with
/// `count` = the number of distinct `count` matches and one list property per
/// `collect` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DerivedConfig {
    /// Relationship type, owned by this rule: relationships of this type are
    /// rewritten by it. Example: `"BOOKED_IN"`.
    #[serde(rename = "type")]
    pub rel_type: String,
    /// Cypher pattern binding `source` and `target` (the relationship's
    /// ends) and the variables named in `count`, `collect` and `on`.
    /// Example: `"(source:User)<-[:BOOKED_BY]-(r:Reservation)-[:FOR]->(p:Property)-[:IN_CITY]->(target:City)"`.
    #[serde(rename = "match")]
    pub pattern: String,
    /// The variable whose distinct matches are counted. Example: `"r"`.
    pub count: String,
    /// Property holding the count. Default: `"count"`.
    #[serde(default = "default_count_property")]
    pub count_property: String,
    /// List properties: name → Cypher expression over the pattern's
    /// variables, collected distinct. Example: `{ reservations = "r.id" }`.
    #[serde(default)]
    pub collect: BTreeMap<String, String>,
    /// The tables whose changes can change the result, each with the
    /// pattern variable its nodes bind to. Every table listed must be a node
    /// table of this sink. Example: `{ "public.reservations" = "r" }`.
    pub on: BTreeMap<String, String>,
}

fn default_true() -> bool {
    true
}
fn default_key_property() -> String {
    "id".into()
}
fn default_count_property() -> String {
    "count".into()
}
fn default_version_property() -> String {
    "pgfanout_version".into()
}
fn default_checkpoint_label() -> String {
    "PgfanoutCheckpoint".into()
}
fn default_response_timeout_ms() -> u64 {
    30_000
}

impl GraphTableConfig {
    /// The table's column mapping and row filter.
    pub fn mapping(&self) -> MappingConfig {
        MappingConfig {
            columns: self.columns.clone(),
            exclude: self.exclude.clone(),
            rename: self.rename.clone(),
            filter: self.filter.clone(),
        }
    }

    /// The node label: `label`, else the table's name.
    pub fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| pgfanout_core::TableName::parse(&self.source).name)
    }
}

impl GraphSinkConfig {
    /// The FalkorDB graph key (`graph`, default `pgfanout`).
    pub fn graph_key(&self) -> String {
        self.graph.clone().unwrap_or_else(|| "pgfanout".into())
    }

    /// How long one batch may take.
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }

    /// Reads the Bolt password from `password_env` when set.
    pub fn resolve_password(&mut self) -> Result<(), String> {
        if let Some(variable) = &self.password_env {
            let value = std::env::var(variable).map_err(|_| {
                format!("sink {}: environment variable {variable} (password_env) is not set", self.name)
            })?;
            self.password = Some(SecretString::from(value));
        }
        Ok(())
    }

    /// Checks what serde cannot: names, URLs, duplicates, rules that refer
    /// to tables. Each problem is one message saying what to change.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let name = &self.name;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            problems.push(format!("sink name {name:?} must be non-empty and use only letters, digits, _ and -"));
        }
        let schemes: &[&str] = match self.transport {
            Transport::Falkordb => &["redis://", "rediss://", "unix://"],
            Transport::Bolt => &["bolt://", "bolt+s://", "bolt+ssc://", "neo4j://", "neo4j+s://", "neo4j+ssc://"],
        };
        if !schemes.iter().any(|scheme| self.url.starts_with(scheme)) {
            problems.push(format!("sink {name}: url must start with one of {} for this transport", schemes.join(", ")));
        }
        if let Some(tls) = &self.tls {
            let tls_schemes: &[&str] = match self.transport {
                Transport::Falkordb => &["rediss://"],
                Transport::Bolt => &["bolt+s://", "neo4j+s://"],
            };
            if !tls_schemes.iter().any(|scheme| self.url.starts_with(scheme)) {
                problems.push(format!(
                    "sink {name}: [sink.tls] is set but the url does not start with {}; use it to connect with TLS",
                    tls_schemes.join(" or ")
                ));
            }
            problems.extend(tls.problems(name));
        }
        if self.graph.as_deref().is_some_and(str::is_empty) {
            problems.push(format!("sink {name}: graph must not be empty"));
        }
        if self.password_env.is_some() && self.user.is_none() {
            problems.push(format!("sink {name}: password_env is set but user is not"));
        }
        if self.tables.is_empty() {
            problems.push(format!("sink {name}: add at least one [[sink.table]] with a source"));
        }
        for (what, identifier) in
            [("version_property", &self.version_property), ("checkpoint_label", &self.checkpoint_label)]
        {
            if identifier.is_empty() {
                problems.push(format!("sink {name}: {what} must not be empty"));
            }
        }
        let mut seen = HashSet::new();
        let mut node_tables = HashSet::new();
        for table in &self.tables {
            let context = format!("sink {name}: table {}", table.source);
            if !seen.insert(pgfanout_core::TableName::parse(&table.source)) {
                problems.push(format!("{context}: listed twice"));
            }
            if let Err(err) = TableMapping::new(table.mapping()) {
                problems.push(format!("{context}: {err}"));
            }
            if table.key.as_ref().is_some_and(Vec::is_empty) {
                problems.push(format!("{context}: key must name at least one column"));
            }
            match &table.relationship {
                Some(join) => {
                    if table.label.is_some() || !table.relationships.is_empty() || table.key.is_some() {
                        problems.push(format!(
                            "{context}: a join table (relationship = …) takes no label, key or relationships"
                        ));
                    }
                    for (what, value) in [
                        ("relationship type", &join.rel_type),
                        ("from.label", &join.from.label),
                        ("to.label", &join.to.label),
                        ("from.column", &join.from.column),
                        ("to.column", &join.to.column),
                    ] {
                        if value.is_empty() {
                            problems.push(format!("{context}: {what} must not be empty"));
                        }
                    }
                }
                None => {
                    node_tables.insert(pgfanout_core::TableName::parse(&table.source));
                    if table.label.as_deref().is_some_and(str::is_empty) {
                        problems.push(format!("{context}: label must not be empty"));
                    }
                    let mut kinds = HashSet::new();
                    for fk in &table.relationships {
                        if fk.column.is_empty() || fk.rel_type.is_empty() || fk.to.is_empty() || fk.to_key.is_empty() {
                            problems.push(format!("{context}: relationships need column, type, to (and to_key)"));
                        }
                        if !kinds.insert((&fk.rel_type, &fk.to, fk.direction)) {
                            problems.push(format!(
                                "{context}: two relationships of type {} to {} in the same direction; give them different types",
                                fk.rel_type, fk.to
                            ));
                        }
                    }
                }
            }
        }
        let mut derived_types = HashSet::new();
        for derived in &self.derived {
            let context = format!("sink {name}: derived {}", derived.rel_type);
            if derived.rel_type.is_empty() {
                problems.push(format!("sink {name}: derived relationships need a type"));
            }
            if !derived_types.insert(&derived.rel_type) {
                problems.push(format!("{context}: listed twice"));
            }
            for variable in ["(source", "(target"] {
                if !derived.pattern.contains(variable) {
                    problems.push(format!("{context}: match must bind the variable {}", &variable[1..]));
                }
            }
            if derived.count.is_empty() || derived.count_property.is_empty() {
                problems.push(format!("{context}: count and count_property must not be empty"));
            }
            if derived.on.is_empty() {
                problems.push(format!(
                    "{context}: on must name at least one table whose changes affect it, e.g. {{ \"public.reservations\" = \"r\" }}"
                ));
            }
            for (table, variable) in &derived.on {
                if !node_tables.contains(&pgfanout_core::TableName::parse(table)) {
                    problems.push(format!("{context}: on names {table}, which is not a node table of this sink"));
                }
                if variable.is_empty() || !derived.pattern.contains(&format!("({variable}")) {
                    problems.push(format!("{context}: on: variable {variable:?} for {table} is not bound in match"));
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

    /// The module documentation's example, which the tests keep honest.
    fn example() -> GraphSinkConfig {
        let toml: String = include_str!("config.rs")
            .lines()
            .skip_while(|line| !line.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|line| !line.starts_with("//! ```"))
            // `kind` belongs to the binary's sink enum, not to this struct.
            .filter(|line| !line.starts_with("//! kind ="))
            .map(|line| format!("{}\n", line.trim_start_matches("//!").trim_start()))
            .collect();
        #[derive(Deserialize)]
        struct File {
            sink: Vec<GraphSinkConfig>,
        }
        let file: File = toml::from_str(&toml).unwrap_or_else(|err| panic!("{err}\n{toml}"));
        file.sink.into_iter().next().expect("one sink")
    }

    #[test]
    fn tls_settings_need_a_tls_url() {
        let mut config = example();
        config.tls = Some(TlsConfig::default());
        let problems = config.validate().unwrap_err();
        assert!(problems.iter().any(|problem| problem.contains("does not start with rediss://")), "{problems:?}");
        config.url = "rediss://127.0.0.1:6380".into();
        assert_eq!(config.validate(), Ok(()));
        config.transport = Transport::Bolt;
        config.url = "bolt://127.0.0.1:7687".into();
        let problems = config.validate().unwrap_err();
        assert!(problems.iter().any(|problem| problem.contains("bolt+s:// or neo4j+s://")), "{problems:?}");
    }

    #[test]
    fn the_documented_example_is_valid() {
        let config = example();
        assert_eq!(config.transport, Transport::Falkordb);
        assert_eq!(config.tables.len(), 5);
        assert_eq!(config.derived.len(), 2);
        assert_eq!(config.graph_key(), "rentals");
        config.validate().unwrap();
    }

    #[test]
    fn problems_name_what_to_change() {
        let mut config = example();
        config.url = "http://x".into();
        config.derived[0].on.insert("public.favorites".into(), "f".into());
        let duplicate = config.tables[2].relationships[0].clone();
        config.tables[2].relationships.push(duplicate);
        let problems = config.validate().unwrap_err();
        let text = problems.join("\n");
        assert!(text.contains("url must start with one of redis://"), "{text}");
        assert!(text.contains("on names public.favorites, which is not a node table"), "{text}");
        assert!(text.contains("variable \"f\" for public.favorites is not bound"), "{text}");
        assert!(text.contains("two relationships of type HOSTED_BY to User"), "{text}");
        assert_eq!(problems.len(), 4, "{text}");
    }
}
