//! The initial snapshot in `run`: which tables each sink needs copied, and
//! the tasks that copy them while the stream goes on (see the
//! `pgfanout-snapshot` crate for how a chunk joins the stream).
//!
//! Which tables, per sink, from its stored progress and checkpoint:
//! - progress stored: every routed table it does not mark done (a table
//!   newly added to the sink's config, or one a crash interrupted);
//! - no progress and no checkpoint (first start): every routed table;
//! - no progress but a checkpoint (a sink from a pgfanout without
//!   snapshots): none; its tables are recorded as done, so that only
//!   tables added later are copied.

use std::sync::Arc;

use anyhow::Context;
use pgfanout_core::{Lsn, Metrics, Sink, TableName};
use pgfanout_snapshot::{
    ChunkLimits, SinkTarget, SnapshotProgress, SnapshotSettings, Snapshotter, TableProgress, WatermarkMerge,
};
use pgoutput::TypeRegistry;
use tokio::sync::watch;

use crate::config::SnapshotConfig;

/// The tables `sink` needs copied with the progress to resume from; `None`
/// when it needs none.
pub async fn plan(
    sink: &dyn Sink,
    checkpoint: Option<Lsn>,
    tables: Vec<TableName>,
    config: &SnapshotConfig,
) -> anyhow::Result<Option<(Vec<TableName>, SnapshotProgress)>> {
    if !config.enabled {
        return Ok(None);
    }
    let stored = sink.load_snapshot_progress().await.with_context(|| format!("sink {}", sink.name()))?;
    let progress = match (stored, checkpoint) {
        (Some(text), _) => SnapshotProgress::parse(&text).with_context(|| format!("sink {}", sink.name()))?,
        (None, None) => SnapshotProgress::default(),
        (None, Some(_)) => {
            let mut adopted = SnapshotProgress::default();
            for table in &tables {
                adopted.tables.insert(table.to_string(), TableProgress::Done { chunks: 0, rows: 0 });
            }
            sink.store_snapshot_progress(&adopted.to_stored())
                .await
                .with_context(|| format!("sink {}: recording its tables as copied", sink.name()))?;
            return Ok(None);
        }
    };
    let pending: Vec<TableName> = tables.into_iter().filter(|table| !progress.is_done(&table.to_string())).collect();
    Ok((!pending.is_empty()).then_some((pending, progress)))
}

/// A sink whose tables are to be copied once its worker runs.
pub struct Planned {
    /// The sink.
    pub sink: Arc<dyn Sink>,
    /// Its tables to copy.
    pub tables: Vec<TableName>,
    /// Where it resumes.
    pub progress: SnapshotProgress,
}

/// Starts copying `planned` sinks' tables; `acked` gives each sink's
/// worker acknowledgements by name. The merge's tap must be on the
/// pipeline already.
pub fn start(
    planned: Vec<Planned>,
    acked: &[(String, watch::Receiver<Lsn>)],
    snapshotter: Snapshotter,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let copies: Vec<(String, TableName)> = planned
        .iter()
        .flat_map(|planned| planned.tables.iter().map(|table| (planned.sink.name().to_owned(), table.clone())))
        .collect();
    let (metrics, options) = (snapshotter.metrics.clone(), snapshotter.options.clone());
    for Planned { sink, tables, progress } in planned {
        let Some((_, acked)) = acked.iter().find(|(name, _)| name == sink.name()) else { continue };
        let target = SinkTarget { sink: sink.clone(), acked: acked.clone(), tables, progress };
        let snapshotter = snapshotter.clone();
        // Counted at once, so /readyz says "snapshotting" from the start.
        snapshotter.metrics.snapshot_tables_remaining.with_label_values(&[sink.name()]).set(target.tables.len() as i64);
        tasks.push(tokio::spawn(async move {
            let name = sink.name().to_owned();
            tracing::info!(sink = %name, tables = target.tables.len(), "snapshot: copying existing rows");
            match snapshotter.run_sink(target).await {
                Ok(()) => tracing::info!(sink = %name, "snapshot done"),
                Err(err) => {
                    tracing::error!(sink = %name, error = %pgfanout_core::error_chain(&err), "snapshot stopped")
                }
            }
        }));
    }
    // After the loop: every sink's remaining tables are counted by now.
    if !copies.is_empty() {
        tasks.push(tokio::spawn(crate::progress::snapshot(metrics, options, copies)));
    }
    tasks
}

/// The snapshotter of `run`: the source's settings, a merge whose
/// watermarks carry this process's run id, the database's user types.
pub fn snapshotter(
    options: pg_replication::ConnectOptions,
    publication: String,
    user_types: &[(pgoutput::Oid, pgoutput::value::TypeKind)],
    config: &SnapshotConfig,
    metrics: Metrics,
) -> Snapshotter {
    let mut types = TypeRegistry::new();
    for (oid, kind) in user_types {
        // A type the registry refuses converts as text, as in the stream.
        let _ = types.register(*oid, *kind);
    }
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 32;
    let settings = SnapshotSettings {
        parallel_tables: config.parallel_tables,
        chunks_in_flight: config.chunks_in_flight,
        readers_per_table: config.readers_per_table,
        chunk: ChunkLimits { rows: config.chunk_rows, bytes: config.chunk_mb.saturating_mul(1024 * 1024) },
    };
    Snapshotter::new(options, publication, WatermarkMerge::new(run), Arc::new(types), settings, metrics)
}
