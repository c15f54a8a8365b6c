//! Shared test harness: real hyper backends on loopback, snapshot builders, an in-process
//! sidecar, and small HTTP/1.1 and HTTP/2 clients. Everything binds 127.0.0.1 port 0.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use netd_sidecar::snapshot::SnapshotData;
use netd_sidecar::{Config, Running, Source};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running backend: its address, how many requests it served, how to stop it.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Backend {
    /// Stops accepting, lets in-flight requests finish (graceful), waits for it.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    H1,
    H2,
}

async fn handle(
    name: String,
    hits: Arc<AtomicUsize>,
    mut req: Request<Incoming>,
) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>, Infallible> {
    hits.fetch_add(1, Ordering::Relaxed);
    let seen = req
        .headers()
        .get("traceparent")
        .cloned()
        .unwrap_or(hyper::header::HeaderValue::from_static(""));
    let path = req.uri().path().to_string();
    if path == "/upgrade" {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 64];
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                if let Ok(n) = io.read(&mut buf).await {
                    let _ = io.write_all(&buf[..n]).await;
                }
            }
        });
        let resp = Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Empty::new().boxed())
            .unwrap();
        return Ok(resp);
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if path == "/grpc" {
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "ok".parse().unwrap());
        let resp = Response::builder()
            .header("content-type", "application/grpc")
            .body(DataThenTrailers(Some(Bytes::from(name.clone())), Some(trailers)).boxed())
            .unwrap();
        return Ok(resp);
    }
    let mut resp = Response::new(
        Full::new(Bytes::from(format!(
            "{name}{}",
            String::from_utf8_lossy(&body)
        )))
        .boxed(),
    );
    resp.headers_mut().insert("x-seen-traceparent", seen);
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    Ok(resp)
}

/// A body of one data frame then trailers (gRPC-shaped).
pub struct DataThenTrailers(pub Option<Bytes>, pub Option<hyper::HeaderMap>);

impl hyper::body::Body for DataThenTrailers {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.0.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(d))));
        }
        std::task::Poll::Ready(self.1.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// Starts a backend speaking `proto` that answers with its name (plus the request body).
pub async fn backend(name: &str, proto: Proto) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let (stop, mut stop_rx) = watch::channel(false);
    let (name_c, hits_c) = (name.to_string(), hits.clone());
    let task = tokio::spawn(async move {
        let mut conns = Vec::new();
        loop {
            let (stream, _) = tokio::select! {
                a = listener.accept() => match a { Ok(a) => a, Err(_) => break },
                _ = async { let _ = stop_rx.wait_for(|s| *s).await; } => break,
            };
            let (name, hits) = (name_c.clone(), hits_c.clone());
            let mut stop = stop_rx.clone();
            conns.push(tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(name.clone(), hits.clone(), req));
                let io = TokioIo::new(stream);
                match proto {
                    Proto::H1 => {
                        let conn = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .with_upgrades();
                        tokio::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            _ = async { let _ = stop.wait_for(|s| *s).await; } => { conn.as_mut().graceful_shutdown(); let _ = conn.await; }
                        }
                    }
                    Proto::H2 => {
                        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, svc);
                        tokio::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            _ = async { let _ = stop.wait_for(|s| *s).await; } => { conn.as_mut().graceful_shutdown(); let _ = conn.await; }
                        }
                    }
                }
            }));
        }
        drop(listener);
        for c in conns {
            let _ = c.await;
        }
    });
    Backend {
        addr,
        name: name.to_string(),
        hits,
        stop,
        task,
    }
}

/// A snapshot with one service `web` (VIP 10.96.0.10, port 80 with `protocol`) over `eps`.
pub fn web_snapshot(protocol: &str, eps: &[SocketAddr], balancer: &str) -> SnapshotData {
    service_snapshot("web", "10.96.0.10", 80, protocol, eps, balancer)
}

/// A snapshot with one service over `eps`.
pub fn service_snapshot(
    name: &str,
    vip: &str,
    port: u16,
    protocol: &str,
    eps: &[SocketAddr],
    balancer: &str,
) -> SnapshotData {
    let endpoints: Vec<_> = eps
        .iter()
        .map(|a| {
            serde_json::json!({"id": a.to_string(), "service": name, "namespace": "default",
                "address": a.ip(), "port": a.port(), "node": "test"})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "revision": 1,
        "services": [{"name": name, "namespace": "default", "vip": vip,
                      "ports": [{"port": port, "protocol": protocol}]}],
        "endpoints": endpoints,
        "balancers": {format!("default/{name}"): balancer}
    }))
    .unwrap()
}

/// Starts a sidecar in-process on loopback ports.
pub async fn sidecar(data: SnapshotData, tweak: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config::loopback(Source::Data(data));
    tweak(&mut config);
    netd_sidecar::start(config).await.unwrap()
}

/// An HTTP/1.1 keep-alive connection.
pub async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender
}

/// An HTTP/2 prior-knowledge connection.
pub async fn h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// A GET with a Host header.
pub fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Reads a response: status, headers, body text.
pub async fn read(resp: Response<Incoming>) -> (u16, hyper::HeaderMap, String) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// GET on the admin listener over a fresh connection.
pub async fn admin_get(running: &Running, path: &str) -> (u16, String) {
    let mut s = h1(running.addrs.admin.unwrap()).await;
    let (status, _, body) = read(s.send_request(get("admin", path)).await.unwrap()).await;
    (status, body)
}

/// Waits (bounded) until the sidecar has no connection task left; returns how many remain.
pub async fn settle(running: &Running) -> usize {
    for _ in 0..200 {
        if running.connections() == 0 {
            return 0;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.connections()
}
