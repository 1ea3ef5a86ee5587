//! The encoder's exact bytes, field by field as the protocol documentation lays them out
//! (https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html), and the
//! messages it must refuse because no decoder state would read them back unchanged.
//!
//! The expected bytes here are written independently of the crate's constants, so they check
//! the encoder and, through `decode(encode(m)) == m` elsewhere, the decoder too.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::{in_stream, row, text, users_relation, wire, LSN_A, LSN_B, REL, SUBXID, TS_A, TS_B, XID};
use pgoutput::{
    Begin, BeginPrepare, Commit, CommitPrepared, Decoder, Delete, EncodeError, Encoder, Insert, LogicalMessage, Lsn,
    Oid, OldTuple, Origin, PgOutputMessage, PgTimestamp, Prepare, Relation, RelationColumn, ReplicaIdentity,
    RollbackPrepared, StreamAbort, StreamCommit, StreamPrepare, StreamStart, Truncate, TruncateOptions, TupleColumn,
    TypeMessage, Update, Xid,
};

fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

fn be64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

fn ts(v: i64) -> [u8; 8] {
    v.to_be_bytes()
}

fn encode(encoder: &mut Encoder, message: PgOutputMessage) -> Bytes {
    encoder.encode(&message).unwrap_or_else(|e| panic!("{message:?} does not encode: {e}"))
}

#[test]
fn transaction_messages_have_documented_layout() {
    let mut v1 = Encoder::new(1);
    let begin = encode(
        &mut v1,
        PgOutputMessage::Begin(Begin { final_lsn: Lsn(LSN_A), commit_time: PgTimestamp(TS_A), xid: Xid(XID) }),
    );
    assert_eq!(begin, wire(&[b"B", &be64(LSN_A), &ts(TS_A), &be32(XID)]));
    assert_eq!(begin.len(), 21);

    let commit = encode(
        &mut v1,
        PgOutputMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(LSN_A),
            end_lsn: Lsn(LSN_B),
            commit_time: PgTimestamp(TS_B),
        }),
    );
    assert_eq!(commit, wire(&[b"C", &[0], &be64(LSN_A), &be64(LSN_B), &ts(TS_B)]));
    assert_eq!(commit.len(), 26);

    let origin = encode(&mut v1, PgOutputMessage::Origin(Origin { commit_lsn: Lsn(LSN_A), name: "pg_1".into() }));
    assert_eq!(origin, wire(&[b"O", &be64(LSN_A), b"pg_1\0"]));
}

#[test]
fn relation_and_type_have_documented_layout() {
    let mut v1 = Encoder::new(1);
    assert_eq!(
        encode(&mut v1, PgOutputMessage::Relation(users_relation(None))),
        wire(&[
            b"R",
            &be32(REL),
            b"public\0users\0",
            b"d",
            &[0, 3],
            &[1],
            b"id\0",
            &be32(23),
            &(-1_i32).to_be_bytes(),
            &[0],
            b"name\0",
            &be32(1043),
            &36_i32.to_be_bytes(),
            &[0],
            b"bio\0",
            &be32(25),
            &(-1_i32).to_be_bytes(),
        ])
    );
    let catalog_type = PgOutputMessage::Type(TypeMessage {
        xid: None,
        oid: Oid(16_500),
        namespace: "pg_catalog".into(),
        name: "text".into(),
    });
    assert_eq!(encode(&mut v1, catalog_type), wire(&[b"Y", &be32(16_500), b"\0text\0"]), "pg_catalog is written empty");

    for (identity, byte) in [
        (ReplicaIdentity::Default, b'd'),
        (ReplicaIdentity::Nothing, b'n'),
        (ReplicaIdentity::Full, b'f'),
        (ReplicaIdentity::Index, b'i'),
    ] {
        let relation = Relation {
            xid: None,
            oid: Oid(REL),
            namespace: "s".into(),
            name: "t".into(),
            replica_identity: identity,
            columns: vec![],
        };
        assert_eq!(
            encode(&mut v1, PgOutputMessage::Relation(relation)),
            wire(&[b"R", &be32(REL), b"s\0t\0", &[byte], &[0, 0]])
        );
    }
}

