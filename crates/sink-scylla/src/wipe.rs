//! `rebuild --wipe` for Cassandra/ScyllaDB: empties the tables pgfanout
//! maps one source table to (its `[[sink.table.target]]` tables, or the
//! default one named like the source table), with `TRUNCATE`.
//!
//! While pgfanout streams (`older_than` set), the wipe runs once the sink
//! applied every change before the rebuild's barrier, and `TRUNCATE` also
//! removes what the stream applied after the barrier: these stores order
//! writes by write timestamp, handed out in first-sight order across lanes,
//! so no timestamp separates "before the barrier" from "after it". That is
//! safe because the rebuild's copy starts only after the wipe returns: a
//! change the wipe removed was committed before the copy reads its row, so
//! the copy writes it back; changes committed after the wipe are applied
//! as usual.
//! Nothing else lives in a mapped table, so emptying it removes only what
//! pgfanout wrote.

use pgfanout_core::{SinkError, TableName, TableSchema};

use crate::error::ScyllaSinkError;
use crate::sink::ScyllaSink;

impl ScyllaSink {
    /// See [`pgfanout_core::Sink::wipe`]; the count of tables emptied.
    pub(crate) async fn wipe_table(&self, table: &TableSchema) -> Result<u64, SinkError> {
        let config = self.config();
        let label = table.table.to_string();
        let Some(table_config) = config.tables.iter().find(|t| TableName::parse(&t.source) == table.table) else {
            return Err(SinkError::cannot_wipe(&config.name, &label, "the sink does not route this table"));
        };
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
