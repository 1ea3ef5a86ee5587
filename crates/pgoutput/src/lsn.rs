//! Log sequence numbers: the `u64` WAL position and its `HI/LO` text form.
//!
//! Invariant: `Display` and `FromStr` agree with PostgreSQL's `pg_lsn` type, so a value printed
//! here can be pasted into `START_REPLICATION … LOGICAL` or compared with `pg_replication_slots`.

use std::fmt;
use std::str::FromStr;

/// A WAL position (PostgreSQL's `XLogRecPtr`/`pg_lsn`).
///
/// Displays as PostgreSQL does: upper-case hex of the high and low 32 bits, unpadded,
/// separated by `/` (for example `16/B374D848`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid/unset position `0/0` (`InvalidXLogRecPtr`).
    pub const ZERO: Lsn = Lsn(0);

    /// Whether this is `0/0`, which PostgreSQL uses for "no position".
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Self {
        Lsn(value)
    }
}

impl From<Lsn> for u64 {
    fn from(lsn: Lsn) -> Self {
        lsn.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Error returned when a string is not an LSN of the form `HI/LO`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN: expected two hexadecimal numbers of 1 to 8 digits separated by '/', like 16/B374D848")]
pub struct ParseLsnError {
    _private: (),
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    /// Parses `HI/LO` where each half is 1–8 hex digits of either case. Zero-padded halves
    /// (`0/016B3748`, printed by PostgreSQL after 18) are accepted; signs, spaces and anything
    /// else are not.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s.split_once('/').ok_or(ParseLsnError { _private: () })?;
        let hi = parse_half(hi)?;
        let lo = parse_half(lo)?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// Parses one half strictly: `u32::from_str_radix` alone would accept a leading `+`.
fn parse_half(half: &str) -> Result<u32, ParseLsnError> {
    let well_formed = !half.is_empty() && half.len() <= 8 && half.bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return Err(ParseLsnError { _private: () });
    }
    u32::from_str_radix(half, 16).map_err(|_| ParseLsnError { _private: () })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_postgres() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0x016B_3748).to_string(), "0/16B3748");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn(1 << 32).to_string(), "1/0");
    }

    #[test]
    fn parse_round_trips() {
        for text in ["0/0", "16/B374D848", "0/16B3748", "FFFFFFFF/FFFFFFFF", "1/0"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        for value in [0, 1, 0xFFFF_FFFF, 1 << 32, 0x16_B374_D848, u64::MAX] {
            assert_eq!(Lsn(value).to_string().parse::<Lsn>(), Ok(Lsn(value)));
        }
    }

    #[test]
    fn parse_accepts_padding_and_lower_case() {
        assert_eq!("0/016B3748".parse::<Lsn>(), Ok(Lsn(0x016B_3748)));
        assert_eq!("16/b374d848".parse::<Lsn>(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("00000000/00000000".parse::<Lsn>(), Ok(Lsn::ZERO));
    }

    #[test]
    fn parse_rejects_malformed_input() {
        for text in [
            "",
            "/",
            "0",
            "0/",
            "/0",
            "0/0/0",
            "G/0",
            "0/G",
            "+1/0",
            "0/+1",
            "-1/0",
            " 0/0",
            "0/0 ",
            "0 /0",
            "123456789/0",
            "0/123456789",
            "0x1/0",
            "１/0",
        ] {
            assert!(text.parse::<Lsn>().is_err(), "{text:?} should not parse");
        }
    }

    #[test]
    fn zero_helpers() {
        assert!(Lsn::ZERO.is_zero());
        assert!(Lsn::default().is_zero());
        assert!(!Lsn(1).is_zero());
        assert_eq!(u64::from(Lsn::from(7)), 7);
    }
}
