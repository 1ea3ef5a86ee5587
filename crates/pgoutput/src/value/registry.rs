//! The [`TypeRegistry`]: which conversion each type OID gets, and the decoding entry points.
//!
//! Built-in types come from a static table and cannot be re-registered. Everything else is
//! what the caller said: [`TypeRegistry::register`] with a [`TypeKind`] (typically one per
//! `pg_type` row of the database, via [`TypeKind::from_pg_type`]), and
//! [`TypeRegistry::observe`] for the names pgoutput announces in Type messages. A type known
//! only by name converts as [`Value::Unknown`]; a registration may be replaced at any time (for
//! example after `ALTER DOMAIN`), and takes effect for the next value decoded.
//!
//! The registry is plain data: decoding takes `&self`, so one registry can be shared by
//! reference across threads between updates.

use std::collections::HashMap;

use bytes::Bytes;

use super::array;
use super::types::builtin_kind;
use super::{binary, text, ScalarType, TypeKind};
use crate::{Oid, Relation, TupleColumn, TupleData, TypeMessage, Value, ValueError};

/// How many domains may be stacked on one another (a loop in what was registered would
/// otherwise never end).
pub const MAX_DOMAIN_DEPTH: usize = 32;

/// A type's schema and name, as a Type message or `pg_type` gives them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TypeName {
    /// Schema (`pg_catalog` for built-in types).
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// A column value converted from a [`TupleColumn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnValue {
    /// The value ([`Value::Null`] for SQL NULL).
    Value(Value),
    /// The column is an unchanged TOASTed value that PostgreSQL did not send: the old value
    /// still holds, but this message does not carry it.
    UnchangedToast,
}

impl ColumnValue {
    /// The value, unless the column was an unchanged TOAST value.
    pub fn value(&self) -> Option<&Value> {
        match self {
            ColumnValue::Value(value) => Some(value),
            ColumnValue::UnchangedToast => None,
        }
    }
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// Built-in types have fixed conversions.
    #[error("type {oid} is built in and cannot be registered")]
    BuiltinType {
        /// The OID given.
        oid: Oid,
    },
}

/// What the caller told us about one non-built-in type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RegisteredType {
    kind: Option<TypeKind>,
    name: Option<TypeName>,
}

/// What a type OID converts as once domains are followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolved {
    Scalar(ScalarType),
    Enum(Oid),
    Array { array: Oid, element: Oid },
    Unknown(Oid),
}

/// Maps type OIDs to conversions and converts column values.
///
/// Built-in types come from a static table and cannot be re-registered; enums, domains and
/// arrays of other types are what the caller registers (typically one [`TypeKind`] per
/// `pg_type` row, via [`TypeKind::from_pg_type`]). Type (`Y`) messages only add names, so a
/// type known only that way converts as [`Value::Unknown`]. Registrations may be replaced at
/// any time (after `ALTER DOMAIN`, say) and apply to the next value decoded. Decoding takes
/// `&self`, so a registry can be shared across threads between updates.
///
/// ```
/// use pgoutput::value::{type_oid, TypeKind};
/// use pgoutput::{Oid, TypeRegistry, Value};
///
/// let mut registry = TypeRegistry::new();
/// let mood = Oid(16_390);
/// registry.register(mood, TypeKind::Enum)?;
/// registry.register(Oid(16_389), TypeKind::Array { element: mood })?;
///
/// assert_eq!(registry.decode_text(type_oid::INT8, b"42")?, Value::Int8(42));
/// assert_eq!(registry.decode_binary(type_oid::INT8, &42_i64.to_be_bytes())?, Value::Int8(42));
/// assert_eq!(
///     registry.decode_text(mood, b"happy")?,
///     Value::Enum { type_oid: mood, label: "happy".into() }
/// );
/// let moods = registry.decode_text(Oid(16_389), b"{happy,NULL}")?;
/// assert_eq!(moods.to_string(), "{happy,NULL}");
/// // Types nobody registered pass through.
/// assert_eq!(registry.decode_text(Oid(600), b"(1,2)")?, Value::Unknown { type_oid: Oid(600), text: "(1,2)".into() });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeRegistry {
    registered: HashMap<Oid, RegisteredType>,
}

