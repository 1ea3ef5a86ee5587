//! Property tests.
//!
//! * Every valid message, for every protocol version and stream state it may appear in,
//!   survives encode → decode unchanged, and the decoder consumes exactly the encoded bytes.
//! * Whole sessions (plain transactions interleaved with stream blocks) survive the same trip
//!   through one encoder and one decoder, both as separate payloads and as a capture file
//!   walked with `decode_prefix`.
//! * Arbitrary or corrupted input never panics, and whatever does decode re-encodes to bytes
//!   that decode to the same message.
//!
//! "Valid" follows the protocol: v1 has no stream or two-phase messages, v2 adds streaming,
//! v3 two-phase, and only v4 with parallel streaming puts abort LSN/time in Stream Abort.
//! Stream Commit/Abort/Prepare and Begin/Commit only appear outside stream blocks; DML and
//! schema messages carry a subtransaction xid exactly inside them.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::valid_cases;
use pgoutput::{
    tag, Begin, BeginPrepare, Commit, CommitPrepared, Decoder, Delete, Encoder, Insert, LogicalMessage, Lsn, Oid,
    OldTuple, Origin, PgOutputMessage, PgTimestamp, Prepare, Relation, RelationColumn, ReplicaIdentity,
    RollbackPrepared, StreamAbort, StreamCommit, StreamPrepare, StreamStart, Truncate, TruncateOptions, TupleColumn,
    TupleData, TypeMessage, Update, Xid,
};
use proptest::prelude::*;
use proptest::strategy::{Union, ValueTree};
use proptest::test_runner::TestRunner;
use std::collections::BTreeSet;

const TAGS: &[u8] = &[
    tag::BEGIN,
    tag::COMMIT,
    tag::ORIGIN,
    tag::RELATION,
    tag::TYPE,
    tag::INSERT,
    tag::UPDATE,
    tag::DELETE,
    tag::TRUNCATE,
    tag::MESSAGE,
    tag::STREAM_START,
    tag::STREAM_STOP,
    tag::STREAM_COMMIT,
    tag::STREAM_ABORT,
    tag::BEGIN_PREPARE,
    tag::PREPARE,
    tag::COMMIT_PREPARED,
    tag::ROLLBACK_PREPARED,
    tag::STREAM_PREPARE,
];

/// What `START_REPLICATION` negotiated: it decides which messages and layouts are valid.
#[derive(Debug, Clone, Copy)]
struct Session {
    version: u32,
    parallel: bool,
}

impl Session {
    fn decoder(self) -> Decoder {
        Decoder::new(self.version).with_parallel_streaming(self.parallel)
    }
}

fn session() -> impl Strategy<Value = Session> {
    (1u32..=4, any::<bool>()).prop_map(|(version, parallel)| Session { version, parallel })
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn timestamp() -> impl Strategy<Value = PgTimestamp> {
    any::<i64>().prop_map(PgTimestamp)
}

fn xid() -> impl Strategy<Value = Xid> {
    any::<u32>().prop_map(Xid)
}

fn oid() -> impl Strategy<Value = Oid> {
    any::<u32>().prop_map(Oid)
}

/// Any string a NUL-terminated wire string can hold.
fn wire_string() -> impl Strategy<Value = String> {
    any::<String>().prop_map(|s| s.replace('\0', ""))
}

/// A namespace as the decoder returns it: never empty (the wire's empty string is pg_catalog).
fn namespace() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("pg_catalog".to_owned()),
        wire_string().prop_filter("empty reads as pg_catalog", |s| !s.is_empty())
    ]
}

fn value_bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn tuple_column() -> impl Strategy<Value = TupleColumn> {
    prop_oneof![
        Just(TupleColumn::Null),
        Just(TupleColumn::UnchangedToast),
        value_bytes().prop_map(TupleColumn::Text),
        value_bytes().prop_map(TupleColumn::Binary),
    ]
}

fn tuple() -> impl Strategy<Value = TupleData> {
    proptest::collection::vec(tuple_column(), 0..8).prop_map(|columns| TupleData { columns })
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![tuple().prop_map(OldTuple::Key), tuple().prop_map(OldTuple::Full)]
}

fn relation_column() -> impl Strategy<Value = RelationColumn> {
    (any::<bool>(), wire_string(), oid(), any::<i32>())
        .prop_map(|(is_key, name, type_oid, type_modifier)| RelationColumn { is_key, name, type_oid, type_modifier })
}

fn replica_identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ]
}

