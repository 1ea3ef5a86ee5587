//! PostgreSQL → CQL types and values; pure, no I/O.
//!
//! Two directions meet here:
//! - [`cql_type_for`] names the CQL type a column gets when the sink creates
//!   the table (schema management): `numeric` → `decimal`, `timestamptz` →
//!   `timestamp`, arrays → `list<…>`, `jsonb` → `text`, `bytea` → `blob`,
//!   enums → `text`, …;
//! - [`to_cql`] converts a typed PostgreSQL value to the CQL type the target
//!   column *actually has* (read from the prepared statement's metadata), so
//!   tables created by hand with other types work as long as the value fits:
//!   any value goes to a `text` column as PostgreSQL prints it, `int4` to a
//!   `bigint`, a `jsonb` object to a `map<text, text>`, and so on.
//!
//! Invariants: a conversion never loses information silently except where
//! the CQL type is coarser by definition and the docs say so (`timestamp`
//! keeps milliseconds: microseconds are truncated towards the past; `inet`
//! has no prefix length, so only host addresses fit); anything else that
//! does not fit is a [`ConversionError`], which the sink reports as a
//! rejected value (permanent), never a panic.

use std::fmt::Write as _;

use pgoutput::value::{Array, Numeric, ScalarType, TypeKind, MAX_DOMAIN_DEPTH};
use pgoutput::{Oid, TypeRegistry, Value};
use scylla::cluster::metadata::{CollectionType, ColumnType, NativeType};
use scylla::value::{CqlDate, CqlDecimal, CqlDuration, CqlTime, CqlTimestamp, CqlValue, CqlVarint};

/// Days between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const UNIX_TO_PG_EPOCH_DAYS: i64 = 10_957;
/// CQL `date` counts days with 1970-01-01 at 2^31.
const CQL_DATE_UNIX_EPOCH: i64 = 1 << 31;

/// Why a value does not fit its target column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {pg_type} value does not fit CQL type {cql_type}: {reason}")]
pub struct ConversionError {
    /// PostgreSQL side, e.g. `numeric`.
    pub pg_type: &'static str,
    /// CQL side, e.g. `decimal`.
    pub cql_type: String,
    /// What does not fit and what to change.
    pub reason: &'static str,
}

/// The CQL type a column of PostgreSQL type `type_oid` gets in a created
/// table. Types pgfanout cannot convert (composites, ranges, extension types)
/// become `text`: their PostgreSQL text is written.
pub fn cql_type_for(type_oid: Oid, registry: &TypeRegistry) -> String {
    let mut oid = type_oid;
    for _ in 0..=MAX_DOMAIN_DEPTH {
        match registry.kind(oid) {
            Some(TypeKind::Domain { base }) => oid = base,
            Some(TypeKind::Scalar(scalar)) => return scalar_cql_type(scalar).to_owned(),
            Some(TypeKind::Array { element }) => {
                let element = cql_type_for(element, registry);
                // Nested collections must be frozen in CQL.
                return if element.starts_with("list<") {
                    format!("list<frozen<{element}>>")
                } else {
                    format!("list<{element}>")
                };
            }
            Some(TypeKind::Enum) | None => return "text".to_owned(),
        }
    }
    "text".to_owned()
}

fn scalar_cql_type(scalar: ScalarType) -> &'static str {
    match scalar {
        ScalarType::Bool => "boolean",
        ScalarType::Int2 => "smallint",
        ScalarType::Int4 => "int",
        ScalarType::Int8 | ScalarType::Oid => "bigint",
        ScalarType::Float4 => "float",
        ScalarType::Float8 => "double",
        ScalarType::Numeric => "decimal",
        ScalarType::Bytea => "blob",
        ScalarType::Uuid => "uuid",
        ScalarType::Date => "date",
        ScalarType::Time => "time",
        ScalarType::Timestamp | ScalarType::TimestampTz => "timestamp",
        ScalarType::Interval => "duration",
        ScalarType::Inet => "inet",
        ScalarType::Text
        | ScalarType::TimeTz
        | ScalarType::Json
        | ScalarType::Jsonb
        | ScalarType::Xml
        | ScalarType::Cidr
        | ScalarType::MacAddr
        | ScalarType::MacAddr8 => "text",
        // ScalarType is not exhaustive across pgoutput versions: text always fits.
        #[allow(unreachable_patterns)]
        _ => "text",
    }
}

