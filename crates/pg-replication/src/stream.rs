//! The replication stream (CopyBoth mode).
//!
//! Ownership: the task that calls [`ReplicationStream::next_event`] owns the
//! read half of the socket. A spawned *status task* owns the write half and
//! is the only writer: it sends standby status updates on a timer, at once
//! when the server asks for a reply, and soon after [`FeedbackHandle::confirm`]
//! moves the flush position. Because it never waits for the reader, a slow
//! consumer (backpressure) cannot make the walsender time out.
//!
//! Positions reported to the server:
//! - *write* = the highest WAL end seen in XLogData or keepalives (received);
//! - *flush* = *apply* = the highest LSN passed to `confirm`; it never moves
//!   backwards, and it is the only thing that advances the slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgoutput::Lsn;
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::error::{ReplicationError, Result};
use crate::wire::{server_error, server_notice, FrameReader, Incoming, StreamFrame, Transport};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Timing of standby status updates.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// Status update period when nothing else triggers one. Keep it well
    /// under the server's `wal_sender_timeout` (default 60 s).
    pub status_interval: Duration,
    /// Least time between two updates triggered by `confirm`, so a busy
    /// stream does not send one per transaction.
    pub min_feedback_interval: Duration,
    /// Over TCP (plain or TLS), after a read of 16 KiB or more (a busy
    /// stream), the next read waits this long, so the walsender's messages
    /// pile up in the socket and come in one read instead of waking the
    /// reader one by one; zero reads at once. Unix sockets are always read
    /// at once; over TLS, whose layer hands over a record or so per read, a
    /// read seldom reaches 16 KiB. The runtime's timer rounds the pause up
    /// to the millisecond.
    pub busy_read_pause: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            status_interval: Duration::from_secs(10),
            min_feedback_interval: Duration::from_millis(100),
            busy_read_pause: DEFAULT_BUSY_READ_PAUSE,
        }
    }
}

/// The default [`StreamSettings::busy_read_pause`].
pub const DEFAULT_BUSY_READ_PAUSE: Duration = Duration::from_micros(500);

/// One event from the walsender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationEvent {
    /// An `XLogData` message carrying one pgoutput message.
    XLogData {
        /// WAL position of the data (0 for Relation/Type messages).
        wal_start: Lsn,
        /// Server's WAL end at sending time.
        wal_end: Lsn,
        /// Server clock, microseconds since 2000-01-01.
        send_time: i64,
        /// The pgoutput message.
        payload: Bytes,
    },
    /// A primary keepalive.
    Keepalive {
        /// The walsender's position: everything before it has been sent.
        wal_end: Lsn,
        /// Whether the server asked for an immediate reply (already sent by the status task).
        reply_requested: bool,
    },
}

#[derive(Default)]
struct Positions {
    received: AtomicU64,
    flushed: AtomicU64,
}

/// Cloneable handle that reports progress to the server.
#[derive(Clone)]
pub struct FeedbackHandle {
    positions: Arc<Positions>,
    wake: Arc<Notify>,
}

impl FeedbackHandle {
    /// Declares everything before `lsn` durably applied downstream. The slot's
    /// `confirmed_flush_lsn` follows with the next status update. Smaller values
    /// than an earlier call are ignored.
    pub fn confirm(&self, lsn: Lsn) {
        let previous = self.positions.flushed.fetch_max(lsn.0, Ordering::AcqRel);
        if lsn.0 > previous {
            self.wake.notify_one();
        }
    }

    /// The highest LSN confirmed so far.
    pub fn confirmed(&self) -> Lsn {
        Lsn(self.positions.flushed.load(Ordering::Acquire))
    }
}

enum StatusCommand {
    /// Reply to a keepalive that requested one.
    ReplyNow,
    /// Send a last status update, then CopyDone, then report back.
    Finish(oneshot::Sender<Result<()>>),
}

