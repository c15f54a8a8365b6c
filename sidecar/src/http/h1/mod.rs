//! The upstream side of a proxied HTTP/1.1 request, driven inside the request's own task.
//!
//! hyper's client runs every connection as a task of its own and hands each request to it
//! through a channel, with a oneshot back for the response: two wake-ups across tasks and
//! the channel's bookkeeping per request (with its parsing, almost half of a hop's
//! instructions). Here a pooled connection ([`Conn`]: the socket and its two buffers) is
//! owned by the request while it is in use: the request's future writes the head and streams
//! the body ([`send`]), reads and parses the response head, and the response body
//! ([`ResponseBody`]) reads the rest from the same connection when the server connection polls
//! it, then puts the connection back in its pool. Nothing runs between requests, so an idle
//! connection is checked when it is taken ([`Conn::is_reusable`]): the reactor has marked it
//! readable if the upstream closed it (or sent something unasked).
//!
//! A request goes out as HTTP/1.1 without its hop-by-hop fields, framed as hyper's client
//! would frame it ([`codec::request_framing`]); its body is streamed while the response is
//! read, so an upstream may answer before reading it all (the connection is then not reused).
//! Upgrades (websocket, `CONNECT`) do not come here: they keep hyper's client on a connection
//! of their own.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::BytesMut;
use hyper::body::{Body as _, Frame, Incoming};
use hyper::header::HeaderMap;
use hyper::http::request::Parts;
use hyper::{Method, Request, Response};

use crate::pool::PoolReturn;
use crate::stream::Stream;
use codec::{Decoded, Decoder, Head, ReqFraming};

pub mod codec;
#[cfg(test)]
mod tests;

/// Read buffer of a connection (responses are read into it and body bytes handed out of it
/// without copies).
const READ_BUF: usize = 8 * 1024;
/// Request body bytes buffered for writing before the body is polled again.
const MAX_PENDING_WRITE: usize = 64 * 1024;

/// What went wrong with an upstream exchange.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the connection failed.
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before the response was complete.
    #[error("upstream closed the connection before the response was complete")]
    Closed,
    /// The response head is not HTTP/1.x.
    #[error("invalid upstream response: {0}")]
    Parse(httparse::Error),
    /// The response breaks HTTP/1.1 framing rules.
    #[error("invalid upstream response: {0}")]
    Protocol(&'static str),
    /// The client's request body failed (the client went away mid-body).
    #[error("request body: {0}")]
    RequestBody(hyper::Error),
}

/// One upstream HTTP/1.1 connection: its socket and buffers, reused from request to request.
#[derive(Debug)]
pub struct Conn {
    io: Stream,
    read: BytesMut,
    write: Vec<u8>,
    written: usize,
    names: codec::Names,
}

impl Conn {
    /// A fresh connection over `io`, boxed: it moves from pool to request to response body
    /// and back, and the futures and bodies that hold it stay small.
    pub fn new(io: impl Into<Stream>) -> Box<Self> {
        Box::new(Self {
            io: io.into(),
            read: BytesMut::with_capacity(READ_BUF),
            write: Vec::with_capacity(1024),
            written: 0,
            names: codec::Names::default(),
        })
    }

    /// True when an idle connection can carry a request: nothing left over from the last
    /// response, and the reactor has not seen it readable since (the upstream closed it or
    /// sent something unasked). No syscall unless it was seen readable.
    pub fn is_reusable(&mut self) -> bool {
        if !self.read.is_empty() || self.written != self.write.len() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                self.reserve_read();
                match self.io.try_read_buf(&mut self.read) {
                    Err(e) => e.kind() == io::ErrorKind::WouldBlock,
                    // End of stream, or bytes nobody asked for (a 408, say).
                    Ok(_) => false,
                }
            }
        }
    }

    fn pending_write(&self) -> bool {
        self.written < self.write.len()
    }

    /// Writes what is buffered.
    fn poll_write_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.write.len() {
            match self.io.try_write(&self.write[self.written..]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.write.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    fn reserve_read(&mut self) {
        // Room for a read; a buffer whose earlier bytes are all handed out and dropped is
        // reused from its start rather than reallocated.
        if self.read.capacity() - self.read.len() < READ_BUF / 2 {
            self.read.reserve(READ_BUF);
        }
    }

    /// Reads more into the read buffer; `Ok(0)` at end of stream. A read that drains the
    /// socket leaves it marked not ready (tokio clears readiness after a short read), so the
    /// read after the request is written waits for epoll instead of costing an `EAGAIN`.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.reserve_read();
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }
}

/// A request on its way out: its head, kept until a response head arrives (for a retry on
/// another connection), and its body, until it is streamed.
#[derive(Debug)]
pub struct Outgoing {
    parts: Parts,
    body: Option<Incoming>,
    framing: ReqFraming,
}

impl Outgoing {
    /// The request to send.
    pub fn new(req: Request<Incoming>) -> Self {
        let (parts, body) = req.into_parts();
        let framing = codec::request_framing(&parts.headers, body.is_end_stream());
        Self {
            parts,
            body: Some(body),
            framing,
        }
    }

