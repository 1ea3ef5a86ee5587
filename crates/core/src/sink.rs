//! The contract between the pipeline and a store.
//!
//! A [`Sink`] is driven by exactly one worker task; calls never overlap.
//! Its input is at-least-once: after a crash the same transactions may come
//! again, so every write must be idempotent, and the sink's stored
//! checkpoint lets the worker skip what the store already holds. Within a
//! batch, changes are in commit order and must be applied in that order for
//! any one key.

use std::sync::Arc;

use async_trait::async_trait;
use pgoutput::Lsn;

use crate::model::Transaction;

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

/// A destination store.
#[async_trait]
pub trait Sink: Send {
    /// The sink's name from the config, used in logs, metrics and checkpoints.
    fn name(&self) -> &str;

    /// Connects (or checks the connection) and reads the end LSN of the last
    /// transaction the store durably holds, if any.
    async fn load_checkpoint(&mut self) -> Result<Option<Lsn>, SinkError>;

    /// Applies the changes of `batch` in order and stores the last
    /// transaction's end LSN as the checkpoint, atomically with the data where
    /// the store allows. On `Ok` everything in the batch is durable. On `Err`
    /// the worker calls again with the same batch, so a partial apply must be
    /// safe to repeat.
    async fn apply(&mut self, batch: &[Arc<Transaction>]) -> Result<(), SinkError>;
}
