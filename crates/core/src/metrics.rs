//! Prometheus metrics: names in one place, registered on one registry.
//!
//! Names follow `pgfanout_<noun>_<unit>[_total]`; labels are of low
//! cardinality (sink, table, op, kind) and never carry row values or keys.

use std::collections::HashMap;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::model::TableName;

/// Row changes of a published table that no sink routes, by table: the
/// publication holds a table the config does not (changes dropped on purpose?).
pub const UNROUTED_CHANGES_TOTAL: &str = "pgfanout_unrouted_changes_total";
/// Row changes received from PostgreSQL, by table and op.
pub const EVENTS_TOTAL: &str = "pgfanout_events_total";
/// Committed transactions received.
pub const TRANSACTIONS_TOTAL: &str = "pgfanout_transactions_total";
/// Changes applied by a sink, by table and op.
pub const SINK_APPLIED_TOTAL: &str = "pgfanout_sink_applied_total";
/// Changes per applied batch.
pub const SINK_BATCH_SIZE: &str = "pgfanout_sink_batch_size";
/// Time to apply one batch.
pub const SINK_APPLY_SECONDS: &str = "pgfanout_sink_apply_seconds";
/// Failed apply attempts, by kind.
pub const SINK_ERRORS_TOTAL: &str = "pgfanout_sink_errors_total";
/// Retries of failed batches.
pub const SINK_RETRIES_TOTAL: &str = "pgfanout_sink_retries_total";
/// Highest end LSN a sink has durably applied.
pub const CHECKPOINT_LSN: &str = "pgfanout_checkpoint_lsn";
/// Flush LSN last confirmed to PostgreSQL.
pub const CONFIRMED_FLUSH_LSN: &str = "pgfanout_confirmed_flush_lsn";
/// Bytes of WAL between the server's position and the confirmed flush LSN.
pub const SOURCE_LAG_BYTES: &str = "pgfanout_source_lag_bytes";
/// Changes a sink rejected that went to its dead-letter destination.
pub const DEAD_LETTER_TOTAL: &str = "pgfanout_dead_letter_total";
/// Transactions waiting in a sink's queue.
pub const SINK_QUEUE_DEPTH: &str = "pgfanout_sink_queue_depth";
/// Seconds from a transaction's commit on the source to its apply in a sink.
pub const SOURCE_LAG_SECONDS: &str = "pgfanout_source_lag_seconds";
/// WAL the slot holds back: the server's position minus the slot's restart LSN.
pub const SLOT_RETAINED_WAL_BYTES: &str = "pgfanout_slot_retained_wal_bytes";
/// 1 while a sink's last write attempt reached the store, 0 after a failure to reach it.
pub const SINK_UP: &str = "pgfanout_sink_up";
/// Bytes of streamed, uncommitted changes held in memory.
pub const STREAMED_MEMORY_BYTES: &str = "pgfanout_streamed_memory_bytes";
/// Bytes of streamed changes written to spill files.
pub const STREAMED_SPILLED_BYTES_TOTAL: &str = "pgfanout_streamed_spilled_bytes_total";
/// Bytes of the change archive's segments on disk.
pub const ARCHIVE_BYTES: &str = "pgfanout_archive_bytes";
/// Commit LSN of the oldest transaction the change archive holds (0 when empty).
pub const ARCHIVE_OLDEST_LSN: &str = "pgfanout_archive_oldest_lsn";
/// Time to append one batch to the change archive and sync it.
pub const ARCHIVE_APPEND_SECONDS: &str = "pgfanout_archive_append_seconds";
/// Rows the initial snapshot (or a rebuild) wrote into a sink, by sink and table.
pub const SNAPSHOT_ROWS_TOTAL: &str = "pgfanout_snapshot_rows_total";
/// Tables a sink's snapshot has still to copy (0 once it is done).
pub const SNAPSHOT_TABLES_REMAINING: &str = "pgfanout_snapshot_tables_remaining";
/// Attempts to copy a table into a sink that failed (each is retried from the stored progress).
pub const SNAPSHOT_FAILURES_TOTAL: &str = "pgfanout_snapshot_failures_total";
/// Snapshot chunks read again because their read could not be merged as it
/// was (a transaction the read could not see may have changed the table
/// before the chunk's low watermark, or the table was truncated meanwhile).
pub const SNAPSHOT_CHUNKS_REREAD_TOTAL: &str = "pgfanout_snapshot_chunks_reread_total";
/// Tables whose copy into a sink failed with an error retrying alone cannot fix
/// (a missing privilege, key or table); retried until an operator fixes it.
pub const SNAPSHOT_TABLES_FAILED: &str = "pgfanout_snapshot_tables_failed";
/// Changes `pgfanout replay` applied into a sink from the change archive, in the running process.
pub const REPLAY_CHANGES_TOTAL: &str = "pgfanout_replay_changes_total";
/// 1 while a replay pauses the sink's worker (its queue fills, its acknowledgement stands still).
pub const SINK_PAUSED: &str = "pgfanout_sink_paused";
/// Build information as labels, value 1.
pub const BUILD_INFO: &str = "pgfanout_build_info";