/// The read side of a replication connection in CopyBoth mode.
pub struct ReplicationStream {
    reader: FrameReader<ReadHalf<Transport>>,
    feedback: FeedbackHandle,
    commands: mpsc::Sender<StatusCommand>,
    status_task: JoinHandle<()>,
    finished: bool,
}

impl ReplicationStream {
    pub(crate) fn new(
        reader: FrameReader<ReadHalf<Transport>>,
        writer: WriteHalf<Transport>,
        endpoint: String,
        settings: StreamSettings,
    ) -> Self {
        let feedback = FeedbackHandle { positions: Arc::default(), wake: Arc::new(Notify::new()) };
        let (commands, receiver) = mpsc::channel(16);
        let status_task = tokio::spawn(
            StatusTask { writer, endpoint, feedback: feedback.clone(), commands: receiver, settings }.run(),
        );
        ReplicationStream { reader, feedback, commands, status_task, finished: false }
    }

    /// A handle for confirming applied positions from other tasks.
    pub fn feedback(&self) -> FeedbackHandle {
        self.feedback.clone()
    }

    /// The next event; `Ok(None)` when the server ended the stream.
    pub async fn next_event(&mut self) -> Result<Option<ReplicationEvent>> {
        if self.finished {
            return Ok(None);
        }
        loop {
            let frame = self.reader.next_stream_frame().await?;
            if let Some(event) = self.handle(frame)? {
                return Ok(event);
            }
        }
    }

