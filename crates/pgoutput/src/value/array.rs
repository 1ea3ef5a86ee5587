//! Arrays: the [`Array`] value and its text (`{1,2,NULL}`) and binary formats.
//!
//! An array is a rectangular block of elements in row-major order with up to [`MAX_DIMS`]
//! dimensions, each with its own lower bound. PostgreSQL normalises an array with a
//! zero-length dimension to the empty array (no dimensions), and so does [`Array`].
//!
//! Hostile input cannot make us allocate more than the input: text elements take at least one
//! byte each, binary elements at least their four-byte length, and the element count a header
//! declares is checked against both [`MAX_ELEMENTS`] and the bytes that are actually there
//! before anything is reserved. Nesting is bounded by [`MAX_DIMS`], so recursion is too.
//!
//! Text elements are split on `,`, the delimiter of every type this crate converts (only
//! `box` uses `;`).

use std::borrow::Cow;
use std::fmt;

use crate::{Oid, Value, ValueError};

/// Most dimensions an array may have (PostgreSQL's `MAXDIM`).
pub const MAX_DIMS: usize = 6;
/// Most elements an array may have (PostgreSQL's `MaxArraySize`).
pub const MAX_ELEMENTS: usize = 0x7FF_FFFF;
/// Element delimiter of every type this crate converts.
const DELIMITER: u8 = b',';

/// One dimension of an [`Array`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArrayDim {
    /// Index of the first element (1 unless the array was built with explicit bounds).
    pub lower_bound: i32,
    /// Number of elements along this dimension (never 0).
    pub len: u32,
}

impl ArrayDim {
    /// The last valid index, or `None` if it does not fit an `i32` (PostgreSQL rejects those).
    fn upper_bound(self) -> Option<i32> {
        i32::try_from(i64::from(self.lower_bound) + i64::from(self.len) - 1).ok()
    }
}

/// An array value: element type, dimensions and elements in row-major order.
///
/// Invariants (checked by [`Array::new`]): at most [`MAX_DIMS`] dimensions, none of length 0,
/// upper bounds within `i32`, and as many elements as the lengths multiply to (none for the
/// empty array, which has no dimensions); elements are never arrays themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Array {
    element_type: Oid,
    dims: Vec<ArrayDim>,
    elements: Vec<Value>,
}

impl Array {
    /// An array of the given shape; elements in row-major order, [`Value::Null`] for NULL.
    pub fn new(element_type: Oid, dims: Vec<ArrayDim>, elements: Vec<Value>) -> Result<Array, ValueError> {
        let invalid = |reason| ValueError::InvalidArray { type_oid: element_type, reason };
        if dims.len() > MAX_DIMS {
            return Err(invalid("more than 6 dimensions"));
        }
        let mut count: usize = if dims.is_empty() { 0 } else { 1 };
        for dim in &dims {
            if dim.len == 0 {
                return Err(invalid("a dimension has length 0 (use no dimensions for an empty array)"));
            }
            dim.upper_bound().ok_or_else(|| invalid("upper bound out of range"))?;
            count = count
                .checked_mul(dim.len as usize)
                .filter(|&count| count <= MAX_ELEMENTS)
                .ok_or_else(|| invalid("too many elements"))?;
        }
        if count != elements.len() {
            return Err(invalid("element count does not match the dimensions"));
        }
        if elements.iter().any(|element| matches!(element, Value::Array(_))) {
            return Err(invalid("elements cannot be arrays; use dimensions"));
        }
        Ok(Array { element_type, dims, elements })
    }

    /// A one-dimensional array with lower bound 1 (or the empty array).
    pub fn from_elements(element_type: Oid, elements: Vec<Value>) -> Result<Array, ValueError> {
        let dims = match u32::try_from(elements.len()) {
            Ok(0) => vec![],
            Ok(len) => vec![ArrayDim { lower_bound: 1, len }],
            Err(_) => return Err(ValueError::InvalidArray { type_oid: element_type, reason: "too many elements" }),
        };
        Array::new(element_type, dims, elements)
    }

