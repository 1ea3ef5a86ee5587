//! Binary fixtures of messages only PostgreSQL 16+ sends, kept under `tests/fixtures/v4/`.
//!
//! The local test server is PostgreSQL 15 (protocol v3 at most), so the one layout protocol v4
//! added — Stream Abort with abort LSN and time, sent with `streaming 'parallel'` — cannot be
//! captured here. These files are built by hand instead: each is checked against the message it
//! holds (decoding and encoding) and against the documented field offsets, independently of the
//! encoder. Regenerate them after a deliberate change with
//!
//! ```text
//! PGOUTPUT_WRITE_FIXTURES=1 cargo test -p pgoutput --test fixtures
//! ```

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::{LSN_B, SUBXID, TS_B, XID};
use pgoutput::{Decoder, Encoder, Lsn, PgOutputMessage, PgTimestamp, StreamAbort, Xid};

struct Fixture {
    file: &'static str,
    message: PgOutputMessage,
}

fn v4_fixtures() -> Vec<Fixture> {
    let abort = |subxid| {
        PgOutputMessage::StreamAbort(StreamAbort {
            xid: Xid(XID),
            subxid: Xid(subxid),
            abort_lsn: Some(Lsn(LSN_B)),
            abort_time: Some(PgTimestamp(TS_B)),
        })
    };
    vec![
        Fixture { file: "stream_abort_parallel.bin", message: abort(XID) },
        Fixture { file: "stream_abort_parallel_subxact.bin", message: abort(SUBXID) },
    ]
}

fn fixture_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v4").join(file)
}

/// A decoder as for `START_REPLICATION … (proto_version '4', streaming 'parallel')`.
fn v4_parallel() -> Decoder {
    Decoder::new(4).with_parallel_streaming(true)
}

#[test]
fn v4_fixtures_decode_to_their_messages() {
    let write = std::env::var_os("PGOUTPUT_WRITE_FIXTURES").is_some();
    for fixture in v4_fixtures() {
        let path = fixture_path(fixture.file);
        let encoded = Encoder::matching(&v4_parallel()).encode(&fixture.message).expect("fixture message encodes");
        if write {
            std::fs::create_dir_all(path.parent().expect("fixture path has a folder")).expect("create fixture folder");
            // Written aside and renamed, so the other test never reads a half-written file.
            let fresh = path.with_extension("bin.new");
            std::fs::write(&fresh, &encoded).expect("write fixture");
            std::fs::rename(&fresh, &path).expect("replace fixture");
        }
        let bytes = Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));

        assert_eq!(v4_parallel().decode(bytes.clone()), Ok(fixture.message.clone()), "{}", fixture.file);
        assert_eq!(bytes, encoded, "{}: the encoder writes exactly the fixture", fixture.file);
    }
}

#[test]
fn v4_stream_abort_fixtures_follow_the_documented_offsets() {
    for fixture in v4_fixtures() {
        let PgOutputMessage::StreamAbort(abort) = &fixture.message else { continue };
        let bytes = std::fs::read(fixture_path(fixture.file)).expect("fixture exists");
        assert_eq!(bytes.len(), 25, "{}", fixture.file);
        assert_eq!(bytes[0], b'A');
        assert_eq!(bytes[1..5], abort.xid.0.to_be_bytes());
        assert_eq!(bytes[5..9], abort.subxid.0.to_be_bytes());
        assert_eq!(bytes[9..17], LSN_B.to_be_bytes(), "abort LSN at offset 9");
        assert_eq!(bytes[17..25], TS_B.to_be_bytes(), "abort time at offset 17");

        // The same bytes are not a valid message for a decoder that did not ask for parallel
        // streaming, or that speaks v3: the abort information reads as trailing bytes.
        for decoder in [Decoder::new(4), Decoder::new(3).with_parallel_streaming(true)] {
            assert!(decoder.clone().decode(Bytes::from(bytes.clone())).is_err(), "{}", fixture.file);
        }
    }
}
