//! The capture rules of a pod's network namespace, as `tenant-proxy sidecar-init` prints or
//! applies them: every outbound TCP connection (IPv4 and IPv6) is redirected to the transparent
//! listener, except the proxy's own (by uid: its upstream connections must leave, or each one
//! would come back to it), loopback (the pod's own local services, the proxy's other
//! listeners) and the configured exclusions.

use std::fmt::Write as _;

use ipnet::IpNet;

/// The nftables table the rules live in (replaced whole on every apply).
pub const NFT_TABLE: &str = "tenant_proxy";
/// The iptables chain the rules live in (flushed and refilled on every apply).
pub const IPTABLES_CHAIN: &str = "TENANT_PROXY_OUTPUT";

/// Which tool installs the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// One `inet` table for both families (`nft -f -`).
    Nft,
    /// `iptables-restore` and `ip6tables-restore` (the `nat` table's `OUTPUT` chain).
    Iptables,
}

/// What is captured and what is let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRules {
    /// The transparent listener's port (on loopback: `REDIRECT` sends IPv4 to 127.0.0.1 and
    /// IPv6 to ::1, so the listener binds `[::]` to take both).
    pub port: u16,
    /// The proxy's uid: its connections are never captured.
    pub proxy_uid: u32,
    /// Destinations let through (each a way around the proxy: keep them few).
    pub exclude_cidrs: Vec<IpNet>,
    /// Destination ports let through.
    pub exclude_ports: Vec<u16>,
}

impl CaptureRules {
    /// The nftables script (for `nft -f -`): idempotent, it replaces the table whole.
    pub fn nft(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# tenant-proxy capture rules (apply with `nft -f -`)");
        // Declaring the table before deleting it makes the delete succeed on a first apply.
        let _ = writeln!(s, "table inet {NFT_TABLE}");
        let _ = writeln!(s, "delete table inet {NFT_TABLE}");
        let _ = writeln!(s, "table inet {NFT_TABLE} {{");
        let _ = writeln!(s, "\tchain output {{");
        let _ = writeln!(s, "\t\ttype nat hook output priority -100; policy accept;");
        let _ = writeln!(s, "\t\tmeta l4proto != tcp return");
        let _ = writeln!(s, "\t\tmeta skuid {} return", self.proxy_uid);
        let _ = writeln!(s, "\t\tip daddr 127.0.0.0/8 return");
        let _ = writeln!(s, "\t\tip6 daddr ::1 return");
        for net in &self.exclude_cidrs {
            let family = if matches!(net, IpNet::V4(_)) {
                "ip"
            } else {
                "ip6"
            };
            let _ = writeln!(s, "\t\t{family} daddr {net} return");
        }
        for port in &self.exclude_ports {
            let _ = writeln!(s, "\t\ttcp dport {port} return");
        }
        let _ = writeln!(s, "\t\tmeta l4proto tcp redirect to :{}", self.port);
        let _ = writeln!(s, "\t}}");
        let _ = writeln!(s, "}}");
        s
    }

    /// The `iptables-restore --noflush` input for IPv4 (`v6 = false`) or
    /// `ip6tables-restore --noflush` for IPv6: the chain is flushed and refilled, and `OUTPUT`
    /// sends TCP through it, unless `jump_in_place` (an earlier apply's jump is there: a
    /// second would send every connection through the chain twice, and stay after a removal).
    pub fn iptables(&self, v6: bool, jump_in_place: bool) -> String {
        let loopback = if v6 { "::1/128" } else { "127.0.0.0/8" };
        let chain = IPTABLES_CHAIN;
        let mut s = String::new();
        let _ = writeln!(s, "*nat");
        let _ = writeln!(s, ":{chain} - [0:0]");
        let _ = writeln!(
            s,
            "-A {chain} -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        );
        let _ = writeln!(s, "-A {chain} -d {loopback} -j RETURN");
        for net in &self.exclude_cidrs {
            if matches!(net, IpNet::V6(_)) == v6 {
                let _ = writeln!(s, "-A {chain} -d {net} -j RETURN");
            }
        }
        for port in &self.exclude_ports {
            let _ = writeln!(s, "-A {chain} -p tcp --dport {port} -j RETURN");
        }
        let _ = writeln!(s, "-A {chain} -p tcp -j REDIRECT --to-ports {}", self.port);
        if !jump_in_place {
            let _ = writeln!(s, "-A OUTPUT -p tcp -j {chain}");
        }
        let _ = writeln!(s, "COMMIT");
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rules() -> CaptureRules {
        CaptureRules {
            port: 15001,
            proxy_uid: 1337,
            exclude_cidrs: vec!["10.96.0.0/12".parse().unwrap(), "fd00::/8".parse().unwrap()],
            exclude_ports: vec![22],
        }
    }

    #[test]
    fn nft_rules_let_the_proxy_loopback_and_exclusions_through_and_redirect_the_rest() {
        let nft = rules().nft();
        let lines: Vec<&str> = nft.lines().map(str::trim).collect();
        let at = |l: &str| {
            lines
                .iter()
                .position(|x| *x == l)
                .unwrap_or_else(|| panic!("{l}\n{nft}"))
        };
        let redirect = at("meta l4proto tcp redirect to :15001");
        for before in [
            "meta l4proto != tcp return",
            "meta skuid 1337 return",
            "ip daddr 127.0.0.0/8 return",
            "ip6 daddr ::1 return",
            "ip daddr 10.96.0.0/12 return",
            "ip6 daddr fd00::/8 return",
            "tcp dport 22 return",
        ] {
            assert!(
                at(before) < redirect,
                "{before} comes after the redirect:\n{nft}"
            );
        }
        assert_eq!(
            redirect + 1,
            at("}"),
            "the redirect is the chain's last rule:\n{nft}"
        );
        assert!(nft.contains("table inet tenant_proxy {"));
    }

    #[test]
    fn iptables_rules_split_the_exclusions_by_family() {
        let v4 = rules().iptables(false, false);
        let v6 = rules().iptables(true, false);
        assert!(v4.contains("-A TENANT_PROXY_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
        assert!(v4.contains("-d 127.0.0.0/8 -j RETURN") && v6.contains("-d ::1/128 -j RETURN"));
        assert!(v4.contains("-d 10.96.0.0/12") && !v4.contains("fd00::/8"));
        assert!(v6.contains("-d fd00::/8") && !v6.contains("10.96.0.0/12"));
        for t in [&v4, &v6] {
            assert!(t.contains("-p tcp --dport 22 -j RETURN"));
            let redirect = t.find("-j REDIRECT --to-ports 15001").unwrap();
            assert!(t.find("--uid-owner").unwrap() < redirect);
            assert!(t
                .trim_end()
                .ends_with("-A OUTPUT -p tcp -j TENANT_PROXY_OUTPUT\nCOMMIT"));
        }
        // Applied again: the chain is refilled, the jump to it not added twice.
        let again = rules().iptables(false, true);
        assert!(again.contains(":TENANT_PROXY_OUTPUT - [0:0]"));
        assert!(!again.contains("-A OUTPUT"), "{again}");
    }
}
