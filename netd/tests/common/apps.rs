//! Unmodified applications for the mesh end-to-end tests, beyond the HTTP/1.1 ones of
//! `netd::mesh::probe`: an h2c server that also answers gRPC (a length-prefixed message and
//! `grpc-status` trailers, framed by hand over hyper's HTTP/2), its client side, a TLS server
//! and client (rustls, self-signed certificates from rcgen), and a binary echo that answers
//! a half-close. Servers run on the caller's tokio runtime on listeners bound inside a
//! container's namespace; each answers with its replica's name, so a test can tell who served.
//! Everything the clients do is bounded by [`IO_TIMEOUT`].

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Longest wait for any exchange of the clients here.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A client-side failure, as text for the test's message.
pub type Failed = String;

/// `f` bounded by [`IO_TIMEOUT`].
async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Failed> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {IO_TIMEOUT:?}")),
    }
}

/// A listener bound (by the caller, inside a namespace) as a std socket, for tokio; call in
/// the runtime's context.
pub fn tokio_listener(l: std::net::TcpListener) -> TcpListener {
    l.set_nonblocking(true).expect("non-blocking listener");
    TcpListener::from_std(l).expect("tokio listener")
}

/// A connection opened (by the caller, inside a namespace) as a std socket, for tokio; call in
/// the runtime's context.
pub fn tokio_stream(s: std::net::TcpStream) -> TcpStream {
    s.set_nonblocking(true).expect("non-blocking stream");
    TcpStream::from_std(s).expect("tokio stream")
}

/// Accepts on `listener` forever (until the runtime goes), serving each connection with
/// `serve` on its own task.
fn accept_loop<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(serve(s));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
}

// ---- h2c and gRPC ----------------------------------------------------------------------

/// The gRPC message that makes [`serve_h2`] fail the call with `NOT_FOUND` in its trailers.
pub const GRPC_FAIL: &[u8] = b"please fail";
/// The path of [`serve_h2`]'s bidirectional gRPC method.
pub const CHAT_PATH: &str = "/netd.test.Echo/Chat";

/// Every body here, requests' and responses'.
pub type H2Body = UnsyncBoxBody<Bytes, Infallible>;

/// The path on which [`serve_h2`] answers with an endless trickle of [`DRIP`] chunks.
pub const DRIP_PATH: &str = "/drip";
/// One chunk of a trickle.
pub const DRIP: &[u8] = b"drip\n";
/// How often a trickle sends a chunk, and for how long at most.
const DRIP_EVERY: Duration = Duration::from_millis(20);
const DRIP_FOR: Duration = Duration::from_secs(60);

/// Serves HTTP/2 prior knowledge on `listener`: a gRPC request (`content-type:
/// application/grpc`) gets one message `<name>:<its message>` and trailers `grpc-status: 0`,
/// `grpc-message` and `x-replica: <name>` (status 5 for [`GRPC_FAIL`]), or on [`CHAT_PATH`]
/// one such message per message, as they come (see [`chat`]); a request for
/// [`DRIP_PATH`] a response body that trickles [`DRIP`] until the stream is gone; any other
/// request gets `name` as its body.
pub fn serve_h2(listener: TcpListener, name: &str) {
    serve_h2_counting(listener, name, Arc::default());
}

/// [`serve_h2`], with `trickling` counting the [`DRIP_PATH`] responses still being sent: one
/// stops when the client's stream is reset or its connection closed.
pub fn serve_h2_counting(listener: TcpListener, name: &str, trickling: Arc<AtomicUsize>) {
    serve(listener, App::new(name, Http::H2, trickling, None));
}

/// [`serve_h2_counting`] over HTTP/1.1 (keep-alive; a trickle is chunked, and stops when
/// the connection closes); a request to upgrade the connection (any protocol) switches it
/// to a binary echo (see [`echo`]).
pub fn serve_h1_counting(listener: TcpListener, name: &str, trickling: Arc<AtomicUsize>) {
    serve(listener, App::new(name, Http::H1, trickling, None));
}

/// [`serve_h2`] or its HTTP/1.1 twin, closing every connection gracefully once it has
/// taken `requests` requests, as servers limiting their keep-alive requests do: over
/// HTTP/1.1 the last response says `connection: close`, over HTTP/2 a GOAWAY lets the
/// streams already open finish.
pub fn serve_closing_after(listener: TcpListener, name: &str, http: Http, requests: usize) {
    serve(
        listener,
        App::new(name, http, Arc::default(), Some(requests)),
    );
}

