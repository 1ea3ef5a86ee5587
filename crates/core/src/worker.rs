//! One worker task per sink: bounded queue → batcher → lanes → apply with
//! retry → checkpoint → ack.
//!
//! ```text
//!  dispatcher ──(bounded mpsc, backpressure)──► SinkWorker::run
//!                                                │ skip transactions at or below the stored checkpoint
//!                                                │ batch what queued up while busy (by change count)
//!                                                │ split into lanes by key (crate::lanes)
//!                                                │ Sink::apply per lane, concurrently, each retried
//!                                                │ Sink::apply(checkpoint) once every lane succeeded
//!                                                ▼
//!                                       watch<Lsn> acknowledgement ──► CheckpointCoordinator
//! ```
//!
//! The worker acknowledges a transaction only after every change of the
//! batch holding it is durable in the store (or, with
//! [`OnError::DeadLetter`], durable in the dead-letter destination) and the
//! checkpoint is stored. Transient errors and store-wide failures
//! ([`ErrorKind::StoreFailing`]: full, read-only, unauthorised, missing
//! table) are retried with exponential backoff and jitter up to
//! [`WorkerSettings::retry_max`], forever, whatever the policy: nothing is
//! dropped, the flush LSN waits. A permanent error (the store rejects one
//! change) is retried the same way under [`OnError::Block`]; under
//! [`OnError::DeadLetter`] the lane is applied again one change at a time,
//! and each change the store still rejects goes to the dead-letter
//! destination, counted in `pgfanout_dead_letter_total`.
//!
//! Circuit breaker: after [`WorkerSettings::max_consecutive_dead_letters`]
//! dead letters in a row (no change applied between them), the next
//! rejected change blocks the sink instead, retried until the store accepts
//! it: so many rejections in a row are more likely a store failing for
//! every change, misclassified, than that many bad rows.
//!
//! A transaction too large for one piece arrives as pieces
//! ([`WorkerQueue::send_piece`]) and then its end; only the end moves the
//! checkpoint and the acknowledgement.
//!
//! Pause ([`PauseHandle`]): between batches, never inside a transaction
//! that arrives in pieces, the worker stops applying and reports its
//! checkpoint: the store then holds exactly every transaction up to it and
//! nothing after it. It applies nothing until the [`Paused`] ends, and its
//! acknowledgement, so the flush LSN, stands still meanwhile. `pgfanout
//! replay` uses it to write into the store alone.
//!
//! A plain pause ([`PauseHandle::pause`]) stops taking from the queue: the
//! queue fills (up to its bounds, then the dispatcher waits, for every
//! sink). A pause that sets aside ([`PauseHandle::pause_setting_aside`],
//! given the change archive's acknowledgement) keeps draining the queue
//! instead: each transaction is dropped once the archive has acknowledged
//! its end (it waits for that, never dropping what the archive may not
//! hold), and [`Paused::set_aside_to`] (the horizon) moves to that end. The
//! checkpoint and the acknowledgement do not move for what is set aside.
//! The replay must apply those transactions from the archive: it resumes
//! the worker with [`Paused::resume`] once the store holds everything up to
//! the horizon ([`Paused::hold`] stops the setting aside at a transaction
//! boundary, so the horizon is final); the worker then stores the horizon
//! as its checkpoint and acknowledges it. A pause that ends any other way
//! after something was set aside (the replay failed or was cut short)
//! strands the worker: it drops whatever arrives, applies and acknowledges
//! nothing more, and reports why on its status, so the flush LSN stays
//! before the first transaction set aside and the next start re-sends it
//! from the slot. A worker whose checkpoint is 0 (it holds nothing the
//! stream sent) never sets aside.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use pgoutput::Lsn;
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::backoff::Backoff;
use crate::lanes::split_into_lanes_with;
use crate::metrics::{Metrics, TableOpCounters};
use crate::model::count_by_table_and_op;
use crate::model::Transaction;
use crate::sink::{ChangeRef, DeadLetterQueue, ErrorKind, Sink, SinkError};
use crate::status::SinkStatus;

/// What a sink's worker does with a change the store rejects permanently.
#[derive(Clone, Default)]
pub enum OnError {
    /// Retry until the store accepts it; the pipeline (and the flush LSN)
    /// waits. Nothing is ever skipped.
    #[default]
    Block,
    /// Write the change, the error and its LSN to this destination and go on.
    DeadLetter(Arc<dyn DeadLetterQueue>),
}

impl std::fmt::Debug for OnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OnError::Block => f.write_str("Block"),
            OnError::DeadLetter(queue) => write!(f, "DeadLetter({})", queue.describe()),
        }
    }
}

/// Batching, parallelism and retry settings of one worker.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Transactions the queue holds before the dispatcher waits.
    pub queue_capacity: usize,
    /// Approximate bytes of changes the queue (and the batch being applied)
    /// may hold before the dispatcher waits; with `queue_capacity` this bounds
    /// the memory a stalled sink can make pgfanout use. A transaction larger
    /// than the whole bound is let through alone.
    pub queue_bytes: usize,
    /// Most changes of one batch: what queued up while the previous batch
    /// was applied is applied together, up to this many.
    pub max_batch_changes: usize,
    /// How long a batch waits for more transactions after its first one;
    /// zero (the default) waits for none, so that latency stays low and
    /// batches grow only while the sink is busy.
    pub max_batch_delay: Duration,
    /// Lanes a batch is split into by key, applied concurrently.
    pub lanes: usize,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Retry delay cap.
    pub retry_max: Duration,
    /// Policy for changes the store rejects.
    pub on_error: OnError,
    /// Dead letters in a row after which the sink blocks instead (see the module docs).
    pub max_consecutive_dead_letters: u64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            queue_capacity: 1024,
            queue_bytes: 64 * 1024 * 1024,
            max_batch_changes: 1000,
            max_batch_delay: Duration::ZERO,
            lanes: 1,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            on_error: OnError::Block,
            max_consecutive_dead_letters: 10,
        }
    }
}

/// Granularity of the byte bound: permits of the queue's semaphore.
const PERMIT_BYTES: usize = 1024;

/// A queued transaction (or piece of one) and the share of the byte bound
/// it holds until it has been applied.
struct Queued {
    transaction: Arc<Transaction>,
    /// False for a piece of a transaction that more pieces follow: applying
    /// it must not move the checkpoint or the acknowledgement to its end.
    completes: bool,
    _permit: OwnedSemaphorePermit,
}

/// The sending side of a worker's queue, held by the dispatcher.
pub struct WorkerQueue {
    sender: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    capacity_permits: u32,
    depth: prometheus::IntGauge,
}

