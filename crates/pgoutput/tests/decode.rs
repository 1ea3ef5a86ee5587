//! Decoding hand-built payloads: every message type, the layouts that depend on decoder state,
//! and malformed input.

mod common;

use bytes::Bytes;
use common::{in_stream, row, text, users_relation, valid_cases, Msg, REL, SUBXID, XID};
use pgoutput::{tag, DecodeError, Decoder, Insert, Oid, OldTuple, PgOutputMessage, ReplicaIdentity, TupleColumn, Xid};

#[test]
fn every_message_type_decodes_to_its_body() {
    let cases = valid_cases();
    let mut tags: Vec<u8> = cases.iter().map(|c| c.expected.tag()).collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(tags.len(), 19, "one case per message type at least");

    for case in cases {
        let mut decoder = case.decoder.clone();
        let decoded = decoder.decode(case.payload.clone());
        assert_eq!(
            decoded.as_ref(),
            Ok(&case.expected),
            "{} (in stream: {})",
            case.name,
            case.decoder.in_stream_block()
        );
        assert_eq!(case.payload.first(), Some(&case.expected.tag()), "{}", case.name);
    }
}

#[test]
fn every_truncation_is_unexpected_eof() {
    for case in valid_cases() {
        for cut in 0..case.payload.len() {
            let mut decoder = case.decoder.clone();
            match decoder.decode(case.payload.slice(..cut)) {
                Err(DecodeError::UnexpectedEof { offset, needed }) => {
                    assert!(offset <= cut, "{}: cut {cut}, offset {offset}", case.name);
                    assert!(offset + needed > cut, "{}: cut {cut}", case.name);
                }
                other => panic!("{} cut at {cut}: {other:?}", case.name),
            }
            assert_eq!(
                decoder.in_stream_block(),
                case.decoder.in_stream_block(),
                "{}: a failed decode must not change stream state",
                case.name
            );
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    for case in valid_cases() {
        let mut long = case.payload.to_vec();
        long.extend_from_slice(&[0, 0]);
        let mut decoder = case.decoder.clone();
        assert_eq!(
            decoder.decode(Bytes::from(long)),
            Err(DecodeError::TrailingBytes { offset: case.payload.len(), remaining: 2 }),
            "{}",
            case.name
        );
        assert_eq!(decoder.in_stream_block(), case.decoder.in_stream_block());
    }
}

#[test]
fn unknown_tags_are_rejected() {
    for tag in [0, b'Z', b'w', b'k', b'X', b'N', 0xFF] {
        assert_eq!(
            Decoder::new(4).decode(Bytes::from(vec![tag, 0, 0, 0, 0])),
            Err(DecodeError::UnknownMessageTag { tag })
        );
    }
}

#[test]
fn empty_payload_is_unexpected_eof() {
    assert_eq!(Decoder::new(1).decode(Bytes::new()), Err(DecodeError::UnexpectedEof { offset: 0, needed: 1 }));
}

#[test]
fn stream_block_controls_xid_prefix() {
    let mut decoder = Decoder::new(2);
    assert!(!decoder.in_stream_block());
    let insert_in_stream = Msg::new(tag::INSERT).u32(SUBXID).u32(REL).u8(b'N').tuple(&row(vec![text("1")])).build();
    let insert_outside = Msg::new(tag::INSERT).u32(REL).u8(b'N').tuple(&row(vec![text("2")])).build();

    decoder.decode(Msg::new(tag::STREAM_START).u32(XID).u8(1).build()).unwrap();
    assert!(decoder.in_stream_block());
    assert_eq!(
        decoder.decode(insert_in_stream.clone()),
        Ok(PgOutputMessage::Insert(Insert {
            xid: Some(Xid(SUBXID)),
            relation: Oid(REL),
            new_tuple: row(vec![text("1")]),
        }))
    );
    assert_eq!(decoder.decode(Msg::new(tag::STREAM_STOP).build()), Ok(PgOutputMessage::StreamStop));
    assert!(!decoder.in_stream_block());
    assert_eq!(
        decoder.decode(insert_outside.clone()),
        Ok(PgOutputMessage::Insert(Insert { xid: None, relation: Oid(REL), new_tuple: row(vec![text("2")]) }))
    );

    // The same bytes in the wrong state misparse and must be caught, not silently accepted.
    assert!(decoder.decode(insert_in_stream).is_err());
    assert!(in_stream(2).decode(insert_outside).is_err());
}

#[test]
fn relation_in_stream_carries_subxid() {
    let (msg, relation) = users_relation(Some(Xid(SUBXID)));
    assert_eq!(in_stream(2).decode(msg.build()), Ok(PgOutputMessage::Relation(relation)));
}

#[test]
fn stream_start_inside_block_is_rejected() {
    let mut decoder = in_stream(2);
    let start = Msg::new(tag::STREAM_START).u32(XID + 1).u8(1).build();
    assert_eq!(decoder.decode(start), Err(DecodeError::StreamStartInsideBlock));
    assert!(decoder.in_stream_block());
}

#[test]
fn stream_stop_outside_block_is_rejected() {
    let mut decoder = Decoder::new(2);
    assert_eq!(decoder.decode(Msg::new(tag::STREAM_STOP).build()), Err(DecodeError::StreamStopOutsideBlock));
    assert!(!decoder.in_stream_block());
}

#[test]
fn invalid_stream_start_does_not_enter_block() {
    let mut decoder = Decoder::new(2);
    let too_long = Msg::new(tag::STREAM_START).u32(XID).u8(1).u8(0).build();
    assert!(decoder.decode(too_long).is_err());
    assert!(!decoder.in_stream_block());
}

#[test]
fn stream_abort_length_follows_parallel_setting() {
    let short = Msg::new(tag::STREAM_ABORT).u32(XID).u32(SUBXID).build();
    assert_eq!(
        Decoder::new(4).with_parallel_streaming(true).decode(short).unwrap_err(),
        DecodeError::UnexpectedEof { offset: 9, needed: 8 }
    );
    let long = Msg::new(tag::STREAM_ABORT).u32(XID).u32(SUBXID).u64(1).i64(2).build();
    assert_eq!(Decoder::new(4).decode(long).unwrap_err(), DecodeError::TrailingBytes { offset: 9, remaining: 16 });
}

#[test]
fn decoder_reports_its_configuration() {
    let decoder = Decoder::new(3);
    assert_eq!(decoder.protocol_version(), 3);
    assert!(!decoder.in_stream_block());
}

#[test]
fn every_replica_identity_decodes() {
    for (byte, identity) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'f', ReplicaIdentity::Full),
        (b'i', ReplicaIdentity::Index),
    ] {
        let msg = Msg::new(tag::RELATION).u32(REL).cstr("s").cstr("t").u8(byte).u16(0).build();
        let Ok(PgOutputMessage::Relation(relation)) = Decoder::new(1).decode(msg) else {
            panic!("relation with identity {byte} did not decode");
        };
        assert_eq!(relation.replica_identity, identity);
    }
}