    /// The element type (for an array of a domain, the domain).
    pub fn element_type(&self) -> Oid {
        self.element_type
    }

    /// The dimensions, outermost first; empty for the empty array.
    pub fn dims(&self) -> &[ArrayDim] {
        &self.dims
    }

    /// The elements in row-major order.
    pub fn elements(&self) -> &[Value] {
        &self.elements
    }

    /// The elements in row-major order, consuming the array.
    pub fn into_elements(self) -> Vec<Value> {
        self.elements
    }
}

/// Parses `array_out`'s text: `{a,b}`, `{{1,2},{3,4}}`, `[0:1]={a,b}`, with quoted elements
/// (`"a,b"`, `"say \"hi\""`) and unquoted `NULL`. `decode_element` converts each non-NULL
/// element's (unescaped) text.
pub(crate) fn parse_text<F>(
    array_oid: Oid,
    element_type: Oid,
    text: &str,
    decode_element: F,
) -> Result<Array, ValueError>
where
    F: FnMut(&str) -> Result<Value, ValueError>,
{
    let mut parser = TextParser { text, pos: 0, array_oid, lens: [None; MAX_DIMS], ndim: None, decode_element };
    let error = |reason| crate::value::error::invalid_text(array_oid, "array", text, reason);
    let explicit = parser.bounds().map_err(error)?;
    parser.skip_whitespace();
    if !parser.eat(b'{') {
        return Err(error("missing '{'"));
    }
    let mut elements = Vec::new();
    parser.level(0, &mut elements)?;
    parser.skip_whitespace();
    if parser.pos != text.len() {
        return Err(error("text after the closing '}'"));
    }
    let lens: Vec<u32> = parser.lens.iter().take(parser.ndim.unwrap_or(0)).map_while(|len| *len).collect();
    let dims = match explicit {
        None => lens.iter().map(|&len| ArrayDim { lower_bound: 1, len }).collect(),
        Some(explicit) => {
            if explicit.len() != lens.len() || explicit.iter().zip(&lens).any(|(dim, &len)| dim.len != len) {
                return Err(error("bounds do not match the elements"));
            }
            explicit
        }
    };
    Array::new(element_type, dims, elements).map_err(|err| with_array_oid(err, array_oid))
}

/// Reports a shape error against the array type rather than its element type.
fn with_array_oid(err: ValueError, array_oid: Oid) -> ValueError {
    match err {
        ValueError::InvalidArray { reason, .. } => ValueError::InvalidArray { type_oid: array_oid, reason },
        other => other,
    }
}

/// State of one text parse.
struct TextParser<'a, F> {
    /// The whole array text.
    text: &'a str,
    pos: usize,
    array_oid: Oid,
    /// Length of each nesting level, set by the first sub-array that closes at that level.
    lens: [Option<u32>; MAX_DIMS],
    /// Nesting depth of the elements (dimensions), fixed by the first element seen.
    ndim: Option<usize>,
    decode_element: F,
}

