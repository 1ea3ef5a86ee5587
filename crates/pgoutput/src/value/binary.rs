//! The binary format: reading each [`ScalarType`]'s send format, and writing any [`Value`] in
//! it (the inverse, used by tests and by anyone replaying values into PostgreSQL).
//!
//! Fixed-size types must be exactly their size; values PostgreSQL's receive functions would
//! refuse (a time past 24:00, a date outside the calendar's range, a `cidr` with host bits) are
//! refused here too, so a `Value` decoded from binary always has a valid text form.

use bytes::Bytes;

use super::datetime::{Date, Interval, Time, TimeTz, Timestamp};
use super::network::Inet;
use super::numeric::Numeric;
use super::{array, ScalarType};
use crate::{Oid, Value, ValueError};

/// Version byte that starts `jsonb_send`'s output.
const JSONB_VERSION: u8 = 1;

/// Converts the send-format bytes of a built-in type. `owner`, when given, is a `Bytes` that
/// `bytes` is a slice of, so `bytea` can share it instead of copying.
pub(crate) fn decode_scalar(
    scalar: ScalarType,
    type_oid: Oid,
    bytes: &[u8],
    owner: Option<&Bytes>,
) -> Result<Value, ValueError> {
    let invalid = |offset, reason| ValueError::InvalidBinary { type_oid, type_name: scalar.name(), offset, reason };
    let utf8 = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|err| ValueError::InvalidUtf8 { type_oid, valid_up_to: err.valid_up_to() })
    };
    Ok(match scalar {
        ScalarType::Text => Value::Text(utf8(bytes)?),
        ScalarType::Json => Value::Json(utf8(bytes)?),
        ScalarType::Xml => Value::Xml(utf8(bytes)?),
        ScalarType::Jsonb => match bytes.split_first() {
            Some((&JSONB_VERSION, json)) => Value::Jsonb(utf8(json)?),
            Some(_) => return Err(invalid(0, "unsupported jsonb version")),
            None => return Err(invalid(0, "missing jsonb version")),
        },
        ScalarType::Bool => match bytes {
            // As boolrecv: any non-zero byte is true.
            &[byte] => Value::Bool(byte != 0),
            _ => return Err(invalid(0, "expected 1 byte")),
        },
        ScalarType::Int2 => {
            Value::Int2(i16::from_be_bytes(fixed(bytes).ok_or_else(|| invalid(0, "expected 2 bytes"))?))
        }
        ScalarType::Int4 => {
            Value::Int4(i32::from_be_bytes(fixed(bytes).ok_or_else(|| invalid(0, "expected 4 bytes"))?))
        }
        ScalarType::Int8 => {
            Value::Int8(i64::from_be_bytes(fixed(bytes).ok_or_else(|| invalid(0, "expected 8 bytes"))?))
        }
        ScalarType::Oid => {
            Value::Oid(Oid(u32::from_be_bytes(fixed(bytes).ok_or_else(|| invalid(0, "expected 4 bytes"))?)))
        }
        ScalarType::Float4 => {
            Value::Float4(f32::from_be_bytes(fixed(bytes).ok_or_else(|| invalid(0, "expected 4 bytes"))?))
        }
        ScalarType::Float8 => {
            Value::Float8(f64::from_be_bytes(fixed(bytes).ok_or_else(|| invalid(0, "expected 8 bytes"))?))
        }
        ScalarType::Numeric => {
            Value::Numeric(Numeric::from_binary(bytes).map_err(|(offset, reason)| invalid(offset, reason))?)
        }
        ScalarType::Bytea => Value::Bytea(share_or_copy(bytes, owner)),
        ScalarType::Uuid => Value::Uuid(fixed(bytes).ok_or_else(|| invalid(0, "expected 16 bytes"))?),
        ScalarType::Date => {
            let date = Date(i32::from_be_bytes(fixed(bytes).ok_or_else(|| invalid(0, "expected 4 bytes"))?));
            if !date.is_valid() {
                return Err(invalid(0, "date out of range"));
            }
            Value::Date(date)
        }
        ScalarType::Time => {
            let time = Time(i64::from_be_bytes(fixed(bytes).ok_or_else(|| invalid(0, "expected 8 bytes"))?));
            if !time.is_valid() {
                return Err(invalid(0, "time out of range"));
            }
            Value::Time(time)
        }
        ScalarType::TimeTz => {
            let [t0, t1, t2, t3, t4, t5, t6, t7, z0, z1, z2, z3] =
                fixed::<12>(bytes).ok_or_else(|| invalid(0, "expected 12 bytes"))?;
            let time = Time(i64::from_be_bytes([t0, t1, t2, t3, t4, t5, t6, t7]));
            // The wire counts seconds west of UTC.
            let west = i32::from_be_bytes([z0, z1, z2, z3]);
            let utc_offset_seconds = west.checked_neg().ok_or_else(|| invalid(8, "time zone out of range"))?;
            let value = TimeTz { time, utc_offset_seconds };
            if !value.is_valid() {
                return Err(invalid(0, "time or time zone out of range"));
            }
            Value::TimeTz(value)
        }
        ScalarType::Timestamp | ScalarType::TimestampTz => {
            let timestamp = Timestamp(i64::from_be_bytes(fixed(bytes).ok_or_else(|| invalid(0, "expected 8 bytes"))?));
            if !timestamp.is_valid() {
                return Err(invalid(0, "timestamp out of range"));
            }
            if scalar == ScalarType::Timestamp {
                Value::Timestamp(timestamp)
            } else {
                Value::TimestampTz(timestamp)
            }
        }
        ScalarType::Interval => {
            let [m0, m1, m2, m3, m4, m5, m6, m7, d0, d1, d2, d3, n0, n1, n2, n3] =
                fixed::<16>(bytes).ok_or_else(|| invalid(0, "expected 16 bytes"))?;
            Value::Interval(Interval {
                micros: i64::from_be_bytes([m0, m1, m2, m3, m4, m5, m6, m7]),
                days: i32::from_be_bytes([d0, d1, d2, d3]),
                months: i32::from_be_bytes([n0, n1, n2, n3]),
            })
        }
        ScalarType::Inet => Value::Inet(Inet::from_binary(bytes, false).map_err(|(at, reason)| invalid(at, reason))?),
        ScalarType::Cidr => Value::Cidr(Inet::from_binary(bytes, true).map_err(|(at, reason)| invalid(at, reason))?),
        ScalarType::MacAddr => Value::MacAddr(fixed(bytes).ok_or_else(|| invalid(0, "expected 6 bytes"))?),
        ScalarType::MacAddr8 => Value::MacAddr8(fixed(bytes).ok_or_else(|| invalid(0, "expected 8 bytes"))?),
    })
}