#[test]
fn dml_has_documented_layout() {
    let mut v1 = Encoder::new(1);
    let new_row = row(vec![
        TupleColumn::Null,
        TupleColumn::UnchangedToast,
        text("ab"),
        TupleColumn::Binary(Bytes::from_static(&[7])),
    ]);
    let new_row_bytes: &[u8] =
        &[&[0, 4][..], b"n", b"u", b"t", &2_i32.to_be_bytes(), b"ab", b"b", &1_i32.to_be_bytes(), &[7]].concat();
    let key_row = row(vec![text("1")]);
    let key_row_bytes: &[u8] = &[&[0, 1][..], b"t", &1_i32.to_be_bytes(), b"1"].concat();

    let insert = PgOutputMessage::Insert(Insert { xid: None, relation: Oid(REL), new_tuple: new_row.clone() });
    assert_eq!(encode(&mut v1, insert), wire(&[b"I", &be32(REL), b"N", new_row_bytes]));

    let update_key = PgOutputMessage::Update(Update {
        xid: None,
        relation: Oid(REL),
        old_tuple: Some(OldTuple::Key(key_row.clone())),
        new_tuple: new_row.clone(),
    });
    assert_eq!(encode(&mut v1, update_key), wire(&[b"U", &be32(REL), b"K", key_row_bytes, b"N", new_row_bytes]));

    let update_full = PgOutputMessage::Update(Update {
        xid: None,
        relation: Oid(REL),
        old_tuple: Some(OldTuple::Full(key_row.clone())),
        new_tuple: new_row.clone(),
    });
    assert_eq!(encode(&mut v1, update_full), wire(&[b"U", &be32(REL), b"O", key_row_bytes, b"N", new_row_bytes]));

    let update_plain =
        PgOutputMessage::Update(Update { xid: None, relation: Oid(REL), old_tuple: None, new_tuple: key_row.clone() });
    assert_eq!(encode(&mut v1, update_plain), wire(&[b"U", &be32(REL), b"N", key_row_bytes]));

    let delete = PgOutputMessage::Delete(Delete { xid: None, relation: Oid(REL), old_tuple: OldTuple::Full(key_row) });
    assert_eq!(encode(&mut v1, delete), wire(&[b"D", &be32(REL), b"O", key_row_bytes]));

    let truncate = PgOutputMessage::Truncate(Truncate {
        xid: None,
        options: TruncateOptions { cascade: false, restart_identity: true },
        relations: vec![Oid(REL), Oid(7)],
    });
    assert_eq!(encode(&mut v1, truncate), wire(&[b"T", &2_i32.to_be_bytes(), &[2], &be32(REL), &be32(7)]));

    let message = PgOutputMessage::Message(LogicalMessage {
        xid: None,
        transactional: true,
        lsn: Lsn(LSN_B),
        prefix: "p".into(),
        content: Bytes::from_static(b"\0x"),
    });
    assert_eq!(encode(&mut v1, message), wire(&[b"M", &[1], &be64(LSN_B), b"p\0", &2_i32.to_be_bytes(), b"\0x"]));
}

#[test]
fn truncate_option_bits() {
    for (cascade, restart_identity, bits) in [(false, false, 0), (true, false, 1), (false, true, 2), (true, true, 3)] {
        let truncate = PgOutputMessage::Truncate(Truncate {
            xid: None,
            options: TruncateOptions { cascade, restart_identity },
            relations: vec![],
        });
        assert_eq!(encode(&mut Encoder::new(1), truncate), wire(&[b"T", &[0, 0, 0, 0], &[bits]]));
    }
}