/// The HTTP version a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http {
    /// HTTP/1.1, keep-alive, upgrades.
    H1,
    /// HTTP/2 prior knowledge.
    H2,
}

fn serve(listener: TcpListener, app: App) {
    accept_loop(listener, move |s| {
        let app = app.for_connection();
        async move {
            let io = TokioIo::new(s);
            match app.http {
                Http::H1 => {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, app.clone())
                        .with_upgrades();
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = app.closing.notified() => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                }
                Http::H2 => {
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, app.clone());
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = app.closing.notified() => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                }
            }
        }
    });
}

/// What the servers answer (see [`serve_h2`]), as hyper's service; one per connection.
#[derive(Clone)]
struct App {
    name: Arc<str>,
    http: Http,
    trickling: Arc<AtomicUsize>,
    /// Requests a connection takes before it closes, if it ever does.
    limit: Option<usize>,
    /// Requests this connection took.
    taken: Arc<AtomicUsize>,
    /// Told when the connection is to close.
    closing: Arc<tokio::sync::Notify>,
}

impl App {
    fn new(name: &str, http: Http, trickling: Arc<AtomicUsize>, limit: Option<usize>) -> App {
        App {
            name: name.into(),
            http,
            trickling,
            limit,
            taken: Arc::default(),
            closing: Arc::default(),
        }
    }

    /// A copy for a new connection: its own count and signal.
    fn for_connection(&self) -> App {
        App {
            taken: Arc::default(),
            closing: Arc::default(),
            ..self.clone()
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for App {
    type Response = Response<H2Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<H2Body>, Infallible>> + Send>,
    >;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let taken = self.taken.fetch_add(1, Ordering::SeqCst) + 1;
        if self.limit == Some(taken) {
            // Stored if the connection is not waiting yet: it closes as soon as it looks.
            self.closing.notify_one();
        }
        Box::pin(answer(req, self.name.clone(), self.trickling.clone()))
    }
}

/// A body fed by a task through a channel (data, then maybe trailers); the task sees the
/// body dropped (its stream reset) when its next send fails, and ends the body by dropping
/// its sender.
pub struct Piped(tokio::sync::mpsc::Receiver<Frame<Bytes>>);

impl Piped {
    /// A body, and where to send its frames.
    pub fn new() -> (tokio::sync::mpsc::Sender<Frame<Bytes>>, Piped) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        (tx, Piped(rx))
    }
}

impl hyper::body::Body for Piped {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

/// A body that trickles [`DRIP`], counted in `trickling` while its task sends.
fn trickle(trickling: Arc<AtomicUsize>) -> Piped {
    let (tx, body) = Piped::new();
    trickling.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(DRIP_EVERY);
        let deadline = tokio::time::Instant::now() + DRIP_FOR;
        while tokio::time::Instant::now() < deadline {
            ticks.tick().await;
            if tx
                .send(Frame::data(Bytes::from_static(DRIP)))
                .await
                .is_err()
            {
                break;
            }
        }
        trickling.fetch_sub(1, Ordering::SeqCst);
    });
    body
}

/// Splits the whole gRPC messages off the front of `buf`.
fn take_messages(buf: &mut BytesMut) -> Vec<Bytes> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        let mut m = buf.split_to(5 + len);
        m.advance(5);
        out.push(m.freeze());
    }
    out
}

/// A bidirectional gRPC stream: each message is answered with `<name>:<message>` as soon
/// as it has arrived, while the request goes on; its end is answered with the trailers.
fn chat(body: Incoming, name: Arc<str>) -> Piped {
    let (tx, piped) = Piped::new();
    tokio::spawn(async move {
        let mut body = body;
        let mut buf = BytesMut::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            for m in take_messages(&mut buf) {
                let mut reply = format!("{name}:").into_bytes();
                reply.extend_from_slice(&m);
                if tx.send(Frame::data(grpc_frame(&reply))).await.is_err() {
                    return;
                }
            }
        }
        let _ = tx
            .send(Frame::trailers(grpc_trailers("0", "ok", &name)))
            .await;
    });
    piped
}

fn grpc_trailers(status: &'static str, message: &'static str, name: &str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    trailers.insert("grpc-message", HeaderValue::from_static(message));
    if let Ok(v) = HeaderValue::from_str(name) {
        trailers.insert("x-replica", v);
    }
    trailers
}

