//! Bad input does not crash the sidecar or leak connection tasks: garbage on an HTTP port,
//! oversized headers, half-closed and abandoned connections; and graceful drain.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn exchange(addr: std::net::SocketAddr, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    if half_close {
        let _ = s.shutdown().await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn bad_input_is_refused_and_leaves_nothing_behind() {
    let a = backend("a", Proto::H1).await;
    let running = sidecar(web_snapshot("http", &[a.addr], "p2c"), |c| {
        // Not redirected; the default target is the VIP, whose http hint skips detection.
        c.default_target = Some("10.96.0.10:80".parse().unwrap());
        c.limits.max_header_bytes = 16 * 1024;
    })
    .await;
    let out = running.addrs.outbound;

    // Garbage on an HTTP port: hyper answers 400 (or closes); nothing reaches the backend.
    let reply = exchange(out, b"\x00\xff\x13garbage garbage\r\n\r\n", false).await;
    assert!(
        reply.is_empty() || reply.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );

    // Oversized headers: refused with 431 (or closed), not buffered without bound.
    let mut big = b"GET / HTTP/1.1\r\nhost: web\r\nx-big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let reply = exchange(out, &big, false).await;
    assert!(
        reply.is_empty() || reply.starts_with(b"HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&reply[..reply.len().min(80)])
    );

    // Half-closed in the middle of a request head: the sidecar closes its side too.
    let reply = exchange(out, b"GET / HTTP/1.1\r\nhost: we", true).await;
    assert!(!reply.starts_with(b"HTTP/1.1 200"));

    // A complete request followed by a half-close still gets its answer.
    let reply = exchange(out, b"GET / HTTP/1.1\r\nhost: web\r\n\r\n", true).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );

    // Connections opened and abandoned at once, and detection-port garbage.
    for _ in 0..20 {
        drop(TcpStream::connect(out).await.unwrap());
    }
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::Relaxed), 1);

    // Still serving, and every connection task is gone.
    let mut client = h1(out).await;
    let (status, _, _) = read(client.send_request(get("web", "/")).await.unwrap()).await;
    assert_eq!(status, 200);
    drop(client);
    assert_eq!(settle(&running).await, 0);
    running.shutdown().await;
}

/// Reads from `s` until the sidecar closes the connection (or 5 s pass): what it sent, and
/// how long the close took.
async fn until_closed(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    (out, started.elapsed())
}

#[tokio::test]
async fn slow_request_heads_time_out_on_every_request_of_a_connection() {
    let a = backend("a", Proto::H1).await;
    let running = sidecar(web_snapshot("http", &[a.addr], "p2c"), |c| {
        c.default_target = Some("10.96.0.10:80".parse().unwrap());
        c.limits.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let out = running.addrs.outbound;

    // A first head that never completes: the connection is closed after the timeout.
    let mut s = TcpStream::connect(out).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n")
        .await
        .unwrap();
    let (reply, took) = until_closed(&mut s).await;
    assert!(!reply.starts_with(b"HTTP/1.1 200"));
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(4),
        "{took:?}"
    );

    // Requests answered on one connection, then a head that stalls: the timer, re-armed for
    // every request (from when the sidecar starts waiting for the next head, right after a
    // response), still closes it.
    let mut s = TcpStream::connect(out).await.unwrap();
    let mut answered = std::time::Instant::now();
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        answered = std::time::Instant::now();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.write_all(b"GET / HTTP/1.1\r\nhost: w").await.unwrap();
    let (reply, _) = until_closed(&mut s).await;
    let took = answered.elapsed();
    assert!(!reply.starts_with(b"HTTP/1.1 200"));
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(settle(&running).await, 0);
    running.shutdown().await;
}

#[tokio::test]
async fn detection_garbage_and_silence_fall_back_to_opaque() {
    let running = sidecar(web_snapshot("http", &[], "p2c"), |c| {
        c.detect_timeout = Duration::from_millis(50);
    })
    .await;
    // Not redirected, no default target, no SNI: an opaque connection has nowhere to go and
    // is closed — whether it sent garbage or nothing at all.
    assert!(exchange(running.addrs.outbound, b"\x00\x01\x02", false)
        .await
        .is_empty());
    assert!(exchange(running.addrs.outbound, b"", false)
        .await
        .is_empty());
    assert_eq!(settle(&running).await, 0);
    running.shutdown().await;
}

#[tokio::test]
async fn drain_lets_in_flight_requests_finish_and_stops_accepting() {
    let a = backend("a", Proto::H1).await;
    let running = sidecar(web_snapshot("http", &[a.addr], "p2c"), |c| {
        c.drain_timeout = Duration::from_secs(5)
    })
    .await;
    let out = running.addrs.outbound;
    let admin = running.addrs.admin.unwrap();
    let mut client = h1(out).await;
    let in_flight = client.send_request(get("web", "/slow"));
    let (resp, drained) = tokio::join!(in_flight, async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        running.shutdown().await
    });
    assert_eq!(resp.unwrap().status(), 200);
    assert!(drained, "drain finished within its timeout");
    assert!(
        TcpStream::connect(out).await.is_err() || {
            // The listener is closed; a connect may race the close, but nothing is served.
            let mut c = TcpStream::connect(out).await.unwrap();
            let _ = c.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut buf)).await;
            buf.is_empty()
        }
    );
    // The admin listener stopped too.
    let admin_gone = match TcpStream::connect(admin).await {
        Err(_) => true,
        Ok(mut c) => {
            let _ = c.write_all(b"GET /live HTTP/1.1\r\nhost: a\r\n\r\n").await;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut buf)).await;
            buf.is_empty()
        }
    };
    assert!(admin_gone);
}

#[tokio::test]
async fn http2_clients_that_stop_answering_pings_are_closed_and_live_ones_kept() {
    let a = backend("a", Proto::H2).await;
    let running = sidecar(web_snapshot("grpc", &[a.addr], "p2c"), |c| {
        c.default_target = Some("10.96.0.10:80".parse().unwrap());
        c.limits.h2_keepalive = Duration::from_millis(200);
    })
    .await;
    let out = running.addrs.outbound;
    // A live client idles through several PING rounds (its connection task answers them),
    // then is served on the same connection.
    let mut live = h2(out).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let req = hyper::Request::get("http://web/")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (status, _, body) = read(live.send_request(req).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (200, "a"));
    // A client that vanished: its preface and SETTINGS arrived, then nothing is answered.
    let mut gone = TcpStream::connect(out).await.unwrap();
    gone.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut frames = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), gone.read_to_end(&mut frames))
        .await
        .expect("the sidecar closes an HTTP/2 client that does not answer its PING");
    assert!(closed.is_ok(), "{closed:?}");
    // It was sent a PING (frame type 6, not an ACK) before being closed.
    let mut types = Vec::new();
    let mut rest = &frames[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        types.push((rest[3], rest[4]));
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(types.contains(&(6, 0)), "frames (type, flags): {types:?}");
    drop(live);
    assert_eq!(settle(&running).await, 0);
    running.shutdown().await;
    a.shutdown().await;
}
