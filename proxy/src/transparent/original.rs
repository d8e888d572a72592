//! The original destination of a redirected connection, as the kernel's connection tracking
//! remembers it (`SO_ORIGINAL_DST` for IPv4, `IP6T_SO_ORIGINAL_DST` for IPv6).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt};

/// The address `socket`'s client dialed before the kernel redirected it here. `local` is the
/// socket's own address: an IPv4 client on a dual-stack (`[::]`) listener arrives as an
/// IPv4-mapped address and is looked up in the IPv4 table. A connection that was not
/// redirected reports the listener's own address (see [`is_loop`]).
pub fn original_destination(socket: &impl AsFd, local: SocketAddr) -> std::io::Result<SocketAddr> {
    if local.ip().to_canonical().is_ipv4() {
        let sa = getsockopt(socket, sockopt::OriginalDst)?;
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        )))
    } else {
        let sa = getsockopt(socket, sockopt::Ip6tOriginalDst)?;
        Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(sa.sin6_addr.s6_addr),
            u16::from_be(sa.sin6_port),
            0,
            0,
        )))
    }
}

/// Whether a connection's original destination is the listener itself (`local`): it was not
/// redirected but dialed directly, or a rule redirected the proxy's own traffic back to it.
/// IPv4-mapped addresses compare as the IPv4 address they carry.
pub fn is_loop(original: SocketAddr, local: SocketAddr) -> bool {
    original.port() == local.port() && original.ip().to_canonical() == local.ip().to_canonical()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_to_the_listener_itself_is_a_loop() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(is_loop(sa("127.0.0.1:15001"), sa("127.0.0.1:15001")));
        assert!(is_loop(
            sa("127.0.0.1:15001"),
            sa("[::ffff:127.0.0.1]:15001")
        ));
        assert!(!is_loop(sa("127.0.0.1:80"), sa("127.0.0.1:15001")));
        assert!(!is_loop(sa("10.0.0.1:15001"), sa("127.0.0.1:15001")));
    }

    #[test]
    fn an_unredirected_connection_reports_the_address_it_reached() {
        // Without a NAT rule, connection tracking's original tuple is the connection itself;
        // without connection tracking at all (no nat table loaded), the lookup fails. Either
        // way nothing but the listener's own address (a loop) can come back.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        match original_destination(&accepted, addr) {
            Ok(original) => assert!(is_loop(original, addr), "{original}"),
            Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
        }
    }
}
