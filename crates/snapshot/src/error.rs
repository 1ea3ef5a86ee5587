//! Errors of the snapshot: typed, with the table (and chunk) they concern.

use pgfanout_core::TableName;

/// Everything that can stop a snapshot of a table.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The SQL connection failed or the server refused a statement.
    #[error("table {table}: {doing}")]
    Source {
        /// The table being read.
        table: TableName,
        /// What the snapshot was doing (`reading the chunk after key (…)`).
        doing: String,
        /// The connection's error.
        #[source]
        source: pg_replication::ReplicationError,
    },
    /// The table is not in the database (or not visible to the role).
    #[error("table {table} does not exist or the role cannot see it; check the table names in the sink's config")]
    NoSuchTable {
        /// The table asked for.
        table: TableName,
    },
    /// The table has no key to order and resume chunked reads by.
    #[error(
        "table {table} has neither a primary key nor a replica identity index, so it cannot be copied in \
         key order; add a primary key (ALTER TABLE {table} ADD PRIMARY KEY (…))"
    )]
    NoKey {
        /// The table.
        table: TableName,
    },
    /// The table was altered (a column added, …) while it was copied: the
    /// chunk was read with the old column list and is read again.
    #[error("table {table} was altered while it was copied; reading it again with its new columns")]
    Altered {
        /// The table.
        table: TableName,
    },
    /// The thread that reads a table's chunks ahead could not be started.
    #[error("table {table}: cannot start the thread that reads chunks ahead")]
    Thread {
        /// The table.
        table: TableName,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The server answered with something the reader cannot use.
    #[error("table {table}: unexpected answer from the server: {what}")]
    Unexpected {
        /// The table.
        table: TableName,
        /// What was wrong.
        what: String,
    },
}

impl SnapshotError {
    /// Whether retrying (after reconnecting) can help: connection failures
    /// and server errors such as a serialization failure or a cancelled
    /// statement, and a table altered meanwhile, but not a missing table or key.
    pub fn is_transient(&self) -> bool {
        match self {
            SnapshotError::Source { source, .. } => source.is_transient(),
            SnapshotError::Altered { .. } | SnapshotError::Thread { .. } => true,
            SnapshotError::NoSuchTable { .. } | SnapshotError::NoKey { .. } | SnapshotError::Unexpected { .. } => false,
        }
    }
}
