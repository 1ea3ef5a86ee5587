//! Errors of the replication connection.

use std::io;

/// A field-by-field copy of a PostgreSQL `ErrorResponse`, kept so callers can
/// match on the SQLSTATE and show the server's hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// Severity as sent (`ERROR`, `FATAL`, `PANIC`).
    pub severity: String,
    /// Five-character SQLSTATE, e.g. `42710` for "already exists".
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Optional detail line.
    pub detail: Option<String>,
    /// Optional hint line.
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " (detail: {detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong on a replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The connection string could not be parsed or asks for something unsupported.
    #[error("invalid connection settings: {0}")]
    Config(String),
    /// Socket-level failure (connect, read, write).
    #[error("i/o error talking to {endpoint}")]
    Io {
        /// `host:port` or socket path.
        endpoint: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// TLS could not be set up as `sslmode` demands: the server refused it,
    /// or its certificate did not pass the checks. Not transient: retrying
    /// meets the same certificate.
    #[error("tls with {endpoint} failed: {reason}")]
    Tls {
        /// `host:port`.
        endpoint: String,
        /// What went wrong, naming the sslmode and file involved, with what to do.
        reason: String,
    },
    /// The server closed the connection.
    #[error("server closed the connection")]
    ConnectionClosed,
    /// The server sent something the protocol does not allow at this point.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Authentication failed or needs a method this client does not speak.
    #[error("authentication failed for user {user}: {reason}")]
    Auth {
        /// Role name used.
        user: String,
        /// What went wrong, with what to do.
        reason: String,
    },
    /// The server answered with an `ErrorResponse`.
    #[error("server error: {0}")]
    Server(ServerError),
}

impl ReplicationError {
    /// The SQLSTATE if this is a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    /// Whether reconnecting later may succeed (network trouble, server restart),
    /// as opposed to a configuration or permission problem.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Io { .. } | ReplicationError::ConnectionClosed => true,
            // 57P01 admin_shutdown / pg_terminate_backend, 57P02 crash_shutdown,
            // 57P03 cannot_connect_now, 55006 object in use (slot busy), 53300 too many connections.
            ReplicationError::Server(e) => {
                matches!(e.code.as_str(), "57P01" | "57P02" | "57P03" | "55006" | "53300")
            }
            _ => false,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = ReplicationError> = std::result::Result<T, E>;
