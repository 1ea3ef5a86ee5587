//! Decoding: every message type (payloads from the encoder, whose bytes `tests/encode.rs` checks),
//! the layouts that depend on decoder state, `decode_prefix`, and malformed input spelled out
//! as raw bytes.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::{encode_for, in_stream, row, text, users_relation, valid_cases, wire, REL, SUBXID, XID};
use pgoutput::{
    DecodeError, Decoder, Encoder, Insert, Oid, OldTuple, PgOutputMessage, ReplicaIdentity, StreamStart, TupleColumn,
    Xid,
};

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
    let streamed = Insert { xid: Some(Xid(SUBXID)), relation: Oid(REL), new_tuple: row(vec![text("1")]) };
    let plain = Insert { xid: None, relation: Oid(REL), new_tuple: row(vec![text("2")]) };
    let insert_in_stream = encode_for(&in_stream(2), &PgOutputMessage::Insert(streamed.clone()));
    let insert_outside = encode_for(&Decoder::new(2), &PgOutputMessage::Insert(plain.clone()));
    assert_eq!(insert_in_stream.len(), insert_outside.len() + 4, "the xid prefix is the only difference");

    decoder.decode(wire(&[b"S", &XID.to_be_bytes(), &[1]])).unwrap();
    assert!(decoder.in_stream_block());
    assert_eq!(decoder.decode(insert_in_stream.clone()), Ok(PgOutputMessage::Insert(streamed)));
    assert_eq!(decoder.decode(wire(&[b"E"])), Ok(PgOutputMessage::StreamStop));
    assert!(!decoder.in_stream_block());
    assert_eq!(decoder.decode(insert_outside.clone()), Ok(PgOutputMessage::Insert(plain)));

    // The same bytes in the wrong state misparse and must be caught, not silently accepted.
    assert!(decoder.decode(insert_in_stream).is_err());
    assert!(in_stream(2).decode(insert_outside).is_err());
}

#[test]
fn stream_start_inside_block_is_rejected() {
    let mut decoder = in_stream(2);
    let start = wire(&[b"S", &(XID + 1).to_be_bytes(), &[1]]);
    assert_eq!(decoder.decode(start), Err(DecodeError::StreamStartInsideBlock));
    assert!(decoder.in_stream_block());
}

#[test]
fn stream_stop_outside_block_is_rejected() {
    let mut decoder = Decoder::new(2);
    assert_eq!(decoder.decode(wire(&[b"E"])), Err(DecodeError::StreamStopOutsideBlock));
    assert!(!decoder.in_stream_block());
}

#[test]
fn invalid_stream_start_does_not_enter_block() {
    let mut decoder = Decoder::new(2);
    let too_long = wire(&[b"S", &XID.to_be_bytes(), &[1, 0]]);
    assert!(decoder.decode(too_long).is_err());
    assert!(!decoder.in_stream_block());
}

#[test]
fn stream_start_first_segment_is_only_one() {
    for (byte, first_segment) in [(0, false), (1, true), (2, false), (0xFF, false)] {
        let start = wire(&[b"S", &XID.to_be_bytes(), &[byte]]);
        assert_eq!(
            Decoder::new(2).decode(start),
            Ok(PgOutputMessage::StreamStart(StreamStart { xid: Xid(XID), first_segment }))
        );
    }
}

#[test]
fn stream_abort_length_follows_parallel_setting() {
    let short = wire(&[b"A", &XID.to_be_bytes(), &SUBXID.to_be_bytes()]);
    assert_eq!(
        Decoder::new(4).with_parallel_streaming(true).decode(short).unwrap_err(),
        DecodeError::UnexpectedEof { offset: 9, needed: 8 }
    );
    let long = wire(&[b"A", &XID.to_be_bytes(), &SUBXID.to_be_bytes(), &1_u64.to_be_bytes(), &2_i64.to_be_bytes()]);
    assert_eq!(Decoder::new(4).decode(long).unwrap_err(), DecodeError::TrailingBytes { offset: 9, remaining: 16 });
}

#[test]
fn decoder_reports_its_configuration() {
    let decoder = Decoder::new(3);
    assert_eq!(decoder.protocol_version(), 3);
    assert!(!decoder.parallel_streaming());
    assert!(!decoder.in_stream_block());
    assert!(Decoder::new(4).with_parallel_streaming(true).parallel_streaming());
}

/// A Relation with no columns and the given identity byte.
fn bare_relation(identity: u8) -> Bytes {
    wire(&[b"R", &REL.to_be_bytes(), b"s\0t\0", &[identity], &[0, 0]])
}