/// Every metric pgfanout exports, cloneable into each task.
#[derive(Clone)]
pub struct Metrics {
    /// The registry the HTTP endpoint gathers.
    pub registry: Registry,
    /// See [`EVENTS_TOTAL`].
    pub events_total: IntCounterVec,
    /// See [`TRANSACTIONS_TOTAL`].
    pub transactions_total: IntCounter,
    /// See [`SLOT_RETAINED_WAL_BYTES`].
    pub slot_retained_wal_bytes: IntGauge,
    /// See [`SINK_UP`].
    pub sink_up: IntGaugeVec,
    /// See [`DEAD_LETTER_TOTAL`].
    pub dead_letter_total: IntCounterVec,
    /// See [`SINK_QUEUE_DEPTH`].
    pub sink_queue_depth: IntGaugeVec,
    /// See [`SOURCE_LAG_SECONDS`].
    pub source_lag_seconds: HistogramVec,
    /// See [`STREAMED_MEMORY_BYTES`].
    pub streamed_memory_bytes: IntGauge,
    /// See [`STREAMED_SPILLED_BYTES_TOTAL`].
    pub streamed_spilled_bytes_total: IntCounter,
    /// See [`SINK_APPLIED_TOTAL`].
    pub sink_applied_total: IntCounterVec,
    /// See [`UNROUTED_CHANGES_TOTAL`].
    pub unrouted_changes_total: IntCounterVec,
    /// See [`SINK_BATCH_SIZE`].
    pub sink_batch_size: HistogramVec,
    /// See [`SINK_APPLY_SECONDS`].
    pub sink_apply_seconds: HistogramVec,
    /// See [`SINK_ERRORS_TOTAL`].
    pub sink_errors_total: IntCounterVec,
    /// See [`SINK_RETRIES_TOTAL`].
    pub sink_retries_total: IntCounterVec,
    /// See [`CHECKPOINT_LSN`].
    pub checkpoint_lsn: IntGaugeVec,
    /// See [`CONFIRMED_FLUSH_LSN`].
    pub confirmed_flush_lsn: IntGauge,
    /// See [`SOURCE_LAG_BYTES`].
    pub source_lag_bytes: IntGauge,
    /// See [`ARCHIVE_BYTES`].
    pub archive_bytes: IntGauge,
    /// See [`ARCHIVE_OLDEST_LSN`].
    pub archive_oldest_lsn: IntGauge,
    /// See [`ARCHIVE_APPEND_SECONDS`].
    pub archive_append_seconds: Histogram,
    /// See [`SNAPSHOT_ROWS_TOTAL`].
    pub snapshot_rows_total: IntCounterVec,
    /// See [`SNAPSHOT_TABLES_REMAINING`].
    pub snapshot_tables_remaining: IntGaugeVec,
    /// See [`SNAPSHOT_FAILURES_TOTAL`].
    pub snapshot_failures_total: IntCounterVec,
    /// See [`SNAPSHOT_TABLES_FAILED`].
    pub snapshot_tables_failed: IntGaugeVec,
    /// See [`SNAPSHOT_CHUNKS_REREAD_TOTAL`].
    pub snapshot_chunks_reread_total: IntCounterVec,
    /// See [`REPLAY_CHANGES_TOTAL`].
    pub replay_changes_total: IntCounterVec,
    /// See [`SINK_PAUSED`].
    pub sink_paused: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers every metric on a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let histogram_vec = |name: &str, help: &str, buckets: Vec<f64>| -> Result<HistogramVec, prometheus::Error> {
            let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["sink"])?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let transactions_total =
            IntCounter::new(TRANSACTIONS_TOTAL, "Committed transactions received from PostgreSQL")?;
        registry.register(Box::new(transactions_total.clone()))?;
        let checkpoint_lsn =
            IntGaugeVec::new(Opts::new(CHECKPOINT_LSN, "Highest end LSN the sink has durably applied"), &["sink"])?;
        registry.register(Box::new(checkpoint_lsn.clone()))?;
        let confirmed_flush_lsn = IntGauge::new(CONFIRMED_FLUSH_LSN, "Flush LSN last confirmed to PostgreSQL")?;
        registry.register(Box::new(confirmed_flush_lsn.clone()))?;
        let source_lag_bytes = IntGauge::new(
            SOURCE_LAG_BYTES,
            "WAL bytes between the server's last reported position and the confirmed flush LSN",
        )?;
        registry.register(Box::new(source_lag_bytes.clone()))?;
        let streamed_memory_bytes =
            IntGauge::new(STREAMED_MEMORY_BYTES, "Bytes of streamed, uncommitted changes held in memory")?;
        registry.register(Box::new(streamed_memory_bytes.clone()))?;
        let streamed_spilled_bytes_total =
            IntCounter::new(STREAMED_SPILLED_BYTES_TOTAL, "Bytes of streamed changes written to spill files")?;
        registry.register(Box::new(streamed_spilled_bytes_total.clone()))?;
        let slot_retained_wal_bytes =
            IntGauge::new(SLOT_RETAINED_WAL_BYTES, "WAL bytes the slot holds back (server position - restart_lsn)")?;
        registry.register(Box::new(slot_retained_wal_bytes.clone()))?;
        let sink_up = IntGaugeVec::new(
            Opts::new(SINK_UP, "1 while the sink's store is reachable, 0 after a failure to reach it"),
            &["sink"],
        )?;
        registry.register(Box::new(sink_up.clone()))?;
        let sink_queue_depth =
            IntGaugeVec::new(Opts::new(SINK_QUEUE_DEPTH, "Transactions waiting in the sink's queue"), &["sink"])?;
        registry.register(Box::new(sink_queue_depth.clone()))?;
        let build_info = IntGaugeVec::new(Opts::new(BUILD_INFO, "Build information"), &["version"])?;
        registry.register(Box::new(build_info.clone()))?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let archive_bytes = IntGauge::new(ARCHIVE_BYTES, "Bytes of the change archive's segments on disk")?;
        registry.register(Box::new(archive_bytes.clone()))?;
        let archive_oldest_lsn =
            IntGauge::new(ARCHIVE_OLDEST_LSN, "Commit LSN of the oldest transaction in the change archive")?;
        registry.register(Box::new(archive_oldest_lsn.clone()))?;
        let archive_append_seconds = Histogram::with_opts(
            HistogramOpts::new(ARCHIVE_APPEND_SECONDS, "Time to append one batch to the change archive and sync it")
                .buckets(prometheus::exponential_buckets(0.00005, 2.0, 16)?),
        )?;
        registry.register(Box::new(archive_append_seconds.clone()))?;
        let snapshot_tables_remaining = IntGaugeVec::new(
            Opts::new(SNAPSHOT_TABLES_REMAINING, "Tables the sink's snapshot has still to copy"),
            &["sink"],
        )?;
        registry.register(Box::new(snapshot_tables_remaining.clone()))?;
        let snapshot_tables_failed = IntGaugeVec::new(
            Opts::new(SNAPSHOT_TABLES_FAILED, "Tables whose snapshot failed with an error an operator must fix"),
            &["sink"],
        )?;
        registry.register(Box::new(snapshot_tables_failed.clone()))?;
        let sink_paused =
            IntGaugeVec::new(Opts::new(SINK_PAUSED, "1 while a replay pauses the sink's worker"), &["sink"])?;
        registry.register(Box::new(sink_paused.clone()))?;

