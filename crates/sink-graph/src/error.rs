//! Errors of the graph sink, classified for the retry policy: a store that
//! cannot be reached (or times out) is transient, a statement the store
//! rejects and a row that cannot be mapped are permanent.

use pgfanout_core::{ErrorKind, SinkError};

/// What can go wrong writing to the graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphSinkError {
    /// The server could not be reached or dropped the connection.
    #[error("cannot reach {endpoint}")]
    Unreachable {
        /// Host and port from the URL (no credentials).
        endpoint: String,
        /// Driver error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store refused a statement (syntax, type, constraint).
    #[error("the store rejected {what}: {message}")]
    Rejected {
        /// Which statement (its first words) or operation.
        what: String,
        /// The store's message.
        message: String,
    },
    /// No answer within the response timeout.
    #[error("the store did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A row cannot be mapped to the graph.
    #[error("table {table}: {reason}")]
    Mapping {
        /// Source table.
        table: String,
        /// What is wrong and what to change.
        reason: String,
    },
    /// A column's value cannot be converted to its type.
    #[error("table {table}: column {column}")]
    Value {
        /// Source table.
        table: String,
        /// Column (sink name).
        column: String,
        /// Conversion error.
        #[source]
        source: pgoutput::ValueError,
    },
    /// The `[sink.tls]` files cannot be used.
    #[error("sink tls settings: {0}")]
    Tls(String),
    /// The stored checkpoint is not an LSN.
    #[error("checkpoint node of sink {sink} holds {value:?}, not an LSN; delete the node to replay from the slot's position")]
    BadCheckpoint {
        /// Sink name.
        sink: String,
        /// What it holds.
        value: String,
    },
}

impl GraphSinkError {
    /// Whether retrying the same batch later can succeed.
    pub fn is_retriable(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// The error's class for the retry and dead-letter policy: a store that
    /// cannot be reached is transient; one that refuses every write (out of
    /// memory, read-only, no permission, failed authentication, a missing
    /// database) is failing as a whole; only a statement refused for its
    /// values, and a row that cannot be mapped, are about the change.
    pub fn kind(&self) -> ErrorKind {
        match self {
            GraphSinkError::Unreachable { .. } | GraphSinkError::Timeout(_) => ErrorKind::Transient,
            GraphSinkError::Rejected { what, message } => {
                let text = format!("{what}: {message}");
                if STORE_FAILURES.iter().any(|marker| text.contains(marker)) {
                    ErrorKind::StoreFailing
                } else {
                    ErrorKind::Permanent
                }
            }
            GraphSinkError::Mapping { .. } | GraphSinkError::Value { .. } => ErrorKind::Permanent,
            GraphSinkError::BadCheckpoint { .. } | GraphSinkError::Tls(_) => ErrorKind::StoreFailing,
        }
    }

    /// Converts to the pipeline's classified error; `doing` says what the
    /// sink was doing (`"applying 12 changes, commit LSNs …"`).
    pub fn into_sink_error(self, sink: &str, doing: String) -> SinkError {
        SinkError { sink: sink.to_owned(), kind: self.kind(), message: doing, source: Some(Box::new(self)) }
    }
}

/// Markers of a refusal that is about the store, not the statement's values:
/// Neo4j's security, database and read-only errors (their codes lead the
/// message), FalkorDB's (Redis') error codes for a full, read-only,
/// misconfigured or unauthorised server, and bad connection settings.
const STORE_FAILURES: [&str; 14] = [
    "Neo.ClientError.Security.",
    "Neo.DatabaseError.",
    "Neo.ClientError.Database.",
    "Neo.ClientError.General.ForbiddenOnReadOnlyDatabase",
    "Neo.ClientError.General.ForbiddenReadOnlyDatabase",
    "OOM ",
    "READONLY ",
    "MISCONF ",
    "NOPERM ",
    "NOAUTH ",
    "WRONGPASS ",
    "authentication",
    "the bolt settings",
    "Authentication",
];

/// `host:port/…` from a URL, without credentials, for messages.
pub fn endpoint_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    rest.rsplit_once('@').map(|(_, host)| host).unwrap_or(rest).to_owned()
}

/// The first words of a statement, to name it in messages (never its parameters).
pub fn statement_head(cypher: &str) -> String {
    let head: String = cypher.chars().take(80).collect();
    if head.len() < cypher.len() {
        format!("{head}…")
    } else {
        head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_hide_credentials() {
        assert_eq!(endpoint_of("bolt://neo4j:secret@graph:7687"), "graph:7687");
        assert_eq!(endpoint_of("redis://127.0.0.1:6379"), "127.0.0.1:6379");
    }

    #[test]
    fn only_reachability_is_retried() {
        let timeout = GraphSinkError::Timeout(std::time::Duration::from_secs(1));
        assert_eq!(timeout.into_sink_error("g", "x".into()).kind, ErrorKind::Transient);
        let rejected = GraphSinkError::Rejected { what: "MERGE".into(), message: "Type mismatch".into() };
        assert_eq!(rejected.into_sink_error("g", "x".into()).kind, ErrorKind::Permanent);
    }

    #[test]
    fn a_store_refusing_every_write_is_never_about_the_change() {
        let rejected = |message: &str| GraphSinkError::Rejected { what: "UNWIND".into(), message: message.into() };
        for message in [
            "Neo.ClientError.Security.Forbidden: Write operations are not allowed",
            "Neo.ClientError.Security.Unauthorized: The client is unauthorized",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "READONLY You can't write against a read only replica.",
            "NOPERM User reader has no permissions to run the 'GRAPH.QUERY' command",
        ] {
            assert_eq!(rejected(message).kind(), ErrorKind::StoreFailing, "{message}");
        }
        assert_eq!(
            rejected("Neo.ClientError.Schema.ConstraintValidationFailed: already exists").kind(),
            ErrorKind::Permanent
        );
    }
}
