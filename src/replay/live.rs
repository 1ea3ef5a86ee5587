//! Replays in the running process: `POST /replay` pauses one sink's worker,
//! applies the archive into it up to what it holds, and resumes it; `GET
//! /replay` reports (see the parent module's doc for why this is exact).
//!
//! ```text
//!  POST /replay ─► checks (sink, tables, range, archive) ─► 202 + id
//!      task: PauseHandle::pause_setting_aside ─► checkpoint C ─► archive holds up to C?
//!            ─► apply --from ..= min(--to, C)
//!            ─► apply (C, horizon] while the worker's horizon moves; hold; last round
//!            ─► Paused::resume(horizon) (the worker stores it and goes on after it)
//! ```
//!
//! A replay ends with the streaming attempt that started it, and when
//! pgfanout shuts down (the worker must drain): it is then `failed`, and
//! running it again completes it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use pgfanout_core::{Lsn, Metrics, PauseHandle, Sink, SinkStatus, TableMapping, TableName};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{apply_pieces, open_at, refuse_past_the_end, Bound, Target};

/// Rounds of applying what the paused sink set aside before it is held (its
/// queue then fills, for the last round only), in case the store cannot
/// keep up with the stream: the replay ends either way.
const CATCH_UP_ROUNDS: u32 = 20;
/// How long a replay waits for the archive to hold what the paused sink holds.
const ARCHIVE_WAIT: Duration = Duration::from_secs(60);
/// How long the archive's worker must sit idle, with the sink's checkpoint
/// beyond it, before that checkpoint counts as a snapshot watermark (which
/// the archive never holds) rather than a transaction still on its way.
const ARCHIVE_IDLE: Duration = Duration::from_secs(1);

/// What `POST /replay` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The sink's name.
    pub sink: String,
    /// First commit LSN to re-apply (`0/16B3748`).
    pub from: String,
    /// Last commit LSN to re-apply; up to what the sink holds when absent.
    #[serde(default)]
    pub to: Option<String>,
    /// Tables (`schema.table` or `table`); every routed one when empty.
    #[serde(default)]
    pub tables: Vec<String>,
}

/// One replay as `GET /replay` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayStatus {
    /// Its id within the process.
    pub id: u64,
    /// The sink.
    pub sink: String,
    /// First commit LSN re-applied.
    pub from: String,
    /// Last commit LSN to re-apply, if bounded.
    pub to: Option<String>,
    /// The tables; every routed one when empty.
    pub tables: Vec<String>,
    /// `pausing`, `replaying`, `done` or `failed`.
    pub state: String,
    /// The sink's checkpoint when its worker paused: the archive's range
    /// ends there; what the worker set aside after it is applied too.
    pub paused_at: Option<String>,
    /// Changes applied so far.
    pub changes: u64,
    /// Whole transactions read.
    pub transactions: u64,
    /// Commit LSN of the last transaction applied.
    pub last_commit_lsn: Option<String>,
    /// Seconds the sink was paused (once done).
    pub seconds: f64,
    /// Why it failed.
    pub error: Option<String>,
    /// `pgfanout_replay_changes_total` of the sink when it started.
    #[serde(skip)]
    counted_before: u64,
}

/// A sink of the running pipeline, as a replay needs it.
pub struct ReplaySink {
    /// The sink (shared with its worker, which is paused while the replay writes).
    pub sink: Arc<dyn Sink>,
    /// Its routed tables and their mappings.
    pub tables: Vec<(TableName, Arc<TableMapping>)>,
    /// Its `delivery.lanes`.
    pub lanes: usize,
    /// Pauses its worker.
    pub pause: PauseHandle,
    /// Its worker's status (a replayed batch counts as progress for `/healthz`).
    pub status: SinkStatus,
    /// Its worker's acknowledgements.
    pub acked: watch::Receiver<Lsn>,
}

/// What the current stream offers to replays.
struct Live {
    sinks: Vec<ReplaySink>,
    /// The archive folder and its worker's acknowledgements.
    archive: Option<(PathBuf, watch::Receiver<Lsn>)>,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
}