impl WorkerQueue {
    /// Queues a transaction, waiting while the queue is full, by count or by
    /// bytes (backpressure). Fails only if the worker has stopped.
    pub async fn send(&self, transaction: Arc<Transaction>) -> Result<(), WorkerStopped> {
        self.enqueue(transaction, true, None).await
    }

    /// [`WorkerQueue::send`] of a transaction whose
    /// [`Transaction::approximate_size`] is `size` when known, so that its
    /// changes need not be walked again to count it.
    pub async fn send_sized(&self, transaction: Arc<Transaction>, size: Option<usize>) -> Result<(), WorkerStopped> {
        self.enqueue(transaction, true, size).await
    }

    /// Queues a piece of a transaction that more pieces follow: applied like
    /// a transaction, but the checkpoint and the acknowledgement move to the
    /// transaction's end only with its last piece, sent with
    /// [`WorkerQueue::send`].
    pub async fn send_piece(&self, piece: Arc<Transaction>) -> Result<(), WorkerStopped> {
        self.enqueue(piece, false, None).await
    }

    async fn enqueue(
        &self,
        transaction: Arc<Transaction>,
        completes: bool,
        size: Option<usize>,
    ) -> Result<(), WorkerStopped> {
        let size = size.unwrap_or_else(|| transaction.approximate_size());
        let wanted = (size / PERMIT_BYTES).clamp(1, self.capacity_permits as usize) as u32;
        let _permit = self.bytes.clone().acquire_many_owned(wanted).await.map_err(|_| WorkerStopped)?;
        self.sender.send(Queued { transaction, completes, _permit }).await.map_err(|_| WorkerStopped)?;
        self.depth.inc();
        Ok(())
    }
}

/// The worker task ended (its sink could not start, or shutdown).
#[derive(Debug, thiserror::Error)]
#[error("sink worker stopped")]
pub struct WorkerStopped;

/// A request to pause: where to send the [`Paused`], and the archive's
/// acknowledgement when the worker is to set aside what it holds.
struct PauseRequest {
    reply: oneshot::Sender<Paused>,
    archive: Option<watch::Receiver<Lsn>>,
}

/// Pauses a worker at a transaction boundary (see the module docs).
#[derive(Clone)]
pub struct PauseHandle {
    requests: mpsc::Sender<PauseRequest>,
}

impl PauseHandle {
    /// Waits until the worker has finished its current batch (and the
    /// transaction it is inside of) and paused; it stays paused, its queue
    /// filling, until the returned [`Paused`] is dropped.
    pub async fn pause(&self) -> Result<Paused, WorkerStopped> {
        self.request(None).await
    }

    /// [`PauseHandle::pause`], but the paused worker keeps draining its
    /// queue, setting aside each transaction once `archive` (the change
    /// archive's acknowledgement) has passed its end (see the module docs).
    pub async fn pause_setting_aside(&self, archive: watch::Receiver<Lsn>) -> Result<Paused, WorkerStopped> {
        self.request(Some(archive)).await
    }

    async fn request(&self, archive: Option<watch::Receiver<Lsn>>) -> Result<Paused, WorkerStopped> {
        let (reply, paused) = oneshot::channel();
        self.requests.send(PauseRequest { reply, archive }).await.map_err(|_| WorkerStopped)?;
        paused.await.map_err(|_| WorkerStopped)
    }
}

/// A paused worker. [`Paused::resume`] resumes it after a replay that
/// applied everything set aside; dropping it resumes it as it was, unless
/// something was set aside: then the worker is stranded (see the module docs).
#[derive(Debug)]
pub struct Paused {
    /// End LSN of the last transaction the store holds: every transaction up
    /// to it is applied, none after it.
    pub checkpoint: Lsn,
    horizon: watch::Receiver<Lsn>,
    holds: mpsc::Sender<oneshot::Sender<Lsn>>,
    resume: Option<oneshot::Sender<Lsn>>,
}

impl Paused {
    /// End LSN of the last transaction set aside (the checkpoint while
    /// none is): the archive holds every transaction up to it.
    pub fn set_aside_to(&self) -> Lsn {
        *self.horizon.borrow()
    }

    /// Stops the setting aside at the next transaction boundary (after a
    /// transaction in pieces has ended) and returns the final horizon; the
    /// queue fills from then on.
    pub async fn hold(&self) -> Result<Lsn, WorkerStopped> {
        let (reply, held) = oneshot::channel();
        self.holds.send(reply).await.map_err(|_| WorkerStopped)?;
        held.await.map_err(|_| WorkerStopped)
    }

    /// Resumes the worker, the store holding every transaction up to
    /// `applied` (at least the horizon when something was set aside, else
    /// the worker is stranded); the worker stores the horizon as its
    /// checkpoint and acknowledges it before it applies anything newer.
    pub fn resume(mut self, applied: Lsn) {
        if let Some(resume) = self.resume.take() {
            let _ = resume.send(applied);
        }
    }
}

/// Drives one sink.
pub struct SinkWorker {
    sink: Arc<dyn Sink>,
    name: String,
    settings: WorkerSettings,
    queue: mpsc::Receiver<Queued>,
    acked: watch::Sender<Lsn>,
    on_ack: Arc<Notify>,
    checkpoint: Lsn,
    metrics: Metrics,
    /// The sink's series, resolved once.
    series: SinkSeries,
    /// Changes dead-lettered since the last change the store accepted.
    consecutive_dead_letters: AtomicU64,
    status: SinkStatus,
    pauses: mpsc::Receiver<PauseRequest>,
    pause_requests: mpsc::Sender<PauseRequest>,
    /// The last batch ended inside a transaction that arrives in pieces: no pause here.
    inside_transaction: bool,
    /// A pause set transactions aside and ended before a replay applied
    /// them: why; the worker applies and acknowledges nothing more.
    stranded: Option<String>,
}

impl SinkWorker {
    /// Creates a worker for `sink` whose stored checkpoint is `checkpoint`;
    /// returns it with its queue and its acknowledgement channel. `on_ack` is
    /// notified after every acknowledgement.
    pub fn new(
        sink: Arc<dyn Sink>,
        checkpoint: Option<Lsn>,
        settings: WorkerSettings,
        metrics: Metrics,
        on_ack: Arc<Notify>,
    ) -> (Self, WorkerQueue, watch::Receiver<Lsn>) {
        let (sender, queue) = mpsc::channel(settings.queue_capacity.max(1));
        let capacity_permits = (settings.queue_bytes / PERMIT_BYTES).clamp(1, Semaphore::MAX_PERMITS) as u32;
        let bytes = Arc::new(Semaphore::new(capacity_permits as usize));
        let checkpoint = checkpoint.unwrap_or(Lsn::ZERO);
        let (acked, acked_receiver) = watch::channel(Lsn::ZERO);
        let name = sink.name().to_owned();
        let series = SinkSeries::new(&metrics, &name);
        let depth = series.queue_depth.clone();
        let status = SinkStatus::default();
        let (pause_requests, pauses) = mpsc::channel(1);
        let worker = SinkWorker {
            sink,
            name,
            settings,
            queue,
            acked,
            on_ack,
            checkpoint,
            metrics,
            series,
            consecutive_dead_letters: AtomicU64::new(0),
            status,
            pauses,
            pause_requests,
            inside_transaction: false,
            stranded: None,
        };
        (worker, WorkerQueue { sender, bytes, capacity_permits, depth }, acked_receiver)
    }

