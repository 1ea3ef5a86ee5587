//! Progress bars of `run` on a terminal.
//!
//! Catching up on the WAL that piled up before it started (a long outage, a
//! new sink): from the slot's confirmed position to the server's position at
//! start. It disappears once caught up; off when stderr is not a terminal
//! (logs stay clean for collectors).
//!
//! The snapshot ([`snapshot`]): one bar per table copied into a sink, on
//! stdout when it is a terminal; otherwise progress lines in the log.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pgfanout_core::{Lsn, Metrics, TableName};
use tokio::sync::watch;

/// Backlogs smaller than this are not worth a bar.
const MIN_BACKLOG_BYTES: u64 = 16 * 1024 * 1024;

/// Draws the bar until `metrics` shows `target` confirmed, or shutdown.
pub async fn catch_up(metrics: Metrics, target: Lsn, mut shutdown: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    // The first confirmation tells where the slot started.
    let start = loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticks.tick() => {}
        }
        let confirmed = metrics.confirmed_flush_lsn.get() as u64;
        if confirmed > 0 {
            break confirmed;
        }
    };
    let backlog = target.0.saturating_sub(start);
    if backlog < MIN_BACKLOG_BYTES {
        return;
    }
    let bar = ProgressBar::new(backlog);
    bar.set_style(
        ProgressStyle::with_template("catching up {wide_bar} {bytes}/{total_bytes} of WAL, {bytes_per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = ticks.tick() => {}
        }
        let confirmed = metrics.confirmed_flush_lsn.get() as u64;
        bar.set_position(confirmed.saturating_sub(start).min(backlog));
        if confirmed >= target.0 {
            break;
        }
    }
    bar.finish_and_clear();
}

/// How often the snapshot's progress is logged when stdout is not a terminal.
const SNAPSHOT_LOG_EVERY: Duration = Duration::from_secs(30);

/// The snapshot's progress: on a terminal (stdout) one bar per table being
/// copied into a sink, rows copied of the rows estimated (`pg_class.reltuples`,
/// summed over partitions); otherwise an info line per table every
/// [`SNAPSHOT_LOG_EVERY`]. Ends once every sink in `copies` has no table left.
pub async fn snapshot(metrics: Metrics, options: pg_replication::ConnectOptions, copies: Vec<(String, TableName)>) {
    let estimates = estimated_rows(&options, &copies).await;
    let on_terminal = std::io::stdout().is_terminal();
    let target = if on_terminal { ProgressDrawTarget::stdout() } else { ProgressDrawTarget::hidden() };
    let bars = MultiProgress::with_draw_target(target);
    let style =
        ProgressStyle::with_template("{prefix:.bold} {wide_bar} {human_pos}/{human_len} rows, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    let tracked: Vec<_> = copies
        .iter()
        .map(|(sink, table)| {
            let label = table.to_string();
            let estimate = estimates.get(&label).copied().unwrap_or(0);
            let bar = bars.add(ProgressBar::new(estimate.max(1)));
            bar.set_style(style.clone());
            bar.set_prefix(format!("snapshot {sink} {label}"));
            let copied = metrics.snapshot_rows_total.with_label_values(&[sink, &label]);
            (sink, label, estimate, bar, copied)
        })
        .collect();
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    let mut logged = std::time::Instant::now();
    loop {
        ticks.tick().await;
        let log_now = !on_terminal && logged.elapsed() >= SNAPSHOT_LOG_EVERY;
        let mut all_done = true;
        for (sink, label, estimate, bar, copied) in &tracked {
            let rows = copied.get();
            // The estimate is a planner statistic: it may be low.
            if rows > bar.length().unwrap_or(0) {
                bar.set_length(rows);
            }
            bar.set_position(rows);
            let remaining = metrics.snapshot_tables_remaining.get_metric_with_label_values(&[sink.as_str()]);
            let sink_done = remaining.map_or(true, |gauge| gauge.get() == 0);
            if sink_done {
                bar.finish();
            } else {
                all_done = false;
                if log_now {
                    tracing::info!(sink = %sink, table = %label, rows, estimated_rows = estimate, "snapshot progress");
                }
            }
        }
        if log_now {
            logged = std::time::Instant::now();
        }
        if all_done {
            return;
        }
    }
}

/// Rows each table holds by the planner's statistics (`reltuples`, over
/// its partitions for a partitioned table), by `schema.table`; empty when
/// they cannot be read (the bars then grow with the rows copied).
async fn estimated_rows(
    options: &pg_replication::ConnectOptions,
    copies: &[(String, TableName)],
) -> std::collections::HashMap<String, u64> {
    let mut estimates = std::collections::HashMap::new();
    let Ok(mut connection) = pg_replication::ReplicationConnection::connect(options).await else { return estimates };
    for (_, table) in copies {
        let label = table.to_string();
        if estimates.contains_key(&label) {
            continue;
        }
        let sql = format!(
            "SELECT coalesce(sum(c.reltuples) FILTER (WHERE c.reltuples > 0), 0)::bigint AS rows \
             FROM pg_catalog.pg_partition_tree({}::regclass) t JOIN pg_catalog.pg_class c ON c.oid = t.relid",
            postgres_protocol::escape::escape_literal(&format!(
                "{}.{}",
                postgres_protocol::escape::escape_identifier(&table.schema),
                postgres_protocol::escape::escape_identifier(&table.name)
            ))
        );
        if let Ok(result) = connection.simple_query(&sql).await {
            if let Some(rows) = result.get(0, "rows").and_then(|text| text.parse().ok()) {
                estimates.insert(label, rows);
            }
        }
    }
    estimates
}
