//! HTTP over hyper: the replicas' servers ([`serve_h2`] and its HTTP/1.1 twin, endless
//! responses, connections closed after a few requests, upgrades) and the clients' side
//! (HTTP/2 requests, HTTP/1.1 POSTs with `100 Continue` or chunked bodies, upgrades).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{
    accept_loop, body_bytes, bounded, grpc, no_body, tcp, AppBody, Failed, Piped, IO_TIMEOUT,
};

/// The path on which [`serve_h2`] answers with an endless trickle of [`DRIP`] chunks.
pub const DRIP_PATH: &str = "/drip";
/// One chunk of a trickle.
pub const DRIP: &[u8] = b"drip\n";
/// How often a trickle sends a chunk, and for how long at most.
const DRIP_EVERY: Duration = Duration::from_millis(20);
const DRIP_FOR: Duration = Duration::from_secs(60);

/// Serves HTTP/2 prior knowledge on `listener`: a gRPC request (`content-type:
/// application/grpc`) is answered by [`grpc::answer`]; a request for [`DRIP_PATH`] gets a
/// response body that trickles [`DRIP`] until the stream is gone; a POST its body's
/// [`digest`]; any other request `name` as its body.
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
/// to a binary echo (see [`tcp::echo`]).
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
    type Response = Response<AppBody>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<AppBody>, Infallible>> + Send>,
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

async fn answer(
    req: Request<Incoming>,
    name: Arc<str>,
    trickling: Arc<AtomicUsize>,
) -> Result<Response<AppBody>, Infallible> {
    if req.uri().path() == DRIP_PATH {
        return Ok(Response::new(trickle(trickling).boxed_unsync()));
    }
    if let Some(protocol) = req.headers().get(UPGRADE).cloned() {
        // Switch protocols, then serve the echo (with the last record) on the connection.
        let on_upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                tcp::echo(TokioIo::new(upgraded), name).await;
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
    if grpc {
        return Ok(grpc::answer(req, name).await);
    }
    if req.method() == hyper::Method::POST {
        let summary = format!("{name} {}", digest(&body_bytes(req.into_body()).await));
        return Ok(Response::new(Full::from(summary).boxed_unsync()));
    }
    Ok(Response::new(Full::from(name.to_string()).boxed_unsync()))
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

/// Sends requests on an HTTP/2 client connection.
pub type H2Send = hyper::client::conn::http2::SendRequest<AppBody>;

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

/// The client side of an HTTP/1.1 upgrade to `protocol` on `stream` (request `Host: host`):
/// the stream once the server switched protocols, its next bytes the new protocol's.
pub async fn upgrade(
    mut stream: TcpStream,
    host: &str,
    protocol: &str,
) -> Result<TcpStream, Failed> {
    let req = format!(
        "GET /upgrade HTTP/1.1\r\nHost: {host}\r\n\
         Connection: upgrade\r\nUpgrade: {protocol}\r\n\r\n"
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