#[test]
fn every_replica_identity_decodes() {
    for (byte, identity) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'f', ReplicaIdentity::Full),
        (b'i', ReplicaIdentity::Index),
    ] {
        let Ok(PgOutputMessage::Relation(relation)) = Decoder::new(1).decode(bare_relation(byte)) else {
            panic!("relation with identity {byte} did not decode");
        };
        assert_eq!(relation.replica_identity, identity);
    }
}

#[test]
fn invalid_replica_identity_is_rejected() {
    assert_eq!(
        Decoder::new(1).decode(bare_relation(b'x')),
        Err(DecodeError::InvalidReplicaIdentity { offset: 9, byte: b'x' })
    );
}

#[test]
fn update_old_tuple_kinds() {
    let old = row(vec![text("0"), TupleColumn::Null]);
    let old_bytes: &[u8] = &[0, 2, b't', 0, 0, 0, 1, b'0', b'n'];
    let new = row(vec![text("1"), TupleColumn::UnchangedToast]);
    let new_bytes: &[u8] = &[0, 2, b't', 0, 0, 0, 1, b'1', b'u'];
    for (marker, expected) in
        [(b'K', Some(OldTuple::Key(old.clone()))), (b'O', Some(OldTuple::Full(old.clone()))), (b'N', None)]
    {
        let payload = if marker == b'N' {
            wire(&[b"U", &REL.to_be_bytes(), b"N", new_bytes])
        } else {
            wire(&[b"U", &REL.to_be_bytes(), &[marker], old_bytes, b"N", new_bytes])
        };
        let Ok(PgOutputMessage::Update(update)) = Decoder::new(1).decode(payload) else {
            panic!("update with marker {marker} did not decode");
        };
        assert_eq!(update.old_tuple, expected);
        assert_eq!(update.new_tuple, new);
        if let Some(old_tuple) = &update.old_tuple {
            assert_eq!(old_tuple.tuple(), &old);
        }
    }
}

/// A one-column tuple holding the text `1`.
const ONE_TEXT_COLUMN: &[u8] = &[0, 1, b't', 0, 0, 0, 1, b'1'];

#[test]
fn update_with_bad_markers_is_rejected() {
    let bad_first = wire(&[b"U", &REL.to_be_bytes(), b"X", ONE_TEXT_COLUMN]);
    assert_eq!(
        Decoder::new(1).decode(bad_first),
        Err(DecodeError::UnexpectedByte { offset: 5, expected: "'K', 'O' or 'N'", found: b'X' })
    );
    // K then O: "never both" — the second marker must be N.
    let both = wire(&[b"U", &REL.to_be_bytes(), b"K", ONE_TEXT_COLUMN, b"O", ONE_TEXT_COLUMN]);
    let offset = 6 + ONE_TEXT_COLUMN.len();
    assert_eq!(Decoder::new(1).decode(both), Err(DecodeError::UnexpectedByte { offset, expected: "'N'", found: b'O' }));
}

#[test]
fn insert_and_delete_markers_are_checked() {
    let insert = wire(&[b"I", &REL.to_be_bytes(), b"K", ONE_TEXT_COLUMN]);
    assert!(matches!(Decoder::new(1).decode(insert), Err(DecodeError::UnexpectedByte { offset: 5, found: b'K', .. })));
    let delete = wire(&[b"D", &REL.to_be_bytes(), b"N", ONE_TEXT_COLUMN]);
    assert!(matches!(Decoder::new(1).decode(delete), Err(DecodeError::UnexpectedByte { offset: 5, found: b'N', .. })));
}

#[test]
fn unknown_tuple_kind_reports_offset() {
    let msg = wire(&[b"I", &REL.to_be_bytes(), b"N", &[0, 2], b"n", b"x"]);
    assert_eq!(Decoder::new(1).decode(msg), Err(DecodeError::UnknownTupleKind { offset: 9, kind: b'x' }));
}

#[test]
fn negative_lengths_are_rejected() {
    let insert_header = wire(&[b"I", &REL.to_be_bytes(), b"N", &[0, 1]]);
    let text_value = wire(&[&insert_header, b"t", &(-1_i32).to_be_bytes()]);
    assert_eq!(Decoder::new(1).decode(text_value), Err(DecodeError::NegativeLength { offset: 9, length: -1 }));
    let binary_value = wire(&[&insert_header, b"b", &i32::MIN.to_be_bytes()]);
    assert_eq!(Decoder::new(1).decode(binary_value), Err(DecodeError::NegativeLength { offset: 9, length: i32::MIN }));
    let content = wire(&[b"M", &[1], &1_u64.to_be_bytes(), b"p\0", &(-5_i32).to_be_bytes()]);
    assert_eq!(Decoder::new(1).decode(content), Err(DecodeError::NegativeLength { offset: 12, length: -5 }));
    let truncate = wire(&[b"T", &(-1_i32).to_be_bytes(), &[0]]);
    assert_eq!(Decoder::new(1).decode(truncate), Err(DecodeError::NegativeLength { offset: 1, length: -1 }));
}

