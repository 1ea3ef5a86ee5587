//! What a type OID converts as: the built-in OIDs this crate knows ([`type_oid`]), the scalar
//! conversions ([`ScalarType`]) and the kinds a type can be registered as ([`TypeKind`]).
//!
//! The built-in table is static and cannot be changed at run time: built-in OIDs are fixed by
//! PostgreSQL's catalog (`pg_type.dat`) and identical on every server of a major version. Every
//! OID below was checked against PostgreSQL 15 with `SELECT oid, typname, typarray FROM pg_type`.

use crate::Oid;

/// OIDs of the built-in types this crate converts, named after `pg_type.typname` (array types
/// after their element with an `_ARRAY` suffix).
pub mod type_oid {
    use crate::Oid;

    /// `bool`.
    pub const BOOL: Oid = Oid(16);
    /// `bytea`.
    pub const BYTEA: Oid = Oid(17);
    /// `name` (64-byte identifier type).
    pub const NAME: Oid = Oid(19);
    /// `int8` / `bigint`.
    pub const INT8: Oid = Oid(20);
    /// `int2` / `smallint`.
    pub const INT2: Oid = Oid(21);
    /// `int4` / `integer`.
    pub const INT4: Oid = Oid(23);
    /// `text`.
    pub const TEXT: Oid = Oid(25);
    /// `oid`.
    pub const OID: Oid = Oid(26);
    /// `json`.
    pub const JSON: Oid = Oid(114);
    /// `xml`.
    pub const XML: Oid = Oid(142);
    /// `float4` / `real`.
    pub const FLOAT4: Oid = Oid(700);
    /// `float8` / `double precision`.
    pub const FLOAT8: Oid = Oid(701);
    /// `cidr`.
    pub const CIDR: Oid = Oid(650);
    /// `macaddr8`.
    pub const MACADDR8: Oid = Oid(774);
    /// `macaddr`.
    pub const MACADDR: Oid = Oid(829);
    /// `inet`.
    pub const INET: Oid = Oid(869);
    /// `bpchar` / `char(n)`.
    pub const BPCHAR: Oid = Oid(1042);
    /// `varchar`.
    pub const VARCHAR: Oid = Oid(1043);
    /// `date`.
    pub const DATE: Oid = Oid(1082);
    /// `time` (without time zone).
    pub const TIME: Oid = Oid(1083);
    /// `timestamp` (without time zone).
    pub const TIMESTAMP: Oid = Oid(1114);
    /// `timestamptz`.
    pub const TIMESTAMPTZ: Oid = Oid(1184);
    /// `interval`.
    pub const INTERVAL: Oid = Oid(1186);
    /// `timetz`.
    pub const TIMETZ: Oid = Oid(1266);
    /// `numeric`.
    pub const NUMERIC: Oid = Oid(1700);
    /// `uuid`.
    pub const UUID: Oid = Oid(2950);
    /// `jsonb`.
    pub const JSONB: Oid = Oid(3802);

