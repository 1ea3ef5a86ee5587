//! Writes the seed corpus of the `decode` fuzz target (`fuzz/fuzz_targets/decode.rs`).
//!
//! ```text
//! cargo run -p pgoutput --example fuzz_seeds -- fuzz/seeds/decode [--golden crates/pgoutput/tests/golden]
//! ```
//!
//! Each seed is one configuration byte followed by the input, as the fuzz target reads it:
//! bits 0–1 protocol version minus one, bit 2 parallel streaming, bit 3 start inside a stream
//! block, bit 4 capture mode (messages each followed by `\n`, read with `decode_prefix`).
//!
//! Seeds written:
//! * one per valid message of the decoder tests (`tests/common/mod.rs`), every message type in
//!   every stream state, in payload mode;
//! * a few whole sessions in capture mode (plain transaction, stream blocks, two-phase, v4
//!   parallel abort);
//! * with `--golden DIR`, every file under DIR (recursively) as it is, in capture and payload
//!   mode, for protocol v1 and for v4 with parallel streaming (the two Stream Abort layouts).
//!   Golden captures from a real PostgreSQL are meant to be dropped there; `deploy/local/fuzz.sh`
//!   passes `crates/pgoutput/tests/golden` when it exists.
//!
//! File names are derived from the content's origin, so running it again overwrites rather
//! than duplicates.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::{env, fs, io};

use bytes::{BufMut, Bytes, BytesMut};
use common::{row, text, users_relation, valid_cases, LSN_A, LSN_B, REL, SUBXID, TS_A, TS_B, XID};
use pgoutput::{
    Begin, BeginPrepare, Commit, CommitPrepared, Decoder, Delete, Encoder, Insert, Lsn, Oid, OldTuple, PgOutputMessage,
    PgTimestamp, Prepare, StreamAbort, StreamCommit, StreamStart, Truncate, TruncateOptions, Update, Xid,
};

const PARALLEL_BIT: u8 = 0b0000_0100;
const IN_STREAM_BIT: u8 = 0b0000_1000;
const CAPTURE_BIT: u8 = 0b0001_0000;

fn main() -> io::Result<()> {
    let mut args = env::args_os().skip(1);
    let Some(out_dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: fuzz_seeds OUT_DIR [--golden DIR]");
        std::process::exit(2);
    };
    let golden = match (args.next(), args.next()) {
        (None, _) => None,
        (Some(flag), Some(dir)) if flag == "--golden" => Some(PathBuf::from(dir)),
        _ => {
            eprintln!("usage: fuzz_seeds OUT_DIR [--golden DIR]");
            std::process::exit(2);
        }
    };
    fs::create_dir_all(&out_dir)?;

    let mut written = 0;
    for case in valid_cases() {
        let config = config_byte(&case.decoder, false);
        write_seed(&out_dir, &format!("{config:02x}-{}", slug(case.name)), config, &case.payload)?;
        written += 1;
    }
    for (name, decoder, messages) in sessions() {
        let config = config_byte(&decoder, true);
        write_seed(&out_dir, &format!("{config:02x}-session-{name}"), config, &capture(&decoder, &messages))?;
        written += 1;
    }
    if let Some(golden) = golden {
        for file in files_under(&golden)? {
            let content = fs::read(&file)?;
            let relative = file.strip_prefix(&golden).unwrap_or(&file).to_string_lossy().into_owned();
            for decoder in [Decoder::new(1), Decoder::new(4).with_parallel_streaming(true)] {
                for capture_mode in [true, false] {
                    let config = config_byte(&decoder, capture_mode);
                    write_seed(&out_dir, &format!("{config:02x}-golden-{}", slug(&relative)), config, &content)?;
                    written += 1;
                }
            }
        }
    }
    println!("wrote {written} seeds to {}", out_dir.display());
    Ok(())
}

/// The fuzz target's configuration byte for a decoder in `decoder`'s state.
fn config_byte(decoder: &Decoder, capture_mode: bool) -> u8 {
    let version = decoder.protocol_version().clamp(1, 4);
    let mut config = u8::try_from(version - 1).expect("clamped to 0..=3");
    if decoder.parallel_streaming() {
        config |= PARALLEL_BIT;
    }
    if decoder.in_stream_block() {
        config |= IN_STREAM_BIT;
    }
    if capture_mode {
        config |= CAPTURE_BIT;
    }
    config
}

fn write_seed(dir: &Path, name: &str, config: u8, input: &[u8]) -> io::Result<()> {
    let mut seed = Vec::with_capacity(1 + input.len());
    seed.push(config);
    seed.extend_from_slice(input);
    fs::write(dir.join(name), seed)
}

