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
    /// The `[sink.tls]` files cannot be used.
    #[error("sink tls settings: {0}")]
    Tls(String),
    /// A row `verify` cannot locate (no `_id` can be built from it).
    #[error("table {table}: {reason}")]
    Verify {
        /// Source table.
        table: String,
        /// What is wrong.
        reason: String,
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

/// Server error codes about one document, not the server: a bad value
/// (2 BadValue, 52/55 invalid field names and references), a document too
/// large (10334 BSONObjectTooLarge, 17419, 17280 KeyTooLong), a document the
/// collection's validator refuses (121), a duplicate key on another unique
/// index (11000). The only codes a change may be dead-lettered for.
const CHANGE_CODES: [i32; 8] = [2, 52, 55, 121, 10334, 11000, 17280, 17419];

impl MongoSinkError {
    /// Whether retrying the same batch later can succeed without anyone acting.
    pub fn is_retriable(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// The error's class for the retry and dead-letter policy: only a
    /// document the server or the mapping rejects is about the change;
    /// permissions (13 Unauthorized), authentication (18), a primary that is
    /// not writable for good, a full disk and any code not known to be about
    /// one document are about the server, and block whatever `on_error` says.
    pub fn kind(&self) -> ErrorKind {
        match self {
            MongoSinkError::Driver { source, .. } => driver_kind(source),
            MongoSinkError::Timeout { .. } | MongoSinkError::AggregateConflict { .. } => ErrorKind::Transient,
            MongoSinkError::Rejected { code, .. } => code_kind(*code),
            MongoSinkError::Encode(_) | MongoSinkError::Verify { .. } => ErrorKind::Permanent,
            MongoSinkError::BadCheckpoint { .. } | MongoSinkError::Tls(_) => ErrorKind::StoreFailing,
        }
    }

    /// Converts to the pipeline's classified error; `doing` says what the sink was doing.
    pub fn into_sink_error(self, sink: &str, doing: String) -> SinkError {
        SinkError { sink: sink.to_owned(), kind: self.kind(), message: doing, source: Some(Box::new(self)) }
    }
}

/// The class of a server error code.
fn code_kind(code: i32) -> ErrorKind {
    if TRANSIENT_CODES.contains(&code) {
        ErrorKind::Transient
    } else if CHANGE_CODES.contains(&code) {
        ErrorKind::Permanent
    } else {
        ErrorKind::StoreFailing
    }
}

/// The class of a driver error: a document the driver cannot serialize or
/// the server refuses for its content is about the change; an
/// authentication failure or a refused command is about the server; a
/// connection, server selection or pool problem is transient.
fn driver_kind(error: &mongodb::error::Error) -> ErrorKind {
    use mongodb::error::ErrorKind as Kind;
    match error.kind.as_ref() {
        Kind::BsonSerialization(_) | Kind::InvalidArgument { .. } => ErrorKind::Permanent,
        Kind::Authentication { .. } => ErrorKind::StoreFailing,
        Kind::Command(command) => code_kind(command.code),
        Kind::Write(mongodb::error::WriteFailure::WriteError(write)) => code_kind(write.code),
        Kind::Write(mongodb::error::WriteFailure::WriteConcernError(concern)) => code_kind(concern.code),
        _ => ErrorKind::Transient,
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

    #[test]
    fn permissions_and_authentication_block_and_are_never_about_the_change() {
        let rejected = |code| MongoSinkError::Rejected { namespace: "app.t".into(), code, message: String::new() };
        for (code, what) in
            [(13, "Unauthorized"), (18, "AuthenticationFailed"), (26, "NamespaceNotFound"), (14031, "OutOfDiskSpace")]
        {
            assert_eq!(rejected(code).kind(), ErrorKind::StoreFailing, "{what}");
        }
        assert_eq!(rejected(10334).kind(), ErrorKind::Permanent, "a document too large is about the change");
        assert_eq!(rejected(10107).kind(), ErrorKind::Transient, "not primary: an election is under way");
    }
}