#[test]
fn huge_counts_and_lengths_are_unexpected_eof() {
    // `tests/allocation.rs` checks that these also allocate no more than the payload's size.
    let tuple = wire(&[b"I", &REL.to_be_bytes(), b"N", &u16::MAX.to_be_bytes(), b"nnnnnnnnnn"]);
    assert_eq!(Decoder::new(1).decode(tuple), Err(DecodeError::UnexpectedEof { offset: 18, needed: 1 }));
    let relation = wire(&[b"R", &REL.to_be_bytes(), b"s\0t\0d", &u16::MAX.to_be_bytes()]);
    assert_eq!(Decoder::new(1).decode(relation), Err(DecodeError::UnexpectedEof { offset: 12, needed: 1 }));
    let truncate = wire(&[b"T", &i32::MAX.to_be_bytes(), &[0], &REL.to_be_bytes()]);
    assert_eq!(
        Decoder::new(1).decode(truncate),
        Err(DecodeError::UnexpectedEof { offset: 6, needed: 4 * i32::MAX as usize })
    );
    let value = wire(&[b"I", &REL.to_be_bytes(), b"N", &[0, 1], b"t", &i32::MAX.to_be_bytes(), b"abc"]);
    assert_eq!(
        Decoder::new(1).decode(value),
        Err(DecodeError::UnexpectedEof { offset: 13, needed: i32::MAX as usize })
    );
    let content = wire(&[b"M", &[0], &1_u64.to_be_bytes(), b"\0", &i32::MAX.to_be_bytes(), b"abc"]);
    assert_eq!(
        Decoder::new(1).decode(content),
        Err(DecodeError::UnexpectedEof { offset: 15, needed: i32::MAX as usize })
    );
}

#[test]
fn unterminated_strings_are_unexpected_eof() {
    let gid = wire(&[b"b", &[0; 28], b"gid-without-nul"]);
    assert_eq!(Decoder::new(3).decode(gid), Err(DecodeError::UnexpectedEof { offset: 29, needed: 16 }));
}

#[test]
fn invalid_utf8_in_names_is_rejected() {
    let relation = wire(&[b"R", &REL.to_be_bytes(), b"public\0", b"bad\xC3(\0", b"d", &[0, 0]]);
    assert_eq!(Decoder::new(1).decode(relation), Err(DecodeError::InvalidUtf8 { offset: 12 }));
    let gid = wire(&[b"b", &[0; 28], b"\xFF\0"]);
    assert_eq!(Decoder::new(3).decode(gid), Err(DecodeError::InvalidUtf8 { offset: 29 }));
}

#[test]
fn tuple_values_are_zero_copy_slices_of_the_payload() {
    let insert = PgOutputMessage::Insert(Insert {
        xid: None,
        relation: Oid(REL),
        new_tuple: row(vec![text("hello"), TupleColumn::Binary(Bytes::from_static(&[1, 2, 3]))]),
    });
    let payload = encode_for(&Decoder::new(1), &insert);
    let range = payload.as_ptr_range();
    let Ok(PgOutputMessage::Insert(decoded)) = Decoder::new(1).decode(payload.clone()) else {
        panic!("insert did not decode");
    };
    for column in &decoded.new_tuple.columns {
        let (TupleColumn::Text(value) | TupleColumn::Binary(value)) = column else {
            panic!("unexpected column {column:?}");
        };
        assert!(range.contains(&value.as_ptr()), "value was copied");
    }
    assert_eq!(PgOutputMessage::Insert(decoded), insert);
}

#[test]
fn truncate_option_bits_decode_independently() {
    for (bits, cascade, restart_identity) in [(0, false, false), (1, true, false), (2, false, true), (3, true, true)] {
        let msg = wire(&[b"T", &1_i32.to_be_bytes(), &[bits], &REL.to_be_bytes()]);
        let Ok(PgOutputMessage::Truncate(truncate)) = Decoder::new(1).decode(msg) else {
            panic!("truncate did not decode");
        };
        assert_eq!(truncate.options.cascade, cascade);
        assert_eq!(truncate.options.restart_identity, restart_identity);
        assert_eq!(truncate.relations, vec![Oid(REL)]);
    }
}