impl<'a, F> TextParser<'a, F>
where
    F: FnMut(&str) -> Result<Value, ValueError>,
{
    fn error(&self, reason: &'static str) -> ValueError {
        crate::value::error::invalid_text(self.array_oid, "array", self.text, reason)
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(is_array_space) {
            self.pos += 1;
        }
    }

    /// Optional `[lb:ub]...=` decoration.
    fn bounds(&mut self) -> Result<Option<Vec<ArrayDim>>, &'static str> {
        self.skip_whitespace();
        if self.peek() != Some(b'[') {
            return Ok(None);
        }
        let mut dims = Vec::new();
        while self.eat(b'[') {
            if dims.len() == MAX_DIMS {
                return Err("more than 6 dimensions");
            }
            let first = self.integer()?;
            let (lower, upper) = if self.eat(b':') { (first, self.integer()?) } else { (1, first) };
            if !self.eat(b']') {
                return Err("invalid dimension bounds");
            }
            let len = i64::from(upper) - i64::from(lower) + 1;
            let len = u32::try_from(len).ok().filter(|&len| len > 0).ok_or("upper bound below lower bound")?;
            dims.push(ArrayDim { lower_bound: lower, len });
        }
        if !self.eat(b'=') {
            return Err("missing '=' after dimension bounds");
        }
        Ok(Some(dims))
    }

    fn integer(&mut self) -> Result<i32, &'static str> {
        let start = self.pos;
        self.eat(b'-');
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.text.get(start..self.pos).and_then(|digits| digits.parse().ok()).ok_or("invalid dimension bound")
    }

    /// Parses the items of one `{...}` whose `{` was consumed, at nesting `depth`.
    fn level(&mut self, depth: usize, elements: &mut Vec<Value>) -> Result<(), ValueError> {
        self.skip_whitespace();
        if self.eat(b'}') {
            return if depth == 0 { Ok(()) } else { Err(self.error("empty sub-array")) };
        }
        let mut count: u32 = 0;
        loop {
            self.skip_whitespace();
            if self.eat(b'{') {
                if self.ndim.is_some_and(|ndim| ndim <= depth + 1) {
                    return Err(self.error("sub-arrays and elements mixed at one level"));
                }
                if depth + 1 >= MAX_DIMS {
                    return Err(self.error("more than 6 dimensions"));
                }
                self.level(depth + 1, elements)?;
            } else {
                match self.ndim {
                    None => self.ndim = Some(depth + 1),
                    Some(ndim) if ndim != depth + 1 => {
                        return Err(self.error("sub-arrays and elements mixed at one level"));
                    }
                    Some(_) => {}
                }
                let element = self.element()?;
                elements.push(element);
            }
            count += 1;
            self.skip_whitespace();
            if self.eat(DELIMITER) {
                continue;
            }
            if self.eat(b'}') {
                break;
            }
            return Err(self.error("expected ',' or '}'"));
        }
        // depth < MAX_DIMS: deeper levels are refused before recursing.
        match self.lens.get_mut(depth) {
            Some(slot @ None) => *slot = Some(count),
            Some(Some(len)) if *len == count => {}
            _ => return Err(self.error("sub-arrays of different lengths")),
        }
        Ok(())
    }

    /// One element: quoted, or unquoted up to the next delimiter or `}`.
    fn element(&mut self) -> Result<Value, ValueError> {
        let (raw, quoted) = if self.eat(b'"') { (self.quoted()?, true) } else { (self.unquoted()?, false) };
        if !quoted && raw.eq_ignore_ascii_case("NULL") {
            return Ok(Value::Null);
        }
        (self.decode_element)(&raw)
    }

    /// The inside of a quoted element whose opening quote was consumed; `\x` stands for `x`.
    fn quoted(&mut self) -> Result<Cow<'a, str>, ValueError> {
        let start = self.pos;
        let mut has_escape = false;
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated quoted element")),
                Some(b'"') => break,
                Some(b'\\') => {
                    has_escape = true;
                    self.pos += 1;
                    self.skip_char().ok_or_else(|| self.error("unterminated quoted element"))?;
                }
                Some(_) => {
                    self.skip_char();
                }
            }
        }
        let raw = self.text.get(start..self.pos).unwrap_or_default();
        self.pos += 1; // the closing quote
        Ok(if has_escape { Cow::Owned(unescape(raw).0) } else { Cow::Borrowed(raw) })
    }

    /// An unquoted element: up to an unescaped delimiter or `}`, trailing unescaped whitespace
    /// dropped (leading whitespace was skipped by the caller).
    fn unquoted(&mut self) -> Result<Cow<'a, str>, ValueError> {
        let start = self.pos;
        let mut has_escape = false;
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated array")),
                Some(DELIMITER | b'}') => break,
                Some(b'{' | b'"') => return Err(self.error("unexpected '{' or '\"' in unquoted element")),
                Some(b'\\') => {
                    has_escape = true;
                    self.pos += 1;
                    self.skip_char().ok_or_else(|| self.error("unterminated array"))?;
                }
                Some(_) => {
                    self.skip_char();
                }
            }
        }
        let raw = self.text.get(start..self.pos).unwrap_or_default();
        let element = if has_escape {
            let (mut unescaped, content_len) = unescape(raw);
            unescaped.truncate(content_len);
            Cow::Owned(unescaped)
        } else {
            Cow::Borrowed(raw.trim_end_matches(|c: char| u8::try_from(c).is_ok_and(is_array_space)))
        };
        if element.is_empty() && !has_escape {
            return Err(self.error("empty unquoted element"));
        }
        Ok(element)
    }

    /// Moves past one (possibly multi-byte) character; `None` at the end.
    fn skip_char(&mut self) -> Option<()> {
        let c = self.text.get(self.pos..)?.chars().next()?;
        self.pos += c.len_utf8();
        Some(())
    }
}

