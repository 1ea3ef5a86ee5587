//! Property tests for value conversion: any valid value survives rendering to PostgreSQL text
//! and parsing back, and encoding to the binary send format and decoding back; arbitrary bytes
//! never make either decoder panic.
//!
//! Values are generated over PostgreSQL's whole valid range of each type (dates from
//! 4714-11-24 BC, every float bit pattern, numerics with up to 40 digits, ...), and arrays
//! with up to three dimensions, explicit lower bounds and NULL elements.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pgoutput::value::{type_oid as t, Array, ArrayDim, Date, Inet, Interval, Numeric, Time, TimeTz, Timestamp};
use pgoutput::{Oid, TypeRegistry, Value};
use proptest::prelude::*;

/// An enum type registered in [`registry`], and its array type.
const MOOD: Oid = Oid(16_500);
const MOOD_ARRAY: Oid = Oid(16_501);

/// Days since 2000-01-01 of 4714-11-24 BC, PostgreSQL's first date.
const FIRST_DATE: i32 = -2_451_545;
/// Days since 2000-01-01 of 5874898-01-01, just past PostgreSQL's last date.
const END_DATE: i32 = 2_145_031_949;
/// Microseconds since 2000-01-01 of 4714-11-24 00:00 BC, the first timestamp.
const FIRST_TIMESTAMP: i64 = FIRST_DATE as i64 * DAY;
/// Microseconds since 2000-01-01 of 294277-01-01 00:00, just past the last timestamp.
const END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;
const DAY: i64 = 86_400_000_000;

/// Every scalar type with its array type.
const TYPES: &[(Oid, Oid)] = &[
    (t::BOOL, t::BOOL_ARRAY),
    (t::INT2, t::INT2_ARRAY),
    (t::INT4, t::INT4_ARRAY),
    (t::INT8, t::INT8_ARRAY),
    (t::OID, t::OID_ARRAY),
    (t::FLOAT4, t::FLOAT4_ARRAY),
    (t::FLOAT8, t::FLOAT8_ARRAY),
    (t::NUMERIC, t::NUMERIC_ARRAY),
    (t::TEXT, t::TEXT_ARRAY),
    (t::BYTEA, t::BYTEA_ARRAY),
    (t::UUID, t::UUID_ARRAY),
    (t::DATE, t::DATE_ARRAY),
    (t::TIME, t::TIME_ARRAY),
    (t::TIMETZ, t::TIMETZ_ARRAY),
    (t::TIMESTAMP, t::TIMESTAMP_ARRAY),
    (t::TIMESTAMPTZ, t::TIMESTAMPTZ_ARRAY),
    (t::INTERVAL, t::INTERVAL_ARRAY),
    (t::JSON, t::JSON_ARRAY),
    (t::JSONB, t::JSONB_ARRAY),
    (t::XML, t::XML_ARRAY),
    (t::INET, t::INET_ARRAY),
    (t::CIDR, t::CIDR_ARRAY),
    (t::MACADDR, t::MACADDR_ARRAY),
    (t::MACADDR8, t::MACADDR8_ARRAY),
    (MOOD, MOOD_ARRAY),
];

fn registry() -> TypeRegistry {
    let mut registry = TypeRegistry::new();
    registry.register_enum(MOOD).expect("not built in");
    registry.register_array(MOOD_ARRAY, MOOD).expect("not built in");
    registry
}

/// A finite numeric as `numeric_out` prints it, built here independently of the crate.
fn numeric_text() -> impl Strategy<Value = String> {
    (any::<bool>(), "0|[1-9][0-9]{0,24}", "[0-9]{0,16}").prop_map(|(negative, integer, fraction)| {
        let is_zero = integer == "0" && fraction.bytes().all(|d| d == b'0');
        let sign = if negative && !is_zero { "-" } else { "" };
        let point = if fraction.is_empty() { "" } else { "." };
        format!("{sign}{integer}{point}{fraction}")
    })
}

fn numeric() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => numeric_text().prop_map(|text| {
            let numeric: Numeric = text.parse().expect("canonical numeric text parses");
            assert_eq!(numeric.as_str(), text, "canonical text is kept as is");
            Value::Numeric(numeric)
        }),
        1 => Just(Value::Numeric(Numeric::NaN)),
        1 => Just(Value::Numeric(Numeric::Infinity)),
        1 => Just(Value::Numeric(Numeric::NegativeInfinity)),
    ]
}