/// Shared between the HTTP endpoint and `run`: the live pipeline's sinks
/// (while one streams) and every replay started in this process.
#[derive(Clone, Default)]
pub struct ReplayControl {
    live: Arc<RwLock<Option<Live>>>,
    replays: Arc<Mutex<Vec<ReplayStatus>>>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// Why `POST /replay` refused, with the HTTP status it answers.
#[derive(Debug, thiserror::Error)]
pub enum ReplayRefused {
    /// Not streaming yet (or standing by).
    #[error("pgfanout is not streaming yet (starting or standing by); try again once /readyz answers")]
    NotStreaming,
    /// No `[archive]`.
    #[error("this pgfanout runs without an [archive] section: there is nothing to replay from")]
    NoArchive,
    /// No such sink.
    #[error("no sink named {sink:?}; configured: {known}")]
    UnknownSink {
        /// The name asked for.
        sink: String,
        /// The configured names.
        known: String,
    },
    /// The request cannot be served as it stands (body, table, range).
    #[error("{0}")]
    BadRequest(String),
    /// A replay or a snapshot of that sink runs already.
    #[error("{0}")]
    Busy(String),
}

impl ReplayRefused {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            ReplayRefused::NotStreaming => 503,
            ReplayRefused::NoArchive | ReplayRefused::BadRequest(_) => 400,
            ReplayRefused::UnknownSink { .. } => 404,
            ReplayRefused::Busy(_) => 409,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ReplayControl {
    /// Makes the current stream's sinks (and the archive: its folder and its
    /// worker's acknowledgements) available to replays until `shutdown`.
    pub fn go_live(
        &self,
        sinks: Vec<ReplaySink>,
        archive: Option<(PathBuf, watch::Receiver<Lsn>)>,
        metrics: Metrics,
        shutdown: watch::Receiver<bool>,
    ) {
        *self.live.write().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(Live { sinks, archive, metrics, shutdown });
    }

    /// The streaming attempt ended: its replays stop (their sinks resume).
    pub fn go_offline(&self) {
        *self.live.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        for status in lock(&self.replays).iter_mut().filter(|status| status.is_running()) {
            status.state = "failed".into();
            status.error = Some("the stream stopped before the replay ended; run it again".into());
        }
    }

    /// Sinks a replay pauses now.
    pub fn paused_sinks(&self) -> Vec<String> {
        lock(&self.replays).iter().filter(|status| status.is_running()).map(|status| status.sink.clone()).collect()
    }

    /// Every replay of this process, with its counters brought up to date.
    pub fn statuses(&self, metrics: &Metrics) -> Vec<ReplayStatus> {
        let mut replays = lock(&self.replays).clone();
        for status in replays.iter_mut().filter(|status| status.state == "replaying") {
            let counted = metrics.replay_changes_total.with_label_values(&[&status.sink]).get();
            status.changes = counted.saturating_sub(status.counted_before);
        }
        replays
    }

    /// Starts the replay `body` asks for; what was scheduled.
    pub fn trigger(&self, body: &str, metrics: &Metrics) -> Result<ReplayStatus, ReplayRefused> {
        let request: ReplayRequest = serde_json::from_str(body).map_err(|err| {
            ReplayRefused::BadRequest(format!(
                "the request body is not {{\"sink\": NAME, \"from\": LSN, \"to\": LSN, \"tables\": [..]}}: {err}"
            ))
        })?;
        let lsn = |text: &str| {
            text.parse::<Lsn>().map_err(|_| ReplayRefused::BadRequest(format!("{text:?} is not an LSN like 0/16B3748")))
        };
        let from = lsn(&request.from)?;
        let to = request.to.as_deref().map(lsn).transpose()?;
        if let Some(to) = to.filter(|&to| to < from) {
            return Err(ReplayRefused::BadRequest(format!(
                "--to {to} is before --from {from}: give a range whose end is at or after its start"
            )));
        }
        let live = self.live.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(live) = live.as_ref() else { return Err(ReplayRefused::NotStreaming) };
        let Some((archive, archive_acked)) = &live.archive else { return Err(ReplayRefused::NoArchive) };
        let Some(target) = live.sinks.iter().find(|sink| sink.sink.name() == request.sink) else {
            let known = live.sinks.iter().map(|sink| sink.sink.name()).collect::<Vec<_>>().join(", ");
            return Err(ReplayRefused::UnknownSink { sink: request.sink, known });
        };
        let tables = request.tables.iter().map(|table| TableName::parse(table)).collect::<Vec<_>>();
        if let Some(unrouted) = tables.iter().find(|table| !target.tables.iter().any(|(routed, _)| routed == *table)) {
            let routed = target.tables.iter().map(|(table, _)| table.to_string()).collect::<Vec<_>>().join(", ");
            return Err(ReplayRefused::BadRequest(format!(
                "sink {} does not route table {unrouted}; it routes: {routed}",
                request.sink
            )));
        }
        let reader = open_at(archive, from).map_err(|err| ReplayRefused::BadRequest(format!("{err:#}")))?;
        let newest = reader.newest_transaction().map_err(|err| ReplayRefused::BadRequest(err.to_string()))?;
        refuse_past_the_end(from, newest, Some(*target.acked.borrow()))
            .map_err(|err| ReplayRefused::BadRequest(format!("{err:#}")))?;

        let mut replays = lock(&self.replays);
        if replays.iter().any(|status| status.sink == request.sink && status.is_running()) {
            return Err(ReplayRefused::Busy(format!(
                "a replay into sink {} is already running; wait for it to finish",
                request.sink
            )));
        }
        let copying = metrics
            .snapshot_tables_remaining
            .get_metric_with_label_values(&[&request.sink])
            .is_ok_and(|gauge| gauge.get() > 0);
        if copying {
            return Err(ReplayRefused::Busy(format!(
                "a snapshot of sink {} is running (initial copy or rebuild); replay once it is done",
                request.sink
            )));
        }
        let status = ReplayStatus {
            id: replays.len() as u64 + 1,
            sink: request.sink.clone(),
            from: from.to_string(),
            to: to.map(|to| to.to_string()),
            tables: tables.iter().map(ToString::to_string).collect(),
            state: "pausing".into(),
            paused_at: None,
            changes: 0,
            transactions: 0,
            last_commit_lsn: None,
            seconds: 0.0,
            error: None,
            counted_before: metrics.replay_changes_total.with_label_values(&[&request.sink]).get(),
        };
        replays.push(status.clone());
        let task = LiveReplay {
            id: status.id,
            from,
            bound_to: to.unwrap_or(Lsn(u64::MAX)),
            tables,
            target: Target::new(target.sink.clone(), target.tables.clone(), target.lanes)
                .counted(metrics.replay_changes_total.with_label_values(&[&request.sink]), target.status.clone()),
            pause: target.pause.clone(),
            archive: archive.clone(),
            archive_acked: archive_acked.clone(),
            queues: live.sinks.iter().map(|sink| sink.sink.name().to_owned()).collect(),
            metrics: live.metrics.clone(),
            control: self.clone(),
        };
        let handle = tokio::spawn(task.run(live.shutdown.clone())).abort_handle();
        let mut tasks = lock(&self.tasks);
        tasks.retain(|task| !task.is_finished());
        tasks.push(handle);
        Ok(status)
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut ReplayStatus)) {
        if let Some(status) = lock(&self.replays).iter_mut().find(|status| status.id == id) {
            change(status);
        }
    }
}

impl ReplayStatus {
    fn is_running(&self) -> bool {
        matches!(self.state.as_str(), "pausing" | "replaying")
    }
}

/// Sets `pgfanout_sink_paused` while it lives.
struct PausedGauge(prometheus::IntGauge);

impl Drop for PausedGauge {
    fn drop(&mut self) {
        self.0.set(0);
    }
}

/// One replay in the running process (see the module doc).
struct LiveReplay {
    id: u64,
    from: Lsn,
    bound_to: Lsn,
    tables: Vec<TableName>,
    target: Target,
    pause: PauseHandle,
    archive: PathBuf,
    archive_acked: watch::Receiver<Lsn>,
    /// Every sink's name: their queues must be empty for the archive to count as idle.
    queues: Vec<String>,
    metrics: Metrics,
    control: ReplayControl,
}

impl LiveReplay {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let (id, control) = (self.id, self.control.clone());
        let sink = self.target.sink.name().to_owned();
        tracing::info!(sink = %sink, from = %self.from, "replay started: pausing the sink's worker");
        let outcome = tokio::select! {
            outcome = self.replay() => outcome,
            _ = shutdown.wait_for(|stopping| *stopping) => Err(anyhow!("pgfanout is shutting down; run the replay again")),
        };
        match outcome {
            Ok(()) => tracing::info!(sink = %sink, "replay done: the sink's worker resumed"),
            Err(err) => {
                let error = format!("{err:#}");
                tracing::error!(sink = %sink, error = %error, "replay failed; the sink's worker resumed");
                control.update(id, |status| {
                    status.state = "failed".into();
                    status.error = Some(error);
                });
            }
        }
    }

