//! The outbound policy: which resolved addresses this server may connect to.
//!
//! Every connection the server opens on someone else's behalf (federation
//! requests, `.well-known` and SRV targets, and any other outbound delivery)
//! asks [`OutboundPolicy::permits`] about the address it is about to connect
//! to, after DNS resolution, so a name that resolves to an internal address is
//! caught as surely as an IP literal.
//!
//! Refused unless allowed: loopback, private (10/8, 172.16/12, 192.168/16),
//! link-local (169.254/16, fe80::/10), CGNAT (100.64/10), "this network"
//! (0/8) and unspecified, multicast, reserved and broadcast (240/4),
//! documentation and benchmarking ranges, IETF protocol assignments
//! (192.0.0/24), IPv6 unique-local (fc00::/7), site-local (fec0::/10),
//! discard (100::/64), the IPv4-compatible block (::/96) and local-use NAT64
//! (64:ff9b:1::/48). An IPv4-mapped (`::ffff:a.b.c.d`) or well-known NAT64
//! (`64:ff9b::a.b.c.d`) address is judged as the IPv4 address it carries.
//!
//! Order of the checks: `federation.ip_range_deny` refuses first (even a
//! public address, even one in the allow list); then `federation.ip_range_allow`
//! permits; then the built-in ranges above refuse; everything else is
//! permitted. Destinations named in `[federation.hosts]` are the operator's own
//! choice and are not asked about at all (the transport skips the check).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

/// One CIDR range (`10.0.0.0/8`, `fd00::/8`; a bare address is a single-address range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    /// The first address, host bits cleared.
    network: IpAddr,
    /// Prefix length in bits.
    prefix: u8,
}

impl IpRange {
    /// The range of `prefix` leading bits of `addr` (host bits are cleared);
    /// `None` when the prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let network = match addr {
            IpAddr::V4(a) if prefix <= 32 => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
            IpAddr::V6(a) if prefix <= 128 => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))),
            _ => return None,
        };
        Some(Self { network, prefix })
    }

    /// Whether `addr` lies in the range (an IPv4 range never holds an IPv6 address).
    pub fn contains(&self, addr: &IpAddr) -> bool {
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => u32::from(*a) & mask32(self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(a)) => u128::from(*a) & mask128(self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) }
}

/// Why a text is not a CIDR range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an IP range (write it like 10.0.0.0/8 or fd00::/8)")]
pub struct BadRange(pub String);

impl FromStr for IpRange {
    type Err = BadRange;

    fn from_str(text: &str) -> Result<Self, BadRange> {
        let bad = || BadRange(text.to_owned());
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let full = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            // Digits only: `+8` or ` 8` are not prefixes.
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse::<u8>().map_err(|_| bad())?,
            Some(_) => return Err(bad()),
            None => full,
        };
        Self::new(addr, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl serde::Serialize for IpRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for IpRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> IpRange {
    IpRange { network: IpAddr::V4(Ipv4Addr::new(a, b, c, d)), prefix }
}

const fn v6(segments: [u16; 8], prefix: u8) -> IpRange {
    let [a, b, c, d, e, f, g, h] = segments;
    IpRange { network: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)), prefix }
}

/// Addresses that are never a stranger's to point us at (see the module doc).
const REFUSED: &[IpRange] = &[
    v4(0, 0, 0, 0, 8),                         // "this network", unspecified
    v4(10, 0, 0, 0, 8),                        // private
    v4(100, 64, 0, 0, 10),                     // carrier-grade NAT
    v4(127, 0, 0, 0, 8),                       // loopback
    v4(169, 254, 0, 0, 16),                    // link-local
    v4(172, 16, 0, 0, 12),                     // private
    v4(192, 0, 0, 0, 24),                      // IETF protocol assignments
    v4(192, 0, 2, 0, 24),                      // documentation (TEST-NET-1)
    v4(192, 88, 99, 0, 24),                    // 6to4 relay anycast (deprecated)
    v4(192, 168, 0, 0, 16),                    // private
    v4(198, 18, 0, 0, 15),                     // benchmarking
    v4(198, 51, 100, 0, 24),                   // documentation (TEST-NET-2)
    v4(203, 0, 113, 0, 24),                    // documentation (TEST-NET-3)
    v4(224, 0, 0, 0, 4),                       // multicast
    v4(240, 0, 0, 0, 4),                       // reserved, and 255.255.255.255 broadcast
    v6([0, 0, 0, 0, 0, 0, 0, 0], 96),          // ::, ::1 and the deprecated IPv4-compatible block
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),  // local-use NAT64
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard-only
    v6([0x2001, 0x2, 0, 0, 0, 0, 0, 0], 48),   // benchmarking
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),     // documentation
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique-local
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),     // link-local
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),     // site-local (deprecated)
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),      // multicast
];

/// The well-known NAT64 prefix `64:ff9b::/96`: its last 32 bits are an IPv4 address.
const NAT64: IpRange = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);