impl TypeRegistry {
    /// A registry that knows the built-in types only.
    pub fn new() -> Self {
        TypeRegistry::default()
    }

    /// Sets how values of a non-built-in type convert, replacing any earlier registration.
    pub fn register(&mut self, oid: Oid, kind: TypeKind) -> Result<(), RegisterError> {
        if builtin_kind(oid).is_some() {
            return Err(RegisterError::BuiltinType { oid });
        }
        self.registered.entry(oid).or_default().kind = Some(kind);
        Ok(())
    }

    /// Registers an enum type: its values become [`Value::Enum`].
    pub fn register_enum(&mut self, oid: Oid) -> Result<(), RegisterError> {
        self.register(oid, TypeKind::Enum)
    }

    /// Registers a domain: its values convert as `base` (which may be another domain).
    pub fn register_domain(&mut self, oid: Oid, base: Oid) -> Result<(), RegisterError> {
        self.register(oid, TypeKind::Domain { base })
    }

    /// Registers an array type whose elements have type `element`.
    pub fn register_array(&mut self, oid: Oid, element: Oid) -> Result<(), RegisterError> {
        self.register(oid, TypeKind::Array { element })
    }

    /// Records a type's name (from `pg_type` or wherever the caller has it).
    pub fn set_name(&mut self, oid: Oid, name: TypeName) {
        self.registered.entry(oid).or_default().name = Some(name);
    }

    /// Records the name a Type (`Y`) message announces. It does not say how to convert the
    /// type, so until the type is registered its values pass through as [`Value::Unknown`].
    pub fn observe(&mut self, message: &TypeMessage) {
        self.set_name(message.oid, TypeName { namespace: message.namespace.clone(), name: message.name.clone() });
    }

    /// How values of `oid` convert: the built-in kind or the registered one.
    pub fn kind(&self, oid: Oid) -> Option<TypeKind> {
        builtin_kind(oid).or_else(|| self.registered.get(&oid).and_then(|t| t.kind))
    }

    /// The name recorded with [`set_name`](Self::set_name) or [`observe`](Self::observe).
    pub fn type_name(&self, oid: Oid) -> Option<&TypeName> {
        self.registered.get(&oid).and_then(|t| t.name.as_ref())
    }

    /// Follows domains from `type_oid` to the conversion that applies.
    fn resolve(&self, type_oid: Oid) -> Result<Resolved, ValueError> {
        let mut oid = type_oid;
        // One step per domain, plus the final lookup of the base type.
        for _ in 0..=MAX_DOMAIN_DEPTH {
            match self.kind(oid) {
                None => return Ok(Resolved::Unknown(oid)),
                Some(TypeKind::Scalar(scalar)) => return Ok(Resolved::Scalar(scalar)),
                Some(TypeKind::Enum) => return Ok(Resolved::Enum(oid)),
                Some(TypeKind::Array { element }) => return Ok(Resolved::Array { array: oid, element }),
                Some(TypeKind::Domain { base }) => oid = base,
            }
        }
        Err(ValueError::DomainTooDeep { type_oid, max_depth: MAX_DOMAIN_DEPTH })
    }

    /// Resolves an array's element type, refusing arrays of arrays (PostgreSQL has none: it
    /// uses dimensions), which also keeps decoding from recursing.
    fn resolve_element(&self, array_oid: Oid, element: Oid) -> Result<Resolved, ValueError> {
        match self.resolve(element)? {
            Resolved::Array { .. } => {
                Err(ValueError::InvalidArray { type_oid: array_oid, reason: "element type is an array type" })
            }
            resolved => Ok(resolved),
        }
    }

    /// Converts a value in text format (a type's output function's result).
    pub fn decode_text(&self, type_oid: Oid, bytes: &[u8]) -> Result<Value, ValueError> {
        let resolved = self.resolve(type_oid)?;
        if let Resolved::Scalar(scalar) = resolved {
            // Scalars check UTF-8 only where their grammar is not ASCII.
            return text::decode_scalar(scalar, type_oid, bytes);
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|err| ValueError::InvalidUtf8 { type_oid, valid_up_to: err.valid_up_to() })?;
        self.decode_text_resolved(type_oid, resolved, text)
    }