#[test]
fn decode_prefix_reads_the_front_message_and_reports_its_length() {
    for case in valid_cases() {
        let mut followed = case.payload.to_vec();
        followed.extend_from_slice(b"\nnext message");
        let followed = Bytes::from(followed);

        let mut decoder = case.decoder.clone();
        let (message, consumed) = decoder.decode_prefix(&followed).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(message, case.expected, "{}", case.name);
        assert_eq!(consumed, case.payload.len(), "{}", case.name);

        let mut whole = case.decoder.clone();
        whole.decode(case.payload.clone()).unwrap();
        assert_eq!(decoder.in_stream_block(), whole.in_stream_block(), "{}: same state as decode", case.name);

        let mut exact = case.decoder.clone();
        assert_eq!(exact.decode_prefix(&case.payload), Ok((case.expected.clone(), case.payload.len())));
    }
}

#[test]
fn decode_prefix_values_are_zero_copy_slices_of_the_buffer() {
    let buffer = wire(&[b"I", &REL.to_be_bytes(), b"N", &[0, 1], b"t", &2_i32.to_be_bytes(), b"hi", b"\n"]);
    let Ok((PgOutputMessage::Insert(insert), 15)) = Decoder::new(1).decode_prefix(&buffer) else {
        panic!("insert did not decode from the front of the buffer");
    };
    let TupleColumn::Text(value) = &insert.new_tuple.columns[0] else { panic!("not text") };
    assert_eq!(value, "hi");
    assert!(buffer.as_ptr_range().contains(&value.as_ptr()), "value was copied");
}

#[test]
fn decode_prefix_of_a_cut_message_is_unexpected_eof_and_keeps_state() {
    for case in valid_cases() {
        for cut in 0..case.payload.len() {
            let mut decoder = case.decoder.clone();
            let result = decoder.decode_prefix(&case.payload.slice(..cut));
            assert!(matches!(result, Err(DecodeError::UnexpectedEof { .. })), "{} cut at {cut}: {result:?}", case.name);
            assert_eq!(decoder.in_stream_block(), case.decoder.in_stream_block(), "{}", case.name);
        }
    }
}

/// Reads a `pg_recvlogical --file` style capture: messages back to back, each followed by `\n`.
fn read_capture(decoder: &mut Decoder, mut capture: Bytes) -> Result<Vec<PgOutputMessage>, DecodeError> {
    let mut messages = Vec::new();
    while !capture.is_empty() {
        let (message, consumed) = decoder.decode_prefix(&capture)?;
        assert_eq!(capture.get(consumed), Some(&b'\n'), "each message is followed by a newline");
        capture = capture.slice(consumed + 1..);
        messages.push(message);
    }
    Ok(messages)
}

#[test]
fn decode_prefix_walks_a_capture_file_with_stream_blocks() {
    let start = PgOutputMessage::StreamStart(StreamStart { xid: Xid(XID), first_segment: true });
    let relation = PgOutputMessage::Relation(users_relation(Some(Xid(SUBXID))));
    let insert = PgOutputMessage::Insert(Insert {
        xid: Some(Xid(SUBXID)),
        relation: Oid(REL),
        // A newline inside a value must not confuse the reader: only lengths delimit messages.
        new_tuple: row(vec![text("1"), text("a\nb"), TupleColumn::Null]),
    });
    let outside = PgOutputMessage::Insert(Insert { xid: None, relation: Oid(REL), new_tuple: row(vec![text("\n")]) });
    let messages = vec![start, relation, insert, PgOutputMessage::StreamStop, outside];

    let mut encoder = Encoder::new(2);
    let mut capture = BytesMut::new();
    for message in &messages {
        encoder.encode_into(message, &mut capture).unwrap();
        capture.put_u8(b'\n');
    }
    let mut decoder = Decoder::new(2);
    assert_eq!(read_capture(&mut decoder, capture.freeze()), Ok(messages));
    assert!(!decoder.in_stream_block());
}

#[test]
fn error_messages_are_lower_case_without_period() {
    let errors = [
        DecodeError::UnexpectedEof { offset: 1, needed: 2 },
        DecodeError::UnknownMessageTag { tag: b'Z' },
        DecodeError::TrailingBytes { offset: 3, remaining: 1 },
        DecodeError::StreamStopOutsideBlock,
        DecodeError::InvalidReplicaIdentity { offset: 9, byte: b'x' },
    ];
    for error in errors {
        let text = error.to_string();
        assert!(text.starts_with(|c: char| c.is_ascii_lowercase()), "{text}");
        assert!(!text.ends_with('.'), "{text}");
    }
    assert_eq!(DecodeError::UnknownMessageTag { tag: b'Z' }.to_string(), "unknown message tag 0x5a");
}
