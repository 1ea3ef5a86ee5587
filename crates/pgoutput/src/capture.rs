//! Reading captures written by `pg_recvlogical --file`: each pgoutput message's bytes followed
//! by one `\n`, with no length prefix.
//!
//! Because the messages are not framed, a capture can only be split by decoding it: the
//! [`CaptureReader`] decodes a message from the front with [`Decoder::decode_prefix`], checks
//! that a `\n` follows, and moves on. Invariants: every byte of a capture is either part of a
//! message or one of those separators, so a capture read to its end without error was
//! consumed entirely; after the first error the reader yields nothing more (the rest cannot be
//! trusted, as with a live stream).

use bytes::Bytes;

use crate::{DecodeError, Decoder, PgOutputMessage};

/// The byte `pg_recvlogical` writes after every message.
pub const SEPARATOR: u8 = b'\n';

/// One message of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedMessage {
    /// Position in the capture, counting from 0.
    pub index: usize,
    /// Byte offset of the message's first byte in the capture.
    pub offset: usize,
    /// The message's bytes (without the separator); a zero-copy slice of the capture.
    pub payload: Bytes,
    /// The decoded message.
    pub message: PgOutputMessage,
}

/// Why a capture could not be read to its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    /// A message did not decode. `source`'s offsets count from the message's first byte.
    #[error("message {index} at byte {offset} of the capture does not decode")]
    Decode {
        /// Index of the message.
        index: usize,
        /// Byte offset of the message in the capture.
        offset: usize,
        /// The decoder's error.
        #[source]
        source: DecodeError,
    },
    /// A message decoded, but the byte after it is not the `\n` separator (or is missing):
    /// the capture was recorded with other pgoutput options, or is damaged.
    #[error("message {index} at byte {offset} of the capture is not followed by a newline at byte {separator_offset} (found {found})")]
    MissingSeparator {
        /// Index of the message.
        index: usize,
        /// Byte offset of the message in the capture.
        offset: usize,
        /// Where the separator should be.
        separator_offset: usize,
        /// What is there instead, for the message.
        found: FoundByte,
    },
}

/// The byte found where a separator was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundByte {
    /// The capture ended.
    EndOfCapture,
    /// Another byte.
    Byte(u8),
}

impl std::fmt::Display for FoundByte {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FoundByte::EndOfCapture => f.write_str("the end of the capture"),
            FoundByte::Byte(byte) => write!(f, "byte {byte:#04x}"),
        }
    }
}

/// Iterates over the messages of a capture, in order.
#[derive(Debug, Clone)]
pub struct CaptureReader {
    decoder: Decoder,
    capture: Bytes,
    offset: usize,
    index: usize,
    failed: bool,
}

impl CaptureReader {
    /// Reads `capture` with `decoder`, which must be set up like the stream that was recorded
    /// (protocol version, parallel streaming).
    pub fn new(decoder: Decoder, capture: Bytes) -> Self {
        CaptureReader { decoder, capture, offset: 0, index: 0, failed: false }
    }

    /// How many bytes have been consumed (messages and separators).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The decoder, with the stream state reached so far.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    fn read_next(&mut self) -> Result<CapturedMessage, CaptureError> {
        let (index, offset) = (self.index, self.offset);
        let rest = self.capture.slice(offset..);
        let (message, consumed) =
            self.decoder.decode_prefix(&rest).map_err(|source| CaptureError::Decode { index, offset, source })?;
        match rest.get(consumed) {
            Some(&SEPARATOR) => {}
            other => {
                return Err(CaptureError::MissingSeparator {
                    index,
                    offset,
                    separator_offset: offset + consumed,
                    found: other.map_or(FoundByte::EndOfCapture, |byte| FoundByte::Byte(*byte)),
                })
            }
        }
        self.offset = offset + consumed + 1;
        self.index += 1;
        Ok(CapturedMessage { index, offset, payload: rest.slice(..consumed), message })
    }
}

impl Iterator for CaptureReader {
    type Item = Result<CapturedMessage, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.capture.len() {
            return None;
        }
        let result = self.read_next();
        self.failed = result.is_err();
        Some(result)
    }
}

impl std::iter::FusedIterator for CaptureReader {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Lsn, Xid};

    fn begin(xid: u32) -> Vec<u8> {
        let mut bytes = vec![b'B'];
        bytes.extend_from_slice(&1_u64.to_be_bytes());
        bytes.extend_from_slice(&0_i64.to_be_bytes());
        bytes.extend_from_slice(&xid.to_be_bytes());
        bytes
    }

    fn capture(messages: &[Vec<u8>]) -> Bytes {
        let mut bytes = Vec::new();
        for message in messages {
            bytes.extend_from_slice(message);
            bytes.push(SEPARATOR);
        }
        Bytes::from(bytes)
    }

    #[test]
    fn reads_messages_and_their_offsets() {
        // An xid whose last byte is '\n' must not be taken for a separator.
        let data = capture(&[begin(10), vec![b'E'], begin(0x0a0a)]);
        let mut decoder = Decoder::new(2);
        // Start inside a stream block so the bare Stream Stop is valid.
        decoder.decode(Bytes::from_static(&[b'S', 0, 0, 0, 1, 1])).unwrap();
        let messages: Vec<_> = CaptureReader::new(decoder, data.clone()).collect::<Result<_, _>>().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages.iter().map(|m| m.offset).collect::<Vec<_>>(), [0, 22, 24]);
        assert_eq!(messages[2].payload, data.slice(24..45));
        let PgOutputMessage::Begin(last) = &messages[2].message else { panic!("{:?}", messages[2].message) };
        assert_eq!((last.xid, last.final_lsn), (Xid(0x0a0a), Lsn(1)));
    }

    #[test]
    fn empty_capture_has_no_messages() {
        assert_eq!(CaptureReader::new(Decoder::new(1), Bytes::new()).count(), 0);
    }

    #[test]
    fn missing_or_wrong_separator_is_reported_once() {
        let mut data = begin(1);
        let mut reader = CaptureReader::new(Decoder::new(1), Bytes::from(data.clone()));
        assert_eq!(
            reader.next(),
            Some(Err(CaptureError::MissingSeparator {
                index: 0,
                offset: 0,
                separator_offset: 21,
                found: FoundByte::EndOfCapture
            }))
        );
        assert_eq!(reader.next(), None);

        data.push(b'x');
        let error = CaptureReader::new(Decoder::new(1), Bytes::from(data)).next().unwrap().unwrap_err();
        assert_eq!(
            error.to_string(),
            "message 0 at byte 0 of the capture is not followed by a newline at byte 21 (found byte 0x78)"
        );
    }

    #[test]
    fn decode_errors_carry_the_message_index_and_offset() {
        let mut data = capture(&[begin(1)]).to_vec();
        data.extend_from_slice(b"B\0\0");
        let mut reader = CaptureReader::new(Decoder::new(1), Bytes::from(data));
        assert!(reader.next().unwrap().is_ok());
        assert_eq!(reader.offset(), 22);
        match reader.next() {
            Some(Err(CaptureError::Decode { index: 1, offset: 22, source: DecodeError::UnexpectedEof { .. } })) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(reader.next(), None);
    }
}
