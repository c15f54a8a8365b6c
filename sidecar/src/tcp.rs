//! Opaque TCP forwarding (also TLS passthrough): one endpoint per connection, chosen by the
//! service's balancer (`hash:source` hashes the client address; other hash keys fall back to
//! random), bytes copied both ways with half-closes propagated, byte counts recorded when the
//! connection ends. A failed connect is retried once on another pick.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::balance::{hash_bytes, Endpoint, HashKey};
use crate::http::route::Dest;
use crate::metrics::TcpMetrics;
use crate::sockopt::ConnectOptions;

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
/// `PrefixedIo`) to an endpoint of `dest` until both sides are done.
pub async fn forward<I>(
    mut client: I,
    client_addr: SocketAddr,
    dest: Dest,
    connect: ConnectOptions,
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
    let Some((mut stream, _in_flight)) = upstream else {
        return;
    };
    match tokio::io::copy_bidirectional(&mut client, &mut stream).await {
        Ok((sent, received)) => {
            metrics.sent.fetch_add(sent, Ordering::Relaxed);
            metrics.received.fetch_add(received, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::debug!(client = %client_addr, error = %e, "TCP connection ended with an error")
        }
    }
}