    fn decode_text_resolved(&self, type_oid: Oid, resolved: Resolved, text: &str) -> Result<Value, ValueError> {
        match resolved {
            Resolved::Scalar(scalar) => text::decode_scalar(scalar, type_oid, text.as_bytes()),
            Resolved::Enum(enum_oid) => Ok(Value::Enum { type_oid: enum_oid, label: text.to_owned() }),
            Resolved::Unknown(oid) => Ok(Value::Unknown { type_oid: oid, text: text.to_owned() }),
            Resolved::Array { array, element } => {
                let element_resolved = self.resolve_element(array, element)?;
                array::parse_text(array, element, text, |element_text| {
                    self.decode_text_resolved(element, element_resolved, element_text)
                })
                .map(Value::Array)
            }
        }
    }

    /// Converts a value in binary format (a type's send function's result). `bytea` values
    /// are copied; [`decode_column`](Self::decode_column) shares the message's buffer instead.
    pub fn decode_binary(&self, type_oid: Oid, bytes: &[u8]) -> Result<Value, ValueError> {
        self.decode_binary_shared(type_oid, bytes, None)
    }

    fn decode_binary_shared(&self, type_oid: Oid, bytes: &[u8], owner: Option<&Bytes>) -> Result<Value, ValueError> {
        let resolved = self.resolve(type_oid)?;
        self.decode_binary_resolved(type_oid, resolved, bytes, owner)
    }

    fn decode_binary_resolved(
        &self,
        type_oid: Oid,
        resolved: Resolved,
        bytes: &[u8],
        owner: Option<&Bytes>,
    ) -> Result<Value, ValueError> {
        match resolved {
            Resolved::Scalar(scalar) => binary::decode_scalar(scalar, type_oid, bytes, owner),
            Resolved::Enum(enum_oid) => match std::str::from_utf8(bytes) {
                Ok(label) => Ok(Value::Enum { type_oid: enum_oid, label: label.to_owned() }),
                Err(err) => Err(ValueError::InvalidUtf8 { type_oid, valid_up_to: err.valid_up_to() }),
            },
            Resolved::Unknown(oid) => {
                Ok(Value::UnknownBinary { type_oid: oid, bytes: binary::share_or_copy(bytes, owner) })
            }
            Resolved::Array { array, element } => {
                let element_resolved = self.resolve_element(array, element)?;
                // The header names the element type the value was built with; for an array of
                // a domain that may be the domain or its base type. Anything converting the
                // same way is accepted.
                let check = |found: Oid| {
                    if found == element || self.resolve(found).ok() == Some(element_resolved) {
                        Ok(())
                    } else {
                        Err(ValueError::ArrayElementType { type_oid: array, expected: element, found })
                    }
                };
                array::parse_binary(array, element, bytes, check, |element_bytes| {
                    self.decode_binary_resolved(element, element_resolved, element_bytes, owner)
                })
                .map(Value::Array)
            }
        }
    }

    /// Converts one column of a tuple: NULL becomes [`Value::Null`], an unchanged TOAST value
    /// [`ColumnValue::UnchangedToast`], and text or binary bytes are decoded (binary `bytea`
    /// sharing the message's buffer).
    pub fn decode_column(&self, type_oid: Oid, column: &TupleColumn) -> Result<ColumnValue, ValueError> {
        match column {
            TupleColumn::Null => Ok(ColumnValue::Value(Value::Null)),
            TupleColumn::UnchangedToast => Ok(ColumnValue::UnchangedToast),
            TupleColumn::Text(bytes) => self.decode_text(type_oid, bytes).map(ColumnValue::Value),
            TupleColumn::Binary(bytes) => {
                self.decode_binary_shared(type_oid, bytes, Some(bytes)).map(ColumnValue::Value)
            }
        }
    }

