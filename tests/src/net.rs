//! Traffic between namespaces, to prove connectivity rather than configuration.
//!
//! Servers bind inside a namespace (the socket stays there) and answer every TCP connection or
//! UDP datagram with `<banner> <peer address>\n`, so a test learns both *who* answered (the
//! banner) and *as whom* the client arrived (the peer address: NAT shows up here). Clients
//! connect from inside a namespace with a timeout. `ping` runs `ping -c1 -W1` inside a
//! namespace. Only addresses inside test namespaces (and their loopback) are ever used.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ns::Ns;
use crate::poll;

/// How long a server keeps serving at most (a test that takes longer has failed anyway).
const SERVER_LIFETIME: Duration = Duration::from_secs(300);

/// Timeout of one client attempt.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a server answered: its banner, and the client address it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The server's banner (which server answered).
    pub banner: String,
    /// The source address of the request as the server saw it.
    pub peer: SocketAddr,
}

impl Reply {
    fn parse(s: &str) -> Option<Reply> {
        let (banner, peer) = s.trim().split_once(' ')?;
        let peer: SocketAddr = peer.parse().ok()?;
        Some(Reply {
            banner: banner.to_string(),
            // Dual-stack listeners see IPv4 clients as `::ffff:a.b.c.d`.
            peer: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
        })
    }
}

/// A TCP or UDP server inside a namespace, stopped (and joined) on drop.
#[derive(Debug)]
pub struct Server {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves TCP on `bind` inside `ns`: each connection gets `<banner> <peer>\n` and is closed.
    pub fn tcp(ns: &Ns, bind: SocketAddr, banner: &str) -> Server {
        let listener = ns
            .run(|| TcpListener::bind(bind))
            .unwrap_or_else(|e| panic!("bind tcp {bind} in {}: {e}", ns.name()));
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let local = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, banner) = (stop.clone(), banner.to_string());
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            while !flag.load(Ordering::Relaxed) && start.elapsed() < SERVER_LIFETIME {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_write_timeout(Some(CLIENT_TIMEOUT));
                        let _ = s.write_all(format!("{banner} {peer}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            local,
            stop,
            handle: Some(handle),
        }
    }

    /// Serves UDP on `bind` inside `ns`: each datagram is answered with `<banner> <peer>\n`.
    pub fn udp(ns: &Ns, bind: SocketAddr, banner: &str) -> Server {
        let sock = ns
            .run(|| UdpSocket::bind(bind))
            .unwrap_or_else(|e| panic!("bind udp {bind} in {}: {e}", ns.name()));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("udp timeout");
        let local = sock.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, banner) = (stop.clone(), banner.to_string());
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut buf = [0u8; 1500];
            while !flag.load(Ordering::Relaxed) && start.elapsed() < SERVER_LIFETIME {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(format!("{banner} {peer}\n").as_bytes(), peer);
                }
            }
        });
        Server {
            local,
            stop,
            handle: Some(handle),
        }
    }

    /// The bound address.
    pub fn local(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One TCP request from inside `ns` to `to`: the server's reply, or the error.
pub fn tcp_once(ns: &Ns, to: SocketAddr) -> std::io::Result<Reply> {
    let mut stream = ns.run(|| TcpStream::connect_timeout(&to, CLIENT_TIMEOUT))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut s = String::new();
    stream.read_to_string(&mut s)?;
    Reply::parse(&s).ok_or_else(|| std::io::Error::other(format!("unexpected reply {s:?}")))
}

/// One UDP request from inside `ns` to `to` (from `from`, when given: a specific source
/// address).
pub fn udp_once(ns: &Ns, to: SocketAddr, from: Option<SocketAddr>) -> std::io::Result<Reply> {
    let bind: SocketAddr = from.unwrap_or_else(|| {
        if to.is_ipv4() {
            "0.0.0.0:0".parse().expect("addr")
        } else {
            "[::]:0".parse().expect("addr")
        }
    });
    let sock = ns.run(|| UdpSocket::bind(bind))?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    // UDP may lose the first datagram while neighbours resolve: a few bounded attempts.
    let mut last = std::io::Error::other("no attempt");
    for _ in 0..4 {
        sock.send_to(b"hello\n", to)?;
        let mut buf = [0u8; 256];
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                let s = String::from_utf8_lossy(&buf[..n]).into_owned();
                return Reply::parse(&s)
                    .ok_or_else(|| std::io::Error::other(format!("unexpected reply {s:?}")));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A TCP request that is retried a few times (neighbour resolution, bridge ports entering
/// forwarding state). Panics with the last error when every attempt fails.
#[track_caller]
pub fn tcp(ns: &Ns, to: SocketAddr) -> Reply {
    let mut last = None;
    let got = poll::until(
        10,
        Duration::from_millis(200),
        Duration::from_secs(20),
        || match tcp_once(ns, to) {
            Ok(r) => Some(r),
            Err(e) => {
                last = Some(e);
                None
            }
        },
    );
    got.unwrap_or_else(|| panic!("tcp {to} from {} failed: {last:?}", ns.name()))
}

/// Like [`tcp`] for UDP.
#[track_caller]
pub fn udp(ns: &Ns, to: SocketAddr) -> Reply {
    let mut last = None;
    let got = poll::until(
        5,
        Duration::from_millis(200),
        Duration::from_secs(20),
        || match udp_once(ns, to, None) {
            Ok(r) => Some(r),
            Err(e) => {
                last = Some(e);
                None
            }
        },
    );
    got.unwrap_or_else(|| panic!("udp {to} from {} failed: {last:?}", ns.name()))
}

/// Asserts that nothing answers TCP on `to` from `ns` (one attempt; refused or timed out).
#[track_caller]
pub fn assert_no_tcp(ns: &Ns, to: SocketAddr) {
    if let Ok(r) = tcp_once(ns, to) {
        panic!("tcp {to} from {} unexpectedly answered: {r:?}", ns.name());
    }
}

/// Whether `ping -c1 -W1 <addr>` from `ns` gets an answer, within 5 attempts.
pub fn ping(ns: &Ns, addr: std::net::IpAddr) -> bool {
    let a = addr.to_string();
    poll::until(
        5,
        Duration::from_millis(100),
        Duration::from_secs(10),
        || {
            ns.try_exec(&["ping", "-n", "-c1", "-W1", &a])
                .status
                .success()
                .then_some(())
        },
    )
    .is_some()
}

/// One `ping -c1 -W1 <addr>` from `ns` (for asserting that something is *not* reachable).
pub fn ping_once(ns: &Ns, addr: std::net::IpAddr) -> bool {
    ns.try_exec(&["ping", "-n", "-c1", "-W1", &addr.to_string()])
        .status
        .success()
}

/// An HTTP/1.0 `GET path` from inside `ns`; returns the whole response (headers and body).
pub fn http_get(ns: &Ns, to: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = ns.run(|| TcpStream::connect_timeout(&to, CLIENT_TIMEOUT))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())?;
    let mut s = String::new();
    stream.read_to_string(&mut s)?;
    Ok(s)
}

/// `SocketAddr` from an address and a port.
pub fn sa(ip: impl Into<std::net::IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}
