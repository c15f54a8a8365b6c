//! Route lookup: decides where a request goes — a service (by the connection's original
//! destination `VIP:port`, else by the request's authority) or a plain address — and records
//! the decision in [`ProxyRequest::dest`] for the balancer. When that service declares HTTP
//! routes, the request is matched to one (by method and path, see
//! [`RouteTable`]), counted in the route's series, and the series travels
//! back up with the response ([`Routed::route`]) for [`observe`](super::observe) to count the
//! response. Inbound, the service is the one whose endpoint the connection was for.
//!
//! The decision is kept per connection and reused while the snapshot generation (and, when
//! routing by authority, the authority) stays the same: a keep-alive connection's requests
//! normally all go to one place, and the lookups (authority parsing, name and service maps,
//! snapshot loads) were a tenth of the stack's work. The service's route table is part of
//! that decision; only the match itself (a short scan, no allocation) is per request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use tower::{Layer, Service};

use super::observe::Routed;
use super::{authority, error_response, ConnContext, LayerFuture, ProxyRequest, ProxyResponse};
use crate::balance::{Directory, Endpoint, ServiceBalancer};
use crate::metrics::HttpMetrics;
use crate::snapshot::routes::RouteTable;
use crate::snapshot::SnapshotStore;

/// Where a connection's requests go, decided when it is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The original destination was a service's `VIP:port`.
    Service(Arc<str>),
    /// A plain address: a non-mesh destination (passthrough), or inbound the application
    /// when the connection was not for a registered endpoint.
    Direct(SocketAddr),
    /// Inbound, the application behind an endpoint of `service`: requests are counted under
    /// that service.
    Local {
        /// Where the application answers (`127.0.0.1:<port>` / `[::1]:<port>`).
        app: SocketAddr,
        /// The service whose endpoint the connection was for.
        service: Arc<str>,
    },
    /// Not redirected: each request names its service by authority (`Host`/`:authority`);
    /// requests naming none go to `fallback` when set.
    ByAuthority {
        /// `--default-target`.
        fallback: Option<SocketAddr>,
    },
}

/// The destination of one request.
#[derive(Debug, Clone)]
pub enum Dest {
    /// Balanced over a service's endpoints.
    Service(Arc<ServiceBalancer>),
    /// One endpoint.
    Direct(Arc<Endpoint>),
}

/// Adds [`Route`].
#[derive(Debug, Clone)]
pub struct RouteLayer {
    ctx: Arc<ConnContext>,
    store: SnapshotStore,
    directory: Arc<Directory>,
    unrouted: Arc<HttpMetrics>,
}

