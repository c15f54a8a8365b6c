//! The innermost service: sends a request to its [`Picked`] endpoint over the endpoint's
//! connection pool, in the connection's HTTP version, and wraps the response body so the
//! endpoint's in-flight count and the pooled connection are released when it ends.
//!
//! Hop-by-hop headers are removed on HTTP/1.1 (RFC 9110 §7.6.1), except on upgrades
//! (websocket), which get a dedicated upstream connection; after `101 Switching Protocols`
//! both upgraded connections are spliced together.

use std::convert::Infallible;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tower::Service;

use super::balance::Picked;
use super::observe::Routed;
use super::{error_response, ProxyBody, ResponseFuture};
use crate::pool::{SendError, Version};

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

/// Parsed once: removing by a `&str` parses and validates the name on every call, which was
/// a seventh of a proxied request's instructions.
const HOP_BY_HOP: [HeaderName; 6] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
];

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
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(UPGRADE);
}

impl Service<Request<Incoming>> for Upstream {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> ResponseFuture {
        let version = self.version;
        Box::pin(async move {
            let Some(picked) = req.extensions_mut().remove::<Picked>() else {
                return Ok(error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "request reached upstream without an endpoint",
                ));
            };
            let mut endpoint = picked.endpoint.clone();
            let upgrade = version == Version::Http1 && is_upgrade(req.headers());
            if version == Version::Http1 && !upgrade {
                strip_hop_by_hop(req.headers_mut());
            }
            let mut attempts = 0;
            let (result, in_flight) = loop {
                let in_flight = endpoint.start();
                let result = if upgrade {
                    send_upgrade(&endpoint, req).await.map_err(SendError::from)
                } else {
                    endpoint
                        .pool
                        .send(req, version)
                        .await
                        .map(|sent| (sent.response, sent.give_back))
                };
                match result {
                    // Not sent (no connection): another endpoint of the service may answer.
                    Err(SendError {
                        error,
                        request: Some(back),
                    }) if attempts < REPICKS && picked.balancer.is_some() => {
                        attempts += 1;
                        endpoint.observe(FAILURE_PENALTY);
                        endpoint.metrics.failure();
                        tracing::debug!(peer = %endpoint.addr(), %error, "endpoint unreachable; picking another");
                        let next = picked.balancer.as_ref().and_then(|b| b.pick(picked.key));
                        match next {
                            Some(next) => {
                                next.metrics.request();
                                endpoint = next;
                                req = back;
                            }
                            None => break (Err(error), in_flight),
                        }
                    }
                    Err(e) => break (Err(e.error), in_flight),
                    Ok(ok) => break (Ok(ok), in_flight),
                }
            };
            let routed = Routed {
                service: picked.service.clone(),
                peer: Some(endpoint.metrics.clone()),
            };
            let mut resp = match result {
                Ok((resp, give_back)) => {
                    endpoint.observe(in_flight.started().elapsed());
                    let (mut parts, body) = resp.into_parts();
                    if version == Version::Http1 && parts.status != StatusCode::SWITCHING_PROTOCOLS
                    {
                        strip_hop_by_hop(&mut parts.headers);
                    }
                    Response::from_parts(
                        parts,
                        ProxyBody::upstream(body, Some(in_flight), give_back),
                    )
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
            resp.extensions_mut().insert(routed);
            Ok(resp)
        })
    }
}

type Upgraded = (Response<Incoming>, Option<crate::pool::PoolReturn>);

async fn send_upgrade(
    endpoint: &crate::balance::Endpoint,
    mut req: Request<Incoming>,
) -> Result<Upgraded, crate::pool::UpstreamError> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = endpoint.pool.send_unpooled(req).await?;
    // The upgrade response keeps its Connection/Upgrade headers.
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
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
    Ok((resp, None))
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
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "Upgrade".parse().unwrap());
        h.insert(UPGRADE, "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
    }
}