/// Drops the backslashes of `\x` escapes; also returns the length without trailing whitespace
/// that was not escaped.
fn unescape(raw: &str) -> (String, usize) {
    let mut out = String::with_capacity(raw.len());
    let mut content_len = 0;
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(escaped) = chars.next() {
                out.push(escaped);
                content_len = out.len();
            }
        } else {
            out.push(c);
            if !u8::try_from(c).is_ok_and(is_array_space) {
                content_len = out.len();
            }
        }
    }
    (out, content_len)
}

/// Whitespace as `array_in` counts it.
fn is_array_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C)
}

/// Writes `array_out`'s text.
pub(crate) fn write_text(f: &mut fmt::Formatter<'_>, array: &Array) -> fmt::Result {
    if array.dims.is_empty() {
        return f.write_str("{}");
    }
    if array.dims.iter().any(|dim| dim.lower_bound != 1) {
        for dim in &array.dims {
            // Array::new checked that the upper bound fits.
            write!(f, "[{}:{}]", dim.lower_bound, dim.upper_bound().unwrap_or(i32::MAX))?;
        }
        f.write_str("=")?;
    }
    let mut elements = array.elements.iter();
    write_level(f, &array.dims, &mut elements)
}

fn write_level<'a>(
    f: &mut fmt::Formatter<'_>,
    dims: &[ArrayDim],
    elements: &mut impl Iterator<Item = &'a Value>,
) -> fmt::Result {
    let Some((dim, inner)) = dims.split_first() else { return Ok(()) };
    f.write_str("{")?;
    for index in 0..dim.len {
        if index != 0 {
            f.write_str(",")?;
        }
        if inner.is_empty() {
            match elements.next() {
                Some(Value::Null) | None => f.write_str("NULL")?,
                Some(element) => write_element(f, element)?,
            }
        } else {
            write_level(f, inner, elements)?;
        }
    }
    f.write_str("}")
}

/// Writes one element, quoted when `array_in` would otherwise misread it.
fn write_element(f: &mut fmt::Formatter<'_>, element: &Value) -> fmt::Result {
    let text = element.to_string();
    let needs_quotes = text.is_empty()
        || text.eq_ignore_ascii_case("NULL")
        || text.bytes().any(|b| matches!(b, b'"' | b'\\' | b'{' | b'}' | DELIMITER) || is_array_space(b));
    if !needs_quotes {
        return f.write_str(&text);
    }
    f.write_str("\"")?;
    let mut rest = text.as_str();
    while let Some(at) = rest.find(['"', '\\']) {
        let (before, from) = rest.split_at(at);
        f.write_str(before)?;
        f.write_str("\\")?;
        let (special, after) = from.split_at(1);
        f.write_str(special)?;
        rest = after;
    }
    f.write_str(rest)?;
    f.write_str("\"")
}

