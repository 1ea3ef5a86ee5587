//! PostgreSQL values to BSON values, by [`TypeOptions`].
//!
//! Pure and exact unless the options ask otherwise: `numeric` becomes Decimal128 with the
//! same digits and scale, or is refused (or written as text) when it has more than 34
//! significant digits; a date/time outside years 1–9999 follows
//! `timestamp_out_of_range`; JSON keeps its key order and its numbers' values.

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, DateTime, Decimal128};
use pgoutput::value::{Array, Date, Numeric, Timestamp};
use pgoutput::Value;

use crate::config::{NumericFormat, OutOfRange, TimestampFormat, TypeOptions, Unrepresentable, UuidFormat};

/// Most significant digits a Decimal128 holds.
const DECIMAL128_DIGITS: usize = 34;
/// Largest exponent of a Decimal128 (coefficient × 10^exponent).
const DECIMAL128_MAX_EXPONENT: i64 = 6111;
/// 0001-01-01T00:00:00Z in milliseconds since 1970.
const MIN_DATETIME_MS: i64 = -62_135_596_800_000;
/// 9999-12-31T23:59:59.999Z in milliseconds since 1970.
const MAX_DATETIME_MS: i64 = 253_402_300_799_999;
/// Days from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const UNIX_TO_PG_EPOCH_DAYS: i64 = 10_957;
const MS_PER_DAY: i64 = 86_400_000;

