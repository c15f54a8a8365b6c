//! The socket options of transparent proxying: recovering the original destination of a
//! redirected connection and marking every upstream socket the sidecar opens (`SO_MARK`) so
//! the interception rules let it through.
//!
//! `SO_ORIGINAL_DST` itself has one implementation in the project,
//! [`netd_cni::nat::intercept::original_dst`], next to the rules that redirect; this module
//! only decides what a result means for a listener. Marks are set through `socket2` (the same
//! call the DNS forwarder uses), so no `unsafe` lives here.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

use crate::local::LocalLinks;
use crate::stream::Stream;

/// The destination an accepted connection had before nf_tables redirected it, or `None`
/// when it was not redirected (no conntrack entry, or the original destination is the
/// connection's own local address, as for a client that connected to the listener
/// directly).
///
/// Addresses are compared and returned in canonical form: an IPv4 connection accepted by a
/// dual-stack listener has a local address `::ffff:a.b.c.d`, its original destination is
/// IPv4.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let orig = canonical(netd_cni::nat::intercept::original_dst(stream).ok()?);
    let local = canonical(stream.local_addr().ok()?);
    (orig != local).then_some(orig)
}

/// Sets `SO_MARK` on a socket (needs `CAP_NET_ADMIN`).
pub fn set_mark(socket: &impl AsFd, mark: u32) -> io::Result<()> {
    socket2::SockRef::from(socket).set_mark(mark)
}

/// How the sidecar opens upstream connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// `SO_MARK` put on every upstream socket; `None` leaves sockets unmarked.
    pub mark: Option<u32>,
    /// Longest time a connect may take.
    pub timeout: Duration,
    /// Node-local links tried before TCP (outbound only; set once at startup and kept for
    /// the life of the process).
    pub local: Option<&'static LocalLinks>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            mark: None,
            timeout: Duration::from_secs(3),
            local: None,
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

/// Opens a connection to `addr`: a node-local link when `opts` has them and the sidecar
/// serving `addr` listens on one, otherwise TCP ([`connect_tcp`]).
pub async fn connect(addr: SocketAddr, opts: ConnectOptions) -> Result<Stream, ConnectError> {
    if let Some(links) = opts.local {
        if let Some(link) = links.connect(addr, opts.timeout).await {
            return Ok(Stream::Unix(link));
        }
    }
    connect_tcp(addr, opts).await.map(Stream::Tcp)
}

/// Opens a TCP connection to `addr` with the sidecar's mark, `TCP_NODELAY` set.
pub async fn connect_tcp(
    addr: SocketAddr,
    opts: ConnectOptions,
) -> Result<TcpStream, ConnectError> {
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
        let client = connect_tcp(local, ConnectOptions::default()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&server), None);
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
