//! `inet` and `cidr` values ([`Inet`]) and MAC address text forms.
//!
//! Both network types hold an address and a prefix length; they differ in that a `cidr` has no
//! bits set past its prefix and always prints its `/n`, while an `inet` prints `/n` only when it
//! is not the full width. IPv6 addresses print as PostgreSQL's `inet_net_ntop` does: the longest
//! run of two or more zero groups (the first, on a tie) becomes `::`, and an address whose first
//! 96 bits are zero, or that is IPv4-mapped, ends in dotted IPv4 form.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Family byte of IPv4 in the binary format (`PGSQL_AF_INET`).
const FAMILY_V4: u8 = 2;
/// Family byte of IPv6 in the binary format (`PGSQL_AF_INET6`).
const FAMILY_V6: u8 = 3;

/// An `inet` or `cidr` value: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Inet {
    /// The address (for `cidr`, the network address).
    pub addr: IpAddr,
    /// Netmask length: up to 32 for IPv4, 128 for IPv6.
    pub prefix_len: u8,
}

impl Inet {
    /// Bits in the address family.
    fn max_prefix_len(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    /// Whether the prefix fits the family and, for `cidr`, no bit past it is set.
    pub(crate) fn is_valid(&self, is_cidr: bool) -> bool {
        if self.prefix_len > self.max_prefix_len() {
            return false;
        }
        if !is_cidr {
            return true;
        }
        let bits = match self.addr {
            IpAddr::V4(v4) => u128::from(v4.to_bits()) << 96,
            IpAddr::V6(v6) => v6.to_bits(),
        };
        let host_mask = u128::MAX.checked_shr(u32::from(self.prefix_len)).unwrap_or(0);
        bits & host_mask == 0
    }

    /// Parses `address[/prefix]`; a missing prefix means the full width.
    pub(crate) fn parse(text: &str, is_cidr: bool) -> Result<Inet, &'static str> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = address.parse().map_err(|_| "invalid address")?;
        let mut inet = Inet { addr, prefix_len: 0 };
        inet.prefix_len = match prefix {
            None => inet.max_prefix_len(),
            Some(prefix) if !prefix.is_empty() && prefix.len() <= 3 && prefix.bytes().all(|b| b.is_ascii_digit()) => {
                prefix.parse().map_err(|_| "invalid prefix length")?
            }
            Some(_) => return Err("invalid prefix length"),
        };
        if !inet.is_valid(is_cidr) {
            return Err(if is_cidr { "prefix too long or host bits set" } else { "prefix too long" });
        }
        Ok(inet)
    }

    /// Decodes `inet_send`/`cidr_send`: family, prefix length, is-cidr flag, address length,
    /// address bytes.
    pub(crate) fn from_binary(bytes: &[u8], is_cidr: bool) -> Result<Inet, (usize, &'static str)> {
        let [family, prefix_len, _flag, len, address @ ..] = bytes else {
            return Err((bytes.len(), "value ends inside the header"));
        };
        if usize::from(*len) != address.len() {
            return Err((3, "address length does not match the value"));
        }
        let addr = match (*family, address) {
            (FAMILY_V4, &[a, b, c, d]) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            (FAMILY_V6, address) => match <[u8; 16]>::try_from(address) {
                Ok(octets) => IpAddr::V6(Ipv6Addr::from(octets)),
                Err(_) => return Err((3, "IPv6 address is not 16 bytes")),
            },
            (FAMILY_V4, _) => return Err((3, "IPv4 address is not 4 bytes")),
            _ => return Err((0, "unknown address family")),
        };
        let inet = Inet { addr, prefix_len: *prefix_len };
        if !inet.is_valid(is_cidr) {
            return Err((1, if is_cidr { "prefix too long or host bits set" } else { "prefix too long" }));
        }
        Ok(inet)
    }

