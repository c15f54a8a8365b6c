//! HTTP through the sidecar against real hyper backends: HTTP/1.1 keep-alive and h2c balanced
//! per request, gRPC-shaped trailers, upgrades, trace context, errors, metrics and admin.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::Request;

#[tokio::test]
async fn http1_keepalive_connection_is_balanced_per_request() {
    let (a, b) = (backend("a", Proto::H1).await, backend("b", Proto::H1).await);
    let running = sidecar(
        web_snapshot("http", &[a.addr, b.addr], "round-robin"),
        |_| {},
    )
    .await;
    let mut client = h1(running.addrs.outbound).await;
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let (status, headers, body) =
            read(client.send_request(get("web", "/")).await.unwrap()).await;
        assert_eq!(status, 200);
        seen.insert(body);
        // A trace context was created for a request that had none.
        let tp = headers["x-seen-traceparent"].to_str().unwrap().to_string();
        assert!(
            netd_sidecar::http::trace::parse(tp.as_bytes()).is_some(),
            "{tp:?}"
        );
    }
    assert_eq!(seen, HashSet::from(["a".to_string(), "b".to_string()]));
    assert_eq!(
        (
            a.hits.load(Ordering::Relaxed),
            b.hits.load(Ordering::Relaxed)
        ),
        (10, 10)
    );

    // An incoming traceparent is propagated unchanged.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut req = get("web.default.svc.netd.local:80", "/");
    req.headers_mut().insert("traceparent", tp.parse().unwrap());
    let (_, headers, _) = read(client.send_request(req).await.unwrap()).await;
    assert_eq!(headers["x-seen-traceparent"], tp);

    // Golden metrics counted it all.
    let (status, metrics) = admin_get(&running, "/metrics").await;
    assert_eq!(status, 200);
    let l = "direction=\"outbound\",service=\"default/web\"";
    assert!(
        metrics.contains(&format!("netd_http_requests_total{{{l}}} 21")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "netd_http_responses_total{{{l},class=\"2xx\"}} 21"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "netd_http_response_latency_seconds_count{{{l}}} 21"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "netd_http_peer_requests_total{{{l},peer=\"{}\"}}",
            a.addr
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "netd_detected_connections_total{direction=\"outbound\",protocol=\"http1\"} 1"
        ),
        "{metrics}"
    );
    // The connection itself, in the TCP series: opened once, open now, closed when dropped.
    let conn = "direction=\"outbound\",service=\"-\",protocol=\"http\"";
    for (series, want) in [
        ("netd_tcp_connections_opened_total", 1),
        ("netd_tcp_connections_open", 1),
    ] {
        assert!(
            metrics.contains(&format!("{series}{{{conn}}} {want}\n")),
            "{metrics}"
        );
    }
    drop(client);
    assert_eq!(settle(&running).await, 0);
    let (_, metrics) = admin_get(&running, "/metrics").await;
    assert!(
        metrics.contains(&format!("netd_tcp_connections_open{{{conn}}} 0\n")),
        "{metrics}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn one_h2_connection_reaches_every_endpoint() {
    let backends = [
        backend("a", Proto::H2).await,
        backend("b", Proto::H2).await,
        backend("c", Proto::H2).await,
    ];
    let eps: Vec<_> = backends.iter().map(|b| b.addr).collect();
    // Default balancer (P2C + peak EWMA), protocol found by detection (port hint tcp is not
    // used: the connection is not redirected, so the request's authority routes it).
    let running = sidecar(web_snapshot("http", &eps, "p2c"), |_| {}).await;
    let client = h2(running.addrs.outbound).await;
    // Concurrent streams on the one connection: P2C spreads them by in-flight load.
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get("http://web/slow")
                .body(Full::new(Bytes::new()))
                .unwrap();
            read(client.send_request(req).await.unwrap()).await
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(status, 200);
        seen.insert(body);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    let (_, metrics) = admin_get(&running, "/metrics").await;
    assert!(metrics.contains("protocol=\"h2\"} 1"), "{metrics}");
    running.shutdown().await;
}

