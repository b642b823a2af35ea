//! What a peer address counts as, wherever peers are counted (connections, failed sign-ins):
//! an IPv4 address as itself (mapped into IPv6 or not), an IPv6 address by its /64, the block
//! one host or one subscriber gets, so that rotating addresses within it counts as one peer.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The peer `ip` counts as.
pub(crate) fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
        v4 => v4,
    }
}

/// The address a request comes from: its connection's, or, when that is one of the `trusted`
/// proxies, the address the proxies' `X-Forwarded-For` names, read from the right and past
/// every trusted proxy (each appends the address it got the request from; what the client
/// itself wrote, on the left, is believed only through proxies the operator trusts). An entry
/// that is not an address ends the walk at the last hop read.
pub(crate) fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(&ip.to_canonical()));
    let mut address = peer.to_canonical();
    if !is_trusted(address) {
        return address;
    }
    let values: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(|&b| b == b',')) {
        let Some(hop) = std::str::from_utf8(entry).ok().and_then(forwarded_address) else {
            break;
        };
        address = hop;
        if !is_trusted(address) {
            break;
        }
    }
    address
}

/// An `X-Forwarded-For` entry: an address, with or without a port.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_address_is_believed_through_trusted_proxies_only() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let from = |peer: &str, forwarded: &[&str]| {
            let mut headers = HeaderMap::new();
            for f in forwarded {
                headers.append("x-forwarded-for", f.parse().unwrap());
            }
            client_address(ip(peer), &headers, &trusted)
        };
        // A peer that is no proxy of ours: its own address, whatever it writes.
        assert_eq!(from("198.51.100.9", &["192.0.2.1"]), ip("198.51.100.9"));
        // Through one proxy, and through two (the ingress behind a load balancer).
        assert_eq!(from("10.0.0.5", &["192.0.2.1"]), ip("192.0.2.1"));
        assert_eq!(from("10.0.0.5", &["192.0.2.1, 10.0.0.9"]), ip("192.0.2.1"));
        assert_eq!(
            from("10.0.0.5", &["192.0.2.1", "10.0.0.9"]),
            ip("192.0.2.1")
        );
        // What the client wrote itself, left of the first untrusted hop, is not believed.
        assert_eq!(
            from("10.0.0.5", &["203.0.113.66, 192.0.2.1"]),
            ip("192.0.2.1")
        );
        // Ports, brackets, mapped addresses; an entry that is no address ends the walk.
        assert_eq!(
            from("::ffff:10.0.0.5", &["192.0.2.1:4711"]),
            ip("192.0.2.1")
        );
        assert_eq!(from("10.0.0.5", &["[2001:db8::1]:443"]), ip("2001:db8::1"));
        assert_eq!(from("10.0.0.5", &["unknown, 10.0.0.9"]), ip("10.0.0.9"));
        // A trusted proxy that forwards nothing: the proxy.
        assert_eq!(from("10.0.0.5", &[]), ip("10.0.0.5"));
        // No proxy trusted: the connection's address.
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "192.0.2.1".parse().unwrap());
        assert_eq!(
            client_address(ip("10.0.0.5"), &headers, &[]),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn an_ipv6_host_counts_by_its_64_and_a_mapped_ipv4_as_itself() {
        let key = |ip: &str| key(ip.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:a:b:c:d"), key("2001:db8:1:2::ffff"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
    }
}
