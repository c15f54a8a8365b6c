//! The innermost service: sends a request to its [`Picked`](super::balance::Picked) endpoint over the endpoint's
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

use super::observe::Routed;
use super::{error_response, ProxyBody, ProxyRequest, ProxyResponse, ResponseFuture};
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

/// What a header name is to a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// End to end.
    No,
    /// `Connection`: hop-by-hop, and lists more hop-by-hop names.
    Connection,
    /// Hop-by-hop whatever `Connection` says (RFC 9110 §7.6.1, plus the legacy `Keep-Alive`
    /// and `Proxy-Connection`).
    Fixed,
}

/// `name` is lowercase, as a `HeaderName` always is.
fn hop(name: &str) -> Hop {
    match name {
        "connection" => Hop::Connection,
        "upgrade"
        | "keep-alive"
        | "proxy-connection"
        | "proxy-authenticate"
        | "proxy-authorization"
        | "te"
        | "trailer" => Hop::Fixed,
        _ => Hop::No,
    }
}

/// A few items on the stack, any more in a `Vec`: [`strip_hop_by_hop`]'s lists (names
/// `Connection` lists, names to remove) rarely hold more than one or two.
struct Few<T> {
    inline: [Option<T>; 4],
    more: Vec<T>,
}

impl<T> Few<T> {
    fn new() -> Self {
        Self {
            inline: [const { None }; 4],
            more: Vec::new(),
        }
    }

    fn push(&mut self, item: T) {
        match self.inline.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(item),
            None => self.more.push(item),
        }
    }

    fn is_empty(&self) -> bool {
        self.inline[0].is_none()
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.inline
            .iter()
            .map_while(Option::as_ref)
            .chain(&self.more)
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
/// One pass over the headers finds them (most messages carry none, or only `Connection:
/// keep-alive`), and only the names found are removed: removing every candidate by name
/// hashed a dozen names per message and parsed and allocated the listed ones, a tenth of a
/// proxied request's instructions.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut doomed = Few::new();
    {
        // Names `Connection` lists beyond the fixed ones (and `close`, which names no header).
        let mut listed = Few::new();
        let mut last: *const HeaderName = std::ptr::null();
        // Every value in turn; the values of one name come one after the other, with the
        // same name.
        for (name, value) in headers.iter() {
            let kind = hop(name.as_str());
            if kind == Hop::No {
                continue;
            }
            if kind == Hop::Connection {
                let tokens = value.to_str().into_iter().flat_map(|v| v.split(','));
                for t in tokens.map(str::trim) {
                    let fixed = t.bytes().all(|b| !b.is_ascii_uppercase()) && hop(t) != Hop::No;
                    if !(t.is_empty() || fixed || t.eq_ignore_ascii_case("close")) {
                        listed.push(t);
                    }
                }
            }
            if !std::ptr::eq(last, name) {
                doomed.push(name.clone());
                last = name;
            }
        }
        if !listed.is_empty() {
            for name in headers.keys() {
                if listed.iter().any(|t| t.eq_ignore_ascii_case(name.as_str())) {
                    doomed.push(name.clone());
                }
            }
        }
    }
    for name in doomed.iter() {
        headers.remove(name);
    }
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
            http: mut req,
            picked,
            ..
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
        let upgrade = version == Version::Http1 && is_upgrade(req.headers());
        if version == Version::Http1 && !upgrade {
            strip_hop_by_hop(req.headers_mut());
        }
        Box::pin(async move {
            let mut endpoint = picked.endpoint.clone();
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
                service: picked.service,
                peer: Some(endpoint.metrics.clone()),
            };
            let resp = match result {
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
            Ok(ProxyResponse::new(resp, routed))
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