#[tokio::test]
async fn grpc_shaped_h2_keeps_trailers() {
    let (a, b) = (backend("a", Proto::H2).await, backend("b", Proto::H2).await);
    let running = sidecar(
        web_snapshot("grpc", &[a.addr, b.addr], "round-robin"),
        |c| {
            // Not redirected: the default target is the service's VIP:port, whose grpc hint
            // skips detection.
            c.default_target = Some("10.96.0.10:80".parse().unwrap());
        },
    )
    .await;
    let mut client = h2(running.addrs.outbound).await;
    for _ in 0..4 {
        let req = Request::post("http://10.96.0.10/pkg.Svc/Call")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let mut req = req;
        *req.uri_mut() = "http://10.96.0.10/grpc".parse().unwrap();
        let resp = client.send_request(req).await.unwrap();
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers forwarded");
        assert_eq!(trailers["grpc-status"], "0");
    }
    assert_eq!(
        (
            a.hits.load(Ordering::Relaxed),
            b.hits.load(Ordering::Relaxed)
        ),
        (2, 2)
    );
    running.shutdown().await;
}

#[tokio::test]
async fn upgrade_passes_through() {
    let a = backend("a", Proto::H1).await;
    let running = sidecar(web_snapshot("http", &[a.addr], "p2c"), |_| {}).await;
    let mut client = h1(running.addrs.outbound).await;
    let req = Request::get("/upgrade")
        .header("host", "web")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(b"ping over the upgraded stream")
        .await
        .unwrap();
    let mut buf = vec![0u8; 29];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping over the upgraded stream");
    running.shutdown().await;
}

#[tokio::test]
async fn unknown_service_and_empty_service_get_proxy_errors() {
    let running = sidecar(web_snapshot("http", &[], "p2c"), |_| {}).await;
    let mut client = h1(running.addrs.outbound).await;
    let (status, headers, _) = read(client.send_request(get("nope", "/")).await.unwrap()).await;
    assert_eq!(status, 502);
    assert!(headers["netd-proxy-error"]
        .to_str()
        .unwrap()
        .contains("nope"));
    let (status, headers, _) = read(client.send_request(get("web", "/")).await.unwrap()).await;
    assert_eq!(status, 503);
    assert!(headers["netd-proxy-error"]
        .to_str()
        .unwrap()
        .contains("no available endpoints"));
    // A dead endpoint: 502 with the address, and the sidecar keeps serving.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    running
        .store
        .publish(web_snapshot("http", &[dead_addr], "p2c"));
    let (status, headers, _) = read(client.send_request(get("web", "/")).await.unwrap()).await;
    assert_eq!(status, 502);
    assert!(headers["netd-proxy-error"]
        .to_str()
        .unwrap()
        .contains(&dead_addr.to_string()));
    let (_, metrics) = admin_get(&running, "/metrics").await;
    assert!(
        metrics
            .contains("netd_http_failures_total{direction=\"outbound\",service=\"default/web\"} 2"),
        "{metrics}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn inbound_goes_to_the_application() {
    let app = backend("app", Proto::H1).await;
    let running = sidecar(web_snapshot("http", &[], "p2c"), |c| {
        c.inbound_target = Some(app.addr)
    })
    .await;
    let mut client = h1(running.addrs.inbound.unwrap()).await;
    let (status, _, body) = read(client.send_request(get("anything", "/")).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (200, "app"));
    let (_, metrics) = admin_get(&running, "/metrics").await;
    assert!(metrics.contains(&format!("netd_http_peer_responses_total{{direction=\"inbound\",service=\"-\",peer=\"{}\",class=\"2xx\"}} 1", app.addr)), "{metrics}");
    running.shutdown().await;
}

#[tokio::test]
async fn admin_reports_ready_live_and_config() {
    let running = sidecar(web_snapshot("http", &[], "round-robin"), |_| {}).await;
    assert_eq!(admin_get(&running, "/live").await.0, 200);
    assert_eq!(admin_get(&running, "/ready").await.0, 200);
    let (status, config) = admin_get(&running, "/config").await;
    assert_eq!(status, 200);
    let parsed: netd_sidecar::snapshot::SnapshotData = serde_json::from_str(&config).unwrap();
    assert_eq!(parsed.services[0].name, "web");
    assert_eq!(parsed.balancers["default/web"].to_string(), "round-robin");
    assert_eq!(admin_get(&running, "/nope").await.0, 404);
    running.shutdown().await;
}