    async fn replay(mut self) -> anyhow::Result<()> {
        let name = self.target.sink.name().to_owned();
        let stopped = || anyhow!("the worker of sink {name} stopped");
        let paused = self.pause.pause_setting_aside(self.archive_acked.clone()).await.map_err(|_| stopped())?;
        let gauge = PausedGauge(self.metrics.sink_paused.with_label_values(&[&name]));
        gauge.0.set(1);
        let started = Instant::now();
        let held = paused.checkpoint;
        self.control.update(self.id, |status| {
            status.state = "replaying".into();
            status.paused_at = Some(held.to_string());
        });
        tracing::info!(sink = %name, checkpoint = %held, "sink paused; replaying the archive up to its checkpoint");
        self.wait_for_archive(held).await?;
        let mut reader = open_at(&self.archive, self.from)?;
        let tables = std::mem::take(&mut self.tables);
        let wanted = |table: &TableName| tables.is_empty() || tables.contains(table);
        // Declared after `paused`, so dropped (its batch in flight aborted) before the worker resumes.
        let mut target = self.target;
        // Nothing applied nor stored: the store holds nothing the stream sent (see the parent module).
        let held = if held == Lsn::ZERO { Lsn(u64::MAX) } else { held };
        let bound = Bound { after: Lsn::ZERO, to: self.bound_to, held };
        let mut progress = apply_pieces(&mut reader, &mut target, bound, &wanted).await?;
        // Then what the worker set aside meanwhile: live changes, so every
        // table and past --to too. Once a round finds nothing new (or after
        // CATCH_UP_ROUNDS), the worker is held: its horizon is then final.
        target.delay = None;
        let mut applied = paused.checkpoint;
        for round in 1.. {
            let last_round = round > CATCH_UP_ROUNDS || paused.set_aside_to() <= applied;
            let horizon = if last_round { paused.hold().await.map_err(|_| stopped())? } else { paused.set_aside_to() };
            if horizon > applied {
                let mut reader = open_at(&self.archive, applied)?;
                let bound = Bound { after: applied, to: Lsn(u64::MAX), held: horizon };
                let caught_up = apply_pieces(&mut reader, &mut target, bound, &|_: &TableName| true).await?;
                progress.transactions += caught_up.transactions;
                progress.last_commit = caught_up.last_commit.or(progress.last_commit);
                tracing::info!(sink = %name, after = %applied, to = %horizon, transactions = caught_up.transactions, "applied what the paused sink set aside");
                applied = horizon;
            }
            if last_round {
                break;
            }
        }
        paused.resume(applied);
        drop(gauge);
        let applied = target.applied;
        self.control.update(self.id, |status| {
            status.state = "done".into();
            status.changes = applied;
            status.transactions = progress.transactions;
            status.last_commit_lsn = progress.last_commit.map(|lsn| lsn.to_string());
            status.seconds = started.elapsed().as_secs_f64();
        });
        Ok(())
    }