fn date() -> impl Strategy<Value = Date> {
    prop_oneof![
        8 => (FIRST_DATE..END_DATE).prop_map(Date),
        1 => Just(Date::INFINITY),
        1 => Just(Date::NEG_INFINITY),
        // Around the calendar's edges: year 1 BC/AD, leap days, the limits.
        2 => (-733_000..-729_000).prop_map(Date),
    ]
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        8 => (FIRST_TIMESTAMP..END_TIMESTAMP).prop_map(Timestamp),
        4 => (-1_000_000_000_000_i64..1_000_000_000_000).prop_map(Timestamp),
        1 => Just(Timestamp::INFINITY),
        1 => Just(Timestamp::NEG_INFINITY),
    ]
}

fn inet(is_cidr: bool) -> impl Strategy<Value = Inet> {
    let v4 = (any::<u32>(), 0u8..=32).prop_map(|(bits, prefix)| (IpAddr::V4(Ipv4Addr::from(bits)), prefix));
    let v6 = (any::<u128>(), 0u8..=128, 0usize..8).prop_map(|(bits, prefix, zero_groups)| {
        // Runs of zero groups exercise `::` compression and the embedded-IPv4 forms.
        let zeroed = bits & (u128::MAX.checked_shr(16 * zero_groups as u32).unwrap_or(0));
        (IpAddr::V6(Ipv6Addr::from(zeroed)), prefix)
    });
    prop_oneof![v4, v6].prop_map(move |(addr, prefix_len)| {
        let addr = if is_cidr { network_address(addr, prefix_len) } else { addr };
        Inet { addr, prefix_len }
    })
}

/// Clears the bits past the prefix, as a `cidr` requires.
fn network_address(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(v4.to_bits() & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(v6.to_bits() & mask))
        }
    }
}

/// A non-NULL value of the scalar type `oid`.
fn scalar(oid: Oid) -> BoxedStrategy<Value> {
    match oid {
        t::BOOL => any::<bool>().prop_map(Value::Bool).boxed(),
        t::INT2 => any::<i16>().prop_map(Value::Int2).boxed(),
        t::INT4 => any::<i32>().prop_map(Value::Int4).boxed(),
        t::INT8 => any::<i64>().prop_map(Value::Int8).boxed(),
        t::OID => any::<u32>().prop_map(|oid| Value::Oid(Oid(oid))).boxed(),
        t::FLOAT4 => prop_oneof![
            any::<u32>().prop_map(|bits| Value::Float4(f32::from_bits(bits))),
            prop::num::f32::ANY.prop_map(Value::Float4),
        ]
        .boxed(),
        t::FLOAT8 => prop_oneof![
            any::<u64>().prop_map(|bits| Value::Float8(f64::from_bits(bits))),
            prop::num::f64::ANY.prop_map(Value::Float8),
        ]
        .boxed(),
        t::NUMERIC => numeric().boxed(),
        t::TEXT => any::<String>().prop_map(Value::Text).boxed(),
        t::JSON => any::<String>().prop_map(Value::Json).boxed(),
        t::JSONB => any::<String>().prop_map(Value::Jsonb).boxed(),
        t::XML => any::<String>().prop_map(Value::Xml).boxed(),
        t::BYTEA => prop::collection::vec(any::<u8>(), 0..24).prop_map(|bytes| Value::Bytea(bytes.into())).boxed(),
        t::UUID => any::<[u8; 16]>().prop_map(Value::Uuid).boxed(),
        t::DATE => date().prop_map(Value::Date).boxed(),
        t::TIME => (0..=DAY).prop_map(|micros| Value::Time(Time(micros))).boxed(),
        t::TIMETZ => (0..=DAY, -57_599..=57_599)
            .prop_map(|(micros, utc_offset_seconds)| Value::TimeTz(TimeTz { time: Time(micros), utc_offset_seconds }))
            .boxed(),
        t::TIMESTAMP => timestamp().prop_map(Value::Timestamp).boxed(),
        t::TIMESTAMPTZ => timestamp().prop_map(Value::TimestampTz).boxed(),
        t::INTERVAL => (any::<i32>(), any::<i32>(), any::<i64>())
            .prop_map(|(months, days, micros)| Value::Interval(Interval { months, days, micros }))
            .boxed(),
        t::INET => inet(false).prop_map(Value::Inet).boxed(),
        t::CIDR => inet(true).prop_map(Value::Cidr).boxed(),
        t::MACADDR => any::<[u8; 6]>().prop_map(Value::MacAddr).boxed(),
        t::MACADDR8 => any::<[u8; 8]>().prop_map(Value::MacAddr8).boxed(),
        MOOD => any::<String>().prop_map(|label| Value::Enum { type_oid: MOOD, label }).boxed(),
        other => unreachable!("no strategy for type {other}"),
    }
}

