//! The HTTP/1.1 upstream client against scripted upstreams on loopback, behind a minimal hyper
//! server that sends every request through a [`Pool`] (as the stack's innermost service does).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::http::{error_response, ProxyBody};
use crate::pool::Pool;
use crate::sockopt::ConnectOptions;

/// A proxy in front of `upstream`: one pool, hyper's HTTP/1.1 server downstream.
async fn proxy(upstream: SocketAddr) -> (SocketAddr, Arc<Pool>) {
    let pool = Arc::new(Pool::new(upstream, ConnectOptions::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let p = pool.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let pool = p.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let pool = pool.clone();
                    async move {
                        let mut req = super::Outgoing::new(req);
                        Ok::<_, Infallible>(match pool.send_h1(&mut req).await {
                            Ok(resp) => resp.map(ProxyBody::h1),
                            Err(e) => error_response(StatusCode::BAD_GATEWAY, &e.error.to_string()),
                        })
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, pool)
}

async fn client<B>(addr: SocketAddr) -> SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "web")
        .body(Full::default())
        .unwrap()
}

/// Reads one request head (through its blank line) from `s`, keeping what follows in `buf`.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until `buf` holds `n` bytes.
async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    while !done(buf) {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "upstream: client closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A scripted upstream: `serve(n, stream)` runs on its own task for the `n`th connection
/// (from 0). Returns its address and the count of connections accepted.
async fn upstream<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(usize, TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(c.fetch_add(1, Ordering::SeqCst), s));
        }
    });
    (addr, conns)
}

