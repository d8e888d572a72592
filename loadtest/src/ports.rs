//! Loopback ports held by a bound socket that never listens, for children that must be told
//! their port before they start (`redis-server`) and for "nothing listens here" addresses.
//!
//! Binding a port, reading its number and closing the socket races: by the time a child binds
//! the number, anything on the machine may have taken it. A socket that stays bound without
//! listening keeps the port out of the kernel's hands for as long as it is held (port 0 is never
//! resolved to it, nor is it used as a source port), and connections to it are refused.

use std::net::SocketAddr;

use tokio::net::TcpSocket;

/// A loopback port held (bound, not listening) until this value is dropped.
#[derive(Debug)]
pub struct HeldPort {
    /// The port.
    pub port: u16,
    _socket: TcpSocket,
}

impl HeldPort {
    /// A port nothing listens on: connections are refused, and nobody else can bind it.
    pub fn closed() -> std::io::Result<Self> {
        Self::hold(false)
    }

    /// A port held for a child that binds it itself with `SO_REUSEADDR`, as `redis-server`
    /// does: Linux lets it bind beside this non-listening socket (which sets `SO_REUSEADDR` too),
    /// and while the child is down, even between two runs of it, the port is still no one
    /// else's.
    pub fn for_child() -> std::io::Result<Self> {
        Self::hold(true)
    }

    fn hold(reuse: bool) -> std::io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(reuse)?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let port = socket.local_addr()?.port();
        Ok(Self {
            port,
            _socket: socket,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_held_port_refuses_connections_and_is_nobody_elses() {
        let closed = HeldPort::closed().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], closed.port));
        assert_eq!(
            std::net::TcpStream::connect(addr).unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused
        );
        assert!(std::net::TcpListener::bind(addr).is_err());

        // A child binding with SO_REUSEADDR gets the port while it is held for it.
        let held = HeldPort::for_child().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], held.port));
        let child = TcpSocket::new_v4().unwrap();
        child.set_reuseaddr(true).unwrap();
        child.bind(addr).unwrap();
        let listening = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { child.listen(1).unwrap().local_addr().unwrap() });
        assert_eq!(listening, addr);
    }
}
