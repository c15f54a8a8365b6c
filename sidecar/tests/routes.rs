//! HTTP routes through a real sidecar: requests on one keep-alive HTTP/1.1 connection and one
//! HTTP/2 connection are matched to their service's routes one by one (longest prefix, method
//! filter, query ignored, default route), and `/metrics` counts each route's requests,
//! responses and latencies — including requests the sidecar answers itself. Inbound, with the
//! binary in a throwaway namespace behind real interception, requests are counted under the
//! routes of the service whose endpoint they were sent to.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::TokioIo;
use netd_cni::nat::intercept::{self, InterceptSpec};
use netd_cni::netns::NamedNetNs;
use tokio::net::TcpStream;

/// `web` over `eps`, `h2` over `h2_ep` (an HTTP/2 backend) and `empty` (no endpoints), all
/// with routes.
fn routed_snapshot(
    eps: &[std::net::SocketAddr],
    h2_ep: std::net::SocketAddr,
) -> netd_sidecar::snapshot::SnapshotData {
    let mut data = serde_json::to_value(web_snapshot("http", eps, "p2c")).unwrap();
    data["services"][0]["routes"] = serde_json::json!([
        {"name": "users", "path_prefix": "/users", "methods": ["GET", "POST"]},
        {"name": "users-admin", "path_prefix": "/users/admin/"},
        {"name": "health", "path_prefix": "/healthz", "methods": ["GET"]},
        {"name": "orders", "path_prefix": "/orders"}
    ]);
    data["services"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "name": "empty", "namespace": "default", "vip": "10.96.0.20",
            "ports": [{"port": 80, "protocol": "http"}],
            "routes": [{"name": "users", "path_prefix": "/users"}]
        }));
    data["services"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "name": "h2", "namespace": "default", "vip": "10.96.0.30",
            "ports": [{"port": 80}],
            "routes": [{"name": "users", "path_prefix": "/users", "methods": ["GET"]}]
        }));
    data["endpoints"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "id": "h2", "service": "h2", "namespace": "default",
            "address": h2_ep.ip(), "port": h2_ep.port(), "node": "test"
        }));
    serde_json::from_value(data).unwrap()
}

