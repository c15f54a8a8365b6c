//! Upstream HTTP connections of one endpoint: idle HTTP/1.1 connections reused across
//! requests, and one shared HTTP/2 connection multiplexing every request.
//!
//! An HTTP/1.1 connection goes back to the idle list when its response body has been read to
//! the end (see [`PoolReturn`]); one whose response was dropped early or was an upgrade is
//! closed. A request that could not even be written on a reused connection (the server
//! closed it while idle) is retried on another one, so an endpoint that shuts down
//! gracefully costs no failed request.
//!
//! This module knows nothing of balancing or metrics.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::sockopt::{self, ConnectError, ConnectOptions};

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE: usize = 64;
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
    /// The HTTP exchange failed.
    #[error("upstream {addr}: {source}")]
    Http {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        source: hyper::Error,
    },
}

/// A failed send; the request comes back when it never left (no connection could be
/// opened), so the caller may try another endpoint.
#[derive(Debug)]
pub struct SendError {
    /// What failed.
    pub error: UpstreamError,
    /// The request, when it was not sent.
    pub request: Option<Request<Incoming>>,
}

impl From<UpstreamError> for SendError {
    fn from(error: UpstreamError) -> Self {
        Self {
            error,
            request: None,
        }
    }
}

type Idle = Arc<Mutex<Vec<http1::SendRequest<Incoming>>>>;

/// Connections of one endpoint.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    connect: ConnectOptions,
    idle: Idle,
    h2: Mutex<Option<http2::SendRequest<Incoming>>>,
    h2_connecting: tokio::sync::Mutex<()>,
}

/// An HTTP/1.1 connection to give back once its response body is done.
#[derive(Debug)]
pub struct PoolReturn {
    idle: Idle,
    sender: http1::SendRequest<Incoming>,
}

impl PoolReturn {
    /// Puts the connection back on the idle list (unless it closed or the list is full).
    pub fn give_back(self) {
        if self.sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(self.sender);
            }
        }
    }
}

/// A response, and the connection to give back when its body ends.
#[derive(Debug)]
pub struct Sent {
    /// The upstream response.
    pub response: Response<Incoming>,
    /// Set for pooled HTTP/1.1 connections.
    pub give_back: Option<PoolReturn>,
}

impl Pool {
    /// An empty pool for `addr`.
    pub fn new(addr: SocketAddr, connect: ConnectOptions) -> Self {
        Self {
            addr,
            connect,
            idle: Arc::default(),
            h2: Mutex::new(None),
            h2_connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Idle HTTP/1.1 connections right now.
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }

    /// Sends `req` over a pooled (or new) connection.
    pub async fn send(&self, req: Request<Incoming>, version: Version) -> Result<Sent, SendError> {
        match version {
            Version::Http1 => self.send_h1(req).await,
            Version::Http2 => self.send_h2(req).await,
        }
    }

    /// Sends `req` over a new HTTP/1.1 connection that is never pooled (upgrades).
    pub async fn send_unpooled(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = self.connect_h1().await?;
        sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Http {
                addr: self.addr,
                source,
            })
    }

    fn checkout(&self) -> Option<http1::SendRequest<Incoming>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<Incoming>, UpstreamError> {
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

    async fn send_h1(&self, mut req: Request<Incoming>) -> Result<Sent, SendError> {
        let http = |source| UpstreamError::Http {
            addr: self.addr,
            source,
        };
        for _ in 0..ATTEMPTS {
            let (mut sender, reused) = match self.checkout() {
                Some(s) => (s, true),
                // Connecting is boxed (here and below): its future is most of a send's size,
                // which every request's future would carry, and connections are rare.
                None => match Box::pin(self.connect_h1()).await {
                    Ok(s) => (s, false),
                    Err(error) => {
                        return Err(SendError {
                            error,
                            request: Some(req),
                        })
                    }
                },
            };
            if let Err(e) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(http(e).into());
            }
            match sender.try_send_request(req).await {
                Ok(response) => {
                    let give_back = (response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS)
                        .then(|| PoolReturn {
                            idle: self.idle.clone(),
                            sender,
                        });
                    return Ok(Sent {
                        response,
                        give_back,
                    });
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => req = back,
                    _ => return Err(http(e.into_error()).into()),
                },
            }
        }
        // Every reused connection was dead: one last try on a fresh one.
        let mut sender = match Box::pin(self.connect_h1()).await {
            Ok(s) => s,
            Err(error) => {
                return Err(SendError {
                    error,
                    request: Some(req),
                })
            }
        };
        let response = sender.send_request(req).await.map_err(http)?;
        let give_back = Some(PoolReturn {
            idle: self.idle.clone(),
            sender,
        });
        Ok(Sent {
            response,
            give_back,
        })
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

    async fn send_h2(&self, mut req: Request<Incoming>) -> Result<Sent, SendError> {
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
                Ok(response) => {
                    return Ok(Sent {
                        response,
                        give_back: None,
                    })
                }
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