    /// The next event if the bytes already received hold one, without
    /// waiting for the socket: a reader that drains these before it waits
    /// again spends its wake-ups on batches of messages, not on each one.
    /// `Ok(None)` when nothing complete is buffered (or the stream ended;
    /// [`ReplicationStream::next_event`] then says so).
    pub fn next_buffered_event(&mut self) -> Result<Option<ReplicationEvent>> {
        while !self.finished {
            let Some(frame) = self.reader.next_buffered_stream_frame()? else { return Ok(None) };
            if let Some(Some(event)) = self.handle(frame)? {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    /// Acts on one backend message: `Some(event)` for an event (`Some(None)`
    /// when the stream ended), `None` for a message that is not one.
    fn handle(&mut self, frame: StreamFrame) -> Result<Option<Option<ReplicationEvent>>> {
        let message = match frame {
            StreamFrame::CopyData(body) => return self.handle_copy_data(body).map(|event| Some(Some(event))),
            StreamFrame::Other(Incoming::Message(message)) => message,
            StreamFrame::Other(Incoming::CopyBothResponse) => {
                return Err(ReplicationError::Protocol("second CopyBothResponse on one stream".into()))
            }
        };
        match message {
            backend::Message::CopyData(body) => self.handle_copy_data(body.into_bytes()).map(|event| Some(Some(event))),
            backend::Message::ErrorResponse(body) => Err(ReplicationError::Server(server_error(&body))),
            backend::Message::NoticeResponse(body) => {
                let notice = server_notice(&body);
                tracing::info!(code = %notice.code, message = %notice.message, "server notice");
                Ok(None)
            }
            backend::Message::CopyDone | backend::Message::CommandComplete(_) | backend::Message::ReadyForQuery(_) => {
                self.finished = true;
                Ok(Some(None))
            }
            _ => Ok(None),
        }
    }

    /// The event a CopyData body carries; notes the server's position and
    /// asks the status task for a reply when the server wants one.
    fn handle_copy_data(&mut self, body: Bytes) -> Result<ReplicationEvent> {
        let event = parse_copy_payload(body)?;
        let (wal_end, reply) = match &event {
            ReplicationEvent::XLogData { wal_end, .. } => (*wal_end, false),
            ReplicationEvent::Keepalive { wal_end, reply_requested } => (*wal_end, *reply_requested),
        };
        self.feedback.positions.received.fetch_max(wal_end.0, Ordering::AcqRel);
        if reply {
            // A full channel means a reply is already queued.
            let _ = self.commands.try_send(StatusCommand::ReplyNow);
        }
        Ok(event)
    }

    /// Ends the stream cleanly: a last status update with the confirmed
    /// position, CopyDone, then the server's closing messages are drained
    /// (data still in flight is discarded, never confirmed) and the
    /// connection is terminated.
    pub async fn stop(mut self) -> Result<()> {
        let (done, finished) = oneshot::channel();
        if self.commands.send(StatusCommand::Finish(done)).await.is_ok() {
            finished.await.unwrap_or(Err(ReplicationError::ConnectionClosed))?;
        }
        let drain = async {
            loop {
                match self.reader.next().await {
                    Ok(Incoming::Message(backend::Message::ReadyForQuery(_))) => return Ok(()),
                    Ok(_) => continue,
                    Err(ReplicationError::ConnectionClosed) => return Ok(()),
                    Err(err) => return Err(err),
                }
            }
        };
        let drained = tokio::time::timeout(Duration::from_secs(10), drain).await;
        self.status_task.abort();
        match drained {
            Ok(result) => result,
            Err(_) => Err(ReplicationError::Protocol("server did not end the stream within 10 s of CopyDone".into())),
        }
    }
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        self.status_task.abort();
    }
}

struct StatusTask {
    writer: WriteHalf<Transport>,
    endpoint: String,
    feedback: FeedbackHandle,
    commands: mpsc::Receiver<StatusCommand>,
    settings: StreamSettings,
}

impl StatusTask {
    async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.settings.status_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sent_flush = 0;
        // After an update a confirmation asked for, the next such one waits
        // until then (a permit the wake-up left is taken afterwards); the
        // ticker and commands (Finish at shutdown) are served meanwhile.
        let mut quiet_until = tokio::time::Instant::now();
        loop {
            let wake = self.feedback.wake.clone();
            let quiet = quiet_until > tokio::time::Instant::now();
            let result = tokio::select! {
                _ = ticker.tick() => self.send_status().await,
                _ = tokio::time::sleep_until(quiet_until), if quiet => continue,
                _ = wake.notified(), if !quiet => {
                    let flushed = self.feedback.positions.flushed.load(Ordering::Acquire);
                    let sent = if flushed > last_sent_flush { self.send_status().await } else { Ok(()) };
                    quiet_until = tokio::time::Instant::now() + self.settings.min_feedback_interval;
                    sent
                }
                command = self.commands.recv() => match command {
                    Some(StatusCommand::ReplyNow) => self.send_status().await,
                    Some(StatusCommand::Finish(done)) => {
                        let result = self.finish().await;
                        let _ = done.send(result);
                        return;
                    }
                    None => return,
                },
            };
            if let Err(err) = result {
                // The reader sees the broken connection too and reports it.
                tracing::warn!(error = %err, "standby status update failed");
                return;
            }
            last_sent_flush = self.feedback.positions.flushed.load(Ordering::Acquire).max(last_sent_flush);
        }
    }

    async fn send_status(&mut self) -> Result<()> {
        let flushed = self.feedback.positions.flushed.load(Ordering::Acquire);
        let received = self.feedback.positions.received.load(Ordering::Acquire).max(flushed);
        let payload = standby_status_update(Lsn(received), Lsn(flushed), pg_now_micros());
        let mut frame = BytesMut::with_capacity(40);
        frontend::CopyData::new(payload).map_err(|e| ReplicationError::Protocol(e.to_string()))?.write(&mut frame);
        tracing::trace!(write = %Lsn(received), flush = %Lsn(flushed), "standby status update");
        self.write(&frame).await
    }

    async fn finish(&mut self) -> Result<()> {
        self.send_status().await?;
        let mut frame = BytesMut::with_capacity(5);
        frontend::copy_done(&mut frame);
        self.write(&frame).await
    }

    /// Writes and flushes one message: over TLS, written bytes can sit in
    /// the session's buffer until flushed, and the server would never see
    /// the status update.
    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let io_error = |source| ReplicationError::Io { endpoint: self.endpoint.clone(), source };
        self.writer.write_all(bytes).await.map_err(io_error)?;
        self.writer.flush().await.map_err(io_error)
    }
}