fn request(method: &str, uri: &str, host: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// The value of the one sample `name{labels}` in a Prometheus text exposition.
fn sample(metrics: &str, name: &str, labels: &str) -> Option<u64> {
    let prefix = format!("{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn requests_are_counted_under_the_route_they_match() {
    let (a, b) = (backend("a", Proto::H1).await, backend("b", Proto::H2).await);
    let running = sidecar(routed_snapshot(&[a.addr], b.addr), |_| {}).await;
    // One connection for every request: the route is matched per request, not per
    // connection.
    let mut client = h1(running.addrs.outbound).await;
    let sent = [
        ("GET", "/users", 3, "users"),
        ("POST", "/users/1", 2, "users"),
        ("GET", "http://web/users/9", 1, "users"),
        ("DELETE", "/users/1", 1, "default"),
        ("GET", "/users/admin/x", 4, "users-admin"),
        ("POST", "/users/admin", 1, "users-admin"),
        ("GET", "/usersettings", 1, "default"),
        ("GET", "/healthz?full=1", 2, "health"),
        ("HEAD", "/healthz", 1, "default"),
    ];
    for (method, uri, times, route) in sent {
        for _ in 0..times {
            let resp = client
                .send_request(request(method, uri, "web"))
                .await
                .unwrap();
            let (status, _, _) = read(resp).await;
            assert_eq!(status, 200, "{method} {uri} ({route})");
        }
    }
    // HTTP/2 (upstream too): the path comes from `:path`.
    let mut h2client = h2(running.addrs.outbound).await;
    for (method, path) in [("GET", "/users/2"), ("GET", "/users"), ("PUT", "/users/2")] {
        let req = request(method, &format!("http://h2{path}"), "h2");
        let (status, _, _) = read(h2client.send_request(req).await.unwrap()).await;
        assert_eq!(status, 200, "{method} {path}");
    }
    // A service without endpoints: the sidecar's own 503 is counted under the route.
    let (status, _, _) = read(
        client
            .send_request(request("GET", "/users/1", "empty"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503);

    let (_, metrics) = admin_get(&running, "/metrics").await;
    let labels = |service: &str, route: &str| {
        format!("direction=\"outbound\",service=\"default/{service}\",route=\"{route}\"")
    };
    for (route, want) in [
        ("users", 6),
        ("users-admin", 5),
        ("health", 2),
        ("default", 3),
        // Declared but never matched: resolved with the others, at 0.
        ("orders", 0),
    ] {
        let l = labels("web", route);
        assert_eq!(
            sample(&metrics, "netd_http_route_requests_total", &l),
            Some(want),
            "{route}\n{metrics}"
        );
        let responses = sample(
            &metrics,
            "netd_http_route_responses_total",
            &format!("{l},class=\"2xx\""),
        );
        assert_eq!(responses.unwrap_or(0), want, "{route} responses\n{metrics}");
        assert_eq!(
            sample(
                &metrics,
                "netd_http_route_response_latency_seconds_count",
                &l
            ),
            Some(want),
            "{route} latency\n{metrics}"
        );
        assert_eq!(
            sample(
                &metrics,
                "netd_http_route_response_latency_seconds_bucket",
                &format!("{l},le=\"+Inf\"")
            ),
            Some(want),
            "{route} buckets\n{metrics}"
        );
    }
    for (route, want) in [("users", 2), ("default", 1)] {
        let l = labels("h2", route);
        assert_eq!(
            sample(
                &metrics,
                "netd_http_route_responses_total",
                &format!("{l},class=\"2xx\"")
            ),
            Some(want),
            "h2 {route}\n{metrics}"
        );
    }
    let l = labels("empty", "users");
    assert_eq!(
        sample(&metrics, "netd_http_route_requests_total", &l),
        Some(1),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "netd_http_route_responses_total",
            &format!("{l},class=\"5xx\"")
        ),
        Some(1),
        "{metrics}"
    );
    // The per-service series are unchanged: every request once.
    assert_eq!(
        sample(
            &metrics,
            "netd_http_requests_total",
            "direction=\"outbound\",service=\"default/web\""
        ),
        Some(16),
        "{metrics}"
    );
    drop((client, h2client));
    running.shutdown().await;
}

#[tokio::test]
async fn services_without_routes_get_no_route_series() {
    let a = backend("a", Proto::H1).await;
    let running = sidecar(web_snapshot("http", &[a.addr], "p2c"), |_| {}).await;
    let mut client = h1(running.addrs.outbound).await;
    let (status, _, _) = read(client.send_request(get("web", "/users")).await.unwrap()).await;
    assert_eq!(status, 200);
    let (_, metrics) = admin_get(&running, "/metrics").await;
    assert!(
        !metrics.contains("netd_http_route_requests_total{"),
        "{metrics}"
    );
    assert!(metrics
        .contains("netd_http_requests_total{direction=\"outbound\",service=\"default/web\"} 1"));
    drop(client);
    running.shutdown().await;
}

/// A throwaway namespace named after this process and a counter (removed on drop).
fn netns(tag: &str) -> NamedNetNs {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "netd-sc-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    NamedNetNs::create(&name).expect("create namespace")
}

fn ip(ns: &NamedNetNs, args: &[&str]) {
    let name = ns.path().file_name().unwrap().to_str().unwrap();
    let out = Command::new("ip")
        .args(["-n", name])
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip -n {name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP connection opened from inside `ns`, used from this runtime.
async fn connect_in(ns: &NamedNetNs, addr: SocketAddr) -> TcpStream {
    let std = ns
        .ns()
        .run(|| std::net::TcpStream::connect(addr))
        .expect("enter namespace")
        .expect("connect");
    std.set_nonblocking(true).unwrap();
    TcpStream::from_std(std).unwrap()
}

async fn h1_over(stream: TcpStream) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender.ready().await.unwrap();
    sender
}

/// The sidecar binary in `ns`, killed by its pid on drop.
struct InNamespace(Child);

impl Drop for InNamespace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn inbound_requests_are_counted_under_their_services_routes() {
    // A container (`srv`: the application on 127.0.0.1:80 behind its sidecar) and a client
    // namespace, joined by a veth pair.
    let (srv, cli) = (netns("srv"), netns("cli"));
    let cli_name = cli
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    ip(
        &srv,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &cli_name,
        ],
    );
    for (ns, addr) in [(&srv, "10.251.0.1/24"), (&cli, "10.251.0.2/24")] {
        ip(ns, &["link", "set", "lo", "up"]);
        ip(ns, &["addr", "add", addr, "dev", "eth0"]);
        ip(ns, &["link", "set", "eth0", "up"]);
    }
    let endpoint: SocketAddr = "10.251.0.1:80".parse().unwrap();
    intercept::install(
        srv.ns(),
        &InterceptSpec {
            dns_port: None,
            addresses: vec![endpoint.ip()],
            ..InterceptSpec::default()
        },
    )
    .expect("interception");
    // The application, listening inside the container.
    let app = srv
        .ns()
        .run(|| std::net::TcpListener::bind("127.0.0.1:80"))
        .unwrap()
        .unwrap();
    app.set_nonblocking(true).unwrap();
    let app = tokio::net::TcpListener::from_std(app).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = app.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"app"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let mut data = serde_json::to_value(service_snapshot(
        "web",
        "10.96.0.10",
        80,
        "http",
        &[endpoint],
        "p2c",
    ))
    .unwrap();
    data["services"][0]["routes"] = serde_json::json!([
        {"name": "users", "path_prefix": "/users", "methods": ["GET"]}
    ]);
    let snap = std::env::temp_dir().join(format!(
        "netd-sidecar-{}-inbound-routes.json",
        std::process::id()
    ));
    std::fs::write(&snap, data.to_string()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_netd-sidecar"))
        .arg("--netns")
        .arg(srv.path())
        .arg("--snapshot")
        .arg(&snap)
        .args(["--mark", "0x4e44", "--log-json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netd-sidecar");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let _sidecar = InNamespace(child);
    loop {
        let line = lines.next().expect("sidecar exited before ready").unwrap();
        if line.contains("\"ready\"") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let _ = std::fs::remove_file(&snap);

    // An unmodified client calls the endpoint's address; interception takes it to the
    // sidecar's inbound listener, which forwards to the application.
    let mut client = h1_over(connect_in(&cli, endpoint).await).await;
    for (method, path, times) in [
        ("GET", "/users/7", 3),
        ("POST", "/users/7", 1),
        ("GET", "/", 2),
    ] {
        for _ in 0..times {
            client.ready().await.unwrap();
            let resp = client
                .send_request(request(method, path, "web"))
                .await
                .unwrap();
            let (status, _, body) = read(resp).await;
            assert_eq!((status, body.as_str()), (200, "app"), "{method} {path}");
        }
    }
    let admin: SocketAddr = "127.0.0.1:15000".parse().unwrap();
    let mut admin = h1_over(connect_in(&srv, admin).await).await;
    let (_, _, metrics) = read(admin.send_request(get("admin", "/metrics")).await.unwrap()).await;
    let l =
        |route: &str| format!("direction=\"inbound\",service=\"default/web\",route=\"{route}\"");
    assert_eq!(
        sample(&metrics, "netd_http_route_requests_total", &l("users")),
        Some(3),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "netd_http_route_requests_total", &l("default")),
        Some(3),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "netd_http_route_responses_total",
            &format!("{},class=\"2xx\"", l("users"))
        ),
        Some(3),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "netd_http_requests_total",
            "direction=\"inbound\",service=\"default/web\""
        ),
        Some(6),
        "{metrics}"
    );
}