    /// `json[]`.
    pub const JSON_ARRAY: Oid = Oid(199);
    /// `xml[]`.
    pub const XML_ARRAY: Oid = Oid(143);
    /// `cidr[]`.
    pub const CIDR_ARRAY: Oid = Oid(651);
    /// `macaddr8[]`.
    pub const MACADDR8_ARRAY: Oid = Oid(775);
    /// `bool[]`.
    pub const BOOL_ARRAY: Oid = Oid(1000);
    /// `bytea[]`.
    pub const BYTEA_ARRAY: Oid = Oid(1001);
    /// `name[]`.
    pub const NAME_ARRAY: Oid = Oid(1003);
    /// `int2[]`.
    pub const INT2_ARRAY: Oid = Oid(1005);
    /// `int4[]`.
    pub const INT4_ARRAY: Oid = Oid(1007);
    /// `text[]`.
    pub const TEXT_ARRAY: Oid = Oid(1009);
    /// `bpchar[]`.
    pub const BPCHAR_ARRAY: Oid = Oid(1014);
    /// `varchar[]`.
    pub const VARCHAR_ARRAY: Oid = Oid(1015);
    /// `int8[]`.
    pub const INT8_ARRAY: Oid = Oid(1016);
    /// `float4[]`.
    pub const FLOAT4_ARRAY: Oid = Oid(1021);
    /// `float8[]`.
    pub const FLOAT8_ARRAY: Oid = Oid(1022);
    /// `oid[]`.
    pub const OID_ARRAY: Oid = Oid(1028);
    /// `macaddr[]`.
    pub const MACADDR_ARRAY: Oid = Oid(1040);
    /// `inet[]`.
    pub const INET_ARRAY: Oid = Oid(1041);
    /// `timestamp[]`.
    pub const TIMESTAMP_ARRAY: Oid = Oid(1115);
    /// `date[]`.
    pub const DATE_ARRAY: Oid = Oid(1182);
    /// `time[]`.
    pub const TIME_ARRAY: Oid = Oid(1183);
    /// `timestamptz[]`.
    pub const TIMESTAMPTZ_ARRAY: Oid = Oid(1185);
    /// `interval[]`.
    pub const INTERVAL_ARRAY: Oid = Oid(1187);
    /// `numeric[]`.
    pub const NUMERIC_ARRAY: Oid = Oid(1231);
    /// `timetz[]`.
    pub const TIMETZ_ARRAY: Oid = Oid(1270);
    /// `uuid[]`.
    pub const UUID_ARRAY: Oid = Oid(2951);
    /// `jsonb[]`.
    pub const JSONB_ARRAY: Oid = Oid(3807);
}

/// A conversion this crate implements for both formats; each produces one [`Value`] variant.
///
/// Built-in OIDs map to these statically; an extension type whose text and binary formats are
/// those of a built-in (for example `citext`, whose formats are `text`'s) can be registered as
/// [`TypeKind::Scalar`] too.
///
/// [`Value`]: crate::Value
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScalarType {
    /// `bool` → [`Value::Bool`](crate::Value::Bool).
    Bool,
    /// `int2` → [`Value::Int2`](crate::Value::Int2).
    Int2,
    /// `int4` → [`Value::Int4`](crate::Value::Int4).
    Int4,
    /// `int8` → [`Value::Int8`](crate::Value::Int8).
    Int8,
    /// `oid` → [`Value::Oid`](crate::Value::Oid).
    Oid,
    /// `float4` → [`Value::Float4`](crate::Value::Float4).
    Float4,
    /// `float8` → [`Value::Float8`](crate::Value::Float8).
    Float8,
    /// `numeric` → [`Value::Numeric`](crate::Value::Numeric).
    Numeric,
    /// `text`, `varchar`, `bpchar`, `name` → [`Value::Text`](crate::Value::Text).
    Text,
    /// `bytea` → [`Value::Bytea`](crate::Value::Bytea).
    Bytea,
    /// `uuid` → [`Value::Uuid`](crate::Value::Uuid).
    Uuid,
    /// `date` → [`Value::Date`](crate::Value::Date).
    Date,
    /// `time` → [`Value::Time`](crate::Value::Time).
    Time,
    /// `timetz` → [`Value::TimeTz`](crate::Value::TimeTz).
    TimeTz,
    /// `timestamp` → [`Value::Timestamp`](crate::Value::Timestamp).
    Timestamp,
    /// `timestamptz` → [`Value::TimestampTz`](crate::Value::TimestampTz).
    TimestampTz,
    /// `interval` → [`Value::Interval`](crate::Value::Interval).
    Interval,
    /// `json` → [`Value::Json`](crate::Value::Json).
    Json,
    /// `jsonb` → [`Value::Jsonb`](crate::Value::Jsonb).
    Jsonb,
    /// `xml` → [`Value::Xml`](crate::Value::Xml).
    Xml,
    /// `inet` → [`Value::Inet`](crate::Value::Inet).
    Inet,
    /// `cidr` → [`Value::Cidr`](crate::Value::Cidr).
    Cidr,
    /// `macaddr` → [`Value::MacAddr`](crate::Value::MacAddr).
    MacAddr,
    /// `macaddr8` → [`Value::MacAddr8`](crate::Value::MacAddr8).
    MacAddr8,
}

