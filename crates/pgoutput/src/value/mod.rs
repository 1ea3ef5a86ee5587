//! Typed column values: converting the text or binary bytes of a [`TupleColumn`] into a
//! [`Value`], and rendering a [`Value`] back to PostgreSQL's text (and binary) format.
//!
//! # Shape
//!
//! ```text
//!  TupleColumn::Text(bytes) ──► TypeRegistry::decode_text ───┐
//!  TupleColumn::Binary(bytes) ► TypeRegistry::decode_binary ─┤  type OID → TypeKind
//!                                                           ├─ (built-in table, then what the
//!                                                           │   caller registered; domains
//!                                                           ▼   followed to their base type)
//!                                                        Value ──► Display / to_pg_text()
//!                                                              └─► to_pg_binary()
//! ```
//!
//! * [`TypeRegistry`] knows the built-in types statically ([`type_oid`]); enums, domains and
//!   arrays of user-defined types are registered by the caller (from `pg_type`, see
//!   [`TypeKind::from_pg_type`]); Type (`Y`) messages add names only.
//! * A type the registry cannot convert is never dropped: its text passes through as
//!   [`Value::Unknown`], its binary bytes as [`Value::UnknownBinary`].
//! * A value of a known type that does not parse is a [`ValueError`] naming the type OID, not a
//!   passthrough: it means corrupt input or a session whose settings differ from those the
//!   parsers assume, and silently passing such text on would hand sinks a value whose shape
//!   depends on the data.
//!
//! # Session settings assumed for the text format
//!
//! pgfanout pins `DateStyle=ISO`, `IntervalStyle=postgres`, `extra_float_digits=3`,
//! `TimeZone=UTC` and `bytea_output=hex` on the replication connection; text parsing accepts
//! those output forms (and, where cheap, a few equivalent spellings such as any UTC offset or
//! `bytea_output=escape`), and rendering produces exactly them, so for every converted type
//! `value.to_pg_text()` equals what the server printed.
//!
//! # Invariants
//!
//! * No input panics or makes us allocate more than a small multiple of its own length (plus
//!   `numeric`'s fixed 128 KiB digit limit): counts read from input are checked against the
//!   bytes present, arrays are capped at 6 dimensions and 2^27 − 1 elements.
//! * Values are exact: `numeric` is kept as decimal text, floats keep NaN, ±Infinity and −0,
//!   date/time values keep PostgreSQL's microsecond counts and infinities.
//! * Text and binary decoding of the same server value give equal [`Value`]s (checked against a
//!   live PostgreSQL 15 in `tests/live_values.rs`).

mod array;
mod binary;
mod datetime;
pub(crate) mod error;
mod network;
mod numeric;
mod registry;
mod text;
mod types;

use std::fmt;

use bytes::Bytes;

pub use array::{Array, ArrayDim, MAX_DIMS, MAX_ELEMENTS};
pub use datetime::{Date, Interval, Time, TimeTz, Timestamp};
pub use error::{ValueError, MAX_TEXT_IN_ERROR};
pub use network::Inet;
pub use numeric::{Decimal, Numeric, ParseNumericError, MAX_INTEGER_DIGITS, MAX_SCALE};
pub use registry::{ColumnValue, RegisterError, TypeName, TypeRegistry, MAX_DOMAIN_DEPTH};
pub use types::{type_oid, ScalarType, TypeKind};

use crate::Oid;
#[cfg(doc)]
use crate::TupleColumn;

/// One converted column value (or array element).
///
/// Equality is exact and total: floats compare by bits, except that every NaN equals every
/// NaN, so `-0.0 != 0.0` and a value always equals itself.
#[derive(Clone, Debug)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// `bool`.
    Bool(bool),
    /// `int2`.
    Int2(i16),
    /// `int4`.
    Int4(i32),
    /// `int8`.
    Int8(i64),
    /// `oid`.
    Oid(Oid),
    /// `float4`, NaN, ±Infinity and −0 preserved.
    Float4(f32),
    /// `float8`, NaN, ±Infinity and −0 preserved.
    Float8(f64),
    /// `numeric`, exact.
    Numeric(Numeric),
    /// `text`, `varchar`, `bpchar` (padding kept) or `name`.
    Text(String),
    /// `bytea`.
    Bytea(Bytes),
    /// `uuid`, in network byte order.
    Uuid([u8; 16]),
    /// `date`.
    Date(Date),
    /// `time`.
    Time(Time),
    /// `timetz`.
    TimeTz(TimeTz),
    /// `timestamp`: a wall-clock time without zone.
    Timestamp(Timestamp),
    /// `timestamptz`: an instant, counted in UTC.
    TimestampTz(Timestamp),
    /// `interval`.
    Interval(Interval),
    /// `json`: the text exactly as stored.
    Json(String),
    /// `jsonb`: `jsonb_out`'s normalised text.
    Jsonb(String),
    /// `xml`: the document text.
    Xml(String),
    /// `inet`.
    Inet(Inet),
    /// `cidr`.
    Cidr(Inet),
    /// `macaddr`.
    MacAddr([u8; 6]),
    /// `macaddr8`.
    MacAddr8([u8; 8]),
    /// A value of an enum type.
    Enum {
        /// The enum type (for a domain over an enum, the enum).
        type_oid: Oid,
        /// The label.
        label: String,
    },
    /// An array.
    Array(Array),
    /// Text of a type the registry cannot convert, passed through unchanged.
    Unknown {
        /// The type the text belongs to (for a domain, the base type it resolved to).
        type_oid: Oid,
        /// The type's output text.
        text: String,
    },
    /// Binary bytes of a type the registry cannot convert, passed through unchanged.
    UnknownBinary {
        /// The type the bytes belong to (for a domain, the base type it resolved to).
        type_oid: Oid,
        /// The type's send-format bytes.
        bytes: Bytes,
    },
}

