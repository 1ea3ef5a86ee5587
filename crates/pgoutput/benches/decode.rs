//! Throughput of decoding typical row messages, per core.
//!
//! The row is an Insert of 8 columns of mixed types (`int8` id, `text` name, `numeric` price,
//! `timestamptz` created_at, `bool` flag, `int4` qty, `uuid` ref, small `jsonb` attrs), once
//! with every column in text format and once in binary format. Measured:
//!
//! * `decode`: [`Decoder::decode`] on the payload, columns left as bytes;
//! * `decode_and_convert`: the same, then [`TypeRegistry::decode_tuple`] on all 8 columns.
//!
//! Group `rows` reports row messages per second, group `bytes` the payload bytes per second.
//! Run with `cargo bench -p pgoutput --bench decode`.

use std::hint::black_box;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgoutput::value::type_oid;
use pgoutput::{Decoder, Oid, PgOutputMessage, Relation, RelationColumn, ReplicaIdentity, TypeRegistry, Value};

const RELATION_OID: u32 = 16_384;

/// The 8 columns: name, type and the value's text as PostgreSQL prints it.
const COLUMNS: [(&str, Oid, &str); 8] = [
    ("id", type_oid::INT8, "1234567"),
    ("name", type_oid::TEXT, "Ada Lovelace"),
    ("price", type_oid::NUMERIC, "1234.50"),
    ("created_at", type_oid::TIMESTAMPTZ, "2024-05-17 12:34:56.789012+00"),
    ("flag", type_oid::BOOL, "t"),
    ("qty", type_oid::INT4, "42"),
    ("ref", type_oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("attrs", type_oid::JSONB, r#"{"size": 42, "tags": ["a", "b"], "color": "red"}"#),
];

fn relation() -> Relation {
    Relation {
        xid: None,
        oid: Oid(RELATION_OID),
        namespace: "public".into(),
        name: "orders".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: COLUMNS
            .iter()
            .map(|(name, type_oid, _)| RelationColumn {
                is_key: *name == "id",
                name: (*name).into(),
                type_oid: *type_oid,
                type_modifier: -1,
            })
            .collect(),
    }
}

/// An Insert payload with the columns in text (`t`) or binary (`b`) format.
fn insert_payload(registry: &TypeRegistry, binary: bool) -> Bytes {
    let mut payload = BytesMut::new();
    payload.put_u8(b'I');
    payload.put_u32(RELATION_OID);
    payload.put_u8(b'N');
    payload.put_u16(COLUMNS.len() as u16);
    for (name, type_oid, text) in COLUMNS {
        let value: Value = registry.decode_text(type_oid, text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(value.to_pg_text().as_deref(), Some(text), "{name} is in canonical form");
        let (kind, bytes) =
            if binary { (b'b', value.to_pg_binary().expect("binary form")) } else { (b't', text.as_bytes().to_vec()) };
        payload.put_u8(kind);
        payload.put_i32(bytes.len() as i32);
        payload.put_slice(&bytes);
    }
    payload.freeze()
}

fn bench(c: &mut Criterion) {
    let registry = TypeRegistry::new();
    let relation = relation();
    let payloads = [("text", insert_payload(&registry, false)), ("binary", insert_payload(&registry, true))];
    for (format, payload) in &payloads {
        println!("{format} payload: {} bytes", payload.len());
    }

    for (group_name, per_bytes) in [("rows", false), ("bytes", true)] {
        let mut group = c.benchmark_group(group_name);
        for (format, payload) in &payloads {
            group.throughput(if per_bytes { Throughput::Bytes(payload.len() as u64) } else { Throughput::Elements(1) });
            let mut decoder = Decoder::new(1);
            group.bench_function(format!("decode/{format}"), |b| {
                b.iter(|| decoder.decode(black_box(payload.clone())).expect("decodes"))
            });
            group.bench_function(format!("decode_and_convert/{format}"), |b| {
                b.iter(|| {
                    let PgOutputMessage::Insert(insert) = decoder.decode(black_box(payload.clone())).expect("decodes")
                    else {
                        unreachable!("the payload is an Insert")
                    };
                    registry.decode_tuple(&relation, &insert.new_tuple).expect("converts")
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
