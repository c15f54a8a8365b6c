//! Active health checks against a real daemon, with real listeners on loopback: a TCP check
//! follows listeners going away and coming back (one watch event per transition, none per
//! probe), removed endpoints stop being probed and new ones start, an HTTP check respects its
//! path, removing a check resets health to `unknown`, `netd expose --health-check` and the
//! CLI tables, and bad `health_check` input is refused naming the field.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, ok, Daemon};
use hyper::Method;
use netd::client::Client;
use netd_config::netd::{
    EndpointSpec, ErrorBody, Event, Health, HealthCheck, HealthCheckKind, Object, Service,
    ServicePort, ServiceSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);

/// A fast check so the test takes seconds: probe every 250 ms; 2 successes or 3 failures in
/// a row decide (a loopback probe only times out if the daemon stalls for 250 ms, three times
/// in a row, so a loaded machine does not flap it).
fn fast(kind: HealthCheckKind, path: Option<&str>) -> HealthCheck {
    HealthCheck {
        kind,
        path: path.map(str::to_string),
        interval_ms: 250,
        timeout_ms: 250,
        unhealthy_after: 3,
        healthy_after: 2,
    }
}

fn service(name: &str, port: u16, check: Option<HealthCheck>) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        namespace: "default".into(),
        ports: vec![ServicePort {
            name: None,
            port,
            protocol: Default::default(),
            host_port: None,
        }],
        health_check: check,
    }
}

fn endpoint(addr: SocketAddr) -> EndpointSpec {
    serde_json::from_value(serde_json::json!({"address": addr.ip(), "port": addr.port()})).unwrap()
}

/// A TCP listener on loopback that accepts (and counts) connections until stopped.
struct Listener {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl Listener {
    async fn start(addr: SocketAddr) -> Self {
        let l = TcpListener::bind(addr)
            .await
            .expect("bind loopback listener");
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                drop(s);
            }
        });
        Self {
            addr,
            accepted,
            task: Some(task),
        }
    }

    /// Closes the listening socket (connects are refused from then on).
    async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A loopback port with nothing listening on it.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Collects every watch event from `since` on in the background.
fn collect_events(c: &Client, since: u64) -> (Arc<Mutex<Vec<Event>>>, JoinHandle<()>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let c = c.clone();
    let task = tokio::spawn(async move {
        let mut w = c.watch(since).await.expect("watch");
        while let Ok(Some(e)) = w.next().await {
            sink.lock().unwrap().push(e);
        }
    });
    (events, task)
}

/// The health values endpoint puts carried, per endpoint id, in order.
fn health_history(events: &[Event], service: &str) -> BTreeMap<String, Vec<Health>> {
    let mut out: BTreeMap<String, Vec<Health>> = BTreeMap::new();
    for e in events {
        if let Event::Put {
            object: Object::Endpoint(ep),
            ..
        } = e
        {
            if ep.service == service {
                out.entry(ep.id.clone()).or_default().push(ep.health);
            }
        }
    }
    out
}

async fn health_of(c: &Client, service: &str) -> BTreeMap<String, Health> {
    c.endpoints("default", service)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.health))
        .collect()
}

