//! Errors of the Redis sink.

use pgfanout_core::{ErrorKind, SinkError};

/// What can go wrong writing to Redis.
#[derive(Debug, thiserror::Error)]
pub enum RedisSinkError {
    /// The server could not be reached or dropped the connection.
    #[error("cannot reach redis at {endpoint}")]
    Connect {
        /// Host and port from the URL (no credentials).
        endpoint: String,
        /// Driver error.
        #[source]
        source: redis::RedisError,
    },
    /// A command or pipeline failed.
    #[error("redis rejected {what}")]
    Command {
        /// Which operation.
        what: String,
        /// Driver error.
        #[source]
        source: redis::RedisError,
    },
    /// No answer within the response timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A row cannot be mapped to a key.
    #[error("table {table}: {reason}")]
    Mapping {
        /// Source table.
        table: String,
        /// What is wrong and what to change.
        reason: String,
    },
    /// The stored checkpoint is not an LSN.
    #[error("checkpoint key {key} holds {value:?}, not an LSN; delete the key to replay from the slot's position")]
    BadCheckpoint {
        /// The key.
        key: String,
        /// What it holds.
        value: String,
    },
}

impl RedisSinkError {
    /// Whether retrying the same batch later can succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            RedisSinkError::Connect { .. } | RedisSinkError::Timeout(_) => true,
            RedisSinkError::Command { source, .. } => {
                source.is_io_error()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || source.is_timeout()
                    || matches!(source.code(), Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY"))
            }
            RedisSinkError::Mapping { .. } | RedisSinkError::BadCheckpoint { .. } => false,
        }
    }

    /// Converts to the pipeline's classified error; `doing` says what the
    /// sink was doing (`"applying batch ending at 0/16B3748"`).
    pub fn into_sink_error(self, sink: &str, doing: String) -> SinkError {
        let kind = if self.is_retriable() { ErrorKind::Transient } else { ErrorKind::Permanent };
        SinkError { sink: sink.to_owned(), kind, message: doing, source: Some(Box::new(self)) }
    }
}
