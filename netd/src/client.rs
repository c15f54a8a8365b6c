//! A small client for the daemon's API: HTTP/1.1 over the unix socket with hyper's client, one
//! connection per call (the CLI makes a handful), typed helpers per route, and a watch reader.
//!
//! Connection failures are turned into errors a user can act on: no daemon on the socket,
//! or no permission to use it.

use std::io;
use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use netd_config::netd::{
    Attachment, AttachmentSpec, Deleted, Endpoint, EndpointSpec, ErrorBody, Event, Lease,
    LeaseGrant, Network, NetworkSpec, RoutesSpec, Service, ServiceSpec, Status,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

/// A call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("netd is not running on {socket}: start it with `netd up`")]
    NotRunning {
        /// Socket path.
        socket: String,
    },
    /// The socket exists but this user may not use it.
    #[error("permission denied on {socket}: run as root or as a member of the `netd` group")]
    PermissionDenied {
        /// Socket path.
        socket: String,
    },
    /// Connecting failed otherwise.
    #[error("cannot connect to netd on {socket}: {source}")]
    Connect {
        /// Socket path.
        socket: String,
        /// Cause.
        source: io::Error,
    },
    /// The HTTP exchange failed (daemon stopped mid-request, ...).
    #[error("talking to netd on {socket} failed: {message}")]
    Transport {
        /// Socket path.
        socket: String,
        /// What happened.
        message: String,
    },
    /// The daemon refused the request.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The daemon's message.
        message: String,
        /// Request field at fault.
        field: Option<String>,
    },
    /// The daemon's answer could not be decoded.
    #[error("unexpected answer from netd (HTTP {status}): {message}")]
    Decode {
        /// HTTP status.
        status: u16,
        /// What was wrong.
        message: String,
    },
}

impl ClientError {
    /// True when the daemon could not be reached at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::NotRunning { .. }
                | ClientError::PermissionDenied { .. }
                | ClientError::Connect { .. }
        )
    }

    /// HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Percent-encodes one path segment.