/// A value the options say to refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueRejected {
    /// A `numeric` with more digits than Decimal128 holds.
    #[error("numeric {digits} significant digits long does not fit Decimal128 (34); set types.numeric_unrepresentable = \"string\" to store it as text")]
    NumericTooLong {
        /// Significant digits of the value.
        digits: usize,
    },
    /// A date/time outside years 1–9999 under `timestamp_out_of_range = "error"`.
    #[error("date/time {text} is outside years 1-9999; set types.timestamp_out_of_range to clamp, string or null")]
    DateOutOfRange {
        /// PostgreSQL's text of the value.
        text: String,
    },
    /// JSON text that does not parse (PostgreSQL validated it, so this means corrupt input).
    #[error("invalid JSON at byte {offset}: {reason}")]
    Json {
        /// Byte offset in the text.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Converts typed values to BSON under one set of options.
#[derive(Debug, Clone, Default)]
pub struct ValueEncoder {
    options: TypeOptions,
}

impl ValueEncoder {
    /// An encoder for `options`.
    pub fn new(options: TypeOptions) -> Self {
        ValueEncoder { options }
    }

    /// The options in use.
    pub fn options(&self) -> &TypeOptions {
        &self.options
    }

    /// The BSON value of `value`.
    pub fn to_bson(&self, value: &Value) -> Result<Bson, ValueRejected> {
        Ok(match value {
            Value::Null => Bson::Null,
            Value::Bool(b) => Bson::Boolean(*b),
            Value::Int2(i) => Bson::Int32(i32::from(*i)),
            Value::Int4(i) => Bson::Int32(*i),
            Value::Int8(i) => Bson::Int64(*i),
            Value::Oid(oid) => Bson::Int64(i64::from(oid.0)),
            Value::Float4(f) => Bson::Double(f64::from(*f)),
            Value::Float8(f) => Bson::Double(*f),
            Value::Numeric(numeric) => self.numeric(numeric)?,
            Value::Text(text) | Value::Xml(text) => Bson::String(text.clone()),
            Value::Enum { label, .. } => Bson::String(label.clone()),
            Value::Bytea(bytes) => binary(BinarySubtype::Generic, bytes),
            Value::UnknownBinary { bytes, .. } => binary(BinarySubtype::Generic, bytes),
            Value::Uuid(bytes) => match self.options.uuid {
                UuidFormat::Binary => binary(BinarySubtype::Uuid, bytes),
                UuidFormat::String => Bson::String(value.to_string()),
            },
            Value::Timestamp(ts) | Value::TimestampTz(ts) => self.timestamp(*ts, value)?,
            Value::Date(date) => self.date(*date, value)?,
            Value::Json(text) | Value::Jsonb(text) => crate::json::to_bson(text, self)?,
            Value::Array(array) => self.array(array)?,
            Value::Unknown { text, .. } => Bson::String(text.clone()),
            other => Bson::String(other.to_string()),
        })
    }

    fn numeric(&self, numeric: &Numeric) -> Result<Bson, ValueRejected> {
        match self.options.numeric {
            NumericFormat::String => Ok(Bson::String(numeric.as_str().to_owned())),
            NumericFormat::Double => Ok(Bson::Double(match numeric {
                Numeric::NaN => f64::NAN,
                Numeric::Infinity => f64::INFINITY,
                Numeric::NegativeInfinity => f64::NEG_INFINITY,
                // Canonical numeric text always parses as f64 (huge values become infinite).
                Numeric::Finite(decimal) => decimal.as_str().parse().unwrap_or(f64::NAN),
            })),
            NumericFormat::Decimal128 => self.decimal_text(numeric.as_str()),
        }
    }

    /// Decimal text (`-12.50`, `1e400`, `NaN`, `Infinity`) as Decimal128, exactly, or per
    /// `numeric_unrepresentable`.
    pub(crate) fn decimal_text(&self, text: &str) -> Result<Bson, ValueRejected> {
        match decimal128(text) {
            Ok(decimal) => Ok(Bson::Decimal128(decimal)),
            Err(digits) => match self.options.numeric_unrepresentable {
                Unrepresentable::String => Ok(Bson::String(text.to_owned())),
                Unrepresentable::Error => Err(ValueRejected::NumericTooLong { digits }),
            },
        }
    }

    fn timestamp(&self, ts: Timestamp, value: &Value) -> Result<Bson, ValueRejected> {
        if self.options.timestamps == TimestampFormat::String {
            return Ok(Bson::String(value.to_string()));
        }
        let millis = ts.to_unix_micros().map(|micros| micros.div_euclid(1000));
        self.datetime(millis, ts == Timestamp::NEG_INFINITY, value)
    }

    fn date(&self, date: Date, value: &Value) -> Result<Bson, ValueRejected> {
        if self.options.timestamps == TimestampFormat::String {
            return Ok(Bson::String(value.to_string()));
        }
        let millis = date.is_finite().then(|| (i64::from(date.0) + UNIX_TO_PG_EPOCH_DAYS) * MS_PER_DAY);
        self.datetime(millis, date == Date::NEG_INFINITY, value)
    }

    /// A DateTime from milliseconds since 1970 (`None` for an infinity), or the
    /// out-of-range policy's value.
    fn datetime(&self, millis: Option<i64>, negative_infinity: bool, value: &Value) -> Result<Bson, ValueRejected> {
        match millis {
            Some(ms) if (MIN_DATETIME_MS..=MAX_DATETIME_MS).contains(&ms) => {
                Ok(Bson::DateTime(DateTime::from_millis(ms)))
            }
            _ => match self.options.timestamp_out_of_range {
                OutOfRange::Clamp => {
                    let below = millis.map_or(negative_infinity, |ms| ms < MIN_DATETIME_MS);
                    let ms = if below { MIN_DATETIME_MS } else { MAX_DATETIME_MS };
                    Ok(Bson::DateTime(DateTime::from_millis(ms)))
                }
                OutOfRange::String => Ok(Bson::String(value.to_string())),
                OutOfRange::Null => Ok(Bson::Null),
                OutOfRange::Error => Err(ValueRejected::DateOutOfRange { text: value.to_string() }),
            },
        }
    }

    /// Nested BSON arrays, one level per dimension; NULL elements become null.
    fn array(&self, array: &Array) -> Result<Bson, ValueRejected> {
        let elements = array.elements().iter().map(|e| self.to_bson(e)).collect::<Result<Vec<_>, _>>()?;
        let lengths: Vec<usize> = array.dims().iter().map(|dim| dim.len as usize).collect();
        Ok(nest(elements, &lengths))
    }
}

/// Groups row-major `elements` into nested arrays of the given dimension lengths.
fn nest(elements: Vec<Bson>, lengths: &[usize]) -> Bson {
    match lengths {
        [] | [_] => Bson::Array(elements),
        [_, inner @ ..] => {
            let chunk: usize = inner.iter().product::<usize>().max(1);
            let mut rest = elements.into_iter();
            let mut outer = Vec::new();
            loop {
                let part: Vec<Bson> = rest.by_ref().take(chunk).collect();
                if part.is_empty() {
                    break;
                }
                outer.push(nest(part, inner));
            }
            Bson::Array(outer)
        }
    }
}

fn binary(subtype: BinarySubtype, bytes: &[u8]) -> Bson {
    Bson::Binary(Binary { subtype, bytes: bytes.to_vec() })
}

/// A decimal's sign, significant digits (no leading zeros) and the exponent of its last
/// digit; `None` when `text` is not plain decimal notation (`[-]digits[.digits][e[-]n]`).
/// Trailing zeros of the fraction are kept (they are the scale); those of an integer move
/// into the exponent.
pub(crate) fn decimal_parts(text: &str) -> Option<(bool, String, i64)> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, exponent.parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if integer.is_empty() && fraction.is_empty() || !integer.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut digits: String = integer.chars().chain(fraction.chars()).collect();
    let mut exponent = exponent.checked_sub(i64::try_from(fraction.len()).ok()?)?;
    if fraction.is_empty() && digits.bytes().any(|b| b != b'0') {
        let kept = digits.trim_end_matches('0').len();
        exponent = exponent.checked_add(i64::try_from(digits.len() - kept).ok()?)?;
        digits.truncate(kept);
    }
    let significant = digits.trim_start_matches('0');
    let digits = if significant.is_empty() { "0".to_owned() } else { significant.to_owned() };
    Some((negative, digits, exponent))
}