impl Value {
    /// PostgreSQL's text output for the value, as the server prints it under the settings in
    /// the [module documentation](self); `None` for [`Value::Null`] and for
    /// [`Value::UnknownBinary`], which have none.
    pub fn to_pg_text(&self) -> Option<String> {
        match self {
            Value::Null | Value::UnknownBinary { .. } => None,
            Value::Text(text) | Value::Json(text) | Value::Jsonb(text) | Value::Xml(text) => Some(text.clone()),
            other => Some(other.to_string()),
        }
    }

    /// The value in its type's binary send format (what [`TypeRegistry::decode_binary`]
    /// reads); `None` for [`Value::Null`], for [`Value::Unknown`] (only its text is known) and
    /// for arrays holding one.
    pub fn to_pg_binary(&self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        binary::encode(self, &mut out)?;
        Some(out)
    }

    /// Whether this is [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl fmt::Display for Value {
    /// The PostgreSQL text form ([`Value::to_pg_text`]); [`Value::Null`] shows as `NULL` and
    /// [`Value::UnknownBinary`] as `\x` and the hex of its bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        text::write_value(f, self)
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        use Value as V;
        match (self, other) {
            (V::Null, V::Null) => true,
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::Int2(a), V::Int2(b)) => a == b,
            (V::Int4(a), V::Int4(b)) => a == b,
            (V::Int8(a), V::Int8(b)) => a == b,
            (V::Oid(a), V::Oid(b)) => a == b,
            (V::Float4(a), V::Float4(b)) => a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            (V::Float8(a), V::Float8(b)) => a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            (V::Numeric(a), V::Numeric(b)) => a == b,
            (V::Text(a), V::Text(b))
            | (V::Json(a), V::Json(b))
            | (V::Jsonb(a), V::Jsonb(b))
            | (V::Xml(a), V::Xml(b)) => a == b,
            (V::Bytea(a), V::Bytea(b)) => a == b,
            (V::Uuid(a), V::Uuid(b)) => a == b,
            (V::Date(a), V::Date(b)) => a == b,
            (V::Time(a), V::Time(b)) => a == b,
            (V::TimeTz(a), V::TimeTz(b)) => a == b,
            (V::Timestamp(a), V::Timestamp(b)) | (V::TimestampTz(a), V::TimestampTz(b)) => a == b,
            (V::Interval(a), V::Interval(b)) => a == b,
            (V::Inet(a), V::Inet(b)) | (V::Cidr(a), V::Cidr(b)) => a == b,
            (V::MacAddr(a), V::MacAddr(b)) => a == b,
            (V::MacAddr8(a), V::MacAddr8(b)) => a == b,
            (V::Enum { type_oid: a, label: x }, V::Enum { type_oid: b, label: y }) => a == b && x == y,
            (V::Array(a), V::Array(b)) => a == b,
            (V::Unknown { type_oid: a, text: x }, V::Unknown { type_oid: b, text: y }) => a == b && x == y,
            (V::UnknownBinary { type_oid: a, bytes: x }, V::UnknownBinary { type_oid: b, bytes: y }) => {
                a == b && x == y
            }
            _ => false,
        }
    }
}

impl Eq for Value {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_equality_is_total_and_exact() {
        assert_eq!(Value::Float8(f64::NAN), Value::Float8(-f64::NAN));
        assert_eq!(Value::Float4(f32::NAN), Value::Float4(f32::NAN));
        assert_ne!(Value::Float8(0.0), Value::Float8(-0.0));
        assert_ne!(Value::Float8(1.0), Value::Float4(1.0));
        assert_eq!(Value::Float8(f64::INFINITY), Value::Float8(f64::INFINITY));
        assert_ne!(Value::Timestamp(Timestamp(0)), Value::TimestampTz(Timestamp(0)));
        assert_ne!(Value::Json("1".into()), Value::Jsonb("1".into()));
    }

    #[test]
    fn null_and_unknown_binary_have_no_text() {
        assert_eq!(Value::Null.to_pg_text(), None);
        assert_eq!(Value::Null.to_string(), "NULL");
        let opaque = Value::UnknownBinary { type_oid: Oid(600), bytes: Bytes::from_static(&[0xAB, 1]) };
        assert_eq!(opaque.to_pg_text(), None);
        assert_eq!(opaque.to_string(), "\\xab01");
        assert_eq!(opaque.to_pg_binary(), Some(vec![0xAB, 1]));
        assert_eq!(Value::Unknown { type_oid: Oid(600), text: "(1,2)".into() }.to_pg_binary(), None);
    }
}
