//! The HTTP data path: a hyper server per detected connection, and the tower stack every
//! request goes through. Outbound, in order:
//!
//! 1. [`trace::TraceContextLayer`] — W3C `traceparent` propagated, created when missing;
//! 2. [`observe::ObserveLayer`] — response counts, latency, access log;
//! 3. [`route::RouteLayer`] — which service (or direct address) the request is for;
//! 4. *(next issue: rate limit, circuit breaker, retries, timeouts slot in here)*;
//! 5. [`balance::BalanceLayer`] — which endpoint of the service, per request;
//! 6. [`upstream::Upstream`] — pooled connection to the endpoint (mTLS will wrap its connect);
//!    HTTP/1.1 exchanges are driven in the request's own task by [`h1`].
//!
//! Inbound uses the same stack with a fixed destination (the application on localhost).
//! Errors never leave the stack: each layer answers with an HTTP error response (502, 503)
//! so metrics and logs see every request, and hyper only ever sees `Ok`.
//!
//! What a layer finds out travels with the request ([`ProxyRequest`]: trace id, route,
//! endpoint) and the response ([`ProxyResponse`]: the series it is counted in), as typed
//! fields rather than `http` extensions (each of those is a boxed value in a hash map
//! allocated per message). Below the trace layer the stack's futures are concrete except the
//! innermost one, and the stack is built once per connection and called in place
//! ([`Stack`]), not cloned per request.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::{Service, ServiceBuilder};

use crate::balance::Directory;
use crate::drain::Drain;
use crate::metrics::{Direction, HttpMetrics, Metrics};
use crate::pool::Version;
use crate::snapshot::SnapshotStore;

pub mod balance;
pub mod body;
pub mod h1;
pub mod observe;
pub mod route;
pub mod timer;
pub mod trace;
pub mod upstream;

pub use body::ProxyBody;

/// A request on its way down the stack, with what the layers above it found out.
#[derive(Debug)]
pub struct ProxyRequest {
    /// The request as received (its headers edited on the way: `traceparent`, hop-by-hop).
    pub http: Request<Incoming>,
    /// Its trace id, set by [`trace`] (for the access log).
    pub trace: Option<trace::TraceId>,
    /// Where it goes, set by [`route`].
    pub dest: Option<route::Dest>,
    /// The endpoint chosen, set by [`balance`].
    pub picked: Option<balance::Picked>,
}

impl ProxyRequest {
    /// A request nothing is known about yet.
    pub fn new(http: Request<Incoming>) -> Self {
        Self {
            http,
            trace: None,
            dest: None,
            picked: None,
        }
    }
}

/// A response on its way up the stack, with the series it is counted in (set by the layer
/// that produced it, read by [`observe`]).
#[derive(Debug)]
pub struct ProxyResponse {
    /// The response.
    pub http: Response<ProxyBody>,
    /// The series it is counted in.
    pub routed: observe::Routed,
}

impl ProxyResponse {
    /// A response counted in `routed`.
    pub fn new(http: Response<ProxyBody>, routed: observe::Routed) -> Self {
        Self { http, routed }
    }
}

/// The future of the innermost service: the upstream exchange, an `async` block, boxed.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<ProxyResponse, Infallible>> + Send + 'static>>;

/// The future of a layer that either answers itself at once (an error response) or waits
/// for its inner service. Futures in the stack are `Unpin` (the one `async` block is boxed),
/// so no pin projection is needed.
#[derive(Debug)]
pub enum LayerFuture<F> {
    /// The inner service's answer.
    Inner(F),
    /// The layer's own answer (taken when polled); boxed, as answers of its own are errors
    /// (rare) and a response is large next to the inner future that is moved every request.
    Ready(Option<Box<ProxyResponse>>),
}

impl<F> Future for LayerFuture<F>
where
    F: Future<Output = Result<ProxyResponse, Infallible>> + Unpin,
{
    type Output = Result<ProxyResponse, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            LayerFuture::Inner(f) => Pin::new(f).poll(cx),
            LayerFuture::Ready(r) => match r.take() {
                Some(r) => Poll::Ready(Ok(*r)),
                None => Poll::Pending,
            },
        }
    }
}

/// One connection's tower stack as hyper's service. `TowerToHyperService` clones the whole
/// stack for every request (every layer's `Arc`s) and drives it through a `Oneshot`; the
/// stack here is built once per connection and called in place, which also lets a layer keep
/// per-connection state (the route cache). The stack is only ever borrowed inside `call`,
/// never across an await, so the `RefCell` cannot be found borrowed.
#[derive(Debug)]
pub struct Stack<S>(RefCell<S>);

impl<S> Stack<S> {
    /// Serves with `stack`.
    pub fn new(stack: S) -> Self {
        Self(RefCell::new(stack))
    }
}

impl<S> hyper::service::Service<Request<Incoming>> for Stack<S>
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Unpin,
    S::Future: Unpin,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = StackFuture<S>;

    fn call(&self, req: Request<Incoming>) -> StackFuture<S> {
        let mut stack = self.0.borrow_mut();
        // Every layer is ready at once today (errors become responses, nothing pushes back);
        // one that is not gets a clone of the stack to wait on, as tower's `Oneshot` does.
        let mut cx = Context::from_waker(Waker::noop());
        match stack.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => StackFuture::Called(stack.call(req)),
            Poll::Pending => StackFuture::Waiting(Some(Box::new((stack.clone(), req)))),
        }
    }
}

