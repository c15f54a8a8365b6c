//! W3C Trace Context: a request with a valid `traceparent` keeps it; one without (or with a
//! malformed one) gets a new one, so every hop of a request shares a trace id. The trace id
//! goes down the stack with the request ([`ProxyRequest::trace`]) for the access log. Spans are
//! not recorded (no collector). This outermost layer turns hyper's request into the stack's
//! [`ProxyRequest`].

use std::convert::Infallible;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::header::{Entry, HeaderName, HeaderValue};
use hyper::{Request, Response};
use tower::{Layer, Service};

use super::{ProxyBody, ProxyRequest};
use crate::balance::random;

/// The header name, parsed once (a `&str` name is parsed, and allocated when inserted, on
/// every use).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The trace id of a request (32 lowercase hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub [u8; 32]);

impl TraceId {
    /// As text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// Adds [`TraceContext`].
#[derive(Debug, Clone, Copy)]
pub struct TraceContextLayer;

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContext<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceContext { inner }
    }
}

/// Ensures every request carries a valid `traceparent`.
#[derive(Debug, Clone)]
pub struct TraceContext<S> {
    inner: S,
}

impl<S> Service<Request<Incoming>> for TraceContext<S>
where
    S: Service<ProxyRequest, Response = Response<ProxyBody>, Error = Infallible>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        // One lookup (the name hashed once) whether the header is kept, replaced or added.
        let id = match req.headers_mut().entry(TRACEPARENT) {
            Entry::Occupied(mut e) => match parse(e.get().as_bytes()) {
                Some(id) => id,
                None => {
                    let (value, id) = generate();
                    e.insert(value);
                    id
                }
            },
            Entry::Vacant(e) => {
                let (value, id) = generate();
                e.insert(value);
                id
            }
        };
        let mut req = ProxyRequest::new(req);
        req.trace = Some(id);
        self.inner.call(req)
    }
}

/// The trace id of a valid `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero).
pub fn parse(v: &[u8]) -> Option<TraceId> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    // Version ff is invalid; future versions may append fields after a dash.
    if &v[..2] == b"ff" || (v.len() > 55 && (&v[..2] == b"00" || v[55] != b'-')) {
        return None;
    }
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let (trace, span, flags) = (&v[3..35], &v[36..52], &v[53..55]);
    if !hex(&v[..2]) || !hex(trace) || !hex(span) || !hex(flags) {
        return None;
    }
    if trace.iter().all(|b| *b == b'0') || span.iter().all(|b| *b == b'0') {
        return None;
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(trace);
    Some(TraceId(id))
}

/// A fresh `traceparent` (sampled flag clear: nothing records it) and its trace id.
pub fn generate() -> (HeaderValue, TraceId) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let words = [random() | 1, random(), random() | 1];
    let mut put = |range: std::ops::Range<usize>, mut x: u64| {
        for i in range.rev() {
            buf[i] = HEX[(x & 0xf) as usize];
            x >>= 4;
        }
    };
    put(3..19, words[0]);
    put(19..35, words[1]);
    put(36..52, words[2]);
    let mut id = [0u8; 32];
    id.copy_from_slice(&buf[3..35]);
    // The buffer is ASCII hex and dashes: always a valid header value.
    let value = HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
    ));
    (value, TraceId(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_and_rejects_malformed() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse(ok).unwrap().as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"garbage",
        ] {
            assert!(parse(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future").is_some());
    }

    #[test]
    fn generated_headers_are_valid_and_distinct() {
        let (a, ida) = generate();
        let (b, _) = generate();
        assert_ne!(a, b);
        assert_eq!(parse(a.as_bytes()), Some(ida));
    }
}