        Ok(Metrics {
            events_total: counter_vec(EVENTS_TOTAL, "Row changes received from PostgreSQL", &["table", "op"])?,
            transactions_total,
            slot_retained_wal_bytes,
            sink_up,
            dead_letter_total: counter_vec(
                DEAD_LETTER_TOTAL,
                "Changes a sink rejected, written to its dead-letter destination",
                &["sink"],
            )?,
            sink_queue_depth,
            source_lag_seconds: histogram_vec(
                SOURCE_LAG_SECONDS,
                "Seconds from commit on the source to apply in the sink",
                // Millisecond steps at the low end: a healthy pipeline lags a few
                // milliseconds, and 1 ms must read differently from 5 ms.
                vec![
                    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                ],
            )?,
            streamed_memory_bytes,
            streamed_spilled_bytes_total,
            unrouted_changes_total: counter_vec(
                UNROUTED_CHANGES_TOTAL,
                "Row changes of published tables that no sink routes",
                &["table"],
            )?,
            sink_applied_total: counter_vec(
                SINK_APPLIED_TOTAL,
                "Row changes applied by a sink",
                &["sink", "table", "op"],
            )?,
            sink_batch_size: histogram_vec(
                SINK_BATCH_SIZE,
                "Row changes per applied batch",
                vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0],
            )?,
            sink_apply_seconds: histogram_vec(
                SINK_APPLY_SECONDS,
                "Time to apply one batch",
                prometheus::exponential_buckets(0.0005, 2.0, 14)?,
            )?,
            sink_errors_total: counter_vec(SINK_ERRORS_TOTAL, "Failed sink apply attempts", &["sink", "kind"])?,
            sink_retries_total: counter_vec(SINK_RETRIES_TOTAL, "Retries of failed sink batches", &["sink"])?,
            checkpoint_lsn,
            confirmed_flush_lsn,
            source_lag_bytes,
            archive_bytes,
            archive_oldest_lsn,
            archive_append_seconds,
            snapshot_rows_total: counter_vec(
                SNAPSHOT_ROWS_TOTAL,
                "Rows the snapshot wrote into the sink",
                &["sink", "table"],
            )?,
            snapshot_tables_remaining,
            snapshot_failures_total: counter_vec(
                SNAPSHOT_FAILURES_TOTAL,
                "Attempts to copy a table into the sink that failed",
                &["sink", "table"],
            )?,
            snapshot_tables_failed,
            snapshot_chunks_reread_total: counter_vec(
                SNAPSHOT_CHUNKS_REREAD_TOTAL,
                "Snapshot chunks read again because their read could not be merged as it was",
                &["sink", "table"],
            )?,
            replay_changes_total: counter_vec(
                REPLAY_CHANGES_TOTAL,
                "Changes a replay applied into the sink from the change archive",
                &["sink"],
            )?,
            sink_paused,
            registry,
        })
    }

    /// The registry's contents in the Prometheus text format.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder.encode_to_string(&self.registry.gather()).unwrap_or_else(|err| format!("# encoding failed: {err}\n"))
    }
}