#[test]
fn stream_block_adds_xid_prefix_and_moves_state() {
    let mut encoder = Encoder::new(2);
    assert!(!encoder.in_stream_block());
    let start = encode(&mut encoder, PgOutputMessage::StreamStart(StreamStart { xid: Xid(XID), first_segment: true }));
    assert_eq!(start, wire(&[b"S", &be32(XID), &[1]]));
    assert!(encoder.in_stream_block());

    let insert = PgOutputMessage::Insert(Insert { xid: Some(Xid(SUBXID)), relation: Oid(REL), new_tuple: row(vec![]) });
    assert_eq!(encode(&mut encoder, insert), wire(&[b"I", &be32(SUBXID), &be32(REL), b"N", &[0, 0]]));
    let type_message = PgOutputMessage::Type(TypeMessage {
        xid: Some(Xid(SUBXID)),
        oid: Oid(1),
        namespace: "n".into(),
        name: "t".into(),
    });
    assert_eq!(encode(&mut encoder, type_message), wire(&[b"Y", &be32(SUBXID), &be32(1), b"n\0t\0"]));

    assert_eq!(encode(&mut encoder, PgOutputMessage::StreamStop), wire(&[b"E"]));
    assert!(!encoder.in_stream_block());

    let later = encode(&mut encoder, PgOutputMessage::StreamStart(StreamStart { xid: Xid(XID), first_segment: false }));
    assert_eq!(later, wire(&[b"S", &be32(XID), &[0]]));
}

#[test]
fn stream_end_messages_have_documented_layout() {
    let commit = PgOutputMessage::StreamCommit(StreamCommit {
        xid: Xid(XID),
        flags: 0,
        commit_lsn: Lsn(LSN_A),
        end_lsn: Lsn(LSN_B),
        commit_time: PgTimestamp(TS_A),
    });
    assert_eq!(
        encode(&mut Encoder::new(2), commit),
        wire(&[b"c", &be32(XID), &[0], &be64(LSN_A), &be64(LSN_B), &ts(TS_A)])
    );

    let short_abort = StreamAbort { xid: Xid(XID), subxid: Xid(SUBXID), abort_lsn: None, abort_time: None };
    let short_bytes = wire(&[b"A", &be32(XID), &be32(SUBXID)]);
    for encoder in [Encoder::new(2), Encoder::new(3).with_parallel_streaming(true), Encoder::new(4)] {
        assert_eq!(encode(&mut encoder.clone(), PgOutputMessage::StreamAbort(short_abort.clone())), short_bytes);
    }

    let long_abort = StreamAbort { abort_lsn: Some(Lsn(LSN_B)), abort_time: Some(PgTimestamp(TS_B)), ..short_abort };
    let long_bytes =
        encode(&mut Encoder::new(4).with_parallel_streaming(true), PgOutputMessage::StreamAbort(long_abort));
    assert_eq!(long_bytes, wire(&[b"A", &be32(XID), &be32(SUBXID), &be64(LSN_B), &ts(TS_B)]));
    assert_eq!(long_bytes.len(), 25);
}

