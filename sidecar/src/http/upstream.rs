//! The innermost service: sends a request to its [`Picked`](super::balance::Picked) endpoint over the endpoint's
//! connection pool, in the connection's HTTP version, and wraps the response body so the
//! endpoint's in-flight count (and, in HTTP/1.1, the pooled connection) is released when it
//! ends.
//!
//! Hop-by-hop headers are removed on HTTP/1.1 (RFC 9110 §7.6.1; by [`super::h1`] as it writes
//! and parses heads), except on upgrades (websocket, `CONNECT`), which get a dedicated
//! upstream connection through hyper's client; after `101 Switching Protocols` (or a `2xx`
//! to `CONNECT`) both upgraded connections are spliced together.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tower::Service;

use super::balance::Picked;
use super::observe::Routed;
use super::{error_response, h1, ProxyBody, ProxyRequest, ProxyResponse, ResponseFuture};
use crate::balance::{Endpoint, InFlight};
use crate::pool::{SendError, UpstreamError, Version};

/// Other endpoints tried when the picked one cannot be connected to.
const REPICKS: usize = 2;
/// Latency charged to an endpoint for a failure.
const FAILURE_PENALTY: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends requests upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    version: Version,
}

impl Upstream {
    /// Speaks `version` upstream.
    pub fn new(version: Version) -> Self {
        Self { version }
    }
}

/// The names that are hop-by-hop whatever `Connection` says (RFC 9110 §7.6.1, plus the
/// legacy `Keep-Alive` and `Proxy-Connection`), `Connection` first. A `static`: a `const`
/// array would be built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
];

/// The index of `name` in [`HOP_BY_HOP`]; `name` is lowercase, as a `HeaderName` always is.
pub(crate) fn hop_by_hop_index(name: &[u8]) -> Option<u32> {
    match name {
        b"connection" => Some(0),
        b"upgrade" => Some(1),
        b"keep-alive" => Some(2),
        b"proxy-connection" => Some(3),
        b"proxy-authenticate" => Some(4),
        b"proxy-authorization" => Some(5),
        b"te" => Some(6),
        b"trailer" => Some(7),
        _ => None,
    }
}

/// True when the request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including those the `Connection` header lists.
///
/// One pass over the names present finds the fixed ones (most messages carry none, or only
/// `Connection: keep-alive`), and only those are removed, by their constant names; the
/// `Connection` tokens are read only when there is one, and a name it lists costs an
/// allocation only when it names something else. Removing every candidate by name hashed a
/// dozen names per message and parsed and allocated the listed ones: a tenth of a proxied
/// request's instructions.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str().as_bytes()) {
            present |= 1 << i;
        }
    }
    if present & 1 != 0 {
        for name in listed_in_connection(headers) {
            headers.remove(name);
        }
    }
    while present != 0 {
        headers.remove(&HOP_BY_HOP[present.trailing_zeros() as usize]);
        present &= present - 1;
    }
}

/// The headers present that `Connection` lists, besides the fixed hop-by-hop ones (and
/// `close`, which names no header); empty, without allocating, in the usual case. A token in
/// another case than lowercase is simply looked for among the names present.
fn listed_in_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut listed = Vec::new();
    let tokens = headers
        .get_all(CONNECTION)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii);
    for t in tokens {
        if t.is_empty() || t == b"close" || hop_by_hop_index(t).is_some() {
            continue;
        }
        let named = headers
            .keys()
            .find(|n| t.eq_ignore_ascii_case(n.as_str().as_bytes()));
        if let Some(name) = named {
            listed.push(name.clone());
        }
    }
    listed
}

impl Service<ProxyRequest> for Upstream {
    type Response = ProxyResponse;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ProxyRequest) -> ResponseFuture {
        let version = self.version;
        let ProxyRequest {
            http: req, picked, ..
        } = req;
        let Some(picked) = picked else {
            let resp = error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "request reached upstream without an endpoint",
            );
            return Box::pin(std::future::ready(Ok(ProxyResponse::new(
                resp,
                Routed::default(),
            ))));
        };
        let upgrade = version == Version::Http1
            && (req.method() == hyper::Method::CONNECT || is_upgrade(req.headers()));
        // One future per kind, each boxed at its own size: the HTTP/1.1 one, which every
        // plain request allocates, holds the request once and stays within the allocator's
        // per-thread cache.
        if version == Version::Http1 && !upgrade {
            Box::pin(forward_h1(picked, h1::Outgoing::new(req)))
        } else {
            Box::pin(forward(picked, req, upgrade))
        }
    }
}

/// A plain HTTP/1.1 request, over the endpoint's pool (see [`h1`]).
async fn forward_h1(picked: Picked, mut req: h1::Outgoing) -> Result<ProxyResponse, Infallible> {
    let mut endpoint = picked.endpoint.clone();
    let mut attempts = 0;
    loop {
        let in_flight = endpoint.start();
        let error = match endpoint.pool.send_h1(&mut req).await {
            Ok(resp) => {
                return Ok(answer(
                    picked,
                    endpoint,
                    in_flight,
                    Ok(resp.map(ProxyBody::h1)),
                ))
            }
            Err(e) => e,
        };
        // Not sent (no connection): another endpoint of the service may answer.
        if error.request.is_none() || !repick(&picked, &mut endpoint, &mut attempts, &error.error) {
            return Ok(answer(picked, endpoint, in_flight, Err(error.error)));
        }
    }
}

