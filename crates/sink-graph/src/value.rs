//! Graph property values: the types both transports can carry (what Neo4j
//! and FalkorDB accept as properties and parameters), and the mapping from
//! PostgreSQL's typed values to them.
//!
//! Mapping (see [`ValueOptions`] for the configurable parts):
//! - `bool` → boolean; `int2/4/8`, `oid` → integer; `float4/8` → float
//!   (NaN and ±Infinity, which Cypher has no literal for, as the strings
//!   `NaN`, `Infinity`, `-Infinity`);
//! - `numeric` → exact decimal string, or float (`numeric = "float"`);
//! - `timestamp`/`timestamptz` → ISO 8601 string (`…Z` for `timestamptz`)
//!   or integer milliseconds/microseconds since the Unix epoch;
//! - `date` → `YYYY-MM-DD`; other date/time types, network types, `uuid`,
//!   enums and unknown types → their PostgreSQL text;
//! - `json`/`jsonb` → the JSON text; `bytea` → `\x…` hex text;
//! - one-dimensional arrays without NULLs → lists of the element mapping;
//!   other arrays (several dimensions, NULL elements: graph stores accept
//!   neither in a property) → their PostgreSQL text.

use pgoutput::Value;

use crate::config::{NumericAs, TimestampAs};

/// A property or parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum GraphValue {
    /// Absent; as a property, setting it removes the property.
    Null,
    /// Boolean.
    Bool(bool),
    /// 64-bit integer.
    Int(i64),
    /// 64-bit float (always finite: non-finite floats are mapped to strings).
    Float(f64),
    /// UTF-8 text.
    String(String),
    /// List (parameters may nest; properties hold lists of scalars only).
    List(Vec<GraphValue>),
    /// Map with string keys, in order (parameters only).
    Map(Vec<(String, GraphValue)>),
}

/// Per-sink choices for values without one obvious graph type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValueOptions {
    /// How `numeric` is stored.
    pub numeric: NumericAs,
    /// How timestamps are stored.
    pub timestamps: TimestampAs,
}

impl ValueOptions {
    /// The graph value of one typed PostgreSQL value.
    pub fn convert(&self, value: &Value) -> GraphValue {
        match value {
            Value::Null => GraphValue::Null,
            Value::Bool(b) => GraphValue::Bool(*b),
            Value::Int2(i) => GraphValue::Int(i64::from(*i)),
            Value::Int4(i) => GraphValue::Int(i64::from(*i)),
            Value::Int8(i) => GraphValue::Int(*i),
            Value::Oid(oid) => GraphValue::Int(i64::from(oid.0)),
            Value::Float4(f) => float(f64::from(*f)),
            Value::Float8(f) => float(*f),
            Value::Numeric(numeric) => match self.numeric {
                NumericAs::String => GraphValue::String(numeric.to_string()),
                NumericAs::Float => match numeric.as_str().parse::<f64>() {
                    Ok(parsed) => float(parsed),
                    Err(_) => GraphValue::String(numeric.to_string()),
                },
            },
            Value::Text(text) | Value::Json(text) | Value::Jsonb(text) | Value::Xml(text) => {
                GraphValue::String(text.clone())
            }
            Value::Enum { label, .. } => GraphValue::String(label.clone()),
            Value::Unknown { text, .. } => GraphValue::String(text.clone()),
            Value::Timestamp(ts) => self.timestamp(*ts, false),
            Value::TimestampTz(ts) => self.timestamp(*ts, true),
            Value::Array(array) => {
                let elements = array.elements();
                if array.dims().len() <= 1 && !elements.iter().any(Value::is_null) {
                    GraphValue::List(elements.iter().map(|element| self.convert(element)).collect())
                } else {
                    GraphValue::String(value.to_string())
                }
            }
            // Everything else is best kept as PostgreSQL prints it: dates,
            // times, intervals, uuid, inet, bytea (hex), unknown binary.
            other => GraphValue::String(other.to_string()),
        }
    }

