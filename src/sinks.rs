//! The sink registry: every sink kind is declared here, once.
//!
//! A kind is one line of the `sink_kinds!` invocation below (its `kind = "…"` value, its
//! config type) and one [`SinkKind`] implementation on that config type:
//! how to name, validate and build the sink, which tables it routes, which
//! of them need `REPLICA IDENTITY FULL`, and whether its URL takes a password
//! from the environment. Everything else in the binary (config loading,
//! `run`, `check`, the table checks, secrets) goes through [`SinkConfig`]'s
//! methods, so adding a kind touches this file and nothing else in `src/`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use pgfanout_core::{DeliveryConfig, MappingConfig, Sink, TableMapping, TableName, TlsConfig};
use pgfanout_sink_graph::{GraphSink, GraphSinkConfig};
use pgfanout_sink_mongodb::{MongoSink, MongoSinkConfig};
use pgfanout_sink_redis::{RedisSink, RedisSinkConfig};
use pgfanout_sink_scylla::{ScyllaSink, ScyllaSinkConfig};
use pgfanout_source::{Route, Routing};
use serde::Deserialize;

use crate::config::Config;
use crate::discard::{DiscardSink, DiscardSinkConfig};

/// A sink with the tables it receives and their mapping configs.
pub type BuiltSink = (Arc<dyn Sink>, Vec<(TableName, MappingConfig)>);

/// What every sink kind provides; implemented by each kind's config type.
pub trait SinkKind {
    /// The sink's name.
    fn name(&self) -> &str;
    /// The source tables the sink routes, as written (`schema.table` or `table`).
    fn table_sources(&self) -> Vec<&str>;
    /// Source tables whose updates and deletes the sink needs with the whole
    /// old row (`REPLICA IDENTITY FULL`).
    fn tables_needing_full_identity(&self) -> Vec<TableName> {
        Vec::new()
    }
    /// Routed tables whose deletes leave nothing behind in the store (no
    /// tombstone, no delete timestamp): an older change replayed after a
    /// delete brings such a row back until the replay re-applies the delete.
    /// Default: every routed table.
    fn tables_forgetting_deletes(&self) -> Vec<TableName> {
        self.table_sources().into_iter().map(TableName::parse).collect()
    }
    /// The sink's `[sink.delivery]` section.
    fn delivery(&self) -> &DeliveryConfig;
    /// Problems serde cannot find, one line each.
    fn validate(&self) -> Vec<String>;
    /// The sink, with the tables it receives and their mapping configs.
    fn build(&self) -> anyhow::Result<BuiltSink>;
    /// The URL whose user part takes `PGFANOUT_SINK_<NAME>__PASSWORD`, and
    /// whether a password there needs a user; `None` for kinds that take
    /// their password otherwise (see [`crate::secrets`]).
    fn password_url(&mut self) -> Option<(&mut String, bool)> {
        None
    }
    /// Files the config names that hold secrets (password files, TLS
    /// private keys), each with the key naming it, for the
    /// world-readable warning of [`crate::secrets`].
    fn secret_files(&self) -> Vec<(PathBuf, &'static str)> {
        Vec::new()
    }
}

/// `[sink.tls] key_file`, when set.
fn tls_key_file(tls: Option<&TlsConfig>) -> Vec<(PathBuf, &'static str)> {
    tls.and_then(|tls| tls.key_file.clone()).map(|key| (key, "a sink's tls.key_file")).into_iter().collect()
}

