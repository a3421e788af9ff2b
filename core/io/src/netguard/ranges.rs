//! Which addresses are public, as far as fetching an image goes: IANA's special-purpose
//! registries (RFC 6890 and its updates) plus the IPv6 prefixes that carry an IPv4
//! address for a translator. Such an address is judged by the IPv4 address it carries,
//! because that is where a NAT64 gateway, a 6to4 relay or the local stack delivers it:
//! `64:ff9b::a00:1` reaches 10.0.0.1 on an IPv6-only cluster.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What an address is to the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Class {
    /// Globally reachable.
    Public,
    /// Not globally reachable, or no place for an image server: the kind of range.
    Special(&'static str),
    /// An IPv6 address that a translator turns into one of these IPv4 addresses (more than
    /// one where the layout is the network operator's choice): judge those.
    Embeds(Vec<Ipv4Addr>),
}

pub(super) fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4).map_or(Class::Public, Class::Special),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// The kind of non-public range `ip` is in, or `None` for a public address.
pub(super) fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        // 169.254.169.254 is the metadata service of the big clouds.
        Some("link-local (metadata)")
    } else if ip.is_private() {
        Some("private")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if a == 0 {
        Some("unspecified")
    } else if ip.is_multicast() || a >= 240 {
        Some("multicast or reserved")
    } else if a == 192 && b == 0 && c == 0 {
        Some("IETF protocol")
    } else if (a, b, c) == (192, 0, 2) || (a, b, c) == (198, 51, 100) || (a, b, c) == (203, 0, 113)
    {
        Some("documentation")
    } else if (a, b, c) == (192, 88, 99) {
        // The 6to4 relay anycast (RFC 7526 deprecated it): no image server lives there.
        Some("6to4 relay")
    } else if a == 198 && (b & 0xfe) == 18 {
        Some("benchmarking")
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Class {
    use Class::{Embeds, Public, Special};
    let o = ip.octets();
    let v4_at = |i: usize| Ipv4Addr::new(o[i], o[i + 1], o[i + 2], o[i + 3]);
    match ip.segments() {
        [0, 0, 0, 0, 0, 0, 0, 0] => Special("unspecified"),
        [0, 0, 0, 0, 0, 0, 0, 1] => Special("loopback"),
        // IPv4-mapped ::ffff:0:0/96: the local stack talks IPv4 to it.
        [0, 0, 0, 0, 0, 0xffff, _, _] => Embeds(vec![v4_at(12)]),
        // IPv4-translated ::ffff:0:0:0/96 (RFC 2765, stateless translation).
        [0, 0, 0, 0, 0xffff, 0, _, _] => Embeds(vec![v4_at(12)]),
        [0, 0, 0, 0, 0, 0, _, _] => Special("IPv4-compatible (deprecated)"),
        // The well-known NAT64 prefix 64:ff9b::/96 (RFC 6052) always has this layout.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Embeds(vec![v4_at(12)]),
        [0x64, 0xff9b, 1, ..] => Embeds(local_use_nat64(o)),
        [0x100, 0, 0, 0, ..] => Special("discard-only"),
        [0x2001, 0, ..] => Special("Teredo"),
        // 2001::/23: benchmarking, ORCHID, AMT, TURN and other protocol assignments.
        [0x2001, b, ..] if b < 0x200 => Special("IETF protocol"),
        [0x2001, 0xdb8, ..] => Special("documentation"),
        [0x3fff, b, ..] if b < 0x1000 => Special("documentation"),
        // 6to4 2002::/16: bits 16..48 are the IPv4 address of the far end.
        [0x2002, ..] => Embeds(vec![v4_at(2)]),
        [first, ..] if first & 0xffc0 == 0xfe80 => Special("link-local"),
        [first, ..] if first & 0xffc0 == 0xfec0 => Special("site-local (deprecated)"),
        // fd00:ec2::254 (the AWS metadata service over IPv6) is in here.
        [first, ..] if first & 0xfe00 == 0xfc00 => Special("unique local (private)"),
        [first, ..] if first & 0xff00 == 0xff00 => Special("multicast"),
        // Only 2000::/3 is global unicast; the rest is reserved by the IETF.
        [first, ..] if first & 0xe000 != 0x2000 => Special("reserved"),
        _ => Public,
    }
}

/// The IPv4 addresses a gateway for the local-use NAT64 prefix `64:ff9b:1::/48` (RFC 8215)
/// may deliver `o` to. The operator picks the prefix length inside that /48 (48, 56, 64
/// or 96; RFC 6052 section 2.2 fixes where the IPv4 address sits for each, skipping bits
/// 64..72), and the guard cannot know which, so the address is read under every layout
/// and every reading is judged: a public address that reads as a private one under
/// another layout is refused, the safe side. Readings in 0.0.0.0/8 are left out, as no
/// gateway forwards there (a /96 address reads as 0.x.x.x under the shorter layouts, and
/// would else never pass), unless nothing else is left.
fn local_use_nat64(o: [u8; 16]) -> Vec<Ipv4Addr> {
    let readings = [
        [o[12], o[13], o[14], o[15]],
        [o[6], o[7], o[9], o[10]],
        [o[7], o[9], o[10], o[11]],
        [o[9], o[10], o[11], o[12]],
    ]
    .map(Ipv4Addr::from);
    let routable: Vec<Ipv4Addr> = readings
        .iter()
        .copied()
        .filter(|v4| v4.octets()[0] != 0)
        .collect();
    if routable.is_empty() {
        vec![readings[0]]
    } else {
        routable
    }
}
