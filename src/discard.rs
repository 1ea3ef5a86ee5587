//! `kind = "discard"`: a sink that accepts every change and stores nothing.
//!
//! For measuring pgfanout itself (decode, assembly, routing, batching,
//! acknowledgement) without a store's cost, and for dry runs of a config. Its
//! checkpoint lives in memory only, so after a restart it starts from the
//! slot's confirmed position.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use pgfanout_core::{ChangeRef, DeliveryConfig, Lsn, MappingConfig, Sink, SinkError, TableName};
use serde::Deserialize;

/// `[[sink]] kind = "discard"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiscardSinkConfig {
    /// Sink name. Example: `"null"`.
    pub name: String,
    /// Tables it receives (`source` only; mappings apply as for any sink).
    #[serde(rename = "table")]
    pub tables: Vec<DiscardTableConfig>,
    /// Lanes and error policy, `[sink.delivery]`.
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

/// One routed table of a discard sink.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiscardTableConfig {
    /// Source table, `schema.table`.
    pub source: String,
    /// Same meaning as for other sinks.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Same meaning as for other sinks.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Same meaning as for other sinks.
    #[serde(default)]
    pub filter: Option<String>,
}

impl DiscardSinkConfig {
    /// The routed tables with their mappings.
    pub fn tables(&self) -> Vec<(TableName, MappingConfig)> {
        self.tables
            .iter()
            .map(|table| {
                let mapping = MappingConfig {
                    columns: table.columns.clone(),
                    exclude: table.exclude.clone(),
                    filter: table.filter.clone(),
                    ..MappingConfig::default()
                };
                (TableName::parse(&table.source), mapping)
            })
            .collect()
    }

    /// Problems serde cannot see.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = self.delivery.validate(&self.name);
        if self.tables.is_empty() {
            problems.push(format!("sink {}: add at least one [[sink.table]] with a source", self.name));
        }
        problems
    }
}

/// Accepts everything; remembers only the checkpoint.
pub struct DiscardSink {
    name: String,
    checkpoint: AtomicU64,
    source: std::sync::Mutex<Option<String>>,
}

impl DiscardSink {
    /// A sink named `name`.
    pub fn new(name: &str) -> Self {
        DiscardSink { name: name.to_owned(), checkpoint: AtomicU64::new(0), source: std::sync::Mutex::new(None) }
    }
}

#[async_trait]
impl Sink for DiscardSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn load_checkpoint(&self) -> Result<Option<Lsn>, SinkError> {
        let checkpoint = self.checkpoint.load(Ordering::Acquire);
        Ok((checkpoint > 0).then_some(Lsn(checkpoint)))
    }

    async fn load_source(&self) -> Result<Option<String>, SinkError> {
        Ok(self.source.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone())
    }

    async fn store_source(&self, record: &str) -> Result<(), SinkError> {
        *self.source.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(record.to_owned());
        Ok(())
    }

    async fn apply(&self, _changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> Result<(), SinkError> {
        if let Some(checkpoint) = checkpoint {
            self.checkpoint.fetch_max(checkpoint.0, Ordering::AcqRel);
        }
        Ok(())
    }
}