pub fn enc(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// API client bound to one socket path.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the daemon on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn shown(&self) -> String {
        self.socket.display().to_string()
    }

    async fn connect(&self) -> Result<UnixStream, ClientError> {
        UnixStream::connect(&self.socket).await.map_err(|source| {
            let socket = self.shown();
            match source.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning { socket }
                }
                io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { socket },
                _ => ClientError::Connect { socket, source },
            }
        })
    }

    /// Sends one request; returns the response with its body unread.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream = self.connect().await?;
        let transport = |e: hyper::Error| ClientError::Transport {
            socket: self.shown(),
            message: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(transport)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::new(Full::new(Bytes::from(body.clone().unwrap_or_default())));
        *req.method_mut() = method;
        *req.uri_mut() = path.parse().map_err(|e| ClientError::Transport {
            socket: self.shown(),
            message: format!("bad request path {path:?}: {e}"),
        })?;
        req.headers_mut()
            .insert(HOST, HeaderValue::from_static("netd"));
        if body.is_some() {
            req.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        sender.send_request(req).await.map_err(transport)
    }

    /// Sends one request and reads the whole answer: status and body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport {
                socket: self.shown(),
                message: e.to_string(),
            })?
            .to_bytes();
        Ok((status, bytes.to_vec()))
    }

    /// Sends one request and decodes the JSON answer, or the daemon's error.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Decode {
                status: 0,
                message: format!("cannot encode the request: {e}"),
            })?;
        let (status, bytes) = self.raw(method, path, body).await?;
        if (200..300).contains(&status) {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                status,
                message: e.to_string(),
            })
        } else {
            Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => ClientError::Api {
                    status,
                    message: e.error,
                    field: e.field,
                },
                Err(_) => ClientError::Decode {
                    status,
                    message: String::from_utf8_lossy(&bytes).into_owned(),
                },
            })
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Result<Deleted, ClientError> {
        self.call(Method::DELETE, path, None::<&()>).await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.get("/v1/status").await
    }

    /// `GET /v1/networks`.
    pub async fn networks(&self) -> Result<Vec<Network>, ClientError> {
        self.get("/v1/networks").await
    }

    /// `GET /v1/networks/{name}`.
    pub async fn network(&self, name: &str) -> Result<Network, ClientError> {
        self.get(&format!("/v1/networks/{}", enc(name))).await
    }

    /// `POST /v1/networks`.
    pub async fn create_network(&self, spec: &NetworkSpec) -> Result<Network, ClientError> {
        self.post("/v1/networks", spec).await
    }

    /// `DELETE /v1/networks/{name}`.
    pub async fn delete_network(&self, name: &str) -> Result<Deleted, ClientError> {
        self.delete(&format!("/v1/networks/{}", enc(name))).await
    }

    /// `GET /v1/services` (optionally one namespace).
    pub async fn services(&self, namespace: Option<&str>) -> Result<Vec<Service>, ClientError> {
        match namespace {
            Some(ns) => {
                self.get(&format!("/v1/services?namespace={}", enc(ns)))
                    .await
            }
            None => self.get("/v1/services").await,
        }
    }

    /// `GET /v1/services/{ns}/{name}`; `None` when it does not exist.
    pub async fn service(&self, ns: &str, name: &str) -> Result<Option<Service>, ClientError> {
        match self
            .get(&format!("/v1/services/{}/{}", enc(ns), enc(name)))
            .await
        {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /v1/services`.
    pub async fn put_service(&self, spec: &ServiceSpec) -> Result<Service, ClientError> {
        self.post("/v1/services", spec).await
    }

    /// `GET /v1/services/{ns}/{name}/routes`.
    pub async fn routes(&self, ns: &str, name: &str) -> Result<RoutesSpec, ClientError> {
        self.get(&format!("/v1/services/{}/{}/routes", enc(ns), enc(name)))
            .await
    }

    /// `PUT /v1/services/{ns}/{name}/routes`: replaces the service's routes.
    pub async fn put_routes(
        &self,
        ns: &str,
        name: &str,
        spec: &RoutesSpec,
    ) -> Result<Service, ClientError> {
        self.call(
            Method::PUT,
            &format!("/v1/services/{}/{}/routes", enc(ns), enc(name)),
            Some(spec),
        )
        .await
    }

    /// `DELETE /v1/services/{ns}/{name}`.
    pub async fn delete_service(&self, ns: &str, name: &str) -> Result<Deleted, ClientError> {
        self.delete(&format!("/v1/services/{}/{}", enc(ns), enc(name)))
            .await
    }

    /// `GET /v1/services/{ns}/{name}/endpoints`.
    pub async fn endpoints(&self, ns: &str, name: &str) -> Result<Vec<Endpoint>, ClientError> {
        self.get(&format!("/v1/services/{}/{}/endpoints", enc(ns), enc(name)))
            .await
    }

    /// `POST /v1/services/{ns}/{name}/endpoints`.
    pub async fn register_endpoint(
        &self,
        ns: &str,
        name: &str,
        spec: &EndpointSpec,
    ) -> Result<Endpoint, ClientError> {
        self.post(
            &format!("/v1/services/{}/{}/endpoints", enc(ns), enc(name)),
            spec,
        )
        .await
    }

    /// `DELETE /v1/services/{ns}/{name}/endpoints/{id}`.
    pub async fn delete_endpoint(
        &self,
        ns: &str,
        name: &str,
        id: &str,
    ) -> Result<Deleted, ClientError> {
        self.delete(&format!(
            "/v1/services/{}/{}/endpoints/{}",
            enc(ns),
            enc(name),
            enc(id)
        ))
        .await
    }

    /// `GET /v1/endpoints`: every endpoint of every service.
    pub async fn all_endpoints(&self) -> Result<Vec<Endpoint>, ClientError> {
        self.get("/v1/endpoints").await
    }

    /// `GET /v1/leases`.
    pub async fn leases(&self) -> Result<Vec<Lease>, ClientError> {
        self.get("/v1/leases").await
    }

    /// `GET /v1/attachments`.
    pub async fn attachments(&self) -> Result<Vec<Attachment>, ClientError> {
        self.get("/v1/attachments").await
    }

    /// `GET /v1/sidecars`.
    pub async fn sidecars(&self) -> Result<Vec<crate::mesh::status::SidecarStatus>, ClientError> {
        self.get("/v1/sidecars").await
    }

    /// `POST /v1/leases`.
    pub async fn grant_lease(&self, ttl_seconds: u64) -> Result<Lease, ClientError> {
        self.post("/v1/leases", &LeaseGrant { ttl_seconds }).await
    }

    /// `POST /v1/leases/{id}/keepalive`.
    pub async fn keepalive(&self, id: u64) -> Result<Lease, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/leases/{id}/keepalive"),
            None::<&()>,
        )
        .await
    }

    /// `DELETE /v1/leases/{id}`.
    pub async fn revoke_lease(&self, id: u64) -> Result<Deleted, ClientError> {
        self.delete(&format!("/v1/leases/{id}")).await
    }

    /// `POST /v1/attachments`.
    pub async fn attach(&self, spec: &AttachmentSpec) -> Result<Attachment, ClientError> {
        self.post("/v1/attachments", spec).await
    }

    /// `DELETE /v1/attachments/{container_id}/{ifname}`.
    pub async fn detach(&self, container_id: &str, ifname: &str) -> Result<Deleted, ClientError> {
        self.delete(&format!(
            "/v1/attachments/{}/{}",
            enc(container_id),
            enc(ifname)
        ))
        .await
    }

    /// `GET /v1/watch?since=REV`: a stream of events.
    pub async fn watch(&self, since: u64) -> Result<WatchStream, ClientError> {
        let resp = self
            .send(Method::GET, &format!("/v1/watch?since={since}"), None)
            .await?;
        let status = resp.status().as_u16();
        if status != 200 {
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => ClientError::Api {
                    status,
                    message: e.error,
                    field: e.field,
                },
                Err(_) => ClientError::Decode {
                    status,
                    message: String::from_utf8_lossy(&bytes).into_owned(),
                },
            });
        }
        Ok(WatchStream {
            body: resp.into_body(),
            buf: BytesMut::new(),
            socket: self.shown(),
        })
    }
}

/// Events of a watch, one at a time.
pub struct WatchStream {
    body: Incoming,
    buf: BytesMut,
    socket: String,
}

impl WatchStream {
    /// The next event; `None` when the daemon ended the stream.
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(i + 1);
                let line = &line[..i];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(line)
                    .map(Some)
                    .map_err(|e| ClientError::Decode {
                        status: 200,
                        message: format!("bad watch event: {e}"),
                    });
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(ClientError::Transport {
                        socket: self.socket.clone(),
                        message: e.to_string(),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
            }
        }
    }
}
