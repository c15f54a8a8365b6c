//! HTTP/1.1 client of etcd's JSON gateway, with failover between the cluster's members.
//!
//! A call goes to the member that answered last; when it cannot be reached (refused, reset,
//! timed out) or answers "unavailable" (no leader, shutting down), the same request goes to the
//! next member, and so on once around. Requests are idempotent as netd sends them: a
//! transaction is guarded by a compare, so one that reached a member that then died is refused
//! as a conflict when sent again, never applied twice. Idle connections are kept per member and
//! reused; a reused connection that fails is replaced by a fresh one before failing over.
//! [`Gateway::call_member`] asks one given member, without failover (the watch's question
//! whether its member still answers).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;

use super::wire::ErrorBody;

/// How long connecting to one member may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one request to one member may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per member.
const IDLE_PER_MEMBER: usize = 4;

/// gRPC codes worth trying another member for: `DEADLINE_EXCEEDED`, `UNAVAILABLE`.
const RETRY_ELSEWHERE: [i32; 2] = [4, 14];

/// A call failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No member answered.
    #[error("no etcd member answered ({0})")]
    Unreachable(String),
    /// A member refused the request.
    #[error("etcd at {endpoint} refused the request: {message}")]
    Etcd {
        /// Member.
        endpoint: String,
        /// gRPC status code.
        code: i32,
        /// etcd's message.
        message: String,
    },
    /// The answer could not be decoded.
    #[error("unexpected answer from etcd at {endpoint}: {message}")]
    Decode {
        /// Member.
        endpoint: String,
        /// What was wrong.
        message: String,
    },
}

type Sender = SendRequest<Full<Bytes>>;

/// The members of one etcd cluster.
pub struct Gateway {
    endpoints: Vec<String>,
    preferred: AtomicUsize,
    idle: Mutex<Vec<(usize, Sender)>>,
}

impl Gateway {
    /// A client of the members at `endpoints` (`host:port` each).
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            preferred: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The members, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Index of the member that answered last.
    pub fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed)
    }

    /// POSTs `req` to `path` and decodes the answer, failing over between members.
    pub async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        path: &str,
        req: &Q,
    ) -> Result<A, GatewayError> {
        let body = Bytes::from(serde_json::to_vec(req).map_err(|e| GatewayError::Decode {
            endpoint: "-".into(),
            message: format!("cannot encode the request: {e}"),
        })?);
        let n = self.endpoints.len();
        let start = self.preferred();
        let mut failures = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let endpoint = &self.endpoints[idx];
            let answer =
                tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(idx, path, body.clone())).await;
            let (status, bytes) = match answer {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => {
                    failures.push(format!("{endpoint}: {e}"));
                    continue;
                }
                Err(_) => {
                    failures.push(format!("{endpoint}: no answer within {REQUEST_TIMEOUT:?}"));
                    continue;
                }
            };
            if status == StatusCode::OK {
                self.preferred.store(idx, Ordering::Relaxed);
                return serde_json::from_slice(&bytes).map_err(|e| GatewayError::Decode {
                    endpoint: endpoint.clone(),
                    message: format!("{e}: {}", String::from_utf8_lossy(&bytes)),
                });
            }
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) if !b.message.is_empty() => (b.code, b.message),
                Ok(b) => (b.code, b.error.to_string()),
                Err(_) => (
                    0,
                    format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
                ),
            };
            if RETRY_ELSEWHERE.contains(&code) || status == StatusCode::SERVICE_UNAVAILABLE {
                failures.push(format!("{endpoint}: {message}"));
                continue;
            }
            return Err(GatewayError::Etcd {
                endpoint: endpoint.clone(),
                code,
                message,
            });
        }
        Err(GatewayError::Unreachable(failures.join("; ")))
    }

    /// POSTs `req` to member `idx` only, with no failover, waiting at most `timeout`: to ask
    /// whether that member still answers.
    pub async fn call_member<Q: Serialize, A: DeserializeOwned>(
        &self,
        idx: usize,
        path: &str,
        req: &Q,
        timeout: Duration,
    ) -> Result<A, GatewayError> {
        let endpoint = &self.endpoints[idx];
        let body = Bytes::from(serde_json::to_vec(req).map_err(|e| GatewayError::Decode {
            endpoint: endpoint.clone(),
            message: format!("cannot encode the request: {e}"),
        })?);
        let (status, bytes) = tokio::time::timeout(timeout, self.exchange(idx, path, body))
            .await
            .map_err(|_| {
                GatewayError::Unreachable(format!("{endpoint}: no answer within {timeout:?}"))
            })?
            .map_err(|e| GatewayError::Unreachable(format!("{endpoint}: {e}")))?;
        if status != StatusCode::OK {
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) if !b.message.is_empty() => (b.code, b.message),
                _ => (
                    0,
                    format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
                ),
            };
            return Err(GatewayError::Etcd {
                endpoint: endpoint.clone(),
                code,
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| GatewayError::Decode {
            endpoint: endpoint.clone(),
            message: format!("{e}: {}", String::from_utf8_lossy(&bytes)),
        })
    }

    /// Opens a streaming POST (a watch) to member `idx` on a connection of its own; returns
    /// the body to read messages from.
    pub async fn stream<Q: Serialize>(
        &self,
        idx: usize,
        path: &str,
        req: &Q,
    ) -> Result<Incoming, String> {
        let body = Bytes::from(serde_json::to_vec(req).map_err(|e| e.to_string())?);
        let mut sender = self.connect(idx).await?;
        let resp = tokio::time::timeout(
            REQUEST_TIMEOUT,
            sender.send_request(self.request(idx, path, body)),
        )
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        Ok(resp.into_body())
    }

    fn request(&self, idx: usize, path: &str, body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = hyper::Method::POST;
        *req.uri_mut() = path.parse().unwrap_or_default();
        if let Ok(host) = self.endpoints[idx].parse() {
            req.headers_mut().insert(HOST, host);
        }
        req.headers_mut()
            .insert(CONTENT_TYPE, "application/json".parse().expect("static"));
        req
    }

    /// One request to member `idx`: on a kept connection, or on a fresh one when there is none
    /// or the kept one fails.
    async fn exchange(
        &self,
        idx: usize,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        if let Some(sender) = self.take_idle(idx) {
            if let Ok(answer) = self.send(idx, sender, path, body.clone()).await {
                return Ok(answer);
            }
        }
        let sender = self.connect(idx).await?;
        self.send(idx, sender, path, body).await
    }

    async fn send(
        &self,
        idx: usize,
        mut sender: Sender,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        sender.ready().await.map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(self.request(idx, path, body))
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        self.keep_idle(idx, sender);
        Ok((status, bytes))
    }

    fn take_idle(&self, idx: usize) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(pos) = idle.iter().position(|(i, _)| *i == idx) {
            let (_, sender) = idle.swap_remove(pos);
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn keep_idle(&self, idx: usize, sender: Sender) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.iter().filter(|(i, _)| *i == idx).count() < IDLE_PER_MEMBER {
            idle.push((idx, sender));
        }
    }

    async fn connect(&self, idx: usize) -> Result<Sender, String> {
        let endpoint = &self.endpoints[idx];
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint.as_str()))
            .await
            .map_err(|_| format!("connect timed out after {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            // Ends when the member closes the connection or the sender is dropped.
            let _ = conn.await;
        });
        Ok(sender)
    }
}
