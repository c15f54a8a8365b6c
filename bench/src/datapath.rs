//! Datapath: a TCP request/response server in a container namespace and a load generator in
//! the host namespace, over plain `std::net`.
//!
//! Every request is 64 bytes and answered with 64 bytes. Two modes, named after netperf's:
//! - **rr**: each connection stays open and sends requests back to back. Once conntrack has
//!   the flow, NAT rules are not consulted again, so this shows the per-packet cost of a
//!   translated flow.
//! - **crr**: every request opens a new connection (closed by the client with RST, so no
//!   TIME_WAIT piles up). Every connection traverses the NAT rules once, so this is where a
//!   linear rule list and a map lookup differ.
//!
//! Runs are bounded: a warm-up, then a fixed measured duration; sockets have timeouts so a
//! broken path ends in errors, not a hang.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::netns::NetNs;
use crate::stats::{round3, Summary};

/// Size of a request and of its response.
const MSG: usize = 64;
/// Per-socket timeout: a lost path shows up as errors within this.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// A request/response server listening in a container namespace; stops on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Listens on `0.0.0.0:port` inside `ns` with `workers` threads, each serving one connection
    /// at a time (so `workers` must be at least the client's connection count).
    pub fn start(ns: &NetNs, port: u16, workers: usize) -> io::Result<Server> {
        let listener = ns.run(|| TcpListener::bind(("0.0.0.0", port)))??;
        listener.set_nonblocking(true)?;
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers.max(1))
            .map(|_| {
                let (l, s) = (listener.clone(), stop.clone());
                std::thread::spawn(move || serve(&l, &s))
            })
            .collect();
        Ok(Server { stop, workers })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if !wait_readable(listener.as_raw_fd(), 100) {
            continue;
        }
        let Ok((mut conn, _)) = listener.accept() else {
            continue;
        };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_nodelay(true);
        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
        let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
        let mut buf = [0u8; MSG];
        loop {
            match conn.read_exact(&mut buf) {
                Ok(()) => {
                    if conn.write_all(&buf).is_err() {
                        break;
                    }
                }
                // Idle: keep the connection unless we are stopping.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
}

fn wait_readable(fd: i32, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) > 0 }
}

/// Load pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Persistent connections, requests back to back.
    Rr,
    /// A new connection per request.
    Crr,
}

/// How a load run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Pattern.
    pub mode: Mode,
    /// Concurrent connections (one thread each).
    pub conns: usize,
    /// Unmeasured warm-up.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
}

/// Outcome of one load run.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Requests completed in the measured time.
    pub requests: u64,
    /// Failed requests/connections in the measured time.
    pub errors: u64,
    /// Measured seconds.
    pub secs: f64,
    /// Per-request latency in microseconds (connect included in crr).
    pub latency_us: Option<Summary>,
    /// First error seen, for the report.
    pub first_error: Option<String>,
}

impl LoadResult {
    /// Requests (rr) or connections (crr) per second.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.requests as f64 / self.secs
        } else {
            0.0
        }
    }

    /// JSON form.
    pub fn to_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "secs": round3(self.secs),
            "rate_per_sec": round3(self.rate()),
            "latency_us": self.latency_us.map(|s| s.to_json()),
            "first_error": self.first_error,
        })
    }
}

/// One request over a new connection, to check a path works before measuring it.
pub fn probe(host: &NetNs, addr: SocketAddr) -> io::Result<()> {
    host.run(|| {
        let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        exchange(&mut s)
    })?
}

/// Drives `load` against `addr` from threads inside `host`.
pub fn run(host: &NetNs, addr: SocketAddr, load: Load) -> LoadResult {
    let start = Instant::now();
    let measure_from = start + load.warmup;
    let end = measure_from + load.duration;
    let per_thread: Vec<Worker> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..load.conns.max(1))
            .map(|_| {
                s.spawn(move || {
                    let mut w = Worker::default();
                    if let Err(e) = host.enter() {
                        w.error(format!("entering host namespace: {e}"));
                        return w;
                    }
                    match load.mode {
                        Mode::Rr => w.rr(addr, measure_from, end),
                        Mode::Crr => w.crr(addr, measure_from, end),
                    }
                    w
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let mut latencies = Vec::new();
    let mut result = LoadResult {
        requests: 0,
        errors: 0,
        secs: load.duration.as_secs_f64(),
        latency_us: None,
        first_error: None,
    };
    for w in per_thread {
        result.requests += w.latencies.len() as u64;
        result.errors += w.errors;
        result.first_error = result.first_error.or(w.first_error);
        latencies.extend(w.latencies);
    }
    result.latency_us = Summary::of(&latencies);
    result
}

/// One load-generator thread's tally.
#[derive(Default)]
struct Worker {
    latencies: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
}

impl Worker {
    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }

    fn record(&mut self, started: Instant, from: Instant) {
        if started >= from {
            self.latencies.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }

    fn rr(&mut self, addr: SocketAddr, from: Instant, end: Instant) {
        while Instant::now() < end {
            let mut conn = match connect(addr) {
                Ok(c) => c,
                Err(e) => {
                    self.failed(e, from);
                    continue;
                }
            };
            loop {
                let t = Instant::now();
                if t >= end {
                    return;
                }
                match exchange(&mut conn) {
                    Ok(()) => self.record(t, from),
                    Err(e) => {
                        self.failed(e, from);
                        break;
                    }
                }
            }
        }
    }

    fn crr(&mut self, addr: SocketAddr, from: Instant, end: Instant) {
        loop {
            let t = Instant::now();
            if t >= end {
                return;
            }
            match connect(addr).and_then(|mut c| {
                exchange(&mut c)?;
                reset_on_close(&c);
                Ok(())
            }) {
                Ok(()) => self.record(t, from),
                Err(e) => self.failed(e, from),
            }
        }
    }

    fn failed(&mut self, e: io::Error, from: Instant) {
        if Instant::now() >= from {
            self.error(e.to_string());
        }
        // Do not spin on a dead path.
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let c = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    c.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(c)
}

fn exchange(c: &mut TcpStream) -> io::Result<()> {
    let req = [0x5au8; MSG];
    c.write_all(&req)?;
    let mut resp = [0u8; MSG];
    c.read_exact(&mut resp)?;
    if resp != req {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "echo mismatch"));
    }
    Ok(())
}

/// SO_LINGER 0: close sends RST, so the client never holds TIME_WAIT sockets and ports stay
/// available for the whole run.
fn reset_on_close(c: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid socket and a correctly sized `linger` value.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