/// The IPv4 address an IPv6 address stands for on the wire (mapped or NAT64), if any.
fn embedded_v4(addr: &Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = addr.to_ipv4_mapped() {
        return Some(v4);
    }
    if NAT64.contains(&IpAddr::V6(*addr)) {
        let [.., a, b, c, d] = addr.octets();
        return Some(Ipv4Addr::new(a, b, c, d));
    }
    None
}

/// Whether `addr` is in one of the built-in refused ranges (judged as the IPv4
/// address it carries, when it carries one).
pub fn is_internal(addr: &IpAddr) -> bool {
    let addr = match addr {
        IpAddr::V6(a) => embedded_v4(a).map_or(*addr, IpAddr::V4),
        IpAddr::V4(_) => *addr,
    };
    REFUSED.iter().any(|r| r.contains(&addr))
}

/// The operator's outbound policy: `federation.ip_range_allow` and `federation.ip_range_deny`
/// over the built-in refused ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    allow: Vec<IpRange>,
    deny: Vec<IpRange>,
}

impl OutboundPolicy {
    /// A policy with these allowed and denied ranges.
    pub fn new(allow: Vec<IpRange>, deny: Vec<IpRange>) -> Self {
        Self { allow, deny }
    }

    /// The policy of a configuration.
    pub fn from_config(config: &crate::Config) -> Self {
        Self::new(config.federation.ip_range_allow.clone(), config.federation.ip_range_deny.clone())
    }

    /// Whether a connection to `addr` may be opened.
    pub fn permits(&self, addr: &IpAddr) -> bool {
        // A range written either way catches the address written either way.
        let also = match addr {
            IpAddr::V6(a) => embedded_v4(a).map(IpAddr::V4),
            IpAddr::V4(a) => Some(IpAddr::V6(a.to_ipv6_mapped())),
        };
        let matches =
            |ranges: &[IpRange]| ranges.iter().any(|r| r.contains(addr) || also.is_some_and(|x| r.contains(&x)));
        if matches(&self.deny) {
            return false;
        }
        if matches(&self.allow) {
            return true;
        }
        !is_internal(addr)
    }

    /// The address of `resolved` (one name's DNS answer) to connect to: the
    /// first permitted IPv4 address, else the first permitted one. `None` when
    /// the policy permits none of them.
    pub fn choose(&self, resolved: &[SocketAddr]) -> Option<SocketAddr> {
        let mut permitted = resolved.iter().filter(|a| self.permits(&a.ip()));
        // IPv4 first: a name like `localhost` often lists `::1` first while the
        // peer listens on IPv4 only, and there is no connection racing yet.
        permitted.clone().find(|a| a.is_ipv4()).or_else(|| permitted.next()).copied()
    }

    /// [`OutboundPolicy::permits`] as a result that names the address.
    pub fn check(&self, addr: &IpAddr) -> Result<(), Refused> {
        if self.permits(addr) { Ok(()) } else { Err(Refused(*addr)) }
    }
}

