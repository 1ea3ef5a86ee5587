//! Framing of backend messages over any byte stream, and the transport
//! (TCP, TLS over TCP, or unix-domain socket) underneath.
//!
//! `postgres-protocol` parses almost every backend message, but not
//! `CopyBothResponse` (`W`), which starts the replication stream; the reader
//! consumes that frame itself.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{self, ErrorResponseBody};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use crate::error::{ReplicationError, Result, ServerError};

/// Bytes read from the socket per call: large reads matter, a walsender sends
/// one small CopyData per pgoutput message.
const READ_CHUNK: usize = 256 * 1024;

/// Below this much free space a new chunk is started before reading.
const MIN_READ: usize = 16 * 1024;

/// A read of at least this much says the stream is busy: the server sent
/// faster than the reader woke up (see [`FrameReader::pause_after_busy_reads`]).
const BUSY_READ: usize = 16 * 1024;

/// Largest backend frame accepted. The server caps CopyData at about 1 GB;
/// a larger length is corruption, not data.
const MAX_FRAME_LEN: usize = 1 << 30;

/// The socket to the server: TCP, TLS over TCP, or a unix-domain socket.
pub(crate) enum Transport {
    Tcp(TcpStream),
    /// Boxed: a TLS session is large next to a bare socket.
    Tls(Box<TlsStream<TcpStream>>),
    Unix(UnixStream),
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Tag of a CopyData backend message.
const COPY_DATA_TAG: u8 = b'd';

/// A frame of the replication stream: a CopyData body, or anything else.
pub(crate) enum StreamFrame {
    /// The body of a CopyData message (XLogData or a keepalive).
    CopyData(Bytes),
    /// Any other message.
    Other(Incoming),
}

/// A backend message, or the `CopyBothResponse` that `postgres-protocol` does not know.
pub(crate) enum Incoming {
    Message(backend::Message),
    CopyBothResponse,
}

/// Reads backend messages from a byte stream with one growing buffer.
pub(crate) struct FrameReader<R> {
    source: R,
    buffer: BytesMut,
    endpoint: String,
    /// How long to wait before reading again after a busy read; `None`: never.
    busy_read_pause: Option<Duration>,
    /// Bytes the last read brought.
    last_read: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(source: R, endpoint: String) -> Self {
        FrameReader {
            source,
            buffer: BytesMut::with_capacity(READ_CHUNK),
            endpoint,
            busy_read_pause: None,
            last_read: 0,
        }
    }

    /// From now on, after a read of at least [`BUSY_READ`] bytes, waits
    /// `pause` before reading again, so that what the server sends
    /// meanwhile piles up in the socket and comes in one read. For TCP: a
    /// walsender sends every message as it is decoded, and while a reader
    /// waits on the socket each one costs the sending side a wake-up; with
    /// nobody waiting, a message costs little more than its copy. (A unix
    /// socket holds too little: the server would block on it and wait.)
    /// An idle stream is read the moment data arrives.
    pub(crate) fn pause_after_busy_reads(&mut self, pause: Duration) {
        self.busy_read_pause = Some(pause).filter(|pause| !pause.is_zero());
    }

    /// The next complete message, reading from the socket as needed.
    pub(crate) async fn next(&mut self) -> Result<Incoming> {
        loop {
            if let Some(incoming) = self.try_parse()? {
                return Ok(incoming);
            }
            self.fill().await?;
        }
    }

