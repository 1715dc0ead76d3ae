//! Classifies addresses that a forward proxy must not reach on an agent's behalf (SSRF), and
//! parses the numeric IPv4 host forms (`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`) the
//! way curl and browsers do, so that they are judged as the addresses they are.

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
    /// Unspecified, broadcast, reserved, documentation, benchmarking and other ranges the
    /// IANA special-purpose registries mark as not globally reachable.
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

/// `None` for a public address, otherwise why it is restricted. An IPv6 address whose prefix
/// embeds an IPv4 address (mapped, compatible, SIIT, NAT64, 6to4, Teredo) is judged by the
/// embedded address.
pub fn classify(ip: IpAddr) -> Option<Restricted> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// IANA IPv4 Special-Purpose Address Registry, plus the cloud metadata addresses.
fn classify_v4(ip: Ipv4Addr) -> Option<Restricted> {
    let [a, b, c, d] = ip.octets();
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
        // IETF protocol assignments, except the PCP and TURN anycast addresses (global).
        _ if (a, b, c) == (192, 0, 0) && d != 9 && d != 10 => Restricted::Reserved,
        _ if (a, b, c) == (192, 0, 2)
            || (a, b, c) == (198, 51, 100)
            || (a, b, c) == (203, 0, 113) =>
        {
            Restricted::Reserved // documentation
        }
        _ if (a, b, c) == (192, 88, 99) => Restricted::Reserved, // deprecated 6to4 relay anycast
        _ if a == 198 && (b == 18 || b == 19) => Restricted::Reserved, // benchmarking
        _ => return None,
    })
}

/// The IPv4 address in bits `96..128` of `seg`.
fn low_v4(seg: &[u16; 8]) -> Ipv4Addr {
    v4_from(seg[6], seg[7])
}

fn v4_from(hi: u16, lo: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))
}

/// IANA IPv6 Special-Purpose Address Registry (every entry), the deprecated forms that embed
/// IPv4 (compatible `::a.b.c.d`, SIIT `::ffff:0:a.b.c.d`), site-local, multicast, and
/// everything outside global unicast `2000::/3` (reserved by the IETF).
fn classify_v6(ip: Ipv6Addr) -> Option<Restricted> {
    let seg = ip.segments();
    if ip.is_loopback() {
        return Some(Restricted::Loopback);
    }
    if ip.is_unspecified() {
        return Some(Restricted::Reserved);
    }
    // ::/96: IPv4-compatible (deprecated; ::a.b.c.d); ::ffff:0:0/96: IPv4-mapped;
    // ::ffff:0:0:0/96: SIIT (IPv4-translated); 64:ff9b::/96: NAT64 well-known prefix.
    let embedded = match seg {
        [0, 0, 0, 0, 0, 0, _, _]
        | [0, 0, 0, 0, 0, 0xffff, _, _]
        | [0, 0, 0, 0, 0xffff, 0, _, _] => Some(low_v4(&seg)),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low_v4(&seg)),
        // 6to4: 2002:AABB:CCDD::/48.
        [0x2002, hi, lo, ..] => Some(v4_from(hi, lo)),
        // Teredo: 2001:0:SSSS:SSSS:flags:port:CCCC:CCCC, the client address inverted. Judge
        // the client; a restricted server address is refused as well.
        [0x2001, 0, s1, s2, _, _, c1, c2] => {
            return classify_v4(v4_from(!c1, !c2)).or(classify_v4(v4_from(s1, s2)));
        }
        _ => None,
    };
    if let Some(v4) = embedded {
        return classify_v4(v4);
    }
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        return Some(Restricted::CloudMetadata);
    }
    Some(match seg {
        // Local-use NAT64 (RFC 8215): translated only inside its own network.
        [0x64, 0xff9b, 1, ..] => Restricted::Private,
        [0xfc00..=0xfdff, ..] => Restricted::Private, // unique local fc00::/7
        [0xfe80..=0xfebf, ..] => Restricted::LinkLocal,
        [0xfec0..=0xfeff, ..] => Restricted::Private, // site-local (deprecated)
        [0xff00..=0xffff, ..] => Restricted::Multicast,
        // Discard-only 100::/64 and the dummy prefix 100:0:0:1::/64 fall in here too.
        [0..=0x1fff, ..] | [0x4000..=0xfbff, ..] => Restricted::Reserved, // outside 2000::/3
        [0x2001, 0x0db8, ..] | [0x3fff, 0..=0x0fff, ..] => Restricted::Reserved, // documentation
        [0x2001, second, ..] if second < 0x200 => {
            // IETF protocol assignments 2001::/23, not globally reachable except the entries
            // the registry lists as global: PCP/TURN/DNS-SD-SRP anycast, AMT, AS112-v6,
            // ORCHIDv2, drone remote ID.
            let global = matches!(
                seg,
                [_, 1, 0, 0, 0, 0, 0, 1..=3]
                    | [_, 3, ..]
                    | [_, 4, 0x112, ..]
                    | [_, 0x20..=0x3f, ..]
            );
            if global {
                return None;
            }
            Restricted::Reserved
        }
        _ => return None,
    })
}