/// A connection the outbound policy does not permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is refused by the outbound policy (federation.ip_range_allow / ip_range_deny)")]
pub struct Refused(pub IpAddr);

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ranges(list: &[&str]) -> Vec<IpRange> {
        list.iter().map(|r| r.parse().unwrap()).collect()
    }

    #[test]
    fn every_internal_class_is_refused_by_default() {
        let policy = OutboundPolicy::default();
        let refused = [
            ("loopback", "127.0.0.1"),
            ("loopback, far end", "127.255.255.254"),
            ("private 10/8", "10.0.0.1"),
            ("private 172.16/12", "172.16.0.1"),
            ("private 172.16/12, top", "172.31.255.255"),
            ("private 192.168/16", "192.168.1.1"),
            ("link-local", "169.254.169.254"),
            ("CGNAT", "100.64.0.1"),
            ("CGNAT, top", "100.127.255.255"),
            ("unspecified", "0.0.0.0"),
            ("this network", "0.1.2.3"),
            ("multicast", "224.0.0.1"),
            ("multicast, top", "239.255.255.255"),
            ("reserved", "240.0.0.1"),
            ("broadcast", "255.255.255.255"),
            ("IETF protocol assignments", "192.0.0.8"),
            ("TEST-NET-1", "192.0.2.1"),
            ("TEST-NET-2", "198.51.100.7"),
            ("TEST-NET-3", "203.0.113.9"),
            ("benchmarking", "198.18.0.1"),
            ("benchmarking, top", "198.19.255.255"),
            ("6to4 relay", "192.88.99.1"),
            ("IPv6 loopback", "::1"),
            ("IPv6 unspecified", "::"),
            ("IPv4-compatible", "::10.0.0.1"),
            ("IPv6 link-local", "fe80::1"),
            ("IPv6 link-local, top", "febf::1"),
            ("IPv6 site-local", "fec0::1"),
            ("ULA fc", "fc00::1"),
            ("ULA fd", "fd12:3456::1"),
            ("IPv6 multicast", "ff02::1"),
            ("IPv6 documentation", "2001:db8::1"),
            ("IPv6 documentation 3fff", "3fff::1"),
            ("IPv6 benchmarking", "2001:2::1"),
            ("IPv6 discard", "100::1"),
            ("local-use NAT64", "64:ff9b:1::a00:1"),
            ("mapped private", "::ffff:10.0.0.1"),
            ("mapped loopback", "::ffff:127.0.0.1"),
            ("mapped link-local", "::ffff:169.254.169.254"),
            ("mapped CGNAT", "::ffff:100.64.0.1"),
            ("mapped 172.16/12", "::ffff:172.16.5.4"),
            ("mapped 192.168/16", "::ffff:192.168.0.1"),
            ("mapped unspecified", "::ffff:0.0.0.0"),
            ("mapped broadcast", "::ffff:255.255.255.255"),
            ("mapped multicast", "::ffff:224.0.0.1"),
            ("mapped documentation", "::ffff:192.0.2.1"),
            ("NAT64 of loopback", "64:ff9b::7f00:1"),
            ("NAT64 of private", "64:ff9b::10.1.2.3"),
        ];
        for (class, addr) in refused {
            assert!(!policy.permits(&ip(addr)), "{class} ({addr}) was permitted");
            assert!(is_internal(&ip(addr)), "{class} ({addr}) is not internal");
        }
    }

    #[test]
    fn public_addresses_are_permitted() {
        let policy = OutboundPolicy::default();
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "fbff::1",
            "fe00::1",
        ] {
            assert!(policy.permits(&ip(addr)), "{addr} was refused");
        }
    }

    #[test]
    fn the_allow_list_opens_ranges_in_either_spelling() {
        let policy = OutboundPolicy::new(ranges(&["127.0.0.0/8", "10.1.0.0/16", "fd00::/8"]), vec![]);
        assert!(policy.permits(&ip("127.0.0.1")));
        assert!(policy.permits(&ip("::ffff:127.0.0.1")), "a mapped address is judged as its IPv4 form");
        assert!(policy.permits(&ip("10.1.2.3")));
        assert!(policy.permits(&ip("::ffff:10.1.2.3")));
        assert!(!policy.permits(&ip("10.2.0.1")), "only the listed part of 10/8");
        assert!(!policy.permits(&ip("::ffff:10.2.0.1")));
        assert!(policy.permits(&ip("fd00::5")));
        assert!(!policy.permits(&ip("fc00::5")));
        assert!(!policy.permits(&ip("::1")), "IPv6 loopback is not in 127.0.0.0/8");
        let mapped = OutboundPolicy::new(ranges(&["::ffff:192.168.0.0/112"]), vec![]);
        assert!(mapped.permits(&ip("192.168.3.4")), "a mapped range catches the plain IPv4 form");
    }

    #[test]
    fn the_deny_list_wins_over_everything() {
        let policy = OutboundPolicy::new(ranges(&["10.0.0.0/8"]), ranges(&["8.8.8.0/24", "10.9.0.0/16", "2a00::/16"]));
        assert!(!policy.permits(&ip("8.8.8.8")), "a denied public address");
        assert!(!policy.permits(&ip("::ffff:8.8.8.8")), "a denied address, mapped");
        assert!(policy.permits(&ip("8.8.4.4")));
        assert!(!policy.permits(&ip("10.9.1.1")), "deny beats allow");
        assert!(policy.permits(&ip("10.8.1.1")));
        assert!(!policy.permits(&ip("2a00:1450::1")));
        assert_eq!(policy.check(&ip("8.8.8.8")), Err(Refused(ip("8.8.8.8"))));
        assert_eq!(policy.check(&ip("8.8.4.4")), Ok(()));
    }

    #[test]
    fn the_first_permitted_address_is_chosen_ipv4_first() {
        let addrs = |list: &[&str]| list.iter().map(|a| a.parse().unwrap()).collect::<Vec<SocketAddr>>();
        let policy = OutboundPolicy::default();
        let mixed = addrs(&["127.0.0.1:8448", "[2606:4700::1]:8448", "10.0.0.1:8448", "8.8.8.8:8448"]);
        assert_eq!(policy.choose(&mixed), Some("8.8.8.8:8448".parse().unwrap()));
        let v6 = addrs(&["[::1]:8448", "[2606:4700::1]:8448"]);
        assert_eq!(policy.choose(&v6), Some("[2606:4700::1]:8448".parse().unwrap()));
        assert_eq!(policy.choose(&addrs(&["127.0.0.1:1", "[::1]:1", "[::ffff:10.0.0.1]:1"])), None);
        assert_eq!(policy.choose(&[]), None);
    }

    #[test]
    fn ranges_parse_and_print() {
        let cases = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("192.168.1.7", "192.168.1.7/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("fd00::/8", "fd00::/8"),
            ("fe80::1/10", "fe80::/10"),
            ("::1", "::1/128"),
            ("::/0", "::/0"),
            (" 127.0.0.0/8 ", "127.0.0.0/8"),
        ];
        for (text, shown) in cases {
            let range: IpRange = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(range.to_string(), shown, "{text}");
        }
        assert!("0.0.0.0/0".parse::<IpRange>().unwrap().contains(&ip("8.8.8.8")));
        assert!(!"0.0.0.0/0".parse::<IpRange>().unwrap().contains(&ip("::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "example.org/8",
            "10.0.0.0/-1",
            "10.0.0.0/ 8",
        ] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad:?} parsed");
        }
    }
}
