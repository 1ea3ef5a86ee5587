//! One worker task per sink: bounded queue → batcher → apply with retry → ack.
//!
//! ```text
//!  dispatcher ──(bounded mpsc, backpressure)──► SinkWorker::run
//!                                                │ skip transactions at or below the stored checkpoint
//!                                                │ batch by change count and by time
//!                                                │ Sink::apply, retried with backoff until it succeeds
//!                                                ▼
//!                                       watch<Lsn> acknowledgement ──► CheckpointCoordinator
//! ```
//!
//! The worker acknowledges a transaction only after `Sink::apply` returned
//! `Ok` for the batch holding it. With `on_error = "block"` (the only policy
//! so far) a permanent error is retried like a transient one, at the capped
//! backoff, so nothing is dropped and the flush LSN waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgoutput::Lsn;
use tokio::sync::{mpsc, watch, Notify};

use crate::metrics::Metrics;
use crate::model::Transaction;
use crate::sink::Sink;

/// Batching and retry settings of one worker.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Transactions the queue holds before the dispatcher waits.
    pub queue_capacity: usize,
    /// A batch is applied once it holds this many changes…
    pub max_batch_changes: usize,
    /// …or once its first transaction has waited this long.
    pub max_batch_delay: Duration,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Retry delay cap.
    pub retry_max: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            queue_capacity: 1024,
            max_batch_changes: 1000,
            max_batch_delay: Duration::from_millis(20),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
        }
    }
}

/// The sending side of a worker's queue, held by the dispatcher.
pub struct WorkerQueue {
    sender: mpsc::Sender<Arc<Transaction>>,
}

impl WorkerQueue {
    /// Queues a transaction, waiting while the queue is full (backpressure).
    /// Fails only if the worker has stopped.
    pub async fn send(&self, transaction: Arc<Transaction>) -> Result<(), WorkerStopped> {
        self.sender.send(transaction).await.map_err(|_| WorkerStopped)
    }
}

/// The worker task ended (its sink could not start, or shutdown).
#[derive(Debug, thiserror::Error)]
#[error("sink worker stopped")]
pub struct WorkerStopped;

/// Drives one sink.
pub struct SinkWorker {
    sink: Box<dyn Sink>,
    settings: WorkerSettings,
    queue: mpsc::Receiver<Arc<Transaction>>,
    acked: watch::Sender<Lsn>,
    on_ack: Arc<Notify>,
    checkpoint: Lsn,
    metrics: Metrics,
}

impl SinkWorker {
    /// Creates a worker for `sink` whose stored checkpoint is `checkpoint`;
    /// returns it with its queue and its acknowledgement channel. `on_ack` is
    /// notified after every acknowledgement.
    pub fn new(
        sink: Box<dyn Sink>,
        checkpoint: Option<Lsn>,
        settings: WorkerSettings,
        metrics: Metrics,
        on_ack: Arc<Notify>,
    ) -> (Self, WorkerQueue, watch::Receiver<Lsn>) {
        let (sender, queue) = mpsc::channel(settings.queue_capacity.max(1));
        let checkpoint = checkpoint.unwrap_or(Lsn::ZERO);
        let (acked, acked_receiver) = watch::channel(Lsn::ZERO);
        let worker = SinkWorker { sink, settings, queue, acked, on_ack, checkpoint, metrics };
        (worker, WorkerQueue { sender }, acked_receiver)
    }

