//! The value conversion error types.
//!
//! A [`ValueError`] is permanent: the bytes are not what PostgreSQL's output or send function
//! produces for the type under the session settings pgfanout pins, so retrying cannot help.
//! Either the input is corrupt or the replication session was set up differently (for example
//! `DateStyle` is not `ISO`), and both need an operator.
//!
//! Errors keep the offending text in a field (cut to [`MAX_TEXT_IN_ERROR`] bytes) so a caller
//! can inspect it, but their `Display` never prints it: row values can hold personal data and
//! error messages end up in logs.

use crate::Oid;

/// The most bytes of an offending text value an error keeps.
pub const MAX_TEXT_IN_ERROR: usize = 64;

/// Why a column value could not be converted to a [`Value`](crate::Value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// Text-format bytes are not valid UTF-8 (pgfanout asks for `client_encoding=UTF8`).
    #[error("text value of type {type_oid} is not valid UTF-8 (bad byte at {valid_up_to})")]
    InvalidUtf8 {
        /// The type being converted.
        type_oid: Oid,
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// Text is not the type's output form.
    #[error("invalid text value of type {type_oid} ({type_name}): {reason}")]
    InvalidText {
        /// The type being converted (the column's type, or the array's element type).
        type_oid: Oid,
        /// What the text was parsed as, e.g. `"timestamptz"`.
        type_name: &'static str,
        /// What is wrong.
        reason: &'static str,
        /// The offending text, cut to [`MAX_TEXT_IN_ERROR`] bytes; never displayed.
        text: String,
    },
    /// Binary bytes are not the type's send format.
    #[error("invalid binary value of type {type_oid} ({type_name}) at byte {offset}: {reason}")]
    InvalidBinary {
        /// The type being converted.
        type_oid: Oid,
        /// What the bytes were read as, e.g. `"numeric"`.
        type_name: &'static str,
        /// Where in the value the problem is.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A chain of domains is longer than the limit, or loops.
    #[error("domain {type_oid} does not reach a base type within {max_depth} steps")]
    DomainTooDeep {
        /// The type whose resolution failed.
        type_oid: Oid,
        /// The limit.
        max_depth: usize,
    },
    /// An array's structure is invalid (in either format), or too large to accept.
    #[error("invalid array of type {type_oid}: {reason}")]
    InvalidArray {
        /// The array's type (or, from [`Array::new`](crate::value::Array::new), its element type).
        type_oid: Oid,
        /// What is wrong.
        reason: &'static str,
    },
    /// A binary array says its elements have another type than the registry does.
    #[error("array of type {type_oid} holds elements of type {found}, expected {expected}")]
    ArrayElementType {
        /// The array's type.
        type_oid: Oid,
        /// The element type the registry knows for it.
        expected: Oid,
        /// The element type in the value's header.
        found: Oid,
    },
    /// A tuple has a different number of columns than its relation.
    #[error("tuple has {found} columns but its relation has {expected}")]
    ColumnCount {
        /// Columns in the Relation message.
        expected: usize,
        /// Columns in the tuple.
        found: usize,
    },
    /// One column of a tuple could not be converted.
    #[error("cannot convert column {index} ({name})")]
    Column {
        /// Position in the relation.
        index: usize,
        /// Column name.
        name: String,
        /// Why.
        #[source]
        source: Box<ValueError>,
    },
}

impl ValueError {
    /// The type OID the error is about, when it is about one type.
    pub fn type_oid(&self) -> Option<Oid> {
        match self {
            ValueError::InvalidUtf8 { type_oid, .. }
            | ValueError::InvalidText { type_oid, .. }
            | ValueError::InvalidBinary { type_oid, .. }
            | ValueError::DomainTooDeep { type_oid, .. }
            | ValueError::InvalidArray { type_oid, .. }
            | ValueError::ArrayElementType { type_oid, .. } => Some(*type_oid),
            ValueError::Column { source, .. } => source.type_oid(),
            ValueError::ColumnCount { .. } => None,
        }
    }
}

/// Builds [`ValueError::InvalidText`], keeping at most [`MAX_TEXT_IN_ERROR`] bytes of `text`.
pub(crate) fn invalid_text(type_oid: Oid, type_name: &'static str, text: &str, reason: &'static str) -> ValueError {
    let mut end = text.len().min(MAX_TEXT_IN_ERROR);
    while !text.is_char_boundary(end) {
        end -= 1; // terminates: 0 is always a char boundary
    }
    let kept = text.get(..end).unwrap_or_default();
    ValueError::InvalidText { type_oid, type_name, reason, text: kept.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offending_text_is_kept_cut_and_never_displayed() {
        let long = "é".repeat(40); // 80 bytes, 2 per char
        let err = invalid_text(Oid(1082), "date", &long, "bad year");
        let ValueError::InvalidText { text, .. } = &err else { unreachable!("built above") };
        assert_eq!(text.len(), 64);
        assert!(long.starts_with(text.as_str()));
        let shown = err.to_string();
        assert_eq!(shown, "invalid text value of type 1082 (date): bad year");
        assert!(!shown.contains('é'));

        let cut_mid_char = invalid_text(Oid(25), "text", &format!("a{long}"), "x");
        let ValueError::InvalidText { text, .. } = cut_mid_char else { unreachable!("built above") };
        assert_eq!(text.len(), 63, "a 2-byte char straddling the limit is dropped whole");
    }

    #[test]
    fn column_error_reports_the_inner_type() {
        let inner = ValueError::DomainTooDeep { type_oid: Oid(16_400), max_depth: 32 };
        let err = ValueError::Column { index: 2, name: "price".into(), source: Box::new(inner) };
        assert_eq!(err.type_oid(), Some(Oid(16_400)));
        assert_eq!(err.to_string(), "cannot convert column 2 (price)");
        assert!(std::error::Error::source(&err).is_some());
    }
}