#[test]
fn invalid_replica_identity_is_rejected() {
    let msg = Msg::new(tag::RELATION).u32(REL).cstr("s").cstr("t").u8(b'x').u16(0).build();
    assert_eq!(Decoder::new(1).decode(msg), Err(DecodeError::InvalidReplicaIdentity { byte: b'x' }));
}

#[test]
fn update_old_tuple_kinds() {
    let new = row(vec![text("1"), TupleColumn::UnchangedToast]);
    let old = row(vec![text("0"), TupleColumn::Null]);
    for (marker, expected) in
        [(b'K', Some(OldTuple::Key(old.clone()))), (b'O', Some(OldTuple::Full(old.clone()))), (b'N', None)]
    {
        let mut msg = Msg::new(tag::UPDATE).u32(REL).u8(marker);
        if marker != b'N' {
            msg = msg.tuple(&old).u8(b'N');
        }
        let Ok(PgOutputMessage::Update(update)) = Decoder::new(1).decode(msg.tuple(&new).build()) else {
            panic!("update with marker {marker} did not decode");
        };
        assert_eq!(update.old_tuple, expected);
        assert_eq!(update.new_tuple, new);
        assert_eq!(update.new_tuple.columns[1], TupleColumn::UnchangedToast);
        if let Some(old_tuple) = &update.old_tuple {
            assert_eq!(old_tuple.tuple(), &old);
        }
    }
}

#[test]
fn update_with_bad_markers_is_rejected() {
    let tuple = row(vec![text("1")]);
    let bad_first = Msg::new(tag::UPDATE).u32(REL).u8(b'X').tuple(&tuple).build();
    assert_eq!(
        Decoder::new(1).decode(bad_first),
        Err(DecodeError::UnexpectedByte { offset: 5, expected: "'K', 'O' or 'N'", found: b'X' })
    );
    // K then O: "never both" — the second marker must be N.
    let both = Msg::new(tag::UPDATE).u32(REL).u8(b'K').tuple(&tuple).u8(b'O').tuple(&tuple).build();
    let offset = 6 + 2 + 1 + 4 + 1;
    assert_eq!(Decoder::new(1).decode(both), Err(DecodeError::UnexpectedByte { offset, expected: "'N'", found: b'O' }));
}

#[test]
fn insert_and_delete_markers_are_checked() {
    let tuple = row(vec![text("1")]);
    let insert = Msg::new(tag::INSERT).u32(REL).u8(b'K').tuple(&tuple).build();
    assert!(matches!(Decoder::new(1).decode(insert), Err(DecodeError::UnexpectedByte { offset: 5, found: b'K', .. })));
    let delete = Msg::new(tag::DELETE).u32(REL).u8(b'N').tuple(&tuple).build();
    assert!(matches!(Decoder::new(1).decode(delete), Err(DecodeError::UnexpectedByte { offset: 5, found: b'N', .. })));
}

#[test]
fn unknown_tuple_kind_reports_offset() {
    let msg = Msg::new(tag::INSERT).u32(REL).u8(b'N').u16(2).u8(b'n').u8(b'x').build();
    assert_eq!(Decoder::new(1).decode(msg), Err(DecodeError::UnknownTupleKind { offset: 9, kind: b'x' }));
}

