//! Messages and payloads shared by the test files (and by `examples/fuzz_seeds.rs`).
//!
//! Valid payloads come from [`Encoder`], whose byte layout `tests/encode.rs` checks field by
//! field against the protocol documentation; malformed payloads are spelled out as raw bytes
//! with [`wire`].

#![allow(dead_code)] // each test binary uses a different subset

use bytes::Bytes;
use pgoutput::{
    tag, Begin, BeginPrepare, Commit, CommitPrepared, Decoder, Delete, Encoder, Insert, LogicalMessage, Lsn, Oid,
    OldTuple, Origin, PgOutputMessage, PgTimestamp, Prepare, Relation, RelationColumn, ReplicaIdentity,
    RollbackPrepared, StreamAbort, StreamCommit, StreamPrepare, StreamStart, Truncate, TruncateOptions, TupleColumn,
    TupleData, TypeMessage, Update, Xid,
};

pub const LSN_A: u64 = 0x16_B374_D848;
pub const LSN_B: u64 = 0x16_B374_D880;
/// 2024-01-01 00:00:00 UTC in PostgreSQL-epoch microseconds.
pub const TS_A: i64 = 757_382_400_000_000;
pub const TS_B: i64 = TS_A + 1_500;
pub const XID: u32 = 742;
pub const SUBXID: u32 = 745;
pub const REL: u32 = 16_384;

/// Concatenates hand-written fields into one payload, e.g.
/// `wire(&[&[tag::BEGIN], &LSN_A.to_be_bytes(), &TS_A.to_be_bytes(), &XID.to_be_bytes()])`.
pub fn wire(fields: &[&[u8]]) -> Bytes {
    Bytes::from(fields.concat())
}

pub fn text(s: &'static str) -> TupleColumn {
    TupleColumn::Text(Bytes::from_static(s.as_bytes()))
}

pub fn row(columns: Vec<TupleColumn>) -> TupleData {
    TupleData { columns }
}

/// The bytes `decoder` (in its current state) should decode back to `message`.
pub fn encode_for(decoder: &Decoder, message: &PgOutputMessage) -> Bytes {
    Encoder::matching(decoder).encode(message).expect("test message has a wire form")
}

/// A decoder that has just decoded a Stream Start for `XID`.
pub fn in_stream(protocol_version: u32) -> Decoder {
    let mut decoder = Decoder::new(protocol_version);
    let start = wire(&[&[tag::STREAM_START], &XID.to_be_bytes(), &[1]]);
    decoder.decode(start).expect("stream start decodes");
    assert!(decoder.in_stream_block());
    decoder
}

/// A valid payload, the decoder state to feed it to, and the expected decoding.
pub struct Case {
    pub name: &'static str,
    pub decoder: Decoder,
    pub payload: Bytes,
    pub expected: PgOutputMessage,
}

fn case(name: &'static str, decoder: &Decoder, expected: PgOutputMessage) -> Case {
    Case { name, decoder: decoder.clone(), payload: encode_for(decoder, &expected), expected }
}

pub fn users_relation(xid: Option<Xid>) -> Relation {
    Relation {
        xid,
        oid: Oid(REL),
        namespace: "public".into(),
        name: "users".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            RelationColumn { is_key: true, name: "id".into(), type_oid: Oid(23), type_modifier: -1 },
            RelationColumn { is_key: false, name: "name".into(), type_oid: Oid(1043), type_modifier: 36 },
            RelationColumn { is_key: false, name: "bio".into(), type_oid: Oid(25), type_modifier: -1 },
        ],
    }
}