/// Relation, Type, Insert, Update, Delete, Truncate and Message, with a subtransaction xid
/// exactly when `in_stream`.
fn xid_prefixed(in_stream: bool) -> BoxedStrategy<PgOutputMessage> {
    let xid = if in_stream { xid().prop_map(Some).boxed() } else { Just(None).boxed() };
    prop_oneof![
        (
            xid.clone(),
            oid(),
            namespace(),
            wire_string(),
            replica_identity(),
            proptest::collection::vec(relation_column(), 0..6)
        )
            .prop_map(|(xid, oid, namespace, name, replica_identity, columns)| {
                PgOutputMessage::Relation(Relation { xid, oid, namespace, name, replica_identity, columns })
            }),
        (xid.clone(), oid(), namespace(), wire_string())
            .prop_map(|(xid, oid, namespace, name)| PgOutputMessage::Type(TypeMessage { xid, oid, namespace, name })),
        (xid.clone(), oid(), tuple()).prop_map(|(xid, relation, new_tuple)| PgOutputMessage::Insert(Insert {
            xid,
            relation,
            new_tuple
        })),
        (xid.clone(), oid(), proptest::option::of(old_tuple()), tuple()).prop_map(
            |(xid, relation, old_tuple, new_tuple)| PgOutputMessage::Update(Update {
                xid,
                relation,
                old_tuple,
                new_tuple
            })
        ),
        (xid.clone(), oid(), old_tuple()).prop_map(|(xid, relation, old_tuple)| PgOutputMessage::Delete(Delete {
            xid,
            relation,
            old_tuple
        })),
        (xid.clone(), any::<bool>(), any::<bool>(), proptest::collection::vec(oid(), 0..6)).prop_map(
            |(xid, cascade, restart_identity, relations)| PgOutputMessage::Truncate(Truncate {
                xid,
                options: TruncateOptions { cascade, restart_identity },
                relations,
            })
        ),
        (xid, any::<bool>(), lsn(), wire_string(), value_bytes()).prop_map(
            |(xid, transactional, lsn, prefix, content)| PgOutputMessage::Message(LogicalMessage {
                xid,
                transactional,
                lsn,
                prefix,
                content,
            })
        ),
    ]
    .boxed()
}

fn origin() -> impl Strategy<Value = PgOutputMessage> {
    (lsn(), wire_string()).prop_map(|(commit_lsn, name)| PgOutputMessage::Origin(Origin { commit_lsn, name }))
}

/// Begin, Commit and Origin (v1+).
fn transaction_message() -> BoxedStrategy<PgOutputMessage> {
    prop_oneof![
        (lsn(), timestamp(), xid()).prop_map(|(final_lsn, commit_time, xid)| PgOutputMessage::Begin(Begin {
            final_lsn,
            commit_time,
            xid
        })),
        (any::<u8>(), lsn(), lsn(), timestamp()).prop_map(|(flags, commit_lsn, end_lsn, commit_time)| {
            PgOutputMessage::Commit(Commit { flags, commit_lsn, end_lsn, commit_time })
        }),
        origin(),
    ]
    .boxed()
}

/// Stream Commit and Stream Abort (v2+); abort LSN/time only with v4 and parallel streaming.
fn stream_end_message(session: Session) -> BoxedStrategy<PgOutputMessage> {
    let abort_info = if session.version >= 4 && session.parallel {
        (lsn(), timestamp()).prop_map(|(lsn, time)| (Some(lsn), Some(time))).boxed()
    } else {
        Just((None, None)).boxed()
    };
    prop_oneof![
        (xid(), any::<u8>(), lsn(), lsn(), timestamp()).prop_map(|(xid, flags, commit_lsn, end_lsn, commit_time)| {
            PgOutputMessage::StreamCommit(StreamCommit { xid, flags, commit_lsn, end_lsn, commit_time })
        }),
        (xid(), xid(), abort_info).prop_map(|(xid, subxid, (abort_lsn, abort_time))| {
            PgOutputMessage::StreamAbort(StreamAbort { xid, subxid, abort_lsn, abort_time })
        }),
    ]
    .boxed()
}

/// Begin Prepare, Prepare, Commit Prepared, Rollback Prepared and Stream Prepare (v3+).
fn two_phase_message() -> BoxedStrategy<PgOutputMessage> {
    prop_oneof![
        (lsn(), lsn(), timestamp(), xid(), wire_string()).prop_map(|(prepare_lsn, end_lsn, prepare_time, xid, gid)| {
            PgOutputMessage::BeginPrepare(BeginPrepare { prepare_lsn, end_lsn, prepare_time, xid, gid })
        }),
        (any::<u8>(), lsn(), lsn(), timestamp(), xid(), wire_string()).prop_map(
            |(flags, prepare_lsn, end_lsn, prepare_time, xid, gid)| PgOutputMessage::Prepare(Prepare {
                flags,
                prepare_lsn,
                end_lsn,
                prepare_time,
                xid,
                gid,
            })
        ),
        (any::<u8>(), lsn(), lsn(), timestamp(), xid(), wire_string()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time, xid, gid)| PgOutputMessage::CommitPrepared(CommitPrepared {
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
                xid,
                gid,
            })
        ),
        (any::<u8>(), lsn(), lsn(), timestamp(), timestamp(), xid(), wire_string()).prop_map(
            |(flags, prepare_end_lsn, rollback_end_lsn, prepare_time, rollback_time, xid, gid)| {
                PgOutputMessage::RollbackPrepared(RollbackPrepared {
                    flags,
                    prepare_end_lsn,
                    rollback_end_lsn,
                    prepare_time,
                    rollback_time,
                    xid,
                    gid,
                })
            }
        ),
        (any::<u8>(), lsn(), lsn(), timestamp(), xid(), wire_string()).prop_map(
            |(flags, prepare_lsn, end_lsn, prepare_time, xid, gid)| PgOutputMessage::StreamPrepare(StreamPrepare {
                flags,
                prepare_lsn,
                end_lsn,
                prepare_time,
                xid,
                gid,
            })
        ),
    ]
    .boxed()
}

