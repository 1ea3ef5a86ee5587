//! The text format: parsing each [`ScalarType`]'s output text, and rendering any [`Value`] the
//! way PostgreSQL's output functions print it (see the `value` module documentation for the
//! session settings assumed).

use std::fmt::{self, Write as _};

use bytes::Bytes;

use super::datetime::{Date, Interval, Time, TimeTz, Timestamp};
use super::error::invalid_text;
use super::network::{hex_value, parse_mac, write_mac, Inet};
use super::numeric::Numeric;
use super::{array, ScalarType};
use crate::{Oid, Value, ValueError};

/// Converts the output text of a built-in type.
///
/// Only text-like types (`text`, `json`, `jsonb`, `xml`) check that the bytes are UTF-8, which
/// is then [`ValueError::InvalidUtf8`]; the other grammars are ASCII and are parsed from the
/// bytes directly, so anything else in them is [`ValueError::InvalidText`]. Validating UTF-8
/// first for every column was the largest single cost of text conversion.
pub(crate) fn decode_scalar(scalar: ScalarType, type_oid: Oid, bytes: &[u8]) -> Result<Value, ValueError> {
    let utf8 = || {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|err| ValueError::InvalidUtf8 { type_oid, valid_up_to: err.valid_up_to() })
    };
    let ascii = |bytes| std::str::from_utf8(bytes).map_err(|_| "not ASCII");
    let parsed = match scalar {
        ScalarType::Text => return utf8().map(Value::Text),
        ScalarType::Json => return utf8().map(Value::Json),
        ScalarType::Jsonb => return utf8().map(Value::Jsonb),
        ScalarType::Xml => return utf8().map(Value::Xml),
        ScalarType::Bool => match bytes {
            b"t" => Ok(Value::Bool(true)),
            b"f" => Ok(Value::Bool(false)),
            _ => Err("expected t or f"),
        },
        ScalarType::Int2 => parse_int(bytes).map(Value::Int2),
        ScalarType::Int4 => parse_int(bytes).map(Value::Int4),
        ScalarType::Int8 => parse_int(bytes).map(Value::Int8),
        ScalarType::Oid => parse_int(bytes).map(|oid| Value::Oid(Oid(oid))),
        ScalarType::Float4 => ascii(bytes).and_then(parse_float).map(|v: f32| Value::Float4(v)),
        ScalarType::Float8 => ascii(bytes).and_then(parse_float).map(|v: f64| Value::Float8(v)),
        ScalarType::Numeric => Numeric::parse(bytes).map(Value::Numeric),
        ScalarType::Bytea => parse_bytea(bytes).map(|bytes| Value::Bytea(Bytes::from(bytes))),
        ScalarType::Uuid => parse_uuid(bytes).map(Value::Uuid),
        ScalarType::Date => Date::parse(bytes).map(Value::Date),
        ScalarType::Time => Time::parse(bytes).map(Value::Time),
        ScalarType::TimeTz => TimeTz::parse(bytes).map(Value::TimeTz),
        ScalarType::Timestamp => Timestamp::parse(bytes, false).map(Value::Timestamp),
        ScalarType::TimestampTz => Timestamp::parse(bytes, true).map(Value::TimestampTz),
        ScalarType::Interval => ascii(bytes).and_then(Interval::parse).map(Value::Interval),
        ScalarType::Inet => ascii(bytes).and_then(|text| Inet::parse(text, false)).map(Value::Inet),
        ScalarType::Cidr => ascii(bytes).and_then(|text| Inet::parse(text, true)).map(Value::Cidr),
        ScalarType::MacAddr => parse_mac(bytes).map(Value::MacAddr),
        ScalarType::MacAddr8 => parse_mac(bytes).map(Value::MacAddr8),
    };
    parsed.map_err(|reason| invalid_text(type_oid, scalar.name(), &String::from_utf8_lossy(bytes), reason))
}

/// A decimal integer as `int2out`/`int4out`/`int8out`/`oidout` print it: an optional `-` and
/// digits (a leading `+` is accepted too, as the input functions do).
fn parse_int<T: TryFrom<i64>>(bytes: &[u8]) -> Result<T, &'static str> {
    const INVALID: &str = "not an integer in range";
    let (negative, digits) = match bytes {
        [b'-', digits @ ..] => (true, digits),
        [b'+', digits @ ..] => (false, digits),
        digits => (false, digits),
    };
    if digits.is_empty() {
        return Err(INVALID);
    }
    // Accumulate towards the sign so that i64::MIN, whose magnitude i64 cannot hold, parses.
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return Err(INVALID);
        }
        let digit = i64::from(digit - b'0');
        value = value.checked_mul(10).ok_or(INVALID)?;
        value = if negative { value.checked_sub(digit) } else { value.checked_add(digit) }.ok_or(INVALID)?;
    }
    T::try_from(value).map_err(|_| INVALID)
}