/// The DML/schema messages, with or without the in-stream xid prefix.
fn xid_prefixed_cases(xid: Option<Xid>, decoder: &Decoder) -> Vec<Case> {
    let new_row = row(vec![text("1"), text("ada"), TupleColumn::Binary(Bytes::from_static(&[0, 1, 2]))]);
    let toasted_row = row(vec![text("1"), text("ada"), TupleColumn::UnchangedToast]);
    let key_row = row(vec![text("1"), TupleColumn::Null, TupleColumn::Null]);
    let relation = Oid(REL);

    vec![
        case("relation", decoder, PgOutputMessage::Relation(users_relation(xid))),
        case(
            "type",
            decoder,
            PgOutputMessage::Type(TypeMessage {
                xid,
                oid: Oid(16_400),
                namespace: "public".into(),
                name: "mood".into(),
            }),
        ),
        case("insert", decoder, PgOutputMessage::Insert(Insert { xid, relation, new_tuple: new_row.clone() })),
        case(
            "update without old tuple",
            decoder,
            PgOutputMessage::Update(Update { xid, relation, old_tuple: None, new_tuple: toasted_row.clone() }),
        ),
        case(
            "update with old key",
            decoder,
            PgOutputMessage::Update(Update {
                xid,
                relation,
                old_tuple: Some(OldTuple::Key(key_row.clone())),
                new_tuple: new_row.clone(),
            }),
        ),
        case(
            "update with old row",
            decoder,
            PgOutputMessage::Update(Update {
                xid,
                relation,
                old_tuple: Some(OldTuple::Full(new_row.clone())),
                new_tuple: toasted_row.clone(),
            }),
        ),
        case(
            "delete with old key",
            decoder,
            PgOutputMessage::Delete(Delete { xid, relation, old_tuple: OldTuple::Key(key_row.clone()) }),
        ),
        case(
            "delete with old row",
            decoder,
            PgOutputMessage::Delete(Delete { xid, relation, old_tuple: OldTuple::Full(new_row.clone()) }),
        ),
        case(
            "truncate",
            decoder,
            PgOutputMessage::Truncate(Truncate {
                xid,
                options: TruncateOptions { cascade: true, restart_identity: true },
                relations: vec![Oid(REL), Oid(REL + 1)],
            }),
        ),
        case(
            "transactional message",
            decoder,
            PgOutputMessage::Message(LogicalMessage {
                xid,
                transactional: true,
                lsn: Lsn(LSN_A),
                prefix: "pgfanout".into(),
                content: Bytes::from_static(b"hello"),
            }),
        ),
    ]
}