fn stream_start() -> impl Strategy<Value = PgOutputMessage> {
    (xid(), any::<bool>())
        .prop_map(|(xid, first_segment)| PgOutputMessage::StreamStart(StreamStart { xid, first_segment }))
}

/// A message that may appear outside stream blocks in this session, Stream Start excluded.
fn message_outside_stream(session: Session) -> BoxedStrategy<PgOutputMessage> {
    let mut choices = vec![transaction_message(), xid_prefixed(false)];
    if session.version >= 2 {
        choices.push(stream_end_message(session));
    }
    if session.version >= 3 {
        choices.push(two_phase_message());
    }
    Union::new(choices).boxed()
}

/// A change or schema message inside a stream block (Origin may follow the first Stream Start).
fn message_inside_stream() -> BoxedStrategy<PgOutputMessage> {
    prop_oneof![4 => xid_prefixed(true), 1 => origin()].boxed()
}

/// A session, whether the message comes inside a stream block, and the message.
fn placed_message() -> impl Strategy<Value = (Session, bool, PgOutputMessage)> {
    session().prop_flat_map(|session| {
        if session.version < 2 {
            return (Just(session), Just(false), message_outside_stream(session)).boxed();
        }
        prop_oneof![
            (Just(session), Just(false), prop_oneof![4 => message_outside_stream(session), 1 => stream_start()]),
            (
                Just(session),
                Just(true),
                prop_oneof![4 => message_inside_stream(), 1 => Just(PgOutputMessage::StreamStop)]
            ),
        ]
        .boxed()
    })
}

/// A session and the messages of a plausible stream: plain messages and, from v2, whole
/// Stream Start … Stream Stop blocks between them.
fn session_messages() -> impl Strategy<Value = (Session, Vec<PgOutputMessage>)> {
    session().prop_flat_map(|session| {
        let plain = message_outside_stream(session).prop_map(|message| vec![message]);
        let step = if session.version < 2 {
            plain.boxed()
        } else {
            let block = (stream_start(), proptest::collection::vec(message_inside_stream(), 0..5)).prop_map(
                |(start, mut body)| {
                    body.insert(0, start);
                    body.push(PgOutputMessage::StreamStop);
                    body
                },
            );
            prop_oneof![plain, block].boxed()
        };
        (Just(session), proptest::collection::vec(step, 0..10).prop_map(|steps| steps.concat()))
    })
}

/// A decoder of `session` placed inside a stream block when asked.
fn decoder_at(session: Session, in_stream: bool) -> Decoder {
    let mut decoder = session.decoder();
    if in_stream {
        let start = PgOutputMessage::StreamStart(StreamStart { xid: Xid(1), first_segment: true });
        decoder.decode(Encoder::matching(&decoder).encode(&start).unwrap()).unwrap();
    }
    decoder
}

/// The fuzz oracle, also run here: a message decoded by a decoder in state `before` must
/// re-encode in that state to bytes that decode to the same message, moving the state alike.
fn assert_reencodes(before: &Decoder, after: &Decoder, message: &PgOutputMessage) -> Result<(), TestCaseError> {
    let mut encoder = Encoder::matching(before);
    let bytes = encoder.encode(message).map_err(|e| TestCaseError::fail(format!("{message:?}: {e}")))?;
    let mut decoder = before.clone();
    prop_assert_eq!(decoder.decode(bytes), Ok(message.clone()));
    prop_assert_eq!(decoder.in_stream_block(), after.in_stream_block());
    prop_assert_eq!(encoder.in_stream_block(), after.in_stream_block());
    Ok(())
}

