//! The socket options of transparent proxying: recovering the original destination of a
//! redirected connection (`SO_ORIGINAL_DST`, IPv4 and IPv6) and marking every upstream socket
//! the sidecar opens (`SO_MARK`) so the interception rules let it through.
//!
//! This module owns the `unsafe` `getsockopt`/`setsockopt` calls and nothing else: the rules
//! that redirect traffic live in `netd_cni::nat::intercept`.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// `SO_ORIGINAL_DST` from `<linux/netfilter_ipv4.h>`; the IPv6 variant
/// (`IP6T_SO_ORIGINAL_DST`) has the same value on `SOL_IPV6`.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// The destination a connection had before nf_tables redirected it to `local`, or `None`
/// when it was not redirected (no conntrack entry, or the original destination is the
/// listener itself, as for a client that connected to the listener directly).
pub fn original_dst(stream: &TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    let found = match local {
        SocketAddr::V4(_) => original_dst_v4(stream),
        SocketAddr::V6(_) => original_dst_v6(stream),
    };
    match found {
        Ok(addr) if addr != local => Some(addr),
        _ => None,
    }
}

fn original_dst_v4(stream: &TcpStream) -> io::Result<SocketAddr> {
    // SAFETY: all-zero bytes are a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: the fd is a live socket owned by `stream`; `sa` and `len` point at a buffer of
    // the size passed, which the kernel fills at most.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut sa as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
    Ok(SocketAddr::V4(SocketAddrV4::new(
        ip,
        u16::from_be(sa.sin_port),
    )))
}

fn original_dst_v6(stream: &TcpStream) -> io::Result<SocketAddr> {
    // SAFETY: all-zero bytes are a valid sockaddr_in6.
    let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: as in `original_dst_v4`, with a sockaddr_in6 buffer.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IPV6,
            SO_ORIGINAL_DST,
            (&mut sa as *mut libc::sockaddr_in6).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
    Ok(SocketAddr::V6(SocketAddrV6::new(
        ip,
        u16::from_be(sa.sin6_port),
        sa.sin6_flowinfo,
        sa.sin6_scope_id,
    )))
}

/// Sets `SO_MARK` on a socket (needs `CAP_NET_ADMIN`).
fn set_mark(fd: &impl AsRawFd, mark: u32) -> io::Result<()> {
    // SAFETY: the fd is a live socket; the option value is a u32 of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How the sidecar opens upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// `SO_MARK` put on every upstream socket; `None` leaves sockets unmarked.
    pub mark: Option<u32>,
    /// Longest time a connect may take.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            mark: None,
            timeout: Duration::from_secs(3),
        }
    }
}

/// Why an upstream connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Creating or marking the socket failed (marking needs `CAP_NET_ADMIN`).
    #[error("cannot prepare a socket to {addr} (mark {mark:?}): {source}")]
    Socket {
        /// Destination.
        addr: SocketAddr,
        /// The mark asked for.
        mark: Option<u32>,
        /// Cause.
        source: io::Error,
    },
    /// The connect failed (refused, unreachable, ...).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Destination.
        addr: SocketAddr,
        /// Cause.
        source: io::Error,
    },
    /// The connect did not finish in time.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    Timeout {
        /// Destination.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
}

/// Opens a TCP connection to `addr` with the sidecar's mark, `TCP_NODELAY` set.
pub async fn connect(addr: SocketAddr, opts: ConnectOptions) -> Result<TcpStream, ConnectError> {
    let socket_err = |source| ConnectError::Socket {
        addr,
        mark: opts.mark,
        source,
    };
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(socket_err)?;
    if let Some(mark) = opts.mark {
        set_mark(&socket, mark).map_err(socket_err)?;
    }
    socket.set_nodelay(true).map_err(socket_err)?;
    match tokio::time::timeout(opts.timeout, socket.connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(ConnectError::Connect { addr, source }),
        Err(_) => Err(ConnectError::Timeout {
            addr,
            timeout: opts.timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_connection_has_no_original_dst() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let client = connect(local, ConnectOptions::default()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&server, local), None);
        drop(client);
    }

    #[tokio::test]
    async fn connect_refused_names_the_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = connect(addr, ConnectOptions::default()).await.unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
