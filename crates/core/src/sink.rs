//! The contract between the pipeline and a store.
//!
//! A [`Sink`] is driven by one worker task. Its input is at-least-once: after
//! a crash the same changes may come again, so every write must be
//! idempotent, and the sink's stored checkpoint lets the worker skip what the
//! store already holds.
//!
//! Calls may overlap: the worker splits a batch into *lanes* by key and calls
//! [`Sink::apply`] once per lane concurrently. Two lanes never share a key,
//! and within a call the changes of any one key are in commit order and must
//! be applied in that order. The checkpoint is handed over only once every
//! lane of the batch succeeded — with the batch's changes when there is a
//! single lane (so a store with transactions can write both atomically), in
//! a call of its own otherwise.

use async_trait::async_trait;
use pgoutput::Lsn;

use crate::model::{Change, Transaction};

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The store is unreachable, busy or timed out: retry the same batch.
    Transient,
    /// The store rejects the data itself: retrying alone will not help.
    Permanent,
}

impl ErrorKind {
    /// `transient` or `permanent`, for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
        }
    }
}

/// A failure reported by a sink, classified for the retry policy.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {message}")]
pub struct SinkError {
    /// Sink name from the config.
    pub sink: String,
    /// Retry classification.
    pub kind: ErrorKind,
    /// What failed, with context (table, key template, LSN).
    pub message: String,
    /// The store driver's error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SinkError {
    /// A transient error with its cause.
    pub fn transient(
        sink: &str,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        SinkError {
            sink: sink.to_owned(),
            kind: ErrorKind::Transient,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A permanent error; `source` may be absent when the sink itself found the problem.
    pub fn permanent(sink: &str, message: impl Into<String>) -> Self {
        SinkError { sink: sink.to_owned(), kind: ErrorKind::Permanent, message: message.into(), source: None }
    }
}

/// One change handed to a sink, with the transaction it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct ChangeRef<'a> {
    /// The committed transaction (commit LSN, end LSN, commit time).
    pub transaction: &'a Transaction,
    /// The change.
    pub change: &'a Change,
}

impl ChangeRef<'_> {
    /// The change's version: its commit LSN, then its position in the
    /// transaction. Versions grow strictly along the stream, so a store that
    /// keeps the version with each row can refuse to move a row backwards.
    pub fn version(&self) -> (Lsn, u32) {
        (self.transaction.commit_lsn, self.change.ordinal)
    }
}

/// A destination store.
#[async_trait]
pub trait Sink: Send + Sync {
    /// The sink's name from the config, used in logs, metrics and checkpoints.
    fn name(&self) -> &str;

    /// Connects (or checks the connection) and reads the end LSN of the last
    /// transaction the store durably holds, if any.
    async fn load_checkpoint(&self) -> Result<Option<Lsn>, SinkError>;

    /// Applies `changes` in order (per key) and, when `checkpoint` is given,
    /// stores it too, atomically with the changes where the store allows.
    /// `changes` may be empty (checkpoint only). On `Ok` everything passed is
    /// durable. On `Err` the worker calls again with the same arguments (or
    /// with the changes one at a time, to find one the store rejects), so a
    /// partial apply must be safe to repeat.
    async fn apply(&self, changes: &[ChangeRef<'_>], checkpoint: Option<Lsn>) -> Result<(), SinkError>;
}

/// Where changes a store rejects go when a sink runs with
/// `on_error = "dead_letter"`.
#[async_trait]
pub trait DeadLetterQueue: Send + Sync {
    /// A short description for logs (`file /var/lib/…`, `redis stream …`).
    fn describe(&self) -> String;

    /// Durably records `change`, which sink `sink` rejected with `error`.
    async fn record(&self, sink: &str, change: ChangeRef<'_>, error: &str) -> Result<(), SinkError>;
}
