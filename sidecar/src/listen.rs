//! Binding the transparent listeners, with the IPv6 companions that interception needs.
//!
//! nf_tables `redirect` sends an IPv4 connection to `127.0.0.1:<port>` (outbound) or to the
//! incoming interface's address (inbound), and an IPv6 one to `[::1]:<port>` or to the
//! interface's IPv6 address. So, when the namespace has IPv6 (its loopback has `::1`):
//! - a loopback IPv4 listener (`127.0.0.1:P`, outbound and DNS) gets a companion on `[::1]:P`;
//! - an all-addresses IPv4 listener (`0.0.0.0:P`, inbound) is bound dual-stack as `[::]:P`
//!   (IPv4 connections arrive as `::ffff:a.b.c.d`, see [`crate::sockopt::original_dst`]).
//!
//! Without IPv6 the IPv4 address alone is bound. Port 0 (tests) gets no companion: the two
//! ports would differ and no rule would point at the second one. Any other address is bound
//! as given.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpListener;

/// Accept backlog of the listeners bound here.
const BACKLOG: i32 = 1024;

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    /// Which listener.
    pub what: &'static str,
    /// Address asked for.
    pub addr: SocketAddr,
    /// Cause.
    pub source: io::Error,
}

/// The IPv6 companion of a loopback IPv4 address (`127.0.0.1:P` → `[::1]:P`), if it has one.
pub fn loopback_companion(addr: SocketAddr) -> Option<SocketAddr> {
    (addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) && addr.port() != 0)
        .then(|| SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()))
}

/// Whether a bind failure means "this namespace has no IPv6" rather than a real problem.
fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT)
    )
}

fn bind_std(addr: SocketAddr, dual_stack: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(!dual_stack)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Binds the TCP listener(s) for `addr` (see the module documentation): the first one
/// returned is the address asked for (or its dual-stack form), then the companion if any.
pub fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<Vec<TcpListener>, BindError> {
    let err = |addr, source| BindError { what, addr, source };
    if addr.ip() == IpAddr::V4(Ipv4Addr::UNSPECIFIED) && addr.port() != 0 {
        let any6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), addr.port());
        return match bind_std(any6, true) {
            Ok(l) => Ok(vec![l]),
            Err(e) if no_ipv6(&e) => Ok(vec![bind_std(addr, false).map_err(|e| err(addr, e))?]),
            Err(e) => Err(err(any6, e)),
        };
    }
    let mut out = vec![bind_std(addr, false).map_err(|e| err(addr, e))?];
    if let Some(v6) = loopback_companion(addr) {
        match bind_std(v6, false) {
            Ok(l) => out.push(l),
            Err(e) if no_ipv6(&e) => tracing::debug!(%v6, "no IPv6 in this namespace"),
            Err(e) => return Err(err(v6, e)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companions_only_for_fixed_loopback_ports() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            loopback_companion(a("127.0.0.1:15001")),
            Some(a("[::1]:15001"))
        );
        assert_eq!(loopback_companion(a("127.0.0.1:0")), None);
        assert_eq!(loopback_companion(a("127.0.0.2:15001")), None);
        assert_eq!(loopback_companion(a("0.0.0.0:15006")), None);
    }

    #[tokio::test]
    async fn dual_stack_listener_accepts_both_families() {
        // A free port: bind an ephemeral one, release it, reuse its number.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ls = bind_tcp("inbound", SocketAddr::from(([0, 0, 0, 0], port))).unwrap();
        assert_eq!(ls.len(), 1);
        let c4 = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (_s4, peer) = ls[0].accept().await.unwrap();
        assert_eq!(peer.ip().to_canonical(), c4.local_addr().unwrap().ip());
        if ls[0].local_addr().unwrap().is_ipv6() {
            let _c6 = tokio::net::TcpStream::connect(("::1", port)).await.unwrap();
            let (_s6, peer) = ls[0].accept().await.unwrap();
            assert_eq!(peer.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
        }
    }
}
