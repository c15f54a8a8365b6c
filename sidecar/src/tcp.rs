//! Opaque TCP forwarding (also TLS passthrough): one endpoint per connection, chosen by the
//! service's balancer (`hash:source` hashes the client address; other hash keys fall back to
//! random), bytes copied both ways with half-closes propagated, byte counts recorded when the
//! connection ends. A failed connect is retried once on another pick. A connection on which
//! no byte moved either way for the idle timeout is closed (both sides), so peers that vanished
//! without a FIN do not hold a task and two sockets forever; a timeout of 0 means none.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::balance::{hash_bytes, Endpoint, HashKey};
use crate::http::route::Dest;
use crate::metrics::TcpMetrics;
use crate::sockopt::ConnectOptions;

/// Default idle timeout of opaque connections (as Envoy's TCP proxy).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Attempts to connect to a service's endpoints per connection.
const CONNECT_ATTEMPTS: usize = 2;

fn pick(dest: &Dest, client: SocketAddr) -> Option<Arc<Endpoint>> {
    match dest {
        Dest::Direct(ep) => Some(ep.clone()),
        Dest::Service(b) => {
            let key = matches!(b.hash_key(), Some(HashKey::Source)).then(|| match client.ip() {
                std::net::IpAddr::V4(ip) => hash_bytes(&ip.octets()),
                std::net::IpAddr::V6(ip) => hash_bytes(&ip.octets()),
            });
            b.pick(key)
        }
    }
}

/// Forwards `client` (whose first bytes, if any were read, are replayed by the caller's
/// `PrefixedIo`) to an endpoint of `dest` until both sides are done, or nothing moved for
/// `idle_timeout`.
pub async fn forward<I>(
    client: I,
    client_addr: SocketAddr,
    dest: Dest,
    connect: ConnectOptions,
    idle_timeout: Duration,
    metrics: Arc<TcpMetrics>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let _open = metrics.open();
    let mut upstream = None;
    for _ in 0..CONNECT_ATTEMPTS {
        let Some(ep) = pick(&dest, client_addr) else {
            tracing::debug!(client = %client_addr, "no endpoint for TCP connection");
            break;
        };
        let in_flight = ep.start();
        let started = Instant::now();
        match crate::sockopt::connect(ep.addr(), connect).await {
            Ok(stream) => {
                ep.observe(started.elapsed());
                upstream = Some((stream, in_flight));
                break;
            }
            Err(e) => {
                metrics.connect_failure();
                ep.observe(std::time::Duration::from_secs(1));
                tracing::debug!(client = %client_addr, error = %e, "TCP connect failed");
                if matches!(dest, Dest::Direct(_)) {
                    break;
                }
            }
        }
    }
    let Some((stream, _in_flight)) = upstream else {
        return;
    };
    let clock = Clock::start();
    let last = Arc::new(AtomicU64::new(0));
    // Bytes are counted as they move, so a connection closed idle (or failing) keeps its
    // counts: the client side's reads are what was sent, the upstream side's what came back.
    let mut client = Watched::new(client, last.clone(), clock);
    let mut stream = Watched::new(stream, last.clone(), clock);
    let copied = {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut stream);
        tokio::pin!(copy);
        let mut deadline = idle_timeout;
        loop {
            // `None`: no idle timeout (0, or too far to represent).
            let wake = (!idle_timeout.is_zero())
                .then(|| clock.at(deadline))
                .flatten();
            tokio::select! {
                done = &mut copy => break done.map(drop),
                _ = sleep_until(wake) => {
                    let active = Duration::from_millis(last.load(Ordering::Relaxed));
                    if active + idle_timeout <= clock.elapsed() {
                        tracing::debug!(client = %client_addr, ?idle_timeout, "idle TCP connection closed");
                        metrics.idle_closed();
                        break Ok(());
                    }
                    deadline = active + idle_timeout;
                }
            }
        }
    };
    metrics.sent.fetch_add(client.read, Ordering::Relaxed);
    metrics.received.fetch_add(stream.read, Ordering::Relaxed);
    if let Err(e) = copied {
        tracing::debug!(client = %client_addr, error = %e, "TCP connection ended with an error");
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Milliseconds since a connection's start (cheap to store in an atomic).
#[derive(Debug, Clone, Copy)]
struct Clock(tokio::time::Instant);

impl Clock {
    fn start() -> Self {
        Clock(tokio::time::Instant::now())
    }

    fn elapsed(self) -> Duration {
        self.0.elapsed()
    }

    fn at(self, since_start: Duration) -> Option<tokio::time::Instant> {
        self.0.checked_add(since_start)
    }
}

/// An I/O object that records when bytes last moved through it (in `last`, ms since the
/// connection's start), for the idle timeout, and counts the bytes read from it.
struct Watched<T> {
    io: T,
    last: Arc<AtomicU64>,
    clock: Clock,
    read: u64,
}

impl<T> Watched<T> {
    fn new(io: T, last: Arc<AtomicU64>, clock: Clock) -> Self {
        Self {
            io,
            last,
            clock,
            read: 0,
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read += n as u64;
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
