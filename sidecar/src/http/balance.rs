//! Per-request endpoint choice: takes the request's [`Dest`], asks the service's balancer
//! (with the request's hash key for hashing policies) and records the [`Picked`] endpoint in
//! [`ProxyRequest::picked`].
//! One HTTP/2 or keep-alive connection is thereby spread over every endpoint.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::header::COOKIE;
use hyper::{Request, StatusCode};
use tower::{Layer, Service};

use super::observe::Routed;
use super::route::Dest;
use super::{error_response, ConnContext, LayerFuture, ProxyRequest, ProxyResponse};
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

/// The hash of the request's `key` (what a hashing balancer hashes), if the request has one.
fn request_key(key: &HashKey, req: &Request<Incoming>, ctx: &ConnContext) -> Option<u64> {
    match key {
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
                (k == name.as_str()).then(|| hash_bytes(v.as_bytes()))
            }),
        HashKey::Source => Some(match ctx.client.ip() {
            std::net::IpAddr::V4(ip) => hash_bytes(&ip.octets()),
            std::net::IpAddr::V6(ip) => hash_bytes(&ip.octets()),
        }),
    }
}

impl<S> Service<ProxyRequest> for Balance<S>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = ProxyResponse;
    type Error = Infallible;
    type Future = LayerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ProxyRequest) -> Self::Future {
        let picked = match req.dest.take() {
            Some(Dest::Direct(endpoint)) => Ok(Picked {
                service: endpoint.service_metrics.clone(),
                endpoint,
                balancer: None,
                key: None,
            }),
            Some(Dest::Service(b)) => {
                let (endpoint, key) = b.pick_for(|k| request_key(k, &req.http, &self.ctx));
                match endpoint {
                    Some(endpoint) => Ok(Picked {
                        endpoint,
                        service: Some(b.metrics.clone()),
                        balancer: Some(b),
                        key,
                    }),
                    None => Err(b),
                }
            }
            None => {
                let resp = error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "request reached the balancer without a route",
                );
                return LayerFuture::Ready(Some(Box::new(ProxyResponse::new(
                    resp,
                    Routed::default(),
                ))));
            }
        };
        match picked {
            Ok(p) => {
                if let Some(s) = &p.service {
                    s.request();
                }
                p.endpoint.metrics.request();
                req.picked = Some(p);
                LayerFuture::Inner(self.inner.call(req))
            }
            Err(b) => {
                b.metrics.request();
                b.metrics.failure();
                let message = format!("service {} has no available endpoints", b.key());
                let resp = error_response(StatusCode::SERVICE_UNAVAILABLE, &message);
                let routed = Routed {
                    service: Some(b.metrics.clone()),
                    peer: None,
                    ..Routed::default()
                };
                LayerFuture::Ready(Some(Box::new(ProxyResponse::new(resp, routed))))
            }
        }
    }
}