    /// Like [`FrameReader::next`], for the replication stream: a CopyData
    /// frame comes as its body alone.
    pub(crate) async fn next_stream_frame(&mut self) -> Result<StreamFrame> {
        loop {
            if let Some(frame) = self.next_buffered_stream_frame()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// The next complete frame of the replication stream if the buffer
    /// already holds one (see [`FrameReader::next_stream_frame`]); never reads.
    pub(crate) fn next_buffered_stream_frame(&mut self) -> Result<Option<StreamFrame>> {
        if let Some(body) = self.try_copy_data() {
            return Ok(Some(StreamFrame::CopyData(body)));
        }
        Ok(self.try_parse()?.map(StreamFrame::Other))
    }

    /// Reads more of the source into the buffer.
    async fn fill(&mut self) -> Result<()> {
        if let Some(pause) = self.busy_read_pause.filter(|_| self.last_read >= BUSY_READ) {
            tokio::time::sleep(pause).await;
        }
        self.make_room();
        let read = self
            .source
            .read_buf(&mut self.buffer)
            .await
            .map_err(|source| ReplicationError::Io { endpoint: self.endpoint.clone(), source })?;
        if read == 0 {
            return Err(ReplicationError::ConnectionClosed);
        }
        self.last_read = read;
        Ok(())
    }

    /// The body of the whole CopyData frame at the front of the buffer, split
    /// off as it is: one shared slice of the buffer per frame, where
    /// `backend::Message::parse` makes two (frame, then body). Anything else
    /// (another tag, a frame not yet whole, a bad length) is left to
    /// [`FrameReader::try_parse`].
    fn try_copy_data(&mut self) -> Option<Bytes> {
        let header = self.buffer.get(..5)?;
        if header[0] != COPY_DATA_TAG {
            return None;
        }
        let declared = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if !(4..=MAX_FRAME_LEN).contains(&declared) || self.buffer.len() < declared + 1 {
            return None;
        }
        self.buffer.advance(5);
        Some(self.buffer.split_to(declared - 4).freeze())
    }

    /// Makes sure a read has room, without growing shared memory: frames
    /// handed out are zero-copy slices of the buffer, so while any is alive
    /// its allocation cannot be reused. Rather than let `BytesMut::reserve`
    /// grow (and, when unique again, double) one allocation, start a fresh
    /// chunk and carry over only the unparsed tail; old chunks are freed as
    /// soon as their frames are dropped, so memory follows what is still
    /// referenced.
    ///
    /// A frame larger than a chunk gets one allocation of its full size (its
    /// length is known from its header), not a copy per read.
    fn make_room(&mut self) {
        let pending_frame = match self.buffer.get(..5) {
            // Validated by `try_parse` before any read: at most MAX_FRAME_LEN.
            Some(header) => u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize + 1,
            None => 0,
        };
        let wanted = self.buffer.len().max(pending_frame) + MIN_READ;
        if self.buffer.capacity() >= wanted {
            return;
        }
        let mut fresh = BytesMut::with_capacity(READ_CHUNK.max(pending_frame + MIN_READ));
        fresh.extend_from_slice(&self.buffer);
        self.buffer = fresh;
    }

    fn try_parse(&mut self) -> Result<Option<Incoming>> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        let tag = self.buffer[0];
        let declared = u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]) as usize;
        if !(4..=MAX_FRAME_LEN).contains(&declared) {
            return Err(ReplicationError::Protocol(format!(
                "backend message {:?} declares length {declared}",
                tag as char
            )));
        }
        if tag == b'W' {
            if self.buffer.len() < declared + 1 {
                return Ok(None);
            }
            self.buffer.advance(declared + 1);
            return Ok(Some(Incoming::CopyBothResponse));
        }
        match backend::Message::parse(&mut self.buffer) {
            Ok(Some(message)) => Ok(Some(Incoming::Message(message))),
            Ok(None) => Ok(None),
            Err(err) => Err(ReplicationError::Protocol(format!("unparseable backend message: {err}"))),
        }
    }
}

/// Copies the fields of an `ErrorResponse` or `NoticeResponse` body.
pub(crate) fn server_error(body: &ErrorResponseBody) -> ServerError {
    fields_to_error(body.fields())
}

/// Same as [`server_error`] for a notice.
pub(crate) fn server_notice(body: &backend::NoticeResponseBody) -> ServerError {
    fields_to_error(body.fields())
}