    /// Safe to send again after an attempt that got no answer (RFC 9110 §9.2.2), as long as
    /// none of its body was taken.
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        )
    }
}

/// A failed exchange, and whether the request could be sent again elsewhere.
#[derive(Debug)]
pub struct Failure {
    /// What failed.
    pub error: Error,
    /// No byte of the request reached the connection.
    pub unsent: bool,
    /// No byte of a response arrived and the request body was not touched: a reused
    /// connection that the upstream closed while idle looks like this.
    pub unanswered: bool,
}

/// Sends `req` over `conn` and reads the response head; the response's body reads the rest
/// and gives `conn` back to `pool` when the exchange ends cleanly.
pub fn send(conn: Box<Conn>, req: &mut Outgoing, pool: Option<PoolReturn>) -> Exchange<'_> {
    Exchange {
        conn: Some(conn),
        pool,
        st: Progress {
            req,
            pump: None,
            started: false,
            wrote: false,
            body_touched: false,
            answered: false,
        },
    }
}

/// The future of [`send`]: the request written (and its body streamed) until the response
/// head has arrived.
#[derive(Debug)]
pub struct Exchange<'a> {
    conn: Option<Box<Conn>>,
    pool: Option<PoolReturn>,
    st: Progress<'a>,
}

/// How far an [`Exchange`] went.
#[derive(Debug)]
struct Progress<'a> {
    req: &'a mut Outgoing,
    pump: Option<Box<Pump>>,
    started: bool,
    wrote: bool,
    body_touched: bool,
    answered: bool,
}

impl Future for Exchange<'_> {
    type Output = Result<Response<ResponseBody>, Failure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(Err(Failure {
                error: Error::Closed,
                unsent: false,
                unanswered: false,
            }));
        };
        let head = match this.st.poll_head(conn, cx) {
            Poll::Ready(Ok(head)) => head,
            Poll::Ready(Err((error, unsent))) => {
                this.conn = None;
                return Poll::Ready(Err(this.st.fail(error, unsent)));
            }
            Poll::Pending => return Poll::Pending,
        };
        let mut body = ResponseBody {
            conn: this.conn.take(),
            decoder: Decoder::new(head.framing),
            pump: this.st.pump.take(),
            keep_alive: head.keep_alive,
            pool: this.pool.take(),
        };
        if body.decoder.is_done() {
            body.finish();
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        // The request's field map, refilled with the response's fields.
        *resp.headers_mut() = std::mem::take(&mut this.st.req.parts.headers);
        if let Some(reason) = head.reason {
            resp.extensions_mut().insert(reason);
        }
        Poll::Ready(Ok(resp))
    }
}

