//! pgfanout's source side: everything between PostgreSQL and the pipeline.
//!
//! It owns the source's lifecycle: the `[source]` settings ([`SourceConfig`]),
//! the checks that PostgreSQL is ready and creating the publication
//! ([`setup`]), the checks that the slot and server are the ones the sinks'
//! checkpoints belong to ([`identity`]), catalog reads ([`catalog`]), the
//! heartbeat and retained-WAL monitor ([`monitor`]) and the replication loop
//! that connects, reconnects and pumps decoded messages into a
//! [`pgfanout_core::Pipeline`] ([`stream`]).
//!
//! It is not the sinks: it knows them only through
//! [`pgfanout_core::Sink`] (to load and store the source record) and through
//! [`Routing`], plain data saying which sink routes which table. It does not
//! know sink kinds, the configuration file's layout, or the HTTP endpoint.
//!
//! Invariants:
//! - Nothing is created on the primary (publication, slot) before every
//!   sink's holding is loaded: the caller loads them first
//!   ([`stream::load_holding_with_retry`]), then prepares the source.
//! - A position is confirmed to PostgreSQL only once every sink has recorded
//!   it as confirmable ([`stream::Marker`]), so the slot never passes what a
//!   sink can resume from, and a slot that did is refused ([`identity`]).
//! - Every refusal and problem is one line ending with its fix.

pub mod catalog;
pub mod config;
pub mod identity;
pub mod monitor;
pub mod setup;
pub mod stream;

use std::path::PathBuf;

use pg_replication::ReplicationError;
use pgfanout_core::{PipelineError, SinkError, SourceRecordError, TableName};

pub use config::SourceConfig;
pub use setup::{prepare_source, qualified, slot_health, source_problems, SlotHealth};
pub use stream::{
    connect_with_retry, load_holding_with_retry, reconnect_backoff, settle_slot, start_options,
    store_record_with_retry, stream_until_shutdown, Marker, Stopped, StreamContext,
};

/// What stops the source side, with the context an operator needs.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `source.url` does not parse.
    #[error("source.url")]
    Url(#[source] Box<ReplicationError>),
    /// `source.password_file` cannot be read.
    #[error("cannot read source.password_file {}", path.display())]
    PasswordFile {
        /// The file named in the config.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// Connecting failed for a reason retrying does not fix.
    #[error("cannot connect to PostgreSQL at {endpoint}")]
    Connect {
        /// `host:port` or socket path.
        endpoint: String,
        /// The server's or the network's answer.
        #[source]
        source: Box<ReplicationError>,
    },
    /// Shutdown was asked for while waiting on PostgreSQL or a sink.
    #[error("stopped while {0}")]
    Stopped(String),
    /// Prerequisites are missing, one line each with its fix.
    #[error("PostgreSQL is not ready for replication:\n{}", .0.join("\n"))]
    NotReady(Vec<String>),
    /// The slot or server is not the one the sinks' checkpoints belong to.
    #[error("refusing to resume replication: {0}")]
    Refused(String),
    /// A statement or replication command failed.
    #[error("{context}")]
    Replication {
        /// What was being done (the slot, the publication, the statement).
        context: String,
        /// The server's or the connection's error.
        #[source]
        source: Box<ReplicationError>,
    },
    /// A sink could not load or store the source record or its checkpoint.
    #[error("{context}")]
    Sink {
        /// What was being done.
        context: String,
        /// The sink's error (it names the sink).
        #[source]
        source: Box<SinkError>,
    },
    /// A sink could not be read at start (its error names it).
    #[error(transparent)]
    SinkUnreachable(Box<SinkError>),
    /// The source record a sink holds does not parse.
    #[error("sink {sink}: the source record stored beside its checkpoint")]
    Record {
        /// The sink holding it.
        sink: String,
        /// What is wrong with it.
        #[source]
        source: SourceRecordError,
    },
    /// A pgoutput message does not decode.
    #[error("cannot decode a pgoutput message")]
    Decode(#[source] Box<pgoutput::DecodeError>),
    /// The pipeline refused a message.
    #[error(transparent)]
    Pipeline(Box<PipelineError>),
}

impl From<PipelineError> for SourceError {
    fn from(err: PipelineError) -> SourceError {
        SourceError::Pipeline(Box::new(err))
    }
}

impl SourceError {
    /// A replication error with what was being done.
    pub(crate) fn replication(context: impl Into<String>) -> impl FnOnce(ReplicationError) -> SourceError {
        let context = context.into();
        move |source| SourceError::Replication { context, source: Box::new(source) }
    }
}

/// One sink's use of one source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The sink's name.
    pub sink: String,
    /// The source table.
    pub table: TableName,
    /// The sink needs the whole old row of updates and deletes (`REPLICA
    /// IDENTITY FULL`), e.g. for running aggregates.
    pub needs_full_identity: bool,
}

/// Which sink routes which table: all the source side knows of the sinks'
/// configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    routes: Vec<Route>,
}

impl Routing {
    /// The routes in configuration order.
    pub fn new(routes: Vec<Route>) -> Routing {
        Routing { routes }
    }

    /// Every routed table, sorted, once each.
    pub fn tables(&self) -> Vec<TableName> {
        let mut tables: Vec<TableName> = self.routes.iter().map(|route| route.table.clone()).collect();
        tables.sort();
        tables.dedup();
        tables
    }

    /// The sinks routing `table`, in configuration order, once each.
    pub fn sinks_routing(&self, table: &TableName) -> Vec<&str> {
        self.sinks_where(|route| route.table == *table)
    }

    /// The sinks needing `table`'s whole old row, in configuration order, once each.
    pub fn sinks_needing_full_identity(&self, table: &TableName) -> Vec<&str> {
        self.sinks_where(|route| route.table == *table && route.needs_full_identity)
    }

    fn sinks_where(&self, wanted: impl Fn(&Route) -> bool) -> Vec<&str> {
        let mut sinks: Vec<&str> = Vec::new();
        for route in self.routes.iter().filter(|route| wanted(route)) {
            if !sinks.contains(&route.sink.as_str()) {
                sinks.push(&route.sink);
            }
        }
        sinks
    }
}
