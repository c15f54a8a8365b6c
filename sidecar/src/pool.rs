//! Upstream HTTP connections of one endpoint: idle HTTP/1.1 connections reused across
//! requests, and one shared HTTP/2 connection multiplexing every request.
//!
//! An HTTP/1.1 connection ([`h1::Conn`]) is taken off the idle list by one request, whose own
//! task drives the exchange on it (see [`crate::http::h1`]), and goes back when the response
//! body has been read to the end and the upstream keeps it open (see [`PoolReturn`]); one
//! whose response was dropped early is closed. Upgrades get a hyper connection of their own,
//! never pooled. A connection taken from the idle list that the upstream closed meanwhile is
//! dropped for the next one; a request that got no answer at all on a reused connection is
//! sent again on another when that is safe (nothing of it reached the upstream, or it is
//! idempotent and bodiless as far as it went), so an endpoint that closes idle connections
//! or shuts down gracefully costs no failed request.
//!
//! This module knows nothing of balancing or metrics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::http::h1;
use crate::sockopt::{self, ConnectError, ConnectOptions};

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE: usize = 64;
/// Checkouts per check of the least recently used idle connection.
const SWEEP_EVERY: u32 = 8;
/// Attempts of one request over reused connections before giving up.
const ATTEMPTS: usize = 3;

/// HTTP version spoken upstream (the same as downstream: no translation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 (prior knowledge).
    Http2,
}

/// A request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The HTTP exchange failed (hyper's client: HTTP/2, upgrades).
    #[error("upstream {addr}: {source}")]
    Http {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        source: hyper::Error,
    },
    /// The HTTP/1.1 exchange failed.
    #[error("upstream {addr}: {source}")]
    H1 {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        source: h1::Error,
    },
}

/// A failed send; the request comes back when it never left (no connection could be
/// opened), so the caller may try another endpoint. (`R = ()` when the caller kept the
/// request: `Some(())` then says it is intact.)
#[derive(Debug)]
pub struct SendError<R = Request<Incoming>> {
    /// What failed.
    pub error: UpstreamError,
    /// The request, when it was not sent.
    pub request: Option<R>,
}

impl<R> From<UpstreamError> for SendError<R> {
    fn from(error: UpstreamError) -> Self {
        Self {
            error,
            request: None,
        }
    }
}

type Idle = Arc<Mutex<Vec<Box<h1::Conn>>>>;

/// Connections of one endpoint.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    connect: ConnectOptions,
    idle: Idle,
    checkouts: AtomicU32,
    h2: Mutex<Option<http2::SendRequest<Incoming>>>,
    h2_connecting: tokio::sync::Mutex<()>,
}

/// Where an HTTP/1.1 connection goes back once its response body is done.
#[derive(Debug)]
pub struct PoolReturn {
    idle: Idle,
}

impl PoolReturn {
    /// Puts `conn` back on the idle list (unless the list is full).
    pub fn give_back(self, conn: Box<h1::Conn>) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
    }
}

impl Pool {
    /// An empty pool for `addr`.
    pub fn new(addr: SocketAddr, connect: ConnectOptions) -> Self {
        Self {
            addr,
            connect,
            idle: Arc::default(),
            checkouts: AtomicU32::new(0),
            h2: Mutex::new(None),
            h2_connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Idle HTTP/1.1 connections right now.
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }

    /// Sends `req` over a new HTTP/1.1 connection that is never pooled (upgrades), with
    /// hyper's client.
    pub async fn send_unpooled(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = self.connect_upgradable().await?;
        sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Http {
                addr: self.addr,
                source,
            })
    }

