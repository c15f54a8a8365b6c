//! [`ProxyBody`]: the response body the sidecar sends downstream — an upstream body passed
//! through frame by frame (HTTP/1.1 read by [`super::h1`], which gives its pooled connection
//! back itself, or hyper's for HTTP/2 and upgrades), or a small body of its own (errors,
//! admin). It carries what must live exactly as long as the response: the endpoint's
//! in-flight count.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::h1;
use crate::balance::InFlight;

/// Any error of a body passed through.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body of every proxied or generated response.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    in_flight: Option<InFlight>,
}

#[derive(Debug)]
enum Inner {
    H1(h1::ResponseBody),
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// An HTTP/1.1 upstream body (see [`h1`]).
    pub fn h1(body: h1::ResponseBody) -> Self {
        Self {
            inner: Inner::H1(body),
            in_flight: None,
        }
    }

    /// A body from hyper's client (HTTP/2, upgrades).
    pub fn upstream(body: Incoming) -> Self {
        Self {
            inner: Inner::Upstream(body),
            in_flight: None,
        }
    }

    /// Holds the endpoint's `in_flight` count until the body ends.
    pub fn set_in_flight(&mut self, in_flight: InFlight) {
        if self.is_end_stream() {
            // Already complete (no body): the request is over for the balancer too.
            return;
        }
        self.in_flight = Some(in_flight);
    }

    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            inner: Inner::Full(Some(bytes.into())),
            in_flight: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            inner: Inner::Full(None),
            in_flight: None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled: Poll<Option<Result<Frame<Bytes>, BoxError>>> = match &mut this.inner {
            Inner::Full(b) => {
                return Poll::Ready(
                    b.take()
                        .filter(|b| !b.is_empty())
                        .map(|b| Ok(Frame::data(b))),
                )
            }
            Inner::H1(body) => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if body.is_end_stream() {
                    // Ended with its last data frame: the request is over.
                    this.in_flight = None;
                }
                polled.map(|f| f.map(|f| f.map_err(BoxError::from)))
            }
            Inner::Upstream(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BoxError::from))),
        };
        if let Poll::Ready(None | Some(Err(_))) = &polled {
            this.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            Inner::H1(body) => body.is_end_stream(),
            Inner::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::H1(body) => body.size_hint(),
            Inner::Upstream(body) => body.size_hint(),
        }
    }
}
