//! Hand-built pgoutput payloads shared by the test files.
//!
//! `Msg` writes fields the way PostgreSQL's `proto.c` does (big-endian, NUL-terminated strings),
//! so each test spells out its wire bytes field by field next to the decoding it expects.

#![allow(dead_code)] // each test binary uses a different subset

use bytes::Bytes;
use pgoutput::{
    tag, Begin, BeginPrepare, Commit, CommitPrepared, Decoder, Delete, Insert, LogicalMessage, Lsn, Oid, OldTuple,
    Origin, PgOutputMessage, PgTimestamp, Prepare, Relation, RelationColumn, ReplicaIdentity, RollbackPrepared,
    StreamAbort, StreamCommit, StreamPrepare, StreamStart, Truncate, TruncateOptions, TupleColumn, TupleData,
    TypeMessage, Update, Xid,
};

pub const LSN_A: u64 = 0x16_B374_D848;
pub const LSN_B: u64 = 0x16_B374_D880;
/// 2024-01-01 00:00:00 UTC in PostgreSQL-epoch microseconds.
pub const TS_A: i64 = 757_382_400_000_000;
pub const TS_B: i64 = TS_A + 1_500;
pub const XID: u32 = 742;
pub const SUBXID: u32 = 745;
pub const REL: u32 = 16_384;

/// A payload under construction.
#[derive(Clone)]
pub struct Msg(Vec<u8>);

