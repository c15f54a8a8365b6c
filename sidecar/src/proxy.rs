//! The two transparent listeners and what happens to an accepted connection:
//! original destination → target (service `VIP:port`, plain address, or by authority when
//! not redirected) → protocol (see [`plan`]: `http`/`grpc` hints skip detection, `tcp` — the
//! default — and no hint are detected, server-first ports are opaque) → HTTP server stack or
//! opaque TCP forwarding.
//!
//! Outbound connections to a service's `VIP:port` are balanced over its endpoints; to any
//! other address they pass through to it. Inbound connections go to the application on
//! `127.0.0.1:<original port>` (`[::1]` for IPv6), counted under the service whose endpoint
//! the original destination is, when it is one. One task per connection, tracked so that
//! a drain can wait for them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use netd_config::netd::Protocol;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_util::task::TaskTracker;

use crate::detect::{self, Detected, PrefixedIo, SERVER_FIRST_PORTS};
use crate::drain::Drain;
use crate::http::route::{resolve_addr, Dest, Target};
use crate::http::{self, ConnContext, HttpShared};
use crate::local::{self, BoundSocket, HeaderError, LinkHeader, LinkStats};
use crate::metrics::Direction;
use crate::pool::Version;
use crate::sockopt::{self, ConnectOptions};
use crate::stream::Stream;

/// Everything a listener's connections share.
#[derive(Debug, Clone)]
pub struct ProxyShared {
    /// Outbound or inbound.
    pub direction: Direction,
    /// The HTTP stack's shared state.
    pub http: HttpShared,
    /// How upstream sockets are opened.
    pub connect: ConnectOptions,
    /// Longest wait for a client's first bytes before treating it as opaque TCP.
    pub detect_timeout: Duration,
    /// Opaque connections with no byte either way for this long are closed.
    pub tcp_idle_timeout: Duration,
    /// Where connections that were not redirected go when their requests name no service
    /// (outbound) or always (inbound).
    pub default_target: Option<SocketAddr>,
}

/// Accepts connections until `drain` fires; each is served on its own task in `tracker`.
pub async fn run(
    listener: TcpListener,
    shared: Arc<ProxyShared>,
    drain: Drain,
    tracker: TaskTracker,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "listener has no local address");
            return;
        }
    };
    let serve = |(stream, peer): (TcpStream, SocketAddr), drain: Drain| {
        let shared = shared.clone();
        tracker.spawn(async move {
            let _ = stream.set_nodelay(true);
            let orig = sockopt::original_dst(&stream);
            let io = PrefixedIo::new(Bytes::new(), Stream::Tcp(stream));
            handle(io, peer, orig, &shared, drain).await
        });
    };
    accept_until_drained(&local, || listener.accept(), serve, drain).await;
}

