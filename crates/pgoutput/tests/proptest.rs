//! Property tests: arbitrary input never panics, and tuples survive an encode/decode round trip.

mod common;

use bytes::Bytes;
use common::{valid_cases, Msg, REL};
use pgoutput::{tag, Decoder, Insert, Oid, PgOutputMessage, TupleColumn, TupleData};
use proptest::prelude::*;

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

fn decoder(version: u32, parallel: bool, streaming: bool) -> Decoder {
    let mut decoder = Decoder::new(version).with_parallel_streaming(parallel);
    if streaming {
        let start = Msg::new(tag::STREAM_START).u32(common::XID).u8(1).build();
        decoder.decode(start).expect("stream start decodes");
    }
    decoder
}

fn tuple_column() -> impl Strategy<Value = TupleColumn> {
    prop_oneof![
        Just(TupleColumn::Null),
        Just(TupleColumn::UnchangedToast),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(|v| TupleColumn::Text(Bytes::from(v))),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(|v| TupleColumn::Binary(Bytes::from(v))),
    ]
}

proptest! {
    #[test]
    fn random_bytes_never_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        version in 1u32..=4,
        parallel in any::<bool>(),
        streaming in any::<bool>(),
    ) {
        let _ = decoder(version, parallel, streaming).decode(Bytes::from(payload));
    }

    #[test]
    fn known_tag_with_random_body_never_panics(
        tag_index in 0..TAGS.len(),
        body in proptest::collection::vec(
            prop_oneof![Just(0u8), Just(b'n'), Just(b't'), Just(b'N'), Just(0xFF), any::<u8>()],
            0..96,
        ),
        version in 1u32..=4,
        parallel in any::<bool>(),
        streaming in any::<bool>(),
    ) {
        let mut payload = vec![TAGS[tag_index]];
        payload.extend_from_slice(&body);
        let _ = decoder(version, parallel, streaming).decode(Bytes::from(payload));
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
        let _ = case.decoder.clone().decode(Bytes::from(payload));
    }

    #[test]
    fn tuples_round_trip(columns in proptest::collection::vec(tuple_column(), 0..12)) {
        let tuple = TupleData { columns };
        let payload = Msg::new(tag::INSERT).u32(REL).u8(b'N').tuple(&tuple).build();
        prop_assert_eq!(
            Decoder::new(1).decode(payload),
            Ok(PgOutputMessage::Insert(Insert { xid: None, relation: Oid(REL), new_tuple: tuple }))
        );
    }
}