impl ScalarType {
    /// The PostgreSQL type name, for error messages.
    pub fn name(self) -> &'static str {
        match self {
            ScalarType::Bool => "bool",
            ScalarType::Int2 => "int2",
            ScalarType::Int4 => "int4",
            ScalarType::Int8 => "int8",
            ScalarType::Oid => "oid",
            ScalarType::Float4 => "float4",
            ScalarType::Float8 => "float8",
            ScalarType::Numeric => "numeric",
            ScalarType::Text => "text",
            ScalarType::Bytea => "bytea",
            ScalarType::Uuid => "uuid",
            ScalarType::Date => "date",
            ScalarType::Time => "time",
            ScalarType::TimeTz => "timetz",
            ScalarType::Timestamp => "timestamp",
            ScalarType::TimestampTz => "timestamptz",
            ScalarType::Interval => "interval",
            ScalarType::Json => "json",
            ScalarType::Jsonb => "jsonb",
            ScalarType::Xml => "xml",
            ScalarType::Inet => "inet",
            ScalarType::Cidr => "cidr",
            ScalarType::MacAddr => "macaddr",
            ScalarType::MacAddr8 => "macaddr8",
        }
    }
}

/// How values of one type OID are converted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TypeKind {
    /// Converted by a built-in conversion.
    Scalar(ScalarType),
    /// An enum: both formats carry the label, which becomes [`Value::Enum`](crate::Value::Enum).
    Enum,
    /// A domain: converted as its base type, which may itself be a domain.
    Domain {
        /// `pg_type.typbasetype`.
        base: Oid,
    },
    /// An array whose elements have type `element`.
    Array {
        /// `pg_type.typelem`.
        element: Oid,
    },
}

impl TypeKind {
    /// The kind of a user-defined type as described by its `pg_type` row, or `None` when values
    /// of it cannot be converted (composite, range, multirange, pseudo and base types defined by
    /// extensions) and pass through as [`Value::Unknown`](crate::Value::Unknown).
    ///
    /// Meant for filling a [`TypeRegistry`](crate::TypeRegistry) from
    /// `SELECT oid, typtype, typcategory, typelem, typbasetype FROM pg_type`: an enum is
    /// `typtype = 'e'`, a domain `typtype = 'd'`, and an array `typcategory = 'A'` with a
    /// non-zero `typelem` (`typelem` alone is not enough: `point` and `name` have one too).
    pub fn from_pg_type(typtype: u8, typcategory: u8, typelem: Oid, typbasetype: Oid) -> Option<TypeKind> {
        match typtype {
            b'e' => Some(TypeKind::Enum),
            b'd' => Some(TypeKind::Domain { base: typbasetype }),
            b'b' if typcategory == b'A' && typelem != Oid(0) => Some(TypeKind::Array { element: typelem }),
            _ => None,
        }
    }
}