    /// Waits until the archive holds every transaction up to `held`: it
    /// acknowledged `held` or a later end, or its newest whole transaction on
    /// disk ends at or after `held`, or the whole pipeline
    /// sits idle, every queue (the archive's too) empty and the archive's
    /// acknowledgement unchanged for [`ARCHIVE_IDLE`]: then `held` is a
    /// snapshot watermark, which only that sink received. The dispatcher
    /// hands each transaction to the sinks before the archive, so the archive
    /// may still be behind; while it waits on any full queue, that queue is
    /// not empty.
    async fn wait_for_archive(&self, held: Lsn) -> anyhow::Result<()> {
        let deadline = Instant::now() + ARCHIVE_WAIT;
        let depths: Vec<prometheus::IntGauge> = self
            .queues
            .iter()
            .map(String::as_str)
            .chain([pgfanout_archive::ARCHIVE_SINK_NAME])
            .map(|sink| self.metrics.sink_queue_depth.with_label_values(&[sink]))
            .collect();
        let mut idle_since: Option<(Instant, Lsn)> = None;
        let (mut archived_to, mut scanned) = (Lsn::ZERO, None::<Instant>);
        loop {
            let acked = *self.archive_acked.borrow();
            if acked >= held {
                return Ok(());
            }
            // What the archive acknowledged in this process starts at 0: what
            // it held before is on disk (a scan of its newest segment, so seldom).
            if scanned.is_none_or(|at| at.elapsed() >= ARCHIVE_IDLE) {
                let reader = pgfanout_archive::ArchiveReader::open(&self.archive, Arc::default())?;
                archived_to = reader.newest_transaction()?.map(|(_, end)| end).unwrap_or_default();
                scanned = Some(Instant::now());
                if archived_to >= held {
                    return Ok(());
                }
            }
            let idle = depths.iter().all(|depth| depth.get() == 0);
            idle_since = match idle_since {
                Some((since, at)) if idle && at == acked => {
                    if since.elapsed() >= ARCHIVE_IDLE {
                        tracing::info!(checkpoint = %held, archived_to = %archived_to, "the sink's checkpoint lies past the archive's end (a snapshot watermark)");
                        return Ok(());
                    }
                    Some((since, at))
                }
                _ if idle => Some((Instant::now(), acked)),
                _ => None,
            };
            if Instant::now() > deadline {
                bail!(
                    "the archive did not reach the sink's checkpoint {held} within {ARCHIVE_WAIT:?} (it holds up to \
                     {archived_to}); is the archive's worker blocked? see /readyz"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Replay handlers of the HTTP endpoint.
pub mod endpoint {
    use axum::extract::State;
    use axum::response::IntoResponse;

    use crate::http::{json_answer, scheduled_answer, HttpState};

    /// `POST /replay`: 202 with the scheduled replay, else the error.
    pub async fn trigger(State(state): State<HttpState>, body: String) -> impl IntoResponse {
        scheduled_answer(state.replay.trigger(&body, &state.metrics).map_err(|err| (err.status(), err.to_string())))
    }

    /// `GET /replay`: every replay of this process.
    pub async fn list(State(state): State<HttpState>) -> impl IntoResponse {
        json_answer(&state.replay.statuses(&state.metrics))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(body: &str) -> ReplayRefused {
        ReplayControl::default().trigger(body, &Metrics::new().unwrap()).unwrap_err()
    }

    #[test]
    fn requests_are_checked_before_anything_runs() {
        let bad = refusal(r#"{"sink": "a", "from": "yesterday"}"#);
        assert_eq!(bad.status(), 400);
        assert_eq!(bad.to_string(), r#""yesterday" is not an LSN like 0/16B3748"#);
        let reversed = refusal(r#"{"sink": "a", "from": "0/200", "to": "0/100"}"#);
        assert_eq!(reversed.status(), 400);
        assert!(reversed.to_string().starts_with("--to 0/100 is before --from 0/200"), "{reversed}");
        let unknown_field = refusal(r#"{"sink": "a", "from": "0/200", "wipe": true}"#);
        assert!(unknown_field.to_string().contains("unknown field `wipe`"), "{unknown_field}");
        let not_yet = refusal(r#"{"sink": "a", "from": "0/200"}"#);
        assert_eq!(not_yet.status(), 503, "{not_yet}");
        assert_eq!(ReplayRefused::Busy(String::new()).status(), 409);
        assert_eq!(ReplayRefused::UnknownSink { sink: "x".into(), known: String::new() }.status(), 404);
    }
}
