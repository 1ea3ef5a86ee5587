//! Exact `numeric` values: [`Numeric`] and its finite part [`Decimal`].
//!
//! A [`Decimal`] is kept as its canonical PostgreSQL text, never as a float: the sign (absent
//! for zero), the integer part without leading zeros (`0` when it is zero), and exactly
//! `dscale` fraction digits. That is `numeric_out`'s output, so rendering is free, equality is
//! string equality, and the display scale (`1.50` vs `1.5`) is preserved as PostgreSQL keeps it.
//!
//! Limits are PostgreSQL's: at most [`MAX_INTEGER_DIGITS`] digits before the point and
//! [`MAX_SCALE`] after it, which also bounds what hostile input can make us allocate.

use std::fmt;
use std::str::FromStr;

/// Most digits before the decimal point PostgreSQL accepts (`NUMERIC_WEIGHT_MAX` groups of 4).
pub const MAX_INTEGER_DIGITS: usize = 131_072;
/// Largest display scale PostgreSQL accepts (`NUMERIC_DSCALE_MAX`).
pub const MAX_SCALE: usize = 16_383;

/// Sign word of a positive value in the binary format.
const SIGN_POSITIVE: u16 = 0x0000;
/// Sign word of a negative value.
const SIGN_NEGATIVE: u16 = 0x4000;
/// Sign word of `NaN`.
const SIGN_NAN: u16 = 0xC000;
/// Sign word of `Infinity` (PostgreSQL 14+).
const SIGN_POSITIVE_INFINITY: u16 = 0xD000;
/// Sign word of `-Infinity` (PostgreSQL 14+).
const SIGN_NEGATIVE_INFINITY: u16 = 0xF000;
/// The `dscale` field `numeric_send` writes for ±Infinity. Special values are stored as a bare
/// short-format header, and the scale is read from that header's bits (`0xD000 & 0x1F80 >> 7`),
/// so the server sends 32; receivers ignore it. Writing the same keeps our encoding
/// byte-identical to the server's.
const INFINITY_DSCALE: usize = 32;
/// Base of the binary format's digits.
const NBASE: u16 = 10_000;
/// Decimal digits per binary digit.
const DEC_DIGITS: usize = 4;

/// A `numeric` value, exactly as PostgreSQL holds it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Numeric {
    /// A finite number.
    Finite(Decimal),
    /// `NaN` (equal to itself, as in PostgreSQL's ordering).
    NaN,
    /// `Infinity` (PostgreSQL 14+).
    Infinity,
    /// `-Infinity` (PostgreSQL 14+).
    NegativeInfinity,
}

/// A finite `numeric`, held as its canonical text (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Decimal(String);

/// Why a string is not a `numeric`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid numeric: {reason}")]
pub struct ParseNumericError {
    /// What is wrong.
    pub reason: &'static str,
}

impl Decimal {
    /// The canonical text, e.g. `-0.000100`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the value is below zero (zero is never negative).
    pub fn is_negative(&self) -> bool {
        self.0.starts_with('-')
    }

    /// Digits after the decimal point (`dscale`).
    pub fn scale(&self) -> usize {
        self.0.find('.').map_or(0, |point| self.0.len() - point - 1)
    }

    /// Whether the value is zero (of any scale).
    pub fn is_zero(&self) -> bool {
        self.0.bytes().all(|b| b == b'0' || b == b'.')
    }

    /// Integer part and fraction digits, without the sign.
    fn parts(&self) -> (&str, &str) {
        let unsigned = self.0.strip_prefix('-').unwrap_or(&self.0);
        unsigned.split_once('.').unwrap_or((unsigned, ""))
    }