/// Declares the `[[sink]]` enum and its dispatch from one list of kinds.
macro_rules! sink_kinds {
    ($($(#[$doc:meta])* $variant:ident($config:ty),)*) => {
        /// One `[[sink]]`, by `kind`.
        #[derive(Debug, Deserialize)]
        #[serde(tag = "kind", rename_all = "lowercase")]
        pub enum SinkConfig {
            $($(#[$doc])* $variant($config),)*
        }

        impl SinkConfig {
            /// The kind's implementation.
            pub fn kind(&self) -> &dyn SinkKind {
                match self {
                    $(SinkConfig::$variant(config) => config,)*
                }
            }

            /// The kind's implementation, mutable (secrets are filled in after loading).
            pub fn kind_mut(&mut self) -> &mut dyn SinkKind {
                match self {
                    $(SinkConfig::$variant(config) => config,)*
                }
            }
        }
    };
}

sink_kinds! {
    /// `kind = "redis"`.
    Redis(RedisSinkConfig),
    /// `kind = "graph"`: FalkorDB over RESP or Neo4j over Bolt.
    Graph(GraphSinkConfig),
    /// `kind = "mongodb"`.
    Mongodb(MongoSinkConfig),
    /// `kind = "discard"`: accepts and drops everything (measurements, dry runs).
    Discard(DiscardSinkConfig),
    /// `kind = "scylla"`: Cassandra or ScyllaDB query tables.
    Scylla(ScyllaSinkConfig),
}

impl SinkKind for RedisSinkConfig {
    fn name(&self) -> &str {
        &self.name
    }
    fn table_sources(&self) -> Vec<&str> {
        self.tables.iter().map(|t| t.source.as_str()).collect()
    }
    /// Tables without `tombstone_secs`.
    fn tables_forgetting_deletes(&self) -> Vec<TableName> {
        self.tables.iter().filter(|t| t.tombstone_secs.is_none()).map(|t| TableName::parse(&t.source)).collect()
    }
    fn delivery(&self) -> &DeliveryConfig {
        &self.delivery
    }
    fn validate(&self) -> Vec<String> {
        RedisSinkConfig::validate(self).err().unwrap_or_default()
    }
    fn build(&self) -> anyhow::Result<BuiltSink> {
        let sink = RedisSink::new(self.clone()).with_context(|| format!("sink {}", self.name))?;
        let tables = sink.tables();
        Ok((Arc::new(sink), tables))
    }
    fn password_url(&mut self) -> Option<(&mut String, bool)> {
        Some((&mut self.url, false))
    }
    fn secret_files(&self) -> Vec<(PathBuf, &'static str)> {
        tls_key_file(self.tls.as_ref())
    }
}

impl SinkKind for GraphSinkConfig {
    fn name(&self) -> &str {
        &self.name
    }
    fn table_sources(&self) -> Vec<&str> {
        self.tables.iter().map(|t| t.source.as_str()).collect()
    }
    fn delivery(&self) -> &DeliveryConfig {
        &self.delivery
    }
    fn validate(&self) -> Vec<String> {
        GraphSinkConfig::validate(self).err().unwrap_or_default()
    }
    fn build(&self) -> anyhow::Result<BuiltSink> {
        let mut graph = self.clone();
        graph.resolve_password().map_err(anyhow::Error::msg)?;
        let sink = GraphSink::new(graph.clone()).with_context(|| format!("sink {}", graph.name))?;
        let tables = sink.tables();
        Ok((Arc::new(sink), tables))
    }
    fn secret_files(&self) -> Vec<(PathBuf, &'static str)> {
        tls_key_file(self.tls.as_ref())
    }
}

impl SinkKind for MongoSinkConfig {
    fn name(&self) -> &str {
        &self.name
    }
    fn table_sources(&self) -> Vec<&str> {
        self.tables.iter().map(|t| t.source.as_str()).collect()
    }
    /// Tables with running aggregates.
    fn tables_needing_full_identity(&self) -> Vec<TableName> {
        self.tables.iter().filter(|t| !t.aggregates.is_empty()).map(|t| TableName::parse(&t.source)).collect()
    }
    /// Every table unless the sink keeps `tombstones`.
    fn tables_forgetting_deletes(&self) -> Vec<TableName> {
        if self.tombstones {
            Vec::new()
        } else {
            self.table_sources().into_iter().map(TableName::parse).collect()
        }
    }
    fn delivery(&self) -> &DeliveryConfig {
        &self.delivery
    }
    fn validate(&self) -> Vec<String> {
        MongoSinkConfig::validate(self).err().unwrap_or_default()
    }
    fn build(&self) -> anyhow::Result<BuiltSink> {
        let sink = MongoSink::new(self.clone());
        let tables = sink.tables();
        Ok((Arc::new(sink), tables))
    }
    /// MongoDB authenticates a user: a password alone means nothing to it.
    fn password_url(&mut self) -> Option<(&mut String, bool)> {
        Some((&mut self.url, true))
    }
    fn secret_files(&self) -> Vec<(PathBuf, &'static str)> {
        tls_key_file(self.tls.as_ref())
    }
}

impl SinkKind for DiscardSinkConfig {
    fn name(&self) -> &str {
        &self.name
    }
    fn table_sources(&self) -> Vec<&str> {
        self.tables.iter().map(|t| t.source.as_str()).collect()
    }
    /// Nothing is stored, so nothing can come back.
    fn tables_forgetting_deletes(&self) -> Vec<TableName> {
        Vec::new()
    }
    fn delivery(&self) -> &DeliveryConfig {
        &self.delivery
    }
    fn validate(&self) -> Vec<String> {
        DiscardSinkConfig::validate(self)
    }
    fn build(&self) -> anyhow::Result<BuiltSink> {
        Ok((Arc::new(DiscardSink::new(&self.name)), self.tables()))
    }
}

impl SinkKind for ScyllaSinkConfig {
    fn name(&self) -> &str {
        &self.name
    }
    fn table_sources(&self) -> Vec<&str> {
        self.tables.iter().map(|t| t.source.as_str()).collect()
    }
    /// None: a CQL delete is a tombstone with the change's write timestamp,
    /// which an older replayed write loses to.
    fn tables_forgetting_deletes(&self) -> Vec<TableName> {
        Vec::new()
    }
    fn delivery(&self) -> &DeliveryConfig {
        &self.delivery
    }
    fn validate(&self) -> Vec<String> {
        ScyllaSinkConfig::validate(self).err().unwrap_or_default()
    }
    fn build(&self) -> anyhow::Result<BuiltSink> {
        let sink = ScyllaSink::new(self.clone());
        let tables = sink.tables();
        Ok((Arc::new(sink), tables))
    }
    fn secret_files(&self) -> Vec<(PathBuf, &'static str)> {
        let password = self.password_file.clone().map(|file| (file, "a sink's password_file"));
        password.into_iter().chain(tls_key_file(self.tls.as_ref())).collect()
    }
}

impl SinkConfig {
    /// The sink's name.
    pub fn name(&self) -> &str {
        self.kind().name()
    }

    /// The source tables the sink routes, as written (`schema.table` or `table`).
    pub fn table_sources(&self) -> Vec<&str> {
        self.kind().table_sources()
    }

    /// Source tables whose updates and deletes the sink needs with the whole old row
    /// (`REPLICA IDENTITY FULL`): MongoDB tables with running aggregates.
    pub fn tables_needing_full_identity(&self) -> Vec<TableName> {
        self.kind().tables_needing_full_identity()
    }

    /// Routed tables whose deletes leave no marker in the store (see
    /// [`SinkKind::tables_forgetting_deletes`]).
    pub fn tables_forgetting_deletes(&self) -> Vec<TableName> {
        self.kind().tables_forgetting_deletes()
    }

    /// The sink's `[sink.delivery]` section.
    pub fn delivery(&self) -> &DeliveryConfig {
        self.kind().delivery()
    }

    /// Problems serde cannot find, one line each.
    pub fn validate(&self) -> Vec<String> {
        self.kind().validate()
    }
}

/// The tables a sink receives, each with its mapping.
pub type RoutedTables = Vec<(TableName, TableMapping)>;

/// The sink a `[[sink]]` section describes, with the tables it receives.
pub fn build_sink(config: &SinkConfig) -> anyhow::Result<(Arc<dyn Sink>, RoutedTables)> {
    let (sink, tables) = config.kind().build()?;
    let tables = tables
        .into_iter()
        .map(|(table, mapping)| {
            let mapping = TableMapping::new(mapping).with_context(|| format!("sink {}: table {table}", sink.name()))?;
            Ok((table, mapping))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((sink, tables))
}

/// Which sink routes which table, as the source side needs it.
pub fn routing(config: &Config) -> Routing {
    let mut routes = Vec::new();
    for sink in &config.sinks {
        let full = sink.tables_needing_full_identity();
        for source in sink.table_sources() {
            let table = TableName::parse(source);
            routes.push(Route { sink: sink.name().to_owned(), needs_full_identity: full.contains(&table), table });
        }
    }
    Routing::new(routes)
}
