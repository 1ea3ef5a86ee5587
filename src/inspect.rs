//! `pgfanout inspect`: print decoded pgoutput messages, from a `pg_recvlogical` capture file or
//! live from a slot, for debugging and for the golden captures.
//!
//! Output formats: `json` (one line per message, see [`render`]), `raw` (each message's bytes
//! followed by `\n`, exactly what `pg_recvlogical --file` writes) and `none` (decode only, then
//! one summary line). Every format decodes every message, so a broken stream fails the same way
//! whatever is printed.
//!
//! Live inspection never moves the slot unless `--confirm` is given: without it the flush
//! position reported to the server stays 0/0, which the server ignores, so debugging a
//! production slot does not consume its changes. With `--confirm` it confirms what a real
//! consumer would: each transaction's end LSN once its last message is printed, and the
//! keepalive position between transactions.

mod archive;
pub mod render;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{ArgGroup, ValueEnum};
use pg_replication::{ConnectOptions, ReplicationConnection, ReplicationEvent, StartOptions, StreamSettings};
use pgoutput::capture::CaptureReader;
use pgoutput::{Decoder, Lsn, PgOutputMessage, Xid};

use self::render::{Renderer, WalPosition};

/// Buffered stdout: messages are small and many, one write per message would dominate.
const OUTPUT_BUFFER: usize = 256 * 1024;

/// Arguments of `pgfanout inspect`.
#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("source").required(true).args(["capture", "url", "archive"])))]
pub struct InspectArgs {
    /// Read a file written by `pg_recvlogical --file` (each message followed by a newline).
    #[arg(long, value_name = "FILE")]
    capture: Option<PathBuf>,
    /// Read pgfanout's change archive in this folder (`[archive] path`), as protocol version 1
    /// messages; `--from` starts at the first transaction committed at or after that LSN.
    #[arg(long, value_name = "PATH")]
    archive: Option<PathBuf>,
    /// Stream live from this PostgreSQL server (libpq URL or key=value string).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Slot to stream from (live only).
    #[arg(long, conflicts_with_all = ["capture", "archive"], required_unless_present_any = ["capture", "archive"])]
    slot: Option<String>,
    /// Publication(s) to stream, comma-separated (live only).
    #[arg(long, conflicts_with_all = ["capture", "archive"], required_unless_present_any = ["capture", "archive"], value_delimiter = ',')]
    publication: Vec<String>,
    /// pgoutput protocol version, 1–4: the one the capture was recorded with (required for a
    /// capture), or the one to request (live, default 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4),
          required_unless_present_any = ["url", "archive"], conflicts_with = "archive")]
    proto_version: Option<u32>,
    /// Streaming of large in-progress transactions the capture was recorded with (`on` when
    /// given without a value). Only `parallel` changes decoding (the longer v4 Stream Abort).
    #[arg(long, value_enum, value_name = "MODE", num_args = 0..=1, default_missing_value = "on")]
    streaming: Option<Streaming>,
    /// The capture was recorded with binary=true. Column kinds say text or binary by
    /// themselves, so this changes nothing when reading a capture.
    #[arg(long)]
    binary: bool,
    /// Request `pg_logical_emit_message` output (live only).
    #[arg(long, conflicts_with_all = ["capture", "archive"])]
    messages: bool,
    /// Create the slot first; fails if it exists (live only).
    #[arg(long, conflicts_with_all = ["capture", "archive"])]
    create_slot: bool,
    /// Start position; the server starts at the slot's confirmed_flush_lsn if that is later
    /// (live, default 0/0). With `--archive`: the first commit LSN to print (default: the oldest).
    #[arg(long, value_name = "LSN", conflicts_with = "capture")]
    from: Option<Lsn>,
    /// Stop once the stream reaches this LSN, like `pg_recvlogical -E`: a message starting
    /// after it is not printed, one starting at it is, and a keepalive at or past it ends the
    /// stream (live only).
    #[arg(long, value_name = "LSN", conflicts_with_all = ["capture", "archive"])]
    until_lsn: Option<Lsn>,
    /// Stop after this many seconds without a message (live only).
    #[arg(long, value_name = "SECS", conflicts_with_all = ["capture", "archive"], value_parser = parse_seconds)]
    until_idle: Option<Duration>,
    /// Stop after this many messages.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Confirm transactions to the server as they are printed, which moves the slot (live
    /// only). Without it nothing is ever confirmed.
    #[arg(long, conflicts_with_all = ["capture", "archive"])]
    confirm: bool,
    /// What to print per message.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
}

