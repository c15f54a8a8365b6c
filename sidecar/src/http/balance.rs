//! Per-request endpoint choice: takes the request's [`Dest`], asks the service's balancer
//! (with the request's hash key for hashing policies) and records the [`Picked`] endpoint.
//! One HTTP/2 or keep-alive connection is thereby spread over every endpoint.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::header::COOKIE;
use hyper::{Request, Response, StatusCode};
use tower::{Layer, Service};

use super::observe::Routed;
use super::route::Dest;
use super::{error_response, ConnContext, ProxyBody, ResponseFuture};
use crate::balance::{hash_bytes, Endpoint, HashKey, ServiceBalancer};
use crate::metrics::HttpMetrics;

/// The endpoint chosen for a request.
#[derive(Debug, Clone)]
pub struct Picked {
    /// The endpoint.
    pub endpoint: Arc<Endpoint>,
    /// Metrics of the service it was picked for, if any.
    pub service: Option<Arc<HttpMetrics>>,
    /// The service's balancer, to pick again when the endpoint cannot be reached.
    pub balancer: Option<Arc<ServiceBalancer>>,
    /// The request's hash key.
    pub key: Option<u64>,
}

/// Adds [`Balance`].
#[derive(Debug, Clone)]
pub struct BalanceLayer {
    ctx: Arc<ConnContext>,
}

impl BalanceLayer {
    /// Balances with the connection's context (its client address for `hash:source`).
    pub fn new(ctx: Arc<ConnContext>) -> Self {
        Self { ctx }
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;
    fn layer(&self, inner: S) -> Balance<S> {
        Balance {
            inner,
            ctx: self.ctx.clone(),
        }
    }
}

/// Picks an endpoint per request.
#[derive(Debug, Clone)]
pub struct Balance<S> {
    inner: S,
    ctx: Arc<ConnContext>,
}

/// The hash of the request's key for a hashing balancer, if the request has one.
fn request_key(b: &ServiceBalancer, req: &Request<Incoming>, ctx: &ConnContext) -> Option<u64> {
    match b.hash_key()? {
        HashKey::Header(name) => req
            .headers()
            .get(name.as_str())
            .map(|v| hash_bytes(v.as_bytes())),
        HashKey::Cookie(name) => req
            .headers()
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| hash_bytes(v.as_bytes()))
            }),
        HashKey::Source => Some(match ctx.client.ip() {
            std::net::IpAddr::V4(ip) => hash_bytes(&ip.octets()),
            std::net::IpAddr::V6(ip) => hash_bytes(&ip.octets()),
        }),
    }
}

impl<S> Service<Request<Incoming>> for Balance<S>
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

    fn call(&mut self, mut req: Request<Incoming>) -> ResponseFuture {
        let picked = match req.extensions_mut().remove::<Dest>() {
            Some(Dest::Direct(endpoint)) => Ok(Picked {
                service: endpoint.service_metrics.clone(),
                endpoint,
                balancer: None,
                key: None,
            }),
            Some(Dest::Service(b)) => {
                let key = request_key(&b, &req, &self.ctx);
                match b.pick(key) {
                    Some(endpoint) => Ok(Picked {
                        endpoint,
                        service: Some(b.metrics.clone()),
                        balancer: Some(b.clone()),
                        key,
                    }),
                    None => Err(b),
                }
            }
            None => {
                return Box::pin(async {
                    Ok(error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "request reached the balancer without a route",
                    ))
                })
            }
        };
        match picked {
            Ok(p) => {
                if let Some(s) = &p.service {
                    s.request();
                }
                p.endpoint.metrics.request();
                req.extensions_mut().insert(p);
                self.inner.call(req)
            }
            Err(b) => {
                b.metrics.request();
                b.metrics.failure();
                let message = format!("service {} has no available endpoints", b.key());
                Box::pin(async move {
                    let mut resp = error_response(StatusCode::SERVICE_UNAVAILABLE, &message);
                    resp.extensions_mut().insert(Routed {
                        service: Some(b.metrics.clone()),
                        peer: None,
                    });
                    Ok(resp)
                })
            }
        }
    }
}
