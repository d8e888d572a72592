//! A network namespace for one test, created by the test and removed on drop: a veth pair
//! whose host end (`host_ip`, `host_ip6`) stands for the internet and whose namespace end
//! (`ns_ip`, `ns_ip6`) is the pod's address, loopback up, a hosts file of its own
//! (`/etc/netns/NAME/hosts`, which `ip netns exec` puts in place of `/etc/hosts`). Nothing in
//! the machine's own network changes except the host end of the veth, on a private /24 and
//! /64 of its own.
//!
//! Creating one takes root (or `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`) and the `ip` tool: where
//! that is missing, [`Netns::create`] says why and the test skips with that message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A namespace and its veth pair.
pub struct Netns {
    pub name: String,
    host_link: String,
    pub host_ip: IpAddr,
    pub ns_ip: IpAddr,
    pub host_ip6: IpAddr,
    pub ns_ip6: IpAddr,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("`{}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates a namespace (the reason it cannot, otherwise).
    pub fn create() -> Result<Self, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // A subnet per process and namespace, so parallel tests (and runs) do not meet.
        let net = (pid.wrapping_mul(7).wrapping_add(n) % 250) as u8 + 1;
        let name = format!("tp{pid}n{n}");
        let host_link = format!("tph{}n{n}", pid % 100_000);
        let ns_link = format!("tpn{}n{n}", pid % 100_000);
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns {
            name,
            host_link,
            host_ip: Ipv4Addr::new(10, 231, net, 1).into(),
            ns_ip: Ipv4Addr::new(10, 231, net, 2).into(),
            host_ip6: Ipv6Addr::new(0xfd00, 0x231, u16::from(net), 0, 0, 0, 0, 1).into(),
            ns_ip6: Ipv6Addr::new(0xfd00, 0x231, u16::from(net), 0, 0, 0, 0, 2).into(),
        };
        let (host_v4, ns_v4) = (format!("{}/24", ns.host_ip), format!("{}/24", ns.ns_ip));
        let (host_v6, ns_v6) = (format!("{}/64", ns.host_ip6), format!("{}/64", ns.ns_ip6));
        let name = ns.name.as_str();
        let host = ns.host_link.as_str();
        for step in [
            vec![
                "ip", "link", "add", host, "type", "veth", "peer", "name", &ns_link,
            ],
            vec!["ip", "link", "set", &ns_link, "netns", name],
            vec!["ip", "addr", "add", &host_v4, "dev", host],
            vec!["ip", "-6", "addr", "add", &host_v6, "dev", host, "nodad"],
            vec!["ip", "link", "set", host, "up"],
            vec!["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
            vec![
                "ip", "netns", "exec", name, "ip", "addr", "add", &ns_v4, "dev", &ns_link,
            ],
            vec![
                "ip", "netns", "exec", name, "ip", "-6", "addr", "add", &ns_v6, "dev", &ns_link,
                "nodad",
            ],
            vec![
                "ip", "netns", "exec", name, "ip", "link", "set", &ns_link, "up",
            ],
        ] {
            run(&step)?;
        }
        Ok(ns)
    }

    /// Creates a namespace, or prints why not and returns `None` (the test then skips).
    pub fn create_or_skip(test: &str) -> Option<Self> {
        match Self::create() {
            Ok(ns) => Some(ns),
            Err(why) => {
                eprintln!(
                    "SKIPPED {test}: cannot create a network namespace here (needs root or CAP_NET_ADMIN+CAP_SYS_ADMIN, and `ip`): {why}"
                );
                None
            }
        }
    }

    /// `/etc/hosts` inside the namespace: `name address` lines.
    pub fn hosts(&self, entries: &[(&str, IpAddr)]) {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (name, ip) in entries {
            text.push_str(&format!("{ip} {name}\n"));
        }
        std::fs::write(format!("{dir}/hosts"), text).unwrap();
    }

    /// `args` run inside the namespace (as root), with no proxy settings in its environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
        ] {
            c.env_remove(var);
        }
        c
    }

    /// Runs `args` inside the namespace and panics unless it succeeds.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "`{}` in {} failed:\n{}{}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "link", "del", &self.host_link]);
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}