    /// Appends the binary format.
    pub(crate) fn write_binary(&self, is_cidr: bool, out: &mut Vec<u8>) {
        match self.addr {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&[FAMILY_V4, self.prefix_len, u8::from(is_cidr), 4]);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&[FAMILY_V6, self.prefix_len, u8::from(is_cidr), 16]);
                out.extend_from_slice(&v6.octets());
            }
        }
    }

    /// Renders the `inet` form (`/n` only when not full width) or, with `is_cidr`, the
    /// `cidr` form (always `/n`).
    pub fn display(self, is_cidr: bool) -> impl fmt::Display {
        InetDisplay { inet: self, is_cidr }
    }
}

struct InetDisplay {
    inet: Inet,
    is_cidr: bool,
}

impl fmt::Display for InetDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inet.addr {
            IpAddr::V4(v4) => write!(f, "{v4}")?,
            IpAddr::V6(v6) => write_ipv6(f, &v6)?,
        }
        if self.is_cidr || self.inet.prefix_len != self.inet.max_prefix_len() {
            write!(f, "/{}", self.inet.prefix_len)?;
        }
        Ok(())
    }
}

/// Writes an IPv6 address the way PostgreSQL does (see the module documentation); it differs
/// from `Ipv6Addr`'s `Display` for IPv4-compatible addresses such as `::1.2.3.4`.
fn write_ipv6(f: &mut fmt::Formatter<'_>, addr: &Ipv6Addr) -> fmt::Result {
    let groups = addr.segments();
    // Longest run of zero groups; the first wins a tie; runs of one are not compressed.
    let (mut best_start, mut best_len) = (0, 0);
    let mut run_start = 0;
    for (index, &group) in groups.iter().enumerate() {
        if group != 0 {
            run_start = index + 1;
        } else if index + 1 - run_start > best_len {
            best_start = run_start;
            best_len = index + 1 - run_start;
        }
    }
    let compressed = if best_len >= 2 { best_start..best_start + best_len } else { 0..0 };
    let embeds_ipv4 = compressed.start == 0 && (compressed.end == 6 || (compressed.end == 5 && groups[5] == 0xFFFF));
    for (index, &group) in groups.iter().enumerate() {
        if compressed.contains(&index) {
            if index == compressed.start {
                f.write_str(":")?;
            }
            continue;
        }
        if index != 0 {
            f.write_str(":")?;
        }
        if index == 6 && embeds_ipv4 {
            let [.., a, b, c, d] = addr.octets();
            return write!(f, "{a}.{b}.{c}.{d}");
        }
        write!(f, "{group:x}")?;
    }
    if compressed.end == groups.len() && !compressed.is_empty() {
        f.write_str(":")?;
    }
    Ok(())
}

/// Parses `N` hex pairs separated by `:` (or `-`), as `macaddr_out`/`macaddr8_out` print them.
pub(crate) fn parse_mac<const N: usize>(bytes: &[u8]) -> Result<[u8; N], &'static str> {
    if bytes.len() != N * 3 - 1 {
        return Err("wrong length");
    }
    let mut out = [0u8; N];
    for (index, chunk) in bytes.chunks(3).enumerate() {
        let (pair, separator) = chunk.split_at(2.min(chunk.len()));
        if !(separator.is_empty() || separator == b":" || separator == b"-") {
            return Err("invalid separator");
        }
        let [hi, lo] = pair else { return Err("wrong length") };
        let byte = hex_value(*hi).zip(hex_value(*lo)).map(|(hi, lo)| hi << 4 | lo).ok_or("invalid hex digit")?;
        if let Some(slot) = out.get_mut(index) {
            *slot = byte;
        }
    }
    Ok(out)
}