/// Reads `array_send`'s format: `ndim`, has-null flag, element type, `ndim` × (length, lower
/// bound), then each element as a length (−1 for NULL) and its bytes. `check_element_type`
/// vets the header's element type; `decode_element` converts each non-NULL element.
pub(crate) fn parse_binary<C, F>(
    array_oid: Oid,
    element_type: Oid,
    bytes: &[u8],
    check_element_type: C,
    mut decode_element: F,
) -> Result<Array, ValueError>
where
    C: FnOnce(Oid) -> Result<(), ValueError>,
    F: FnMut(&[u8]) -> Result<Value, ValueError>,
{
    let mut reader = BinaryReader { bytes, pos: 0, array_oid };
    let ndim = reader.i32()?;
    let ndim = usize::try_from(ndim).ok().filter(|&n| n <= MAX_DIMS).ok_or_else(|| reader.error(0, "bad ndim"))?;
    let flags = reader.i32()?;
    if flags != 0 && flags != 1 {
        return Err(reader.error(4, "invalid flags"));
    }
    check_element_type(Oid(reader.u32()?))?;
    let mut dims = Vec::with_capacity(ndim);
    let mut count: usize = 1;
    for _ in 0..ndim {
        let at = reader.pos;
        let len = u32::try_from(reader.i32()?).map_err(|_| reader.error(at, "negative dimension length"))?;
        let lower_bound = reader.i32()?;
        let dim = ArrayDim { lower_bound, len };
        if dim.len > 0 && dim.upper_bound().is_none() {
            return Err(reader.error(at, "upper bound out of range"));
        }
        count = count
            .checked_mul(len as usize)
            .filter(|&count| count <= MAX_ELEMENTS)
            .ok_or(ValueError::InvalidArray { type_oid: array_oid, reason: "too many elements" })?;
        dims.push(dim);
    }
    if ndim == 0 || count == 0 {
        // PostgreSQL turns any array with a zero-length dimension into the empty array.
        dims.clear();
        count = 0;
    }
    // Each element takes at least its 4-byte length: do not trust `count` further than that.
    let mut elements = Vec::with_capacity(count.min(reader.remaining() / 4));
    for _ in 0..count {
        let at = reader.pos;
        let len = reader.i32()?;
        if len == -1 {
            elements.push(Value::Null);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| reader.error(at, "invalid element length"))?;
        let element = reader.take(len)?;
        elements.push(decode_element(element)?);
    }
    if reader.remaining() != 0 {
        return Err(reader.error(reader.pos, "trailing bytes after the last element"));
    }
    Array::new(element_type, dims, elements).map_err(|err| with_array_oid(err, array_oid))
}

/// Bounds-checked big-endian reads over one binary array.
struct BinaryReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    array_oid: Oid,
}

impl<'a> BinaryReader<'a> {
    fn error(&self, offset: usize, reason: &'static str) -> ValueError {
        ValueError::InvalidBinary { type_oid: self.array_oid, type_name: "array", offset, reason }
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], ValueError> {
        let end = self.pos.checked_add(len).filter(|&end| end <= self.bytes.len());
        let taken = end.and_then(|end| self.bytes.get(self.pos..end));
        let taken = taken.ok_or_else(|| self.error(self.pos, "value ends early"))?;
        self.pos += len;
        Ok(taken)
    }

    fn word(&mut self) -> Result<[u8; 4], ValueError> {
        let bytes = self.take(4)?;
        <[u8; 4]>::try_from(bytes).map_err(|_| self.error(self.pos, "value ends early"))
    }

