//! Golden metrics and access logs per request: response status class and latency (to
//! response headers) for the service and the peer the request was routed to, and, when
//! enabled, one JSON access log line through `tracing` (target `netd_sidecar::access`).
//! Requests are counted where they are routed (`balance`); this layer sees every response,
//! including the sidecar's own error responses.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Request, Response};
use tower::{Layer, Service};

use super::trace::TraceId;
use super::{ConnContext, ProxyBody, ResponseFuture};
use crate::metrics::HttpMetrics;

/// Which series a response is counted in; set by the layer that produced the response.
#[derive(Debug, Clone)]
pub struct Routed {
    /// The service's series, if the request was for a service.
    pub service: Option<Arc<HttpMetrics>>,
    /// The endpoint's series, if one was picked.
    pub peer: Option<Arc<HttpMetrics>>,
}

/// Adds [`Observe`].
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    ctx: Arc<ConnContext>,
    access_log: bool,
}

impl ObserveLayer {
    /// Observes requests of one connection.
    pub fn new(ctx: Arc<ConnContext>, access_log: bool) -> Self {
        Self { ctx, access_log }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

/// Records every response.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

struct LogLine {
    method: hyper::Method,
    uri: hyper::Uri,
    host: Option<hyper::header::HeaderValue>,
    trace: Option<TraceId>,
}

impl<S> Service<Request<Incoming>> for Observe<S>
where
    S: Service<
        Request<Incoming>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future = ResponseFuture,
    >,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> ResponseFuture {
        let started = Instant::now();
        let log = self.layer.access_log.then(|| LogLine {
            method: req.method().clone(),
            uri: req.uri().clone(),
            host: req.headers().get(hyper::header::HOST).cloned(),
            trace: req.extensions().get::<TraceId>().copied(),
        });
        let ctx = self.layer.ctx.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let latency = started.elapsed();
            let status = resp.status().as_u16();
            let routed = resp.extensions().get::<Routed>();
            if let Some(r) = routed {
                if let Some(s) = &r.service {
                    s.response(status, latency);
                }
                if let Some(p) = &r.peer {
                    p.response(status, latency);
                }
            }
            if let Some(line) = log {
                tracing::info!(
                    target: "netd_sidecar::access",
                    direction = ctx.direction.as_str(),
                    client = %ctx.client,
                    method = %line.method,
                    uri = %line.uri,
                    host = line.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
                    status,
                    latency_us = latency.as_micros() as u64,
                    trace_id = line.trace.as_ref().map(|t| t.as_str()).unwrap_or(""),
                    netd_proxy_error = resp.headers().get("netd-proxy-error").and_then(|v| v.to_str().ok()).unwrap_or(""),
                );
            }
            Ok(resp)
        })
    }
}
