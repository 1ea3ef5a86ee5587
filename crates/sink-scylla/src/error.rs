//! Errors of the Cassandra/ScyllaDB sink, classified: an unreachable or busy
//! cluster is transient, a value or statement the cluster rejects is
//! permanent.

use pgfanout_core::{ErrorKind, SinkError};
use scylla::errors::{DbError, ExecutionError, NewSessionError, PrepareError, RequestAttemptError};

use crate::types::ConversionError;

/// What can go wrong writing to Cassandra/ScyllaDB.
#[derive(Debug, thiserror::Error)]
pub enum ScyllaSinkError {
    /// No session could be opened with any contact point.
    #[error("cannot reach the cluster at {nodes}")]
    Connect {
        /// The contact points.
        nodes: String,
        /// Driver error.
        #[source]
        source: Box<NewSessionError>,
    },
    /// A statement could not be prepared.
    #[error("cannot prepare {cql}")]
    Prepare {
        /// The statement.
        cql: String,
        /// Driver error.
        #[source]
        source: Box<PrepareError>,
    },
    /// A request failed.
    #[error("{what} failed")]
    Execute {
        /// Which request (`a batch of 12 statements`, `CREATE TABLE …`).
        what: String,
        /// Driver error.
        #[source]
        source: Box<ExecutionError>,
    },
    /// A value does not fit its column.
    #[error("table {table}, column {column}")]
    Conversion {
        /// Target table.
        table: String,
        /// Target column.
        column: String,
        /// What does not fit.
        #[source]
        source: ConversionError,
    },
    /// A row value could not be converted from PostgreSQL's format.
    #[error("table {table}: a value does not convert")]
    Value {
        /// Source table.
        table: String,
        /// Conversion error, with the type OID.
        #[source]
        source: pgoutput::ValueError,
    },
    /// A row cannot be mapped to its target tables.
    #[error("table {table}: {reason}")]
    Mapping {
        /// Source table.
        table: String,
        /// What is wrong and what to change.
        reason: String,
    },
    /// The stored checkpoint is not an LSN.
    #[error(
        "checkpoint row of sink {sink} holds {value:?}, not an LSN; delete the row to replay from the slot's position"
    )]
    BadCheckpoint {
        /// Sink name (the row's key).
        sink: String,
        /// What it holds.
        value: String,
    },
    /// The checkpoint row could not be read.
    #[error("cannot read the checkpoint row: {0}")]
    CheckpointRow(String),
    /// A table's rows could not be read back (`verify`).
    #[error("reading {table} back: {reason}")]
    ReadBack {
        /// Target table.
        table: String,
        /// What went wrong.
        reason: String,
    },
    /// A key move's carry log entry could not be written or read back.
    #[error("carry log entry of a key move in {table}: {reason}")]
    Carried {
        /// Target table.
        table: String,
        /// What went wrong.
        reason: String,
    },
    /// The `[sink.tls]` files cannot be used.
    #[error("sink tls settings: {0}")]
    Tls(String),
    /// The password file could not be read.
    #[error("cannot read password_file {path}")]
    PasswordFile {
        /// The file.
        path: String,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl ScyllaSinkError {
    /// Whether retrying the same batch later can succeed without anyone acting.
    pub fn is_retriable(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// The error's class for the retry and dead-letter policy: a value that
    /// does not fit is about the change; a missing keyspace or table, missing
    /// permissions, authentication and statements the cluster refuses to
    /// prepare are about the cluster, and block whatever `on_error` says.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ScyllaSinkError::Connect { .. } => ErrorKind::Transient,
            ScyllaSinkError::Prepare { source, .. } => {
                if prepare_is_transient(source) {
                    ErrorKind::Transient
                } else {
                    // Preparing involves no row: whatever fails is the cluster's.
                    ErrorKind::StoreFailing
                }
            }
            ScyllaSinkError::Execute { source, .. } => execution_kind(source),
            ScyllaSinkError::Conversion { .. } | ScyllaSinkError::Value { .. } | ScyllaSinkError::Mapping { .. } => {
                ErrorKind::Permanent
            }
            ScyllaSinkError::BadCheckpoint { .. }
            | ScyllaSinkError::CheckpointRow(_)
            | ScyllaSinkError::ReadBack { .. }
            | ScyllaSinkError::Carried { .. }
            | ScyllaSinkError::PasswordFile { .. }
            | ScyllaSinkError::Tls(_) => ErrorKind::StoreFailing,
        }
    }

    /// Converts to the pipeline's classified error; `doing` says what the
    /// sink was doing.
    pub fn into_sink_error(self, sink: &str, doing: String) -> SinkError {
        SinkError { sink: sink.to_owned(), kind: self.kind(), message: doing, source: Some(Box::new(self)) }
    }

    /// Whether the cluster said the statement is invalid (e.g. a missing table).
    pub fn is_invalid_request(&self) -> bool {
        let attempt = match self {
            ScyllaSinkError::Execute { source, .. } => match source.as_ref() {
                ExecutionError::LastAttemptError(attempt) => attempt,
                _ => return false,
            },
            ScyllaSinkError::Prepare { source, .. } => match source.as_ref() {
                PrepareError::AllAttemptsFailed { first_attempt } => first_attempt,
                _ => return false,
            },
            _ => return false,
        };
        matches!(attempt, RequestAttemptError::DbError(DbError::Invalid, _))
    }
}