/// Decimal text as Decimal128 without rounding, or the number of significant digits
/// when that is impossible.
pub(crate) fn decimal128(text: &str) -> Result<Decimal128, usize> {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        // bson parses these three spellings itself.
        return text.parse().map_err(|_| 0);
    }
    let (negative, digits, exponent) = decimal_parts(text).ok_or(0usize)?;
    if digits.len() > DECIMAL128_DIGITS || exponent > DECIMAL128_MAX_EXPONENT {
        return Err(digits.len());
    }
    let sign = if negative { "-" } else { "" };
    // At most 34 digits and an exponent in range: bson stores it exactly. A scale beyond
    // Decimal128's smallest exponent (PostgreSQL allows 16383 fraction digits) would round.
    if exponent < -6176 {
        return Err(digits.len());
    }
    format!("{sign}{digits}E{exponent}").parse().map_err(|_| digits.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NullFormat;
    use pgoutput::value::ArrayDim;
    use pgoutput::TypeRegistry;

    fn typed(oid: u32, text: &str) -> Value {
        TypeRegistry::default().decode_text(pgoutput::Oid(oid), text.as_bytes()).unwrap()
    }

    fn encoder() -> ValueEncoder {
        ValueEncoder::default()
    }

    const NUMERIC: u32 = 1700;
    const TIMESTAMPTZ: u32 = 1184;
    const TIMESTAMP: u32 = 1114;
    const DATE: u32 = 1082;

    #[test]
    fn numerics_become_exact_decimal128_keeping_their_scale() {
        for text in ["12345678901234567890.123456789", "-0.000100", "0", "1.50", "NaN", "Infinity", "-Infinity"] {
            let Bson::Decimal128(decimal) = encoder().to_bson(&typed(NUMERIC, text)).unwrap() else {
                panic!("{text} is not a Decimal128");
            };
            let back = decimal.to_string();
            // bson prints exponent notation for some values; compare as decimal parts.
            assert_eq!(decimal_parts(&back), decimal_parts(text), "{text} came back as {back}");
        }
        let too_long = format!("{}.5", "9".repeat(40));
        assert_eq!(encoder().to_bson(&typed(NUMERIC, &too_long)), Err(ValueRejected::NumericTooLong { digits: 41 }));
    }

    #[test]
    fn too_long_numerics_follow_the_policy() {
        let long = format!("{}.5", "9".repeat(40));
        let as_string = ValueEncoder::new(TypeOptions {
            numeric_unrepresentable: Unrepresentable::String,
            ..TypeOptions::default()
        });
        assert_eq!(as_string.to_bson(&typed(NUMERIC, &long)).unwrap(), Bson::String(long.clone()));
        // Trailing integer zeros do not count: 1e39 has one significant digit.
        let round = format!("1{}", "0".repeat(39));
        assert!(matches!(encoder().to_bson(&typed(NUMERIC, &round)).unwrap(), Bson::Decimal128(_)));
        let text = ValueEncoder::new(TypeOptions { numeric: NumericFormat::String, ..TypeOptions::default() });
        assert_eq!(text.to_bson(&typed(NUMERIC, "1.50")).unwrap(), Bson::String("1.50".into()));
    }

    #[test]
    fn timestamps_are_utc_milliseconds() {
        let value = typed(TIMESTAMPTZ, "2024-03-01 12:34:56.789123+02");
        let expected = DateTime::parse_rfc3339_str("2024-03-01T10:34:56.789Z").unwrap();
        assert_eq!(encoder().to_bson(&value).unwrap(), Bson::DateTime(expected));
        let naive = typed(TIMESTAMP, "1969-12-31 23:59:59.9995");
        assert_eq!(encoder().to_bson(&naive).unwrap(), Bson::DateTime(DateTime::from_millis(-1)));
        let date = typed(DATE, "2000-01-02");
        assert_eq!(encoder().to_bson(&date).unwrap(), Bson::DateTime(DateTime::from_millis(946_771_200_000)));
    }

    #[test]
    fn out_of_range_dates_follow_the_policy() {
        let cases = [
            (OutOfRange::Clamp, Bson::DateTime(DateTime::from_millis(MAX_DATETIME_MS)), "infinity"),
            (OutOfRange::Clamp, Bson::DateTime(DateTime::from_millis(MIN_DATETIME_MS)), "-infinity"),
            (OutOfRange::Clamp, Bson::DateTime(DateTime::from_millis(MIN_DATETIME_MS)), "0044-03-15 00:00:00+00 BC"),
            (OutOfRange::Clamp, Bson::DateTime(DateTime::from_millis(MAX_DATETIME_MS)), "12000-01-01 00:00:00+00"),
            (OutOfRange::String, Bson::String("infinity".into()), "infinity"),
            (OutOfRange::Null, Bson::Null, "-infinity"),
        ];
        for (policy, expected, text) in cases {
            let encoder = ValueEncoder::new(TypeOptions { timestamp_out_of_range: policy, ..TypeOptions::default() });
            assert_eq!(encoder.to_bson(&typed(TIMESTAMPTZ, text)).unwrap(), expected, "{text} under {policy:?}");
        }
        let strict = ValueEncoder::new(TypeOptions { timestamp_out_of_range: OutOfRange::Error, ..Default::default() });
        assert!(matches!(strict.to_bson(&typed(DATE, "infinity")), Err(ValueRejected::DateOutOfRange { .. })));
    }

    #[test]
    fn uuids_bytea_and_arrays() {
        let uuid = typed(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        let Bson::Binary(binary) = encoder().to_bson(&uuid).unwrap() else { panic!("uuid is not binary") };
        assert_eq!(binary.subtype, BinarySubtype::Uuid);
        assert_eq!(binary.bytes[..2], [0xa0, 0xee]);
        let as_text =
            ValueEncoder::new(TypeOptions { uuid: UuidFormat::String, nulls: NullFormat::Null, ..Default::default() });
        assert_eq!(as_text.to_bson(&uuid).unwrap(), Bson::String("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()));
        let bytea = typed(17, "\\x00ff");
        assert_eq!(encoder().to_bson(&bytea).unwrap(), binary_of(&[0, 255]));
        let ints = typed(1007, "{{1,NULL},{3,4}}");
        assert_eq!(
            encoder().to_bson(&ints).unwrap(),
            Bson::Array(vec![
                Bson::Array(vec![Bson::Int32(1), Bson::Null]),
                Bson::Array(vec![Bson::Int32(3), Bson::Int32(4)])
            ])
        );
        let empty = Value::Array(Array::new(pgoutput::Oid(23), vec![], vec![]).unwrap());
        assert_eq!(encoder().to_bson(&empty).unwrap(), Bson::Array(vec![]));
        let one_dim = Value::Array(
            Array::new(pgoutput::Oid(25), vec![ArrayDim { lower_bound: 1, len: 1 }], vec![Value::Null]).unwrap(),
        );
        assert_eq!(encoder().to_bson(&one_dim).unwrap(), Bson::Array(vec![Bson::Null]));
    }

    fn binary_of(bytes: &[u8]) -> Bson {
        binary(BinarySubtype::Generic, bytes)
    }

    #[test]
    fn decimal_parts_normalise() {
        assert_eq!(decimal_parts("00120"), Some((false, "12".into(), 1)));
        assert_eq!(decimal_parts("-0.0100"), Some((true, "100".into(), -4)));
        assert_eq!(decimal_parts("1.5e3"), Some((false, "15".into(), 2)));
        assert_eq!(decimal_parts("x1"), None);
        assert_eq!(decimal_parts("."), None);
    }
}