/// The kind of a built-in type, or `None` for OIDs outside the static table.
pub(crate) fn builtin_kind(oid: Oid) -> Option<TypeKind> {
    use type_oid as t;
    let scalar = |s| Some(TypeKind::Scalar(s));
    let array = |element| Some(TypeKind::Array { element });
    match oid {
        t::BOOL => scalar(ScalarType::Bool),
        t::BYTEA => scalar(ScalarType::Bytea),
        t::NAME | t::TEXT | t::BPCHAR | t::VARCHAR => scalar(ScalarType::Text),
        t::INT8 => scalar(ScalarType::Int8),
        t::INT2 => scalar(ScalarType::Int2),
        t::INT4 => scalar(ScalarType::Int4),
        t::OID => scalar(ScalarType::Oid),
        t::JSON => scalar(ScalarType::Json),
        t::XML => scalar(ScalarType::Xml),
        t::FLOAT4 => scalar(ScalarType::Float4),
        t::FLOAT8 => scalar(ScalarType::Float8),
        t::CIDR => scalar(ScalarType::Cidr),
        t::MACADDR8 => scalar(ScalarType::MacAddr8),
        t::MACADDR => scalar(ScalarType::MacAddr),
        t::INET => scalar(ScalarType::Inet),
        t::DATE => scalar(ScalarType::Date),
        t::TIME => scalar(ScalarType::Time),
        t::TIMESTAMP => scalar(ScalarType::Timestamp),
        t::TIMESTAMPTZ => scalar(ScalarType::TimestampTz),
        t::INTERVAL => scalar(ScalarType::Interval),
        t::TIMETZ => scalar(ScalarType::TimeTz),
        t::NUMERIC => scalar(ScalarType::Numeric),
        t::UUID => scalar(ScalarType::Uuid),
        t::JSONB => scalar(ScalarType::Jsonb),

        t::JSON_ARRAY => array(t::JSON),
        t::XML_ARRAY => array(t::XML),
        t::CIDR_ARRAY => array(t::CIDR),
        t::MACADDR8_ARRAY => array(t::MACADDR8),
        t::BOOL_ARRAY => array(t::BOOL),
        t::BYTEA_ARRAY => array(t::BYTEA),
        t::NAME_ARRAY => array(t::NAME),
        t::INT2_ARRAY => array(t::INT2),
        t::INT4_ARRAY => array(t::INT4),
        t::TEXT_ARRAY => array(t::TEXT),
        t::BPCHAR_ARRAY => array(t::BPCHAR),
        t::VARCHAR_ARRAY => array(t::VARCHAR),
        t::INT8_ARRAY => array(t::INT8),
        t::FLOAT4_ARRAY => array(t::FLOAT4),
        t::FLOAT8_ARRAY => array(t::FLOAT8),
        t::OID_ARRAY => array(t::OID),
        t::MACADDR_ARRAY => array(t::MACADDR),
        t::INET_ARRAY => array(t::INET),
        t::TIMESTAMP_ARRAY => array(t::TIMESTAMP),
        t::DATE_ARRAY => array(t::DATE),
        t::TIME_ARRAY => array(t::TIME),
        t::TIMESTAMPTZ_ARRAY => array(t::TIMESTAMPTZ),
        t::INTERVAL_ARRAY => array(t::INTERVAL),
        t::NUMERIC_ARRAY => array(t::NUMERIC),
        t::TIMETZ_ARRAY => array(t::TIMETZ),
        t::UUID_ARRAY => array(t::UUID),
        t::JSONB_ARRAY => array(t::JSONB),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_array_has_a_builtin_scalar_element() {
        for raw in 0..10_000 {
            if let Some(TypeKind::Array { element }) = builtin_kind(Oid(raw)) {
                assert!(
                    matches!(builtin_kind(element), Some(TypeKind::Scalar(_))),
                    "array {raw} has element {element} outside the table"
                );
            }
        }
    }

    #[test]
    fn catalog_rows_map_to_kinds() {
        assert_eq!(TypeKind::from_pg_type(b'e', b'E', Oid(0), Oid(0)), Some(TypeKind::Enum));
        assert_eq!(TypeKind::from_pg_type(b'd', b'N', Oid(0), Oid(23)), Some(TypeKind::Domain { base: Oid(23) }));
        assert_eq!(
            TypeKind::from_pg_type(b'b', b'A', Oid(16_400), Oid(0)),
            Some(TypeKind::Array { element: Oid(16_400) })
        );
        // point-like: fixed-length subscripting, not an array
        assert_eq!(TypeKind::from_pg_type(b'b', b'G', Oid(701), Oid(0)), None);
        assert_eq!(TypeKind::from_pg_type(b'c', b'C', Oid(0), Oid(0)), None);
        assert_eq!(TypeKind::from_pg_type(b'r', b'R', Oid(0), Oid(0)), None);
    }
}