    /// The most recently used idle connection that is still open. Every few checkouts the
    /// least recently used one is checked too, so connections the upstream closed while idle
    /// do not linger (a check is a readiness poll, ~130 instructions).
    fn checkout(&self) -> Option<Box<h1::Conn>> {
        let sweep = self
            .checkouts
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY);
        let mut idle = self.idle.lock().ok()?;
        if sweep && idle.len() > 1 && !idle[0].is_reusable() {
            idle.remove(0);
        }
        while let Some(mut c) = idle.pop() {
            if c.is_reusable() {
                return Some(c);
            }
        }
        None
    }

    async fn connect_upgradable(&self) -> Result<http1::SendRequest<Incoming>, UpstreamError> {
        let stream = sockopt::connect(self.addr, self.connect).await?;
        let (sender, conn) = http1::Builder::new()
            // One buffer, one write (as the server side; see `http::serve`).
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Http {
                addr: self.addr,
                source,
            })?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    /// Sends `req` over a pooled (or new) HTTP/1.1 connection; the response's body gives the
    /// connection back. `req` stays with the caller (a future holding it once, not moved
    /// through this one), intact when the error says it was not sent.
    pub async fn send_h1(
        &self,
        req: &mut h1::Outgoing,
    ) -> Result<Response<h1::ResponseBody>, SendError<()>> {
        let mut reused_attempts = 0;
        loop {
            // After a few dead reused connections, a fresh one.
            let reused = (reused_attempts < ATTEMPTS)
                .then(|| self.checkout())
                .flatten();
            let (conn, was_reused) = match reused {
                Some(c) => (c, true),
                // Connecting is boxed: its future is most of a send's size, which every
                // request's future would carry, and connections are rare.
                None => match Box::pin(self.connect_h1()).await {
                    Ok(c) => (c, false),
                    Err(error) => {
                        return Err(SendError {
                            error,
                            request: Some(()),
                        })
                    }
                },
            };
            let pool = PoolReturn {
                idle: self.idle.clone(),
            };
            match h1::send(conn, req, Some(pool)).await {
                Ok(resp) => return Ok(resp),
                Err(f)
                    if was_reused
                        && (f.unsent || (f.unanswered && req.is_idempotent()))
                        && reused_attempts < ATTEMPTS =>
                {
                    reused_attempts += 1;
                    tracing::debug!(peer = %self.addr, error = %f.error, "reused connection failed; sending again");
                }
                Err(f) => {
                    return Err(UpstreamError::H1 {
                        addr: self.addr,
                        source: f.error,
                    }
                    .into())
                }
            }
        }
    }

    async fn connect_h1(&self) -> Result<Box<h1::Conn>, UpstreamError> {
        Ok(h1::Conn::new(
            sockopt::connect(self.addr, self.connect).await?,
        ))
    }

    async fn h2_sender(&self) -> Result<http2::SendRequest<Incoming>, UpstreamError> {
        if let Some(s) = self.current_h2() {
            return Ok(s);
        }
        // Boxed: the handshake is a large future and runs once per connection.
        Box::pin(self.connect_h2()).await
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<Incoming>, UpstreamError> {
        let _connecting = self.h2_connecting.lock().await;
        if let Some(s) = self.current_h2() {
            return Ok(s);
        }
        let stream = sockopt::connect(self.addr, self.connect).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Http {
                addr: self.addr,
                source,
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        if let Ok(mut h2) = self.h2.lock() {
            *h2 = Some(sender.clone());
        }
        Ok(sender)
    }

    fn current_h2(&self) -> Option<http2::SendRequest<Incoming>> {
        let h2 = self.h2.lock().ok()?;
        h2.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    fn forget_h2(&self) {
        if let Ok(mut h2) = self.h2.lock() {
            *h2 = None;
        }
    }

    /// Sends `req` over the endpoint's HTTP/2 connection (opened when there is none).
    pub async fn send_h2(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut retried = false;
        loop {
            let mut sender = match self.h2_sender().await {
                Ok(s) => s,
                Err(error) => {
                    return Err(SendError {
                        error,
                        request: Some(req),
                    })
                }
            };
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(response),
                Err(mut e) => match e.take_message() {
                    Some(back) if !retried => {
                        self.forget_h2();
                        retried = true;
                        req = back;
                    }
                    _ => {
                        return Err(UpstreamError::Http {
                            addr: self.addr,
                            source: e.into_error(),
                        }
                        .into())
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checkouts_take_the_newest_idle_connection_and_sweep_the_oldest() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(listener.local_addr().unwrap(), ConnectOptions::default());
        let mut servers = Vec::new();
        for _ in 0..3 {
            let conn = pool.connect_h1().await.unwrap();
            servers.push(listener.accept().await.unwrap().0);
            PoolReturn {
                idle: pool.idle.clone(),
            }
            .give_back(conn);
        }
        // The upstream closes the oldest idle connection; the reactor sees it.
        drop(servers.remove(0));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let newest = pool.checkout().unwrap();
        // The first checkout swept the closed one: one idle connection is left.
        assert_eq!(pool.idle(), 1);
        drop(newest);
        assert!(pool.checkout().is_some());
        assert!(pool.checkout().is_none());
    }
}