async fn wait_health(c: &Client, d: &Daemon, service: &str, want: &[(SocketAddr, Health)]) {
    let want: BTreeMap<String, Health> = want.iter().map(|(a, h)| (a.to_string(), *h)).collect();
    let ok = eventually(WAIT, || async { health_of(c, service).await == want }).await;
    assert!(
        ok,
        "wanted {want:?}, have {:?}; daemon log:\n{}",
        health_of(c, service).await,
        d.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_follows_listeners_with_one_event_per_transition() {
    let d = Daemon::start("health-tcp");
    let c = d.client();
    let a = Listener::start("127.0.0.1:0".parse().unwrap()).await;
    let mut b = Listener::start("127.0.0.1:0".parse().unwrap()).await;
    let dead = closed_port().await;
    let svc = c
        .put_service(&service("web", 80, Some(fast(HealthCheckKind::Tcp, None))))
        .await
        .unwrap();
    assert_eq!(svc.health_check, Some(fast(HealthCheckKind::Tcp, None)));
    let since = c.status().await.unwrap().revision;
    let (events, watcher) = collect_events(&c, since);
    for addr in [a.addr, b.addr, dead] {
        let ep = c
            .register_endpoint("default", "web", &endpoint(addr))
            .await
            .unwrap();
        assert_eq!(ep.health, Health::Unknown);
    }
    // A service without a check: its endpoint is never probed and stays unknown.
    let unchecked = Listener::start("127.0.0.1:0".parse().unwrap()).await;
    c.put_service(&service("plain", 81, None)).await.unwrap();
    c.register_endpoint("default", "plain", &endpoint(unchecked.addr))
        .await
        .unwrap();

    wait_health(
        &c,
        &d,
        "web",
        &[
            (a.addr, Health::Healthy),
            (b.addr, Health::Healthy),
            (dead, Health::Unhealthy),
        ],
    )
    .await;

    // The endpoints table shows it.
    let table = ok(&d.cli(&["endpoints", "web"]));
    let row = |addr: SocketAddr| {
        table
            .lines()
            .find(|l| l.starts_with(&addr.to_string()))
            .unwrap_or_else(|| panic!("no row for {addr}:\n{table}"))
            .to_string()
    };
    assert!(table.lines().next().unwrap().contains("HEALTH"), "{table}");
    assert!(row(a.addr).contains("healthy"), "{table}");
    assert!(row(dead).contains("unhealthy"), "{table}");
    let services = ok(&d.cli(&["services"]));
    assert!(
        services.contains("2/3 healthy") && services.contains("tcp every 250ms"),
        "{services}"
    );

    // Stop a listener: unhealthy; start it again on the same port: healthy.
    b.stop().await;
    wait_health(
        &c,
        &d,
        "web",
        &[
            (a.addr, Health::Healthy),
            (b.addr, Health::Unhealthy),
            (dead, Health::Unhealthy),
        ],
    )
    .await;
    let b2 = Listener::start(b.addr).await;
    wait_health(
        &c,
        &d,
        "web",
        &[
            (a.addr, Health::Healthy),
            (b2.addr, Health::Healthy),
            (dead, Health::Unhealthy),
        ],
    )
    .await;

    // Probes go on (a's listener keeps being connected to) but write nothing more: over a
    // dozen more probe intervals, no further event.
    let before = a.accepted();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(a.accepted() > before, "probes stopped");
    let history = health_history(&events.lock().unwrap(), "web");
    use Health::*;
    let expected: BTreeMap<String, Vec<Health>> = [
        (a.addr.to_string(), vec![Unknown, Healthy]),
        (
            b.addr.to_string(),
            vec![Unknown, Healthy, Unhealthy, Healthy],
        ),
        (dead.to_string(), vec![Unknown, Unhealthy]),
    ]
    .into_iter()
    .collect();
    assert_eq!(history, expected, "each transition exactly once");
    assert!(
        health_history(&events.lock().unwrap(), "plain")
            .values()
            .all(|h| h == &[Unknown]),
        "unchecked endpoint touched"
    );
    assert_eq!(health_of(&c, "plain").await.values().next(), Some(&Unknown));
    assert_eq!(unchecked.accepted(), 0, "unchecked endpoint probed");

    // A removed endpoint stops being probed; a new one starts.
    c.delete_endpoint("default", "web", &a.addr.to_string())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // let an in-flight probe finish
    let after_delete = a.accepted();
    let fresh = Listener::start("127.0.0.1:0".parse().unwrap()).await;
    c.register_endpoint("default", "web", &endpoint(fresh.addr))
        .await
        .unwrap();
    wait_health(
        &c,
        &d,
        "web",
        &[
            (b2.addr, Health::Healthy),
            (fresh.addr, Health::Healthy),
            (dead, Health::Unhealthy),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        a.accepted(),
        after_delete,
        "a deleted endpoint was still probed"
    );

    // Removing the check hands health back: every endpoint is unknown again, in one change.
    let rev = c.status().await.unwrap().revision;
    let svc = c.put_service(&service("web", 80, None)).await.unwrap();
    assert_eq!(svc.health_check, None);
    assert_eq!(svc.revision, rev + 1);
    assert!(health_of(&c, "web").await.values().all(|h| *h == Unknown));
    watcher.abort();
}

/// A tiny HTTP/1.1 server: 200 on /healthz, 500 elsewhere; records request heads.
async fn http_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 512];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                seen.lock().unwrap().push(head);
                let answer: &[u8] = if path == "/healthz" {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                } else {
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                };
                let _ = s.write_all(answer).await;
            });
        }
    });
    (addr, heads, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_respects_its_path() {
    let d = Daemon::start("health-http");
    let c = d.client();
    let (addr, heads, server) = http_server().await;
    let svc = c
        .put_service(&service(
            "good",
            80,
            Some(fast(HealthCheckKind::Http, Some("/healthz"))),
        ))
        .await
        .unwrap();
    assert_eq!(
        svc.health_check.as_ref().unwrap().path.as_deref(),
        Some("/healthz")
    );
    // No path: `/`, stored explicitly.
    let root = c
        .put_service(&service(
            "root",
            80,
            Some(fast(HealthCheckKind::Http, None)),
        ))
        .await
        .unwrap();
    assert_eq!(
        root.health_check.as_ref().unwrap().path.as_deref(),
        Some("/")
    );
    c.register_endpoint("default", "good", &endpoint(addr))
        .await
        .unwrap();
    c.register_endpoint("default", "root", &endpoint(addr))
        .await
        .unwrap();
    wait_health(&c, &d, "good", &[(addr, Health::Healthy)]).await;
    wait_health(&c, &d, "root", &[(addr, Health::Unhealthy)]).await;
    let heads = heads.lock().unwrap().clone();
    assert!(heads
        .iter()
        .any(|h| h.starts_with("GET /healthz HTTP/1.1\r\n")));
    assert!(heads.iter().any(|h| h.starts_with("GET / HTTP/1.1\r\n")));
    assert!(heads
        .iter()
        .all(|h| h.to_ascii_lowercase().contains("\r\nconnection: close\r\n")));
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expose_sets_a_check_and_keeps_it() {
    let d = Daemon::start("health-expose");
    let c = d.client();
    let (addr, _heads, server) = http_server().await;
    let port = addr.port().to_string();
    let text = ok(&d.cli(&[
        "expose",
        "api",
        &port,
        "--persist",
        "--health-check",
        "http:/healthz",
    ]));
    assert!(text.contains("check http:/healthz every 2s"), "{text}");
    let svc: Service = c.service("default", "api").await.unwrap().unwrap();
    let hc = svc.health_check.unwrap();
    assert_eq!(
        (hc.kind, hc.http_path()),
        (HealthCheckKind::Http, "/healthz")
    );
    assert_eq!((hc.interval_ms, hc.healthy_after), (2000, 2));
    wait_health(&c, &d, "api", &[(addr, Health::Healthy)]).await;
    // Exposing again without --health-check keeps the check.
    ok(&d.cli(&["expose", "api", &port, "--persist"]));
    let svc = c.service("default", "api").await.unwrap().unwrap();
    assert_eq!(svc.health_check.unwrap().http_path(), "/healthz");
    // A bad flag is a usage error naming what is accepted.
    let out = d.cli(&["expose", "api", &port, "--health-check", "udp"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("tcp, http or http:/PATH"),
        "{}",
        common::stderr(&out)
    );
    server.abort();
}

#[tokio::test]
async fn bad_health_check_input_is_refused_naming_the_field() {
    let d = Daemon::start("health-bad");
    let c = d.client();
    let rev = c.status().await.unwrap().revision;
    let cases: &[(&str, &str)] = &[
        (r#"{"kind":"udp"}"#, "health_check.kind"),
        (r#"{"path":"/"}"#, "health_check.kind"),
        (r#"{"kind":"tcp","bogus":1}"#, "health_check.bogus"),
        (r#"{"kind":"tcp","path":"/x"}"#, "health_check.path"),
        (r#"{"kind":"http","path":"healthz"}"#, "health_check.path"),
        (r#"{"kind":"http","path":"/a b"}"#, "health_check.path"),
        (
            r#"{"kind":"tcp","interval_ms":0}"#,
            "health_check.interval_ms",
        ),
        (
            r#"{"kind":"tcp","interval_ms":"2s"}"#,
            "health_check.interval_ms",
        ),
        (
            r#"{"kind":"tcp","timeout_ms":5000}"#,
            "health_check.timeout_ms",
        ),
        (
            r#"{"kind":"tcp","timeout_ms":-1}"#,
            "health_check.timeout_ms",
        ),
        (
            r#"{"kind":"tcp","healthy_after":0}"#,
            "health_check.healthy_after",
        ),
        (
            r#"{"kind":"tcp","unhealthy_after":1000}"#,
            "health_check.unhealthy_after",
        ),
        (r#""tcp""#, "health_check"),
    ];
    for (check, field) in cases {
        let body = format!(r#"{{"name":"web","ports":[{{"port":80}}],"health_check":{check}}}"#);
        let (status, bytes) = c
            .raw(Method::POST, "/v1/services", Some(body.into_bytes()))
            .await
            .unwrap();
        let err: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(status, 400, "{check}: {err:?}");
        assert_eq!(err.field.as_deref(), Some(*field), "{check}: {err:?}");
        assert!(err.error.contains(field), "{check}: {err:?}");
    }
    let s = c.status().await.unwrap();
    assert_eq!((s.revision, s.services), (rev, 0), "nothing stored");
}
