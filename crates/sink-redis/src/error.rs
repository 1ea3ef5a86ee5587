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
    /// The `[sink.tls]` files cannot be used.
    #[error("sink tls settings: {0}")]
    Tls(String),
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

/// Error codes of a server that is busy or between roles: the next attempt
/// may well succeed.
const TRANSIENT_CODES: [&str; 5] = ["LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN"];

/// Error codes about one key or value, not the server: the only errors a
/// change may be dead-lettered for. Any other code (OOM, READONLY, MISCONF,
/// NOPERM, NOAUTH, WRONGPASS, an unknown one) is about the server, and
/// blocks the sink whatever `on_error` says.
const CHANGE_CODES: [&str; 1] = ["WRONGTYPE"];

impl RedisSinkError {
    /// Whether retrying the same batch later can succeed without anyone
    /// acting (the connection is then started afresh).
    pub fn is_retriable(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// The error's class for the retry and dead-letter policy.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RedisSinkError::Connect { .. } | RedisSinkError::Timeout(_) => ErrorKind::Transient,
            RedisSinkError::Command { source, .. } => {
                if source.is_io_error()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || source.is_timeout()
                    || source.code().is_some_and(|code| TRANSIENT_CODES.contains(&code))
                {
                    ErrorKind::Transient
                } else if source.code().is_some_and(|code| CHANGE_CODES.contains(&code)) {
                    ErrorKind::Permanent
                } else {
                    ErrorKind::StoreFailing
                }
            }
            // A key column without a value: about this row alone.
            RedisSinkError::Mapping { .. } => ErrorKind::Permanent,
            RedisSinkError::BadCheckpoint { .. } | RedisSinkError::Tls(_) => ErrorKind::StoreFailing,
        }
    }

    /// Converts to the pipeline's classified error; `doing` says what the
    /// sink was doing (`"applying batch ending at 0/16B3748"`).
    pub fn into_sink_error(self, sink: &str, doing: String) -> SinkError {
        SinkError { sink: sink.to_owned(), kind: self.kind(), message: doing, source: Some(Box::new(self)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command_error(code: &str) -> RedisSinkError {
        let text = format!("-{code} some detail\r\n");
        let value = redis::parse_redis_value(text.as_bytes()).expect("an error reply parses");
        let source = match value {
            redis::Value::ServerError(error) => redis::RedisError::from(error),
            other => panic!("not an error reply: {other:?}"),
        };
        RedisSinkError::Command { what: "a batch".into(), source }
    }

    #[test]
    fn only_errors_about_a_key_are_about_the_change() {
        assert_eq!(command_error("WRONGTYPE").kind(), ErrorKind::Permanent);
        for code in ["OOM", "READONLY", "MISCONF", "NOPERM", "NOAUTH", "WRONGPASS", "ERR"] {
            assert_eq!(command_error(code).kind(), ErrorKind::StoreFailing, "{code}");
        }
        for code in ["LOADING", "BUSY", "MASTERDOWN"] {
            assert_eq!(command_error(code).kind(), ErrorKind::Transient, "{code}");
            assert!(command_error(code).is_retriable());
        }
    }
}