    /// Builds the canonical text from a sign, the significant digits of the unscaled integer
    /// (`value * 10^scale`, ASCII, possibly with leading zeros) and the scale.
    fn from_unscaled(negative: bool, digits: &[u8], scale: usize) -> Result<Decimal, &'static str> {
        let first_significant = digits.iter().position(|&d| d != b'0').unwrap_or(digits.len());
        let digits = digits.get(first_significant..).unwrap_or_default();
        let integer_len = digits.len().saturating_sub(scale);
        if integer_len > MAX_INTEGER_DIGITS {
            return Err("too many digits before the decimal point");
        }
        if scale > MAX_SCALE {
            return Err("too many digits after the decimal point");
        }
        let mut text = String::with_capacity(integer_len + scale + 3);
        if negative && !digits.is_empty() {
            text.push('-');
        }
        let (integer, fraction) = digits.split_at(integer_len);
        if integer.is_empty() {
            text.push('0');
        } else {
            push_ascii(&mut text, integer);
        }
        if scale > 0 {
            text.push('.');
            text.extend(std::iter::repeat_n('0', scale - fraction.len()));
            push_ascii(&mut text, fraction);
        }
        Ok(Decimal(text))
    }
}

/// Appends ASCII digits (checked by every caller) to `text`.
fn push_ascii(text: &mut String, digits: &[u8]) {
    text.extend(digits.iter().map(|&d| char::from(d)));
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Numeric {
    /// The canonical PostgreSQL text.
    pub fn as_str(&self) -> &str {
        match self {
            Numeric::Finite(decimal) => decimal.as_str(),
            Numeric::NaN => "NaN",
            Numeric::Infinity => "Infinity",
            Numeric::NegativeInfinity => "-Infinity",
        }
    }

    /// Parses `numeric_in`'s input forms that `numeric_out` can produce plus exponents and a
    /// leading `+`: `[+-]digits[.digits][e[+-]digits]`, `NaN`, `[+-]Infinity`, `[+-]inf` (any case).
    pub(crate) fn parse(text: &[u8]) -> Result<Numeric, &'static str> {
        if is_canonical_finite(text) {
            // Canonical text is ASCII, so this cannot fail.
            let text = String::from_utf8(text.to_vec()).map_err(|_| "not ASCII")?;
            return Ok(Numeric::Finite(Decimal(text)));
        }
        let is = |spellings: &[&[u8]]| spellings.iter().any(|spelling| text.eq_ignore_ascii_case(spelling));
        if is(&[b"nan"]) {
            Ok(Numeric::NaN)
        } else if is(&[b"infinity", b"+infinity", b"inf", b"+inf"]) {
            Ok(Numeric::Infinity)
        } else if is(&[b"-infinity", b"-inf"]) {
            Ok(Numeric::NegativeInfinity)
        } else {
            parse_general(text).map(Numeric::Finite)
        }
    }

    /// Decodes `numeric_send`'s format: `ndigits`, `weight`, `sign`, `dscale` (16 bits each),
    /// then `ndigits` base-10000 digits, most significant first.
    pub(crate) fn from_binary(bytes: &[u8]) -> Result<Numeric, (usize, &'static str)> {
        let word = |at: usize| -> Result<u16, (usize, &'static str)> {
            match bytes.get(at..at + 2) {
                Some(&[hi, lo]) => Ok(u16::from_be_bytes([hi, lo])),
                _ => Err((at, "value ends inside the header or digits")),
            }
        };
        let ndigits = usize::from(word(0)?);
        if ndigits > i16::MAX as usize {
            return Err((0, "negative digit count"));
        }
        let weight = i64::from(word(2)? as i16);
        let sign = word(4)?;
        let dscale = usize::from(word(6)?);
        let expected_len = 8 + 2 * ndigits;
        if bytes.len() != expected_len {
            return Err((bytes.len().min(expected_len), "length does not match the digit count"));
        }
        let negative = match sign {
            SIGN_POSITIVE => false,
            SIGN_NEGATIVE => true,
            SIGN_NAN => return Ok(Numeric::NaN),
            SIGN_POSITIVE_INFINITY => return Ok(Numeric::Infinity),
            SIGN_NEGATIVE_INFINITY => return Ok(Numeric::NegativeInfinity),
            _ => return Err((4, "unknown sign")),
        };
        if dscale > MAX_SCALE {
            return Err((6, "display scale out of range"));
        }
        let digits = bytes.get(8..).unwrap_or_default();
        let mut groups = digits.chunks_exact(2).map(|pair| match pair {
            &[hi, lo] => u16::from_be_bytes([hi, lo]),
            _ => 0, // chunks_exact yields pairs only
        });
        if let Some(index) = groups.clone().position(|group| group >= NBASE) {
            return Err((8 + 2 * index, "digit out of range"));
        }
        // The group at index i is worth 10000^(weight - i). Print from the highest position down
        // to the last one dscale needs, straight into the canonical text, as numeric_out does
        // (digits beyond dscale are cut, not rounded).
        let mut next_index = 0_i64;
        let mut group_at = |position: i64| -> u16 {
            // Positions are visited in decreasing order, so each group is read when reached.
            if weight - position == next_index {
                next_index += 1;
                groups.next().unwrap_or(0)
            } else {
                0
            }
        };
        let integer_groups = usize::try_from(weight + 1).unwrap_or(0);
        let mut text = String::with_capacity(integer_groups * DEC_DIGITS + dscale + 3);
        if negative {
            text.push('-');
        }
        let integer_start = text.len();
        for position in (0..=weight).rev() {
            let digits = group_digits(group_at(position));
            // Leading zeros of the integer part are not printed.
            let first =
                if text.len() == integer_start { digits.iter().position(|&d| d != b'0').unwrap_or(4) } else { 0 };
            push_ascii(&mut text, digits.get(first..).unwrap_or_default());
        }
        if text.len() == integer_start {
            text.push('0');
        }
        if dscale > 0 {
            text.push('.');
            let fraction_start = text.len();
            for position in (-(dscale.div_ceil(DEC_DIGITS) as i64)..=-1).rev() {
                push_ascii(&mut text, &group_digits(group_at(position)));
            }
            text.truncate(fraction_start + dscale);
        }
        if negative && text.bytes().all(|b| matches!(b, b'-' | b'0' | b'.')) {
            text.remove(0); // PostgreSQL has no negative zero
        }
        Ok(Numeric::Finite(Decimal(text)))
    }

    /// Appends `numeric_send`'s format; `None` when the value has more base-10000 digits than the
    /// format's 16-bit count can say.
    pub(crate) fn write_binary(&self, out: &mut Vec<u8>) -> Option<()> {
        let decimal = match self {
            Numeric::Finite(decimal) => decimal,
            Numeric::NaN => return write_header(out, 0, 0, SIGN_NAN, 0),
            Numeric::Infinity => return write_header(out, 0, 0, SIGN_POSITIVE_INFINITY, INFINITY_DSCALE),
            Numeric::NegativeInfinity => return write_header(out, 0, 0, SIGN_NEGATIVE_INFINITY, INFINITY_DSCALE),
        };
        let (integer, fraction) = decimal.parts();
        let integer = integer.trim_start_matches('0').as_bytes();
        let scale = fraction.len();
        let fraction = fraction.as_bytes();
        // Align to groups of 4 around the decimal point: pad the integer part on the left and
        // the fraction on the right.
        let integer_groups = integer.len().div_ceil(DEC_DIGITS);
        let fraction_groups = fraction.len().div_ceil(DEC_DIGITS);
        let mut groups: Vec<u16> = Vec::with_capacity(integer_groups + fraction_groups);
        let integer_pad = integer_groups * DEC_DIGITS - integer.len();
        let padded_integer = std::iter::repeat_n(b'0', integer_pad).chain(integer.iter().copied());
        let padded_fraction =
            fraction.iter().copied().chain(std::iter::repeat_n(b'0', fraction_groups * DEC_DIGITS - fraction.len()));
        let mut all = padded_integer.chain(padded_fraction);
        for _ in 0..integer_groups + fraction_groups {
            let mut group = 0u16;
            for _ in 0..DEC_DIGITS {
                group = group * 10 + u16::from(all.next().unwrap_or(b'0') - b'0');
            }
            groups.push(group);
        }
        let mut weight = integer_groups as i64 - 1;
        // Strip zero groups at both ends, as PostgreSQL stores numerics.
        let leading = groups.iter().take_while(|&&g| g == 0).count();
        weight -= leading as i64;
        let trailing = groups.iter().rev().take_while(|&&g| g == 0).count();
        let significant = groups.get(leading..groups.len().saturating_sub(trailing)).unwrap_or_default();
        if significant.is_empty() {
            return write_header(out, 0, 0, SIGN_POSITIVE, scale);
        }
        let sign = if decimal.is_negative() { SIGN_NEGATIVE } else { SIGN_POSITIVE };
        write_header(out, significant.len(), weight, sign, scale)?;
        for group in significant {
            out.extend_from_slice(&group.to_be_bytes());
        }
        Some(())
    }
}