/// Guards the strategies themselves: a strategy that silently stopped producing some variant
/// would make the round-trip properties vacuous for it.
#[test]
fn strategies_produce_every_variant_in_every_place() {
    let mut runner = TestRunner::deterministic();
    let strategy = placed_message();
    let mut seen = BTreeSet::new();
    let mut abort_with_info = false;
    for _ in 0..5_000 {
        let (session, in_stream, message) = strategy.new_tree(&mut runner).expect("strategy generates").current();
        if let PgOutputMessage::StreamAbort(abort) = &message {
            assert_eq!(abort.abort_lsn.is_some(), session.version >= 4 && session.parallel);
            abort_with_info |= abort.abort_lsn.is_some();
        }
        if message.tag() == tag::STREAM_ABORT || message.tag() == tag::BEGIN_PREPARE {
            assert!(session.version >= 2 + u32::from(message.tag() == tag::BEGIN_PREPARE));
        }
        seen.insert((message.tag(), in_stream));
    }
    assert!(abort_with_info, "v4 parallel Stream Abort generated");
    for &tag in TAGS {
        assert!(seen.contains(&(tag, false)) || seen.contains(&(tag, true)), "tag {:?} never generated", tag as char);
    }
    for tag in [tag::RELATION, tag::TYPE, tag::INSERT, tag::UPDATE, tag::DELETE, tag::TRUNCATE, tag::MESSAGE] {
        assert!(seen.contains(&(tag, true)) && seen.contains(&(tag, false)), "{:?} in and out of blocks", tag as char);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn valid_messages_round_trip((session, in_stream, message) in placed_message(), tail in value_bytes()) {
        let decoder = decoder_at(session, in_stream);
        let mut encoder = Encoder::matching(&decoder);
        let bytes = encoder.encode(&message).map_err(|e| TestCaseError::fail(format!("{message:?}: {e}")))?;

        let mut whole = decoder.clone();
        prop_assert_eq!(whole.decode(bytes.clone()), Ok(message.clone()));
        prop_assert_eq!(whole.in_stream_block(), encoder.in_stream_block());

        let mut followed = BytesMut::from(&bytes[..]);
        followed.put_slice(&tail);
        let mut prefix = decoder.clone();
        prop_assert_eq!(prefix.decode_prefix(&followed.freeze()), Ok((message, bytes.len())));
        prop_assert_eq!(prefix.in_stream_block(), encoder.in_stream_block());
    }

    #[test]
    fn sessions_round_trip((session, messages) in session_messages()) {
        let mut encoder = Encoder::new(session.version).with_parallel_streaming(session.parallel);
        let mut decoder = session.decoder();
        let mut capture = BytesMut::new();
        for message in &messages {
            let bytes = encoder.encode(message).map_err(|e| TestCaseError::fail(format!("{message:?}: {e}")))?;
            prop_assert_eq!(decoder.decode(bytes.clone()), Ok(message.clone()));
            capture.put_slice(&bytes);
            capture.put_u8(b'\n');
        }
        prop_assert!(!decoder.in_stream_block());

        // The same session as a pg_recvlogical file: each message followed by a newline.
        let mut capture = capture.freeze();
        let mut reader = session.decoder();
        for message in &messages {
            let (decoded, consumed) = reader.decode_prefix(&capture).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&decoded, message);
            prop_assert_eq!(capture.get(consumed), Some(&b'\n'));
            capture = capture.slice(consumed + 1..);
        }
        prop_assert!(capture.is_empty());
    }

    #[test]
    fn random_bytes_never_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        session in session(),
        in_stream in any::<bool>(),
    ) {
        let before = decoder_at(session, in_stream);
        let mut decoder = before.clone();
        if let Ok(message) = decoder.decode(Bytes::from(payload)) {
            assert_reencodes(&before, &decoder, &message)?;
        }
    }

    #[test]
    fn known_tag_with_random_body_never_panics(
        tag_index in 0..TAGS.len(),
        body in proptest::collection::vec(
            prop_oneof![Just(0u8), Just(b'n'), Just(b't'), Just(b'N'), Just(0xFF), any::<u8>()],
            0..96,
        ),
        session in session(),
        in_stream in any::<bool>(),
    ) {
        let mut payload = vec![TAGS[tag_index]];
        payload.extend_from_slice(&body);
        let payload = Bytes::from(payload);
        let before = decoder_at(session, in_stream);

        let mut decoder = before.clone();
        if let Ok((message, consumed)) = decoder.decode_prefix(&payload) {
            prop_assert!(consumed <= payload.len());
            assert_reencodes(&before, &decoder, &message)?;
            prop_assert_eq!(before.clone().decode(payload.slice(..consumed)), Ok(message));
        }
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        case_index in any::<prop::sample::Index>(),
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let cases = valid_cases();
        let case = &cases[case_index.index(cases.len())];
        let mut payload = case.payload.to_vec();
        let at = position.index(payload.len());
        payload[at] = byte;
        let mut decoder = case.decoder.clone();
        if let Ok(message) = decoder.decode(Bytes::from(payload)) {
            assert_reencodes(&case.decoder, &decoder, &message)?;
        }
    }
}
