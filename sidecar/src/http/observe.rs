//! Golden metrics and access logs per request: response status class and latency (to
//! response headers) for the service, the route and the peer the request was routed to (one
//! clock reading serves all three), and, when enabled, one JSON access log line through
//! `tracing` (target `netd_sidecar::access`).
//! Requests are counted where they are routed (`balance`); this layer sees every response,
//! including the sidecar's own error responses.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::Response;
use tower::{Layer, Service};

use super::trace::TraceId;
use super::{ConnContext, ProxyBody, ProxyRequest, ProxyResponse};
use crate::metrics::HttpMetrics;

/// Which series a response is counted in; set by the layer that produced the response.
#[derive(Debug, Clone, Default)]
pub struct Routed {
    /// The service's series, if the request was for a service.
    pub service: Option<Arc<HttpMetrics>>,
    /// The series of the service's route the request matched, if the service has routes
    /// (set by [`route`](super::route) on the way back up).
    pub route: Option<Arc<HttpMetrics>>,
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

/// What the access log line needs from the request (kept only when logging).
#[derive(Debug)]
struct LogLine {
    ctx: Arc<ConnContext>,
    method: hyper::Method,
    uri: hyper::Uri,
    host: Option<hyper::header::HeaderValue>,
    trace: Option<TraceId>,
}

impl<S> Service<ProxyRequest> for Observe<S>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ProxyRequest) -> Self::Future {
        let started = Instant::now();
        let log = self.layer.access_log.then(|| {
            Box::new(LogLine {
                ctx: self.layer.ctx.clone(),
                method: req.http.method().clone(),
                uri: req.http.uri().clone(),
                host: req.http.headers().get(hyper::header::HOST).cloned(),
                trace: req.trace,
            })
        });
        ObserveFuture {
            inner: self.inner.call(req),
            started,
            log,
        }
    }
}

/// The future of [`Observe`]: the inner response, counted (and logged) when it arrives.
#[derive(Debug)]
pub struct ObserveFuture<F> {
    inner: F,
    started: Instant,
    log: Option<Box<LogLine>>,
}

impl<F> Future for ObserveFuture<F>
where
    F: Future<Output = Result<ProxyResponse, Infallible>> + Unpin,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Poll::Ready(Ok(resp)) = Pin::new(&mut this.inner).poll(cx) else {
            return Poll::Pending;
        };
        let latency = this.started.elapsed();
        let status = resp.http.status().as_u16();
        if let Some(s) = &resp.routed.service {
            s.response(status, latency);
        }
        if let Some(r) = &resp.routed.route {
            r.response(status, latency);
        }
        if let Some(p) = &resp.routed.peer {
            p.response(status, latency);
        }
        if let Some(line) = this.log.take() {
            tracing::info!(
                target: "netd_sidecar::access",
                direction = line.ctx.direction.as_str(),
                client = %line.ctx.client,
                method = %line.method,
                uri = %line.uri,
                host = line.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
                status,
                latency_us = latency.as_micros() as u64,
                trace_id = line.trace.as_ref().map(|t| t.as_str()).unwrap_or(""),
                netd_proxy_error = resp
                    .http
                    .headers()
                    .get("netd-proxy-error")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            );
        }
        Poll::Ready(Ok(resp.http))
    }
}
