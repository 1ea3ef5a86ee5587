//! Errors of the MongoDB sink, classified for the retry policy: only data the server or
//! the mapping rejects is permanent; an unreachable, restarting or busy server is
//! transient, and so is a configuration problem an operator can fix while the worker
//! retries (credentials).

use pgfanout_core::{ErrorKind, SinkError};

use crate::encode::EncodeError;

/// Server error codes that mean "try again": shutdown, step-down, not primary, time limits,
/// write conflicts, a full cache.
const TRANSIENT_CODES: [i32; 15] = [6, 7, 50, 89, 91, 112, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 64];

/// What can go wrong writing to MongoDB.
#[derive(Debug, thiserror::Error)]
pub enum MongoSinkError {
    /// The driver failed: connection, server selection, command failure.
    #[error("mongodb {what} failed")]
    Driver {
        /// Which operation (`update on app.reservations`, `reading the checkpoint`).
        what: String,
        /// Driver error.
        #[source]
        source: mongodb::error::Error,
    },
    /// No answer within the response timeout.
    #[error("mongodb did not answer {what} within {timeout:?}")]
    Timeout {
        /// Which operation.
        what: String,
        /// The configured limit.
        timeout: std::time::Duration,
    },
    /// A change cannot be turned into statements.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The server refused a statement.
    #[error("mongodb refused a write to {namespace}: code {code}: {message}")]
    Rejected {
        /// `database.collection`.
        namespace: String,
        /// Server error code.
        code: i32,
        /// Server message.
        message: String,
    },
    /// An aggregate document changed between reading and writing it (another writer).
    #[error("aggregate document in {namespace} changed while being updated; retrying reads it again")]
    AggregateConflict {
        /// `database.collection`.
        namespace: String,
    },
    /// The stored checkpoint is not an LSN.
    #[error("checkpoint document {id} in {namespace} holds {value:?}, not an LSN; delete it to replay from the slot's position")]
    BadCheckpoint {
        /// `database.collection`.
        namespace: String,
        /// Sink name.
        id: String,
        /// What it holds.
        value: String,
    },
}

impl MongoSinkError {
    /// Whether retrying the same batch later can succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            MongoSinkError::Driver { source, .. } => !is_data_error(source),
            MongoSinkError::Timeout { .. } | MongoSinkError::AggregateConflict { .. } => true,
            MongoSinkError::Rejected { code, .. } => TRANSIENT_CODES.contains(code),
            MongoSinkError::Encode(_) | MongoSinkError::BadCheckpoint { .. } => false,
        }
    }

    /// Converts to the pipeline's classified error; `doing` says what the sink was doing.
    pub fn into_sink_error(self, sink: &str, doing: String) -> SinkError {
        let kind = if self.is_retriable() { ErrorKind::Transient } else { ErrorKind::Permanent };
        SinkError { sink: sink.to_owned(), kind, message: doing, source: Some(Box::new(self)) }
    }
}

/// Whether the driver refused the data itself (a document it cannot serialize, or one the
/// server rejects as a whole command for its content), as opposed to a connection, server
/// selection or server state problem.
fn is_data_error(error: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind as Kind;
    match error.kind.as_ref() {
        Kind::BsonSerialization(_) | Kind::InvalidArgument { .. } => true,
        // BSONObjectTooLarge, and documents the server cannot store.
        Kind::Command(command) => matches!(command.code, 10334 | 17419 | 2 | 52 | 55),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes_are_classified() {
        let rejected = |code| MongoSinkError::Rejected { namespace: "app.t".into(), code, message: String::new() };
        assert!(rejected(11600).is_retriable(), "interrupted at shutdown");
        assert!(rejected(10107).is_retriable(), "not primary");
        assert!(!rejected(2).is_retriable(), "bad value");
        assert!(!rejected(11000).is_retriable(), "a duplicate key that is not a stale upsert");
        assert!(MongoSinkError::AggregateConflict { namespace: "app.s".into() }.is_retriable());
    }
}