/// The accept loop of every listener: each accepted connection goes to `serve` (with a drain
/// handle of its own) until `drain` fires; a failed accept (EMFILE and friends) backs off
/// briefly instead of spinning.
async fn accept_until_drained<T, Fut>(
    what: &(dyn std::fmt::Display + Sync),
    mut accept: impl FnMut() -> Fut,
    mut serve: impl FnMut(T, Drain),
    mut drain: Drain,
) where
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    loop {
        tokio::select! {
            accepted = accept() => match accepted {
                Ok(conn) => serve(conn, drain.clone()),
                Err(e) => {
                    tracing::warn!(listener = %what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = drain.signaled() => break,
        }
    }
}

/// What the inbound side of node-local links needs to know.
#[derive(Debug, Clone)]
pub struct LinkSide {
    /// This container's addresses: a link's header must name one of them.
    pub own: Arc<[IpAddr]>,
    /// Ports that never take a link (the application serves them itself, as sent): refused
    /// from a sender that did not know.
    pub exclude_ports: Arc<[u16]>,
    /// The inbound TCP listener's address: a link to it was not redirected (as a TCP
    /// connection made to the listener itself).
    pub listener: Option<SocketAddr>,
    /// Counters.
    pub stats: Arc<LinkStats>,
}

/// Accepts node-local links (see [`crate::local`]) until `drain` fires: each link's header
/// is read, checked, and the link then served as a TCP connection to the destination it
/// names would be.
pub async fn run_links(
    socket: BoundSocket,
    side: LinkSide,
    shared: Arc<ProxyShared>,
    drain: Drain,
    tracker: TaskTracker,
) {
    let serve = |(mut stream, _): (UnixStream, _), drain: Drain| {
        let shared = shared.clone();
        let side = side.clone();
        tracker.spawn(async move {
            let header = local::read_header(&mut stream, shared.detect_timeout).await;
            let Some((header, rest)) = check_link(header, &side) else {
                return;
            };
            let orig = (!side.is_listener(header.dest)).then_some(header.dest);
            let io = PrefixedIo::new(rest, Stream::Unix(stream));
            handle(io, header.source, orig, &shared, drain).await
        });
    };
    let path = socket.path.display();
    accept_until_drained(&path, || socket.listener.accept(), serve, drain).await;
}

impl LinkSide {
    fn is_listener(&self, dest: SocketAddr) -> bool {
        self.listener.is_some_and(|l| {
            l.port() == dest.port() && (l.ip().is_unspecified() || l.ip() == dest.ip())
        })
    }
}

/// A link's header, if it is whole and names this container; counted either way.
fn check_link(
    header: Result<(LinkHeader, Bytes), HeaderError>,
    side: &LinkSide,
) -> Option<(LinkHeader, Bytes)> {
    let refused = |why: &dyn std::fmt::Display| {
        side.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %why, "local link refused");
        None
    };
    match header {
        Err(e) => refused(&e),
        Ok((h, _)) if !side.own.contains(&h.dest.ip()) => refused(&format_args!(
            "destination {} is not this container's",
            h.dest
        )),
        Ok((h, _)) if side.exclude_ports.contains(&h.dest.port()) => refused(&format_args!(
            "port {} is excluded from the mesh's inbound side",
            h.dest.port()
        )),
        Ok(ok) => {
            side.stats.accepted.fetch_add(1, Ordering::Relaxed);
            Some(ok)
        }
    }
}

/// Where a connection goes and the protocol hint of its port, before any byte is read.
fn target(
    orig: Option<SocketAddr>,
    shared: &ProxyShared,
) -> Option<(Target, Option<Protocol>, Option<u16>)> {
    match shared.direction {
        Direction::Outbound => Some(match orig {
            Some(addr) => match shared.http.store.load().by_vip(addr) {
                Some(t) => (
                    Target::Service(t.service.clone()),
                    Some(t.protocol),
                    Some(addr.port()),
                ),
                None => (Target::Direct(addr), None, Some(addr.port())),
            },
            None => (
                Target::ByAuthority {
                    fallback: shared.default_target,
                },
                None,
                None,
            ),
        }),
        Direction::Inbound => match orig {
            Some(addr) => {
                let app: IpAddr = match addr {
                    SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                };
                let app = SocketAddr::new(app, addr.port());
                let target = match shared.http.store.load().endpoint_service(addr) {
                    Some(service) => Target::Local { app, service },
                    None => Target::Direct(app),
                };
                Some((target, None, Some(addr.port())))
            }
            None => shared
                .default_target
                .map(|a| (Target::Direct(a), None, Some(a.port()))),
        },
    }
}

/// How a connection's protocol is decided, from its port's hint and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// `grpc`: HTTP/2 prior knowledge, nothing read.
    Http2,
    /// `http`: known HTTP; the first bytes only tell HTTP/1 from HTTP/2 (no opaque fallback,
    /// no detection timeout: the client may take its time).
    Http,
    /// Server-first port: opaque at once (the client would wait for the server forever).
    Opaque,
    /// Detection with `--detect-timeout`.
    Detect,
}