/// The bytes as an array of exactly `N`, or `None` for any other length.
fn fixed<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    <[u8; N]>::try_from(bytes).ok()
}

/// `bytes` as a `Bytes`: a slice of `owner` when it contains them, a copy otherwise.
pub(crate) fn share_or_copy(bytes: &[u8], owner: Option<&Bytes>) -> Bytes {
    match owner {
        Some(owner)
            if owner.as_ptr_range().start <= bytes.as_ptr() && bytes.as_ptr_range().end <= owner.as_ptr_range().end =>
        {
            owner.slice_ref(bytes)
        }
        _ => Bytes::copy_from_slice(bytes),
    }
}

/// Appends the send format of `value`; `None` when it has none (see [`Value::to_pg_binary`]).
pub(crate) fn encode(value: &Value, out: &mut Vec<u8>) -> Option<()> {
    match value {
        Value::Null | Value::Unknown { .. } => return None,
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::Int2(v) => out.extend_from_slice(&v.to_be_bytes()),
        Value::Int4(v) => out.extend_from_slice(&v.to_be_bytes()),
        Value::Int8(v) => out.extend_from_slice(&v.to_be_bytes()),
        Value::Oid(v) => out.extend_from_slice(&v.0.to_be_bytes()),
        Value::Float4(v) => out.extend_from_slice(&v.to_be_bytes()),
        Value::Float8(v) => out.extend_from_slice(&v.to_be_bytes()),
        Value::Numeric(v) => v.write_binary(out)?,
        Value::Text(v) | Value::Json(v) | Value::Xml(v) => out.extend_from_slice(v.as_bytes()),
        Value::Enum { label, .. } => out.extend_from_slice(label.as_bytes()),
        Value::Jsonb(v) => {
            out.push(JSONB_VERSION);
            out.extend_from_slice(v.as_bytes());
        }
        Value::Bytea(v) | Value::UnknownBinary { bytes: v, .. } => out.extend_from_slice(v),
        Value::Uuid(v) => out.extend_from_slice(v),
        Value::Date(v) => out.extend_from_slice(&v.0.to_be_bytes()),
        Value::Time(v) => out.extend_from_slice(&v.0.to_be_bytes()),
        Value::TimeTz(v) => {
            out.extend_from_slice(&v.time.0.to_be_bytes());
            out.extend_from_slice(&v.utc_offset_seconds.checked_neg()?.to_be_bytes());
        }
        Value::Timestamp(v) | Value::TimestampTz(v) => out.extend_from_slice(&v.0.to_be_bytes()),
        Value::Interval(v) => {
            out.extend_from_slice(&v.micros.to_be_bytes());
            out.extend_from_slice(&v.days.to_be_bytes());
            out.extend_from_slice(&v.months.to_be_bytes());
        }
        Value::Inet(v) => v.write_binary(false, out),
        Value::Cidr(v) => v.write_binary(true, out),
        Value::MacAddr(v) => out.extend_from_slice(v),
        Value::MacAddr8(v) => out.extend_from_slice(v),
        Value::Array(v) => array::write_binary(v, out, encode)?,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(scalar: ScalarType, bytes: &[u8]) -> Result<Value, ValueError> {
        decode_scalar(scalar, Oid(1), bytes, None)
    }

    #[test]
    fn fixed_size_types_need_their_exact_size() {
        assert_eq!(decode(ScalarType::Int4, &[0xFF, 0xFF, 0xFF, 0xFE]), Ok(Value::Int4(-2)));
        assert_eq!(decode(ScalarType::Bool, &[2]), Ok(Value::Bool(true)));
        for (scalar, size) in [
            (ScalarType::Bool, 1),
            (ScalarType::Int2, 2),
            (ScalarType::Int4, 4),
            (ScalarType::Int8, 8),
            (ScalarType::Float4, 4),
            (ScalarType::Float8, 8),
            (ScalarType::Uuid, 16),
            (ScalarType::Date, 4),
            (ScalarType::Time, 8),
            (ScalarType::TimeTz, 12),
            (ScalarType::Timestamp, 8),
            (ScalarType::Interval, 16),
            (ScalarType::MacAddr, 6),
            (ScalarType::MacAddr8, 8),
        ] {
            assert!(decode(scalar, &vec![0; size]).is_ok(), "{scalar:?}");
            assert!(decode(scalar, &vec![0; size - 1]).is_err(), "{scalar:?} short");
            assert!(decode(scalar, &vec![0; size + 1]).is_err(), "{scalar:?} long");
        }
    }

    #[test]
    fn special_floats_keep_their_bits() {
        let negative_zero = decode(ScalarType::Float8, &(-0.0_f64).to_be_bytes()).unwrap();
        let Value::Float8(v) = negative_zero else { unreachable!("float8 decodes to Float8") };
        assert!(v == 0.0 && v.is_sign_negative());
        assert_eq!(decode(ScalarType::Float4, &f32::NAN.to_be_bytes()), Ok(Value::Float4(f32::NAN)));
    }

    #[test]
    fn ranges_are_checked_like_the_receive_functions() {
        assert!(decode(ScalarType::Date, &i32::MAX.to_be_bytes()).is_ok(), "infinity");
        assert!(decode(ScalarType::Date, &(i32::MAX - 1).to_be_bytes()).is_err());
        assert!(decode(ScalarType::Timestamp, &i64::MIN.to_be_bytes()).is_ok(), "-infinity");
        assert!(decode(ScalarType::Timestamp, &(i64::MIN + 1).to_be_bytes()).is_err());
        assert!(decode(ScalarType::Time, &(-1_i64).to_be_bytes()).is_err());
        let mut timetz = 0_i64.to_be_bytes().to_vec();
        timetz.extend_from_slice(&i32::MIN.to_be_bytes());
        assert!(decode(ScalarType::TimeTz, &timetz).is_err());
    }

    #[test]
    fn timetz_zone_is_stored_west_of_utc() {
        let mut bytes = 3_600_000_000_i64.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(-19_800_i32).to_be_bytes()); // +05:30
        let value = decode(ScalarType::TimeTz, &bytes).unwrap();
        assert_eq!(value.to_string(), "01:00:00+05:30");
        assert_eq!(value.to_pg_binary(), Some(bytes));
    }

    #[test]
    fn text_like_types_and_jsonb_version() {
        assert_eq!(decode(ScalarType::Jsonb, b"\x01{}"), Ok(Value::Jsonb("{}".into())));
        assert!(decode(ScalarType::Jsonb, b"\x02{}").is_err());
        assert!(decode(ScalarType::Jsonb, b"").is_err());
        assert_eq!(
            decode_scalar(ScalarType::Text, Oid(25), b"ok\xFF", None),
            Err(ValueError::InvalidUtf8 { type_oid: Oid(25), valid_up_to: 2 })
        );
    }

    #[test]
    fn bytea_shares_its_owner() {
        let owner = Bytes::from_static(b"..payload..");
        let inner = owner.get(2..9).unwrap();
        let Value::Bytea(shared) = decode_scalar(ScalarType::Bytea, Oid(17), inner, Some(&owner)).unwrap() else {
            unreachable!("bytea decodes to Bytea")
        };
        assert_eq!(shared.as_ptr(), inner.as_ptr(), "no copy");
        let elsewhere = b"payload".to_vec();
        let Value::Bytea(copied) = decode_scalar(ScalarType::Bytea, Oid(17), &elsewhere, Some(&owner)).unwrap() else {
            unreachable!("bytea decodes to Bytea")
        };
        assert_eq!(copied, Bytes::from_static(b"payload"));
    }
}
