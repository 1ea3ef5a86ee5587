//! `json`/`jsonb` text to nested BSON documents and arrays.
//!
//! A small parser of its own rather than `serde_json`, for the numbers: each keeps its
//! value: integers become Int32/Int64, other numbers a double when the double is the
//! number's shortest spelling (`0.1`, `2.5e-3`), else — big integers, long fractions —
//! Decimal128 (or text) through the `numeric` options, never a rounded double. serde_json
//! hands a deserializer only the rounded `f64` unless its `arbitrary_precision` feature is
//! on, and that feature, unified across the workspace, changes how every other crate's
//! `serde_json::Value` numbers behave. (Key order alone would not need a parser: a BSON
//! document is ordered, `json` keeps the order it was written in, and serde_json visits
//! keys in order.) Nesting is limited to [`MAX_DEPTH`] so deep input cannot overflow the
//! stack.

use bson::{Bson, Document};

use crate::config::NumericFormat;
use crate::value::{decimal_parts, ValueEncoder, ValueRejected};

/// Deepest nesting of arrays and objects accepted (PostgreSQL's own parser allows more,
/// but such documents are not what MongoDB is for: MongoDB itself stops at 100 levels).
pub const MAX_DEPTH: usize = 100;

/// Parses JSON `text` into BSON.
pub fn to_bson(text: &str, values: &ValueEncoder) -> Result<Bson, ValueRejected> {
    let mut parser = Parser { text: text.as_bytes(), position: 0, values };
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.position != parser.text.len() {
        return Err(parser.error("trailing characters"));
    }
    Ok(value)
}

struct Parser<'a> {
    text: &'a [u8],
    position: usize,
    values: &'a ValueEncoder,
}

