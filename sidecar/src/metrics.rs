//! Golden metrics in Prometheus text format: HTTP requests, responses by status class and
//! latency histograms per service, per route of a service (`netd_http_route_*`, for services
//! that declare routes) and per peer (endpoint), TCP connections and bytes, and protocol
//! detection outcomes, node-local link connections.
//!
//! Label sets of request series are resolved once (when a service or endpoint appears) into an
//! `Arc` of atomic counters that the data path bumps without locking or formatting; the TCP
//! series of a connection are looked up once per connection (a map lookup under the registry's
//! lock); only `/metrics` walks the registry under its lock. Series are never removed (a process
//! restart clears them).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::local::LinkStats;

/// Which side of the application the traffic is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// From the application to the mesh.
    Outbound,
    /// From the mesh to the application.
    Inbound,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Upper bounds of the latency buckets, in milliseconds.
const BUCKETS_MS: [u64; 14] = [
    1, 2, 3, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_MS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let ms_ceil = us.div_ceil(1000);
        if let Some(i) = BUCKETS_MS.iter().position(|b| ms_ceil <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Counters of HTTP traffic for one label set.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    requests: AtomicU64,
    /// Responses by class: 1xx..5xx at index 0..4.
    responses: [AtomicU64; 5],
    /// Requests that got no response from upstream (connect/protocol failure, no endpoint).
    failures: AtomicU64,
    latency: Histogram,
}

impl HttpMetrics {
    /// Counts a request.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a response with its status and the time from request to response headers.
    pub fn response(&self, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(latency);
    }

    /// Counts a request that failed without an upstream response.
    pub fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests counted.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Responses counted with status class `class` (1-5).
    pub fn responses(&self, class: usize) -> u64 {
        self.responses[class.clamp(1, 5) - 1].load(Ordering::Relaxed)
    }
}

/// Counters of TCP connections for one label set.
#[derive(Debug, Default)]
pub struct TcpMetrics {
    opened: AtomicU64,
    open: AtomicI64,
    connect_failures: AtomicU64,
    idle_closed: AtomicU64,
    /// Bytes from the client to the upstream.
    pub sent: AtomicU64,
    /// Bytes from the upstream to the client.
    pub received: AtomicU64,
}

impl TcpMetrics {
    /// Counts an accepted connection until the guard drops.
    pub fn open(self: &Arc<Self>) -> TcpOpen {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        TcpOpen(self.clone())
    }

    /// Counts a failed upstream connect.
    pub fn connect_failure(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed by the idle timeout.
    pub fn idle_closed(&self) {
        self.idle_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections open right now.
    pub fn currently_open(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }
}

/// An open connection, counted until dropped.
#[derive(Debug)]
pub struct TcpOpen(Arc<TcpMetrics>);

impl Drop for TcpOpen {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

type ServiceKey = (Direction, String);
type RouteKey = (Direction, String, String);
type PeerKey = (Direction, String, SocketAddr);
type TcpKey = (Direction, String, &'static str);

/// The registry of every series.
#[derive(Debug, Default)]
pub struct Metrics {
    http_services: Mutex<BTreeMap<ServiceKey, Arc<HttpMetrics>>>,
    http_routes: Mutex<BTreeMap<RouteKey, Arc<HttpMetrics>>>,
    http_peers: Mutex<BTreeMap<PeerKey, Arc<HttpMetrics>>>,
    tcp: Mutex<BTreeMap<TcpKey, Arc<TcpMetrics>>>,
    detected: Mutex<BTreeMap<(Direction, &'static str), Arc<AtomicU64>>>,
    links: std::sync::OnceLock<Arc<LinkStats>>,
    revision: AtomicU64,
}

fn get_or_insert<K: Ord, V: Default>(map: &Mutex<BTreeMap<K, Arc<V>>>, key: K) -> Arc<V> {
    match map.lock() {
        Ok(mut m) => m.entry(key).or_default().clone(),
        Err(_) => Arc::default(),
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// HTTP series of a service (`-` for traffic to no service).
    pub fn http_service(&self, dir: Direction, service: &str) -> Arc<HttpMetrics> {
        get_or_insert(&self.http_services, (dir, service.to_string()))
    }

    /// HTTP series of one route of a service (`default` for its requests that match none).
    /// Its failures are not counted apart: a request the sidecar answers itself is counted
    /// with its status (502, 503) like any response.
    pub fn http_route(&self, dir: Direction, service: &str, route: &str) -> Arc<HttpMetrics> {
        get_or_insert(
            &self.http_routes,
            (dir, service.to_string(), route.to_string()),
        )
    }

    /// HTTP series of one peer of a service.
    pub fn http_peer(&self, dir: Direction, service: &str, peer: SocketAddr) -> Arc<HttpMetrics> {
        get_or_insert(&self.http_peers, (dir, service.to_string(), peer))
    }

    /// TCP series of a service and protocol (`tcp`, `tls`, `http`, `h2`).
    pub fn tcp(&self, dir: Direction, service: &str, protocol: &'static str) -> Arc<TcpMetrics> {
        get_or_insert(&self.tcp, (dir, service.to_string(), protocol))
    }

    /// Counts one connection whose protocol was detected (or hinted) as `protocol`.
    pub fn detected(&self, dir: Direction, protocol: &'static str) {
        get_or_insert(&self.detected, (dir, protocol)).fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the node-local links' counters from now on (when links are on).
    pub fn set_links(&self, stats: Arc<LinkStats>) {
        let _ = self.links.set(stats);
    }

    /// Records the snapshot revision in use.
    pub fn set_revision(&self, revision: u64) {
        self.revision.store(revision, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) -> std::fmt::Result {
        let services = labelled(&self.http_services, |(d, s)| {
            format!("direction=\"{}\",service=\"{}\"", d.as_str(), esc(s))
        });
        http_family(out, "netd_http", &services, true)?;
        let routes = labelled(&self.http_routes, |(d, s, r)| {
            format!(
                "direction=\"{}\",service=\"{}\",route=\"{}\"",
                d.as_str(),
                esc(s),
                esc(r)
            )
        });
        http_family(out, "netd_http_route", &routes, false)?;
        let peers = labelled(&self.http_peers, |(d, s, p)| {
            format!(
                "direction=\"{}\",service=\"{}\",peer=\"{p}\"",
                d.as_str(),
                esc(s)
            )
        });
        http_family(out, "netd_http_peer", &peers, true)?;
        if let Ok(m) = self.tcp.lock() {
            let rows: Vec<_> = m
                .iter()
                .map(|((d, s, p), v)| {
                    (
                        format!(
                            "direction=\"{}\",service=\"{}\",protocol=\"{p}\"",
                            d.as_str(),
                            esc(s)
                        ),
                        v.clone(),
                    )
                })
                .collect();
            let counter =
                |out: &mut String, name: &str, help: &str, f: &dyn Fn(&TcpMetrics) -> i64| {
                    writeln!(out, "# HELP {name} {help}")?;
                    writeln!(
                        out,
                        "# TYPE {name} {}",
                        if name.ends_with("_total") {
                            "counter"
                        } else {
                            "gauge"
                        }
                    )?;
                    for (l, v) in &rows {
                        writeln!(out, "{name}{{{l}}} {}", f(v))?;
                    }
                    Ok::<_, std::fmt::Error>(())
                };
            counter(
                out,
                "netd_tcp_connections_opened_total",
                "Connections accepted.",
                &|m| m.opened.load(Ordering::Relaxed) as i64,
            )?;
            counter(
                out,
                "netd_tcp_connections_open",
                "Connections open now.",
                &|m| m.open.load(Ordering::Relaxed),
            )?;
            counter(
                out,
                "netd_tcp_connect_failures_total",
                "Upstream connects that failed.",
                &|m| m.connect_failures.load(Ordering::Relaxed) as i64,
            )?;
            counter(
                out,
                "netd_tcp_idle_closed_total",
                "Connections closed after the idle timeout with no byte either way.",
                &|m| m.idle_closed.load(Ordering::Relaxed) as i64,
            )?;
            counter(
                out,
                "netd_tcp_sent_bytes_total",
                "Bytes from clients to upstreams.",
                &|m| m.sent.load(Ordering::Relaxed) as i64,
            )?;
            counter(
                out,
                "netd_tcp_received_bytes_total",
                "Bytes from upstreams to clients.",
                &|m| m.received.load(Ordering::Relaxed) as i64,
            )?;
        }
        if let Ok(m) = self.detected.lock() {
            writeln!(
                out,
                "# HELP netd_detected_connections_total Connections by detected protocol."
            )?;
            writeln!(out, "# TYPE netd_detected_connections_total counter")?;
            for ((d, p), v) in m.iter() {
                writeln!(
                    out,
                    "netd_detected_connections_total{{direction=\"{}\",protocol=\"{p}\"}} {}",
                    d.as_str(),
                    v.load(Ordering::Relaxed)
                )?;
            }
        }
        if let Some(l) = self.links.get() {
            writeln!(
                out,
                "# HELP netd_local_link_connections_total Connections over node-local links: \
                 opened (outbound), accepted or refused (inbound)."
            )?;
            writeln!(out, "# TYPE netd_local_link_connections_total counter")?;
            for (dir, result, v) in [
                ("outbound", "opened", &l.opened),
                ("inbound", "accepted", &l.accepted),
                ("inbound", "refused", &l.refused),
            ] {
                writeln!(
                    out,
                    "netd_local_link_connections_total{{direction=\"{dir}\",result=\"{result}\"}} {}",
                    v.load(Ordering::Relaxed)
                )?;
            }
        }
        writeln!(
            out,
            "# HELP netd_snapshot_revision Registry revision in use."
        )?;
        writeln!(out, "# TYPE netd_snapshot_revision gauge")?;
        writeln!(
            out,
            "netd_snapshot_revision {}",
            self.revision.load(Ordering::Relaxed)
        )
    }
}

/// The series of `map` with their label sets, copied out so that rendering does not hold
/// the lock (empty if it is poisoned).
fn labelled<K>(
    map: &Mutex<BTreeMap<K, Arc<HttpMetrics>>>,
    labels: impl Fn(&K) -> String,
) -> Vec<(String, Arc<HttpMetrics>)> {
    match map.lock() {
        Ok(m) => m.iter().map(|(k, v)| (labels(k), v.clone())).collect(),
        Err(_) => Vec::new(),
    }
}

/// One family of HTTP series: requests, responses by class, failures (when `failures`; the
/// route family has none) and the latency histogram.
fn http_family(
    out: &mut String,
    prefix: &str,
    rows: &[(String, Arc<HttpMetrics>)],
    failures: bool,
) -> std::fmt::Result {
    writeln!(out, "# HELP {prefix}_requests_total HTTP requests.")?;
    writeln!(out, "# TYPE {prefix}_requests_total counter")?;
    for (l, m) in rows {
        writeln!(out, "{prefix}_requests_total{{{l}}} {}", m.requests())?;
    }
    writeln!(
        out,
        "# HELP {prefix}_responses_total HTTP responses by status class."
    )?;
    writeln!(out, "# TYPE {prefix}_responses_total counter")?;
    for (l, m) in rows {
        for class in 1..=5 {
            let n = m.responses(class);
            if n > 0 {
                writeln!(
                    out,
                    "{prefix}_responses_total{{{l},class=\"{class}xx\"}} {n}"
                )?;
            }
        }
    }
    if failures {
        writeln!(
            out,
            "# HELP {prefix}_failures_total HTTP requests that got no upstream response."
        )?;
        writeln!(out, "# TYPE {prefix}_failures_total counter")?;
        for (l, m) in rows {
            writeln!(
                out,
                "{prefix}_failures_total{{{l}}} {}",
                m.failures.load(Ordering::Relaxed)
            )?;
        }
    }
    writeln!(
        out,
        "# HELP {prefix}_response_latency_seconds Time from request to response headers."
    )?;
    writeln!(out, "# TYPE {prefix}_response_latency_seconds histogram")?;
    for (l, m) in rows {
        let h = &m.latency;
        let mut cumulative = 0;
        for (b, c) in BUCKETS_MS.iter().zip(&h.buckets) {
            cumulative += c.load(Ordering::Relaxed);
            writeln!(
                out,
                "{prefix}_response_latency_seconds_bucket{{{l},le=\"{}\"}} {cumulative}",
                *b as f64 / 1000.0
            )?;
        }
        writeln!(
            out,
            "{prefix}_response_latency_seconds_bucket{{{l},le=\"+Inf\"}} {}",
            h.count()
        )?;
        writeln!(
            out,
            "{prefix}_response_latency_seconds_sum{{{l}}} {}",
            h.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        )?;
        writeln!(
            out,
            "{prefix}_response_latency_seconds_count{{{l}}} {}",
            h.count()
        )?;
    }
    Ok(())
}

/// Escapes a label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::new();
        let s = m.http_service(Direction::Outbound, "default/web");
        s.request();
        s.request();
        s.response(200, Duration::from_micros(1500));
        s.response(503, Duration::from_millis(30));
        let t = m.tcp(Direction::Inbound, "-", "tcp");
        let open = t.open();
        t.sent.fetch_add(42, Ordering::Relaxed);
        let text = m.render();
        let l = "direction=\"outbound\",service=\"default/web\"";
        for want in [
            format!("netd_http_requests_total{{{l}}} 2"),
            format!("netd_http_responses_total{{{l},class=\"2xx\"}} 1"),
            format!("netd_http_responses_total{{{l},class=\"5xx\"}} 1"),
            format!("netd_http_response_latency_seconds_bucket{{{l},le=\"0.001\"}} 0"),
            format!("netd_http_response_latency_seconds_bucket{{{l},le=\"0.002\"}} 1"),
            format!("netd_http_response_latency_seconds_bucket{{{l},le=\"0.05\"}} 2"),
            format!("netd_http_response_latency_seconds_count{{{l}}} 2"),
            "netd_tcp_connections_open{direction=\"inbound\",service=\"-\",protocol=\"tcp\"} 1"
                .into(),
            "netd_tcp_sent_bytes_total{direction=\"inbound\",service=\"-\",protocol=\"tcp\"} 42"
                .into(),
        ] {
            assert!(text.contains(&want), "missing {want}\n{text}");
        }
        // Route series are a family of their own, without failures.
        let r = m.http_route(Direction::Outbound, "default/web", "users");
        r.request();
        r.response(201, Duration::from_millis(3));
        let text = m.render();
        let l = "direction=\"outbound\",service=\"default/web\",route=\"users\"";
        for want in [
            format!("netd_http_route_requests_total{{{l}}} 1"),
            format!("netd_http_route_responses_total{{{l},class=\"2xx\"}} 1"),
            format!("netd_http_route_response_latency_seconds_bucket{{{l},le=\"0.003\"}} 1"),
            format!("netd_http_route_response_latency_seconds_count{{{l}}} 1"),
        ] {
            assert!(text.contains(&want), "missing {want}\n{text}");
        }
        assert!(!text.contains("netd_http_route_failures_total"), "{text}");
        assert!(text.contains("# TYPE netd_http_route_response_latency_seconds histogram"));
        drop(open);
        assert!(m.render().contains(
            "netd_tcp_connections_open{direction=\"inbound\",service=\"-\",protocol=\"tcp\"} 0"
        ));
    }
}