/// An array of the element type `element`: up to 3 dimensions of 1 to 3 elements, default or
/// explicit lower bounds, about one element in five NULL; sometimes the empty array.
fn array(element: Oid) -> BoxedStrategy<Value> {
    let dims = prop::collection::vec((1u32..=3, prop_oneof![Just(1), -5i32..5]), 1..=3);
    let non_empty = dims
        .prop_flat_map(move |dims| {
            let count = dims.iter().map(|(len, _)| *len as usize).product::<usize>();
            let element_value = prop_oneof![1 => Just(Value::Null), 4 => scalar(element)];
            (Just(dims), prop::collection::vec(element_value, count))
        })
        .prop_map(move |(dims, elements)| {
            let dims = dims.into_iter().map(|(len, lower_bound)| ArrayDim { lower_bound, len }).collect();
            Value::Array(Array::new(element, dims, elements).expect("generated shape is valid"))
        });
    prop_oneof![
        9 => non_empty,
        1 => Just(Value::Array(Array::from_elements(element, vec![]).expect("empty array"))),
    ]
    .boxed()
}

/// A value and the type OID it belongs to.
fn typed_value() -> impl Strategy<Value = (Oid, Value)> {
    (0..TYPES.len(), any::<bool>()).prop_flat_map(|(index, as_array)| {
        let (scalar_oid, array_oid) = TYPES[index];
        if as_array {
            array(scalar_oid).prop_map(move |value| (array_oid, value)).boxed()
        } else {
            scalar(scalar_oid).prop_map(move |value| (scalar_oid, value)).boxed()
        }
    })
}

/// Every type OID the registry converts, plus one it does not.
fn any_type_oid() -> impl Strategy<Value = Oid> {
    prop_oneof![(0..TYPES.len()).prop_map(|i| TYPES[i].0), (0..TYPES.len()).prop_map(|i| TYPES[i].1), Just(Oid(600))]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn text_round_trip((oid, value) in typed_value()) {
        let text = value.to_pg_text().expect("non-NULL values have text");
        prop_assert_eq!(registry().decode_text(oid, text.as_bytes()), Ok(value), "text {:?}", text);
    }

    #[test]
    fn binary_round_trip((oid, value) in typed_value()) {
        let bytes = value.to_pg_binary().expect("converted values have a binary form");
        prop_assert_eq!(registry().decode_binary(oid, &bytes), Ok(value));
    }

    #[test]
    fn random_text_never_panics(oid in any_type_oid(), text in prop_oneof![
        any::<String>(),
        "[{}\",\\\\ NULL0-9a-f:.\\-+\\[\\]=]{0,40}",
    ]) {
        let _ = registry().decode_text(oid, text.as_bytes());
    }

    #[test]
    fn random_bytes_never_panic(oid in any_type_oid(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = registry().decode_binary(oid, &bytes);
    }

    #[test]
    fn mutated_binary_values_never_panic(
        (oid, value) in typed_value(),
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = value.to_pg_binary().expect("converted values have a binary form");
        if !bytes.is_empty() {
            let at = position.index(bytes.len());
            bytes[at] = byte;
            let _ = registry().decode_binary(oid, &bytes);
            bytes.truncate(cut.index(bytes.len()));
        }
        let _ = registry().decode_binary(oid, &bytes);
    }
}
