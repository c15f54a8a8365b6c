//! The admin listener: `/metrics` (Prometheus text), `/ready` (200 once listeners are bound
//! and a snapshot is loaded, 503 while draining), `/live` (200 while the process runs) and
//! `/config` (the snapshot in use, as `--snapshot` JSON). Plain HTTP/1.1, one task per
//! connection; meant for localhost.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::snapshot::SnapshotStore;

/// What the admin endpoints report on.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Current snapshot.
    pub store: SnapshotStore,
    /// Set once every listener is bound.
    pub listening: Arc<AtomicBool>,
    /// Draining state.
    pub drain: Drain,
}

impl AdminState {
    /// Ready: listening, a snapshot loaded, not draining.
    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Acquire)
            && self.store.is_loaded()
            && !self.drain.is_draining()
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Answers one admin request.
pub fn respond(state: &AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n");
    }
    match path {
        "/metrics" => {
            state.metrics.set_revision(state.store.load().revision());
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                state.metrics.render(),
            )
        }
        "/live" => text(StatusCode::OK, "text/plain", "live\n"),
        "/ready" => {
            if state.is_ready() {
                text(StatusCode::OK, "text/plain", "ready\n")
            } else if state.drain.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: no snapshot yet\n",
                )
            }
        }
        "/config" => match serde_json::to_vec_pretty(state.store.load().data()) {
            Ok(json) => text(StatusCode::OK, "application/json", json),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /ready, /live or /config\n",
        ),
    }
}

/// Serves the admin endpoints until `drain` fires.
pub async fn run(listener: TcpListener, state: AdminState, mut drain: Drain, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.signaled() => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tracker.spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = respond(&state, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
