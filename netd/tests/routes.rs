//! HTTP routes from the registry to a real sidecar's metrics: routes set through the API reach
//! a `netd-sidecar` that follows the daemon over its socket (on loopback, no namespace and no
//! interception: requests name their service by `Host`), which labels each request's series
//! with the route it matches; replacing the routes relabels the next requests at once.
//!
//! Needs the sidecar binary next to `netd` (`cargo build -p netd-sidecar`; `scripts/test`
//! builds every binary first).

mod common;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, Daemon};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use netd_config::netd::{EndpointSpec, Protocol, RoutesSpec, ServicePort, ServiceSpec};
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_netd");

/// A `netd-sidecar` process on loopback ports, killed (by its pid) on drop.
struct Sidecar {
    child: Child,
    outbound: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sidecar_bin() -> PathBuf {
    let path = Path::new(BIN)
        .parent()
        .expect("netd binary has a directory")
        .join("netd-sidecar");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p netd-sidecar` first",
        path.display()
    );
    path
}

/// Starts a sidecar that takes its snapshots from the daemon on `socket`; returns once it
/// logged its listeners.
fn start_sidecar(socket: &Path) -> Sidecar {
    let mut child = Command::new(sidecar_bin())
        .arg("--socket")
        .arg(socket)
        .args([
            "--outbound",
            "127.0.0.1:0",
            "--inbound",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--log-json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netd-sidecar");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let ready: serde_json::Value = loop {
        let line = lines
            .next()
            .expect("sidecar exited before ready")
            .expect("read");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if v["message"] == "ready" {
            break v;
        }
    };
    // Keep draining its log so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let addr = |k: &str| ready[k].as_str().expect(k).parse().expect(k);
    Sidecar {
        outbound: addr("outbound"),
        admin: addr("admin"),
        child,
    }
}

/// An HTTP/1.1 backend on loopback answering `ok`; runs until the test's runtime ends.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// Sends `method path` with `Host: host` and returns the status and body.
async fn send(sender: &mut Sender, method: &str, path: &str, host: &str) -> (u16, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request");
    // The connection task may not have run yet (multi-threaded runtime): wait for it.
    sender.ready().await.expect("connection ready");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn metrics(admin: SocketAddr) -> String {
    send(&mut connect(admin).await, "GET", "/metrics", "admin")
        .await
        .1
}

/// The value of the sample `name{labels}`.
fn sample(metrics: &str, name: &str, labels: &str) -> Option<u64> {
    let prefix = format!("{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().expect("number"))
}

fn route_requests(metrics: &str, route: &str) -> Option<u64> {
    sample(
        metrics,
        "netd_http_route_requests_total",
        &format!("direction=\"outbound\",service=\"default/web\",route=\"{route}\""),
    )
}

fn routes(json: serde_json::Value) -> RoutesSpec {
    serde_json::from_value(serde_json::json!({ "routes": json })).expect("routes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_set_through_the_api_label_a_sidecars_requests() {
    let d = Daemon::start("routes-e2e");
    let c = d.client();
    let app = backend().await;
    c.put_service(&ServiceSpec {
        name: "web".into(),
        namespace: "default".into(),
        ports: vec![ServicePort {
            name: None,
            port: 80,
            protocol: Protocol::Http,
            host_port: None,
        }],
        health_check: None,
    })
    .await
    .expect("service");
    let ep: EndpointSpec =
        serde_json::from_value(serde_json::json!({"address": app.ip(), "port": app.port()}))
            .expect("endpoint");
    c.register_endpoint("default", "web", &ep)
        .await
        .expect("endpoint");
    c.put_routes(
        "default",
        "web",
        &routes(serde_json::json!([
            {"name": "users", "path_prefix": "/users", "methods": ["GET"]},
            {"name": "admin", "path_prefix": "/users/admin"}
        ])),
    )
    .await
    .expect("routes");

    let sidecar = start_sidecar(&d.socket);
    // The first snapshot may still be on its way: wait until the service is known.
    assert!(
        eventually(Duration::from_secs(10), || {
            let admin = sidecar.admin;
            async move {
                let mut s = connect(admin).await;
                send(&mut s, "GET", "/ready", "admin").await.0 == 200
            }
        })
        .await,
        "sidecar never got a snapshot from netd"
    );
    let mut client = connect(sidecar.outbound).await;
    for (method, path, times) in [
        ("GET", "/users/1", 3),
        ("GET", "/users/admin/x", 2),
        ("POST", "/users", 2),
        ("GET", "/other", 1),
    ] {
        for _ in 0..times {
            assert_eq!(
                send(&mut client, method, path, "web").await,
                (200, "ok".to_string()),
                "{method} {path}"
            );
        }
    }
    let m = metrics(sidecar.admin).await;
    assert_eq!(route_requests(&m, "users"), Some(3), "{m}");
    assert_eq!(route_requests(&m, "admin"), Some(2), "{m}");
    assert_eq!(route_requests(&m, "default"), Some(3), "{m}");

    // New routes reach the running sidecar through the watch stream; the same keep-alive
    // connection's next requests take them.
    let stored = c
        .put_routes(
            "default",
            "web",
            &routes(serde_json::json!([
                {"name": "writes", "path_prefix": "/users", "methods": ["POST"]}
            ])),
        )
        .await
        .expect("new routes");
    assert!(
        eventually(Duration::from_secs(10), || {
            let admin = sidecar.admin;
            async move { revision_at_least(&metrics(admin).await, stored.revision) }
        })
        .await,
        "the sidecar never saw revision {}",
        stored.revision
    );
    for (method, path) in [("POST", "/users/9"), ("POST", "/users"), ("GET", "/users")] {
        assert_eq!(send(&mut client, method, path, "web").await.0, 200);
    }
    let m = metrics(sidecar.admin).await;
    assert_eq!(route_requests(&m, "writes"), Some(2), "{m}");
    assert_eq!(route_requests(&m, "default"), Some(4), "{m}");
    // Series of routes that are gone keep their counts.
    assert_eq!(route_requests(&m, "users"), Some(3), "{m}");
    drop(sidecar);
}

/// Whether `netd_snapshot_revision` (a sample without labels) is at least `rev`.
fn revision_at_least(metrics: &str, rev: u64) -> bool {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("netd_snapshot_revision "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|v| v >= rev)
}
