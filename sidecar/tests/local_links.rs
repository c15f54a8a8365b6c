//! Node-local links between two in-process sidecars on loopback: the client's sidecar (A)
//! reaches the server's sidecar (B) over a unix stream in a shared directory, B serves the
//! link as the redirected TCP connection it stands for; fallbacks to TCP; bad links refused.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use netd_sidecar::local::{encode_header, LocalConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// A directory removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("netd-ll-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn links(dir: &Path, addrs: &[&str]) -> Option<LocalConfig> {
    Some(LocalConfig {
        dir: dir.to_path_buf(),
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        exclude_ports: vec![],
    })
}

/// `netd_local_link_connections_total` of `running` for `result`.
async fn link_count(running: &netd_sidecar::Running, result: &str) -> u64 {
    let (_, m) = admin_get(running, "/metrics").await;
    let dir = if result == "opened" {
        "outbound"
    } else {
        "inbound"
    };
    let key =
        format!("netd_local_link_connections_total{{direction=\"{dir}\",result=\"{result}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("no {key} in\n{m}"))
        .parse()
        .unwrap()
}

/// `GET http://web/` through `running`'s outbound listener, on a connection of its own.
async fn get_web(running: &netd_sidecar::Running) -> (u16, String) {
    let mut c = h1(running.addrs.outbound).await;
    let (status, _, body) = read(c.send_request(get("web", "/")).await.unwrap()).await;
    (status, body)
}

/// The server side: B holds the address 127.0.0.1 on the links and knows service `web`, so an
/// endpoint `127.0.0.1:<app port>` is its container's; A (client side, address 127.0.0.2)
/// sends `Host: web` requests through its outbound listener.
async fn pair(
    dir: &Path,
    protocol: &str,
    app: SocketAddr,
) -> (netd_sidecar::Running, netd_sidecar::Running) {
    let snap = web_snapshot(protocol, &[app], "round-robin");
    let b = sidecar(snap.clone(), |c| c.local = links(dir, &["127.0.0.1"])).await;
    let a = sidecar(snap, |c| c.local = links(dir, &["127.0.0.2"])).await;
    (a, b)
}

#[tokio::test]
async fn http_goes_over_the_link_and_is_served_as_inbound_traffic() {
    let dir = Dir::new("http");
    let app = backend("app", Proto::H1).await;
    let (a, b) = pair(&dir.0, "http", app.addr).await;
    assert!(dir.0.join("127.0.0.1.sock").exists());
    assert!(dir.0.join("127.0.0.2.sock").exists());
    let mut c = h1(a.addrs.outbound).await;
    for _ in 0..5 {
        let (status, _, body) = read(c.send_request(get("web", "/")).await.unwrap()).await;
        assert_eq!((status, body.as_str()), (200, "app"));
    }
    // One pooled upstream connection, over the link; B took it for its container's service.
    assert_eq!(link_count(&a, "opened").await, 1);
    assert_eq!(link_count(&b, "accepted").await, 1);
    assert_eq!(link_count(&b, "refused").await, 0);
    let (_, mb) = admin_get(&b, "/metrics").await;
    assert!(
        mb.contains("netd_http_requests_total{direction=\"inbound\",service=\"default/web\"} 5"),
        "{mb}"
    );
    drop(c);
    assert_eq!(settle(&a).await, 0);
    // B's socket goes away with B.
    b.shutdown().await;
    assert!(!dir.0.join("127.0.0.1.sock").exists());
    a.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn http2_and_opaque_tcp_go_over_the_link() {
    let dir = Dir::new("h2tcp");
    let app = backend("app2", Proto::H2).await;
    let (a, b) = pair(&dir.0, "grpc", app.addr).await;
    let mut c = h2(a.addrs.outbound).await;
    for _ in 0..3 {
        let req = hyper::Request::get("http://web/")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let (status, _, body) = read(c.send_request(req).await.unwrap()).await;
        assert_eq!((status, body.as_str()), (200, "app2"));
    }
    assert_eq!(link_count(&b, "accepted").await, 1);

    // Opaque TCP with a half-close: an echo "application" behind B, reached by its address.
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if s.read_to_end(&mut buf).await.is_ok() {
                    let _ = s.write_all(&buf).await;
                }
            });
        }
    });
    let snap = service_snapshot("db", "10.96.0.20", 7000, "tcp", &[echo_addr], "p2c");
    b.store.publish(snap);
    let a2 = sidecar(
        service_snapshot("db", "10.96.0.20", 7000, "tcp", &[echo_addr], "p2c"),
        |c| {
            c.local = links(&dir.0, &["127.0.0.3"]);
            c.default_target = Some("10.96.0.20:7000".parse().unwrap());
        },
    )
    .await;
    let mut s = TcpStream::connect(a2.addrs.outbound).await.unwrap();
    s.write_all(b"\x00\x01binary\xff").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"\x00\x01binary\xff");
    assert_eq!(link_count(&a2, "opened").await, 1);
    assert_eq!(link_count(&b, "accepted").await, 2);
    for r in [a, a2, b] {
        r.shutdown().await;
    }
    app.shutdown().await;
}