/// `float4out`/`float8out` output: a shortest-round-trip decimal, `NaN`, `Infinity` or
/// `-Infinity`.
fn parse_float<T: std::str::FromStr + FloatSpecials>(text: &str) -> Result<T, &'static str> {
    match text {
        "NaN" => Ok(T::NAN),
        "Infinity" => Ok(T::INFINITY),
        "-Infinity" => Ok(T::NEG_INFINITY),
        // Rust's parser also takes "inf"/"nan" spellings PostgreSQL never prints; refuse them
        // so that only the server's forms are accepted.
        _ if text.bytes().any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') => Err("not a number"),
        _ => text.parse().map_err(|_| "not a number"),
    }
}

/// The special values of a float type.
trait FloatSpecials {
    const NAN: Self;
    const INFINITY: Self;
    const NEG_INFINITY: Self;
}

impl FloatSpecials for f32 {
    const NAN: f32 = f32::NAN;
    const INFINITY: f32 = f32::INFINITY;
    const NEG_INFINITY: f32 = f32::NEG_INFINITY;
}

impl FloatSpecials for f64 {
    const NAN: f64 = f64::NAN;
    const INFINITY: f64 = f64::INFINITY;
    const NEG_INFINITY: f64 = f64::NEG_INFINITY;
}

/// `bytea` in hex (`\x0aff`) or, for sessions with `bytea_output=escape`, escape format
/// (`\\` for a backslash, `\ooo` octal for other bytes).
fn parse_bytea(text: &[u8]) -> Result<Vec<u8>, &'static str> {
    if let Some(hex) = text.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return Err("odd number of hex digits");
        }
        return hex
            .chunks_exact(2)
            .map(|pair| match pair {
                &[hi, lo] => hex_value(hi).zip(hex_value(lo)).map(|(hi, lo)| hi << 4 | lo),
                _ => None,
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or("invalid hex digit");
    }
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.iter().copied();
    while let Some(byte) = bytes.next() {
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        match bytes.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(first @ b'0'..=b'3') => {
                let octal = |digit: Option<u8>| digit.filter(|d| (b'0'..=b'7').contains(d)).map(|d| d - b'0');
                let (second, third) = (octal(bytes.next()), octal(bytes.next()));
                let (second, third) = second.zip(third).ok_or("invalid escape")?;
                out.push((first - b'0') << 6 | second << 3 | third);
            }
            _ => return Err("invalid escape"),
        }
    }
    Ok(out)
}

/// `uuid_out`'s `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (also without hyphens, either case).
fn parse_uuid(bytes: &[u8]) -> Result<[u8; 16], &'static str> {
    /// Where each byte's two hex digits start in the hyphenated form.
    const HYPHENATED: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    /// The same without hyphens.
    const PLAIN: [usize; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
    let starts = match bytes.len() {
        36 if [8, 13, 18, 23].iter().all(|&at| bytes.get(at) == Some(&b'-')) => &HYPHENATED,
        36 => return Err("misplaced hyphen"),
        32 => &PLAIN,
        _ => return Err("wrong length"),
    };
    let mut out = [0u8; 16];
    for (slot, &start) in out.iter_mut().zip(starts) {
        let hi = bytes.get(start).copied().and_then(hex_value);
        let lo = bytes.get(start + 1).copied().and_then(hex_value);
        *slot = hi.zip(lo).map(|(hi, lo)| hi << 4 | lo).ok_or("invalid hex digit")?;
    }
    Ok(out)
}

/// Writes the text form of any value (see [`Value`]'s `Display`).
pub(crate) fn write_value(f: &mut fmt::Formatter<'_>, value: &Value) -> fmt::Result {
    match value {
        Value::Null => f.write_str("NULL"),
        Value::Bool(true) => f.write_str("t"),
        Value::Bool(false) => f.write_str("f"),
        Value::Int2(v) => write!(f, "{v}"),
        Value::Int4(v) => write!(f, "{v}"),
        Value::Int8(v) => write!(f, "{v}"),
        Value::Oid(v) => write!(f, "{v}"),
        Value::Float4(v) => write_float(f, f64::from(*v), format_args!("{v:e}"), FLOAT4_FIXED_BELOW_EXPONENT),
        Value::Float8(v) => write_float(f, *v, format_args!("{v:e}"), FLOAT8_FIXED_BELOW_EXPONENT),
        Value::Numeric(v) => f.write_str(v.as_str()),
        Value::Text(v) | Value::Json(v) | Value::Jsonb(v) | Value::Xml(v) => f.write_str(v),
        Value::Enum { label, .. } => f.write_str(label),
        Value::Unknown { text, .. } => f.write_str(text),
        Value::Bytea(bytes) | Value::UnknownBinary { bytes, .. } => write_hex_bytes(f, bytes),
        Value::Uuid(uuid) => write_uuid(f, uuid),
        Value::Date(v) => write!(f, "{v}"),
        Value::Time(v) => write!(f, "{v}"),
        Value::TimeTz(v) => write!(f, "{v}"),
        Value::Timestamp(v) => write!(f, "{v}"),
        Value::TimestampTz(v) => write!(f, "{}", v.display_utc()),
        Value::Interval(v) => write!(f, "{v}"),
        Value::Inet(v) => write!(f, "{}", v.display(false)),
        Value::Cidr(v) => write!(f, "{}", v.display(true)),
        Value::MacAddr(v) => write_mac(f, v),
        Value::MacAddr8(v) => write_mac(f, v),
        Value::Array(v) => array::write_text(f, v),
    }
}

