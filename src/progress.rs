//! A progress bar on a terminal while `run` catches up on the WAL that piled
//! up before it started (a long outage, a new sink): from the slot's confirmed
//! position to the server's position at start. It disappears once caught up;
//! off when stderr is not a terminal (logs stay clean for collectors).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use pgfanout_core::{Lsn, Metrics};
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
