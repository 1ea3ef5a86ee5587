//! pgfanout's core: the change model, transaction assembly, routing, the sink
//! contract, sink workers and the checkpoint coordinator.
//!
//! What it is: everything between decoded pgoutput messages and a store
//! driver. What it is not: it reads no socket (the `pg-replication` crate
//! does) and speaks no store protocol (each `sink-*` crate does).
//!
//! Invariants:
//! - a transaction reaches a sink only whole and in commit order;
//! - the flush LSN ([`Pipeline::flush_lsn`]) never passes a transaction that a
//!   sink it was routed to has not acknowledged;
//! - a sink acknowledges only after [`Sink::apply`] returned `Ok`.

#![warn(missing_docs)]

pub mod assembler;
pub mod backoff;
pub mod checkpoint;
pub mod dead_letter;
pub mod delivery;
pub mod lanes;
pub mod mapping;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod readback;
pub mod sink;
pub mod status;
pub mod streamed;
pub mod tap;
pub mod tls;
pub mod worker;

pub use assembler::{AssembleError, Assembled, TransactionAssembler};
pub use backoff::Backoff;
pub use checkpoint::{CheckpointCoordinator, SourceRecord, SourceRecordError};
pub use dead_letter::{dead_letter_record, row_json};
pub use delivery::{DeadLetterConfig, DeliveryConfig, OnErrorPolicy};
pub use mapping::{MappingConfig, MappingError, TableMapping};
pub use metrics::Metrics;
pub use model::{Change, ChangeOp, ColumnSchema, ColumnValue, Row, TableName, TableSchema, Transaction};
pub use pgoutput::Lsn;
pub use pipeline::{Pipeline, PipelineError};
pub use readback::{KeyPage, ReadBack, RowDigest, StoredColumns};
pub use sink::{
    describe_apply, ChangeRef, DeadLetterQueue, ErrorKind, ReplayHorizon, Sink, SinkError, SortableVersion, Version,
};
pub use status::SinkStatus;
pub use streamed::{SpillError, SpillSettings, StreamedTransactions};
pub use tap::{Injection, StreamTap};
pub use tls::{TlsConfig, TlsFiles};
pub use worker::{error_chain, OnError, PauseHandle, Paused, SinkWorker, WorkerQueue, WorkerSettings, WorkerStopped};