#[test]
fn two_phase_messages_have_documented_layout() {
    let mut v3 = Encoder::new(3);
    let begin_prepare = PgOutputMessage::BeginPrepare(BeginPrepare {
        prepare_lsn: Lsn(LSN_A),
        end_lsn: Lsn(LSN_B),
        prepare_time: PgTimestamp(TS_A),
        xid: Xid(XID),
        gid: "g".into(),
    });
    assert_eq!(
        encode(&mut v3, begin_prepare),
        wire(&[b"b", &be64(LSN_A), &be64(LSN_B), &ts(TS_A), &be32(XID), b"g\0"])
    );

    let prepare_body = wire(&[&[0], &be64(LSN_A), &be64(LSN_B), &ts(TS_A), &be32(XID), b"g\0"]);
    let prepare = PgOutputMessage::Prepare(Prepare {
        flags: 0,
        prepare_lsn: Lsn(LSN_A),
        end_lsn: Lsn(LSN_B),
        prepare_time: PgTimestamp(TS_A),
        xid: Xid(XID),
        gid: "g".into(),
    });
    assert_eq!(encode(&mut v3, prepare), wire(&[b"P", &prepare_body]));
    let stream_prepare = PgOutputMessage::StreamPrepare(StreamPrepare {
        flags: 0,
        prepare_lsn: Lsn(LSN_A),
        end_lsn: Lsn(LSN_B),
        prepare_time: PgTimestamp(TS_A),
        xid: Xid(XID),
        gid: "g".into(),
    });
    assert_eq!(encode(&mut v3, stream_prepare), wire(&[b"p", &prepare_body]));

    let commit_prepared = PgOutputMessage::CommitPrepared(CommitPrepared {
        flags: 0,
        commit_lsn: Lsn(LSN_A),
        end_lsn: Lsn(LSN_B),
        commit_time: PgTimestamp(TS_B),
        xid: Xid(XID),
        gid: "g".into(),
    });
    assert_eq!(
        encode(&mut v3, commit_prepared),
        wire(&[b"K", &[0], &be64(LSN_A), &be64(LSN_B), &ts(TS_B), &be32(XID), b"g\0"])
    );

    let rollback_prepared = PgOutputMessage::RollbackPrepared(RollbackPrepared {
        flags: 0,
        prepare_end_lsn: Lsn(LSN_A),
        rollback_end_lsn: Lsn(LSN_B),
        prepare_time: PgTimestamp(TS_A),
        rollback_time: PgTimestamp(TS_B),
        xid: Xid(XID),
        gid: "g".into(),
    });
    assert_eq!(
        encode(&mut v3, rollback_prepared),
        wire(&[b"r", &[0], &be64(LSN_A), &be64(LSN_B), &ts(TS_A), &ts(TS_B), &be32(XID), b"g\0"])
    );
}

#[test]
fn xid_must_match_stream_state() {
    let insert = |xid| PgOutputMessage::Insert(Insert { xid, relation: Oid(REL), new_tuple: row(vec![]) });
    assert_eq!(Encoder::new(2).encode(&insert(Some(Xid(SUBXID)))), Err(EncodeError::UnexpectedStreamXid { tag: b'I' }));
    let mut streaming = Encoder::matching(&in_stream(2));
    assert_eq!(streaming.encode(&insert(None)), Err(EncodeError::MissingStreamXid { tag: b'I' }));
    assert!(streaming.in_stream_block(), "a refused message does not move the state");
}

#[test]
fn stream_start_and_stop_must_nest() {
    let start = PgOutputMessage::StreamStart(StreamStart { xid: Xid(XID), first_segment: true });
    assert_eq!(Encoder::matching(&in_stream(2)).encode(&start), Err(EncodeError::StreamStartInsideBlock));
    assert_eq!(Encoder::new(2).encode(&PgOutputMessage::StreamStop), Err(EncodeError::StreamStopOutsideBlock));
}

#[test]
fn abort_info_must_match_protocol_and_streaming_mode() {
    let abort = |lsn: Option<u64>, time: Option<i64>| {
        PgOutputMessage::StreamAbort(StreamAbort {
            xid: Xid(XID),
            subxid: Xid(XID),
            abort_lsn: lsn.map(Lsn),
            abort_time: time.map(PgTimestamp),
        })
    };
    let v4_parallel = Encoder::new(4).with_parallel_streaming(true);
    for (encoder, required) in [(Encoder::new(4), false), (Encoder::new(3).with_parallel_streaming(true), false)] {
        assert_eq!(encoder.clone().encode(&abort(Some(1), Some(2))), Err(EncodeError::AbortInfoMismatch { required }));
    }
    for half in [abort(Some(1), None), abort(None, Some(2)), abort(None, None)] {
        assert_eq!(v4_parallel.clone().encode(&half), Err(EncodeError::AbortInfoMismatch { required: true }));
    }
}

#[test]
fn strings_without_wire_form_are_refused() {
    let origin = PgOutputMessage::Origin(Origin { commit_lsn: Lsn(1), name: "a\0b".into() });
    assert_eq!(Encoder::new(1).encode(&origin), Err(EncodeError::NulInString { field: "origin name" }));
    let mut relation = users_relation(None);
    relation.columns[1].name = "na\0me".into();
    assert_eq!(
        Encoder::new(1).encode(&PgOutputMessage::Relation(relation)),
        Err(EncodeError::NulInString { field: "column name" })
    );
    let mut relation = users_relation(None);
    relation.namespace = String::new();
    assert_eq!(Encoder::new(1).encode(&PgOutputMessage::Relation(relation)), Err(EncodeError::EmptyNamespace));
}