/// `float4out` prints fixed-point for decimal exponents below this, scientific from it on.
const FLOAT4_FIXED_BELOW_EXPONENT: i32 = 6;
/// `float8out`'s threshold (both use fixed-point down to an exponent of −4).
const FLOAT8_FIXED_BELOW_EXPONENT: i32 = 15;
/// Smallest decimal exponent printed in fixed-point.
const FIXED_FROM_EXPONENT: i32 = -4;

/// Writes a float as PostgreSQL's shortest-exact output (`extra_float_digits > 0`) does.
///
/// Rust's `{:e}` gives the same shortest round-trip digits; only the layout differs: PostgreSQL
/// prints fixed-point for exponents in `-4..threshold` and otherwise `d.ddde+XX` with a signed,
/// at-least-two-digit exponent.
fn write_float(
    f: &mut fmt::Formatter<'_>,
    value: f64,
    scientific: fmt::Arguments<'_>,
    fixed_below: i32,
) -> fmt::Result {
    if value.is_nan() {
        return f.write_str("NaN");
    }
    if value.is_infinite() {
        return f.write_str(if value > 0.0 { "Infinity" } else { "-Infinity" });
    }
    let mut buffer = StackString::default();
    buffer.write_fmt(scientific)?;
    let text = buffer.as_str();
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(unsigned) => (true, unsigned),
        None => (false, text),
    };
    let (mantissa, exponent) = unsigned.split_once('e').ok_or(fmt::Error)?;
    let exponent: i32 = exponent.parse().map_err(|_| fmt::Error)?;
    let (lead, rest) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if negative {
        f.write_str("-")?;
    }
    if !(FIXED_FROM_EXPONENT..fixed_below).contains(&exponent) {
        f.write_str(lead)?;
        if !rest.is_empty() {
            write!(f, ".{rest}")?;
        }
        let sign = if exponent < 0 { '-' } else { '+' };
        return write!(f, "e{sign}{:02}", exponent.unsigned_abs());
    }
    // All significant digits, and where the decimal point goes among them.
    let digits_len = lead.len() + rest.len();
    if exponent < 0 {
        f.write_str("0.")?;
        for _ in 0..exponent.unsigned_abs() - 1 {
            f.write_str("0")?;
        }
        f.write_str(lead)?;
        return f.write_str(rest);
    }
    let integer_len = exponent.unsigned_abs() as usize + 1;
    f.write_str(lead)?;
    if digits_len <= integer_len {
        f.write_str(rest)?;
        for _ in digits_len..integer_len {
            f.write_str("0")?;
        }
        return Ok(());
    }
    // integer_len - 1 < rest.len() here, and `rest` is ASCII digits.
    let (integer_rest, fraction) = rest.split_at(integer_len - 1);
    write!(f, "{integer_rest}.{fraction}")
}

/// A small formatting buffer on the stack, big enough for any float in `{:e}` form.
#[derive(Default)]
struct StackString {
    bytes: [u8; 32],
    len: usize,
}

impl StackString {
    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever appended, so the prefix is valid UTF-8.
        self.bytes.get(..self.len).and_then(|bytes| std::str::from_utf8(bytes).ok()).unwrap_or_default()
    }
}