/// Answers every request on a connection with `body`, keeping it open.
async fn keep_alive(mut s: TcpStream, body: &'static str) {
    let mut buf = Vec::new();
    while read_head(&mut s, &mut buf).await.is_some() {
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn text<B>(resp: hyper::Response<B>) -> (StatusCode, String)
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn one_upstream_connection_serves_sequential_requests() {
    let (up, conns) = upstream(|_, s| keep_alive(s, "hello")).await;
    let (addr, pool) = proxy(up).await;
    let mut c = client(addr).await;
    for _ in 0..5 {
        let (status, body) = text(c.send_request(get("/")).await.unwrap()).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle(), 1);
}

#[tokio::test]
async fn a_connection_closed_while_idle_is_replaced_without_a_failure() {
    // Connection 1 answers once and closes at once (no `Connection: close`); connection 2
    // answers a request, then closes as soon as the next one arrives, unanswered; later
    // connections answer everything.
    let (up, conns) = upstream(|nth, mut s| async move {
        let mut buf = Vec::new();
        let mut answered = 0;
        while read_head(&mut s, &mut buf).await.is_some() {
            if nth == 1 && answered == 1 {
                return;
            }
            let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{nth}");
            s.write_all(resp.as_bytes()).await.unwrap();
            answered += 1;
            if nth == 0 {
                return;
            }
        }
    })
    .await;
    let (addr, _pool) = proxy(up).await;
    let mut c = client(addr).await;
    assert_eq!(text(c.send_request(get("/")).await.unwrap()).await.1, "0");
    // The reactor sees connection 1's FIN while it is idle: it is not taken.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(text(c.send_request(get("/")).await.unwrap()).await.1, "1");
    // Connection 2 closes on this request without answering: a GET is sent again.
    assert_eq!(text(c.send_request(get("/")).await.unwrap()).await.1, "2");
    assert_eq!(conns.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_request_with_a_body_is_not_sent_twice() {
    // Answers one request, then closes on the next without answering.
    let (up, conns) = upstream(|_, mut s| async move {
        let mut buf = Vec::new();
        read_head(&mut s, &mut buf).await;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        read_head(&mut s, &mut buf).await;
    })
    .await;
    let (addr, _pool) = proxy(up).await;
    let mut c = client(addr).await;
    assert_eq!(text(c.send_request(get("/")).await.unwrap()).await.0, 200);
    let post = Request::post("/")
        .header("host", "web")
        .body(Full::new(Bytes::from_static(b"pay once")))
        .unwrap();
    let (status, body) = text(c.send_request(post).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn chunked_responses_pass_through_and_the_connection_is_reused() {
    let (up, conns) = upstream(|_, mut s| async move {
        let mut buf = Vec::new();
        while read_head(&mut s, &mut buf).await.is_some() {
            let parts: [&[u8]; 4] = [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5\r\nhel",
                b"lo\r\n",
                b"6\r\n world\r\n0\r\n",
                b"x-sum: 11\r\n\r\n",
            ];
            for p in parts {
                s.write_all(p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await;
    let (addr, pool) = proxy(up).await;
    let mut c = client(addr).await;
    for _ in 0..2 {
        // (The trailer section is decoded, but hyper's server only sends trailers that a
        // `Trailer` field announces, and that field is hop-by-hop here.)
        let resp = c.send_request(get("/")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["transfer-encoding"], "chunked");
        let collected = resp.into_body().collect().await.unwrap();
        assert_eq!(collected.to_bytes(), "hello world");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle(), 1);
}

#[tokio::test]
async fn an_upstream_closing_mid_body_fails_the_response_and_its_connection() {
    let (up, _) = upstream(|_, mut s| async move {
        let mut buf = Vec::new();
        read_head(&mut s, &mut buf).await;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
            .await
            .unwrap();
    })
    .await;
    let (addr, pool) = proxy(up).await;
    let mut c = client(addr).await;
    // hyper's server gives up on the response: before its head went out (the client sees
    // the connection end) or after (the body fails). Never a complete response.
    if let Ok(resp) = c.send_request(get("/")).await {
        assert!(resp.into_body().collect().await.is_err());
    }
    assert_eq!(pool.idle(), 0);
}

#[tokio::test]
async fn close_delimited_head_and_no_content_responses_are_framed() {
    let (up, conns) = upstream(|_, mut s| async move {
        let mut buf = Vec::new();
        while let Some(head) = read_head(&mut s, &mut buf).await {
            let resp: &[u8] = if head.starts_with("HEAD") {
                b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"
            } else if head.starts_with("GET /204") {
                b"HTTP/1.1 204 No Content\r\n\r\n"
            } else {
                b"HTTP/1.0 200 OK\r\n\r\nuntil the end"
            };
            s.write_all(resp).await.unwrap();
            if resp.starts_with(b"HTTP/1.0") {
                return;
            }
        }
    })
    .await;
    let (addr, pool) = proxy(up).await;
    let mut c = client(addr).await;
    let head = Request::head("/")
        .header("host", "web")
        .body(Full::default())
        .unwrap();
    let resp = c.send_request(head).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "42");
    assert_eq!(text(resp).await.1, "");
    let (status, _) = text(c.send_request(get("/204")).await.unwrap()).await;
    assert_eq!(status, 204);
    assert_eq!(pool.idle(), 1);
    let (status, body) = text(c.send_request(get("/close")).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "until the end"));
    // Read to its close: not reusable.
    assert_eq!(pool.idle(), 0);
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn request_bodies_are_streamed_chunked_or_sized() {
    // Echoes what it received (chunked: as it came) as the response body.
    let (up, _) = upstream(|_, mut s| async move {
        let mut buf = Vec::new();
        while let Some(head) = read_head(&mut s, &mut buf).await {
            let lower = head.to_ascii_lowercase();
            let echo = if lower.contains("transfer-encoding: chunked") {
                assert!(!lower.contains("content-length"), "{head}");
                read_until(&mut s, &mut buf, |b| b.ends_with(b"0\r\n\r\n")).await;
                let raw = String::from_utf8(std::mem::take(&mut buf)).unwrap();
                format!("chunked:{raw:?}")
            } else {
                assert!(lower.contains("content-length: 11"), "{head}");
                read_until(&mut s, &mut buf, |b| b.len() >= 11).await;
                let raw = String::from_utf8(std::mem::take(&mut buf)).unwrap();
                format!("sized:{raw}")
            };
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{echo}",
                echo.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
        }
    })
    .await;
    let (addr, _pool) = proxy(up).await;
    // A body of unknown length, sent in pieces with pauses: chunked upstream.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let body = ChannelBody(rx);
    let mut c = client(addr).await;
    let req = Request::post("/").header("host", "web").body(body).unwrap();
    let feed = tokio::spawn(async move {
        for piece in ["hello", " ", "world"] {
            tx.send(Bytes::from(piece)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let (status, body) = text(c.send_request(req).await.unwrap()).await;
    feed.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        r#"chunked:"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n""#
    );
    let mut c = client(addr).await;
    let req = Request::put("/")
        .header("host", "web")
        .body(Full::new(Bytes::from_static(b"hello world")))
        .unwrap();
    assert_eq!(
        text(c.send_request(req).await.unwrap()).await.1,
        "sized:hello world"
    );
}

/// A request body fed through a channel, of unknown length.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn an_early_answer_ends_the_exchange_and_the_connection() {
    // Answers 413 after the head, without reading the (large) body.
    let (up, _) = upstream(|_, mut s| async move {
        let mut buf = Vec::new();
        read_head(&mut s, &mut buf).await;
        s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    let (addr, pool) = proxy(up).await;
    let mut c = client(addr).await;
    let req = Request::post("/")
        .header("host", "web")
        .body(Full::new(Bytes::from(vec![b'x'; 4 << 20])))
        .unwrap();
    let (status, body) = text(c.send_request(req).await.unwrap()).await;
    assert_eq!((status.as_u16(), body.as_str()), (413, "big"));
    assert_eq!(pool.idle(), 0);
}

#[tokio::test]
async fn large_bodies_stream_through_and_the_connection_is_reused() {
    // 1 MiB responses (sized, then chunked in 64 KiB chunks) of a repeating pattern.
    const LEN: usize = 1 << 20;
    let pattern: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let sent = Arc::new(pattern.clone());
    let (up, conns) = upstream(move |_, mut s| {
        let body = sent.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunked = false;
            while read_head(&mut s, &mut buf).await.is_some() {
                if chunked {
                    s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .await
                        .unwrap();
                    for piece in body.chunks(64 * 1024) {
                        let mut frame = format!("{:x}\r\n", piece.len()).into_bytes();
                        frame.extend_from_slice(piece);
                        frame.extend_from_slice(b"\r\n");
                        s.write_all(&frame).await.unwrap();
                    }
                    s.write_all(b"0\r\n\r\n").await.unwrap();
                } else {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n\r\n");
                    s.write_all(head.as_bytes()).await.unwrap();
                    s.write_all(&body).await.unwrap();
                }
                chunked = !chunked;
            }
        }
    })
    .await;
    let (addr, pool) = proxy(up).await;
    let mut c = client(addr).await;
    for _ in 0..4 {
        let resp = c.send_request(get("/")).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), LEN);
        assert!(body[..] == pattern[..]);
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle(), 1);
}

#[tokio::test]
async fn a_large_request_body_is_streamed_with_backpressure() {
    // Reads the whole (sized) body slowly, then answers with the byte count.
    let (up, _) = upstream(|_, mut s| async move {
        let mut buf = Vec::new();
        while let Some(head) = read_head(&mut s, &mut buf).await {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let mut got = buf.len();
            buf.clear();
            let mut chunk = vec![0u8; 64 * 1024];
            while got < len {
                tokio::time::sleep(Duration::from_millis(1)).await;
                got += s.read(&mut chunk).await.unwrap();
            }
            let answer = got.to_string();
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
        }
    })
    .await;
    let (addr, pool) = proxy(up).await;
    let mut c = client(addr).await;
    for _ in 0..2 {
        let req = Request::put("/")
            .header("host", "web")
            .body(Full::new(Bytes::from(vec![b'x'; 4 << 20])))
            .unwrap();
        let (status, body) = text(c.send_request(req).await.unwrap()).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "4194304"));
    }
    assert_eq!(pool.idle(), 1);
}