impl Msg {
    pub fn new(tag: u8) -> Self {
        Msg(vec![tag])
    }
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn cstr(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    pub fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// Writes a TupleData exactly as `logicalrep_write_tuple` would.
    pub fn tuple(mut self, tuple: &TupleData) -> Self {
        let count = u16::try_from(tuple.columns.len()).expect("test tuple too wide");
        self = self.u16(count);
        for column in &tuple.columns {
            self = match column {
                TupleColumn::Null => self.u8(b'n'),
                TupleColumn::UnchangedToast => self.u8(b'u'),
                TupleColumn::Text(v) => self.u8(b't').i32(len_i32(v)).raw(v),
                TupleColumn::Binary(v) => self.u8(b'b').i32(len_i32(v)).raw(v),
            };
        }
        self
    }
    /// Appends an optional in-stream xid prefix.
    pub fn xid(self, xid: Option<Xid>) -> Self {
        match xid {
            Some(Xid(x)) => self.u32(x),
            None => self,
        }
    }
    pub fn build(self) -> Bytes {
        Bytes::from(self.0)
    }
}

fn len_i32(v: &[u8]) -> i32 {
    i32::try_from(v.len()).expect("test value too long")
}

pub fn text(s: &'static str) -> TupleColumn {
    TupleColumn::Text(Bytes::from_static(s.as_bytes()))
}

pub fn row(columns: Vec<TupleColumn>) -> TupleData {
    TupleData { columns }
}

/// A decoder that has just decoded a Stream Start for `XID`.
pub fn in_stream(protocol_version: u32) -> Decoder {
    let mut decoder = Decoder::new(protocol_version);
    let start = Msg::new(tag::STREAM_START).u32(XID).u8(1).build();
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

fn case(name: &'static str, decoder: Decoder, msg: Msg, expected: PgOutputMessage) -> Case {
    Case { name, decoder, payload: msg.build(), expected }
}

pub fn users_relation(xid: Option<Xid>) -> (Msg, Relation) {
    let msg = Msg::new(tag::RELATION)
        .xid(xid)
        .u32(REL)
        .cstr("public")
        .cstr("users")
        .u8(b'd')
        .u16(3)
        .u8(1)
        .cstr("id")
        .u32(23)
        .i32(-1)
        .u8(0)
        .cstr("name")
        .u32(1043)
        .i32(36)
        .u8(0)
        .cstr("bio")
        .u32(25)
        .i32(-1);
    let relation = Relation {
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
    };
    (msg, relation)
}

/// The DML/schema messages, with or without the in-stream xid prefix.
fn xid_prefixed_cases(xid: Option<Xid>, decoder: &Decoder) -> Vec<Case> {
    let new_row = row(vec![text("1"), text("ada"), TupleColumn::Binary(Bytes::from_static(&[0, 1, 2]))]);
    let toasted_row = row(vec![text("1"), text("ada"), TupleColumn::UnchangedToast]);
    let key_row = row(vec![text("1"), TupleColumn::Null, TupleColumn::Null]);
    let (rel_msg, relation) = users_relation(xid);

    vec![
        case("relation", decoder.clone(), rel_msg, PgOutputMessage::Relation(relation)),
        case(
            "type",
            decoder.clone(),
            Msg::new(tag::TYPE).xid(xid).u32(16_400).cstr("public").cstr("mood"),
            PgOutputMessage::Type(TypeMessage {
                xid,
                oid: Oid(16_400),
                namespace: "public".into(),
                name: "mood".into(),
            }),
        ),
        case(
            "insert",
            decoder.clone(),
            Msg::new(tag::INSERT).xid(xid).u32(REL).u8(b'N').tuple(&new_row),
            PgOutputMessage::Insert(Insert { xid, relation: Oid(REL), new_tuple: new_row.clone() }),
        ),
        case(
            "update without old tuple",
            decoder.clone(),
            Msg::new(tag::UPDATE).xid(xid).u32(REL).u8(b'N').tuple(&toasted_row),
            PgOutputMessage::Update(Update {
                xid,
                relation: Oid(REL),
                old_tuple: None,
                new_tuple: toasted_row.clone(),
            }),
        ),
        case(
            "update with old key",
            decoder.clone(),
            Msg::new(tag::UPDATE).xid(xid).u32(REL).u8(b'K').tuple(&key_row).u8(b'N').tuple(&new_row),
            PgOutputMessage::Update(Update {
                xid,
                relation: Oid(REL),
                old_tuple: Some(OldTuple::Key(key_row.clone())),
                new_tuple: new_row.clone(),
            }),
        ),
        case(
            "update with old row",
            decoder.clone(),
            Msg::new(tag::UPDATE).xid(xid).u32(REL).u8(b'O').tuple(&new_row).u8(b'N').tuple(&toasted_row),
            PgOutputMessage::Update(Update {
                xid,
                relation: Oid(REL),
                old_tuple: Some(OldTuple::Full(new_row.clone())),
                new_tuple: toasted_row.clone(),
            }),
        ),
        case(
            "delete with old key",
            decoder.clone(),
            Msg::new(tag::DELETE).xid(xid).u32(REL).u8(b'K').tuple(&key_row),
            PgOutputMessage::Delete(Delete { xid, relation: Oid(REL), old_tuple: OldTuple::Key(key_row.clone()) }),
        ),
        case(
            "delete with old row",
            decoder.clone(),
            Msg::new(tag::DELETE).xid(xid).u32(REL).u8(b'O').tuple(&new_row),
            PgOutputMessage::Delete(Delete { xid, relation: Oid(REL), old_tuple: OldTuple::Full(new_row.clone()) }),
        ),
        case(
            "truncate",
            decoder.clone(),
            Msg::new(tag::TRUNCATE).xid(xid).i32(2).u8(3).u32(REL).u32(REL + 1),
            PgOutputMessage::Truncate(Truncate {
                xid,
                options: TruncateOptions { cascade: true, restart_identity: true },
                relations: vec![Oid(REL), Oid(REL + 1)],
            }),
        ),
        case(
            "transactional message",
            decoder.clone(),
            Msg::new(tag::MESSAGE).xid(xid).u8(1).u64(LSN_A).cstr("pgfanout").i32(5).raw(b"hello"),
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
    let v3 = Decoder::new(3);
    let v4_parallel = Decoder::new(4).with_parallel_streaming(true);
    let mut cases = vec![
        case(
            "begin",
            v1.clone(),
            Msg::new(tag::BEGIN).u64(LSN_A).i64(TS_A).u32(XID),
            PgOutputMessage::Begin(Begin { final_lsn: Lsn(LSN_A), commit_time: PgTimestamp(TS_A), xid: Xid(XID) }),
        ),
        case(
            "commit",
            v1.clone(),
            Msg::new(tag::COMMIT).u8(0).u64(LSN_A).u64(LSN_B).i64(TS_A),
            PgOutputMessage::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(LSN_A),
                end_lsn: Lsn(LSN_B),
                commit_time: PgTimestamp(TS_A),
            }),
        ),
        case(
            "origin",
            v1.clone(),
            Msg::new(tag::ORIGIN).u64(LSN_A).cstr("pg_16390"),
            PgOutputMessage::Origin(Origin { commit_lsn: Lsn(LSN_A), name: "pg_16390".into() }),
        ),
        case(
            "relation in pg_catalog, no columns",
            v1.clone(),
            Msg::new(tag::RELATION).u32(1259).cstr("").cstr("pg_class").u8(b'f').u16(0),
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
            v1.clone(),
            Msg::new(tag::TYPE).u32(16_500).cstr("").cstr("text"),
            PgOutputMessage::Type(TypeMessage {
                xid: None,
                oid: Oid(16_500),
                namespace: "pg_catalog".into(),
                name: "text".into(),
            }),
        ),
        case(
            "insert of nulls and empty text",
            v1.clone(),
            Msg::new(tag::INSERT).u32(REL).u8(b'N').tuple(&row(vec![TupleColumn::Null, text("")])),
            PgOutputMessage::Insert(Insert {
                xid: None,
                relation: Oid(REL),
                new_tuple: row(vec![TupleColumn::Null, text("")]),
            }),
        ),
        case(
            "truncate of nothing",
            v1.clone(),
            Msg::new(tag::TRUNCATE).i32(0).u8(0),
            PgOutputMessage::Truncate(Truncate { xid: None, options: TruncateOptions::default(), relations: vec![] }),
        ),
        case(
            "non-transactional empty message",
            v1.clone(),
            Msg::new(tag::MESSAGE).u8(0).u64(LSN_B).cstr("").i32(0),
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
            Decoder::new(2),
            Msg::new(tag::STREAM_START).u32(XID).u8(1),
            PgOutputMessage::StreamStart(StreamStart { xid: Xid(XID), first_segment: true }),
        ),
        case(
            "stream start, later segment",
            Decoder::new(2),
            Msg::new(tag::STREAM_START).u32(XID).u8(0),
            PgOutputMessage::StreamStart(StreamStart { xid: Xid(XID), first_segment: false }),
        ),
        case("stream stop", in_stream(2), Msg::new(tag::STREAM_STOP), PgOutputMessage::StreamStop),
        case(
            "origin inside stream block has no xid",
            in_stream(2),
            Msg::new(tag::ORIGIN).u64(0).cstr("pg_1"),
            PgOutputMessage::Origin(Origin { commit_lsn: Lsn::ZERO, name: "pg_1".into() }),
        ),
        case(
            "stream commit",
            Decoder::new(2),
            Msg::new(tag::STREAM_COMMIT).u32(XID).u8(0).u64(LSN_A).u64(LSN_B).i64(TS_A),
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
            Decoder::new(2),
            Msg::new(tag::STREAM_ABORT).u32(XID).u32(SUBXID),
            PgOutputMessage::StreamAbort(StreamAbort {
                xid: Xid(XID),
                subxid: Xid(SUBXID),
                abort_lsn: None,
                abort_time: None,
            }),
        ),
        case(
            "stream abort v4 without parallel streaming",
            Decoder::new(4),
            Msg::new(tag::STREAM_ABORT).u32(XID).u32(XID),
            PgOutputMessage::StreamAbort(StreamAbort {
                xid: Xid(XID),
                subxid: Xid(XID),
                abort_lsn: None,
                abort_time: None,
            }),
        ),
        case(
            "stream abort v3 ignores parallel flag",
            Decoder::new(3).with_parallel_streaming(true),
            Msg::new(tag::STREAM_ABORT).u32(XID).u32(SUBXID),
            PgOutputMessage::StreamAbort(StreamAbort {
                xid: Xid(XID),
                subxid: Xid(SUBXID),
                abort_lsn: None,
                abort_time: None,
            }),
        ),
        case(
            "stream abort v4 parallel",
            v4_parallel.clone(),
            Msg::new(tag::STREAM_ABORT).u32(XID).u32(SUBXID).u64(LSN_B).i64(TS_B),
            PgOutputMessage::StreamAbort(StreamAbort {
                xid: Xid(XID),
                subxid: Xid(SUBXID),
                abort_lsn: Some(Lsn(LSN_B)),
                abort_time: Some(PgTimestamp(TS_B)),
            }),
        ),
        case(
            "begin prepare",
            v3.clone(),
            Msg::new(tag::BEGIN_PREPARE).u64(LSN_A).u64(LSN_B).i64(TS_A).u32(XID).cstr("gid-1"),
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
            v3.clone(),
            Msg::new(tag::PREPARE).u8(0).u64(LSN_A).u64(LSN_B).i64(TS_A).u32(XID).cstr("gid-1"),
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
            v3.clone(),
            Msg::new(tag::COMMIT_PREPARED).u8(0).u64(LSN_A).u64(LSN_B).i64(TS_B).u32(XID).cstr("gid-1"),
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
            v3.clone(),
            Msg::new(tag::ROLLBACK_PREPARED).u8(0).u64(LSN_A).u64(LSN_B).i64(TS_A).i64(TS_B).u32(XID).cstr("gid-1"),
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
            v3.clone(),
            Msg::new(tag::STREAM_PREPARE).u8(0).u64(LSN_A).u64(LSN_B).i64(TS_A).u32(XID).cstr("gid-2"),
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