/// A host that ends in a number but is not a valid IPv4 address (e.g. `1.2.3.256`, `0x1g`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidIpv4;

/// Reads `host` (lowercase, without brackets or a trailing dot) as the WHATWG URL standard's
/// IPv4 parser does, like curl and browsers: one to four parts, each decimal, octal (leading
/// `0`) or hex (`0x`), the last one filling the remaining bytes (`127.1` is `127.0.0.1`,
/// `2130706433` and `0x7f000001` are too). `Ok(None)`: `host` is a name. A host whose last
/// label is numeric but which is not a valid address is an error, as in browsers.
pub fn parse_numeric_v4(host: &str) -> Result<Option<Ipv4Addr>, InvalidIpv4> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let parts: Vec<&str> = host.split('.').collect();
    let last = parts.last().copied().unwrap_or_default();
    let numeric_last = (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
        || last
            .strip_prefix("0x")
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if !numeric_last {
        return Ok(None);
    }
    if parts.len() > 4 {
        return Err(InvalidIpv4);
    }
    let numbers = parts
        .iter()
        .map(|p| parse_part(p).ok_or(InvalidIpv4))
        .collect::<Result<Vec<u64>, _>>()?;
    let (last, init) = numbers.split_last().ok_or(InvalidIpv4)?;
    if init.iter().any(|&n| n > 255) || *last >= 1u64 << (8 * (5 - numbers.len())) {
        return Err(InvalidIpv4);
    }
    let mut value = *last;
    for (i, n) in init.iter().enumerate() {
        value += n << (8 * (3 - i));
    }
    Ok(Some(Ipv4Addr::from(value as u32)))
}

