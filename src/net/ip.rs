//! Classifies addresses that a forward proxy must not reach on an agent's behalf (SSRF).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not a public unicast internet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restricted {
    Loopback,
    Private,
    LinkLocal,
    Cgnat,
    Multicast,
    CloudMetadata,
    /// Unspecified, broadcast, reserved, documentation and benchmarking ranges.
    Reserved,
}

impl Restricted {
    pub fn as_str(self) -> &'static str {
        match self {
            Restricted::Loopback => "loopback",
            Restricted::Private => "private",
            Restricted::LinkLocal => "link-local",
            Restricted::Cgnat => "cgnat",
            Restricted::Multicast => "multicast",
            Restricted::CloudMetadata => "cloud-metadata",
            Restricted::Reserved => "reserved",
        }
    }
}

/// `None` for a public address, otherwise why it is restricted. IPv4 addresses embedded in
/// IPv6 (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by
/// the embedded IPv4 address.
pub fn classify(ip: IpAddr) -> Option<Restricted> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Restricted> {
    let [a, b, c, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254)
        || ip == Ipv4Addr::new(100, 100, 100, 200)
        || ip == Ipv4Addr::new(192, 0, 0, 192)
    {
        return Some(Restricted::CloudMetadata);
    }
    Some(match () {
        _ if ip.is_loopback() => Restricted::Loopback,
        _ if ip.is_private() => Restricted::Private,
        _ if ip.is_link_local() => Restricted::LinkLocal,
        _ if a == 100 && (64..128).contains(&b) => Restricted::Cgnat,
        _ if ip.is_multicast() => Restricted::Multicast,
        _ if a == 0 || a >= 240 => Restricted::Reserved, // "this network", reserved, broadcast
        _ if a == 192 && b == 0 && c == 0 => Restricted::Reserved, // IETF protocol assignments
        _ if (a, b, c) == (192, 0, 2)
            || (a, b, c) == (198, 51, 100)
            || (a, b, c) == (203, 0, 113) =>
        {
            Restricted::Reserved
        }
        _ if a == 198 && (b == 18 || b == 19) => Restricted::Reserved, // benchmarking
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<Restricted> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let seg = ip.segments();
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
        return classify_v4(Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        ));
    }
    if seg[0] == 0x2002 {
        return classify_v4(Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        ));
    }
    if ip == "fd00:ec2::254".parse::<Ipv6Addr>().expect("literal") {
        return Some(Restricted::CloudMetadata);
    }
    Some(match () {
        _ if ip.is_loopback() => Restricted::Loopback,
        _ if ip.is_unspecified() => Restricted::Reserved,
        _ if (seg[0] & 0xfe00) == 0xfc00 => Restricted::Private, // unique local fc00::/7
        _ if (seg[0] & 0xffc0) == 0xfe80 => Restricted::LinkLocal,
        _ if ip.is_multicast() => Restricted::Multicast,
        _ if seg[0] == 0x2001 && seg[1] == 0x0db8 => Restricted::Reserved, // documentation
        _ if seg[0] == 0x0100 && seg[1..4] == [0, 0, 0] => Restricted::Reserved, // discard-only
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Option<Restricted> {
        classify(s.parse().unwrap())
    }

    #[test]
    fn restricted_v4() {
        assert_eq!(c("127.0.0.1"), Some(Restricted::Loopback));
        assert_eq!(c("10.0.0.1"), Some(Restricted::Private));
        assert_eq!(c("172.16.5.4"), Some(Restricted::Private));
        assert_eq!(c("192.168.1.1"), Some(Restricted::Private));
        assert_eq!(c("169.254.169.254"), Some(Restricted::CloudMetadata));
        assert_eq!(c("169.254.1.1"), Some(Restricted::LinkLocal));
        assert_eq!(c("100.64.0.1"), Some(Restricted::Cgnat));
        assert_eq!(c("100.100.100.200"), Some(Restricted::CloudMetadata));
        assert_eq!(c("224.0.0.1"), Some(Restricted::Multicast));
        assert_eq!(c("0.0.0.0"), Some(Restricted::Reserved));
        assert_eq!(c("255.255.255.255"), Some(Restricted::Reserved));
    }

    #[test]
    fn restricted_v6_and_embedded_v4() {
        assert_eq!(c("::1"), Some(Restricted::Loopback));
        assert_eq!(c("::"), Some(Restricted::Reserved));
        assert_eq!(c("fe80::1"), Some(Restricted::LinkLocal));
        assert_eq!(c("fd12::1"), Some(Restricted::Private));
        assert_eq!(c("fd00:ec2::254"), Some(Restricted::CloudMetadata));
        assert_eq!(c("ff02::1"), Some(Restricted::Multicast));
        assert_eq!(c("::ffff:10.0.0.1"), Some(Restricted::Private));
        assert_eq!(c("::ffff:169.254.169.254"), Some(Restricted::CloudMetadata));
        assert_eq!(c("64:ff9b::7f00:1"), Some(Restricted::Loopback));
        assert_eq!(c("2002:a00:1::"), Some(Restricted::Private));
    }

    #[test]
    fn public_addresses_pass() {
        assert_eq!(c("1.1.1.1"), None);
        assert_eq!(c("8.8.8.8"), None);
        assert_eq!(c("100.128.0.1"), None);
        assert_eq!(c("172.32.0.1"), None);
        assert_eq!(c("2606:4700:4700::1111"), None);
        assert_eq!(c("::ffff:1.1.1.1"), None);
    }
}