    /// A handle on what the worker is doing, for health checks.
    pub fn status(&self) -> SinkStatus {
        self.status.clone()
    }

    /// A handle that pauses the worker (see the module docs).
    pub fn pause_handle(&self) -> PauseHandle {
        PauseHandle { requests: self.pause_requests.clone() }
    }

    /// Runs until the queue is closed and drained.
    pub async fn run(mut self) {
        self.series.checkpoint.set(self.checkpoint.0 as i64);
        // The sink's checkpoint was read before the worker started: the store is reachable.
        self.series.up.set(1);
        // Series exist from the start (at 0), so dashboards and alerts see them.
        for kind in ErrorKind::ALL {
            self.metrics.sink_errors_total.with_label_values(&[&self.name, kind.label()]);
        }
        while let Some(queued) = self.next_batch().await {
            self.series.queue_depth.sub(queued.len() as i64);
            if self.stranded.is_some() {
                // Dropped unacknowledged: the next start re-sends them from the slot.
                continue;
            }
            // The permits stay held (memory stays counted) until the batch is applied.
            let pending: Vec<_> =
                queued.iter().map(|q| q.transaction.clone()).filter(|t| t.end_lsn > self.checkpoint).collect();
            // Only a transaction's last piece moves the checkpoint and the
            // acknowledgement to its end.
            let last = queued.iter().filter(|q| q.completes).map(|q| q.transaction.end_lsn).next_back();
            self.inside_transaction = queued.last().is_some_and(|q| !q.completes);
            if !pending.is_empty() {
                self.apply_batch(&pending, last).await;
                if let Some(last) = last {
                    self.checkpoint = last.max(self.checkpoint);
                    self.series.checkpoint.set(self.checkpoint.0 as i64);
                }
            }
            let Some(last) = last else { continue };
            // Skipped transactions (already in the store) are acknowledged too.
            // `send_if_modified` keeps the acknowledgement monotonic without
            // holding a read guard across the write (which would deadlock).
            self.acked.send_if_modified(|acked| {
                let advanced = last > *acked;
                if advanced {
                    *acked = last;
                }
                advanced
            });
            self.on_ack.notify_one();
        }
        tracing::debug!(sink = %self.name, "sink worker drained and stopped");
    }

    /// The next batch: the first transaction to arrive, then whatever queued
    /// up behind it (while the previous batch was being applied), up to
    /// [`WorkerSettings::max_batch_changes`]. An idle worker applies a lone
    /// transaction at once; a busy one batches because it is busy. Only with
    /// a [`WorkerSettings::max_batch_delay`] above zero does a batch also
    /// wait for more, up to that long after its first transaction.
    async fn next_batch(&mut self) -> Option<Vec<Queued>> {
        let first = loop {
            tokio::select! {
                biased;
                Some(request) = self.pauses.recv(), if !self.inside_transaction && self.stranded.is_none() => self.pause(request).await,
                first = self.queue.recv() => break first?,
            }
        };
        let mut changes = first.transaction.changes.len();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + self.settings.max_batch_delay;
        while changes < self.settings.max_batch_changes {
            let next = match self.queue.try_recv() {
                Ok(next) => next,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) if self.settings.max_batch_delay.is_zero() => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, self.queue.recv()).await {
                        Ok(Some(next)) => next,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            changes += next.transaction.changes.len();
            batch.push(next);
        }
        Some(batch)
    }

    /// Stays paused until the [`Paused`] sent with `request` ends, setting
    /// transactions aside meanwhile if asked to (see the module docs).
    async fn pause(&mut self, request: PauseRequest) {
        let (resume, mut resumed) = oneshot::channel();
        let (horizon_sender, horizon) = watch::channel(self.checkpoint);
        let (holds, mut hold_requests) = mpsc::channel::<oneshot::Sender<Lsn>>(1);
        let paused = Paused { checkpoint: self.checkpoint, horizon, holds, resume: Some(resume) };
        if request.reply.send(paused).is_err() {
            return;
        }
        // A worker at 0 holds nothing the stream sent: the replay goes to the archive's end instead.
        let mut archive = request.archive.filter(|_| self.checkpoint > Lsn::ZERO);
        tracing::info!(sink = %self.name, checkpoint = %self.checkpoint, setting_aside = archive.is_some(), "sink worker paused");
        let mut set_aside_any = false;
        // Something set aside lies past the horizon (pieces of a transaction
        // whose end is not set aside yet): no hold, no resume here.
        let mut inside = false;
        let mut holding = false;
        let mut queue_closed = false;
        // A whole transaction taken from the queue, waiting for the archive to acknowledge its end.
        let mut waiting: Option<Queued> = None;
        let outcome = loop {
            let waiting_end = waiting.as_ref().map(|queued| queued.transaction.end_lsn);
            tokio::select! {
                biased;
                outcome = &mut resumed => break outcome.ok(),
                Some(reply) = hold_requests.recv(), if !holding && !inside && waiting.is_none() => {
                    holding = true;
                    let _ = reply.send(*horizon_sender.borrow());
                }
                archived = archived_past(&mut archive, waiting_end.unwrap_or_default()), if waiting.is_some() => {
                    if archived {
                        if let Some(end) = waiting.take().map(|queued| queued.transaction.end_lsn) {
                            horizon_sender.send_if_modified(|horizon| {
                                let moved = end > *horizon;
                                *horizon = end.max(*horizon);
                                moved
                            });
                            set_aside_any = true;
                            inside = false;
                        }
                    } else {
                        // The archive's worker stopped (shutdown): nothing more can be set
                        // aside, and what was taken is lost to this worker.
                        archive = None;
                        waiting = None;
                        set_aside_any = true;
                        inside = true;
                    }
                }
                queued = self.queue.recv(), if archive.is_some() && !holding && !queue_closed && waiting.is_none() => {
                    let Some(queued) = queued else {
                        queue_closed = true;
                        continue;
                    };
                    self.series.queue_depth.dec();
                    if queued.transaction.end_lsn <= self.checkpoint {
                        continue;
                    }
                    if queued.completes {
                        waiting = Some(queued);
                    } else {
                        // A piece: its transaction's end, which waits for the archive, follows.
                        set_aside_any = true;
                        inside = true;
                    }
                }
            }
        };
        let horizon = *horizon_sender.borrow();
        match outcome {
            _ if !set_aside_any => {}
            Some(applied) if applied >= horizon && !inside => {
                // The replay applied what was set aside: the store holds everything up to the horizon.
                self.apply_lane(&[], Some(horizon)).await;
                self.checkpoint = horizon;
                self.series.checkpoint.set(horizon.0 as i64);
                self.acked.send_if_modified(|acked| {
                    let moved = horizon > *acked;
                    *acked = horizon.max(*acked);
                    moved
                });
                self.on_ack.notify_one();
            }
            outcome => {
                let reason = format!(
                    "a replay ended before applying the transactions this sink set aside while paused (from after \
                     {} to {horizon}{}): the sink applies and acknowledges nothing more, so that the flush LSN \
                     stays before them; restart pgfanout so that the slot sends them again",
                    self.checkpoint,
                    outcome.map(|applied| format!("; applied up to {applied}")).unwrap_or_default()
                );
                tracing::error!(sink = %self.name, checkpoint = %self.checkpoint, horizon = %horizon, "{reason}");
                self.status.blocked(reason.clone());
                self.series.up.set(0);
                self.stranded = Some(reason);
                return;
            }
        }
        tracing::info!(sink = %self.name, checkpoint = %self.checkpoint, "sink worker resumed");
    }

