//! Configuration files of the `mesh` benchmark's processes: the origin server (nginx,
//! `return 200`), the nginx and HAProxy proxy hops, the sidecars' `--snapshot` files and the
//! wrk script that prints a parseable summary. Pure functions of ports and paths, so they can
//! be checked without running anything.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

/// The origin's fixed response body.
pub const BODY: &str = "hello from netd-bench\n";
/// Host header every client request carries; the sidecar's outbound hop routes it to service
/// `default/hello`. nginx and HAProxy ignore it.
pub const HOST: &str = "hello";
/// Keep-alive requests per connection for nginx (its default of 1000 would make wrk reconnect
/// every 1000 requests, which the sidecar and HAProxy never do).
const NGINX_KEEPALIVE_REQUESTS: u32 = 1_000_000;

/// Lines shared by every nginx instance: one process (`master_process off`: the worker is the
/// only process, so its PID is the one measured), no daemon, every path in `dir`.
fn nginx_common(name: &str, dir: &Path) -> String {
    let d = dir.display();
    let mut s = String::new();
    let _ = writeln!(s, "# netd-bench mesh: {name}");
    s.push_str("daemon off;\nmaster_process off;\nworker_processes 1;\n");
    let _ = writeln!(s, "pid {d}/{name}.pid;");
    let _ = writeln!(s, "error_log {d}/{name}.error.log warn;");
    s.push_str("events {\n    worker_connections 4096;\n}\n");
    s.push_str("http {\n    access_log off;\n");
    for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(s, "    {kind}_temp_path {d}/{name}-tmp/{kind};");
    }
    let _ = writeln!(s, "    keepalive_requests {NGINX_KEEPALIVE_REQUESTS};");
    s.push_str("    keepalive_timeout 75s;\n");
    s
}

/// The origin server: nginx answering every request with 200 and [`BODY`].
pub fn nginx_origin(dir: &Path, port: u16) -> String {
    let mut s = nginx_common("origin", dir);
    let _ = writeln!(s, "    server {{\n        listen 127.0.0.1:{port};");
    s.push_str("        location / {\n            default_type text/plain;\n");
    let _ = writeln!(s, "            return 200 {:?};", BODY);
    s.push_str("        }\n    }\n}\n");
    s
}

/// One nginx proxy hop: `port` → `next`, with a keep-alive upstream pool.
pub fn nginx_hop(name: &str, dir: &Path, port: u16, next: u16) -> String {
    let mut s = nginx_common(name, dir);
    let _ = writeln!(
        s,
        "    upstream next {{\n        server 127.0.0.1:{next};\n        keepalive 64;\n        \
         keepalive_requests {NGINX_KEEPALIVE_REQUESTS};\n    }}"
    );
    let _ = writeln!(s, "    server {{\n        listen 127.0.0.1:{port};");
    s.push_str(
        "        location / {\n            proxy_pass http://next;\n            \
         proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n        }\n    \
         }\n}\n",
    );
    s
}

/// One HAProxy hop: `port` → `next`, HTTP mode, one thread, idle server connections shared
/// between clients (`http-reuse always`), no logs.
pub fn haproxy_hop(name: &str, port: u16, next: u16) -> String {
    format!(
        "# netd-bench mesh: {name}
global
    nbthread 1
    maxconn 4000

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend hop
    bind 127.0.0.1:{port}
    default_backend next

backend next
    server next 127.0.0.1:{next}
"
    )
}

/// Snapshot of the outbound sidecar (hop 1): service `default/hello` (HTTP port 80 on a VIP
/// nobody uses, since nothing is redirected) with one endpoint, the inbound sidecar's
/// listener on `127.0.0.1:next`.
pub fn sidecar_outbound_snapshot(next: u16) -> serde_json::Value {
    json!({
        "revision": 1,
        "services": [{
            "name": HOST, "namespace": "default", "vip": "10.96.0.10",
            "ports": [{"port": 80, "protocol": "http"}],
        }],
        "endpoints": [{
            "id": "hop2", "service": HOST, "namespace": "default",
            "address": "127.0.0.1", "port": next, "node": "bench",
        }],
    })
}

/// Snapshot of the inbound sidecar (hop 2): empty; `--inbound-target` sends everything it
/// accepts to the origin.
pub fn sidecar_inbound_snapshot() -> serde_json::Value {
    json!({"revision": 1})
}

/// Marker that starts the line [`wrk_script`] prints at the end of a run.
pub const WRK_MARKER: &str = "netd-bench-wrk:";

/// wrk Lua script: a `done` hook printing totals, errors and latency percentiles (µs,
/// including p99.9, which wrk's own `--latency` output lacks) as `key=value` pairs.
pub fn wrk_script() -> String {
    let mut s = String::from("done = function(summary, latency, requests)\n");
    s.push_str("  local e = summary.errors\n");
    let _ = writeln!(
        s,
        "  io.write(string.format(\"{WRK_MARKER} requests=%.0f duration_us=%.0f bytes=%.0f \
         connect=%.0f read=%.0f write=%.0f status=%.0f timeout=%.0f p50=%.0f p90=%.0f \
         p99=%.0f p999=%.0f max=%.0f mean=%.1f\\n\","
    );
    s.push_str(
        "    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,\n    \
         e.status, e.timeout, latency:percentile(50), latency:percentile(90),\n    \
         latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))\nend\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_configs_are_single_process_and_pooled() {
        let dir = Path::new("/tmp/x");
        let o = nginx_origin(dir, 8080);
        assert!(o.contains("master_process off;"));
        assert!(o.contains("listen 127.0.0.1:8080;"));
        assert!(o.contains("return 200 \"hello from netd-bench\\n\";"));
        assert!(o.contains("proxy_temp_path /tmp/x/origin-tmp/proxy;"));
        assert_eq!(o.matches('{').count(), o.matches('}').count());
        let h = nginx_hop("nginx-hop1", dir, 9000, 9001);
        for needle in [
            "server 127.0.0.1:9001;",
            "keepalive 64;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "listen 127.0.0.1:9000;",
            "pid /tmp/x/nginx-hop1.pid;",
        ] {
            assert!(h.contains(needle), "{needle}\n{h}");
        }
        assert_eq!(h.matches('{').count(), h.matches('}').count());
    }

    #[test]
    fn haproxy_and_snapshots() {
        let h = haproxy_hop("haproxy-hop2", 7000, 7001);
        assert!(h.contains("nbthread 1") && h.contains("http-reuse always"));
        assert!(h.contains("bind 127.0.0.1:7000") && h.contains("server next 127.0.0.1:7001"));
        let s = sidecar_outbound_snapshot(15006);
        assert_eq!(s["endpoints"][0]["port"], 15006);
        assert_eq!(s["services"][0]["name"], HOST);
        assert_eq!(sidecar_inbound_snapshot()["revision"], 1);
    }

    #[test]
    fn wrk_script_prints_the_marker() {
        let s = wrk_script();
        assert!(s.starts_with("done = function"));
        assert!(s.contains(WRK_MARKER) && s.contains("percentile(99.9)"));
        assert!(s.trim_end().ends_with("end"));
    }
}
