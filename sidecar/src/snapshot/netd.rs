//! Snapshots from the netd daemon: follows `GET /v1/watch?since=REV` (newline-delimited JSON
//! events) on the daemon's unix socket and publishes a new [`SnapshotData`] after every batch
//! of changes once the stream is synced.
//!
//! When the daemon goes away the last snapshot stays published and the sidecar keeps serving
//! from it; the watcher reconnects with exponential backoff (100 ms doubling to 5 s) and
//! resumes from the last revision it saw (the daemon replays the changes, or resets with a
//! full state when that revision is too old).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use netd_config::netd::{Attachment, Endpoint, Event, Object, Service, Status};
use tokio::net::UnixStream;

use super::{SnapshotData, SnapshotStore};

/// First wait after a failed connection.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why one watch session ended.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The socket could not be used.
    #[error("cannot connect to netd on {socket}: {source}")]
    Connect {
        /// Socket path.
        socket: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("talking to netd on {socket}: {source}")]
    Http {
        /// Socket path.
        socket: String,
        /// Cause.
        source: hyper::Error,
    },
    /// The daemon refused the request.
    #[error("netd answered {status} to {path}")]
    Status {
        /// Path asked.
        path: String,
        /// HTTP status.
        status: StatusCode,
    },
    /// An event did not decode.
    #[error("bad watch event from netd: {0}")]
    Decode(#[from] serde_json::Error),
    /// The daemon closed the stream (restart, drain).
    #[error("netd closed the watch stream")]
    Closed,
}

/// The registry as rebuilt from watch events.
#[derive(Debug, Default)]
struct Mirror {
    revision: u64,
    domain: Option<String>,
    services: BTreeMap<String, Service>,
    endpoints: BTreeMap<String, Endpoint>,
    attachments: BTreeMap<String, Attachment>,
    synced: bool,
    dirty: bool,
}

impl Mirror {
    fn apply(&mut self, event: Event) {
        match event {
            Event::Reset { revision } => {
                self.services.clear();
                self.endpoints.clear();
                self.attachments.clear();
                self.revision = revision;
                self.synced = false;
            }
            Event::Synced { revision } => {
                self.revision = revision;
                self.synced = true;
            }
            Event::Put { revision, object } => {
                self.revision = revision;
                match object {
                    Object::Service(s) => {
                        self.services.insert(s.key(), s);
                    }
                    Object::Endpoint(e) => {
                        self.endpoints.insert(e.key(), e);
                    }
                    Object::Attachment(a) => {
                        self.attachments.insert(a.key(), a);
                    }
                    Object::Network(_) => return,
                }
            }
            Event::Delete { revision, object } => {
                self.revision = revision;
                match object {
                    Object::Service(s) => {
                        self.services.remove(&s.key());
                    }
                    Object::Endpoint(e) => {
                        self.endpoints.remove(&e.key());
                    }
                    Object::Attachment(a) => {
                        self.attachments.remove(&a.key());
                    }
                    Object::Network(_) => return,
                }
            }
        }
        self.dirty = true;
    }

    fn data(&self) -> SnapshotData {
        let mut data = SnapshotData {
            revision: self.revision,
            services: self.services.values().cloned().collect(),
            endpoints: self.endpoints.values().cloned().collect(),
            attachments: self.attachments.values().cloned().collect(),
            ..SnapshotData::default()
        };
        if let Some(d) = &self.domain {
            data.domain = d.clone();
        }
        data
    }
}