#[tokio::test]
async fn without_a_listening_sidecar_or_on_an_excluded_port_tcp_is_used() {
    let dir = Dir::new("fallback");
    let app = backend("plain", Proto::H1).await;
    // A has links; nobody listens for 127.0.0.1 (the app is not behind a sidecar).
    let a = sidecar(web_snapshot("http", &[app.addr], "p2c"), |c| {
        c.local = links(&dir.0, &["127.0.0.2"])
    })
    .await;
    let (status, body) = get_web(&a).await;
    assert_eq!((status, body.as_str()), (200, "plain"));
    assert_eq!(link_count(&a, "opened").await, 0);
    a.shutdown().await;

    // B listens, but the app's port is excluded from links on this node.
    let snap = web_snapshot("http", &[app.addr], "p2c");
    let b = sidecar(snap.clone(), |c| c.local = links(&dir.0, &["127.0.0.1"])).await;
    let a = sidecar(snap, |c| {
        c.local = links(&dir.0, &["127.0.0.2"]);
        if let Some(l) = c.local.as_mut() {
            l.exclude_ports = vec![app.addr.port()];
        }
    })
    .await;
    let (status, _) = get_web(&a).await;
    assert_eq!(status, 200);
    assert_eq!(link_count(&a, "opened").await, 0);
    assert_eq!(link_count(&b, "accepted").await, 0);
    a.shutdown().await;
    b.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn bad_links_are_refused_and_the_sidecar_keeps_serving() {
    let dir = Dir::new("bad");
    let app = backend("app3", Proto::H1).await;
    let (a, b) = pair(&dir.0, "http", app.addr).await;
    let sock = dir.0.join("127.0.0.1.sock");
    let closed = |mut s: UnixStream| async move {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the sidecar closes a bad link")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing is answered on a bad link");
    };
    // Not a header at all.
    let mut s = UnixStream::connect(&sock).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    closed(s).await;
    // A header naming an address that is not B's container's.
    let mut s = UnixStream::connect(&sock).await.unwrap();
    let other: SocketAddr = SocketAddr::new(IpAddr::from([127, 0, 0, 9]), app.addr.port());
    s.write_all(&encode_header("127.0.0.2:0".parse().unwrap(), other))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    closed(s).await;
    // Half a header, then silence: closed after the detect timeout (1 s in tests).
    let mut s = UnixStream::connect(&sock).await.unwrap();
    s.write_all(b"\r\n\r\n\0").await.unwrap();
    closed(s).await;
    assert_eq!(link_count(&b, "refused").await, 3);
    assert_eq!(link_count(&b, "accepted").await, 0);
    assert_eq!(settle(&b).await, 0);
    // A well-formed link still works.
    let (status, body) = get_web(&a).await;
    assert_eq!((status, body.as_str()), (200, "app3"));
    assert_eq!(link_count(&b, "accepted").await, 1);
    a.shutdown().await;
    b.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_link_to_the_inbound_listener_itself_goes_to_the_inbound_target() {
    // As a TCP connection made straight to the inbound listener: not redirected, so the
    // inbound target takes it (the benchmark's topology).
    let dir = Dir::new("target");
    let app = backend("origin", Proto::H1).await;
    let b = sidecar(web_snapshot("http", &[], "p2c"), |c| {
        c.local = links(&dir.0, &["127.0.0.1"]);
        c.inbound_target = Some(app.addr);
    })
    .await;
    let b_in = b.addrs.inbound.unwrap();
    let a = sidecar(web_snapshot("http", &[b_in], "p2c"), |c| {
        c.local = links(&dir.0, &["127.0.0.2"])
    })
    .await;
    let (status, body) = get_web(&a).await;
    assert_eq!((status, body.as_str()), (200, "origin"));
    assert_eq!(link_count(&b, "accepted").await, 1);
    a.shutdown().await;
    b.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn an_unusable_link_directory_costs_the_links_not_the_sidecar() {
    let dir = Dir::new("unusable");
    let app = backend("tcp-only", Proto::H1).await;
    let missing = dir.0.join("missing");
    let a = sidecar(web_snapshot("http", &[app.addr], "p2c"), |c| {
        c.local = links(&missing, &["127.0.0.2"])
    })
    .await;
    let (status, body) = get_web(&a).await;
    assert_eq!((status, body.as_str()), (200, "tcp-only"));
    let (_, m) = admin_get(&a, "/metrics").await;
    assert!(!m.contains("netd_local_link"), "{m}");
    a.shutdown().await;
    app.shutdown().await;
}