/// The protocol-hint rule: `http` and `grpc` skip detection; `tcp` — the default of every
/// service port, so it says nothing about what was meant — is detected like a port without
/// a hint, so that a default service still gets per-request HTTP balancing; server-first
/// ports ([`SERVER_FIRST_PORTS`]) without an HTTP hint are opaque at once.
fn plan(hint: Option<Protocol>, port: Option<u16>) -> Plan {
    match hint {
        Some(Protocol::Grpc) => Plan::Http2,
        Some(Protocol::Http) => Plan::Http,
        Some(Protocol::Tcp) | None if port.is_some_and(|p| SERVER_FIRST_PORTS.contains(&p)) => {
            Plan::Opaque
        }
        Some(Protocol::Tcp) | None => Plan::Detect,
    }
}

/// Serves one accepted connection (`io` replays what was read before, e.g. after a link's
/// header) whose original destination was `orig`.
async fn handle(
    mut io: PrefixedIo<Stream>,
    client: SocketAddr,
    orig: Option<SocketAddr>,
    shared: &ProxyShared,
    drain: Drain,
) {
    let Some((target, hint, port)) = target(orig, shared) else {
        tracing::debug!(%client, "not redirected and no default target: closing");
        return;
    };
    let (detected, read) = match plan(hint, port) {
        Plan::Http2 => (Detected::Http2, Bytes::new()),
        Plan::Opaque => (Detected::Opaque, Bytes::new()),
        Plan::Http => {
            match http_port_start(&mut io, shared.http.limits.header_read_timeout).await {
                Some(started) => started,
                None => return,
            }
        }
        Plan::Detect => match detect::detect(&mut io, shared.detect_timeout).await {
            Ok(r) => r,
            Err(_) => return,
        },
    };
    shared
        .http
        .metrics
        .detected(shared.direction, detected.label());
    let io = io.prepend(read);
    let version = match detected {
        Detected::Http1 => Version::Http1,
        Detected::Http2 => Version::Http2,
        Detected::Tls { sni } => return opaque(io, client, target, sni, "tls", shared).await,
        Detected::Opaque => return opaque(io, client, target, None, "tcp", shared).await,
    };
    let ctx = ConnContext {
        direction: shared.direction,
        client,
        target,
        version,
    };
    http::serve(io, ctx, &shared.http, drain).await;
}

/// The first bytes on an `http`-hinted port, read for at most the header-read timeout: HTTP/2
/// (prior knowledge) or HTTP/1 — anything else is HTTP/1 too, for hyper to answer with a 400.
/// `None` when not a byte came in time, the client closed at once, or the read failed: the
/// wait for a request head is over then, and handing the connection to the HTTP server would
/// start the same wait again (a silent client held for twice the timeout).
async fn http_port_start<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    header_read_timeout: Duration,
) -> Option<(Detected, bytes::Bytes)> {
    match detect::detect(io, header_read_timeout).await {
        Ok((Detected::Http2, p)) => Some((Detected::Http2, p)),
        Ok((_, p)) if p.is_empty() => None,
        Ok((_, p)) => Some((Detected::Http1, p)),
        Err(_) => None,
    }
}

