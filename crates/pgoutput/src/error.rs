//! The crate's error types: [`DecodeError`] for bytes that are not a valid message,
//! [`EncodeError`] for messages that have no wire form in the encoder's state.
//!
//! Every decode error is permanent for the stream it came from: pgoutput has no inner framing,
//! so once one message is misread nothing after it can be trusted. Callers should stop, report
//! and reconnect from the last acknowledged LSN rather than skip the message.

/// Why a pgoutput payload could not be decoded.
///
/// Offsets count from the first byte of the pgoutput payload (the message tag is offset 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload ended before a field was complete.
    #[error("unexpected end of message at offset {offset}: field needs {needed} bytes")]
    UnexpectedEof {
        /// Where the incomplete field starts.
        offset: usize,
        /// How many bytes the field needs from `offset` (for an unterminated string: one more
        /// than were left).
        needed: usize,
    },
    /// The first byte (offset 0) is not a pgoutput message type this crate knows.
    #[error("unknown message tag {tag:#04x}")]
    UnknownMessageTag {
        /// The tag byte.
        tag: u8,
    },
    /// A TupleData column kind other than `n`, `u`, `t` or `b`.
    #[error("unknown tuple column kind {kind:#04x} at offset {offset}")]
    UnknownTupleKind {
        /// Where the kind byte is.
        offset: usize,
        /// The kind byte.
        kind: u8,
    },
    /// A NUL-terminated string (name, prefix, gid) is not valid UTF-8; the replication
    /// connection is expected to use `client_encoding=UTF8`.
    #[error("string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Where the string starts.
        offset: usize,
    },
    /// The message was fully decoded but bytes were left over.
    #[error("trailing bytes after message end at offset {offset}: {remaining} left")]
    TrailingBytes {
        /// Where the message should have ended.
        offset: usize,
        /// How many bytes were left.
        remaining: usize,
    },
    /// A Relation message's replica identity is not `d`, `n`, `f` or `i`.
    #[error("invalid replica identity {byte:#04x} at offset {offset}")]
    InvalidReplicaIdentity {
        /// Where the identity byte is.
        offset: usize,
        /// The identity byte.
        byte: u8,
    },
    /// A marker byte (`N`, `K`, `O`) was not one of those allowed at its position.
    #[error("unexpected byte {found:#04x} at offset {offset}, expected {expected}")]
    UnexpectedByte {
        /// Where the byte is.
        offset: usize,
        /// What was allowed there, for the message (for example `'K', 'O' or 'N'`).
        expected: &'static str,
        /// The byte found.
        found: u8,
    },
    /// An `Int32` length or count field was negative.
    #[error("negative length {length} at offset {offset}")]
    NegativeLength {
        /// Where the length field starts.
        offset: usize,
        /// The value read.
        length: i32,
    },
    /// A Stream Start (offset 0) arrived inside a Stream Start … Stream Stop block.
    #[error("stream start inside a stream block")]
    StreamStartInsideBlock,
    /// A Stream Stop (offset 0) arrived outside a Stream Start … Stream Stop block.
    #[error("stream stop outside a stream block")]
    StreamStopOutsideBlock,
}

/// Why a message cannot be encoded: it has no wire form that [`Decoder`](crate::Decoder), in
/// the same state as the [`Encoder`](crate::Encoder), would decode back to the same message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Inside a stream block, Relation, Type, Insert, Update, Delete, Truncate and Message must
    /// carry the subtransaction xid.
    #[error("message {tag:#04x} inside a stream block has no subtransaction xid")]
    MissingStreamXid {
        /// The message's tag.
        tag: u8,
    },
    /// Outside a stream block those messages have no xid field, so one cannot be written.
    #[error("message {tag:#04x} outside a stream block carries a subtransaction xid")]
    UnexpectedStreamXid {
        /// The message's tag.
        tag: u8,
    },
    /// A Stream Start while the previous block is still open.
    #[error("stream start inside a stream block")]
    StreamStartInsideBlock,
    /// A Stream Stop with no block open.
    #[error("stream stop outside a stream block")]
    StreamStopOutsideBlock,
    /// Stream Abort's abort LSN and time must both be present with protocol v4+ and parallel
    /// streaming, and both absent otherwise.
    #[error("stream abort needs abort lsn and time {}", if *.required { "both present" } else { "both absent" })]
    AbortInfoMismatch {
        /// Whether the encoder's protocol version and streaming mode require them.
        required: bool,
    },
    /// Strings are NUL-terminated on the wire, so they cannot contain NUL.
    #[error("{field} contains a NUL byte")]
    NulInString {
        /// Which string, for example `"relation name"`.
        field: &'static str,
    },
    /// An empty namespace has no wire form: PostgreSQL writes `pg_catalog` as an empty string,
    /// so the decoder reads an empty one back as `pg_catalog`.
    #[error("empty namespace")]
    EmptyNamespace,
    /// A count or length does not fit its wire field (`Int16` column counts, `Int32` lengths).
    #[error("{field} too long: {len} exceeds the wire maximum of {max}")]
    TooLong {
        /// Which count or length, for example `"tuple columns"`.
        field: &'static str,
        /// The length asked for.
        len: usize,
        /// The largest the field can hold.
        max: usize,
    },
    /// The caller's buffer cannot take the encoded message.
    #[error("output buffer full: message needs {needed} bytes, {available} available")]
    BufferFull {
        /// The encoded message's length.
        needed: usize,
        /// What the buffer could still take.
        available: usize,
    },
}