fn prepare_is_transient(error: &PrepareError) -> bool {
    match error {
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_is_transient(first_attempt),
        PrepareError::ConnectionPoolError(_) => true,
        _ => false,
    }
}

fn execution_is_transient(error: &ExecutionError) -> bool {
    match error {
        ExecutionError::BadQuery(_) => false,
        ExecutionError::PrepareError(prepare) => prepare_is_transient(prepare),
        ExecutionError::LastAttemptError(attempt) => attempt_is_transient(attempt),
        // No node, a broken pool, a timeout, schema agreement, metadata:
        // the cluster is unreachable or busy.
        _ => true,
    }
}

fn execution_kind(error: &ExecutionError) -> ErrorKind {
    let attempt = match error {
        ExecutionError::LastAttemptError(attempt) => attempt,
        // Values that do not serialize or make too long a key: this change's.
        ExecutionError::BadQuery(
            scylla::errors::BadQuery::SerializationError(_) | scylla::errors::BadQuery::ValuesTooLongForKey(..),
        ) => return ErrorKind::Permanent,
        other if execution_is_transient(other) => return ErrorKind::Transient,
        _ => return ErrorKind::StoreFailing,
    };
    match attempt {
        RequestAttemptError::DbError(db, message) => db_error_kind(db, message),
        RequestAttemptError::SerializationError(_) | RequestAttemptError::CqlRequestSerialization(_) => {
            ErrorKind::Permanent
        }
        _ => ErrorKind::Transient,
    }
}

/// The class of an error the cluster answered with. `Invalid` is both "this
/// value is invalid" and "no such table or keyspace": the message tells
/// them apart.
fn db_error_kind(error: &DbError, message: &str) -> ErrorKind {
    if db_error_is_transient(error) {
        return ErrorKind::Transient;
    }
    match error {
        DbError::Invalid => {
            let lower = message.to_ascii_lowercase();
            let missing =
                ["unconfigured table", "does not exist", "keyspace", "undefined column", "unknown identifier"];
            if missing.iter().any(|needle| lower.contains(needle)) {
                ErrorKind::StoreFailing
            } else {
                ErrorKind::Permanent
            }
        }
        DbError::FunctionFailure { .. } => ErrorKind::Permanent,
        // Unauthorized, AuthenticationError, ConfigError, ServerError,
        // ProtocolError, SyntaxError (of the sink's own statement), …
        _ => ErrorKind::StoreFailing,
    }
}

fn attempt_is_transient(error: &RequestAttemptError) -> bool {
    match error {
        RequestAttemptError::DbError(db, _) => db_error_is_transient(db),
        RequestAttemptError::SerializationError(_) | RequestAttemptError::CqlRequestSerialization(_) => false,
        // Connections breaking, unparsable or unexpected responses.
        _ => true,
    }
}

/// Cluster errors a retry can get past: unavailable or overloaded replicas,
/// timeouts, bootstrapping nodes. Syntax, invalid statements, permissions,
/// configuration and server errors are permanent.
fn db_error_is_transient(error: &DbError) -> bool {
    matches!(
        error,
        DbError::Unavailable { .. }
            | DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
            | DbError::ReadFailure { .. }
            | DbError::WriteFailure { .. }
            | DbError::TruncateError
            | DbError::RateLimitReached { .. }
            | DbError::Unprepared { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_or_unreachable_is_transient_and_rejections_are_permanent() {
        let attempt = |db: DbError| ScyllaSinkError::Execute {
            what: "a batch".into(),
            source: Box::new(ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, "msg".into()))),
        };
        assert!(attempt(DbError::Overloaded).is_retriable());
        assert!(attempt(DbError::IsBootstrapping).is_retriable());
        assert!(!attempt(DbError::Invalid).is_retriable());
        assert!(!attempt(DbError::SyntaxError).is_retriable());
        assert!(attempt(DbError::Invalid).is_invalid_request());
        let timeout = ScyllaSinkError::Execute {
            what: "a batch".into(),
            source: Box::new(ExecutionError::RequestTimeout(std::time::Duration::from_secs(1))),
        };
        assert!(timeout.is_retriable());
        assert!(!ScyllaSinkError::Mapping { table: "t".into(), reason: "r".into() }.is_retriable());
    }

    #[test]
    fn missing_tables_and_permissions_block_and_bad_values_are_about_the_change() {
        let attempt = |db: DbError, message: &str| ScyllaSinkError::Execute {
            what: "a batch".into(),
            source: Box::new(ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, message.into()))),
        };
        assert_eq!(attempt(DbError::Unauthorized, "no MODIFY permission").kind(), ErrorKind::StoreFailing);
        assert_eq!(attempt(DbError::AuthenticationError, "bad credentials").kind(), ErrorKind::StoreFailing);
        assert_eq!(attempt(DbError::Invalid, "unconfigured table reservations").kind(), ErrorKind::StoreFailing);
        assert_eq!(attempt(DbError::Invalid, "Keyspace rentals does not exist").kind(), ErrorKind::StoreFailing);
        assert_eq!(
            attempt(DbError::Invalid, "Key length of 70000 is longer than maximum").kind(),
            ErrorKind::Permanent
        );
        assert_eq!(attempt(DbError::Overloaded, "").kind(), ErrorKind::Transient);
        let value = ScyllaSinkError::Mapping { table: "t".into(), reason: "r".into() };
        assert_eq!(value.kind(), ErrorKind::Permanent);
    }
}
