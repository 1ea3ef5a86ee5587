//! Small identifier and time types that appear in message bodies: [`Oid`], [`Xid`] and
//! [`PgTimestamp`].
//!
//! They are thin newtypes over the wire integers so that an OID cannot be passed where an xid is
//! expected; no value is validated or interpreted beyond what each method documents.

use std::fmt;

/// A PostgreSQL object identifier (relation or type OID).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Oid(pub u32);

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A transaction id (32-bit, wraps around, so it deliberately has no ordering).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Xid(pub u32);

impl fmt::Display for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A `timestamptz` as sent on the wire: microseconds since 2000-01-01 00:00:00 UTC.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// Microseconds between the Unix epoch and the PostgreSQL epoch (2000-01-01 UTC).
    pub const UNIX_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

    /// Converts to microseconds since the Unix epoch.
    ///
    /// Saturates instead of overflowing, so the `infinity` sentinel (`i64::MAX`) stays at
    /// `i64::MAX` rather than panicking in debug builds.
    pub fn to_unix_micros(self) -> i64 {
        self.0.saturating_add(Self::UNIX_EPOCH_OFFSET_MICROS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_converts_to_unix() {
        assert_eq!(PgTimestamp(0).to_unix_micros(), 946_684_800_000_000);
        assert_eq!(
            PgTimestamp(-946_684_800_000_000).to_unix_micros(),
            0,
            "1970-01-01 is negative in the PostgreSQL epoch"
        );
        assert_eq!(PgTimestamp(i64::MAX).to_unix_micros(), i64::MAX);
    }

    #[test]
    fn ids_display_as_numbers() {
        assert_eq!(Oid(16384).to_string(), "16384");
        assert_eq!(Xid(u32::MAX).to_string(), "4294967295");
    }
}