/// An HTTP/2 request (over the endpoint's shared connection) or an upgrade (over one of its
/// own).
async fn forward(
    picked: Picked,
    mut req: Request<Incoming>,
    upgrade: bool,
) -> Result<ProxyResponse, Infallible> {
    let mut endpoint = picked.endpoint.clone();
    let mut attempts = 0;
    loop {
        let in_flight = endpoint.start();
        let result = if upgrade {
            // Boxed, as the connects in the pool: connecting is a large future and rare.
            Box::pin(send_upgrade(&endpoint, req))
                .await
                .map_err(SendError::from)
        } else {
            endpoint
                .pool
                .send_h2(req)
                .await
                .map(|r| r.map(ProxyBody::upstream))
        };
        match result {
            Ok(resp) => return Ok(answer(picked, endpoint, in_flight, Ok(resp))),
            Err(SendError {
                error,
                request: Some(back),
            }) => {
                // Not sent (no connection): another endpoint of the service may answer.
                if !repick(&picked, &mut endpoint, &mut attempts, &error) {
                    return Ok(answer(picked, endpoint, in_flight, Err(error)));
                }
                req = back;
            }
            Err(e) => return Ok(answer(picked, endpoint, in_flight, Err(e.error))),
        }
    }
}

/// After `endpoint` could not be connected to: charges it the failure and picks another
/// endpoint of the service (at most [`REPICKS`] times). False when there is none to try.
fn repick(
    picked: &Picked,
    endpoint: &mut Arc<Endpoint>,
    attempts: &mut usize,
    error: &UpstreamError,
) -> bool {
    let Some(balancer) = picked.balancer.as_ref().filter(|_| *attempts < REPICKS) else {
        return false;
    };
    *attempts += 1;
    endpoint.observe(FAILURE_PENALTY);
    endpoint.metrics.failure();
    tracing::debug!(peer = %endpoint.addr(), %error, "endpoint unreachable; picking another");
    match balancer.pick(picked.key) {
        Some(next) => {
            next.metrics.request();
            *endpoint = next;
            true
        }
        None => false,
    }
}

/// The response to pass up, counted in the endpoint's (and service's) series: the upstream's,
/// holding the endpoint's in-flight count until its body ends, or a 502.
fn answer(
    picked: Picked,
    endpoint: Arc<Endpoint>,
    in_flight: InFlight,
    result: Result<Response<ProxyBody>, UpstreamError>,
) -> ProxyResponse {
    let routed = Routed {
        service: picked.service,
        peer: Some(endpoint.metrics.clone()),
        ..Routed::default()
    };
    let resp = match result {
        Ok(mut resp) => {
            endpoint.observe_since(in_flight.started());
            resp.body_mut().set_in_flight(in_flight);
            resp
        }
        Err(e) => {
            // A failure counts as a slow answer, so P2C steers away from the endpoint.
            endpoint.observe(in_flight.started().elapsed().max(FAILURE_PENALTY));
            endpoint.metrics.failure();
            if let Some(s) = &routed.service {
                s.failure();
            }
            tracing::debug!(peer = %endpoint.addr(), error = %e, "upstream request failed");
            error_response(StatusCode::BAD_GATEWAY, &e.to_string())
        }
    };
    ProxyResponse::new(resp, routed)
}

/// Sends an upgrade (or `CONNECT`) over a connection of its own and, when the upstream
/// agrees, splices the two upgraded connections together.
async fn send_upgrade(
    endpoint: &crate::balance::Endpoint,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, crate::pool::UpstreamError> {
    let connect = req.method() == hyper::Method::CONNECT;
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = endpoint.pool.send_unpooled(req).await?;
    let upgraded =
        resp.status() == StatusCode::SWITCHING_PROTOCOLS || (connect && resp.status().is_success());
    if !upgraded {
        strip_hop_by_hop(resp.headers_mut());
    }
    // The upgrade response keeps its Connection/Upgrade headers.
    if upgraded {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) else {
                return;
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
    Ok(resp.map(ProxyBody::upstream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_upgrades_are_seen() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-app", "1".parse().unwrap());
        assert!(!is_upgrade(&h));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-app"));
        // Listed names are matched case-insensitively, several Connection headers count, the
        // fixed names go whether listed or not, and many at once are all removed.
        let mut h = HeaderMap::new();
        h.append(CONNECTION, "close, X-One".parse().unwrap());
        h.append(CONNECTION, " x-two ,TE".parse().unwrap());
        for name in [
            "x-one",
            "x-two",
            "te",
            "trailer",
            "upgrade",
            "proxy-connection",
        ] {
            h.insert(name, "1".parse().unwrap());
        }
        for i in 0..12 {
            let name: HeaderName = format!("x-hop-{i}").parse().unwrap();
            h.insert(name, "1".parse().unwrap());
            h.append(CONNECTION, format!("x-hop-{i}").parse().unwrap());
        }
        h.insert("x-keep", "1".parse().unwrap());
        h.insert(http::header::HOST, "web".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["host", "x-keep"]);
        // Nothing hop-by-hop: untouched.
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, "web".parse().unwrap());
        h.append("x-multi", "1".parse().unwrap());
        h.append("x-multi", "2".parse().unwrap());
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "Upgrade".parse().unwrap());
        h.insert(UPGRADE, "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
    }
}