/// Writes bytes as lowercase hex pairs separated by `:`.
pub(crate) fn write_mac(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for (index, byte) in bytes.iter().enumerate() {
        if index != 0 {
            f.write_str(":")?;
        }
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

/// The value of one hex digit.
pub(crate) fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str, is_cidr: bool) -> String {
        let inet = Inet::parse(text, is_cidr).unwrap_or_else(|e| panic!("{text}: {e}"));
        let mut binary = Vec::new();
        inet.write_binary(is_cidr, &mut binary);
        assert_eq!(Inet::from_binary(&binary, is_cidr), Ok(inet));
        inet.display(is_cidr).to_string()
    }

    #[test]
    fn renders_like_postgres() {
        // Outputs taken from PostgreSQL 15 (`SELECT x::inet, x::cidr`).
        for (text, inet, cidr) in [
            ("::2", "::2", "::2/128"),
            ("::1:2", "::0.1.0.2", "::0.1.0.2/128"),
            ("::ffff:0:1", "::ffff:0.0.0.1", "::ffff:0.0.0.1/128"),
            ("1::", "1::", "1::/128"),
            ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8/128"),
            ("1:0:2:0:3:0:4:0", "1:0:2:0:3:0:4:0", "1:0:2:0:3:0:4:0/128"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1", "2001:db8::1:0:0:1/128"),
            ("1:0:0:1:0:0:0:1", "1:0:0:1::1", "1:0:0:1::1/128"),
            ("1::1:0:0:0:0", "1:0:0:1::", "1:0:0:1::/128"),
            ("::", "::", "::/128"),
            ("1.2.3.4", "1.2.3.4", "1.2.3.4/32"),
            ("::1.2.3.4", "::1.2.3.4", "::1.2.3.4/128"),
        ] {
            assert_eq!(round_trip(text, false), inet, "inet {text}");
            assert_eq!(round_trip(text, true), cidr, "cidr {text}");
        }
        assert_eq!(round_trip("10.0.0.0/8", true), "10.0.0.0/8");
        assert_eq!(round_trip("1.2.3.4/24", false), "1.2.3.4/24");
        assert_eq!(round_trip("fe80::/64", true), "fe80::/64");
        assert_eq!(round_trip("::/0", true), "::/0");
    }

    #[test]
    fn rejects_invalid_values() {
        assert!(Inet::parse("1.2.3.4/24", true).is_err(), "host bits set in cidr");
        assert!(Inet::parse("1.2.3.4/33", false).is_err());
        assert!(Inet::parse("::/129", false).is_err());
        assert!(Inet::parse("1.2.3.4/", false).is_err());
        assert!(Inet::parse("1.2.3.4/+8", false).is_err());
        assert!(Inet::parse("1.2.3", false).is_err());
        assert!(Inet::from_binary(&[FAMILY_V4, 32, 0, 4, 1, 2, 3], false).is_err());
        assert!(Inet::from_binary(&[FAMILY_V4, 32, 0, 16, 1, 2, 3, 4], false).is_err());
        assert!(Inet::from_binary(&[9, 32, 0, 4, 1, 2, 3, 4], false).is_err());
        assert!(Inet::from_binary(&[FAMILY_V4, 33, 0, 4, 1, 2, 3, 4], false).is_err());
        assert!(Inet::from_binary(&[FAMILY_V4, 8, 1, 4, 10, 0, 0, 1], true).is_err());
        assert!(Inet::from_binary(&[FAMILY_V6, 0, 0, 4, 1, 2, 3, 4], false).is_err());
        assert!(Inet::from_binary(&[], false).is_err());
    }

    #[test]
    fn mac_addresses() {
        assert_eq!(parse_mac::<6>(b"08:00:2b:01:02:03"), Ok([8, 0, 0x2b, 1, 2, 3]));
        assert_eq!(parse_mac::<6>(b"08-00-2B-01-02-03"), Ok([8, 0, 0x2b, 1, 2, 3]));
        assert_eq!(parse_mac::<8>(b"08:00:2b:01:02:03:04:05"), Ok([8, 0, 0x2b, 1, 2, 3, 4, 5]));
        for bad in
            ["08:00:2b:01:02", "08:00:2b:01:02:0g", "08:00:2b:01:02:03:", "08.00.2b.01.02.03", "é8:00:2b:01:02:0"]
        {
            assert!(parse_mac::<6>(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