#[test]
fn counts_that_overflow_their_field_are_refused() {
    let wide = PgOutputMessage::Insert(Insert {
        xid: None,
        relation: Oid(REL),
        new_tuple: row(vec![TupleColumn::Null; 65_536]),
    });
    assert_eq!(
        Encoder::new(1).encode(&wide),
        Err(EncodeError::TooLong { field: "tuple columns", len: 65_536, max: 65_535 })
    );
    let widest = PgOutputMessage::Insert(Insert {
        xid: None,
        relation: Oid(REL),
        new_tuple: row(vec![TupleColumn::Null; 65_535]),
    });
    let bytes = Encoder::new(1).encode(&widest).expect("65535 columns fit");
    assert_eq!(Decoder::new(1).decode(bytes), Ok(widest));

    let column = RelationColumn { is_key: false, name: "c".into(), type_oid: Oid(25), type_modifier: -1 };
    let mut relation = users_relation(None);
    relation.columns = vec![column; 65_536];
    assert_eq!(
        Encoder::new(1).encode(&PgOutputMessage::Relation(relation)),
        Err(EncodeError::TooLong { field: "relation columns", len: 65_536, max: 65_535 })
    );
}

#[test]
fn encode_into_appends_and_refuses_full_buffers() {
    let stop = PgOutputMessage::StreamStop;
    let start = PgOutputMessage::StreamStart(StreamStart { xid: Xid(XID), first_segment: true });

    let mut capture = BytesMut::new();
    let mut encoder = Encoder::new(2);
    encoder.encode_into(&start, &mut capture).unwrap();
    capture.put_u8(b'\n');
    encoder.encode_into(&stop, &mut capture).unwrap();
    assert_eq!(capture.freeze(), wire(&[b"S", &be32(XID), &[1], b"\n", b"E"]));

    let mut small = [0u8; 5];
    let mut encoder = Encoder::new(2);
    assert_eq!(
        encoder.encode_into(&start, &mut &mut small[..]),
        Err(EncodeError::BufferFull { needed: 6, available: 5 })
    );
    assert!(!encoder.in_stream_block(), "nothing written, nothing moved");
    assert_eq!(small, [0; 5]);
    let mut exact = [0u8; 6];
    encoder.encode_into(&start, &mut &mut exact[..]).unwrap();
    assert_eq!(&exact[..], &wire(&[b"S", &be32(XID), &[1]])[..]);
}

#[test]
fn matching_copies_the_decoder_state() {
    let decoder = in_stream(4).with_parallel_streaming(true);
    let encoder = Encoder::matching(&decoder);
    assert_eq!(encoder.protocol_version(), 4);
    assert!(encoder.parallel_streaming());
    assert!(encoder.in_stream_block());
    let fresh = Encoder::matching(&Decoder::new(1));
    assert_eq!((fresh.protocol_version(), fresh.parallel_streaming(), fresh.in_stream_block()), (1, false, false));
}

#[test]
fn error_messages_are_lower_case_without_period() {
    let errors = [
        EncodeError::MissingStreamXid { tag: b'I' },
        EncodeError::AbortInfoMismatch { required: true },
        EncodeError::NulInString { field: "gid" },
        EncodeError::EmptyNamespace,
        EncodeError::TooLong { field: "tuple columns", len: 70_000, max: 65_535 },
        EncodeError::BufferFull { needed: 6, available: 5 },
    ];
    for error in errors {
        let text = error.to_string();
        assert!(text.starts_with(|c: char| c.is_ascii_lowercase()), "{text}");
        assert!(!text.ends_with('.'), "{text}");
    }
    assert_eq!(
        EncodeError::AbortInfoMismatch { required: false }.to_string(),
        "stream abort needs abort lsn and time both absent"
    );
}