/// The series of a counter labelled by table and operation (after fixed
/// leading labels, e.g. the sink), resolved once per table: counting a
/// transaction's changes then costs one map lookup per table and operation
/// instead of a label look-up with freshly formatted strings.
pub struct TableOpCounters {
    counters: IntCounterVec,
    leading: Vec<String>,
    series: HashMap<TableName, [Option<IntCounter>; OPS.len()]>,
}

/// The operation labels, as [`crate::ChangeOp::label`] gives them.
const OPS: [&str; 4] = ["insert", "update", "delete", "truncate"];

impl TableOpCounters {
    /// Counters of `counters` whose labels are `leading`, then table and op.
    pub fn new(counters: IntCounterVec, leading: &[&str]) -> Self {
        TableOpCounters {
            counters,
            leading: leading.iter().map(|label| label.to_string()).collect(),
            series: HashMap::new(),
        }
    }

    /// Adds `count` to the series of `table` and `op`.
    pub fn add(&mut self, table: &TableName, op: &str, count: u64) {
        let Some(index) = OPS.iter().position(|known| *known == op) else { return };
        // One look-up (a SipHash of the name) for a series resolved before:
        // nearly every call.
        if let Some(Some(counter)) = self.series.get(table).map(|ops| &ops[index]) {
            counter.inc_by(count);
            return;
        }
        let ops = self.series.entry(table.clone()).or_default();
        let counter = ops[index].get_or_insert_with(|| {
            let table = table.to_string();
            let mut labels: Vec<&str> = self.leading.iter().map(String::as_str).collect();
            labels.extend([table.as_str(), op]);
            self.counters.with_label_values(&labels)
        });
        counter.inc_by(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_op_counters_count_into_the_labelled_series() {
        let metrics = Metrics::new().unwrap();
        let mut counters = TableOpCounters::new(metrics.sink_applied_total.clone(), &["cache"]);
        let orders = TableName::new("public", "orders");
        counters.add(&orders, "insert", 3);
        counters.add(&orders, "insert", 2);
        counters.add(&orders, "delete", 1);
        let applied = |op: &str| metrics.sink_applied_total.with_label_values(&["cache", "public.orders", op]).get();
        assert_eq!((applied("insert"), applied("delete"), applied("update")), (5, 1, 0));
    }
}