/// Writes the 8-byte binary header, or `None` when a field does not fit its 16 bits.
fn write_header(out: &mut Vec<u8>, ndigits: usize, weight: i64, sign: u16, dscale: usize) -> Option<()> {
    let ndigits = i16::try_from(ndigits).ok()?;
    let weight = i16::try_from(weight).ok()?;
    let dscale = u16::try_from(dscale).ok()?;
    out.extend_from_slice(&ndigits.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    Some(())
}

/// The four ASCII digits of one base-10000 digit (`group < 10000`).
fn group_digits(group: u16) -> [u8; 4] {
    // Each quotient is below 10, so the casts are exact.
    [
        b'0' + (group / 1000) as u8,
        b'0' + (group / 100 % 10) as u8,
        b'0' + (group / 10 % 10) as u8,
        b'0' + (group % 10) as u8,
    ]
}

/// Whether `text` is already `numeric_out`'s form: `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, not a
/// negative zero, within the limits.
fn is_canonical_finite(text: &[u8]) -> bool {
    let unsigned = text.strip_prefix(b"-").unwrap_or(text);
    let mut parts = unsigned.splitn(2, |&b| b == b'.');
    let integer = parts.next().unwrap_or_default();
    let fraction = parts.next();
    let digits_ok = |d: &[u8]| !d.is_empty() && d.iter().all(u8::is_ascii_digit);
    if !digits_ok(integer)
        || (integer.len() > 1 && integer.first() == Some(&b'0'))
        || integer.len() > MAX_INTEGER_DIGITS
    {
        return false;
    }
    if let Some(fraction) = fraction {
        if !digits_ok(fraction) || fraction.len() > MAX_SCALE {
            return false;
        }
    }
    let negative = unsigned.len() != text.len();
    !(negative && integer == b"0" && fraction.is_none_or(|f| f.iter().all(|&d| d == b'0')))
}

/// The general input form: optional sign, digits with an optional point, optional exponent.
fn parse_general(text: &[u8]) -> Result<Decimal, &'static str> {
    let (negative, rest) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    let mut parts = rest.splitn(2, |&b| b == b'e' || b == b'E');
    let mantissa = parts.next().unwrap_or_default();
    let exponent = parts.next();
    let mut parts = mantissa.splitn(2, |&b| b == b'.');
    let integer = parts.next().unwrap_or_default();
    let fraction = parts.next().unwrap_or_default();
    if integer.is_empty() && fraction.is_empty() {
        return Err("no digits");
    }
    if !integer.iter().chain(fraction).all(u8::is_ascii_digit) {
        return Err("not a number");
    }
    let exponent: i64 = match exponent {
        None => 0,
        Some(exponent) => {
            let exponent = std::str::from_utf8(exponent).map_err(|_| "invalid exponent")?;
            // Anything beyond the limits is rejected below; parsing as i64 bounds the arithmetic.
            exponent.parse::<i64>().map_err(|_| "invalid exponent")?.clamp(-1_000_000, 1_000_000)
        }
    };
    let mut digits = Vec::with_capacity(integer.len() + fraction.len());
    digits.extend_from_slice(integer);
    digits.extend_from_slice(fraction);
    // value = digits * 10^(exponent - fraction.len()); PostgreSQL's dscale is the number of
    // fraction digits written minus the exponent, never negative.
    let scale = fraction.len() as i64 - exponent;
    if scale < 0 {
        let zeros = usize::try_from(-scale).unwrap_or(usize::MAX);
        if zeros > MAX_INTEGER_DIGITS {
            return Err("too many digits before the decimal point");
        }
        digits.resize(digits.len() + zeros, b'0');
    }
    let scale = usize::try_from(scale.max(0)).map_err(|_| "scale out of range")?;
    if scale > MAX_SCALE {
        return Err("too many digits after the decimal point");
    }
    Decimal::from_unscaled(negative, &digits, scale)
}