/// Builds a standby status update (`r`) reporting `write` received and
/// `flush` (= apply) durably applied.
pub fn standby_status_update(write: Lsn, flush: Lsn, now_micros: i64) -> Bytes {
    let mut payload = BytesMut::with_capacity(34);
    payload.put_u8(b'r');
    payload.put_u64(write.0);
    payload.put_u64(flush.0);
    payload.put_u64(flush.0);
    payload.put_i64(now_micros);
    payload.put_u8(0);
    payload.freeze()
}

/// Parses the payload of a CopyData from the walsender: `w` (XLogData) or `k` (keepalive).
pub fn parse_copy_payload(mut payload: Bytes) -> Result<ReplicationEvent> {
    let short = |what: &str| ReplicationError::Protocol(format!("{what} message too short"));
    match payload.first().copied() {
        Some(b'w') => {
            if payload.len() < 25 {
                return Err(short("XLogData"));
            }
            payload.advance(1);
            let wal_start = Lsn(payload.get_u64());
            let wal_end = Lsn(payload.get_u64());
            let send_time = payload.get_i64();
            Ok(ReplicationEvent::XLogData { wal_start, wal_end, send_time, payload })
        }
        Some(b'k') => {
            if payload.len() < 18 {
                return Err(short("keepalive"));
            }
            payload.advance(1);
            let wal_end = Lsn(payload.get_u64());
            let _send_time = payload.get_i64();
            Ok(ReplicationEvent::Keepalive { wal_end, reply_requested: payload.get_u8() == 1 })
        }
        Some(tag) => Err(ReplicationError::Protocol(format!("unknown CopyData sub-message {:?}", tag as char))),
        None => Err(short("CopyData")),
    }
}

/// Now in PostgreSQL's clock: microseconds since 2000-01-01 UTC.
fn pg_now_micros() -> i64 {
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    unix - PG_EPOCH_OFFSET_MICROS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(10);
        w.put_u64(20);
        w.put_i64(30);
        w.put_slice(b"B...");
        let event = parse_copy_payload(w.freeze()).unwrap();
        assert_eq!(
            event,
            ReplicationEvent::XLogData {
                wal_start: Lsn(10),
                wal_end: Lsn(20),
                send_time: 30,
                payload: Bytes::from_static(b"B...")
            }
        );
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(99);
        k.put_i64(1);
        k.put_u8(1);
        assert_eq!(
            parse_copy_payload(k.freeze()).unwrap(),
            ReplicationEvent::Keepalive { wal_end: Lsn(99), reply_requested: true }
        );
    }

    #[test]
    fn short_payloads_are_errors_not_panics() {
        for len in 0..25 {
            let mut w = vec![b'w'];
            w.resize(len.max(1), 0);
            assert!(parse_copy_payload(Bytes::from(w)).is_err(), "len {len}");
        }
        assert!(parse_copy_payload(Bytes::from_static(b"k123")).is_err());
        assert!(parse_copy_payload(Bytes::from_static(b"z")).is_err());
    }

    #[test]
    fn status_update_layout() {
        let update = standby_status_update(Lsn(0x20), Lsn(0x10), 7);
        assert_eq!(update.len(), 34);
        assert_eq!(update[0], b'r');
        assert_eq!(&update[1..9], &0x20u64.to_be_bytes());
        assert_eq!(&update[9..17], &0x10u64.to_be_bytes());
        assert_eq!(&update[17..25], &0x10u64.to_be_bytes());
        assert_eq!(&update[25..33], &7i64.to_be_bytes());
        assert_eq!(update[33], 0);
    }

    #[tokio::test]
    async fn confirm_never_moves_backwards() {
        let handle = FeedbackHandle { positions: Arc::default(), wake: Arc::new(Notify::new()) };
        handle.confirm(Lsn(100));
        handle.confirm(Lsn(50));
        assert_eq!(handle.confirmed(), Lsn(100));
    }
}