/// Converts `value` for a column of CQL type `target`; `None` is CQL NULL.
pub fn to_cql(value: &Value, target: &ColumnType<'_>) -> Result<Option<CqlValue>, ConversionError> {
    if value.is_null() {
        return Ok(None);
    }
    let mismatch =
        |reason: &'static str| ConversionError { pg_type: pg_type_name(value), cql_type: cql_name(target), reason };
    let converted = match target {
        ColumnType::Native(NativeType::Text) => CqlValue::Text(pg_text(value)),
        ColumnType::Native(NativeType::Ascii) => {
            let text = pg_text(value);
            if !text.is_ascii() {
                return Err(mismatch("the text is not ASCII; use a text column"));
            }
            CqlValue::Ascii(text)
        }
        ColumnType::Native(native) => native_value(value, native).ok_or_else(|| mismatch(native_hint(native)))??,
        ColumnType::Collection { typ: CollectionType::List(element), .. } => {
            CqlValue::List(collection_elements(value, element).map_err(mismatch)?)
        }
        ColumnType::Collection { typ: CollectionType::Set(element), .. } => {
            CqlValue::Set(collection_elements(value, element).map_err(mismatch)?)
        }
        ColumnType::Collection { typ: CollectionType::Map(key, item), .. } => {
            let text = |t: &ColumnType<'_>| matches!(t, ColumnType::Native(NativeType::Text | NativeType::Ascii));
            if !(text(key) && text(item)) {
                return Err(mismatch("only map<text, text> columns are filled (from json/jsonb objects)"));
            }
            CqlValue::Map(json_object_entries(value).map_err(mismatch)?)
        }
        _ => return Err(mismatch("tuples, vectors and user types are not written by pgfanout")),
    };
    Ok(Some(converted))
}

/// A native CQL value, `None` when the pair of types does not convert,
/// `Some(Err)` when the types match but this value does not fit.
fn native_value(value: &Value, native: &NativeType) -> Option<Result<CqlValue, ConversionError>> {
    let fits = |reason: &'static str| ConversionError {
        pg_type: pg_type_name(value),
        cql_type: native_name(native).to_owned(),
        reason,
    };
    let integer = match value {
        Value::Int2(v) => Some(i64::from(*v)),
        Value::Int4(v) => Some(i64::from(*v)),
        Value::Int8(v) => Some(*v),
        Value::Oid(v) => Some(i64::from(v.0)),
        _ => None,
    };
    let out_of_range = || fits("the value is out of the column's range");
    Some(Ok(match (native, value) {
        (NativeType::Boolean, Value::Bool(v)) => CqlValue::Boolean(*v),
        (NativeType::TinyInt, _) if integer.is_some() => match integer.and_then(|v| i8::try_from(v).ok()) {
            Some(v) => CqlValue::TinyInt(v),
            None => return Some(Err(out_of_range())),
        },
        (NativeType::SmallInt, _) if integer.is_some() => match integer.and_then(|v| i16::try_from(v).ok()) {
            Some(v) => CqlValue::SmallInt(v),
            None => return Some(Err(out_of_range())),
        },
        (NativeType::Int, _) if integer.is_some() => match integer.and_then(|v| i32::try_from(v).ok()) {
            Some(v) => CqlValue::Int(v),
            None => return Some(Err(out_of_range())),
        },
        (NativeType::BigInt, _) => CqlValue::BigInt(integer?),
        (NativeType::Varint, _) => CqlValue::Varint(CqlVarint::from_signed_bytes_be(integer?.to_be_bytes().to_vec())),
        (NativeType::Float, Value::Float4(v)) => CqlValue::Float(*v),
        (NativeType::Double, Value::Float4(v)) => CqlValue::Double(f64::from(*v)),
        (NativeType::Double, Value::Float8(v)) => CqlValue::Double(*v),
        (NativeType::Decimal, Value::Numeric(numeric)) => match numeric {
            Numeric::Finite(decimal) => {
                let (bytes, scale) = decimal_to_unscaled(decimal.as_str());
                CqlValue::Decimal(CqlDecimal::from_signed_be_bytes_and_exponent(bytes, scale))
            }
            _ => return Some(Err(fits("NaN and infinities have no decimal form; use a text column"))),
        },
        (NativeType::Decimal, _) => {
            CqlValue::Decimal(CqlDecimal::from_signed_be_bytes_and_exponent(minimal_twos_complement(integer?), 0))
        }
        (NativeType::Blob, Value::Bytea(bytes)) => CqlValue::Blob(bytes.to_vec()),
        (NativeType::Blob, Value::UnknownBinary { bytes, .. }) => CqlValue::Blob(bytes.to_vec()),
        (NativeType::Uuid, Value::Uuid(bytes)) => CqlValue::Uuid(uuid::Uuid::from_bytes(*bytes)),
        (NativeType::Timeuuid, Value::Uuid(bytes)) => CqlValue::Timeuuid(uuid::Uuid::from_bytes(*bytes).into()),
        (NativeType::Timestamp, Value::Timestamp(ts) | Value::TimestampTz(ts)) => match ts.to_unix_micros() {
            Some(micros) => CqlValue::Timestamp(CqlTimestamp(micros.div_euclid(1000))),
            None => return Some(Err(fits("infinity has no timestamp form; use a text column"))),
        },
        (NativeType::Timestamp, Value::Date(date)) if date.is_finite() => {
            CqlValue::Timestamp(CqlTimestamp((i64::from(date.0) + UNIX_TO_PG_EPOCH_DAYS) * 86_400_000))
        }
        (NativeType::Date, Value::Date(date)) => {
            if !date.is_finite() {
                return Some(Err(fits("infinity has no date form; use a text column")));
            }
            // PostgreSQL's date range lies well inside CQL's 2^32 days.
            match u32::try_from(i64::from(date.0) + UNIX_TO_PG_EPOCH_DAYS + CQL_DATE_UNIX_EPOCH) {
                Ok(days) => CqlValue::Date(CqlDate(days)),
                Err(_) => return Some(Err(out_of_range())),
            }
        }
        (NativeType::Time, Value::Time(time)) => CqlValue::Time(CqlTime(time.0.saturating_mul(1000))),
        (NativeType::Duration, Value::Interval(interval)) => CqlValue::Duration(CqlDuration {
            months: interval.months,
            days: interval.days,
            nanoseconds: interval.micros.saturating_mul(1000),
        }),
        (NativeType::Inet, Value::Inet(inet)) => {
            let host_length = if inet.addr.is_ipv4() { 32 } else { 128 };
            if inet.prefix_len != host_length {
                return Some(Err(fits("CQL inet holds no prefix length; use a text column for networks")));
            }
            CqlValue::Inet(inet.addr)
        }
        _ => return None,
    }))
}