async fn opaque(
    io: PrefixedIo<Stream>,
    client: SocketAddr,
    target: Target,
    sni: Option<String>,
    protocol: &'static str,
    shared: &ProxyShared,
) {
    let directory = &shared.http.directory;
    let dest = match target {
        Target::Service(key) => directory.service(&key).map(Dest::Service),
        Target::Direct(addr) => Some(Dest::Direct(directory.direct(addr))),
        Target::Local { app, service } => Some(Dest::Direct(directory.local(app, service))),
        Target::ByAuthority { fallback } => {
            let named = sni
                .as_deref()
                .and_then(|name| shared.http.store.load().by_authority(name))
                .and_then(|key| directory.service(&key));
            match (named, fallback) {
                (Some(b), _) => Some(Dest::Service(b)),
                (None, Some(addr)) => Some(resolve_addr(&shared.http.store, directory, addr)),
                (None, None) => None,
            }
        }
    };
    let Some(dest) = dest else {
        tracing::debug!(%client, ?sni, "no destination for opaque connection: closing");
        return;
    };
    let service = match &dest {
        Dest::Service(b) => b.key().to_string(),
        Dest::Direct(ep) => ep.service().unwrap_or("-").to_string(),
    };
    let metrics = shared
        .http
        .metrics
        .tcp(shared.direction, &service, protocol);
    crate::tcp::forward(
        io,
        client,
        dest,
        shared.connect,
        shared.tcp_idle_timeout,
        metrics,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn an_http_port_waits_for_the_first_bytes_once() {
        let wait = Duration::from_millis(50);
        // Silent past the timeout, or closed at once: over, not handed to the HTTP server.
        let (mut silent, _client) = tokio::io::duplex(64);
        assert!(http_port_start(&mut silent, wait).await.is_none());
        let (mut closed, client) = tokio::io::duplex(64);
        drop(client);
        assert!(http_port_start(&mut closed, wait).await.is_none());
        // HTTP/1, HTTP/2 prior knowledge, and bytes that are neither (hyper refuses them).
        for (sent, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], Detected::Http1),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Detected::Http2),
            (b"\x00\x01garbage", Detected::Http1),
        ] {
            let (mut server, mut client) = tokio::io::duplex(64);
            client.write_all(sent).await.unwrap();
            let (got, prefix) = http_port_start(&mut server, wait).await.unwrap();
            assert_eq!(got, want, "{sent:?}");
            assert_eq!(&prefix[..], sent);
        }
    }

    #[test]
    fn links_are_taken_only_for_this_containers_addresses_and_ports_left_to_the_mesh() {
        let side = LinkSide {
            own: Arc::from(vec!["10.89.0.5".parse::<IpAddr>().unwrap()]),
            exclude_ports: Arc::from(vec![9100u16]),
            listener: Some("0.0.0.0:15006".parse().unwrap()),
            stats: Arc::new(LinkStats::default()),
        };
        let link = |dest: &str| {
            let h = LinkHeader {
                source: "10.89.0.2:0".parse().unwrap(),
                dest: dest.parse().unwrap(),
            };
            check_link(Ok((h, Bytes::new())), &side).is_some()
        };
        assert!(link("10.89.0.5:8080"));
        assert!(!link("10.89.0.6:8080"), "another container's address");
        assert!(!link("10.89.0.5:9100"), "an excluded port");
        assert!(check_link(Err(HeaderError::Truncated), &side).is_none());
        assert_eq!(side.stats.accepted.load(Ordering::Relaxed), 1);
        assert_eq!(side.stats.refused.load(Ordering::Relaxed), 3);
        // The inbound listener itself (any address, its port): not redirected.
        assert!(side.is_listener("10.89.0.5:15006".parse().unwrap()));
        assert!(!side.is_listener("10.89.0.5:8080".parse().unwrap()));
    }

    #[test]
    fn hints_http_and_grpc_skip_detection_tcp_is_detected() {
        assert_eq!(plan(Some(Protocol::Grpc), Some(50051)), Plan::Http2);
        assert_eq!(plan(Some(Protocol::Http), Some(80)), Plan::Http);
        // An explicit HTTP hint wins over the port's reputation.
        assert_eq!(plan(Some(Protocol::Http), Some(5432)), Plan::Http);
        // The default hint says nothing: detected, so HTTP on it is balanced per request.
        assert_eq!(plan(Some(Protocol::Tcp), Some(80)), Plan::Detect);
        assert_eq!(plan(None, Some(8080)), Plan::Detect);
        assert_eq!(plan(None, None), Plan::Detect);
        assert_eq!(plan(Some(Protocol::Tcp), Some(5432)), Plan::Opaque);
        assert_eq!(plan(None, Some(6379)), Plan::Opaque);
    }
}