#[test]
fn negative_lengths_are_rejected() {
    let text_value = Msg::new(tag::INSERT).u32(REL).u8(b'N').u16(1).u8(b't').i32(-1).build();
    assert_eq!(Decoder::new(1).decode(text_value), Err(DecodeError::NegativeLength { offset: 9, length: -1 }));
    let binary_value = Msg::new(tag::INSERT).u32(REL).u8(b'N').u16(1).u8(b'b').i32(i32::MIN).build();
    assert_eq!(Decoder::new(1).decode(binary_value), Err(DecodeError::NegativeLength { offset: 9, length: i32::MIN }));
    let content = Msg::new(tag::MESSAGE).u8(1).u64(1).cstr("p").i32(-5).build();
    assert_eq!(Decoder::new(1).decode(content), Err(DecodeError::NegativeLength { offset: 12, length: -5 }));
    let truncate = Msg::new(tag::TRUNCATE).i32(-1).u8(0).build();
    assert_eq!(Decoder::new(1).decode(truncate), Err(DecodeError::NegativeLength { offset: 1, length: -1 }));
}

#[test]
fn huge_counts_fail_without_huge_allocations() {
    let tuple = Msg::new(tag::INSERT).u32(REL).u8(b'N').u16(u16::MAX).raw(b"nnnnnnnnnn").build();
    assert_eq!(Decoder::new(1).decode(tuple), Err(DecodeError::UnexpectedEof { offset: 18, needed: 1 }));
    let relation = Msg::new(tag::RELATION).u32(REL).cstr("s").cstr("t").u8(b'd').u16(u16::MAX).build();
    assert!(matches!(Decoder::new(1).decode(relation), Err(DecodeError::UnexpectedEof { .. })));
    let truncate = Msg::new(tag::TRUNCATE).i32(i32::MAX).u8(0).u32(REL).build();
    assert_eq!(
        Decoder::new(1).decode(truncate),
        Err(DecodeError::UnexpectedEof { offset: 6, needed: 4 * i32::MAX as usize })
    );
    let value = Msg::new(tag::INSERT).u32(REL).u8(b'N').u16(1).u8(b't').i32(i32::MAX).raw(b"abc").build();
    assert_eq!(
        Decoder::new(1).decode(value),
        Err(DecodeError::UnexpectedEof { offset: 13, needed: i32::MAX as usize })
    );
}

#[test]
fn invalid_utf8_in_names_is_rejected() {
    let msg = Msg::new(tag::RELATION).u32(REL).cstr("public").raw(b"bad\xC3(\0").u8(b'd').u16(0).build();
    assert_eq!(Decoder::new(1).decode(msg), Err(DecodeError::InvalidUtf8 { offset: 12 }));
}

#[test]
fn tuple_values_are_zero_copy_slices_of_the_payload() {
    let payload = Msg::new(tag::INSERT)
        .u32(REL)
        .u8(b'N')
        .u16(2)
        .u8(b't')
        .i32(5)
        .raw(b"hello")
        .u8(b'b')
        .i32(3)
        .raw(&[1, 2, 3])
        .build();
    let range = payload.as_ptr_range();
    let Ok(PgOutputMessage::Insert(insert)) = Decoder::new(1).decode(payload.clone()) else {
        panic!("insert did not decode");
    };
    for column in &insert.new_tuple.columns {
        let (TupleColumn::Text(value) | TupleColumn::Binary(value)) = column else {
            panic!("unexpected column {column:?}");
        };
        assert!(range.contains(&value.as_ptr()), "value was copied");
    }
    assert_eq!(insert.new_tuple.columns[0], text("hello"));
}

#[test]
fn truncate_option_bits_decode_independently() {
    for (bits, cascade, restart_identity) in [(0, false, false), (1, true, false), (2, false, true), (3, true, true)] {
        let msg = Msg::new(tag::TRUNCATE).i32(1).u8(bits).u32(REL).build();
        let Ok(PgOutputMessage::Truncate(truncate)) = Decoder::new(1).decode(msg) else {
            panic!("truncate did not decode");
        };
        assert_eq!(truncate.options.cascade, cascade);
        assert_eq!(truncate.options.restart_identity, restart_identity);
        assert_eq!(truncate.relations, vec![Oid(REL)]);
    }
}

#[test]
fn error_messages_are_lower_case_without_period() {
    let errors = [
        DecodeError::UnexpectedEof { offset: 1, needed: 2 },
        DecodeError::UnknownMessageTag { tag: b'Z' },
        DecodeError::TrailingBytes { offset: 3, remaining: 1 },
        DecodeError::StreamStopOutsideBlock,
    ];
    for error in errors {
        let text = error.to_string();
        assert!(text.starts_with(|c: char| c.is_ascii_lowercase()), "{text}");
        assert!(!text.ends_with('.'), "{text}");
    }
    assert_eq!(DecodeError::UnknownMessageTag { tag: b'Z' }.to_string(), "unknown message tag 0x5a");
}
