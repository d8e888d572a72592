//! Which addresses are global unicast, and for those that are not, why.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const PRIVATE: &str = "private (RFC 1918)";
const DOCUMENTATION: &str = "documentation";

/// Refused IPv4 ranges as (network, prefix length, reason). The first match names the reason,
/// so a more specific range comes before the range that contains it.
#[rustfmt::skip]
const V4_REFUSED: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 32, "unspecified"),
    (Ipv4Addr::new(0, 0, 0, 0), 8, "this network"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, PRIVATE),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "shared address space (CGNAT)"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 169, 254), 32, "cloud metadata"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, PRIVATE),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments"),
    (Ipv4Addr::new(192, 0, 2, 0), 24, DOCUMENTATION),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "6to4 relay anycast"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, PRIVATE),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, DOCUMENTATION),
    (Ipv4Addr::new(203, 0, 113, 0), 24, DOCUMENTATION),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "broadcast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
];

/// Refused IPv6 ranges, same shape as [`V4_REFUSED`]. Everything outside 2000::/3 is refused
/// too; the ranges outside it listed here only give a more precise reason. IPv4-mapped and
/// IPv4-compatible forms are refused whatever they embed (a mapped loopback is still loopback
/// once a dual-stack socket connects to it); an exception for them must name the IPv6 form.
#[rustfmt::skip]
const V6_REFUSED: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128, "unspecified"),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128, "loopback"),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96, "IPv4-mapped IPv6"),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96, "IPv4-compatible IPv6"),
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96, "NAT64"),
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48, "NAT64"),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, "discard"),
    // AWS's IPv6 instance metadata endpoint (inside fc00::/7).
    (Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254), 128, "cloud metadata"),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, "unique local"),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local (deprecated)"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
    // Inside 2000::/3 but not globally reachable, or embedding an IPv4 address.
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32, "Teredo"),
    (Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0), 48, "benchmarking"),
    (Ipv6Addr::new(0x2001, 0x10, 0, 0, 0, 0, 0, 0), 28, "ORCHID"),
    (Ipv6Addr::new(0x2001, 0x20, 0, 0, 0, 0, 0, 0), 28, "ORCHID"),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, DOCUMENTATION),
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16, "6to4"),
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20, DOCUMENTATION),
];

/// Whether `addr` lies in `net`/`len` (bit strings of equal width, `bits` wide).
fn in_prefix(addr: u128, net: u128, len: u8, bits: u32) -> bool {
    // Shifting by the full width is an overflow in Rust; a /0 contains everything.
    (addr ^ net).checked_shr(bits - u32::from(len)).unwrap_or(0) == 0
}

/// Why an address is not dialable, as a short stable phrase for error messages and audit;
/// `None` for a global unicast address.
pub fn non_global_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let a = u128::from(u32::from(v4));
            V4_REFUSED
                .iter()
                .find(|(net, len, _)| in_prefix(a, u128::from(u32::from(*net)), *len, 32))
                .map(|(_, _, reason)| *reason)
        }
        IpAddr::V6(v6) => {
            let a = u128::from(v6);
            let listed = V6_REFUSED
                .iter()
                .find(|(net, len, _)| in_prefix(a, u128::from(*net), *len, 128))
                .map(|(_, _, reason)| *reason);
            // Only 2000::/3 is allocated as global unicast.
            listed.or_else(|| (a >> 125 != 0b001).then_some("outside global unicast (2000::/3)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ipnet::IpNet;
    use proptest::prelude::*;

    /// The ranges the rules name, written independently of the implementation's tables.
    #[rustfmt::skip]
    const V4_LISTED: &[&str] = &[
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    ];
    const V6_GLOBAL: &str = "2000::/3";
    #[rustfmt::skip]
    const V6_LISTED_IN_GLOBAL: &[&str] = &[
        "2001::/32", "2001:2::/48", "2001:10::/28", "2001:20::/28", "2001:db8::/32", "2002::/16",
        "3fff::/20",
    ];

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("net")).collect()
    }

    /// Around the edges of the listed ranges, where an off-by-one in a prefix would show.
    fn near_v4_edges() -> impl Strategy<Value = u32> {
        let edges: Vec<u32> = nets(V4_LISTED)
            .iter()
            .filter_map(|n| match n {
                IpNet::V4(n) => Some([u32::from(n.network()), u32::from(n.broadcast())]),
                IpNet::V6(_) => None,
            })
            .flatten()
            .collect();
        (proptest::sample::select(edges), -2i64..=2)
            .prop_map(|(edge, d)| (i64::from(edge) + d).clamp(0, i64::from(u32::MAX)) as u32)
    }

    fn near_v6_edges() -> impl Strategy<Value = u128> {
        let mut list = V6_LISTED_IN_GLOBAL.to_vec();
        list.push(V6_GLOBAL);
        let edges: Vec<u128> = nets(&list)
            .iter()
            .filter_map(|n| match n {
                IpNet::V6(n) => Some([u128::from(n.network()), u128::from(n.broadcast())]),
                IpNet::V4(_) => None,
            })
            .flatten()
            .collect();
        (proptest::sample::select(edges), -2i32..=2).prop_map(|(edge, d)| {
            if d < 0 {
                edge.saturating_sub(d.unsigned_abs().into())
            } else {
                edge.saturating_add(d as u128)
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(4096)))]

        /// An IPv4 address has a reason exactly when it is in one of the listed ranges.
        #[test]
        fn fuzz_v4_refused_iff_listed(n in prop_oneof![any::<u32>(), near_v4_edges()]) {
            let addr = IpAddr::V4(Ipv4Addr::from(n));
            let listed = nets(V4_LISTED).iter().any(|net| net.contains(&addr));
            prop_assert_eq!(non_global_reason(addr).is_some(), listed, "{}", addr);
        }

        /// An IPv6 address passes exactly when it is in 2000::/3 and none of the ranges refused
        /// inside it.
        #[test]
        fn fuzz_v6_allowed_iff_global_and_unlisted(n in prop_oneof![any::<u128>(), near_v6_edges()]) {
            let addr = IpAddr::V6(Ipv6Addr::from(n));
            let global: IpNet = V6_GLOBAL.parse().expect("net");
            let allowed = global.contains(&addr)
                && !nets(V6_LISTED_IN_GLOBAL).iter().any(|net| net.contains(&addr));
            prop_assert_eq!(non_global_reason(addr).is_none(), allowed, "{}", addr);
        }
    }
}