/// `--streaming` values, as pgoutput's `streaming` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Streaming {
    Off,
    On,
    Parallel,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// The message bytes followed by a newline, as `pg_recvlogical --file` writes them.
    Raw,
    /// Nothing per message; one JSON summary line at the end.
    None,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| format!("{text:?} must be a positive number of seconds"))
}

/// `pgfanout inspect`.
pub async fn run(args: InspectArgs) -> anyhow::Result<()> {
    let stdout = std::io::stdout().lock();
    let mut output = Output::new(std::io::BufWriter::with_capacity(OUTPUT_BUFFER, stdout), args.format);
    let result = match (&args.capture, &args.archive) {
        (Some(path), _) => inspect_capture(path, &args, &mut output),
        (None, Some(dir)) => archive::inspect_archive(dir, args.from, args.count, &mut output),
        (None, None) => inspect_live(&args, &mut output).await,
    };
    let result = result.and_then(|()| output.finish().context("cannot write to stdout"));
    match result {
        // The reader went away (`| head`): that is how a pipe says "enough".
        Err(err) if is_broken_pipe(&err) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn decoder_for(proto_version: u32, streaming: Option<Streaming>) -> Decoder {
    Decoder::new(proto_version).with_parallel_streaming(streaming == Some(Streaming::Parallel))
}

fn inspect_capture(path: &Path, args: &InspectArgs, output: &mut Output<impl Write>) -> anyhow::Result<()> {
    let proto_version = args.proto_version.context("--proto-version is required with --capture")?;
    let data = std::fs::read(path).with_context(|| format!("cannot read capture {}", path.display()))?;
    let reader = CaptureReader::new(decoder_for(proto_version, args.streaming), Bytes::from(data));
    for item in reader {
        let captured = item.with_context(|| {
            format!(
                "cannot decode capture {} with --proto-version {proto_version}{} (was it recorded with these options?)",
                path.display(),
                if args.streaming == Some(Streaming::Parallel) { " --streaming parallel" } else { "" },
            )
        })?;
        output.emit(&captured.message, &captured.payload, None).context("cannot write to stdout")?;
        if args.count.is_some_and(|count| output.messages >= count) {
            break;
        }
    }
    tracing::info!(capture = %path.display(), messages = output.messages, "capture read");
    Ok(())
}

/// Why a live inspection ended.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Interrupted,
    Idle,
    Count,
    UntilLsn,
    ServerEnded,
}

async fn inspect_live(args: &InspectArgs, output: &mut Output<impl Write>) -> anyhow::Result<()> {
    let (Some(url), Some(slot)) = (&args.url, &args.slot) else {
        bail!("--url and --slot are required to inspect a live slot");
    };
    let proto_version = args.proto_version.unwrap_or(1);
    let options = ConnectOptions::parse(url)?.with_application_name("pgfanout-inspect");
    let mut connection = ReplicationConnection::connect(&options)
        .await
        .with_context(|| format!("cannot connect to {}", options.endpoint()))?;
    if args.create_slot {
        let created = connection.create_slot(slot).await.with_context(|| format!("cannot create slot {slot}"))?;
        tracing::info!(slot = %slot, consistent_point = %created.consistent_point, "slot created");
    }
    let start_options = StartOptions {
        proto_version,
        publication_names: args.publication.clone(),
        messages: args.messages,
        binary: args.binary,
        streaming: match args.streaming.unwrap_or(Streaming::Off) {
            Streaming::Off => pg_replication::Streaming::Off,
            Streaming::On => pg_replication::Streaming::On,
            Streaming::Parallel => pg_replication::Streaming::Parallel,
        },
        two_phase: false,
    };
    let mut stream = connection
        .start_replication(slot, args.from.unwrap_or(Lsn::ZERO), &start_options, StreamSettings::default())
        .await
        .with_context(|| format!("cannot stream from slot {slot}"))?;
    let feedback = stream.feedback();
    let mut decoder = decoder_for(proto_version, args.streaming);
    let mut transactions = OpenTransactions::default();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);

    let stop = loop {
        let next = async {
            match args.until_idle {
                Some(idle) => tokio::time::timeout(idle, stream.next_event()).await.ok(),
                None => Some(stream.next_event().await),
            }
        };
        let event = tokio::select! {
            _ = &mut interrupted => break Stop::Interrupted,
            event = next => match event {
                None => break Stop::Idle,
                Some(event) => event.context("replication stream failed")?,
            },
        };
        match event {
            None => break Stop::ServerEnded,
            Some(ReplicationEvent::XLogData { wal_start, wal_end, payload, .. }) => {
                if args.until_lsn.is_some_and(|until| wal_start > until) {
                    break Stop::UntilLsn;
                }
                let message = decoder.decode(payload.clone()).with_context(|| {
                    format!("message {} (WAL position {wal_start}) does not decode", output.messages)
                })?;
                output
                    .emit(&message, &payload, Some(WalPosition { wal_start, wal_end }))
                    .context("cannot write to stdout")?;
                let confirmable = transactions.follow(&message);
                if transactions.is_idle() {
                    // Between transactions: what was printed is complete, show it now.
                    output.flush().context("cannot write to stdout")?;
                }
                if let (true, Some(lsn)) = (args.confirm, confirmable) {
                    feedback.confirm(lsn);
                }
                if args.count.is_some_and(|count| output.messages >= count) {
                    break Stop::Count;
                }
                if args.until_lsn == Some(wal_start) {
                    break Stop::UntilLsn;
                }
            }
            Some(ReplicationEvent::Keepalive { wal_end, .. }) => {
                output.flush().context("cannot write to stdout")?;
                if args.confirm && transactions.is_idle() {
                    feedback.confirm(wal_end);
                }
                if args.until_lsn.is_some_and(|until| wal_end >= until) {
                    break Stop::UntilLsn;
                }
            }
        }
    };
    tracing::info!(slot = %slot, messages = output.messages, stop = ?stop, confirmed = %feedback.confirmed(), "inspect finished");
    stream.stop().await.context("cannot end the replication stream cleanly")?;
    Ok(())
}