/// Elements of an array for a list or set column; NULL elements and
/// multi-dimensional arrays do not fit.
fn collection_elements(value: &Value, element: &ColumnType<'_>) -> Result<Vec<CqlValue>, &'static str> {
    let Value::Array(array) = value else { return Err("only arrays are written to list and set columns") };
    if array.dims().len() > 1 {
        return Err("multi-dimensional arrays are written only to text columns");
    }
    array_elements(array, element)
}

fn array_elements(array: &Array, element: &ColumnType<'_>) -> Result<Vec<CqlValue>, &'static str> {
    array
        .elements()
        .iter()
        .map(|item| match to_cql(item, element) {
            Ok(Some(converted)) => Ok(converted),
            Ok(None) => Err("CQL collections cannot hold NULL elements"),
            Err(err) => Err(err.reason),
        })
        .collect()
}

/// A JSON object's entries as text pairs: strings as themselves, other
/// values as their JSON text.
fn json_object_entries(value: &Value) -> Result<Vec<(CqlValue, CqlValue)>, &'static str> {
    let (Value::Json(text) | Value::Jsonb(text)) = value else {
        return Err("only json and jsonb objects are written to map columns");
    };
    let parsed: serde_json::Value = serde_json::from_str(text).map_err(|_| "the json text does not parse")?;
    let serde_json::Value::Object(entries) = parsed else { return Err("only json objects are written to map columns") };
    Ok(entries
        .into_iter()
        .map(|(key, item)| {
            let item = match item {
                serde_json::Value::String(text) => text,
                other => other.to_string(),
            };
            (CqlValue::Text(key), CqlValue::Text(item))
        })
        .collect())
}

/// PostgreSQL's text for a value (unknown binary values as `\x` hex).
fn pg_text(value: &Value) -> String {
    value.to_pg_text().unwrap_or_else(|| value.to_string())
}

/// A canonical `numeric` text (`-12.50`) as CQL decimal parts: the unscaled
/// integer in minimal big-endian two's complement, and the scale.
pub fn decimal_to_unscaled(text: &str) -> (Vec<u8>, i32) {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let scale = unsigned.find('.').map_or(0, |point| unsigned.len() - point - 1);
    // Base-256 magnitude, most significant byte first, built digit by digit.
    let mut magnitude: Vec<u8> = Vec::new();
    for digit in unsigned.bytes().filter(u8::is_ascii_digit) {
        let mut carry = u32::from(digit - b'0');
        for byte in magnitude.iter_mut().rev() {
            let next = u32::from(*byte) * 10 + carry;
            *byte = (next & 0xFF) as u8;
            carry = next >> 8;
        }
        while carry > 0 {
            magnitude.insert(0, (carry & 0xFF) as u8);
            carry >>= 8;
        }
    }
    let first = magnitude.iter().position(|&b| b != 0).unwrap_or(magnitude.len());
    let mut bytes = magnitude.split_off(first);
    if bytes.is_empty() {
        bytes.push(0);
    } else if negative {
        negate_twos_complement(&mut bytes);
    } else if bytes[0] & 0x80 != 0 {
        bytes.insert(0, 0);
    }
    // numeric scales are at most 16383, far inside i32.
    (bytes, i32::try_from(scale).unwrap_or(i32::MAX))
}

/// Turns a non-zero magnitude into its negative in two's complement,
/// adding a sign byte where the top bit would read positive.
fn negate_twos_complement(bytes: &mut Vec<u8>) {
    // A magnitude above 0x80 00.. needs one more byte before negating.
    if bytes[0] & 0x80 != 0 && !(bytes[0] == 0x80 && bytes[1..].iter().all(|&b| b == 0)) {
        bytes.insert(0, 0);
    }
    let mut carry = true;
    for byte in bytes.iter_mut().rev() {
        let (inverted, overflow) = (!*byte).overflowing_add(u8::from(carry));
        *byte = inverted;
        carry = carry && overflow;
    }
}

/// The shortest big-endian two's complement of `value`.
fn minimal_twos_complement(value: i64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let mut start = 0;
    // Drop a leading byte while the next one carries the same sign.
    while start < 7 {
        let (lead, next) = (bytes[start], bytes[start + 1]);
        if (lead == 0 && next & 0x80 == 0) || (lead == 0xFF && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    bytes[start..].to_vec()
}

fn pg_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Int2(_) => "int2",
        Value::Int4(_) => "int4",
        Value::Int8(_) => "int8",
        Value::Oid(_) => "oid",
        Value::Float4(_) => "float4",
        Value::Float8(_) => "float8",
        Value::Numeric(_) => "numeric",
        Value::Text(_) => "text",
        Value::Bytea(_) => "bytea",
        Value::Uuid(_) => "uuid",
        Value::Date(_) => "date",
        Value::Time(_) => "time",
        Value::TimeTz(_) => "timetz",
        Value::Timestamp(_) => "timestamp",
        Value::TimestampTz(_) => "timestamptz",
        Value::Interval(_) => "interval",
        Value::Json(_) => "json",
        Value::Jsonb(_) => "jsonb",
        Value::Xml(_) => "xml",
        Value::Inet(_) => "inet",
        Value::Cidr(_) => "cidr",
        Value::MacAddr(_) => "macaddr",
        Value::MacAddr8(_) => "macaddr8",
        Value::Enum { .. } => "enum",
        Value::Array(_) => "array",
        Value::Unknown { .. } | Value::UnknownBinary { .. } => "unconverted",
    }
}

fn native_name(native: &NativeType) -> &'static str {
    match native {
        NativeType::Ascii => "ascii",
        NativeType::Boolean => "boolean",
        NativeType::Blob => "blob",
        NativeType::Counter => "counter",
        NativeType::Date => "date",
        NativeType::Decimal => "decimal",
        NativeType::Double => "double",
        NativeType::Duration => "duration",
        NativeType::Float => "float",
        NativeType::Int => "int",
        NativeType::BigInt => "bigint",
        NativeType::Text => "text",
        NativeType::Timestamp => "timestamp",
        NativeType::Inet => "inet",
        NativeType::SmallInt => "smallint",
        NativeType::TinyInt => "tinyint",
        NativeType::Time => "time",
        NativeType::Timeuuid => "timeuuid",
        NativeType::Uuid => "uuid",
        NativeType::Varint => "varint",
        _ => "a newer native type",
    }
}