impl Progress<'_> {
    fn fail(&mut self, error: Error, unsent: bool) -> Failure {
        // A body never polled goes back with the request.
        if !self.body_touched {
            if let Some(p) = self.pump.take() {
                self.req.body = Some(p.body);
            }
        }
        Failure {
            error,
            unsent,
            unanswered: !self.answered && !self.body_touched,
        }
    }

    /// Writes the request (streaming its body) and reads until a final response head.
    /// An error says whether nothing of the request was written.
    fn poll_head(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Head, (Error, bool)>> {
        if !self.started {
            self.started = true;
            let p = &mut self.req.parts;
            codec::encode_head(
                &p.method,
                &p.uri,
                p.version,
                &mut p.headers,
                self.req.framing,
                &mut conn.write,
            );
            if self.req.framing != ReqFraming::Empty {
                if let Some(body) = self.req.body.take() {
                    // Boxed: most requests have no body, and the futures stay small.
                    self.pump = Some(Box::new(Pump {
                        body,
                        framing: self.req.framing,
                    }));
                }
            }
        }
        loop {
            if conn.pending_write() {
                let before = conn.written;
                let written = conn.poll_write_all(cx);
                if conn.written > before || matches!(written, Poll::Ready(Ok(()))) {
                    self.wrote = true;
                }
                if let Poll::Ready(Err(e)) = written {
                    return Poll::Ready(Err((e.into(), !self.wrote)));
                }
            }
            if !conn.pending_write() {
                if let Some(pump) = self.pump.as_mut() {
                    match pump.poll_encode(cx, &mut conn.write) {
                        Poll::Ready(Ok(done)) => {
                            self.body_touched = true;
                            if done {
                                self.pump = None;
                            }
                            continue;
                        }
                        Poll::Ready(Err(e)) => {
                            self.body_touched = true;
                            return Poll::Ready(Err((e, false)));
                        }
                        Poll::Pending => {}
                    }
                }
            }
            if !conn.read.is_empty() {
                if !self.answered {
                    // No retry once the upstream has answered: the request's field map is
                    // emptied and holds the response's fields (no allocation).
                    self.answered = true;
                    self.req.parts.headers.clear();
                }
                let p = &mut self.req.parts;
                match codec::parse_head(&mut conn.read, &p.method, &mut p.headers, &mut conn.names)
                {
                    Ok(Some(head)) => return Poll::Ready(Ok(head)),
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err((e, false))),
                }
            }
            match conn.poll_read_more(cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err((Error::Closed, false))),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err((e.into(), false))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A request body being streamed into the connection's write buffer.
#[derive(Debug)]
struct Pump {
    body: Incoming,
    framing: ReqFraming,
}

impl Pump {
    /// Moves body frames into `out` until it holds enough to write or the body waits.
    /// `Ready(Ok(true))`: the whole body is encoded; `Ready(Ok(false))`: some was.
    fn poll_encode(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
    ) -> Poll<Result<bool, Error>> {
        let mut encoded = false;
        while out.len() < MAX_PENDING_WRITE {
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending if encoded => return Poll::Ready(Ok(false)),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(self.end(None, out).map(|()| true)),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Error::RequestBody(e))),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let frame = match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    match &mut self.framing {
                        ReqFraming::Chunked => codec::encode_chunk(&data, out),
                        ReqFraming::Length(left) => {
                            let Some(rest) = left.checked_sub(data.len() as u64) else {
                                return Poll::Ready(Err(Error::Protocol(
                                    "request body longer than its Content-Length",
                                )));
                            };
                            *left = rest;
                            out.extend_from_slice(&data);
                        }
                        ReqFraming::Empty => {}
                    }
                    encoded = true;
                    continue;
                }
                Err(frame) => frame,
            };
            if let Ok(trailers) = frame.into_trailers() {
                return Poll::Ready(self.end(Some(&trailers), out).map(|()| true));
            }
        }
        Poll::Ready(Ok(false))
    }

    fn end(&mut self, trailers: Option<&HeaderMap>, out: &mut Vec<u8>) -> Result<(), Error> {
        match self.framing {
            ReqFraming::Chunked => codec::encode_last_chunk(trailers, out),
            ReqFraming::Length(0) | ReqFraming::Empty => {}
            ReqFraming::Length(_) => {
                return Err(Error::Protocol(
                    "request body shorter than its Content-Length",
                ))
            }
        }
        self.framing = ReqFraming::Empty;
        Ok(())
    }
}

/// A response body read from its connection, in the task that polls it. It keeps streaming
/// the request body while the response is read, and puts the connection back in its pool
/// when both are complete and the upstream keeps it open.
#[derive(Debug)]
pub struct ResponseBody {
    conn: Option<Box<Conn>>,
    decoder: Decoder,
    pump: Option<Box<Pump>>,
    keep_alive: bool,
    pool: Option<PoolReturn>,
}

impl ResponseBody {
    /// The body has ended: the connection goes back when it is clean, else it is closed.
    fn finish(&mut self) {
        self.decoder = Decoder::Done;
        let Some(conn) = self.conn.take() else {
            return;
        };
        let clean =
            self.keep_alive && self.pump.is_none() && !conn.pending_write() && conn.read.is_empty();
        if clean {
            if let Some(pool) = self.pool.take() {
                pool.give_back(conn);
            }
        }
    }

    /// Fails the body: the connection is closed.
    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<bytes::Bytes>, Error>>> {
        self.decoder = Decoder::Done;
        self.conn = None;
        self.pump = None;
        Poll::Ready(Some(Err(e)))
    }

    /// Streams more of the request body, without waiting; a failure only makes the
    /// connection unusable afterwards (the response may still be complete).
    fn pump(&mut self, cx: &mut Context<'_>) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        loop {
            if conn.pending_write() {
                match conn.poll_write_all(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Pending => return,
                    Poll::Ready(Err(_)) => {
                        self.keep_alive = false;
                        self.pump = None;
                        conn.write.clear();
                        conn.written = 0;
                        return;
                    }
                }
            }
            let Some(pump) = self.pump.as_mut() else {
                return;
            };
            match pump.poll_encode(cx, &mut conn.write) {
                Poll::Ready(Ok(true)) => self.pump = None,
                Poll::Ready(Ok(false)) => {}
                Poll::Pending => return,
                Poll::Ready(Err(_)) => {
                    self.keep_alive = false;
                    self.pump = None;
                    return;
                }
            }
        }
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = bytes::Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, Error>>> {
        let this = &mut *self;
        loop {
            if this.pump.is_some() {
                this.pump(cx);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.read) {
                Err(e) => return this.fail(e),
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    if data.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(trailers)) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => match conn.poll_read_more(cx) {
                    Poll::Ready(Ok(0)) if this.decoder == Decoder::Close => {
                        this.keep_alive = false;
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Ok(0)) => return this.fail(Error::Closed),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return this.fail(e.into()),
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.decoder {
            Decoder::Done => hyper::body::SizeHint::with_exact(0),
            Decoder::Length(n) => hyper::body::SizeHint::with_exact(n),
            _ => hyper::body::SizeHint::default(),
        }
    }
}
