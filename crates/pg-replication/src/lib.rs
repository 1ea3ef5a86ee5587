//! PostgreSQL logical replication connection, built on `postgres-protocol`.
//!
//! What it is: the client side of the streaming replication protocol in
//! `replication=database` mode — connect (TCP or unix socket), authenticate
//! (trust, cleartext, md5, SCRAM-SHA-256), run replication commands
//! (`IDENTIFY_SYSTEM`, slot creation, plain SQL), then `START_REPLICATION`
//! and yield the raw [`ReplicationEvent`]s of the CopyBoth stream while
//! answering keepalives and sending standby status updates.
//!
//! What it is not: it does not decode pgoutput payloads (that is the
//! `pgoutput` crate) and it knows nothing about sinks or checkpoints; it only
//! reports the LSN its caller passes to [`FeedbackHandle::confirm`].
//!
//! Invariants: the flush position sent to the server never decreases and
//! never exceeds what the caller confirmed; status updates keep flowing even
//! when the caller stops reading (see [`stream`] for which task owns what).

#![warn(missing_docs)]

pub mod connection;
pub mod error;
pub mod stream;
mod wire;

pub use connection::{
    validate_slot_name, ConnectOptions, CreatedSlot, QueryResult, ReplicationConnection, SlotState, StartOptions,
    Streaming, SystemIdentity,
};
pub use error::{ReplicationError, Result, ServerError};
pub use stream::{FeedbackHandle, ReplicationEvent, ReplicationStream, StreamSettings};