    /// Converts every column of a tuple, using the column types of its relation.
    pub fn decode_tuple(&self, relation: &Relation, tuple: &TupleData) -> Result<Vec<ColumnValue>, ValueError> {
        if relation.columns.len() != tuple.columns.len() {
            return Err(ValueError::ColumnCount { expected: relation.columns.len(), found: tuple.columns.len() });
        }
        // A plain loop into an exactly sized Vec: collecting into Result<Vec<_>> has no size
        // hint and reallocates on the hot path.
        let mut values = Vec::with_capacity(tuple.columns.len());
        for (index, (column, value)) in relation.columns.iter().zip(&tuple.columns).enumerate() {
            let converted = self.decode_column(column.type_oid, value).map_err(|source| ValueError::Column {
                index,
                name: column.name.clone(),
                source: Box::new(source),
            })?;
            values.push(converted);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::type_oid;

    const MOOD: Oid = Oid(16_390);
    const MOOD_ARRAY: Oid = Oid(16_389);
    const POSINT: Oid = Oid(16_400);
    const POSINT_ARRAY: Oid = Oid(16_399);
    const SMALL_POSINT: Oid = Oid(16_401);

    fn registry() -> TypeRegistry {
        let mut registry = TypeRegistry::new();
        registry.register_enum(MOOD).unwrap();
        registry.register_array(MOOD_ARRAY, MOOD).unwrap();
        registry.register_domain(POSINT, type_oid::INT4).unwrap();
        registry.register_domain(SMALL_POSINT, POSINT).unwrap();
        registry.register_array(POSINT_ARRAY, POSINT).unwrap();
        registry
    }

    #[test]
    fn builtins_cannot_be_registered() {
        let mut registry = TypeRegistry::new();
        assert_eq!(registry.register_enum(type_oid::TEXT), Err(RegisterError::BuiltinType { oid: type_oid::TEXT }));
        assert_eq!(registry.kind(type_oid::TEXT), Some(TypeKind::Scalar(ScalarType::Text)));
    }

    #[test]
    fn domains_resolve_to_their_base_recursively() {
        let registry = registry();
        assert_eq!(registry.decode_text(SMALL_POSINT, b"7"), Ok(Value::Int4(7)));
        assert_eq!(registry.decode_binary(SMALL_POSINT, &7_i32.to_be_bytes()), Ok(Value::Int4(7)));
        let err = registry.decode_text(SMALL_POSINT, b"x").unwrap_err();
        assert_eq!(err.type_oid(), Some(SMALL_POSINT), "errors name the column's type");
    }

    #[test]
    fn domain_loops_and_chains_are_cut() {
        let mut registry = TypeRegistry::new();
        registry.register_domain(Oid(20_000), Oid(20_001)).unwrap();
        registry.register_domain(Oid(20_001), Oid(20_000)).unwrap();
        assert_eq!(
            registry.decode_text(Oid(20_000), b"1"),
            Err(ValueError::DomainTooDeep { type_oid: Oid(20_000), max_depth: MAX_DOMAIN_DEPTH })
        );
        // A chain of `domains` domains, 30000 over 30001 over ... over int2.
        let chain = |domains: u32| {
            let mut registry = TypeRegistry::new();
            for step in 0..domains - 1 {
                registry.register_domain(Oid(30_000 + step), Oid(30_001 + step)).unwrap();
            }
            registry.register_domain(Oid(30_000 + domains - 1), type_oid::INT2).unwrap();
            registry
        };
        let limit = MAX_DOMAIN_DEPTH as u32;
        assert_eq!(chain(limit).decode_text(Oid(30_000), b"1"), Ok(Value::Int2(1)), "exactly the limit is fine");
        assert!(matches!(chain(limit + 1).decode_text(Oid(30_000), b"1"), Err(ValueError::DomainTooDeep { .. })));
    }

    #[test]
    fn enums_in_both_formats_and_arrays_of_them() {
        let registry = registry();
        let happy = Value::Enum { type_oid: MOOD, label: "happy".into() };
        assert_eq!(registry.decode_text(MOOD, b"happy"), Ok(happy.clone()));
        assert_eq!(registry.decode_binary(MOOD, b"happy"), Ok(happy.clone()));
        let array = registry.decode_text(MOOD_ARRAY, b"{happy,NULL}").unwrap();
        assert_eq!(array, Value::Array(Array::from_elements(MOOD, vec![happy, Value::Null]).unwrap()));
        assert_eq!(registry.decode_binary(MOOD_ARRAY, &array.to_pg_binary().unwrap()), Ok(array));
    }

    #[test]
    fn observed_types_pass_through_until_registered() {
        let mut registry = TypeRegistry::new();
        let message = TypeMessage { xid: None, oid: Oid(16_500), namespace: "public".into(), name: "mood".into() };
        registry.observe(&message);
        assert_eq!(registry.type_name(Oid(16_500)).map(|n| n.name.as_str()), Some("mood"));
        assert_eq!(
            registry.decode_text(Oid(16_500), b"sad"),
            Ok(Value::Unknown { type_oid: Oid(16_500), text: "sad".into() })
        );
        assert_eq!(
            registry.decode_binary(Oid(16_500), b"sad"),
            Ok(Value::UnknownBinary { type_oid: Oid(16_500), bytes: Bytes::from_static(b"sad") })
        );
        registry.register_enum(Oid(16_500)).unwrap();
        assert_eq!(
            registry.decode_text(Oid(16_500), b"sad"),
            Ok(Value::Enum { type_oid: Oid(16_500), label: "sad".into() })
        );
        assert_eq!(registry.type_name(Oid(16_500)).map(|n| n.namespace.as_str()), Some("public"), "name kept");
    }

    #[test]
    fn binary_arrays_check_the_element_type() {
        let registry = registry();
        let ints = Array::from_elements(type_oid::INT4, vec![Value::Int4(1)]).unwrap();
        let bytes = Value::Array(ints).to_pg_binary().unwrap();
        // An int4[] header is accepted for an array of a domain over int4...
        let decoded = registry.decode_binary(POSINT_ARRAY, &bytes).unwrap();
        let Value::Array(decoded) = decoded else { unreachable!("arrays decode to Array") };
        assert_eq!(decoded.element_type(), POSINT);
        assert_eq!(decoded.elements(), &[Value::Int4(1)]);
        // ...but not for text[].
        assert_eq!(
            registry.decode_binary(type_oid::TEXT_ARRAY, &bytes),
            Err(ValueError::ArrayElementType {
                type_oid: type_oid::TEXT_ARRAY,
                expected: type_oid::TEXT,
                found: type_oid::INT4
            })
        );
    }

    #[test]
    fn arrays_of_arrays_are_refused() {
        let mut registry = TypeRegistry::new();
        registry.register_array(Oid(40_000), type_oid::INT4_ARRAY).unwrap();
        assert!(matches!(registry.decode_text(Oid(40_000), b"{}"), Err(ValueError::InvalidArray { .. })));
    }

    #[test]
    fn columns_and_tuples() {
        let registry = registry();
        assert_eq!(registry.decode_column(type_oid::INT4, &TupleColumn::Null), Ok(ColumnValue::Value(Value::Null)));
        assert_eq!(
            registry.decode_column(type_oid::INT4, &TupleColumn::UnchangedToast),
            Ok(ColumnValue::UnchangedToast)
        );
        assert_eq!(
            registry.decode_column(type_oid::INT4, &TupleColumn::Binary(Bytes::from_static(&[0, 0, 0, 5]))),
            Ok(ColumnValue::Value(Value::Int4(5)))
        );
        let relation = Relation {
            xid: None,
            oid: Oid(16_384),
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: crate::ReplicaIdentity::Default,
            columns: vec![
                crate::RelationColumn { is_key: true, name: "id".into(), type_oid: type_oid::INT8, type_modifier: -1 },
                crate::RelationColumn { is_key: false, name: "qty".into(), type_oid: POSINT, type_modifier: -1 },
            ],
        };
        let good = TupleData {
            columns: vec![TupleColumn::Text(Bytes::from_static(b"1")), TupleColumn::Text(Bytes::from_static(b"2"))],
        };
        assert_eq!(
            registry.decode_tuple(&relation, &good),
            Ok(vec![ColumnValue::Value(Value::Int8(1)), ColumnValue::Value(Value::Int4(2))])
        );
        let bad = TupleData {
            columns: vec![TupleColumn::Text(Bytes::from_static(b"1")), TupleColumn::Text(Bytes::from_static(b"two"))],
        };
        let err = registry.decode_tuple(&relation, &bad).unwrap_err();
        assert!(matches!(&err, ValueError::Column { index: 1, name, .. } if name == "qty"), "{err:?}");
        let short = TupleData { columns: vec![TupleColumn::Null] };
        assert_eq!(registry.decode_tuple(&relation, &short), Err(ValueError::ColumnCount { expected: 2, found: 1 }));
    }

    use crate::value::Array;
}