impl FromStr for Numeric {
    type Err = ParseNumericError;

    /// Parses `numeric` text input (see [`Numeric`] for what is kept): `-12.50`, `1.5e3`,
    /// `NaN`, `-Infinity`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Numeric::parse(text.as_bytes()).map_err(|reason| ParseNumericError { reason })
    }
}

impl fmt::Display for Numeric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(text: &str) -> Numeric {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn binary(ndigits: i16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [ndigits as u16, weight as u16, sign, dscale].iter().chain(digits) {
            out.extend_from_slice(&word.to_be_bytes());
        }
        out
    }

    #[test]
    fn canonical_text_is_kept_as_is() {
        for text in ["0", "-0.000100", "123456789012345678901234567890.123456789", "1.50", "-7", "0.0"] {
            assert_eq!(num(text).as_str(), text);
        }
    }

    #[test]
    fn other_spellings_normalise_like_numeric_in() {
        assert_eq!(num("-0.000").as_str(), "0.000", "no negative zero");
        assert_eq!(num("-0").as_str(), "0");
        assert_eq!(num("+007.50").as_str(), "7.50");
        assert_eq!(num(".5").as_str(), "0.5");
        assert_eq!(num("5.").as_str(), "5");
        assert_eq!(num("1e3").as_str(), "1000");
        assert_eq!(num("1.5E3").as_str(), "1500");
        assert_eq!(num("0.1e-3").as_str(), "0.0001");
        assert_eq!(num("-12.345e1").as_str(), "-123.45");
        assert_eq!(num("nan"), Numeric::NaN);
        assert_eq!(num("NaN"), Numeric::NaN);
        assert_eq!(num("Infinity"), Numeric::Infinity);
        assert_eq!(num("-inf"), Numeric::NegativeInfinity);
    }