impl fmt::Write for StackString {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.len.checked_add(text.len()).ok_or(fmt::Error)?;
        self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// `\x` and lowercase hex, as `byteaout` prints with `bytea_output=hex`.
fn write_hex_bytes(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    f.write_str("\\x")?;
    for byte in bytes {
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

fn write_uuid(f: &mut fmt::Formatter<'_>, uuid: &[u8; 16]) -> fmt::Result {
    for (index, byte) in uuid.iter().enumerate() {
        if matches!(index, 4 | 6 | 8 | 10) {
            f.write_str("-")?;
        }
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(scalar: ScalarType, text: &str) -> Result<Value, ValueError> {
        decode_scalar(scalar, Oid(1), text.as_bytes())
    }

    #[test]
    fn floats_print_like_float8out_and_float4out() {
        // Expected strings are PostgreSQL 15's output with extra_float_digits=3.
        for (value, text) in [
            (1e-5, "1e-05"),
            (1e-4, "0.0001"),
            (0.00012345, "0.00012345"),
            (1.0, "1"),
            (1234567.0, "1234567"),
            (1e14, "100000000000000"),
            (1e15, "1e+15"),
            (1234567890123456.0, "1.234567890123456e+15"),
            (-2.5e-10, "-2.5e-10"),
            (1.5e300, "1.5e+300"),
            (0.1, "0.1"),
            (12345.678, "12345.678"),
            (0.0, "0"),
            (-0.0, "-0"),
            (1e-320, "1e-320"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(Value::Float8(value).to_string(), text);
            assert_eq!(decode(ScalarType::Float8, text), Ok(Value::Float8(value)), "{text}");
        }
        for (value, text) in [
            (1234567.0_f32, "1.234567e+06"),
            (123456.0, "123456"),
            (1e6, "1e+06"),
            (999999.0, "999999"),
            (123456789012345.0, "1.2345679e+14"),
            (3.4e38, "3.4e+38"),
            (1e-45, "1e-45"),
            (0.1, "0.1"),
            (f32::INFINITY, "Infinity"),
        ] {
            assert_eq!(Value::Float4(value).to_string(), text);
            assert_eq!(decode(ScalarType::Float4, text), Ok(Value::Float4(value)), "{text}");
        }
        for bad in ["inf", "nan", "infinity", "1.5x", "", "0x1p3"] {
            assert!(decode(ScalarType::Float8, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bytea_hex_and_escape() {
        assert_eq!(decode(ScalarType::Bytea, "\\x00ff10"), Ok(Value::Bytea(Bytes::from_static(&[0, 255, 16]))));
        assert_eq!(decode(ScalarType::Bytea, "\\x"), Ok(Value::Bytea(Bytes::new())));
        assert_eq!(
            decode(ScalarType::Bytea, "a\\\\b\\001\\377"),
            Ok(Value::Bytea(Bytes::from_static(b"a\\b\x01\xff")))
        );
        for bad in ["\\x0", "\\xzz", "\\9", "\\01", "\\400"] {
            assert!(decode(ScalarType::Bytea, bad).is_err(), "{bad}");
        }
        assert_eq!(Value::Bytea(Bytes::from_static(&[0, 0xAB])).to_string(), "\\x00ab");
    }

    #[test]
    fn uuids() {
        let text = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let value = decode(ScalarType::Uuid, text).unwrap();
        assert_eq!(value.to_string(), text);
        assert_eq!(decode(ScalarType::Uuid, "A0EEBC999C0B4EF8BB6D6BB9BD380A11"), Ok(value));
        for bad in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "a0eebc999-c0b-4ef8-bb6d-6bb9bd380a11",
            "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ] {
            assert!(decode(ScalarType::Uuid, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scalars_and_their_errors() {
        assert_eq!(decode(ScalarType::Bool, "t"), Ok(Value::Bool(true)));
        assert_eq!(decode(ScalarType::Int2, "-32768"), Ok(Value::Int2(i16::MIN)));
        assert_eq!(decode(ScalarType::Int8, "9223372036854775807"), Ok(Value::Int8(i64::MAX)));
        assert_eq!(decode(ScalarType::Oid, "4294967295"), Ok(Value::Oid(Oid(u32::MAX))));
        assert_eq!(decode(ScalarType::MacAddr, "08:00:2b:01:02:03").unwrap().to_string(), "08:00:2b:01:02:03");
        let err = decode_scalar(ScalarType::Int2, Oid(21), b"32768").unwrap_err();
        assert_eq!(
            err,
            ValueError::InvalidText {
                type_oid: Oid(21),
                type_name: "int2",
                reason: "not an integer in range",
                text: "32768".into()
            }
        );
        assert!(decode(ScalarType::Bool, "true").is_err());
        assert_eq!(decode(ScalarType::Int8, "-9223372036854775808"), Ok(Value::Int8(i64::MIN)));
        assert_eq!(decode(ScalarType::Int4, "+7"), Ok(Value::Int4(7)));
        for bad in ["", "-", "+", "1-", "9223372036854775808", "-9223372036854775809", "1_000", "١"] {
            assert!(decode(ScalarType::Int8, bad).is_err(), "{bad}");
        }
        assert!(decode(ScalarType::Oid, "-1").is_err());
        let not_ascii = decode_scalar(ScalarType::Date, Oid(1082), b"2024-01-0\xFF").unwrap_err();
        assert!(
            matches!(&not_ascii, ValueError::InvalidText { text, .. } if text == "2024-01-0\u{FFFD}"),
            "non-UTF-8 in an ASCII grammar is invalid text: {not_ascii:?}"
        );
        assert!(decode(ScalarType::Int4, " 1").is_err());
    }
}