/// A file-name-safe version of a description or path.
fn slug(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// The messages as `pg_recvlogical --file` writes them: each followed by a newline.
fn capture(decoder: &Decoder, messages: &[PgOutputMessage]) -> Bytes {
    let mut encoder = Encoder::matching(decoder);
    let mut out = BytesMut::new();
    for message in messages {
        encoder.encode_into(message, &mut out).unwrap_or_else(|e| panic!("session message {message:?}: {e}"));
        out.put_u8(b'\n');
    }
    out.freeze()
}

fn files_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(files_under(&path)?);
        } else {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Whole sessions, each valid from a fresh decoder of its configuration.
fn sessions() -> Vec<(&'static str, Decoder, Vec<PgOutputMessage>)> {
    let rel = Oid(REL);
    let new_row = row(vec![text("1"), text("ada"), text("line\nbreak")]);
    let key_row = row(vec![text("1"), pgoutput::TupleColumn::Null, pgoutput::TupleColumn::Null]);
    let begin = PgOutputMessage::Begin(Begin { final_lsn: Lsn(LSN_A), commit_time: PgTimestamp(TS_A), xid: Xid(XID) });
    let commit = PgOutputMessage::Commit(Commit {
        flags: 0,
        commit_lsn: Lsn(LSN_A),
        end_lsn: Lsn(LSN_B),
        commit_time: PgTimestamp(TS_A),
    });
    let start = |first_segment| PgOutputMessage::StreamStart(StreamStart { xid: Xid(XID), first_segment });
    let streamed_insert =
        PgOutputMessage::Insert(Insert { xid: Some(Xid(SUBXID)), relation: rel, new_tuple: new_row.clone() });

    let plain = vec![
        begin.clone(),
        PgOutputMessage::Relation(users_relation(None)),
        PgOutputMessage::Insert(Insert { xid: None, relation: rel, new_tuple: new_row.clone() }),
        PgOutputMessage::Update(Update {
            xid: None,
            relation: rel,
            old_tuple: Some(OldTuple::Key(key_row.clone())),
            new_tuple: new_row.clone(),
        }),
        PgOutputMessage::Delete(Delete { xid: None, relation: rel, old_tuple: OldTuple::Key(key_row) }),
        PgOutputMessage::Truncate(Truncate {
            xid: None,
            options: TruncateOptions { cascade: true, restart_identity: false },
            relations: vec![rel],
        }),
        commit.clone(),
    ];
    let streamed = vec![
        start(true),
        PgOutputMessage::Relation(users_relation(Some(Xid(SUBXID)))),
        streamed_insert.clone(),
        PgOutputMessage::StreamStop,
        begin,
        PgOutputMessage::Insert(Insert { xid: None, relation: rel, new_tuple: new_row.clone() }),
        commit,
        start(false),
        streamed_insert.clone(),
        PgOutputMessage::StreamStop,
        PgOutputMessage::StreamCommit(StreamCommit {
            xid: Xid(XID),
            flags: 0,
            commit_lsn: Lsn(LSN_A),
            end_lsn: Lsn(LSN_B),
            commit_time: PgTimestamp(TS_B),
        }),
    ];
    let two_phase = vec![
        PgOutputMessage::BeginPrepare(BeginPrepare {
            prepare_lsn: Lsn(LSN_A),
            end_lsn: Lsn(LSN_B),
            prepare_time: PgTimestamp(TS_A),
            xid: Xid(XID),
            gid: "gid-1".into(),
        }),
        PgOutputMessage::Relation(users_relation(None)),
        PgOutputMessage::Insert(Insert { xid: None, relation: rel, new_tuple: new_row }),
        PgOutputMessage::Prepare(Prepare {
            flags: 0,
            prepare_lsn: Lsn(LSN_A),
            end_lsn: Lsn(LSN_B),
            prepare_time: PgTimestamp(TS_A),
            xid: Xid(XID),
            gid: "gid-1".into(),
        }),
        PgOutputMessage::CommitPrepared(CommitPrepared {
            flags: 0,
            commit_lsn: Lsn(LSN_A),
            end_lsn: Lsn(LSN_B),
            commit_time: PgTimestamp(TS_B),
            xid: Xid(XID),
            gid: "gid-1".into(),
        }),
    ];
    let parallel_abort = vec![
        start(true),
        streamed_insert,
        PgOutputMessage::StreamStop,
        PgOutputMessage::StreamAbort(StreamAbort {
            xid: Xid(XID),
            subxid: Xid(SUBXID),
            abort_lsn: Some(Lsn(LSN_B)),
            abort_time: Some(PgTimestamp(TS_B)),
        }),
    ];
    vec![
        ("v1_plain_transaction", Decoder::new(1), plain),
        ("v2_stream_blocks", Decoder::new(2), streamed),
        ("v3_two_phase", Decoder::new(3), two_phase),
        ("v4_parallel_abort", Decoder::new(4).with_parallel_streaming(true), parallel_abort),
    ]
}