    /// Applies every change of `batch` and stores `checkpoint` (if any);
    /// returns only once both are durable.
    async fn apply_batch(&self, batch: &[Arc<Transaction>], checkpoint: Option<Lsn>) {
        let changes: Vec<ChangeRef<'_>> = batch
            .iter()
            .flat_map(|transaction| transaction.changes.iter().map(move |change| ChangeRef { transaction, change }))
            .collect();
        self.series.batch_size.observe(changes.len() as f64);
        let started = Instant::now();
        // A small batch goes whole: a lane of its own is worth less to the
        // sink than the call (and the separate checkpoint) it costs.
        let lane_count = self.settings.lanes.min(changes.len() / self.sink.min_lane_changes().max(1)).max(1);
        let lanes =
            split_into_lanes_with(changes, lane_count, |change, keys| self.sink.related_lane_keys(change, keys));
        if let [only] = lanes.as_slice() {
            // One lane: the checkpoint travels with the data, in one call.
            self.apply_lane(only, checkpoint).await;
        } else {
            join_all(lanes.iter().map(|lane| self.apply_lane(lane, None))).await;
            if checkpoint.is_some() {
                self.apply_lane(&[], checkpoint).await;
            }
        }
        self.series.apply_seconds.observe(started.elapsed().as_secs_f64());
        let now = unix_micros_now();
        for transaction in batch {
            self.series.lag.observe(now.saturating_sub(transaction.commit_time.to_unix_micros()).max(0) as f64 / 1e6);
        }
    }

    /// Applies one lane (and the checkpoint, if given) until it is durable.
    async fn apply_lane(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) {
        let mut retry = Backoff::new(self.settings.retry_initial, self.settings.retry_max);
        loop {
            match self.sink.apply(changes, checkpoint).await {
                Ok(()) => {
                    self.count_applied(changes);
                    if retry.attempts() > 0 {
                        tracing::info!(sink = %self.name, attempts = retry.attempts() + 1, "sink recovered");
                    }
                    return;
                }
                Err(err) if err.kind == ErrorKind::Permanent && !changes.is_empty() => {
                    if let OnError::DeadLetter(queue) = &self.settings.on_error {
                        self.note_failure(&err, changes, &retry);
                        self.isolate_rejected(changes, checkpoint, queue.as_ref()).await;
                        return;
                    }
                    self.note_failure(&err, changes, &retry);
                    retry.wait().await;
                }
                Err(err) => {
                    self.note_failure(&err, changes, &retry);
                    retry.wait().await;
                }
            }
        }
    }

    /// Applies `changes` one at a time; those the store still rejects
    /// permanently go to the dead-letter `queue`. Then stores the checkpoint.
    async fn isolate_rejected(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>, queue: &dyn DeadLetterQueue) {
        for change in changes {
            let single = std::slice::from_ref(change);
            let mut retry = Backoff::new(self.settings.retry_initial, self.settings.retry_max);
            loop {
                match self.sink.apply(single, None).await {
                    Ok(()) => {
                        self.count_applied(single);
                        break;
                    }
                    Err(err) if err.kind == ErrorKind::Permanent && self.reserve_dead_letter(&err) => {
                        self.dead_letter(*change, &err, queue).await;
                        break;
                    }
                    Err(err) => {
                        self.note_failure(&err, single, &retry);
                        retry.wait().await;
                    }
                }
            }
        }
        if checkpoint.is_some() {
            Box::pin(self.apply_lane(&[], checkpoint)).await;
        }
    }

    /// Writes one rejected change to the dead-letter destination, retrying
    /// until it is durable there (it must not be lost either).
    async fn dead_letter(&self, change: ChangeRef<'_>, rejection: &SinkError, queue: &dyn DeadLetterQueue) {
        let reason = error_chain(rejection);
        let mut retry = Backoff::new(self.settings.retry_initial, self.settings.retry_max);
        loop {
            match queue.record(&self.name, change, &reason).await {
                Ok(()) => {
                    self.series.dead_letters.inc();
                    tracing::warn!(
                        sink = %self.name,
                        table = %change.change.table.table,
                        op = change.change.op.label(),
                        commit_lsn = %change.transaction.commit_lsn,
                        destination = %queue.describe(),
                        error = %reason,
                        "change rejected by the store; written to the dead-letter destination"
                    );
                    return;
                }
                Err(err) => {
                    tracing::warn!(sink = %self.name, error = %error_chain(&err), "cannot write a dead letter; retrying");
                    retry.wait().await;
                }
            }
        }
    }