/// Follows netd on `socket` forever, publishing into `store`.
pub async fn follow(socket: PathBuf, store: SnapshotStore) {
    let mut mirror = Mirror::default();
    let mut backoff = BACKOFF_MIN;
    loop {
        let before = mirror.revision;
        match session(&socket, &store, &mut mirror).await {
            Ok(()) => {}
            Err(e) => {
                if store.is_loaded() {
                    tracing::warn!(error = %e, revision = mirror.revision, "netd watch lost; serving the last snapshot");
                } else {
                    tracing::warn!(error = %e, "no snapshot from netd yet");
                }
            }
        }
        if mirror.revision != before {
            backoff = BACKOFF_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn get(socket: &PathBuf, path: &str) -> Result<Incoming, WatchError> {
    let shown = || socket.display().to_string();
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| WatchError::Connect {
            socket: shown(),
            source,
        })?;
    let http = |source| WatchError::Http {
        socket: shown(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(path)
        .header(hyper::header::HOST, "netd")
        .body(Empty::<Bytes>::new())
        .map_err(|_| WatchError::Status {
            path: path.to_string(),
            status: StatusCode::BAD_REQUEST,
        })?;
    let resp = sender.send_request(req).await.map_err(http)?;
    if resp.status() != StatusCode::OK {
        return Err(WatchError::Status {
            path: path.to_string(),
            status: resp.status(),
        });
    }
    Ok(resp.into_body())
}

async fn session(
    socket: &PathBuf,
    store: &SnapshotStore,
    mirror: &mut Mirror,
) -> Result<(), WatchError> {
    if mirror.domain.is_none() {
        let body = get(socket, "/v1/status").await?;
        let bytes = body
            .collect()
            .await
            .map_err(|source| WatchError::Http {
                socket: socket.display().to_string(),
                source,
            })?
            .to_bytes();
        let status: Status = serde_json::from_slice(&bytes)?;
        mirror.domain = Some(status.domain);
    }
    let path = format!("/v1/watch?since={}", mirror.revision);
    let mut body = get(socket, &path).await?;
    let mut buf = BytesMut::new();
    loop {
        let frame = match body.frame().await {
            None => return Err(WatchError::Closed),
            Some(Err(source)) => {
                return Err(WatchError::Http {
                    socket: socket.display().to_string(),
                    source,
                })
            }
            Some(Ok(frame)) => frame,
        };
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        while data.has_remaining() {
            let chunk = data.chunk();
            buf.extend_from_slice(chunk);
            let n = chunk.len();
            data.advance(n);
        }
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line = buf.split_to(i + 1);
            let line = &line[..i];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            mirror.apply(serde_json::from_slice(line)?);
        }
        if mirror.synced && mirror.dirty {
            mirror.dirty = false;
            store.publish(mirror.data());
            tracing::debug!(revision = mirror.revision, "snapshot from netd");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(json: serde_json::Value) -> Event {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn mirror_follows_puts_deletes_and_resets() {
        let svc = serde_json::json!({"name": "web", "namespace": "default", "vip": "10.96.0.1",
            "ports": [{"port": 80}]});
        let ep = serde_json::json!({"id": "a", "service": "web", "namespace": "default",
            "address": "10.89.0.2", "port": 8080, "node": "n"});
        let mut m = Mirror::default();
        m.apply(ev(serde_json::json!({"type": "reset", "revision": 3})));
        m.apply(ev(
            serde_json::json!({"type": "put", "revision": 3, "kind": "service", "object": svc}),
        ));
        m.apply(ev(
            serde_json::json!({"type": "put", "revision": 3, "kind": "endpoint", "object": ep}),
        ));
        assert!(!m.synced);
        m.apply(ev(serde_json::json!({"type": "synced", "revision": 3})));
        assert!(m.synced);
        let d = m.data();
        assert_eq!((d.revision, d.services.len(), d.endpoints.len()), (3, 1, 1));
        m.apply(ev(
            serde_json::json!({"type": "delete", "revision": 4, "kind": "endpoint", "object": ep}),
        ));
        assert_eq!(m.data().endpoints.len(), 0);
        assert_eq!(m.data().revision, 4);
        m.apply(ev(serde_json::json!({"type": "reset", "revision": 9})));
        assert_eq!(m.data().services.len(), 0);
    }

    #[test]
    fn a_newer_daemons_fields_do_not_stop_the_mirror() {
        // A sidecar outlives netd upgrades: objects with fields it does not know, at any
        // depth (a port, a route, the health check), still apply.
        let svc = serde_json::json!({"name": "web", "namespace": "default", "vip": "10.96.0.1",
            "ports": [{"port": 80, "app_protocol": "h3"}],
            "routes": [{"name": "api", "path_prefix": "/api", "timeout_ms": 500}],
            "health_check": {"kind": "tcp", "jitter_ms": 5},
            "retries": {"attempts": 2}});
        let mut m = Mirror::default();
        m.apply(ev(serde_json::json!({"type": "reset", "revision": 1})));
        m.apply(ev(
            serde_json::json!({"type": "put", "revision": 2, "kind": "service", "object": svc,
                "origin": "node-b"}),
        ));
        let d = m.data();
        assert_eq!(d.services.len(), 1);
        assert_eq!(d.services[0].routes[0].path_prefix, "/api");
    }
}