/// One part: `0x…` hex (`0x` alone is 0), `0…` octal, otherwise decimal; `None` if it is not
/// a number or exceeds 2^32.
fn parse_part(part: &str) -> Option<u64> {
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x") {
        (hex, 16)
    } else if part.len() > 1 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    if digits.is_empty() {
        return (radix != 10).then_some(0);
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let n = u64::from_str_radix(digits, radix).ok()?;
    (n <= u64::from(u32::MAX)).then_some(n)
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
        assert_eq!(c("192.0.0.8"), Some(Restricted::Reserved));
        assert_eq!(c("192.88.99.1"), Some(Restricted::Reserved));
        assert_eq!(c("198.19.0.1"), Some(Restricted::Reserved));
    }

    #[test]
    fn restricted_v6_and_embedded_v4() {
        assert_eq!(c("::1"), Some(Restricted::Loopback));
        assert_eq!(c("::"), Some(Restricted::Reserved));
        assert_eq!(c("fe80::1"), Some(Restricted::LinkLocal));
        assert_eq!(c("fd12::1"), Some(Restricted::Private));
        assert_eq!(c("fec0::1"), Some(Restricted::Private));
        assert_eq!(c("fd00:ec2::254"), Some(Restricted::CloudMetadata));
        assert_eq!(c("ff02::1"), Some(Restricted::Multicast));
        // Mapped, compatible, SIIT, NAT64, local-use NAT64, 6to4, Teredo.
        assert_eq!(c("::ffff:10.0.0.1"), Some(Restricted::Private));
        assert_eq!(c("::ffff:169.254.169.254"), Some(Restricted::CloudMetadata));
        assert_eq!(c("::127.0.0.1"), Some(Restricted::Loopback));
        assert_eq!(c("::7f00:1"), Some(Restricted::Loopback));
        assert_eq!(c("::169.254.169.254"), Some(Restricted::CloudMetadata));
        assert_eq!(c("::10.0.0.1"), Some(Restricted::Private));
        assert_eq!(c("::ffff:0:127.0.0.1"), Some(Restricted::Loopback));
        assert_eq!(c("::ffff:0:10.1.2.3"), Some(Restricted::Private));
        assert_eq!(c("64:ff9b::7f00:1"), Some(Restricted::Loopback));
        assert_eq!(c("64:ff9b:1::0808:0808"), Some(Restricted::Private));
        assert_eq!(c("2002:a00:1::"), Some(Restricted::Private));
        assert_eq!(c("2002:7f00:1::1"), Some(Restricted::Loopback));
        // Teredo client 127.0.0.1 (inverted: 80ff:fffe) behind server 1.1.1.1.
        assert_eq!(c("2001:0:101:101::80ff:fffe"), Some(Restricted::Loopback));
        assert_eq!(c("2001:0:101:101::f5ff:fffe"), Some(Restricted::Private));
        // Registry entries and reserved space.
        assert_eq!(c("100::1"), Some(Restricted::Reserved));
        assert_eq!(c("100:0:0:1::1"), Some(Restricted::Reserved));
        assert_eq!(c("2001:2::1"), Some(Restricted::Reserved));
        assert_eq!(c("2001:10::1"), Some(Restricted::Reserved));
        assert_eq!(c("2001:1::4"), Some(Restricted::Reserved));
        assert_eq!(c("2001:db8::1"), Some(Restricted::Reserved));
        assert_eq!(c("3fff::1"), Some(Restricted::Reserved));
        assert_eq!(c("5f00::1"), Some(Restricted::Reserved));
        assert_eq!(c("4000::1"), Some(Restricted::Reserved));
        assert_eq!(c("1::1"), Some(Restricted::Reserved));
    }

    #[test]
    fn public_addresses_pass() {
        assert_eq!(c("1.1.1.1"), None);
        assert_eq!(c("8.8.8.8"), None);
        assert_eq!(c("100.128.0.1"), None);
        assert_eq!(c("172.32.0.1"), None);
        assert_eq!(c("192.0.0.9"), None);
        assert_eq!(c("2606:4700:4700::1111"), None);
        assert_eq!(c("::ffff:1.1.1.1"), None);
        assert_eq!(c("::1.1.1.1"), None);
        assert_eq!(c("64:ff9b::808:808"), None);
        assert_eq!(c("2002:808:808::1"), None);
        // Teredo client 8.8.8.8 behind server 1.1.1.1.
        assert_eq!(c("2001:0:101:101::f7f7:f7f7"), None);
        // Globally reachable entries of 2001::/23 and a global AS112 delegation.
        assert_eq!(c("2001:1::1"), None);
        assert_eq!(c("2001:3::1"), None);
        assert_eq!(c("2001:4:112::1"), None);
        assert_eq!(c("2001:20::1"), None);
        assert_eq!(c("2001:30::1"), None);
        assert_eq!(c("2620:4f:8000::1"), None);
        assert_eq!(c("3fff:1000::1"), None);
    }

    fn v4(s: &str) -> Result<Option<String>, InvalidIpv4> {
        parse_numeric_v4(s).map(|ip| ip.map(|ip| ip.to_string()))
    }

    #[test]
    fn numeric_host_forms_are_ipv4_addresses() {
        let lo = Ok(Some("127.0.0.1".to_string()));
        for form in [
            "2130706433",
            "0x7f000001",
            "0177.0.0.1",
            "127.1",
            "127.0.1",
            "0x7f.1",
            "0x7f.0.0.0x1",
            "127.0.0.1.",
            "017700000001",
        ] {
            assert_eq!(v4(form), lo, "{form}");
        }
        assert_eq!(v4("0"), Ok(Some("0.0.0.0".into())));
        assert_eq!(v4("0x"), Ok(Some("0.0.0.0".into())));
        assert_eq!(v4("169.254.43518"), Ok(Some("169.254.169.254".into())));
        assert_eq!(v4("4294967295"), Ok(Some("255.255.255.255".into())));
    }

    #[test]
    fn names_and_invalid_numbers() {
        for name in [
            "example.com",
            "api.x402.org",
            "1.2.3.4.example",
            "0x1g",
            "localhost",
            "a1",
            "+1",
            "1.+1",
        ] {
            assert_eq!(v4(name), Ok(None), "{name}");
        }
        for bad in [
            "4294967296",
            "1.2.3.256",
            "256.1.1.1",
            "1.2.65536",
            "1.2.3.4.5",
            "1..1",
            "08",
            "0x100000000",
            "example.09",
        ] {
            assert_eq!(v4(bad), Err(InvalidIpv4), "{bad}");
        }
    }
}