    #[test]
    fn malformed_and_out_of_range_text_is_rejected() {
        for text in ["", "-", ".", "1.2.3", "1e", "abc", "1 ", " 1", "--1", "1e99999999999999999999", "0x10"] {
            assert!(text.parse::<Numeric>().is_err(), "{text:?}");
        }
        assert!(format!("1e{MAX_INTEGER_DIGITS}").parse::<Numeric>().is_err());
        assert!(format!("1e{}", MAX_INTEGER_DIGITS - 1).parse::<Numeric>().is_ok());
        assert!(format!("1e-{}", MAX_SCALE + 1).parse::<Numeric>().is_err());
    }

    #[test]
    fn accessors() {
        let value = Decimal::from_unscaled(true, b"00100", 6).unwrap();
        assert_eq!(value.as_str(), "-0.000100");
        assert!(value.is_negative());
        assert_eq!(value.scale(), 6);
        assert!(!value.is_zero());
        let zero = Decimal::from_unscaled(true, b"000", 2).unwrap();
        assert_eq!(zero.as_str(), "0.00");
        assert!(zero.is_zero() && !zero.is_negative());
    }

    #[test]
    fn binary_decodes_base_10000_digits() {
        // 0.000100: one digit 1 at weight -1 (0.0001), dscale 6.
        assert_eq!(Numeric::from_binary(&binary(1, -1, SIGN_NEGATIVE, 6, &[1])).unwrap().as_str(), "-0.000100");
        // Zero with scale: no digits.
        assert_eq!(Numeric::from_binary(&binary(0, 0, SIGN_POSITIVE, 3, &[])).unwrap().as_str(), "0.000");
        // 123456789.0123: 1 | 2345 | 6789 . 0123
        assert_eq!(
            Numeric::from_binary(&binary(4, 2, SIGN_POSITIVE, 4, &[1, 2345, 6789, 123])).unwrap().as_str(),
            "123456789.0123"
        );
        // 10^8 stored as a single digit at weight 2 (trailing zero groups stripped).
        assert_eq!(Numeric::from_binary(&binary(1, 2, SIGN_POSITIVE, 0, &[1])).unwrap().as_str(), "100000000");
        // Digits beyond dscale are cut, as numeric_out does.
        assert_eq!(Numeric::from_binary(&binary(2, 0, SIGN_POSITIVE, 1, &[3, 1415])).unwrap().as_str(), "3.1");
        assert_eq!(Numeric::from_binary(&binary(1, -2, SIGN_POSITIVE, 5, &[1234])).unwrap().as_str(), "0.00001");
        assert_eq!(Numeric::from_binary(&binary(1, -3, SIGN_POSITIVE, 4, &[5])).unwrap().as_str(), "0.0000");
        assert_eq!(Numeric::from_binary(&binary(0, 0, SIGN_NAN, 0, &[])), Ok(Numeric::NaN));
        assert_eq!(Numeric::from_binary(&binary(0, 0, SIGN_POSITIVE_INFINITY, 0, &[])), Ok(Numeric::Infinity));
        assert_eq!(Numeric::from_binary(&binary(0, 0, SIGN_POSITIVE_INFINITY, 32, &[])), Ok(Numeric::Infinity));
        assert_eq!(Numeric::from_binary(&binary(0, 0, SIGN_NEGATIVE_INFINITY, 0, &[])), Ok(Numeric::NegativeInfinity));
    }