/// Which transactions are open, to know what may be confirmed (`--confirm`).
#[derive(Debug, Default)]
struct OpenTransactions {
    /// Between Begin/Begin Prepare and Commit/Prepare.
    in_transaction: bool,
    /// Inside a Stream Start … Stream Stop block.
    in_stream_block: bool,
    /// Streamed transactions not yet committed, prepared or aborted.
    streamed: HashSet<Xid>,
}

impl OpenTransactions {
    /// Follows one message; returns the end LSN of the transaction it completed, if any,
    /// which a consumer may confirm once it has stored that transaction.
    fn follow(&mut self, message: &PgOutputMessage) -> Option<Lsn> {
        match message {
            PgOutputMessage::Begin(_) | PgOutputMessage::BeginPrepare(_) => {
                self.in_transaction = true;
                None
            }
            PgOutputMessage::Commit(commit) => {
                self.in_transaction = false;
                Some(commit.end_lsn)
            }
            PgOutputMessage::Prepare(prepare) => {
                self.in_transaction = false;
                Some(prepare.end_lsn)
            }
            PgOutputMessage::CommitPrepared(commit) => Some(commit.end_lsn),
            PgOutputMessage::RollbackPrepared(rollback) => Some(rollback.rollback_end_lsn),
            PgOutputMessage::StreamStart(start) => {
                self.in_stream_block = true;
                self.streamed.insert(start.xid);
                None
            }
            PgOutputMessage::StreamStop => {
                self.in_stream_block = false;
                None
            }
            PgOutputMessage::StreamCommit(commit) => {
                self.streamed.remove(&commit.xid);
                Some(commit.end_lsn)
            }
            PgOutputMessage::StreamPrepare(prepare) => {
                self.streamed.remove(&prepare.xid);
                Some(prepare.end_lsn)
            }
            PgOutputMessage::StreamAbort(abort) => {
                // A subtransaction abort leaves its top-level transaction open.
                if abort.subxid == abort.xid {
                    self.streamed.remove(&abort.xid);
                }
                None
            }
            _ => None,
        }
    }

    /// No transaction is partly received, so the keepalive position may be confirmed.
    fn is_idle(&self) -> bool {
        !self.in_transaction && !self.in_stream_block && self.streamed.is_empty()
    }
}

/// Writes messages in the chosen format and counts them.
struct Output<W: Write> {
    writer: W,
    format: Format,
    renderer: Renderer,
    messages: u64,
    payload_bytes: u64,
}

impl<W: Write> Output<W> {
    fn new(writer: W, format: Format) -> Self {
        Output { writer, format, renderer: Renderer::new(), messages: 0, payload_bytes: 0 }
    }

    fn emit(
        &mut self,
        message: &PgOutputMessage,
        payload: &[u8],
        position: Option<WalPosition>,
    ) -> std::io::Result<()> {
        self.renderer.observe(message);
        self.messages += 1;
        self.payload_bytes += payload.len() as u64;
        match self.format {
            Format::Json => {
                self.renderer.write_json(message, position, &mut self.writer)?;
                self.writer.write_all(b"\n")
            }
            Format::Raw => {
                self.writer.write_all(payload)?;
                self.writer.write_all(b"\n")
            }
            Format::None => Ok(()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }

    fn finish(&mut self) -> std::io::Result<()> {
        if self.format == Format::None {
            let summary = serde_json::json!({ "messages": self.messages, "payload_bytes": self.payload_bytes });
            writeln!(self.writer, "{summary}")?;
        }
        self.writer.flush()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use pgoutput::{Begin, Commit, PgTimestamp, StreamAbort, StreamCommit, StreamStart};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: InspectArgs,
    }

    fn parse(args: &[&str]) -> Result<InspectArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("inspect").chain(args.iter().copied())).map(|cli| cli.args)
    }