/// The future of [`Stack`].
#[derive(Debug)]
pub enum StackFuture<S: Service<Request<Incoming>>> {
    /// Waiting for the stack's response.
    Called(S::Future),
    /// Waiting for (a clone of) the stack to be ready (boxed: never the case today).
    Waiting(Option<Box<(S, Request<Incoming>)>>),
}

impl<S> Future for StackFuture<S>
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible> + Unpin,
    S::Future: Unpin,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = &mut *self;
            match this {
                StackFuture::Called(f) => return Pin::new(f).poll(cx),
                StackFuture::Waiting(waiting) => {
                    let Some(stack_and_req) = waiting else {
                        return Poll::Pending;
                    };
                    match stack_and_req.0.poll_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => {}
                    }
                    if let Some(stack_and_req) = waiting.take() {
                        let (mut stack, req) = *stack_and_req;
                        *this = StackFuture::Called(stack.call(req));
                    }
                }
            }
        }
    }
}

/// What every layer learns about a connection when it is accepted.
#[derive(Debug, Clone)]
pub struct ConnContext {
    /// Outbound or inbound.
    pub direction: Direction,
    /// The client's address.
    pub client: SocketAddr,
    /// Where requests go.
    pub target: route::Target,
    /// HTTP version spoken on the connection (and upstream).
    pub version: Version,
}

/// Shared state the stack is built from.
#[derive(Debug, Clone)]
pub struct HttpShared {
    /// Current snapshot.
    pub store: SnapshotStore,
    /// Balancers and direct endpoints.
    pub directory: Arc<Directory>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Emit one JSON access log line per request.
    pub access_log: bool,
    /// Server limits.
    pub limits: HttpLimits,
}

/// Limits of the HTTP server side.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request head (HTTP/1.1 read buffer) or header list (HTTP/2), in bytes.
    pub max_header_bytes: usize,
    /// Time allowed for a request head to arrive (HTTP/1.1), also between the requests of a
    /// keep-alive connection: an idle HTTP/1.1 client is closed after it.
    pub header_read_timeout: Duration,
    /// HTTP/2 clients are sent a PING after this long without a frame from them, and closed
    /// when it is not answered within the same time (a peer that vanished without a FIN); an
    /// idle client that answers keeps its connection.
    pub h2_keepalive: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            h2_keepalive: Duration::from_secs(60),
        }
    }
}

/// Serves one connection whose protocol was detected as HTTP/1.1 or HTTP/2, until the client
/// closes it or `drain` fires (then in-flight requests finish and the connection closes).
pub async fn serve<I>(io: I, ctx: ConnContext, shared: &HttpShared, mut drain: Drain)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The connection in the TCP series (`protocol` http or h2): opened, open now. Its service
    // is the one its destination names; requests on it may go to others (counted per request).
    let service = match &ctx.target {
        route::Target::Service(s) | route::Target::Local { service: s, .. } => s,
        route::Target::Direct(_) | route::Target::ByAuthority { .. } => "-",
    };
    let protocol = match ctx.version {
        Version::Http1 => "http",
        Version::Http2 => "h2",
    };
    let _open = shared.metrics.tcp(ctx.direction, service, protocol).open();
    let ctx = Arc::new(ctx);
    let unrouted: Arc<HttpMetrics> = shared.metrics.http_service(ctx.direction, "-");
    let stack = ServiceBuilder::new()
        .layer(trace::TraceContextLayer)
        .layer(observe::ObserveLayer::new(ctx.clone(), shared.access_log))
        .layer(route::RouteLayer::new(
            ctx.clone(),
            shared.store.clone(),
            shared.directory.clone(),
            unrouted,
        ))
        .layer(balance::BalanceLayer::new(ctx.clone()))
        .service(upstream::Upstream::new(ctx.version));
    let service = Stack::new(stack);
    let io = TokioIo::new(io);
    let result = match ctx.version {
        Version::Http1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(timer::ConnTimer::new())
                .header_read_timeout(shared.limits.header_read_timeout)
                .half_close(true)
                // Head and body in one buffer and one write: hyper's queue of buffers for
                // vectored writes cost more than copying the (usually small) bodies.
                .writev(false)
                .max_buf_size(shared.limits.max_header_bytes.max(8192))
                .serve_connection(io, service)
                .with_upgrades();
            tokio::pin!(conn);
            match drain.run_until(&mut conn).await {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        Version::Http2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(shared.limits.max_header_bytes as u32)
                .keep_alive_interval(Some(shared.limits.h2_keepalive))
                .keep_alive_timeout(shared.limits.h2_keepalive)
                .serve_connection(io, service);
            tokio::pin!(conn);
            match drain.run_until(&mut conn).await {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %ctx.client, error = %e, "HTTP connection ended with an error");
    }
}

/// An error response generated by the sidecar itself. The `netd-proxy-error` header says
/// which layer failed and why, so a client can tell it from an application error.
pub fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(format!("{message}\n")));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(message) {
        h.insert("netd-proxy-error", v);
    }
    resp
}

/// The authority a request names: `:authority`/absolute URI first, then `Host`.
pub fn authority(req: &Request<Incoming>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(hyper::header::HOST)?.to_str().ok())
}