    #[test]
    fn malformed_binary_is_rejected() {
        assert!(Numeric::from_binary(&[0, 1]).is_err());
        assert!(Numeric::from_binary(&binary(2, 0, SIGN_POSITIVE, 0, &[1])).is_err(), "missing digit");
        assert!(Numeric::from_binary(&binary(1, 0, SIGN_POSITIVE, 0, &[1, 2])).is_err(), "extra digit");
        assert!(Numeric::from_binary(&binary(1, 0, SIGN_POSITIVE, 0, &[10_000])).is_err());
        assert!(Numeric::from_binary(&binary(0, 0, 0x1234, 0, &[])).is_err());
        assert!(Numeric::from_binary(&binary(-1, 0, SIGN_POSITIVE, 0, &[])).is_err());
        assert!(Numeric::from_binary(&binary(0, 0, SIGN_POSITIVE, 0x4000, &[])).is_err());
    }

    #[test]
    fn binary_encoding_strips_zero_groups() {
        let encode = |text: &str| {
            let mut out = Vec::new();
            num(text).write_binary(&mut out).unwrap();
            out
        };
        assert_eq!(encode("-0.000100"), binary(1, -1, SIGN_NEGATIVE, 6, &[1]));
        assert_eq!(encode("0.00"), binary(0, 0, SIGN_POSITIVE, 2, &[]));
        assert_eq!(encode("100000000"), binary(1, 2, SIGN_POSITIVE, 0, &[1]));
        assert_eq!(encode("123456789.0123"), binary(4, 2, SIGN_POSITIVE, 4, &[1, 2345, 6789, 123]));
        // As numeric_send('Infinity') and numeric_send('NaN') return on PostgreSQL 15.
        assert_eq!(encode("Infinity"), [0, 0, 0, 0, 0xD0, 0, 0, 0x20]);
        assert_eq!(encode("-Infinity"), [0, 0, 0, 0, 0xF0, 0, 0, 0x20]);
        assert_eq!(encode("NaN"), [0, 0, 0, 0, 0xC0, 0, 0, 0]);
        for text in ["123456789012345678901234567890.123456789", "-5.5", "0.00001", "99999999.99999999"] {
            assert_eq!(Numeric::from_binary(&encode(text)).unwrap().as_str(), text);
        }
    }
}