    fn timestamp(&self, ts: pgoutput::value::Timestamp, with_zone: bool) -> GraphValue {
        let Some(micros) = ts.to_unix_micros() else {
            return GraphValue::String(if ts.0 > 0 { "infinity".into() } else { "-infinity".into() });
        };
        match self.timestamps {
            TimestampAs::EpochMicros => GraphValue::Int(micros),
            TimestampAs::EpochMillis => GraphValue::Int(micros.div_euclid(1000)),
            TimestampAs::Iso => {
                // PostgreSQL's ISO output is `YYYY-MM-DD HH:MM:SS[.ffffff][ BC]`;
                // ISO 8601 wants a `T` between date and time. BC years keep
                // PostgreSQL's form, which ISO 8601 has no plain spelling for.
                let text = ts.to_string();
                if text.ends_with(" BC") {
                    return GraphValue::String(text);
                }
                let mut iso = text.replacen(' ', "T", 1);
                if with_zone {
                    iso.push('Z');
                }
                GraphValue::String(iso)
            }
        }
    }
}

fn float(value: f64) -> GraphValue {
    if value.is_finite() {
        GraphValue::Float(value)
    } else if value.is_nan() {
        GraphValue::String("NaN".into())
    } else if value > 0.0 {
        GraphValue::String("Infinity".into())
    } else {
        GraphValue::String("-Infinity".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgoutput::value::{Array, Date, Numeric, Timestamp};
    use pgoutput::Oid;

    const ISO: ValueOptions = ValueOptions { numeric: NumericAs::String, timestamps: TimestampAs::Iso };

    fn string(text: &str) -> GraphValue {
        GraphValue::String(text.into())
    }

    #[test]
    fn scalars_keep_their_types() {
        assert_eq!(ISO.convert(&Value::Int2(-3)), GraphValue::Int(-3));
        assert_eq!(ISO.convert(&Value::Int8(i64::MIN)), GraphValue::Int(i64::MIN));
        assert_eq!(ISO.convert(&Value::Bool(true)), GraphValue::Bool(true));
        assert_eq!(ISO.convert(&Value::Float4(1.5)), GraphValue::Float(1.5));
        assert_eq!(ISO.convert(&Value::Float8(f64::NAN)), string("NaN"));
        assert_eq!(ISO.convert(&Value::Float8(f64::NEG_INFINITY)), string("-Infinity"));
        assert_eq!(ISO.convert(&Value::Jsonb(r#"{"a": 1}"#.into())), string(r#"{"a": 1}"#));
        assert_eq!(ISO.convert(&Value::Null), GraphValue::Null);
    }

    #[test]
    fn numeric_is_exact_text_or_a_float() {
        let numeric = Value::Numeric("12345678901234567890.125".parse::<Numeric>().unwrap());
        assert_eq!(ISO.convert(&numeric), string("12345678901234567890.125"));
        let as_float = ValueOptions { numeric: NumericAs::Float, ..ISO };
        assert_eq!(as_float.convert(&Value::Numeric("130.50".parse().unwrap())), GraphValue::Float(130.5));
        assert_eq!(as_float.convert(&Value::Numeric("NaN".parse().unwrap())), string("NaN"));
    }

    #[test]
    fn timestamps_are_iso_text_or_epoch_integers() {
        // 2026-12-01 10:30:00.5 UTC, in PostgreSQL's microseconds since 2000-01-01.
        let ts = Timestamp(849_436_200_500_000);
        assert_eq!(ISO.convert(&Value::Timestamp(ts)), string("2026-12-01T10:30:00.5"));
        assert_eq!(ISO.convert(&Value::TimestampTz(ts)), string("2026-12-01T10:30:00.5Z"));
        let millis = ValueOptions { timestamps: TimestampAs::EpochMillis, ..ISO };
        assert_eq!(millis.convert(&Value::TimestampTz(ts)), GraphValue::Int(1_796_121_000_500));
        let micros = ValueOptions { timestamps: TimestampAs::EpochMicros, ..ISO };
        assert_eq!(micros.convert(&Value::Timestamp(ts)), GraphValue::Int(1_796_121_000_500_000));
        assert_eq!(millis.convert(&Value::TimestampTz(Timestamp::INFINITY)), string("infinity"));
        assert_eq!(ISO.convert(&Value::Date(Date::from_ymd(2026, 12, 1).unwrap())), string("2026-12-01"));
    }

    #[test]
    fn flat_arrays_become_lists_and_others_text() {
        let ints = Array::from_elements(Oid(23), vec![Value::Int4(1), Value::Int4(2)]).unwrap();
        assert_eq!(ISO.convert(&Value::Array(ints)), GraphValue::List(vec![GraphValue::Int(1), GraphValue::Int(2)]));
        let with_null = Array::from_elements(Oid(25), vec![Value::Text("a".into()), Value::Null]).unwrap();
        assert_eq!(ISO.convert(&Value::Array(with_null)), string("{a,NULL}"));
    }
}
