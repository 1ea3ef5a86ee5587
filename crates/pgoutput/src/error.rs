//! The decoder's error type.
//!
//! Every error is permanent for the stream it came from: pgoutput has no inner framing, so once
//! one message is misread nothing after it can be trusted. Callers should stop, report and
//! reconnect from the last acknowledged LSN rather than skip the message.

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
    /// The first byte is not a pgoutput message type this crate knows.
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
    #[error("invalid replica identity {byte:#04x}")]
    InvalidReplicaIdentity {
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
    /// A Stream Start arrived inside a Stream Start … Stream Stop block.
    #[error("stream start inside a stream block")]
    StreamStartInsideBlock,
    /// A Stream Stop arrived outside a Stream Start … Stream Stop block.
    #[error("stream stop outside a stream block")]
    StreamStopOutsideBlock,
}