fn fields_to_error(mut fields: backend::ErrorFields<'_>) -> ServerError {
    let mut error =
        ServerError { severity: String::new(), code: String::new(), message: String::new(), detail: None, hint: None };
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'V' => error.severity = value,
            b'S' if error.severity.is_empty() => error.severity = value,
            b'C' => error.code = value,
            b'M' => error.message = value,
            b'D' => error.detail = Some(value),
            b'H' => error.hint = Some(value),
            _ => {}
        }
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_data(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![b'd'];
        frame.extend_from_slice(&(payload.len() as u32 + 4).to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// After a read of 16 KiB or more the next read waits the pause; after
    /// a small read (an idle stream) it reads at once; without a pause set,
    /// never. (Runtime time is paused: the clock moves only by sleeps.)
    #[tokio::test(start_paused = true)]
    async fn only_a_read_after_a_busy_read_waits_the_pause() {
        use tokio::io::AsyncWriteExt;
        let pause = Duration::from_micros(500);
        let busy_burst: Vec<u8> = (0..300).flat_map(|_| copy_data(&[1u8; 96])).collect();
        assert!(busy_burst.len() >= BUSY_READ);
        let lone = copy_data(b"lone message");
        for (paused, first, expect_wait) in
            [(true, &busy_burst, true), (true, &lone, false), (false, &busy_burst, false)]
        {
            let (mut server, client) = tokio::io::duplex(1 << 20);
            let mut reader = FrameReader::new(client, "test".into());
            if paused {
                reader.pause_after_busy_reads(pause);
            }
            server.write_all(first).await.unwrap();
            // One read brings all of it; then take the rest of its frames.
            reader.next_stream_frame().await.unwrap();
            while reader.next_buffered_stream_frame().unwrap().is_some() {}
            server.write_all(&lone).await.unwrap();
            let before = tokio::time::Instant::now();
            reader.next_stream_frame().await.unwrap();
            let waited = before.elapsed();
            match expect_wait {
                true => assert!(waited >= pause, "after a busy read: waited {waited:?}"),
                false => assert_eq!(waited, Duration::ZERO, "paused: {paused}, first read {} bytes", first.len()),
            }
        }
    }

    #[tokio::test]
    async fn frames_stay_intact_across_chunks_and_large_frames_arrive_whole() {
        // 40,000 small frames (about 4 MB), all kept alive, as queued changes would be.
        let mut wire = Vec::new();
        for i in 0..40_000u32 {
            wire.extend(copy_data(&[i as u8; 96]));
        }
        // A frame larger than a read chunk arrives whole.
        let large = vec![7u8; 3 * READ_CHUNK + 11];
        wire.extend(copy_data(&large));
        let mut reader = FrameReader::new(std::io::Cursor::new(wire), "test".into());
        // Most frames are dropped soon (applied), some stay (queued). (The
        // memory effect of chunking shows end to end: tests/pipeline.rs,
        // the million-change backpressure test, run with --release.)
        let mut kept = Vec::new();
        for i in 0..40_000usize {
            let frame = match reader.next().await.unwrap() {
                Incoming::Message(backend::Message::CopyData(body)) => body.into_bytes(),
                _ => panic!("expected CopyData"),
            };
            assert_eq!((frame.len(), frame[0]), (96, i as u8));
            if i % 1000 == 0 {
                kept.push(frame);
            }
            assert!(reader.buffer.capacity() <= READ_CHUNK + MIN_READ, "capacity {}", reader.buffer.capacity());
        }
        match reader.next().await.unwrap() {
            Incoming::Message(backend::Message::CopyData(body)) => assert_eq!(body.into_bytes().as_ref(), &large[..]),
            _ => panic!("expected the large CopyData"),
        }
    }

    #[tokio::test]
    async fn stream_frames_are_copy_data_bodies_and_other_messages_whole() {
        // A body split across reads, an empty body, then CopyDone.
        let mut wire = copy_data(b"wXLogData");
        wire.extend(copy_data(b""));
        wire.extend([b'c', 0, 0, 0, 4]);
        let (mut writer, reader) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(reader, "test".into());
        let send = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in wire.chunks(3) {
                writer.write_all(chunk).await.unwrap();
            }
        });
        let mut bodies = Vec::new();
        loop {
            match reader.next_stream_frame().await.unwrap() {
                StreamFrame::CopyData(body) => bodies.push(body),
                StreamFrame::Other(Incoming::Message(backend::Message::CopyDone)) => break,
                StreamFrame::Other(_) => panic!("expected CopyData or CopyDone"),
            }
        }
        send.await.unwrap();
        assert_eq!(bodies, [&b"wXLogData"[..], b""]);
        assert!(reader.next_buffered_stream_frame().unwrap().is_none());
    }
}