    /// Runs until the queue is closed and drained.
    pub async fn run(mut self) {
        let name = self.sink.name().to_owned();
        self.metrics.checkpoint_lsn.with_label_values(&[&name]).set(self.checkpoint.0 as i64);
        while let Some(batch) = self.next_batch().await {
            let last = batch.last().map(|t| t.end_lsn).unwrap_or_default();
            let applied: Vec<_> = batch.into_iter().filter(|t| t.end_lsn > self.checkpoint).collect();
            if !applied.is_empty() {
                self.apply_with_retry(&name, &applied).await;
                self.checkpoint = last.max(self.checkpoint);
                self.metrics.checkpoint_lsn.with_label_values(&[&name]).set(self.checkpoint.0 as i64);
            }
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
        tracing::debug!(sink = %name, "sink worker drained and stopped");
    }

    async fn next_batch(&mut self) -> Option<Vec<Arc<Transaction>>> {
        let first = self.queue.recv().await?;
        let mut changes = first.changes.len();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + self.settings.max_batch_delay;
        while changes < self.settings.max_batch_changes {
            let next = match self.queue.try_recv() {
                Ok(next) => next,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, self.queue.recv()).await {
                        Ok(Some(next)) => next,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            changes += next.changes.len();
            batch.push(next);
        }
        Some(batch)
    }

    async fn apply_with_retry(&mut self, name: &str, batch: &[Arc<Transaction>]) {
        let changes: usize = batch.iter().map(|t| t.changes.len()).sum();
        self.metrics.sink_batch_size.with_label_values(&[name]).observe(changes as f64);
        let mut delay = self.settings.retry_initial;
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            match self.sink.apply(batch).await {
                Ok(()) => {
                    self.metrics.sink_apply_seconds.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
                    for change in batch.iter().flat_map(|t| t.changes.iter()) {
                        let table = change.table.table.to_string();
                        self.metrics.sink_applied_total.with_label_values(&[name, &table, change.op.label()]).inc();
                    }
                    if attempt > 0 {
                        tracing::info!(sink = %name, attempts = attempt + 1, "sink recovered");
                    }
                    return;
                }
                Err(err) => {
                    attempt += 1;
                    self.metrics.sink_errors_total.with_label_values(&[name, err.kind.label()]).inc();
                    self.metrics.sink_retries_total.with_label_values(&[name]).inc();
                    let first_lsn = batch.first().map(|t| t.end_lsn).unwrap_or_default();
                    tracing::warn!(
                        sink = %name,
                        kind = err.kind.label(),
                        attempt,
                        batch_first_end_lsn = %first_lsn,
                        retry_in_ms = delay.as_millis() as u64,
                        error = %error_chain(&err),
                        "sink apply failed; retrying (on_error = block)"
                    );
                    tokio::time::sleep(jittered(delay)).await;
                    delay = (delay * 2).min(self.settings.retry_max);
                }
            }
        }
    }
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

/// `delay` scaled by a random factor in [0.5, 1.0), so that many clients
/// retrying at once do not hit a recovering server in lockstep.
pub fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.5..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SinkError;
    use async_trait::async_trait;
    use pgoutput::{PgTimestamp, Xid};
    use std::sync::Mutex;

    struct RecordingSink {
        applied: Arc<Mutex<Vec<Lsn>>>,
        failures_left: usize,
    }

    #[async_trait]
    impl Sink for RecordingSink {
        fn name(&self) -> &str {
            "recording"
        }
        async fn load_checkpoint(&mut self) -> Result<Option<Lsn>, SinkError> {
            Ok(None)
        }
        async fn apply(&mut self, batch: &[Arc<Transaction>]) -> Result<(), SinkError> {
            if self.failures_left > 0 {
                self.failures_left -= 1;
                return Err(SinkError::permanent("recording", "rejected"));
            }
            self.applied.lock().unwrap().extend(batch.iter().map(|t| t.end_lsn));
            Ok(())
        }
    }

    fn transaction(end: u64) -> Arc<Transaction> {
        Arc::new(Transaction {
            xid: Xid(1),
            commit_lsn: Lsn(end - 1),
            end_lsn: Lsn(end),
            commit_time: PgTimestamp(0),
            changes: vec![],
        })
    }

    fn fast_settings() -> WorkerSettings {
        WorkerSettings {
            retry_initial: Duration::from_millis(1),
            retry_max: Duration::from_millis(2),
            ..WorkerSettings::default()
        }
    }

    #[tokio::test]
    async fn skips_what_the_store_holds_and_acknowledges_everything() {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let sink = RecordingSink { applied: applied.clone(), failures_left: 2 };
        let (worker, queue, mut acked) =
            SinkWorker::new(Box::new(sink), Some(Lsn(20)), fast_settings(), Metrics::new().unwrap(), Arc::default());
        let task = tokio::spawn(worker.run());
        for end in [10, 20, 30, 40] {
            queue.send(transaction(end)).await.unwrap();
        }
        drop(queue);
        task.await.unwrap();
        assert_eq!(*applied.lock().unwrap(), vec![Lsn(30), Lsn(40)], "retried after failures, skipped held ones");
        assert_eq!(*acked.borrow_and_update(), Lsn(40));
    }
}