fn native_hint(native: &NativeType) -> &'static str {
    match native {
        NativeType::Counter => "counter columns cannot be set; use bigint",
        _ => "the types do not convert; change the column's CQL type (text takes any value)",
    }
}

/// A CQL type's name for messages, e.g. `list<int>`.
fn cql_name(target: &ColumnType<'_>) -> String {
    let mut name = String::new();
    match target {
        ColumnType::Native(native) => name.push_str(native_name(native)),
        ColumnType::Collection { typ: CollectionType::List(element), .. } => {
            let _ = write!(name, "list<{}>", cql_name(element));
        }
        ColumnType::Collection { typ: CollectionType::Set(element), .. } => {
            let _ = write!(name, "set<{}>", cql_name(element));
        }
        ColumnType::Collection { typ: CollectionType::Map(key, item), .. } => {
            let _ = write!(name, "map<{}, {}>", cql_name(key), cql_name(item));
        }
        _ => name.push_str("a tuple, vector or user type"),
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgoutput::value::{Date, Inet, Timestamp};

    fn native(native: NativeType) -> ColumnType<'static> {
        ColumnType::Native(native)
    }

    #[test]
    fn decimals_become_unscaled_twos_complement() {
        assert_eq!(decimal_to_unscaled("0"), (vec![0], 0));
        assert_eq!(decimal_to_unscaled("0.00"), (vec![0], 2));
        assert_eq!(decimal_to_unscaled("127"), (vec![0x7F], 0));
        assert_eq!(decimal_to_unscaled("128"), (vec![0x00, 0x80], 0));
        assert_eq!(decimal_to_unscaled("255"), (vec![0x00, 0xFF], 0));
        assert_eq!(decimal_to_unscaled("-1"), (vec![0xFF], 0));
        assert_eq!(decimal_to_unscaled("-128"), (vec![0x80], 0));
        assert_eq!(decimal_to_unscaled("-129"), (vec![0xFF, 0x7F], 0));
        assert_eq!(decimal_to_unscaled("-0.0256"), (vec![0xFF, 0x00], 4));
        assert_eq!(decimal_to_unscaled("120.50"), (12050i64.to_be_bytes()[6..].to_vec(), 2));
        // Beyond 64 bits: 2^64 = 18446744073709551616.
        assert_eq!(decimal_to_unscaled("18446744073709551616"), (vec![1, 0, 0, 0, 0, 0, 0, 0, 0], 0));
        assert_eq!(decimal_to_unscaled("-18446744073709551616.5").1, 1);
    }

    #[test]
    fn decimals_agree_with_i64_for_every_small_value() {
        for value in [
            -65_537i64,
            -65_536,
            -32_769,
            -32_768,
            -256,
            -255,
            -2,
            0,
            1,
            32_767,
            32_768,
            65_535,
            i64::MAX,
            i64::MIN + 1,
        ] {
            assert_eq!(decimal_to_unscaled(&value.to_string()).0, minimal_twos_complement(value), "{value}");
        }
    }

    #[test]
    fn scalars_convert_to_their_natural_cql_types() {
        assert_eq!(to_cql(&Value::Int4(7), &native(NativeType::Int)), Ok(Some(CqlValue::Int(7))));
        assert_eq!(to_cql(&Value::Int4(7), &native(NativeType::BigInt)), Ok(Some(CqlValue::BigInt(7))));
        assert!(to_cql(&Value::Int8(1 << 40), &native(NativeType::Int)).is_err(), "narrowing out of range");
        assert_eq!(to_cql(&Value::Null, &native(NativeType::Int)), Ok(None));
        assert_eq!(to_cql(&Value::Bool(true), &native(NativeType::Boolean)), Ok(Some(CqlValue::Boolean(true))));
        // 2000-01-02 00:00:00.001999 UTC → 946771200001 ms.
        let ts = Value::TimestampTz(Timestamp(86_400_000_000 + 1_999));
        assert_eq!(
            to_cql(&ts, &native(NativeType::Timestamp)),
            Ok(Some(CqlValue::Timestamp(CqlTimestamp(946_771_200_001))))
        );
        // Before 1970, microseconds truncate towards the past.
        let early = Value::Timestamp(Timestamp(-946_684_800_000_000 - 1));
        assert_eq!(to_cql(&early, &native(NativeType::Timestamp)), Ok(Some(CqlValue::Timestamp(CqlTimestamp(-1)))));
        assert_eq!(
            to_cql(&Value::Date(Date(0)), &native(NativeType::Date)),
            Ok(Some(CqlValue::Date(CqlDate((1 << 31) + 10_957))))
        );
        assert!(to_cql(&Value::Date(Date::INFINITY), &native(NativeType::Date)).is_err());
        let uuid = [7u8; 16];
        assert_eq!(
            to_cql(&Value::Uuid(uuid), &native(NativeType::Uuid)),
            Ok(Some(CqlValue::Uuid(uuid::Uuid::from_bytes(uuid))))
        );
        let host = Inet { addr: "10.1.2.3".parse().unwrap(), prefix_len: 32 };
        assert_eq!(to_cql(&Value::Inet(host), &native(NativeType::Inet)), Ok(Some(CqlValue::Inet(host.addr))));
        let network = Inet { addr: "10.0.0.0".parse().unwrap(), prefix_len: 8 };
        assert!(to_cql(&Value::Inet(network), &native(NativeType::Inet)).is_err());
        assert_eq!(
            to_cql(&Value::Inet(network), &native(NativeType::Text)),
            Ok(Some(CqlValue::Text("10.0.0.0/8".into())))
        );
        let bytes = Value::Bytea(bytes::Bytes::from_static(b"\x00\xff"));
        assert_eq!(to_cql(&bytes, &native(NativeType::Blob)), Ok(Some(CqlValue::Blob(vec![0, 255]))));
        let numeric: Numeric = "-12.50".parse().unwrap();
        assert_eq!(
            to_cql(&Value::Numeric(numeric), &native(NativeType::Decimal)),
            Ok(Some(CqlValue::Decimal(CqlDecimal::from_signed_be_bytes_and_exponent(vec![0xFB, 0x1E], 2))))
        );
        assert!(to_cql(&Value::Numeric(Numeric::NaN), &native(NativeType::Decimal)).is_err());
        let label = Value::Enum { type_oid: Oid(90_000), label: "paid".into() };
        assert_eq!(to_cql(&label, &native(NativeType::Text)), Ok(Some(CqlValue::Text("paid".into()))));
        let err = to_cql(&Value::Text("x".into()), &native(NativeType::Int)).unwrap_err();
        assert_eq!((err.pg_type, err.cql_type.as_str()), ("text", "int"));
    }

    #[test]
    fn arrays_become_lists_and_json_objects_maps() {
        let array = Array::from_elements(Oid(23), vec![Value::Int4(1), Value::Int4(2)]).unwrap();
        let list =
            ColumnType::Collection { frozen: false, typ: CollectionType::List(Box::new(native(NativeType::Int))) };
        assert_eq!(
            to_cql(&Value::Array(array), &list),
            Ok(Some(CqlValue::List(vec![CqlValue::Int(1), CqlValue::Int(2)])))
        );
        let with_null = Array::from_elements(Oid(23), vec![Value::Int4(1), Value::Null]).unwrap();
        assert!(to_cql(&Value::Array(with_null), &list).is_err());
        let map = ColumnType::Collection {
            frozen: false,
            typ: CollectionType::Map(Box::new(native(NativeType::Text)), Box::new(native(NativeType::Text))),
        };
        let json = Value::Jsonb(r#"{"a": "x", "b": 2, "c": {"d": null}}"#.into());
        assert_eq!(
            to_cql(&json, &map),
            Ok(Some(CqlValue::Map(vec![
                (CqlValue::Text("a".into()), CqlValue::Text("x".into())),
                (CqlValue::Text("b".into()), CqlValue::Text("2".into())),
                (CqlValue::Text("c".into()), CqlValue::Text(r#"{"d":null}"#.into())),
            ])))
        );
        assert!(to_cql(&Value::Jsonb("[1]".into()), &map).is_err());
        assert_eq!(
            to_cql(&json, &native(NativeType::Text)),
            Ok(Some(CqlValue::Text(r#"{"a": "x", "b": 2, "c": {"d": null}}"#.into())))
        );
    }

    #[test]
    fn created_columns_get_mapped_types() {
        let registry = TypeRegistry::new();
        let name = |oid: u32| cql_type_for(Oid(oid), &registry);
        assert_eq!(name(1700), "decimal");
        assert_eq!(name(1184), "timestamp");
        assert_eq!(name(1082), "date");
        assert_eq!(name(2950), "uuid");
        assert_eq!(name(869), "inet");
        assert_eq!(name(3802), "text");
        assert_eq!(name(17), "blob");
        assert_eq!(name(1007), "list<int>");
        assert_eq!(name(20), "bigint");
        assert_eq!(name(16), "boolean");
        assert_eq!(name(701), "double");
        assert_eq!(name(99_999), "text", "unknown types are written as text");
    }
}
