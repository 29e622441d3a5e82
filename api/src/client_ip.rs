//! The client's address behind a trusted reverse proxy (`X-Forwarded-For`).
//!
//! Per-address limits (registrations, and whatever else keys on the client's
//! address) must count the client, not the proxy in front of Myelin that
//! every request comes through. The header is believed only on a connection
//! from a configured proxy (`[client] trusted_proxies`), since anyone else can
//! write anything in it. Each proxy appends the address it received the
//! request from, so the list is read from the right: the first address that
//! is not itself a trusted proxy is the client's, and what lies to the left
//! of it was written by the client and is not looked at. An entry that does
//! not parse ends the walk at the proxy that wrote it.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use myelin_engine::net_policy::IpRange;

/// The address to count a request against: `remote` (the connection's peer),
/// or, when that is a trusted proxy, the client it names in `X-Forwarded-For`.
pub fn client_addr(trusted: &[IpRange], remote: SocketAddr, headers: &HeaderMap) -> SocketAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|r| r.contains(&canonical(*ip)));
    if trusted.is_empty() || !is_trusted(&remote.ip()) {
        return remote;
    }
    // Several headers are one list, in order (RFC 9110 §5.3).
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = None;
    for entry in entries.iter().rev() {
        let Some(ip) = parse(entry) else { break };
        client = Some(ip);
        if !is_trusted(&ip) {
            break;
        }
    }
    // The port is the proxy's connection's, not the client's: left out.
    client.map_or(remote, |ip| SocketAddr::new(canonical(ip), 0))
}

/// One entry: an address, optionally with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse(entry: &str) -> Option<IpAddr> {
    entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> IpRange {
        serde_json::from_value(serde_json::json!(s)).unwrap()
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_header_is_believed_only_from_a_trusted_proxy() {
        let trusted = [range("10.0.0.0/8")];
        let stranger: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        let proxy: SocketAddr = "10.1.2.3:4000".parse().unwrap();
        let h = headers(&["198.51.100.7"]);
        assert_eq!(client_addr(&trusted, stranger, &h), stranger, "a stranger's header is ignored");
        assert_eq!(client_addr(&[], proxy, &h), proxy, "no proxies configured: ignored");
        assert_eq!(client_addr(&trusted, proxy, &h).ip(), ip("198.51.100.7"));
        assert_eq!(client_addr(&trusted, proxy, &HeaderMap::new()), proxy, "no header: the proxy itself");
    }

    #[test]
    fn the_client_is_the_rightmost_address_that_is_not_a_trusted_proxy() {
        let trusted = [range("10.0.0.0/8"), range("::1")];
        let proxy: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        // The client wrote "1.1.1.1" itself; 198.51.100.7 reached the outer proxy 10.9.9.9.
        let h = headers(&["1.1.1.1, 198.51.100.7", "10.9.9.9"]);
        assert_eq!(client_addr(&trusted, proxy, &h).ip(), ip("198.51.100.7"));
        // Ports and IPv6 brackets are accepted; a mapped address is the IPv4 one.
        let h = headers(&["[2001:db8::5]:1234"]);
        assert_eq!(client_addr(&trusted, proxy, &h).ip(), ip("2001:db8::5"));
        let h = headers(&["::ffff:198.51.100.8"]);
        assert_eq!(client_addr(&trusted, proxy, &h).ip(), ip("198.51.100.8"));
        // Garbage ends the walk at the proxy that wrote it, never left of it.
        let h = headers(&["198.51.100.7, nonsense, 10.9.9.9"]);
        assert_eq!(client_addr(&trusted, proxy, &h).ip(), ip("10.9.9.9"));
        // Only proxies: the leftmost of them.
        let h = headers(&["10.3.3.3, 10.9.9.9"]);
        assert_eq!(client_addr(&trusted, proxy, &h).ip(), ip("10.3.3.3"));
    }
}
