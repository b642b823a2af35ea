//! What a peer address counts as, wherever peers are counted (connections, failed sign-ins):
//! an IPv4 address as itself (mapped into IPv6 or not), an IPv6 address by its /64, the block
//! one host or one subscriber gets, so that rotating addresses within it counts as one peer.

use std::net::IpAddr;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_host_counts_by_its_64_and_a_mapped_ipv4_as_itself() {
        let key = |ip: &str| key(ip.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:a:b:c:d"), key("2001:db8:1:2::ffff"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
    }
}