    fn i32(&mut self) -> Result<i32, ValueError> {
        self.word().map(i32::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, ValueError> {
        self.word().map(u32::from_be_bytes)
    }
}

/// Appends `array_send`'s format; `None` when an element has no binary form.
pub(crate) fn write_binary(
    array: &Array,
    out: &mut Vec<u8>,
    mut encode_element: impl FnMut(&Value, &mut Vec<u8>) -> Option<()>,
) -> Option<()> {
    let has_null = array.elements.iter().any(|element| matches!(element, Value::Null));
    // Array::new bounds ndim by 6 and every length by MAX_ELEMENTS: all fit an i32.
    out.extend_from_slice(&i32::try_from(array.dims.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&i32::from(has_null).to_be_bytes());
    out.extend_from_slice(&array.element_type.0.to_be_bytes());
    for dim in &array.dims {
        out.extend_from_slice(&i32::try_from(dim.len).ok()?.to_be_bytes());
        out.extend_from_slice(&dim.lower_bound.to_be_bytes());
    }
    for element in &array.elements {
        if matches!(element, Value::Null) {
            out.extend_from_slice(&(-1_i32).to_be_bytes());
            continue;
        }
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        encode_element(element, out)?;
        let len = i32::try_from(out.len() - len_at - 4).ok()?;
        if let Some(slot) = out.get_mut(len_at..len_at + 4) {
            slot.copy_from_slice(&len.to_be_bytes());
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::type_oid::{BYTEA_ARRAY, INT4, INT4_ARRAY, TEXT, TEXT_ARRAY};
    use crate::TypeRegistry;

    fn text_array(text: &str) -> Result<Array, ValueError> {
        match TypeRegistry::new().decode_text(TEXT_ARRAY, text.as_bytes())? {
            Value::Array(array) => Ok(array),
            other => panic!("text[] decoded to {other:?}"),
        }
    }

    fn int_array(text: &str) -> Result<Array, ValueError> {
        match TypeRegistry::new().decode_text(INT4_ARRAY, text.as_bytes())? {
            Value::Array(array) => Ok(array),
            other => panic!("int4[] decoded to {other:?}"),
        }
    }

    fn texts(items: &[Option<&str>]) -> Vec<Value> {
        items.iter().map(|item| item.map_or(Value::Null, |text| Value::Text(text.into()))).collect()
    }

    fn dim(lower_bound: i32, len: u32) -> ArrayDim {
        ArrayDim { lower_bound, len }
    }

    #[test]
    fn one_dimension_with_nulls() {
        let array = int_array("{1,2,NULL}").unwrap();
        assert_eq!(array.element_type(), INT4);
        assert_eq!(array.dims(), &[dim(1, 3)]);
        assert_eq!(array.elements(), &[Value::Int4(1), Value::Int4(2), Value::Null]);
        assert_eq!(Value::Array(array).to_string(), "{1,2,NULL}");
    }

    #[test]
    fn quoting_and_escaping() {
        let text = r#"{"a,b","say \"hi\"","back\\slash","NULL",NULL,"","  padded ",{curly}}"#;
        let err = text_array(text).unwrap_err();
        assert!(matches!(err, ValueError::InvalidText { .. }), "unquoted braces are refused: {err:?}");

        let text = r#"{"a,b","say \"hi\"","back\\slash","NULL",NULL,""," padded ","{curly}",plain,é}"#;
        let array = text_array(text).unwrap();
        assert_eq!(
            array.elements(),
            texts(&[
                Some("a,b"),
                Some(r#"say "hi""#),
                Some(r"back\slash"),
                Some("NULL"),
                None,
                Some(""),
                Some(" padded "),
                Some("{curly}"),
                Some("plain"),
                Some("é"),
            ])
            .as_slice()
        );
        assert_eq!(Value::Array(array).to_string(), text, "array_out quotes exactly these");
    }

    #[test]
    fn unquoted_whitespace_and_escapes_follow_array_in() {
        let array = text_array("{ a b , c\\,d ,e\\ , null }").unwrap();
        assert_eq!(array.elements(), texts(&[Some("a b"), Some("c,d"), Some("e "), None]).as_slice());
    }

    #[test]
    fn empty_and_multi_dimensional() {
        let empty = int_array("{}").unwrap();
        assert!(empty.dims().is_empty() && empty.elements().is_empty());
        assert_eq!(Value::Array(empty).to_string(), "{}");

        let square = int_array("{{1,2},{3,4}}").unwrap();
        assert_eq!(square.dims(), &[dim(1, 2), dim(1, 2)]);
        assert_eq!(square.elements(), &[Value::Int4(1), Value::Int4(2), Value::Int4(3), Value::Int4(4)]);
        assert_eq!(Value::Array(square).to_string(), "{{1,2},{3,4}}");

        let cube = int_array("{{{1},{NULL}},{{3},{4}}}").unwrap();
        assert_eq!(cube.dims(), &[dim(1, 2), dim(1, 2), dim(1, 1)]);
        assert_eq!(Value::Array(cube).to_string(), "{{{1},{NULL}},{{3},{4}}}");
    }

    #[test]
    fn explicit_lower_bounds() {
        let array = text_array("[0:1]={a,b}").unwrap();
        assert_eq!(array.dims(), &[dim(0, 2)]);
        assert_eq!(Value::Array(array).to_string(), "[0:1]={a,b}");
        let array = int_array("[-2:-1][3:4]={{1,2},{3,4}}").unwrap();
        assert_eq!(array.dims(), &[dim(-2, 2), dim(3, 2)]);
        assert_eq!(Value::Array(array).to_string(), "[-2:-1][3:4]={{1,2},{3,4}}");
        let ones = int_array("[1:2]={1,2}").unwrap();
        assert_eq!(Value::Array(ones).to_string(), "{1,2}", "default bounds are not printed");
    }

    #[test]
    fn malformed_text_is_refused() {
        for bad in [
            "",
            "1,2",
            "{1,2",
            "{1,2}}",
            "{1,2} x",
            "{{1},{2,3}}",
            "{{1},2}",
            "{1,{2}}",
            "{{{{{{{1}}}}}}}",
            "[1:3]={1,2}",
            "[2:1]={}",
            "[1:2]{1,2}",
            "{,}",
            "{1,}",
            "{{},{}}",
            "{\"a}",
            "{a\"b}",
            "{a\\",
        ] {
            assert!(int_array(bad).is_err() && text_array(bad).is_err(), "{bad:?}");
        }
        let six_dims = "{{{{{{1}}}}}}";
        assert_eq!(int_array(six_dims).unwrap().dims().len(), MAX_DIMS);
    }

    #[test]
    fn element_errors_name_the_element_type() {
        let err = int_array("{1,x}").unwrap_err();
        assert_eq!(err.type_oid(), Some(INT4));
        let err = int_array("{1,2").unwrap_err();
        assert_eq!(err.type_oid(), Some(INT4_ARRAY));
    }

    #[test]
    fn bytea_elements_are_quoted_for_their_backslash() {
        let array = TypeRegistry::new().decode_text(BYTEA_ARRAY, br#"{"\\x01ff",NULL}"#).unwrap();
        assert_eq!(array.to_string(), r#"{"\\x01ff",NULL}"#);
    }

    /// Builds `array_send` bytes from parts.
    fn binary(ndim: i32, flags: i32, element: Oid, dims: &[(i32, i32)], elements: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [ndim, flags, element.0 as i32] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        for (len, lower) in dims {
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&lower.to_be_bytes());
        }
        for element in elements {
            match element {
                None => out.extend_from_slice(&(-1_i32).to_be_bytes()),
                Some(bytes) => {
                    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                    out.extend_from_slice(bytes);
                }
            }
        }
        out
    }

    #[test]
    fn binary_format() {
        let registry = TypeRegistry::new();
        let one = 1_i32.to_be_bytes();
        let bytes = binary(2, 1, INT4, &[(1, 0), (2, 5)], &[Some(&one), None]);
        let value = registry.decode_binary(INT4_ARRAY, &bytes).unwrap();
        let Value::Array(array) = &value else { panic!("{value:?}") };
        assert_eq!(array.dims(), &[dim(0, 1), dim(5, 2)]);
        assert_eq!(array.elements(), &[Value::Int4(1), Value::Null]);
        assert_eq!(value.to_string(), "[0:0][5:6]={{1,NULL}}");
        assert_eq!(value.to_pg_binary(), Some(bytes));

        let empty = registry.decode_binary(INT4_ARRAY, &binary(0, 0, INT4, &[], &[])).unwrap();
        assert_eq!(empty.to_string(), "{}");
        let zero_length = registry.decode_binary(INT4_ARRAY, &binary(1, 0, INT4, &[(0, 1)], &[])).unwrap();
        assert_eq!(zero_length, empty, "a zero-length dimension is the empty array");
    }

    #[test]
    fn malformed_binary_is_refused_without_allocating_for_it() {
        let registry = TypeRegistry::new();
        let one = 1_i32.to_be_bytes();
        for (what, bytes) in [
            ("7 dimensions", binary(7, 0, INT4, &[(1, 1); 7], &[Some(&one)])),
            ("negative ndim", binary(-1, 0, INT4, &[], &[])),
            ("bad flags", binary(1, 2, INT4, &[(1, 1)], &[Some(&one)])),
            ("negative length", binary(1, 0, INT4, &[(-1, 1)], &[])),
            ("upper bound overflow", binary(1, 0, INT4, &[(2, i32::MAX)], &[Some(&one), Some(&one)])),
            ("too many elements", binary(2, 0, INT4, &[(100_000, 1), (100_000, 1)], &[])),
            ("claims more elements than sent", binary(1, 0, INT4, &[(i32::MAX / 2, 1)], &[Some(&one)])),
            (
                "element length past the end",
                binary(1, 0, INT4, &[(1, 1)], &[]).into_iter().chain(9_i32.to_be_bytes()).collect(),
            ),
            (
                "element length below -1",
                binary(1, 0, INT4, &[(1, 1)], &[]).into_iter().chain((-2_i32).to_be_bytes()).collect(),
            ),
            ("trailing bytes", binary(1, 0, INT4, &[(1, 1)], &[Some(&one), Some(&one)])),
            ("truncated header", vec![0, 0, 0, 1, 0, 0]),
            ("wrong element type", binary(1, 0, TEXT, &[(1, 1)], &[Some(b"x")])),
            ("bad element", binary(1, 0, INT4, &[(1, 1)], &[Some(&[1, 2])])),
        ] {
            assert!(registry.decode_binary(INT4_ARRAY, &bytes).is_err(), "{what}");
        }
    }

    #[test]
    fn constructor_checks_the_shape() {
        let one = || Value::Int4(1);
        assert!(Array::new(INT4, vec![dim(1, 2)], vec![one(), one()]).is_ok());
        assert!(Array::new(INT4, vec![dim(1, 2)], vec![one()]).is_err());
        assert!(Array::new(INT4, vec![dim(1, 0)], vec![]).is_err());
        assert!(Array::new(INT4, vec![], vec![one()]).is_err());
        assert!(Array::new(INT4, vec![dim(i32::MAX, 2)], vec![one(), one()]).is_err());
        assert!(Array::new(INT4, vec![dim(1, 1); 7], vec![one()]).is_err());
        let inner = Array::from_elements(INT4, vec![one()]).unwrap();
        assert!(Array::from_elements(INT4_ARRAY, vec![Value::Array(inner)]).is_err());
        assert_eq!(Array::from_elements(INT4, vec![]).unwrap().dims(), &[]);
    }
}
