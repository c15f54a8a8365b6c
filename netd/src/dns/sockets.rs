//! UDP and TCP sockets for DNS listeners, bound with `IP_FREEBIND` / `IPV6_FREEBIND`.
//!
//! A network's gateway address only exists once the CNI plugin has created the bridge (on the
//! first container), but netd starts listening when the network is created. Free-binding lets
//! the socket own `gateway:53` before the address is configured; the kernel delivers packets
//! to it as soon as the address appears. Only socket creation lives here.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};

/// Pending TCP connections queued by the kernel.
const TCP_BACKLOG: libc::c_int = 1024;
/// Tries at finding a port free for both UDP and TCP when port 0 is asked.
const SAME_PORT_ATTEMPTS: usize = 16;

/// A UDP socket and a listening TCP socket on `addr`, both free-bound. With port 0 the TCP
/// socket takes the port the kernel picked for UDP.
pub fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let attempts = if addr.port() == 0 {
        SAME_PORT_ATTEMPTS
    } else {
        1
    };
    let mut last = None;
    for _ in 0..attempts {
        match bind_pair_once(addr) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| io::ErrorKind::AddrInUse.into()))
}

fn bind_pair_once(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let udp = bind(addr, libc::SOCK_DGRAM)?;
    let udp = UdpSocket::from(udp);
    let port = udp.local_addr()?.port();
    let tcp = bind(SocketAddr::new(addr.ip(), port), libc::SOCK_STREAM)?;
    // SAFETY: `tcp` is a valid, bound stream socket owned by this function.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&tcp), TCP_BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((udp, TcpListener::from(tcp)))
}

/// A socket of `kind` bound to `addr` with FREEBIND (and `SO_REUSEADDR` for TCP, so a restart
/// does not wait for TIME_WAIT; `IPV6_V6ONLY` for IPv6 so `[::]` never grabs IPv4).
fn bind(addr: SocketAddr, kind: libc::c_int) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let raw = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns; OwnedFd closes it on every path.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if addr.is_ipv4() {
        set_option(&fd, libc::IPPROTO_IP, libc::IP_FREEBIND)?;
    } else {
        set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND)?;
        set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?;
    }
    if kind == libc::SOCK_STREAM {
        set_option(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    }
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a sockaddr_in/sockaddr_in6 of `len` bytes matching `family`.
    let rc = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            std::ptr::from_ref(&storage).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sets an integer socket option to 1.
fn set_option(fd: &OwnedFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `fd` is a valid socket; the option value is a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            level,
            name,
            std::ptr::from_ref(&one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `addr` as a C socket address.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin = unsafe { &mut *std::ptr::from_mut(&mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &mut *std::ptr::from_mut(&mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_an_address_this_host_does_not_have() {
        // TEST-NET-2 is never configured locally; without FREEBIND this is EADDRNOTAVAIL.
        let (udp, tcp) = bind_pair("198.51.100.77:0".parse().unwrap()).expect("free-bind");
        let port = udp.local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert_eq!(tcp.local_addr().unwrap().port(), port);
        assert_eq!(udp.local_addr().unwrap().ip().to_string(), "198.51.100.77");
    }

    #[test]
    fn loopback_pair_shares_the_port() {
        let (udp, tcp) = bind_pair("127.0.0.1:0".parse().unwrap()).expect("bind");
        assert_eq!(udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    }
}