impl Parser<'_> {
    fn error(&self, reason: &'static str) -> ValueRejected {
        ValueRejected::Json { offset: self.position, reason }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.position).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.position += 1;
        }
    }

    fn expect(&mut self, byte: u8, reason: &'static str) -> Result<(), ValueRejected> {
        self.skip_whitespace();
        if self.peek() == Some(byte) {
            self.position += 1;
            Ok(())
        } else {
            Err(self.error(reason))
        }
    }

    fn literal(&mut self, word: &'static [u8], value: Bson) -> Result<Bson, ValueRejected> {
        if self.text.get(self.position..self.position + word.len()) == Some(word) {
            self.position += word.len();
            Ok(value)
        } else {
            Err(self.error("unknown literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Bson, ValueRejected> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Bson::String),
            Some(b't') => self.literal(b"true", Bson::Boolean(true)),
            Some(b'f') => self.literal(b"false", Bson::Boolean(false)),
            Some(b'n') => self.literal(b"null", Bson::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("unexpected character")),
            None => Err(self.error("unexpected end")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Bson, ValueRejected> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested more than 100 levels deep"));
        }
        self.position += 1;
        let mut document = Document::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.position += 1;
            return Ok(Bson::Document(document));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a key"));
            }
            let key = self.string()?;
            self.expect(b':', "expected ':'")?;
            let value = self.value(depth)?;
            // A repeated key (possible in `json`) keeps the last value, as jsonb does.
            document.insert(key, value);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.position += 1,
                Some(b'}') => {
                    self.position += 1;
                    return Ok(Bson::Document(document));
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Bson, ValueRejected> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested more than 100 levels deep"));
        }
        self.position += 1;
        let mut elements = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.position += 1;
            return Ok(Bson::Array(elements));
        }
        loop {
            elements.push(self.value(depth)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.position += 1,
                Some(b']') => {
                    self.position += 1;
                    return Ok(Bson::Array(elements));
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, ValueRejected> {
        let digits = self.text.get(self.position..self.position + 4).ok_or_else(|| self.error("short \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.error("bad \\u escape"))?;
        let code = u32::from_str_radix(text, 16).map_err(|_| self.error("bad \\u escape"))?;
        self.position += 4;
        Ok(code)
    }

    fn string(&mut self) -> Result<String, ValueRejected> {
        self.position += 1;
        let mut out = Vec::new();
        loop {
            let byte = self.peek().ok_or_else(|| self.error("unterminated string"))?;
            self.position += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let escape = self.peek().ok_or_else(|| self.error("unterminated escape"))?;
                    self.position += 1;
                    let simple = match escape {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            let mut code = self.hex4()?;
                            if (0xD800..0xDC00).contains(&code)
                                && self.text.get(self.position..self.position + 2) == Some(b"\\u")
                            {
                                self.position += 2;
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err(self.error("unpaired surrogate"));
                                }
                                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                            }
                            let ch = char::from_u32(code).ok_or_else(|| self.error("unpaired surrogate"))?;
                            out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                            continue;
                        }
                        _ => return Err(self.error("unknown escape")),
                    };
                    out.push(simple);
                }
                other => out.push(other),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("invalid UTF-8"))
    }

    fn number(&mut self) -> Result<Bson, ValueRejected> {
        let start = self.position;
        while matches!(self.peek(), Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')) {
            self.position += 1;
        }
        // Only ASCII bytes were consumed.
        let text = std::str::from_utf8(self.text.get(start..self.position).unwrap_or_default())
            .map_err(|_| self.error("invalid number"))?;
        let parts = decimal_parts(text).ok_or_else(|| self.error("invalid number"))?;
        let is_integer = !text.contains(['.', 'e', 'E']);
        if is_integer {
            if let Ok(int) = text.parse::<i64>() {
                return Ok(i32::try_from(int).map_or(Bson::Int64(int), Bson::Int32));
            }
        }
        let double: f64 = text.parse().map_err(|_| self.error("invalid number"))?;
        if double.is_finite() && decimal_parts(&format!("{double:e}")) == Some(parts.clone()) {
            return Ok(Bson::Double(double));
        }
        match self.values.options().numeric {
            NumericFormat::Double => Ok(Bson::Double(double)),
            NumericFormat::String => Ok(Bson::String(text.to_owned())),
            NumericFormat::Decimal128 => self.values.decimal_text(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn parse(text: &str) -> Bson {
        to_bson(text, &ValueEncoder::default()).unwrap()
    }

    #[test]
    fn objects_keep_key_order_and_unicode() {
        let value = parse(r#" {"z": 1, "a": {"ü": "é\u00e9\ud83d\ude00", "list": [true, null, "x"]}, "m": -2} "#);
        let expected = doc! { "z": 1, "a": { "ü": "éé😀", "list": [true, null, "x"] }, "m": -2 };
        assert_eq!(value, Bson::Document(expected.clone()));
        let Bson::Document(document) = value else { unreachable!() };
        assert_eq!(document.keys().collect::<Vec<_>>(), ["z", "a", "m"]);
    }

    #[test]
    fn numbers_keep_their_values() {
        assert_eq!(parse("5000000000"), Bson::Int64(5_000_000_000));
        assert_eq!(parse("0.1"), Bson::Double(0.1));
        assert_eq!(parse("-2.5e-3"), Bson::Double(-0.0025));
        let Bson::Decimal128(big) = parse("123456789012345678901234567890") else { panic!("not a decimal") };
        assert_eq!(decimal_parts(&big.to_string()), decimal_parts("123456789012345678901234567890"));
        let Bson::Decimal128(long) = parse("0.1000000000000000055511151231257827") else { panic!("not a decimal") };
        assert_eq!(decimal_parts(&long.to_string()), decimal_parts("0.1000000000000000055511151231257827"));
    }

    #[test]
    fn bad_and_deep_input_is_an_error_not_a_panic() {
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "\"\\x\"", "tru", "1 2", "\"\\ud800\"", "--1", "\"\\u12"] {
            assert!(to_bson(bad, &ValueEncoder::default()).is_err(), "{bad:?} parsed");
        }
        let deep = format!("{}{}", "[".repeat(101), "]".repeat(101));
        assert!(to_bson(&deep, &ValueEncoder::default()).is_err());
        let fine = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(to_bson(&fine, &ValueEncoder::default()).is_ok());
    }
}