    /// Counts `rejection` as one more dead letter in a row, unless the
    /// circuit breaker holds (enough of them already): then `false`, and the
    /// sink blocks on it instead. Check and count are one atomic step, so
    /// concurrent lanes cannot pass the limit together.
    fn reserve_dead_letter(&self, rejection: &SinkError) -> bool {
        let limit = self.settings.max_consecutive_dead_letters;
        let reserved = self
            .consecutive_dead_letters
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| (count < limit).then_some(count + 1))
            .is_ok();
        if !reserved {
            tracing::error!(
                sink = %self.name,
                max_consecutive_dead_letters = limit,
                error = %error_chain(rejection),
                "the store rejected {limit} changes in a row, which looks like a store failing for every change \
                 rather than bad rows: the sink blocks on this change, retrying, and dead-letters nothing more until \
                 the store accepts a change; fix the store (or the data), or raise \
                 delivery.max_consecutive_dead_letters"
            );
        }
        reserved
    }

    fn count_applied(&self, changes: &[ChangeRef<'_>]) {
        self.status.progressed();
        if !changes.is_empty() {
            self.consecutive_dead_letters.store(0, Ordering::Release);
        }
        self.series.up.set(1);
        let mut applied = self.series.applied.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for ((table, op), count) in count_by_table_and_op(changes.iter().map(|c| c.change)) {
            applied.add(table, op, count);
        }
    }

    fn note_failure(&self, err: &SinkError, changes: &[ChangeRef<'_>], retry: &Backoff) {
        self.status.blocked(error_chain(err));
        if err.kind != ErrorKind::Permanent {
            self.series.up.set(0);
        }
        self.metrics.sink_errors_total.with_label_values(&[&self.name, err.kind.label()]).inc();
        self.series.retries.inc();
        let first_lsn = changes.first().map(|c| c.transaction.commit_lsn).unwrap_or_default();
        tracing::warn!(
            sink = %self.name,
            kind = err.kind.label(),
            attempt = retry.attempts() + 1,
            changes = changes.len(),
            first_commit_lsn = %first_lsn,
            retry_in_ms = retry.upcoming().as_millis() as u64,
            error = %error_chain(err),
            "sink apply failed; retrying"
        );
    }
}

/// Waits until `archive` has acknowledged `end` or a later end: true, or
/// false once its worker has stopped (or there is no archive).
async fn archived_past(archive: &mut Option<watch::Receiver<Lsn>>, end: Lsn) -> bool {
    match archive {
        Some(archive) => archive.wait_for(|acked| *acked >= end).await.is_ok(),
        None => false,
    }
}

/// A worker's metric series, resolved once rather than looked up by label
/// for every batch.
struct SinkSeries {
    queue_depth: prometheus::IntGauge,
    checkpoint: prometheus::IntGauge,
    up: prometheus::IntGauge,
    batch_size: prometheus::Histogram,
    apply_seconds: prometheus::Histogram,
    lag: prometheus::Histogram,
    retries: prometheus::IntCounter,
    dead_letters: prometheus::IntCounter,
    /// Lanes of one batch count concurrently (from one task: never contended).
    applied: std::sync::Mutex<TableOpCounters>,
}

impl SinkSeries {
    fn new(metrics: &Metrics, sink: &str) -> Self {
        let labels = &[sink];
        SinkSeries {
            queue_depth: metrics.sink_queue_depth.with_label_values(labels),
            checkpoint: metrics.checkpoint_lsn.with_label_values(labels),
            up: metrics.sink_up.with_label_values(labels),
            batch_size: metrics.sink_batch_size.with_label_values(labels),
            apply_seconds: metrics.sink_apply_seconds.with_label_values(labels),
            lag: metrics.source_lag_seconds.with_label_values(labels),
            retries: metrics.sink_retries_total.with_label_values(labels),
            dead_letters: metrics.dead_letter_total.with_label_values(labels),
            applied: std::sync::Mutex::new(TableOpCounters::new(metrics.sink_applied_total.clone(), labels)),
        }
    }
}

fn unix_micros_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// The error and its causes on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, ChangeOp, ColumnSchema, ColumnValue, TableName, TableSchema};
    use async_trait::async_trait;
    use bytes::Bytes;
    use pgoutput::{Oid, PgTimestamp, ReplicaIdentity, Xid};
    use std::sync::Mutex;

    /// Records what it applied; fails the first `failures_left` calls, then
    /// the next `store_failures_left` as a failing store would, and always
    /// rejects the changes whose id starts with `poison`.
    #[derive(Default)]
    struct RecordingSink {
        applied: Mutex<Vec<String>>,
        checkpoints: Mutex<Vec<Lsn>>,
        failures_left: Mutex<usize>,
        store_failures_left: Mutex<usize>,
        poison: Option<&'static str>,
        /// Changes and checkpoint of each successful call.
        calls: Mutex<Vec<(usize, Option<Lsn>)>>,
        min_lane_changes: usize,
    }

    fn id_of(change: &ChangeRef<'_>) -> String {
        let ChangeOp::Insert { new } = &change.change.op else { panic!("inserts only") };
        String::from_utf8(new[0].as_bytes().unwrap().to_vec()).unwrap()
    }

    #[async_trait]
    impl Sink for RecordingSink {
        fn name(&self) -> &str {
            "recording"
        }
        async fn load_checkpoint(&self) -> Result<Option<Lsn>, SinkError> {
            Ok(None)
        }
        async fn load_source(&self) -> Result<Option<String>, SinkError> {
            Ok(None)
        }
        async fn store_source(&self, _record: &str) -> Result<(), SinkError> {
            Ok(())
        }
        async fn apply(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> Result<(), SinkError> {
            {
                let mut failures = self.failures_left.lock().unwrap();
                if *failures > 0 {
                    *failures -= 1;
                    return Err(SinkError::transient("recording", "unreachable", std::io::Error::other("down")));
                }
            }
            {
                let mut failures = self.store_failures_left.lock().unwrap();
                if *failures > 0 {
                    *failures -= 1;
                    return Err(SinkError::store_failing("recording", "out of memory", std::io::Error::other("OOM")));
                }
            }
            if changes.iter().any(|c| self.poison.is_some_and(|poison| id_of(c).starts_with(poison))) {
                return Err(SinkError::permanent("recording", "value rejected"));
            }
            self.applied.lock().unwrap().extend(changes.iter().map(id_of));
            self.checkpoints.lock().unwrap().extend(checkpoint);
            self.calls.lock().unwrap().push((changes.len(), checkpoint));
            Ok(())
        }
        fn min_lane_changes(&self) -> usize {
            self.min_lane_changes.max(1)
        }
    }

    #[derive(Default)]
    struct MemoryDeadLetters(Mutex<Vec<serde_json::Value>>);

    #[async_trait]
    impl DeadLetterQueue for MemoryDeadLetters {
        fn describe(&self) -> String {
            "memory".into()
        }
        async fn record(&self, sink: &str, change: ChangeRef<'_>, error: &str) -> Result<(), SinkError> {
            self.0.lock().unwrap().push(crate::dead_letter::dead_letter_record(sink, change, error));
            Ok(())
        }
    }

    fn transaction(end: u64, ids: &[&str]) -> Arc<Transaction> {
        let table = Arc::new(TableSchema {
            types: Default::default(),
            oid: Oid(1),
            table: TableName::new("public", "t"),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![ColumnSchema { name: "id".into(), type_oid: Oid(25), is_key: true }],
        });
        Arc::new(Transaction {
            xid: Xid(1),
            commit_lsn: Lsn(end - 1),
            end_lsn: Lsn(end),
            commit_time: PgTimestamp(0),
            changes: ids
                .iter()
                .enumerate()
                .map(|(i, id)| Change {
                    table: table.clone(),
                    op: ChangeOp::Insert { new: vec![ColumnValue::Text(Bytes::from(id.to_string()))] },
                    ordinal: i as u32,
                })
                .collect(),
        })
    }

    fn fast_settings() -> WorkerSettings {
        WorkerSettings {
            retry_initial: Duration::from_millis(1),
            retry_max: Duration::from_millis(2),
            ..WorkerSettings::default()
        }
    }

    async fn run_worker(
        sink: Arc<RecordingSink>,
        checkpoint: Option<Lsn>,
        settings: WorkerSettings,
        transactions: Vec<Arc<Transaction>>,
    ) -> Lsn {
        let (worker, queue, mut acked) =
            SinkWorker::new(sink, checkpoint, settings, Metrics::new().unwrap(), Arc::default());
        let task = tokio::spawn(worker.run());
        for transaction in transactions {
            queue.send(transaction).await.unwrap();
        }
        drop(queue);
        task.await.unwrap();
        let acked = *acked.borrow_and_update();
        acked
    }

    #[tokio::test]
    async fn skips_what_the_store_holds_retries_and_acknowledges_everything() {
        let sink = Arc::new(RecordingSink { failures_left: Mutex::new(2), ..RecordingSink::default() });
        let transactions = vec![transaction(10, &["a"]), transaction(20, &["b"]), transaction(30, &["c"])];
        let acked = run_worker(sink.clone(), Some(Lsn(20)), fast_settings(), transactions).await;
        assert_eq!(*sink.applied.lock().unwrap(), ["c"], "retried after failures, skipped what the store held");
        assert_eq!(acked, Lsn(30));
        assert_eq!(sink.checkpoints.lock().unwrap().last(), Some(&Lsn(30)));
    }

    #[tokio::test]
    async fn lanes_apply_everything_then_store_the_checkpoint_once() {
        let sink = Arc::new(RecordingSink::default());
        let ids: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let settings = WorkerSettings { lanes: 4, max_batch_delay: Duration::from_millis(50), ..fast_settings() };
        let acked = run_worker(sink.clone(), None, settings, vec![transaction(100, &refs)]).await;
        let mut applied = sink.applied.lock().unwrap().clone();
        applied.sort_by_key(|id| id.parse::<u32>().unwrap());
        assert_eq!(applied, ids);
        assert_eq!(*sink.checkpoints.lock().unwrap(), [Lsn(100)], "one checkpoint, after every lane");
        assert_eq!(acked, Lsn(100));
    }

    #[tokio::test]
    async fn a_batch_too_small_for_its_lanes_goes_whole_with_its_checkpoint() {
        let sink = Arc::new(RecordingSink { min_lane_changes: 10, ..RecordingSink::default() });
        let settings = WorkerSettings { lanes: 4, ..fast_settings() };
        let (worker, queue, _acked) =
            SinkWorker::new(sink.clone(), None, settings, Metrics::new().unwrap(), Arc::default());
        let task = tokio::spawn(worker.run());
        let ids: Vec<String> = (0..40).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        // One transaction at a time, each its own batch.
        queue.send(transaction(10, &refs[..9])).await.unwrap();
        wait_for_checkpoint(&sink, Lsn(10)).await;
        queue.send(transaction(20, &refs[..20])).await.unwrap();
        wait_for_checkpoint(&sink, Lsn(20)).await;
        queue.send(transaction(30, &refs)).await.unwrap();
        drop(queue);
        task.await.unwrap();
        let calls = sink.calls.lock().unwrap().clone();
        assert_eq!(calls[0], (9, Some(Lsn(10))), "fewer changes than one lane's worth: one call, checkpoint included");
        // 20 changes: at most two lanes, then the checkpoint alone.
        let second = calls.iter().position(|call| call.1 == Some(Lsn(20))).unwrap();
        assert!(calls[1..second].iter().all(|call| call.1.is_none()), "{calls:?}");
        assert_eq!(calls[1..second].iter().map(|call| call.0).sum::<usize>(), 20);
        assert_eq!((second - 1, calls[second]), (2, (0, Some(Lsn(20)))), "{calls:?}");
        // 40 changes: up to all four lanes.
        let lanes = &calls[second + 1..calls.len() - 1];
        assert_eq!(lanes.iter().map(|call| call.0).sum::<usize>(), 40);
        assert!((3..=4).contains(&lanes.len()), "{calls:?}");
        assert_eq!(calls.last(), Some(&(0, Some(Lsn(30)))));
    }

    async fn wait_for_checkpoint(sink: &RecordingSink, lsn: Lsn) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !sink.checkpoints.lock().unwrap().contains(&lsn) {
            assert!(std::time::Instant::now() < deadline, "no checkpoint {lsn} within 10 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn pieces_of_a_transaction_store_the_checkpoint_only_with_the_last_one() {
        let sink = Arc::new(RecordingSink::default());
        // One piece per batch, so a piece could not hide behind the last one.
        let settings = WorkerSettings { max_batch_changes: 1, ..fast_settings() };
        let (worker, queue, acked) =
            SinkWorker::new(sink.clone(), None, settings, Metrics::new().unwrap(), Arc::default());
        let task = tokio::spawn(worker.run());
        queue.send(transaction(10, &["before"])).await.unwrap();
        queue.send_piece(transaction(20, &["a", "b"])).await.unwrap();
        queue.send_piece(transaction(20, &["c"])).await.unwrap();
        let end = Arc::new(Transaction { changes: Vec::new(), ..(*transaction(20, &[])).clone() });
        queue.send(end).await.unwrap();
        drop(queue);
        task.await.unwrap();
        assert_eq!(*sink.applied.lock().unwrap(), ["before", "a", "b", "c"]);
        assert_eq!(*sink.checkpoints.lock().unwrap(), [Lsn(10), Lsn(20)], "no checkpoint inside the transaction");
        assert_eq!(*acked.borrow(), Lsn(20));
    }

    #[tokio::test]
    async fn pieces_of_a_transaction_the_store_holds_are_skipped() {
        let sink = Arc::new(RecordingSink::default());
        let (worker, queue, acked) =
            SinkWorker::new(sink.clone(), Some(Lsn(20)), fast_settings(), Metrics::new().unwrap(), Arc::default());
        let task = tokio::spawn(worker.run());
        queue.send_piece(transaction(20, &["a"])).await.unwrap();
        queue.send(Arc::new(Transaction { changes: Vec::new(), ..(*transaction(20, &[])).clone() })).await.unwrap();
        drop(queue);
        task.await.unwrap();
        assert!(sink.applied.lock().unwrap().is_empty());
        assert_eq!(*acked.borrow(), Lsn(20));
    }

    #[tokio::test]
    async fn a_rejected_change_goes_to_the_dead_letter_queue_and_the_rest_is_applied() {
        let sink = Arc::new(RecordingSink { poison: Some("bad"), ..RecordingSink::default() });
        let dead_letters = Arc::new(MemoryDeadLetters::default());
        let settings = WorkerSettings { on_error: OnError::DeadLetter(dead_letters.clone()), ..fast_settings() };
        let transactions = vec![transaction(10, &["a", "bad", "b"]), transaction(20, &["c"])];
        let acked = run_worker(sink.clone(), None, settings, transactions).await;
        assert_eq!(*sink.applied.lock().unwrap(), ["a", "b", "c"]);
        let letters = dead_letters.0.lock().unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0]["new"]["id"], "bad");
        assert_eq!(letters[0]["commit_lsn"], Lsn(9).to_string());
        assert_eq!(letters[0]["table"], "public.t");
        assert!(letters[0]["error"].as_str().unwrap().contains("value rejected"));
        assert_eq!(acked, Lsn(20));
    }

    #[tokio::test]
    async fn a_failing_store_is_retried_and_never_dead_lettered() {
        let sink = Arc::new(RecordingSink { store_failures_left: Mutex::new(5), ..RecordingSink::default() });
        let dead_letters = Arc::new(MemoryDeadLetters::default());
        let settings = WorkerSettings { on_error: OnError::DeadLetter(dead_letters.clone()), ..fast_settings() };
        let acked = run_worker(sink.clone(), None, settings, vec![transaction(10, &["a", "b"])]).await;
        assert!(dead_letters.0.lock().unwrap().is_empty(), "a store-wide failure is not about the change");
        assert_eq!(*sink.applied.lock().unwrap(), ["a", "b"], "applied once the store recovered");
        assert_eq!(acked, Lsn(10));
    }

    #[tokio::test]
    async fn too_many_dead_letters_in_a_row_block_the_sink() {
        let sink = Arc::new(RecordingSink { poison: Some("bad"), ..RecordingSink::default() });
        let dead_letters = Arc::new(MemoryDeadLetters::default());
        let settings = WorkerSettings {
            on_error: OnError::DeadLetter(dead_letters.clone()),
            max_consecutive_dead_letters: 3,
            ..fast_settings()
        };
        let (worker, queue, acked) =
            SinkWorker::new(sink.clone(), None, settings, Metrics::new().unwrap(), Arc::default());
        let task = tokio::spawn(worker.run());
        // Two rejected, one applied (the count starts over), then five rejected in a row.
        queue.send(transaction(10, &["bad1", "bad2", "ok1"])).await.unwrap();
        queue.send(transaction(20, &["bad3", "bad4", "bad5", "bad6", "bad7"])).await.unwrap();
        let letters = || dead_letters.0.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(5);
        while letters() < 5 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(letters(), 5, "bad1, bad2, then bad3..bad5 until the breaker opens");
        assert!(*acked.borrow() < Lsn(20), "the transaction holding the sixth rejection in a row is not acknowledged");
        assert_eq!(*sink.applied.lock().unwrap(), ["ok1"]);
        task.abort();
        let _ = task.await;
        assert_eq!(letters(), 5, "bad6 blocked the sink: never dead-lettered");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_worker_applies_a_lone_transaction_without_waiting() {
        let sink = Arc::new(RecordingSink::default());
        let (worker, queue, mut acked) =
            SinkWorker::new(sink.clone(), None, fast_settings(), Metrics::new().unwrap(), Arc::default());
        let task = tokio::spawn(worker.run());
        let started = tokio::time::Instant::now();
        queue.send(transaction(10, &["a"])).await.unwrap();
        acked.wait_for(|acked| *acked == Lsn(10)).await.unwrap();
        // The clock is paused: any timer the worker waited on would show here.
        assert_eq!(started.elapsed(), Duration::ZERO, "applied at once, not after a batch delay");
        drop(queue);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_worker_batches_what_queued_up_meanwhile() {
        // The first apply fails, so the worker is busy (waiting to retry) while three more arrive.
        let sink = Arc::new(RecordingSink { failures_left: Mutex::new(1), ..RecordingSink::default() });
        let settings = WorkerSettings { retry_initial: Duration::from_millis(100), ..fast_settings() };
        let (worker, queue, mut acked) =
            SinkWorker::new(sink.clone(), None, settings, Metrics::new().unwrap(), Arc::default());
        let task = tokio::spawn(worker.run());
        queue.send(transaction(10, &["a"])).await.unwrap();
        while *sink.failures_left.lock().unwrap() > 0 {
            tokio::task::yield_now().await;
        }
        for (end, id) in [(20, "b"), (30, "c"), (40, "d")] {
            queue.send(transaction(end, &[id])).await.unwrap();
        }
        acked.wait_for(|acked| *acked == Lsn(40)).await.unwrap();
        assert_eq!(*sink.applied.lock().unwrap(), ["a", "b", "c", "d"]);
        assert_eq!(*sink.checkpoints.lock().unwrap(), [Lsn(10), Lsn(40)], "b, c and d applied as one batch");
        drop(queue);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_pause_waits_for_the_end_of_a_transaction_in_pieces_and_applies_nothing_until_dropped() {
        let sink = Arc::new(RecordingSink::default());
        let settings = WorkerSettings { max_batch_changes: 1, ..fast_settings() };
        let (worker, queue, mut acked) =
            SinkWorker::new(sink.clone(), Some(Lsn(5)), settings, Metrics::new().unwrap(), Arc::default());
        let pauses = worker.pause_handle();
        let task = tokio::spawn(worker.run());
        // Idle: pauses at once, at the stored checkpoint.
        let paused = pauses.pause().await.unwrap();
        assert_eq!(paused.checkpoint, Lsn(5));
        queue.send(transaction(10, &["a"])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(sink.applied.lock().unwrap().is_empty(), "nothing applied while paused");
        drop(paused);
        acked.wait_for(|acked| *acked == Lsn(10)).await.unwrap();
        // A pause asked for between two pieces waits for the transaction's end.
        queue.send_piece(transaction(20, &["b"])).await.unwrap();
        while sink.applied.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        let pausing = tokio::spawn(async move { pauses.pause().await.unwrap() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pausing.is_finished(), "paused inside a transaction");
        queue.send_piece(transaction(20, &["c"])).await.unwrap();
        queue.send(Arc::new(Transaction { changes: Vec::new(), ..(*transaction(20, &[])).clone() })).await.unwrap();
        let paused = pausing.await.unwrap();
        assert_eq!(paused.checkpoint, Lsn(20));
        assert_eq!(*sink.applied.lock().unwrap(), ["a", "b", "c"]);
        drop(paused);
        drop(queue);
        task.await.unwrap();
    }

    /// Polls `condition` every 5 ms for up to 5 s.
    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_pause_setting_aside_drops_only_what_the_archive_holds_and_resumes_at_the_horizon() {
        let sink = Arc::new(RecordingSink::default());
        let settings = WorkerSettings { queue_capacity: 2, ..fast_settings() };
        let (worker, queue, mut acked) =
            SinkWorker::new(sink.clone(), Some(Lsn(5)), settings, Metrics::new().unwrap(), Arc::default());
        let pauses = worker.pause_handle();
        let task = tokio::spawn(worker.run());
        let (archive, archive_acked) = watch::channel(Lsn(5));
        let paused = pauses.pause_setting_aside(archive_acked).await.unwrap();
        assert_eq!((paused.checkpoint, paused.set_aside_to()), (Lsn(5), Lsn(5)));
        queue.send(transaction(10, &["a"])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(paused.set_aside_to(), Lsn(5), "set aside before the archive acknowledged it");
        archive.send(Lsn(10)).unwrap();
        eventually("a is set aside", || paused.set_aside_to() == Lsn(10)).await;
        // With a queue of 2, more than it holds: it drains as the archive acknowledges.
        for (end, id) in [(20, "b"), (30, "c"), (40, "d")] {
            queue.send(transaction(end, &[id])).await.unwrap();
        }
        archive.send(Lsn(40)).unwrap();
        eventually("b, c and d are set aside", || paused.set_aside_to() == Lsn(40)).await;
        assert_eq!(*acked.borrow(), Lsn::ZERO, "nothing set aside is acknowledged");
        // e waits for the archive, and the hold for e.
        queue.send(transaction(50, &["e"])).await.unwrap();
        let paused = Arc::new(paused);
        let holding = tokio::spawn({
            let paused = paused.clone();
            async move { paused.hold().await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!holding.is_finished(), "held with e taken but not set aside");
        archive.send(Lsn(50)).unwrap();
        assert_eq!(holding.await.unwrap(), Lsn(50));
        let paused = Arc::into_inner(paused).unwrap();
        queue.send(transaction(60, &["f"])).await.unwrap();
        paused.resume(Lsn(50));
        acked.wait_for(|acked| *acked == Lsn(60)).await.unwrap();
        assert_eq!(*sink.applied.lock().unwrap(), ["f"], "what was set aside is the replay's to apply");
        assert_eq!(*sink.checkpoints.lock().unwrap(), [Lsn(50), Lsn(60)], "the horizon stored before f");
        drop(queue);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_hold_waits_for_the_end_of_a_transaction_in_pieces_set_aside() {
        let sink = Arc::new(RecordingSink::default());
        let (worker, queue, acked) =
            SinkWorker::new(sink.clone(), Some(Lsn(5)), fast_settings(), Metrics::new().unwrap(), Arc::default());
        let pauses = worker.pause_handle();
        let task = tokio::spawn(worker.run());
        let (archive, archive_acked) = watch::channel(Lsn(5));
        let paused = Arc::new(pauses.pause_setting_aside(archive_acked).await.unwrap());
        queue.send_piece(transaction(20, &["a"])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let holding = tokio::spawn({
            let paused = paused.clone();
            async move { paused.hold().await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!holding.is_finished(), "held inside a transaction");
        queue.send(Arc::new(Transaction { changes: Vec::new(), ..(*transaction(20, &[])).clone() })).await.unwrap();
        archive.send(Lsn(20)).unwrap();
        assert_eq!(holding.await.unwrap(), Lsn(20));
        Arc::into_inner(paused).unwrap().resume(Lsn(20));
        drop(queue);
        task.await.unwrap();
        assert!(sink.applied.lock().unwrap().is_empty());
        assert_eq!(*acked.borrow(), Lsn(20));
    }

    #[tokio::test]
    async fn a_pause_ending_before_what_was_set_aside_is_applied_strands_the_worker() {
        let sink = Arc::new(RecordingSink::default());
        let (worker, queue, acked) =
            SinkWorker::new(sink.clone(), Some(Lsn(5)), fast_settings(), Metrics::new().unwrap(), Arc::default());
        let pauses = worker.pause_handle();
        let status = worker.status();
        let task = tokio::spawn(worker.run());
        let (_archive, archive_acked) = watch::channel(Lsn(100));
        let paused = pauses.pause_setting_aside(archive_acked).await.unwrap();
        queue.send(transaction(10, &["a"])).await.unwrap();
        eventually("a is set aside", || paused.set_aside_to() == Lsn(10)).await;
        drop(paused);
        for (end, id) in [(20, "b"), (30, "c")] {
            queue.send(transaction(end, &[id])).await.unwrap();
        }
        drop(queue);
        task.await.unwrap();
        assert!(sink.applied.lock().unwrap().is_empty(), "applied after a gap");
        assert!(sink.checkpoints.lock().unwrap().is_empty());
        assert_eq!(*acked.borrow(), Lsn::ZERO, "acknowledged past what was set aside");
        let blocked = status.blocked_on().unwrap();
        assert!(blocked.contains("restart pgfanout"), "{blocked}");
    }

    #[tokio::test]
    async fn under_block_a_rejected_change_holds_the_acknowledgement() {
        let sink = Arc::new(RecordingSink { poison: Some("bad"), ..RecordingSink::default() });
        let (worker, queue, acked) =
            SinkWorker::new(sink.clone(), None, fast_settings(), Metrics::new().unwrap(), Arc::default());
        let task = tokio::spawn(worker.run());
        queue.send(transaction(10, &["a"])).await.unwrap();
        queue.send(transaction(20, &["bad"])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(*acked.borrow() < Lsn(20), "the rejected transaction is never acknowledged under block");
        task.abort();
    }
}
