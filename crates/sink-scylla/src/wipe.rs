//! `rebuild --wipe` for Cassandra/ScyllaDB: empties the tables pgfanout
//! maps one source table to (its `[[sink.table.target]]` tables, or the
//! default one named like the source table), with `TRUNCATE`.
//!
//! Only without streaming (`pgfanout rebuild` with no pgfanout running):
//! these stores order writes by write timestamp, not by pgfanout's version,
//! and the timestamps of changes applied in parallel lanes are handed out
//! in first-sight order, so no timestamp separates "written before the
//! rebuild's barrier" from "after it". A wipe while streaming could remove
//! a change the stream just wrote; it is refused with that advice instead.
//! Nothing else lives in a mapped table, so emptying it removes only what
//! pgfanout wrote.

use pgfanout_core::{SinkError, TableName, TableSchema, Version};

use crate::error::ScyllaSinkError;
use crate::sink::ScyllaSink;

impl ScyllaSink {
    /// See [`pgfanout_core::Sink::wipe`]; the count of tables emptied.
    pub(crate) async fn wipe_table(&self, table: &TableSchema, older_than: Option<Version>) -> Result<u64, SinkError> {
        let config = self.config();
        let label = table.table.to_string();
        let Some(table_config) = config.tables.iter().find(|t| TableName::parse(&t.source) == table.table) else {
            return Err(SinkError::cannot_wipe(&config.name, &label, "the sink does not route this table"));
        };
        if older_than.is_some() {
            return Err(SinkError::cannot_wipe(
                &config.name,
                &label,
                "Cassandra/ScyllaDB cannot be wiped while pgfanout streams (writes are ordered by timestamp, not \
                 version); stop pgfanout, run the same `pgfanout rebuild --wipe` (it then runs standalone), and \
                 start pgfanout again; or rebuild without --wipe",
            ));
        }
        if !config.truncate {
            return Err(SinkError::cannot_wipe(
                &config.name,
                &label,
                "truncate = false (the server has no TRUNCATE): empty the mapped tables yourself, then rebuild \
                 without --wipe",
            ));
        }
        let mut targets: Vec<String> = table_config.targets.iter().map(|target| target.table.clone()).collect();
        if targets.is_empty() {
            targets.push(table.table.name.clone());
        }
        let failed = |err: ScyllaSinkError| err.into_sink_error(&config.name, format!("wiping table {label}"));
        let session = self.session().await.map_err(failed)?;
        for target in &targets {
            let cql = format!("TRUNCATE {}.{target}", config.keyspace);
            session
                .query_unpaged(cql.as_str(), ())
                .await
                .map_err(|source| failed(ScyllaSinkError::Execute { what: cql.clone(), source: Box::new(source) }))?;
        }
        tracing::info!(sink = %config.name, table = %label, tables = targets.len(), "wiped");
        Ok(targets.len() as u64)
    }
}