/// One valid payload of every message type (DML both inside and outside a stream block).
pub fn valid_cases() -> Vec<Case> {
    let v1 = Decoder::new(1);
    let v2 = Decoder::new(2);
    let v3 = Decoder::new(3);
    let v4_parallel = Decoder::new(4).with_parallel_streaming(true);
    let mut cases = vec![
        case(
            "begin",
            &v1,
            PgOutputMessage::Begin(Begin { final_lsn: Lsn(LSN_A), commit_time: PgTimestamp(TS_A), xid: Xid(XID) }),
        ),
        case(
            "commit",
            &v1,
            PgOutputMessage::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(LSN_A),
                end_lsn: Lsn(LSN_B),
                commit_time: PgTimestamp(TS_A),
            }),
        ),
        case("origin", &v1, PgOutputMessage::Origin(Origin { commit_lsn: Lsn(LSN_A), name: "pg_16390".into() })),
        case(
            "relation in pg_catalog, no columns",
            &v1,
            PgOutputMessage::Relation(Relation {
                xid: None,
                oid: Oid(1259),
                namespace: "pg_catalog".into(),
                name: "pg_class".into(),
                replica_identity: ReplicaIdentity::Full,
                columns: vec![],
            }),
        ),
        case(
            "type in pg_catalog",
            &v1,
            PgOutputMessage::Type(TypeMessage {
                xid: None,
                oid: Oid(16_500),
                namespace: "pg_catalog".into(),
                name: "text".into(),
            }),
        ),
        case(
            "insert of nulls and empty text",
            &v1,
            PgOutputMessage::Insert(Insert {
                xid: None,
                relation: Oid(REL),
                new_tuple: row(vec![TupleColumn::Null, text("")]),
            }),
        ),
        case(
            "truncate of nothing",
            &v1,
            PgOutputMessage::Truncate(Truncate { xid: None, options: TruncateOptions::default(), relations: vec![] }),
        ),
        case(
            "non-transactional empty message",
            &v1,
            PgOutputMessage::Message(LogicalMessage {
                xid: None,
                transactional: false,
                lsn: Lsn(LSN_B),
                prefix: String::new(),
                content: Bytes::new(),
            }),
        ),
        case(
            "stream start, first segment",
            &v2,
            PgOutputMessage::StreamStart(StreamStart { xid: Xid(XID), first_segment: true }),
        ),
        case(
            "stream start, later segment",
            &v2,
            PgOutputMessage::StreamStart(StreamStart { xid: Xid(XID), first_segment: false }),
        ),
        case("stream stop", &in_stream(2), PgOutputMessage::StreamStop),
        case(
            "origin inside stream block has no xid",
            &in_stream(2),
            PgOutputMessage::Origin(Origin { commit_lsn: Lsn::ZERO, name: "pg_1".into() }),
        ),
        case(
            "stream commit",
            &v2,
            PgOutputMessage::StreamCommit(StreamCommit {
                xid: Xid(XID),
                flags: 0,
                commit_lsn: Lsn(LSN_A),
                end_lsn: Lsn(LSN_B),
                commit_time: PgTimestamp(TS_A),
            }),
        ),
        case(
            "stream abort v2",
            &v2,
            PgOutputMessage::StreamAbort(StreamAbort {
                xid: Xid(XID),
                subxid: Xid(SUBXID),
                abort_lsn: None,
                abort_time: None,
            }),
        ),
        case(
            "stream abort v4 without parallel streaming",
            &Decoder::new(4),
            PgOutputMessage::StreamAbort(StreamAbort {
                xid: Xid(XID),
                subxid: Xid(XID),
                abort_lsn: None,
                abort_time: None,
            }),
        ),
        case(
            "stream abort v3 ignores parallel flag",
            &Decoder::new(3).with_parallel_streaming(true),
            PgOutputMessage::StreamAbort(StreamAbort {
                xid: Xid(XID),
                subxid: Xid(SUBXID),
                abort_lsn: None,
                abort_time: None,
            }),
        ),
        case(
            "stream abort v4 parallel",
            &v4_parallel,
            PgOutputMessage::StreamAbort(StreamAbort {
                xid: Xid(XID),
                subxid: Xid(SUBXID),
                abort_lsn: Some(Lsn(LSN_B)),
                abort_time: Some(PgTimestamp(TS_B)),
            }),
        ),
        case(
            "begin prepare",
            &v3,
            PgOutputMessage::BeginPrepare(BeginPrepare {
                prepare_lsn: Lsn(LSN_A),
                end_lsn: Lsn(LSN_B),
                prepare_time: PgTimestamp(TS_A),
                xid: Xid(XID),
                gid: "gid-1".into(),
            }),
        ),
        case(
            "prepare",
            &v3,
            PgOutputMessage::Prepare(Prepare {
                flags: 0,
                prepare_lsn: Lsn(LSN_A),
                end_lsn: Lsn(LSN_B),
                prepare_time: PgTimestamp(TS_A),
                xid: Xid(XID),
                gid: "gid-1".into(),
            }),
        ),
        case(
            "commit prepared",
            &v3,
            PgOutputMessage::CommitPrepared(CommitPrepared {
                flags: 0,
                commit_lsn: Lsn(LSN_A),
                end_lsn: Lsn(LSN_B),
                commit_time: PgTimestamp(TS_B),
                xid: Xid(XID),
                gid: "gid-1".into(),
            }),
        ),
        case(
            "rollback prepared",
            &v3,
            PgOutputMessage::RollbackPrepared(RollbackPrepared {
                flags: 0,
                prepare_end_lsn: Lsn(LSN_A),
                rollback_end_lsn: Lsn(LSN_B),
                prepare_time: PgTimestamp(TS_A),
                rollback_time: PgTimestamp(TS_B),
                xid: Xid(XID),
                gid: "gid-1".into(),
            }),
        ),
        case(
            "stream prepare",
            &v3,
            PgOutputMessage::StreamPrepare(StreamPrepare {
                flags: 0,
                prepare_lsn: Lsn(LSN_A),
                end_lsn: Lsn(LSN_B),
                prepare_time: PgTimestamp(TS_A),
                xid: Xid(XID),
                gid: "gid-2".into(),
            }),
        ),
    ];
    cases.extend(xid_prefixed_cases(None, &v1));
    cases.extend(xid_prefixed_cases(Some(Xid(SUBXID)), &in_stream(2)));
    cases
}
