//! Wire-layout facts shared by the decoder and the encoder: marker and kind bytes, flag bits,
//! minimum encoded sizes, and the rule that decides the length of Stream Abort.
//!
//! Keeping them in one place means the two directions cannot drift apart silently; the
//! encoder's byte-level tests (written from the protocol documentation, not from these
//! constants) are what checks that the shared values are right.

use crate::ReplicaIdentity;

/// Smallest encoding of a Relation column: flags, empty name's NUL, type OID, typmod.
pub(crate) const MIN_RELATION_COLUMN_LEN: usize = 1 + 1 + 4 + 4;
/// Smallest encoding of a TupleData column: the kind byte alone (`n`/`u`).
pub(crate) const MIN_TUPLE_COLUMN_LEN: usize = 1;
/// Size of one relation OID in a Truncate message.
pub(crate) const TRUNCATE_OID_LEN: usize = 4;

/// Truncate option bit for `CASCADE`.
pub(crate) const TRUNCATE_CASCADE: u8 = 1;
/// Truncate option bit for `RESTART IDENTITY`.
pub(crate) const TRUNCATE_RESTART_IDENTITY: u8 = 2;
/// Relation column flag: part of the replica identity.
pub(crate) const COLUMN_IS_KEY: u8 = 1;
/// Message flag: transactional.
pub(crate) const MESSAGE_TRANSACTIONAL: u8 = 1;
/// Stream Start value meaning "first block of this transaction"; PostgreSQL's reader treats
/// every other value as "not first".
pub(crate) const STREAM_FIRST_SEGMENT: u8 = 1;

/// What PostgreSQL writes instead of `pg_catalog` in Relation and Type namespaces.
pub(crate) const PG_CATALOG: &str = "pg_catalog";

/// TupleData column kinds.
pub(crate) mod tuple_kind {
    /// SQL NULL.
    pub(crate) const NULL: u8 = b'n';
    /// Unchanged TOASTed value, not sent.
    pub(crate) const UNCHANGED_TOAST: u8 = b'u';
    /// Text-format value with an `Int32` length.
    pub(crate) const TEXT: u8 = b't';
    /// Binary-format value with an `Int32` length.
    pub(crate) const BINARY: u8 = b'b';
}

/// Bytes announcing the tuples inside Insert, Update and Delete.
pub(crate) mod tuple_marker {
    /// The new row follows.
    pub(crate) const NEW: u8 = b'N';
    /// The old row's replica identity columns follow.
    pub(crate) const OLD_KEY: u8 = b'K';
    /// The whole old row follows.
    pub(crate) const OLD_ROW: u8 = b'O';
}

/// First protocol version whose Stream Abort can carry abort LSN and time.
const ABORT_INFO_MIN_VERSION: u32 = 4;

/// Whether Stream Abort carries abort LSN and time: only protocol v4+ with
/// `streaming 'parallel'`, which the bytes themselves cannot tell.
pub(crate) fn stream_abort_has_abort_info(protocol_version: u32, parallel_streaming: bool) -> bool {
    protocol_version >= ABORT_INFO_MIN_VERSION && parallel_streaming
}

/// `pg_class.relreplident` byte of a replica identity.
pub(crate) fn replica_identity_byte(identity: ReplicaIdentity) -> u8 {
    match identity {
        ReplicaIdentity::Default => b'd',
        ReplicaIdentity::Nothing => b'n',
        ReplicaIdentity::Full => b'f',
        ReplicaIdentity::Index => b'i',
    }
}

/// The replica identity a `relreplident` byte stands for, if any.
pub(crate) fn replica_identity_from_byte(byte: u8) -> Option<ReplicaIdentity> {
    match byte {
        b'd' => Some(ReplicaIdentity::Default),
        b'n' => Some(ReplicaIdentity::Nothing),
        b'f' => Some(ReplicaIdentity::Full),
        b'i' => Some(ReplicaIdentity::Index),
        _ => None,
    }
}
