//! The two loads of the `mesh` benchmark, the same for every path:
//!
//! - **fixed concurrency**: wrk (`-t1 -cN`, keep-alive HTTP/1.1), closed loop; its summary
//!   comes from the Lua `done` hook of [`wrk_script`](super::configs::wrk_script), parsed by
//!   [`parse_wrk`];
//! - **fixed rate**: [`open_loop`], an open-loop generator (tokio current-thread runtime +
//!   hyper HTTP/1.1 client connections). Request `i` is due at `start + i / rate`; each
//!   connection takes the next due request as soon as it is free, waits for its due time and
//!   sends it. Latency is measured **from the due time**, not from the actual send, so a slow
//!   response that holds the requests behind it is charged to them too (no coordinated
//!   omission). tokio's timer has 1 ms granularity, so the last 2 ms before a due time are
//!   waited by yielding (a busy wait on the load generator's own CPU).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::stats::{percentile, round3};

/// wrk's summary of one fixed-concurrency run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrkSummary {
    /// Completed requests.
    pub requests: u64,
    /// Run length, µs.
    pub duration_us: u64,
    /// Connect, read, write errors, non-2xx/3xx answers and timeouts, added up.
    pub errors: u64,
    /// Latency percentiles and maximum, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Slowest request, µs.
    pub max_us: f64,
    /// Mean latency, µs.
    pub mean_us: f64,
}

impl WrkSummary {
    /// Completed requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }

    /// JSON form.
    pub fn to_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "duration_us": self.duration_us,
            "errors": self.errors,
            "req_per_s": round3(self.rate()),
            "p50_us": self.p50_us, "p90_us": self.p90_us, "p99_us": self.p99_us,
            "p999_us": self.p999_us, "max_us": self.max_us, "mean_us": self.mean_us,
        })
    }
}

/// Parses the `done` hook's line out of wrk's output.
pub fn parse_wrk(out: &str) -> Result<WrkSummary, String> {
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix(super::configs::WRK_MARKER))
        .ok_or("no summary line in wrk's output (was the Lua script loaded?)")?;
    let mut s = WrkSummary::default();
    let mut seen = 0;
    for pair in line.split_whitespace() {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let v: f64 = v
            .parse()
            .map_err(|_| format!("wrk summary: bad {pair:?}"))?;
        seen += 1;
        match k {
            "requests" => s.requests = v as u64,
            "duration_us" => s.duration_us = v as u64,
            "connect" | "read" | "write" | "status" | "timeout" => s.errors += v as u64,
            "p50" => s.p50_us = v,
            "p90" => s.p90_us = v,
            "p99" => s.p99_us = v,
            "p999" => s.p999_us = v,
            "max" => s.max_us = v,
            "mean" => s.mean_us = v,
            _ => seen -= 1,
        }
    }
    if seen < 13 || s.duration_us == 0 {
        return Err(format!("wrk summary incomplete: {line:?}"));
    }
    Ok(s)
}

/// Parameters of an open-loop run.
#[derive(Debug, Clone)]
pub struct RateSpec {
    /// Where to send (`http://addr/`, `Host: host`).
    pub addr: SocketAddr,
    /// Host header.
    pub host: &'static str,
    /// Requests per second.
    pub rate: u32,
    /// How long requests are scheduled for.
    pub duration: Duration,
    /// Keep-alive connections (the most requests in flight at once).
    pub conns: usize,
    /// A request unanswered after this long is an error.
    pub timeout: Duration,
}

/// Result of an open-loop run.
#[derive(Debug, Clone, Default)]
pub struct RateResult {
    /// Requests scheduled.
    pub scheduled: u64,
    /// Requests answered with 200 and read in full.
    pub ok: u64,
    /// Failed, timed out or never sent (the run's hard limit passed).
    pub errors: u64,
    /// The first error seen.
    pub first_error: Option<String>,
    /// Answered requests per second, from the first due time until the last answer (at
    /// least the scheduled span).
    pub achieved: f64,
    /// Latency from due time, µs: p50, p99, p99.9, max.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Slowest, µs.
    pub max_us: f64,
    /// How late requests were sent after their due time (generator lag), p99, µs.
    pub send_lag_p99_us: f64,
}

impl RateResult {
    /// JSON form.
    pub fn to_json(&self) -> Value {
        json!({
            "scheduled": self.scheduled, "ok": self.ok, "errors": self.errors,
            "first_error": self.first_error, "achieved_per_s": round3(self.achieved),
            "p50_us": round3(self.p50_us), "p99_us": round3(self.p99_us),
            "p999_us": round3(self.p999_us), "max_us": round3(self.max_us),
            "send_lag_p99_us": round3(self.send_lag_p99_us),
        })
    }
}

/// Per-connection tallies.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<f64>,
    lags_us: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Waits until `due`: timer sleep while more than 2 ms away, then yields (busy wait).