impl RouteLayer {
    /// Routes with the connection's context over the directory's balancers; `unrouted` counts
    /// requests that match nothing.
    pub fn new(
        ctx: Arc<ConnContext>,
        store: SnapshotStore,
        directory: Arc<Directory>,
        unrouted: Arc<HttpMetrics>,
    ) -> Self {
        Self {
            ctx,
            store,
            directory,
            unrouted,
        }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Route<S> {
        Route {
            inner,
            layer: self.clone(),
            cached: None,
        }
    }
}

/// Resolves each request's [`Dest`].
#[derive(Debug, Clone)]
pub struct Route<S> {
    inner: S,
    layer: RouteLayer,
    cached: Option<Cached>,
}

/// The last decision of a connection, and what it depended on.
#[derive(Debug, Clone)]
struct Cached {
    /// Snapshot generation it was made at.
    generation: u64,
    /// The request's authority (`""` for none), when routing by authority.
    authority: String,
    dest: Dest,
    /// The routes of the destination's service, if it has any.
    routes: Option<Arc<RouteTable>>,
}

impl<S> Route<S> {
    /// The request's destination, and the series of the route it matches when the
    /// destination's service has routes.
    fn resolve(
        &mut self,
        req: &Request<Incoming>,
    ) -> Result<(Dest, Option<Arc<HttpMetrics>>), String> {
        let Self { layer, cached, .. } = self;
        let cached = layer.refresh(cached, req)?;
        let route = cached.routes.as_ref().map(|table| {
            let found = table.find(req.method(), req.uri().path());
            let metrics = layer.directory.metrics();
            table.series(layer.ctx.direction, metrics, found).clone()
        });
        Ok((cached.dest.clone(), route))
    }
}

impl RouteLayer {
    /// The connection's last decision (`cached`) when nothing it depends on changed, else
    /// looked up again (and kept when found).
    fn refresh<'c>(
        &self,
        cached: &'c mut Option<Cached>,
        req: &Request<Incoming>,
    ) -> Result<&'c Cached, String> {
        // Read before looking up: a snapshot published meanwhile makes the next request
        // look up again.
        let generation = self.store.generation();
        let by_authority = matches!(self.ctx.target, Target::ByAuthority { .. });
        let name = if by_authority {
            authority(req).unwrap_or("")
        } else {
            ""
        };
        let fresh = cached
            .as_ref()
            .is_some_and(|c| c.generation == generation && c.authority == name);
        if fresh {
            if let Some(c) = cached {
                return Ok(c);
            }
        }
        let dest = self.lookup(req)?;
        let routes = self.routes_of(&dest);
        Ok(match cached {
            Some(c) => {
                c.generation = generation;
                c.authority.clear();
                c.authority.push_str(name);
                c.dest = dest;
                c.routes = routes;
                c
            }
            None => cached.insert(Cached {
                generation,
                authority: name.to_string(),
                dest,
                routes,
            }),
        })
    }

    /// The route table of the service `dest` belongs to (balanced, or inbound the service
    /// of the local endpoint), if it has routes.
    fn routes_of(&self, dest: &Dest) -> Option<Arc<RouteTable>> {
        let service = match dest {
            Dest::Service(b) => Some(&**b.key()),
            Dest::Direct(endpoint) => endpoint.service(),
        }?;
        self.store.load().routes(service).cloned()
    }

    fn lookup(&self, req: &Request<Incoming>) -> Result<Dest, String> {
        match &self.ctx.target {
            Target::Service(key) => self
                .directory
                .service(key)
                .map(Dest::Service)
                .ok_or_else(|| format!("service {key} is not in the snapshot")),
            Target::Direct(addr) => Ok(Dest::Direct(self.directory.direct(*addr))),
            Target::Local { app, service } => {
                Ok(Dest::Direct(self.directory.local(*app, service.clone())))
            }
            Target::ByAuthority { fallback } => {
                let named = authority(req).and_then(|a| self.store.load().by_authority(a));
                if let Some(b) = named.and_then(|key| self.directory.service(&key)) {
                    return Ok(Dest::Service(b));
                }
                match fallback {
                    Some(addr) => Ok(resolve_addr(&self.store, &self.directory, *addr)),
                    None => Err(format!(
                        "no service named {:?} and no default target",
                        authority(req).unwrap_or("")
                    )),
                }
            }
        }
    }
}

/// A service when `addr` is a service's `VIP:port`, else the address itself.
pub fn resolve_addr(store: &SnapshotStore, directory: &Directory, addr: SocketAddr) -> Dest {
    let service = store.load().by_vip(addr).map(|t| t.service.clone());
    match service.and_then(|k| directory.service(&k)) {
        Some(b) => Dest::Service(b),
        None => Dest::Direct(directory.direct(addr)),
    }
}

impl<S> Service<ProxyRequest> for Route<S>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = ProxyResponse;
    type Error = Infallible;
    type Future = RouteFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ProxyRequest) -> Self::Future {
        match self.resolve(&req.http) {
            Ok((dest, route)) => {
                if let Some(r) = &route {
                    r.request();
                }
                req.dest = Some(dest);
                RouteFuture {
                    inner: LayerFuture::Inner(self.inner.call(req)),
                    route,
                }
            }
            Err(message) => {
                let unrouted = self.layer.unrouted.clone();
                unrouted.request();
                unrouted.failure();
                let resp = error_response(StatusCode::BAD_GATEWAY, &message);
                let routed = Routed {
                    service: Some(unrouted),
                    ..Routed::default()
                };
                RouteFuture {
                    inner: LayerFuture::Ready(Some(Box::new(ProxyResponse::new(resp, routed)))),
                    route: None,
                }
            }
        }
    }
}

/// The future of [`Route`]: the inner response, with the matched route's series attached to
/// it ([`Routed::route`]) for [`observe`](super::observe).
#[derive(Debug)]
pub struct RouteFuture<F> {
    inner: LayerFuture<F>,
    route: Option<Arc<HttpMetrics>>,
}

impl<F> Future for RouteFuture<F>
where
    F: Future<Output = Result<ProxyResponse, Infallible>> + Unpin,
{
    type Output = Result<ProxyResponse, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Poll::Ready(Ok(mut resp)) = Pin::new(&mut this.inner).poll(cx) else {
            return Poll::Pending;
        };
        if let Some(route) = this.route.take() {
            resp.routed.route = Some(route);
        }
        Poll::Ready(Ok(resp))
    }
}
