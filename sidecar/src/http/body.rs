//! [`ProxyBody`]: the response body the sidecar sends downstream — an upstream body passed
//! through frame by frame, or a small body of its own (errors, admin). It carries what must
//! live exactly as long as the response: the endpoint's in-flight count and the pooled
//! connection, given back once the body has been read to the end.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::balance::InFlight;
use crate::pool::PoolReturn;

/// The response body of every proxied or generated response.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    in_flight: Option<InFlight>,
    give_back: Option<PoolReturn>,
}

#[derive(Debug)]
enum Inner {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// An upstream body; `in_flight` ends and `give_back` runs when it ends.
    pub fn upstream(
        body: Incoming,
        in_flight: Option<InFlight>,
        give_back: Option<PoolReturn>,
    ) -> Self {
        Self {
            inner: Inner::Upstream(body),
            in_flight,
            give_back,
        }
    }

    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            inner: Inner::Full(Some(bytes.into())),
            in_flight: None,
            give_back: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            inner: Inner::Full(None),
            in_flight: None,
            give_back: None,
        }
    }

    fn finish(&mut self) {
        self.in_flight = None;
        if let Some(g) = self.give_back.take() {
            g.give_back();
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper may not poll a body whose end it already knows (empty, or Content-Length
        // reached): it is still complete, so the connection is reusable.
        if self.give_back.is_some() && self.is_end_stream() {
            self.finish();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match &mut this.inner {
            Inner::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Inner::Upstream(body) => {
                let polled = Pin::new(body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => this.finish(),
                    Poll::Ready(Some(Err(_))) => {
                        this.give_back = None;
                        this.in_flight = None;
                    }
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            Inner::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(body) => body.size_hint(),
        }
    }
}