async fn wait_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        if due - now > Duration::from_millis(2) {
            tokio::time::sleep_until((due - Duration::from_millis(1)).into()).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

async fn one_request(sender: &mut Sender, host: &'static str) -> Result<(), String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let req = hyper::Request::get("/")
        .header(hyper::header::HOST, host)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    if status != hyper::StatusCode::OK {
        return Err(format!("status {status}"));
    }
    Ok(())
}

async fn connection_loop(
    spec: Arc<RateSpec>,
    mut sender: Sender,
    next: Arc<AtomicU64>,
    total: u64,
    start: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let interval_ns = 1e9 / f64::from(spec.rate);
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            break;
        }
        let due = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
        wait_until(due).await;
        let sent = Instant::now();
        tally
            .lags_us
            .push(sent.duration_since(due).as_secs_f64() * 1e6);
        match tokio::time::timeout(spec.timeout, one_request(&mut sender, spec.host)).await {
            Ok(Ok(())) => tally.latencies_us.push(due.elapsed().as_secs_f64() * 1e6),
            Ok(Err(e)) => {
                tally.error(e);
                match connect(spec.addr).await {
                    Ok(s) => sender = s,
                    Err(e) => {
                        tally.error(e);
                        break;
                    }
                }
            }
            Err(_) => {
                tally.error(format!("no answer within {:?}", spec.timeout));
                match connect(spec.addr).await {
                    Ok(s) => sender = s,
                    Err(e) => {
                        tally.error(e);
                        break;
                    }
                }
            }
        }
    }
    tally
}

/// Runs the open-loop load on the calling thread (its own current-thread runtime), bounded
/// by `duration + timeout + 5 s`; requests still unanswered then count as errors.
pub fn open_loop(spec: RateSpec) -> Result<RateResult, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let total = (f64::from(spec.rate) * spec.duration.as_secs_f64()).round() as u64;
    let spec = Arc::new(spec);
    runtime.block_on(async move {
        let mut senders = Vec::with_capacity(spec.conns);
        for _ in 0..spec.conns {
            senders.push(connect(spec.addr).await?);
        }
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now() + Duration::from_millis(20);
        let tasks: Vec<_> = senders
            .into_iter()
            .map(|s| tokio::spawn(connection_loop(spec.clone(), s, next.clone(), total, start)))
            .collect();
        let limit = start + spec.duration + spec.timeout + Duration::from_secs(5);
        let mut tallies = Vec::new();
        let mut result = RateResult {
            scheduled: total,
            ..RateResult::default()
        };
        for t in tasks {
            let abort = t.abort_handle();
            match tokio::time::timeout_at(limit.into(), t).await {
                Ok(Ok(tally)) => tallies.push(tally),
                Ok(Err(e)) => result.first_error = Some(format!("task: {e}")),
                Err(_) => {
                    abort.abort();
                    result
                        .first_error
                        .get_or_insert_with(|| "hard time limit reached".into());
                }
            }
        }
        // Over the time it took to answer them: a path that falls behind shows a lower rate.
        let span = start.elapsed().max(spec.duration).as_secs_f64();
        Ok(summarise(result, tallies, span))
    })
}

fn summarise(mut result: RateResult, tallies: Vec<Tally>, span_secs: f64) -> RateResult {
    let mut lat = Vec::new();
    let mut lag = Vec::new();
    for t in tallies {
        lat.extend(t.latencies_us);
        lag.extend(t.lags_us);
        result.errors += t.errors;
        if result.first_error.is_none() {
            result.first_error = t.first_error;
        }
    }
    result.ok = lat.len() as u64;
    // Scheduled requests neither answered nor counted as failed were never sent.
    result.errors = result
        .errors
        .max(result.scheduled.saturating_sub(result.ok));
    result.achieved = result.ok as f64 / span_secs.max(1e-9);
    lat.sort_by(f64::total_cmp);
    lag.sort_by(f64::total_cmp);
    let p = |v: &[f64], q| percentile(v, q).unwrap_or(f64::NAN);
    result.p50_us = p(&lat, 50.0);
    result.p99_us = p(&lat, 99.0);
    result.p999_us = p(&lat, 99.9);
    result.max_us = lat.last().copied().unwrap_or(f64::NAN);
    result.send_lag_p99_us = p(&lag, 99.0);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUT: &str = "Running 10s test @ http://127.0.0.1:8080/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.61ms  200.00us   9.00ms   90.00%
  300000 requests in 10.00s, 45.00MB read
Requests/sec:  30000.00
netd-bench-wrk: requests=300000 duration_us=10000000 bytes=47185920 connect=0 read=1 write=0 status=2 timeout=0 p50=1590 p90=1800 p99=2400 p999=3100 max=9000 mean=1610.5
";

    #[test]
    fn parses_the_done_hook_line() {
        let s = parse_wrk(WRK_OUT).unwrap();
        assert_eq!(
            (s.requests, s.duration_us, s.errors),
            (300_000, 10_000_000, 3)
        );
        assert_eq!(
            (s.p50_us, s.p99_us, s.p999_us, s.max_us),
            (1590.0, 2400.0, 3100.0, 9000.0)
        );
        assert!((s.rate() - 30_000.0).abs() < 1e-6);
        assert!(parse_wrk("Requests/sec: 1\n").is_err());
        assert!(parse_wrk("netd-bench-wrk: requests=1\n").is_err());
        assert!(parse_wrk("netd-bench-wrk: requests=x duration_us=1\n").is_err());
    }

    #[test]
    fn summary_counts_unsent_requests_as_errors() {
        let tally = Tally {
            latencies_us: vec![100.0, 300.0, 200.0],
            lags_us: vec![1.0, 2.0, 3.0],
            errors: 1,
            first_error: Some("status 502".into()),
        };
        let base = RateResult {
            scheduled: 5,
            ..RateResult::default()
        };
        let r = summarise(base, vec![tally], 1.0);
        assert_eq!((r.ok, r.errors), (3, 2));
        assert_eq!((r.p50_us, r.max_us), (200.0, 300.0));
        assert_eq!(r.first_error.as_deref(), Some("status 502"));
        assert_eq!(r.achieved, 3.0);
    }
}