fn grpc_response(body: H2Body) -> Response<H2Body> {
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    resp
}

async fn answer(
    req: Request<Incoming>,
    name: Arc<str>,
    trickling: Arc<AtomicUsize>,
) -> Result<Response<H2Body>, Infallible> {
    if req.uri().path() == DRIP_PATH {
        return Ok(Response::new(trickle(trickling).boxed_unsync()));
    }
    if let Some(protocol) = req.headers().get(UPGRADE).cloned() {
        // Switch protocols, then serve the echo (with the last record) on the connection.
        let on_upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                echo(TokioIo::new(upgraded), name).await;
            }
        });
        let mut resp = Response::new(no_body());
        *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        resp.headers_mut().insert(UPGRADE, protocol);
        return Ok(resp);
    }
    let grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc && req.method() == hyper::Method::POST {
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let summary = format!("{name} {}", digest(&body));
        return Ok(Response::new(Full::from(summary).boxed_unsync()));
    }
    if !grpc {
        return Ok(Response::new(Full::from(name.to_string()).boxed_unsync()));
    }
    if req.uri().path() == CHAT_PATH {
        return Ok(grpc_response(chat(req.into_body(), name).boxed_unsync()));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let msg = grpc_unframe(body).unwrap_or_default();
    let (status, message) = if msg == GRPC_FAIL {
        ("5", "no such thing")
    } else {
        ("0", "ok")
    };
    let mut reply = format!("{name}:").into_bytes();
    reply.extend_from_slice(&msg);
    let trailers = grpc_trailers(status, message, &name);
    let body = Full::new(grpc_frame(&reply))
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed_unsync();
    Ok(grpc_response(body))
}

/// What [`serve_h2`] answers a POST with, after the replica's name: the body's length and
/// a checksum of its bytes.
pub fn digest(body: &[u8]) -> String {
    let sum = body.iter().enumerate().fold(0u64, |acc, (i, b)| {
        acc.wrapping_mul(31).wrapping_add(u64::from(*b) ^ i as u64)
    });
    format!("{} {sum:016x}", body.len())
}

/// How an HTTP/1.1 request body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`, after the server's `100 Continue` (the client sends
    /// `Expect: 100-continue` and waits for it).
    LengthAfterContinue,
    /// `Transfer-Encoding: chunked`, in chunks of 16 KiB.
    Chunked,
}