    #[test]
    fn command_line_rules() {
        let capture = parse(&["--capture", "x.bin", "--proto-version", "2", "--streaming"]).unwrap();
        assert_eq!((capture.proto_version, capture.streaming), (Some(2), Some(Streaming::On)));
        assert!(parse(&["--capture", "x.bin"]).is_err(), "a capture needs its protocol version");
        assert!(parse(&["--capture", "x.bin", "--proto-version", "5"]).is_err());
        assert!(parse(&["--capture", "x.bin", "--proto-version", "1", "--confirm"]).is_err(), "live only");
        assert!(parse(&["--proto-version", "1"]).is_err(), "a source is required");
        assert!(parse(&["--url", "postgres://u@h/d", "--slot", "s"]).is_err(), "live needs a publication");

        let live = parse(&[
            "--url",
            "postgres://u@h/d",
            "--slot",
            "s",
            "--publication",
            "a,b",
            "--until-lsn",
            "16/B374D848",
            "--until-idle",
            "0.5",
        ])
        .unwrap();
        assert_eq!(live.publication, ["a", "b"]);
        assert_eq!(live.until_lsn, Some(Lsn(0x16_B374_D848)));
        assert_eq!(live.until_idle, Some(Duration::from_millis(500)));
        assert_eq!(live.format, Format::Json);
        assert!(!live.confirm, "confirming is opt-in");
        for bad in ["0", "-1", "soon"] {
            assert!(parse(&["--url", "u", "--slot", "s", "--publication", "p", "--until-idle", bad]).is_err(), "{bad}");
        }
    }

    fn commit(end: u64) -> PgOutputMessage {
        PgOutputMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(end - 8),
            end_lsn: Lsn(end),
            commit_time: PgTimestamp(0),
        })
    }

    #[test]
    fn only_completed_transactions_are_confirmable() {
        let mut open = OpenTransactions::default();
        assert!(open.is_idle());
        let begin = PgOutputMessage::Begin(Begin { final_lsn: Lsn(1), commit_time: PgTimestamp(0), xid: Xid(1) });
        assert_eq!(open.follow(&begin), None);
        assert!(!open.is_idle(), "inside a transaction");
        assert_eq!(open.follow(&commit(100)), Some(Lsn(100)));
        assert!(open.is_idle());

        let start = PgOutputMessage::StreamStart(StreamStart { xid: Xid(7), first_segment: true });
        open.follow(&start);
        open.follow(&PgOutputMessage::StreamStop);
        assert!(!open.is_idle(), "a streamed transaction is still open between blocks");
        let sub_abort = PgOutputMessage::StreamAbort(StreamAbort {
            xid: Xid(7),
            subxid: Xid(8),
            abort_lsn: None,
            abort_time: None,
        });
        assert_eq!(open.follow(&sub_abort), None);
        assert!(!open.is_idle(), "a subtransaction abort leaves the transaction open");
        let stream_commit = PgOutputMessage::StreamCommit(StreamCommit {
            xid: Xid(7),
            flags: 0,
            commit_lsn: Lsn(190),
            end_lsn: Lsn(200),
            commit_time: PgTimestamp(0),
        });
        assert_eq!(open.follow(&stream_commit), Some(Lsn(200)));
        assert!(open.is_idle());
    }

    #[test]
    fn formats_write_what_they_promise() {
        let message = commit(0x20);
        let payload = [b'C', 0, 1, 2];
        let mut raw = Output::new(Vec::new(), Format::Raw);
        raw.emit(&message, &payload, None).unwrap();
        raw.finish().unwrap();
        assert_eq!(raw.writer, b"C\0\x01\x02\n");

        let mut none = Output::new(Vec::new(), Format::None);
        none.emit(&message, &payload, None).unwrap();
        none.emit(&message, &payload, None).unwrap();
        none.finish().unwrap();
        assert_eq!(String::from_utf8(none.writer).unwrap(), "{\"messages\":2,\"payload_bytes\":8}\n");

        let mut json = Output::new(Vec::new(), Format::Json);
        json.emit(&message, &payload, None).unwrap();
        json.finish().unwrap();
        let line: serde_json::Value = serde_json::from_slice(&json.writer).unwrap();
        assert_eq!(line["type"], "commit");
        assert_eq!(line["end_lsn"], "0/20");
    }
}
