//! A side task watching the source while the stream runs: how much WAL the
//! slot holds back (`pgfanout_slot_retained_wal_bytes`), and heartbeats.
//!
//! A heartbeat is a tiny non-transactional `pg_logical_emit_message`
//! written when no transaction arrived for `heartbeat_interval_secs`: on an
//! idle database it gives the walsender WAL to move past, so the slot keeps
//! advancing and PostgreSQL can recycle WAL. Each round uses a short-lived
//! connection; failures are logged once per distinct error and never stop
//! replication.

use std::time::{Duration, Instant};

use pg_replication::{ConnectOptions, ReplicationConnection, ReplicationError};
use pgfanout_core::{error_chain, Metrics};
use postgres_protocol::escape::escape_literal;
use tokio::sync::watch;

/// How often retained WAL is measured.
const MEASURE_INTERVAL: Duration = Duration::from_secs(15);

/// The heartbeat: a non-transactional logical message, ignored by pgfanout.
const HEARTBEAT_SQL: &str = "SELECT pg_catalog.pg_logical_emit_message(false, 'pgfanout.heartbeat', '')";

/// Runs until shutdown. `heartbeat_secs = 0` turns heartbeats off.
pub async fn watch_source(
    options: ConnectOptions,
    slot: String,
    heartbeat_secs: u64,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let heartbeat = (heartbeat_secs > 0).then(|| Duration::from_secs(heartbeat_secs));
    let tick = heartbeat.map_or(MEASURE_INTERVAL, |interval| interval.min(MEASURE_INTERVAL));
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let retained_sql = format!(
        "SELECT (pg_catalog.pg_current_wal_lsn() - restart_lsn)::bigint AS retained \
         FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
        escape_literal(&slot)
    );
    let mut transactions_seen = metrics.transactions_total.get();
    let mut quiet_since = Instant::now();
    let mut last_measured: Option<Instant> = None;
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticks.tick() => {}
        }
        let transactions = metrics.transactions_total.get();
        if transactions != transactions_seen {
            transactions_seen = transactions;
            quiet_since = Instant::now();
        }
        let beat = heartbeat.is_some_and(|interval| quiet_since.elapsed() >= interval);
        let measure = last_measured.is_none_or(|at| at.elapsed() >= MEASURE_INTERVAL);
        if !beat && !measure {
            continue;
        }
        let outcome = async {
            let mut connection = ReplicationConnection::connect(&options).await?;
            if measure {
                let result = connection.simple_query(&retained_sql).await?;
                if let Some(bytes) = result.get(0, "retained").and_then(|text| text.parse::<i64>().ok()) {
                    metrics.slot_retained_wal_bytes.set(bytes);
                }
            }
            if beat {
                connection.simple_query(HEARTBEAT_SQL).await?;
                tracing::debug!("heartbeat written");
            }
            connection.close().await
        }
        .await;
        if measure {
            last_measured = Some(Instant::now());
        }
        if beat {
            quiet_since = Instant::now();
        }
        report(outcome, &mut last_error);
    }
}

fn report(outcome: Result<(), ReplicationError>, last_error: &mut String) {
    match outcome {
        Ok(()) => last_error.clear(),
        Err(err) => {
            let text = error_chain(&err);
            if text != *last_error {
                tracing::warn!(
                    error = %text,
                    fix = "for heartbeats: GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) \
                           TO <source role>, or set source.heartbeat_interval_secs = 0",
                    "cannot watch the source (retained WAL, heartbeat)"
                );
                *last_error = text;
            }
        }
    }
}