/// `POST /` with `body` on the HTTP/1.1 keep-alive connection `conn` (`Host: host`): the
/// answer of a 200 (a `Content-Length` body).
pub async fn h1_post(
    conn: &mut tokio::io::BufStream<TcpStream>,
    host: &str,
    body: &[u8],
    framing: Framing,
) -> Result<String, Failed> {
    let head = match framing {
        Framing::LengthAfterContinue => format!(
            "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        ),
        Framing::Chunked => {
            format!("POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n")
        }
    };
    conn.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    bounded("send the head", conn.flush()).await?;
    match framing {
        Framing::LengthAfterContinue => {
            let (status, _) = read_head(conn).await?;
            if status != 100 {
                return Err(format!("status {status} instead of 100 Continue"));
            }
            conn.write_all(body).await.map_err(|e| e.to_string())?;
        }
        Framing::Chunked => {
            for chunk in body.chunks(16 * 1024) {
                let size = format!("{:x}\r\n", chunk.len());
                conn.write_all(size.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                conn.write_all(chunk).await.map_err(|e| e.to_string())?;
                conn.write_all(b"\r\n").await.map_err(|e| e.to_string())?;
            }
            conn.write_all(b"0\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    bounded("send the body", conn.flush()).await?;
    let (status, length) = read_head(conn).await?;
    let mut answer = vec![0u8; length.ok_or("no content-length")?];
    bounded("read the answer", conn.read_exact(&mut answer)).await?;
    if status != 200 {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// An HTTP/1.1 response head from `conn`: the status and the `Content-Length`, if any.
async fn read_head(
    conn: &mut tokio::io::BufStream<TcpStream>,
) -> Result<(u16, Option<usize>), Failed> {
    let mut status = None;
    let mut length = None;
    loop {
        let mut line = String::new();
        if bounded("read a response head", conn.read_line(&mut line)).await? == 0 {
            return Err("closed in a response head".into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        match status {
            None => status = line.split(' ').nth(1).and_then(|s| s.parse().ok()),
            Some(_) => {
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().ok();
                    }
                }
            }
        }
    }
    Ok((status.ok_or("no status line")?, length))
}

/// One gRPC message on the wire: not compressed, 4-byte big-endian length, the bytes.
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(msg.len()).expect("small message"));
    b.put_slice(msg);
    b.freeze()
}

/// The one message of a gRPC body, `None` unless the body is exactly one whole message.
pub fn grpc_unframe(mut body: Bytes) -> Option<Vec<u8>> {
    if body.len() < 5 || body.get_u8() != 0 {
        return None;
    }
    let len = body.get_u32() as usize;
    (body.len() == len).then(|| body.to_vec())
}

/// Sends requests on an HTTP/2 client connection.
pub type H2Send = hyper::client::conn::http2::SendRequest<H2Body>;

/// An empty request body.
pub fn no_body() -> H2Body {
    Full::default().boxed_unsync()
}

/// An HTTP/2 prior-knowledge client connection over `stream` (its driver on its own task;
/// the connection closes once every clone of the sender is gone).
pub async fn h2_handshake(stream: TcpStream) -> Result<H2Send, Failed> {
    let (send, conn) = bounded(
        "HTTP/2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
    )
    .await?;
    tokio::spawn(conn);
    Ok(send)
}

/// `GET uri` on `send`, once its response head and first data arrived: the body, still
/// coming (drop it to reset the stream).
pub async fn h2_first_chunk(mut send: H2Send, uri: String) -> Result<Incoming, Failed> {
    let req = Request::get(&uri)
        .body(no_body())
        .map_err(|e| e.to_string())?;
    let resp = bounded("HTTP/2 request", send.send_request(req)).await?;
    if resp.status() != 200 {
        return Err(format!("HTTP/2 status {}", resp.status()));
    }
    let mut body = resp.into_body();
    match tokio::time::timeout(IO_TIMEOUT, body.frame()).await {
        Ok(Some(Ok(f))) if f.is_data() => Ok(body),
        other => Err(format!("no first chunk: {other:?}")),
    }
}

/// `GET uri` on the HTTP/2 connection `send`: the body of a 200.
pub async fn h2_get(mut send: H2Send, uri: String) -> Result<String, Failed> {
    let req = Request::get(&uri)
        .body(no_body())
        .map_err(|e| e.to_string())?;
    let resp = bounded("HTTP/2 request", send.send_request(req)).await?;
    let status = resp.status();
    let body = bounded("HTTP/2 body", resp.into_body().collect()).await?;
    let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    if status != 200 {
        return Err(format!("HTTP/2 status {status}: {body}"));
    }
    Ok(body)
}

/// What a unary gRPC call got back.
#[derive(Debug)]
pub struct GrpcReply {
    /// The response's `content-type`.
    pub content_type: Option<String>,
    /// The one message of the response.
    pub message: Vec<u8>,
    /// The trailers (`None` when none arrived).
    pub trailers: Option<HeaderMap>,
}

impl GrpcReply {
    /// Trailer `name` as text.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.as_ref()?.get(name)?.to_str().ok()
    }
}

/// A unary gRPC call `POST uri` with one message `msg` on the HTTP/2 connection `send`.
pub async fn grpc_call(mut send: H2Send, uri: String, msg: Vec<u8>) -> Result<GrpcReply, Failed> {
    let req = Request::post(&uri)
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc_frame(&msg)).boxed_unsync())
        .map_err(|e| e.to_string())?;
    let resp = bounded("gRPC request", send.send_request(req)).await?;
    if resp.status() != 200 {
        return Err(format!("gRPC HTTP status {}", resp.status()));
    }
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let collected = bounded("gRPC body", resp.into_body().collect()).await?;
    let trailers = collected.trailers().cloned();
    let message = grpc_unframe(collected.to_bytes()).ok_or("not one gRPC message")?;
    Ok(GrpcReply {
        content_type,
        message,
        trailers,
    })
}

/// A bidirectional gRPC call on `send`: `messages` sent one at a time, each only once the
/// answer to the one before has come back (so the answers must flow while the request is
/// still open), then the request ended. The answers, and the trailers.
pub async fn grpc_chat(
    mut send: H2Send,
    uri: String,
    messages: &[&str],
) -> Result<(Vec<String>, HeaderMap), Failed> {
    let (tx, body) = Piped::new();
    let req = Request::post(&uri)
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(body.boxed_unsync())
        .map_err(|e| e.to_string())?;
    // The first message goes out with the request: a server (or a proxy) may wait for some
    // body before it answers the head.
    let mut pending = messages.iter();
    let first = pending.next().ok_or("no message")?;
    let _ = tx.send(Frame::data(grpc_frame(first.as_bytes()))).await;
    let resp = bounded("gRPC stream", send.send_request(req)).await?;
    if resp.status() != 200 {
        return Err(format!("gRPC HTTP status {}", resp.status()));
    }
    // The request stays open while `tx` lives.
    let mut tx = Some(tx);
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    let mut answers = Vec::new();
    loop {
        let frame = match tokio::time::timeout(IO_TIMEOUT, body.frame()).await {
            Err(_) => return Err(format!("no answer within {IO_TIMEOUT:?} after {answers:?}")),
            Ok(None) => return Err(format!("no trailers after {answers:?}")),
            Ok(Some(Err(e))) => return Err(format!("gRPC stream after {answers:?}: {e}")),
            Ok(Some(Ok(f))) => f,
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => match frame.into_trailers() {
                Ok(t) => return Ok((answers, t)),
                Err(_) => continue,
            },
        };
        buf.extend_from_slice(&data);
        for m in take_messages(&mut buf) {
            answers.push(String::from_utf8_lossy(&m).into_owned());
            // Answered: the next message, or the end of the request.
            match (pending.next(), &tx) {
                (Some(next), Some(t)) => {
                    let _ = t.send(Frame::data(grpc_frame(next.as_bytes()))).await;
                }
                _ => tx = None,
            }
        }
    }
}

// ---- TLS -------------------------------------------------------------------------------

/// A server's self-signed certificate for `names`, and its key.
pub struct Identity {
    /// The certificate, which clients also trust as its own root.
    pub cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// A fresh key and a self-signed certificate for `names`.
    pub fn new(names: &[&str]) -> Identity {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let c = rcgen::generate_simple_self_signed(
            names.iter().map(ToString::to_string).collect::<Vec<_>>(),
        )
        .expect("self-signed certificate");
        Identity {
            cert: c.cert.der().clone(),
            key: PrivateKeyDer::try_from(c.signing_key.serialize_der()).expect("private key"),
        }
    }
}

/// Serves TLS on `listener` with `identity`: per connection it reads one line and answers
/// `<name> <SNI it received> <the line>` and closes.
pub fn serve_tls(listener: TcpListener, name: &str, identity: &Identity) {
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let name: Arc<str> = name.into();
    accept_loop(listener, move |s| {
        let (acceptor, name) = (acceptor.clone(), name.clone());
        async move {
            let Ok(Ok(mut tls)) = tokio::time::timeout(IO_TIMEOUT, acceptor.accept(s)).await else {
                return;
            };
            let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
            let Ok(line) = read_line(&mut tls).await else {
                return;
            };
            let reply = format!("{name} {sni} {line}");
            let _ = tls.write_all(reply.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
}

async fn read_line(s: &mut (impl AsyncRead + Unpin)) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 4096 {
        let n = tokio::time::timeout(IO_TIMEOUT, s.read(&mut byte)).await??;
        if n == 0 || byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// What a TLS client saw.
#[derive(Debug)]
pub struct TlsExchange {
    /// The certificate the server presented (verified against the trusted ones).
    pub peer_cert: CertificateDer<'static>,
    /// The server's answer.
    pub reply: String,
}

/// A TLS handshake over `stream` with SNI `sni`, trusting only `trusted`, then `line` sent
/// and the answer read to the server's close.
pub async fn tls_exchange(
    stream: TcpStream,
    sni: &str,
    trusted: &[CertificateDer<'static>],
    line: &str,
) -> Result<TlsExchange, Failed> {
    let mut roots = RootCertStore::empty();
    for c in trusted {
        roots.add(c.clone()).map_err(|e| e.to_string())?;
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = bounded("TLS handshake", connector.connect(name, stream)).await?;
    let peer_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or("no server certificate")?;
    bounded("TLS write", tls.write_all(format!("{line}\n").as_bytes())).await?;
    let mut reply = Vec::new();
    bounded("TLS read", tls.read_to_end(&mut reply)).await?;
    Ok(TlsExchange {
        peer_cert,
        reply: String::from_utf8_lossy(&reply).into_owned(),
    })
}

// ---- opaque TCP ------------------------------------------------------------------------

/// Serves a binary echo on `listener` (see [`echo`]).
pub fn serve_echo(listener: TcpListener, name: &str) {
    let name: Arc<str> = name.into();
    accept_loop(listener, move |s| echo(s, name.clone()));
}

/// A binary echo on `io`: every byte is sent back as it arrives; after the client's
/// half-close, a last record `0xff <name> <byte count>` and the close.
async fn echo(mut io: impl AsyncRead + AsyncWrite + Unpin, name: Arc<str>) {
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    loop {
        match tokio::time::timeout(IO_TIMEOUT, io.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                total += n;
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
    let mut tail = vec![0xff];
    tail.extend_from_slice(format!("{name} {total}").as_bytes());
    let _ = io.write_all(&tail).await;
    let _ = io.shutdown().await;
}

/// The client side of an HTTP/1.1 upgrade to `protocol` on `stream` (request `Host: host`):
/// the stream once the server switched protocols, its next bytes the new protocol's.
pub async fn upgrade(
    mut stream: TcpStream,
    host: &str,
    protocol: &str,
) -> Result<TcpStream, Failed> {
    let req = format!(
        "GET /upgrade HTTP/1.1\r\nHost: {host}\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n"
    );
    bounded("write the upgrade", stream.write_all(req.as_bytes())).await?;
    // The response head, a byte at a time: what follows it is no longer HTTP.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        let mut byte = [0u8; 1];
        if bounded("read the upgrade's answer", stream.read(&mut byte)).await? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let upgraded = head.starts_with("HTTP/1.1 101")
        && head
            .to_ascii_lowercase()
            .contains(&format!("upgrade: {protocol}"));
    if !upgraded {
        return Err(format!("no switch to {protocol}: {head:?}"));
    }
    Ok(stream)
}

/// What a [`serve_greeter`] received: the replica's name and the bytes, per connection.
pub type Received = Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// Serves a server-first protocol on `listener`: a greeting `<name>\n` and at once the
/// server's half-close; then everything the client sends, to its half-close, goes to `got`.
pub fn serve_greeter(listener: TcpListener, name: &str, got: Received) {
    let name: Arc<str> = name.into();
    accept_loop(listener, move |mut s| {
        let (name, got) = (name.clone(), got.clone());
        async move {
            if s.write_all(format!("{name}\n").as_bytes()).await.is_err()
                || s.shutdown().await.is_err()
            {
                return;
            }
            let mut bytes = Vec::new();
            if let Ok(Ok(_)) = tokio::time::timeout(IO_TIMEOUT, s.read_to_end(&mut bytes)).await {
                if let Ok(mut got) = got.lock() {
                    got.push((name.to_string(), bytes));
                }
            }
        }
    });
}

/// The client of [`serve_greeter`] over `stream`: reads the greeting to the server's
/// half-close, then sends `payload` and half-closes; the greeting, once the server closed.
pub async fn greeted(mut stream: TcpStream, payload: &[u8]) -> Result<String, Failed> {
    let mut greeting = Vec::new();
    bounded("read the greeting", stream.read_to_end(&mut greeting)).await?;
    bounded(
        "write after the server's half-close",
        stream.write_all(payload),
    )
    .await?;
    bounded("half-close", stream.shutdown()).await?;
    let mut rest = [0u8; 1];
    let n = bounded("wait for the close", stream.read(&mut rest)).await?;
    if n != 0 {
        return Err("bytes after the server's half-close".into());
    }
    Ok(String::from_utf8_lossy(&greeting).trim_end().to_string())
}

/// Over `stream`: `first` written and its echo read, then `second` written and the write
/// side shut down; returns everything read after the first echo, to the server's close.
pub async fn echo_with_half_close(
    mut stream: TcpStream,
    first: &[u8],
    second: &[u8],
) -> Result<Vec<u8>, Failed> {
    bounded("write", stream.write_all(first)).await?;
    let mut echo = vec![0u8; first.len()];
    bounded("read the echo", stream.read_exact(&mut echo)).await?;
    if echo != first {
        return Err(format!("echo differs: sent {first:?}, got {echo:?}"));
    }
    bounded("write", stream.write_all(second)).await?;
    bounded("half-close", stream.shutdown()).await?;
    let mut rest = Vec::new();
    bounded("read after the half-close", stream.read_to_end(&mut rest)).await?;
    Ok(rest)
}
