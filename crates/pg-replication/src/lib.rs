//! PostgreSQL logical replication connection, built on `postgres-protocol`.
//!
//! What it is: the client side of the streaming replication protocol in
//! `replication=database` mode — connect (TCP, TLS over TCP, or unix
//! socket), authenticate (trust, cleartext, md5, SCRAM-SHA-256 and
//! SCRAM-SHA-256-PLUS, client certificates), run replication commands
//! (`IDENTIFY_SYSTEM`, slot creation with [`SlotOptions`], plain SQL), then
//! `START_REPLICATION` and yield the raw [`ReplicationEvent`]s of the CopyBoth
//! stream while answering keepalives and sending standby status updates.
//!
//! TLS follows libpq's connection settings, read from the URL:
//! `sslmode=disable|prefer|require|verify-ca|verify-full` (default `prefer`:
//! TLS when the server offers it), `sslrootcert` (PEM file of trusted CAs, or
//! `system`), `sslcert`/`sslkey` and `channel_binding=disable|prefer|require`.
//! TLS is done by rustls with the `ring` provider; unix sockets are always
//! plain, as with libpq. Over TLS, SCRAM logins are bound to the session
//! (`tls-server-end-point`) whenever the server offers it. [`tls`] has the
//! details, including where this crate departs from libpq.
//!
//! What it is not: it does not decode pgoutput payloads (that is the
//! `pgoutput` crate) and it knows nothing about sinks or checkpoints; it only
//! reports the LSN its caller passes to [`FeedbackHandle::confirm`].
//!
//! Invariants: the flush position sent to the server never decreases and
//! never exceeds what the caller confirmed; status updates keep flowing even
//! when the caller stops reading (see [`stream`] for which task owns what);
//! a certificate check demanded by `sslmode` is never skipped — only
//! `prefer`, which promises nothing, falls back to plain TCP.

#![warn(missing_docs)]

mod auth;
pub mod connection;
mod conninfo;
pub mod error;
pub mod slot;
pub mod stream;
pub mod tls;
mod wire;

pub use connection::{
    validate_slot_name, ConnectOptions, CreatedSlot, QueryResult, ReplicationConnection, SlotState, StartOptions,
    StatementOutput, Streaming, SystemIdentity,
};
pub use error::{ReplicationError, Result, ServerError};
pub use slot::{SlotOptions, SnapshotAction};
pub use stream::{FeedbackHandle, ReplicationEvent, ReplicationStream, StreamSettings, DEFAULT_BUSY_READ_PAUSE};
pub use tls::SslMode;
