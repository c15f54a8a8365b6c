//! The `registry` benchmark: the netd daemon's registry through its API, on one real daemon.
//!
//! The release `netd` binary (`netd up --no-network-dns`, VIPs on, its own `--socket`,
//! `--data-dir` and `--cni-conf-dir` in the run's [`Scratch`] directory, optional `--store URL`
//! passed through) runs inside a throwaway network namespace this benchmark creates, so nothing
//! it does can reach the machine's own network. The benchmark talks to it over the unix socket
//! with the `netd` crate's API [`Client`] (one connection per request, as the CLI does) and
//! measures:
//!
//! 1. **Registration throughput**: for each concurrency level (default 1, then 64 clients),
//!    create S services and register E endpoints in each (in a namespace of their own), then —
//!    except after the last level — delete those services again. Writes/s and per-write
//!    latency. Every acknowledged write is durable (the embedded store commits each write with
//!    an fsync before answering), so the figures include that cost on the data directory's
//!    filesystem, which the report names.
//! 2. **Watch propagation**: W watchers, each on its own connection to
//!    `GET /v1/watch?since=REV`, while one writer (its own thread and runtime) re-registers K
//!    existing endpoints with a new weight, one every `--interval`. For every (watcher,
//!    change) pair: time from just before the write was sent, and from its acknowledgement, to
//!    that watcher receiving the event with the write's revision; plus the share delivered.
//! 3. **Daemon RSS** (`VmRSS`): idle after startup, after each registration level, with the W
//!    watchers connected and after the changes; `VmHWM` at the end.
//!
//! Everything is bounded: counts, per-request timeouts, a drain timeout for late events and a
//! total time limit. The daemon is killed by PID (and registered with the [`guard`] watchdog by
//! pidfd), the namespace and every file go with the scratch directory, on success, error,
//! Ctrl-C or panic.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Method;
use netd::client::{enc, Client};
use netd_config::netd::{EndpointSpec, Health, Protocol, ServicePort, ServiceSpec};
use serde_json::{json, Value};

use crate::guard;
use crate::netns::{self, NetNs};
use crate::procfs::{cpu_time, log_tail, rss};
use crate::scratch::Scratch;
use crate::stats::{round3, Summary};

/// Usage text of `netd-bench registry`.
pub const USAGE: &str = "\
usage: netd-bench registry [options]

Benchmarks the netd daemon's registry through its API: registration throughput (services,
then endpoints, at each concurrency level), watch propagation latency (W watchers, K paced
changes), VIP propagation and daemon RSS. Starts `netd up --no-network-dns` (service VIPs
programmed in nf_tables, as by default) inside a throwaway network
namespace, with its data directory in $TMPDIR (on disk: durable writes are what is measured).
Run as root.

options:
  --services N       services created per concurrency level        (default 1000)
  --endpoints N      endpoints registered per service               (default 10)
  --concurrency LIST concurrent API clients, one level after another (default 1,64)
  --watchers N       watch streams, each its own connection (0: skip) (default 1000)
  --changes N        writes made while the watchers listen          (default 200)
  --interval MS      pause between the starts of two changes        (default 20)
  --time-limit SECS  stop measuring after this long, report what was measured (default 900)
  --quick            smoke run: 50 services x 4 endpoints, levels 1,8, 50 watchers, 20 changes
  --json PATH        also write the results as JSON to PATH
  --netd PATH        netd binary (default: next to this binary, then target/release/netd)
  --store URL        passed to `netd up --store URL` (e.g. an etcd cluster); default: embedded
  --etcd N           start an N-member etcd cluster (Debian's etcd-server) inside the
                     benchmark's namespace and run netd on it (--store is then set)
";

/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon gets to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long watchers get to receive the last change after it was acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Watch connections opened at once while connecting the watchers.
const CONNECT_PARALLELISM: usize = 32;
/// Prefix of the registry namespace each concurrency level writes to (`bench-c64`).
const NS_PREFIX: &str = "bench-c";

/// Options of the `registry` subcommand.
#[derive(Debug, Clone)]
pub struct Options {
    /// Services per concurrency level.
    pub services: usize,
    /// Endpoints per service.
    pub endpoints: usize,
    /// Concurrency levels, in the order they run.
    pub concurrency: Vec<usize>,
    /// Watch streams (0: no watch phase).
    pub watchers: usize,
    /// Changes made while the watchers listen.
    pub changes: usize,
    /// Pause between the starts of two changes.
    pub interval: Duration,
    /// Total time limit.
    pub time_limit: Duration,
    /// Smoke-run mode.
    pub quick: bool,
    /// Where to write JSON results.
    pub json: Option<PathBuf>,
    /// Explicit netd binary.
    pub netd: Option<PathBuf>,
    /// `netd up --store` value.
    pub store: Option<String>,
    /// Members of an etcd cluster the benchmark starts in its namespace (0: none).
    pub etcd: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            services: 1000,
            endpoints: 10,
            concurrency: vec![1, 64],
            watchers: 1000,
            changes: 200,
            interval: Duration::from_millis(20),
            time_limit: Duration::from_secs(900),
            quick: false,
            json: None,
            netd: None,
            store: None,
            etcd: 0,
        }
    }
}

fn parse_num(name: &str, v: &str, range: std::ops::RangeInclusive<usize>) -> Result<usize, String> {
    v.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or(format!(
            "{name} {v:?}: expected a number in {}..={}",
            range.start(),
            range.end()
        ))
}

impl Options {
    /// Parses the arguments after `registry`. `--quick` sets small defaults that explicit
    /// flags (anywhere on the line) still override.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, String> {
        let args: Vec<String> = args.into_iter().collect();
        let mut o = Options::default();
        if args.iter().any(|a| a == "--quick") {
            o.quick = true;
            o.services = 50;
            o.endpoints = 4;
            o.concurrency = vec![1, 8];
            o.watchers = 50;
            o.changes = 20;
            o.time_limit = Duration::from_secs(120);
        }
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
            match flag.as_str() {
                "--quick" => {}
                "--services" => o.services = parse_num(&flag, &value(&flag)?, 1..=50_000)?,
                "--endpoints" => o.endpoints = parse_num(&flag, &value(&flag)?, 1..=1000)?,
                "--concurrency" => {
                    let v = value(&flag)?;
                    o.concurrency = v
                        .split(',')
                        .map(|c| parse_num(&flag, c, 1..=1024))
                        .collect::<Result<_, _>>()?;
                }
                "--watchers" => o.watchers = parse_num(&flag, &value(&flag)?, 0..=20_000)?,
                "--changes" => o.changes = parse_num(&flag, &value(&flag)?, 1..=100_000)?,
                "--interval" => {
                    let ms = parse_num(&flag, &value(&flag)?, 1..=10_000)?;
                    o.interval = Duration::from_millis(ms as u64);
                }
                "--time-limit" => {
                    let s = parse_num(&flag, &value(&flag)?, 10..=86_400)?;
                    o.time_limit = Duration::from_secs(s as u64);
                }
                "--json" => o.json = Some(PathBuf::from(value(&flag)?)),
                "--netd" => o.netd = Some(PathBuf::from(value(&flag)?)),
                "--store" => o.store = Some(value(&flag)?),
                "--etcd" => {
                    let v = value(&flag)?;
                    o.etcd = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=5).contains(n))
                        .ok_or(format!("--etcd {v:?}: expected 1 to 5 members"))?;
                }
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        if o.services * o.endpoints > 1_000_000 {
            return Err("--services x --endpoints: at most 1000000 endpoints".into());
        }
        Ok(o)
    }

    /// Endpoints registered per level.
    pub fn total_endpoints(&self) -> usize {
        self.services * self.endpoints
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// A `netd up` process inside the benchmark's namespace; killed by PID and reaped on drop.
struct Daemon {
    child: Child,
    _watch: Option<guard::ChildWatch>,
    log: PathBuf,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "netd exited ({status}); log: {}",
                log_tail(&self.log)
            )),
            _ => None,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Paths {
    socket: PathBuf,
    data_dir: PathBuf,
    cni_dir: PathBuf,
    log: PathBuf,
}

/// Starts `netd up` inside `ns` and waits until it answers `GET /v1/status`.
fn start_daemon(
    bin: &Path,
    ns: &NetNs,
    paths: &Paths,
    opts: &Options,
    rt: &tokio::runtime::Runtime,
) -> Result<Daemon, String> {
    let log = std::fs::File::create(&paths.log).map_err(|e| format!("daemon log: {e}"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--socket")
        .arg(&paths.socket)
        .arg("up")
        .arg("--data-dir")
        .arg(&paths.data_dir)
        .arg("--cni-conf-dir")
        .arg(&paths.cni_dir)
        .args(["--node", "bench-node", "--no-network-dns"]);
    if let Some(store) = &opts.store {
        cmd.arg("--store").arg(store);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // Spawned from a thread inside the namespace: the child starts there.
    let child = ns
        .run(|| {
            netns::set_loopback_up()?;
            cmd.spawn()
        })
        .and_then(|r| r)
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let watch = guard::watch_child(child.id(), opts.time_limit + Duration::from_secs(300));
    let mut daemon = Daemon {
        child,
        _watch: watch,
        log: paths.log.clone(),
    };
    // Refuse to go on if the daemon is somehow in our own namespace.
    let ours = std::fs::read_link("/proc/self/ns/net").ok();
    let its = std::fs::read_link(format!("/proc/{}/ns/net", daemon.pid())).ok();
    if ours.is_none() || ours == its {
        return Err("netd did not start in the benchmark's network namespace".into());
    }
    let client = Client::new(&paths.socket);
    let start = Instant::now();
    loop {
        if let Some(e) = daemon.exited() {
            return Err(e);
        }
        if guard::interrupted() {
            return Err("interrupted".into());
        }
        if rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(2), client.status()).await })
            .is_ok_and(|r| r.is_ok())
        {
            return Ok(daemon);
        }
        if start.elapsed() > START_TIMEOUT {
            return Err(format!(
                "netd did not answer within {START_TIMEOUT:?}; log: {}",
                log_tail(&paths.log)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The filesystem type (`ext4`, `tmpfs`, ...) and mount point holding `path`, from
/// `/proc/self/mountinfo` (longest matching mount point).
fn filesystem_of(path: &Path) -> Option<(String, String)> {
    let path = path.canonicalize().ok()?;
    let file = std::fs::File::open("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String, String)> = None;
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mount), Some(fstype)) = (fields.get(4), fields.get(sep + 1)) else {
            continue;
        };
        let mount = mount.replace("\\040", " ");
        if path.starts_with(&mount) && best.as_ref().is_none_or(|b| mount.len() >= b.0) {
            best = Some((mount.len(), fstype.to_string(), mount));
        }
    }
    best.map(|(_, fstype, mount)| (fstype, mount))
}

/// Raises the soft open-file limit to the hard limit (watchers need one descriptor each, in
/// this process and in the daemon, which inherits the limit). Returns the new soft limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

// ---------------------------------------------------------------------------------------------
// Registration

/// Figures of one batch of API writes.
#[derive(Debug, Clone, Default)]
pub struct WriteStats {
    /// Writes attempted.
    pub attempted: usize,
    /// Writes acknowledged with a 2xx answer.
    pub ok: usize,
    /// First error seen, with the number of failed writes.
    pub errors: Option<(usize, String)>,
    /// Wall time of the batch.
    pub elapsed: Duration,
    /// Per-write latency of acknowledged writes, ms.
    pub latency: Option<Summary>,
    /// Daemon CPU seconds spent during the batch.
    pub daemon_cpu: Option<f64>,
    /// Whether the time limit or an interrupt cut the batch short.
    pub cut_short: bool,
}

impl WriteStats {
    /// Acknowledged writes per second.
    pub fn rate(&self) -> Option<f64> {
        let s = self.elapsed.as_secs_f64();
        (self.ok > 0 && s > 0.0).then(|| self.ok as f64 / s)
    }

    fn to_json(&self) -> Value {
        json!({
            "attempted": self.attempted,
            "ok": self.ok,
            "failed": self.errors.as_ref().map_or(0, |e| e.0),
            "first_error": self.errors.as_ref().map(|e| e.1.clone()),
            "elapsed_s": round3(self.elapsed.as_secs_f64()),
            "writes_per_s": self.rate().map(round3),
            "latency_ms": self.latency.map(|s| s.to_json()),
            "daemon_cpu_s": self.daemon_cpu.map(round3),
            "daemon_cpu_ms_per_write": self.daemon_cpu.zip((self.ok > 0).then_some(self.ok))
                .map(|(c, n)| round3(c * 1e3 / n as f64)),
            "cut_short": self.cut_short,
        })
    }
}

/// One concurrency level.
#[derive(Debug, Clone, Default)]
pub struct Level {
    /// Concurrent clients.
    pub concurrency: usize,
    /// Registry namespace its services live in.
    pub namespace: String,
    /// `POST /v1/services`.
    pub services: WriteStats,
    /// `POST /v1/services/{ns}/{name}/endpoints`.
    pub endpoints: WriteStats,
    /// `DELETE /v1/services/{ns}/{name}` (with its endpoints); not after the last level.
    pub deletes: Option<WriteStats>,
    /// Daemon RSS once the level's services and endpoints are all registered, KiB.
    pub rss_loaded_kib: Option<u64>,
}

/// Runs `op(0..n)` with `concurrency` workers on the runtime; stops early at `deadline`.
fn run_writes<F, Fut>(
    rt: &tokio::runtime::Runtime,
    pid: u32,
    n: usize,
    concurrency: usize,
    deadline: Instant,
    op: F,
) -> WriteStats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    let cpu_before = cpu_time(&pid.to_string());
    let start = Instant::now();
    let results: Vec<(Vec<f64>, usize, Option<String>)> = rt.block_on(async {
        let workers: Vec<_> = (0..concurrency.min(n).max(1))
            .map(|_| {
                let (op, next, cut) = (op.clone(), next.clone(), cut.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut failed = 0;
                    let mut first = None;
                    loop {
                        if Instant::now() >= deadline || guard::interrupted() {
                            cut.store(true, Ordering::Relaxed);
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let t = Instant::now();
                        let r = match tokio::time::timeout(REQUEST_TIMEOUT, op(i)).await {
                            Ok(r) => r,
                            Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
                        };
                        match r {
                            Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1e3),
                            Err(e) => {
                                failed += 1;
                                first.get_or_insert(e);
                            }
                        }
                    }
                    (lat, failed, first)
                })
            })
            .collect();
        let mut out = Vec::new();
        for w in workers {
            out.push(
                w.await
                    .unwrap_or_else(|e| (Vec::new(), 1, Some(format!("worker: {e}")))),
            );
        }
        out
    });
    let elapsed = start.elapsed();
    let cpu_after = cpu_time(&pid.to_string());
    let mut lat = Vec::new();
    let mut failed = 0;
    let mut first = None;
    for (l, f, e) in results {
        lat.extend(l);
        failed += f;
        if first.is_none() {
            first = e;
        }
    }
    WriteStats {
        attempted: next.load(Ordering::Relaxed).min(n),
        ok: lat.len(),
        errors: first.map(|e| (failed, e)),
        elapsed,
        latency: Summary::of(&lat),
        daemon_cpu: cpu_before.zip(cpu_after).map(|(a, b)| b - a),
        cut_short: cut.load(Ordering::Relaxed),
    }
}

fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// Address of endpoint `ep` of service `svc`: unique across the run (10.0.0.1 upwards).
fn endpoint_address(opts: &Options, svc: usize, ep: usize) -> String {
    let n = (svc * opts.endpoints + ep + 1) as u32;
    std::net::Ipv4Addr::from(0x0A00_0000 | (n & 0x00FF_FFFF)).to_string()
}

async fn post(client: &Client, path: &str, body: &Value) -> Result<Value, String> {
    client
        .call::<Value>(Method::POST, path, Some(body))
        .await
        .map_err(|e| e.to_string())
}

fn endpoint_body(opts: &Options, svc: usize, ep: usize, weight: usize) -> Value {
    json!({
        "address": endpoint_address(opts, svc, ep),
        "port": 8080,
        "weight": weight,
    })
}

fn run_level(
    rt: &tokio::runtime::Runtime,
    daemon: &Daemon,
    client: &Client,
    opts: &Options,
    concurrency: usize,
    last: bool,
    deadline: Instant,
) -> Level {
    let ns = format!("{NS_PREFIX}{concurrency}");
    let pid = daemon.pid();
    let progress =
        |what: &str| eprintln!("netd-bench: registry, concurrency {concurrency}: {what}");
    progress(&format!("creating {} services", opts.services));
    let services = {
        let (client, ns) = (client.clone(), ns.clone());
        run_writes(rt, pid, opts.services, concurrency, deadline, move |i| {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let body = json!({
                    "name": service_name(i),
                    "namespace": ns,
                    "ports": [{"port": 8080, "protocol": "http"}],
                });
                post(&client, "/v1/services", &body).await.map(drop)
            }
        })
    };
    progress(&format!("registering {} endpoints", opts.total_endpoints()));
    let endpoints = {
        let (client, ns, o) = (client.clone(), ns.clone(), Arc::new(opts.clone()));
        run_writes(
            rt,
            pid,
            opts.total_endpoints(),
            concurrency,
            deadline,
            move |k| {
                let (client, ns, o) = (client.clone(), ns.clone(), o.clone());
                // Spread over the services: k-th write goes to service k mod S.
                let (svc, ep) = (k % o.services, k / o.services);
                async move {
                    let path = format!(
                        "/v1/services/{}/{}/endpoints",
                        enc(&ns),
                        enc(&service_name(svc))
                    );
                    post(&client, &path, &endpoint_body(&o, svc, ep, 1))
                        .await
                        .map(drop)
                }
            },
        )
    };
    std::thread::sleep(Duration::from_millis(300));
    let rss_loaded_kib = rss(pid).0;
    let deletes = (!last).then(|| {
        progress(&format!(
            "deleting the {} services (and their endpoints)",
            opts.services
        ));
        let (client, ns) = (client.clone(), ns.clone());
        run_writes(rt, pid, opts.services, concurrency, deadline, move |i| {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let path = format!("/v1/services/{}/{}", enc(&ns), enc(&service_name(i)));
                client
                    .call::<Value>(Method::DELETE, &path, None::<&()>)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
    });
    Level {
        concurrency,
        namespace: ns,
        services,
        endpoints,
        deletes,
        rss_loaded_kib,
    }
}

// ---------------------------------------------------------------------------------------------
// Watch propagation

/// Figures of the watch phase.
#[derive(Debug, Clone, Default)]
pub struct WatchReport {
    /// Watch streams requested.
    pub watchers: usize,
    /// Watch streams that connected and received `synced`.
    pub connected: usize,
    /// Time to connect them all.
    pub connect_time: Duration,
    /// The daemon's own count of open watch streams once connected.
    pub daemon_watchers: Option<usize>,
    /// First connection error, with the number of failures.
    pub connect_errors: Option<(usize, String)>,
    /// Changes made and acknowledged.
    pub changes: WriteStats,
    /// Send → received, ms, over all (watcher, change) pairs delivered.
    pub from_send: Option<Summary>,
    /// Acknowledged → received, ms (negative: the event arrived before the acknowledgement).
    pub from_ack: Option<Summary>,
    /// Pairs delivered.
    pub delivered: usize,
    /// Pairs expected (connected watchers × acknowledged changes).
    pub expected: usize,
    /// Per change: the slowest watcher, send → received, ms.
    pub slowest_per_change: Option<Summary>,
    /// `reset` events seen after `synced` (a watcher fell behind and got a snapshot).
    pub resets: usize,
    /// Streams that ended or failed during the phase.
    pub stream_errors: usize,
    /// Daemon RSS with the watchers connected, before the changes, KiB.
    pub rss_connected_kib: Option<u64>,
    /// Daemon RSS after the changes, KiB.
    pub rss_after_kib: Option<u64>,
    /// Daemon CPU seconds during the changes (fan-out to every watcher included).
    pub daemon_cpu: Option<f64>,
    /// This process's CPU seconds during the changes (the watchers' side).
    pub bench_cpu: Option<f64>,
}

/// What one watcher saw.
struct Seen {
    /// Highest revision received.
    max: AtomicU64,
    /// (revision, when) of every event line after `synced`.
    events: Mutex<Vec<(u64, Instant)>>,
    resets: AtomicUsize,
    failed: AtomicBool,
}

/// The `"revision":N` of one event line (the event's own, the first in the line).
fn line_revision(line: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"revision\":";
    let at = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: &[u8] = &line[at..];
    let digits = &digits[..digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len())];
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Opens one watch stream from `since` and reads until `synced`; returns the body and any
/// bytes read after the `synced` line.
async fn open_watch(client: &Client, since: u64) -> Result<(Incoming, Vec<u8>), String> {
    let resp = client
        .send(Method::GET, &format!("/v1/watch?since={since}"), None)
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("GET /v1/watch answered {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    loop {
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            if contains(&line, b"\"type\":\"synced\"") {
                return Ok((body, buf));
            }
        }
        match body.frame().await {
            None => return Err("stream ended before `synced`".into()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Reads a connected watch stream, recording every event line's revision and arrival time.
async fn follow(mut body: Incoming, mut buf: Vec<u8>, seen: Arc<Seen>) {
    loop {
        let now = Instant::now();
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line = &buf[..i];
            if contains(line, b"\"type\":\"reset\"") {
                seen.resets.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(rev) = line_revision(line) {
                seen.events
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((rev, now));
                seen.max.fetch_max(rev, Ordering::Relaxed);
            }
            buf.drain(..=i);
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            _ => {
                seen.failed.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// One change made by the writer.
struct Change {
    revision: u64,
    sent: Instant,
    acked: Instant,
}

/// The writer: `n` paced re-registrations of existing endpoints, on its own thread and
/// current-thread runtime so its timestamps do not wait behind the watchers' tasks.
fn write_changes(
    client: Client,
    opts: Options,
    ns: String,
    deadline: Instant,
) -> (Vec<Change>, usize, Option<String>, Duration) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return (
                Vec::new(),
                1,
                Some(format!("writer runtime: {e}")),
                Duration::ZERO,
            )
        }
    };
    let mut changes = Vec::new();
    let mut failed = 0;
    let mut first = None;
    let start = Instant::now();
    rt.block_on(async {
        for j in 0..opts.changes {
            if Instant::now() >= deadline || guard::interrupted() {
                break;
            }
            let due = start + opts.interval * j as u32;
            tokio::time::sleep_until(due.into()).await;
            let (svc, ep) = (j % opts.services, (j / opts.services) % opts.endpoints);
            let path = format!(
                "/v1/services/{}/{}/endpoints",
                enc(&ns),
                enc(&service_name(svc))
            );
            // A new weight each time, so every write is a real change.
            let body = endpoint_body(&opts, svc, ep, 2 + j);
            let sent = Instant::now();
            let r = tokio::time::timeout(REQUEST_TIMEOUT, post(&client, &path, &body)).await;
            let acked = Instant::now();
            match r {
                Ok(Ok(v)) => match v.get("revision").and_then(Value::as_u64) {
                    Some(revision) => changes.push(Change {
                        revision,
                        sent,
                        acked,
                    }),
                    None => {
                        failed += 1;
                        first.get_or_insert_with(|| format!("no revision in the answer: {v}"));
                    }
                },
                Ok(Err(e)) => {
                    failed += 1;
                    first.get_or_insert(e);
                }
                Err(_) => {
                    failed += 1;
                    first.get_or_insert(format!("no answer within {REQUEST_TIMEOUT:?}"));
                }
            }
        }
    });
    (changes, failed, first, start.elapsed())
}

/// Signed `a - b` in ms.
fn signed_ms(a: Instant, b: Instant) -> f64 {
    match a.checked_duration_since(b) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(b.duration_since(a).as_secs_f64() * 1e3),
    }
}

fn run_watch(
    rt: &tokio::runtime::Runtime,
    daemon: &Daemon,
    client: &Client,
    opts: &Options,
    ns: &str,
    deadline: Instant,
) -> WatchReport {
    let pid = daemon.pid();
    let mut report = WatchReport {
        watchers: opts.watchers,
        ..WatchReport::default()
    };
    let since = match rt.block_on(client.status()) {
        Ok(s) => s.revision,
        Err(e) => {
            report.connect_errors = Some((opts.watchers, format!("status: {e}")));
            return report;
        }
    };
    eprintln!(
        "netd-bench: registry: connecting {} watchers (since revision {since})",
        opts.watchers
    );
    // Connect in waves of CONNECT_PARALLELISM; each stream then runs in its own task.
    let t = Instant::now();
    let (seen, tasks, errors) = rt.block_on(async {
        let mut seen = Vec::new();
        let mut tasks = Vec::new();
        let mut failed = 0;
        let mut first = None;
        let mut i = 0;
        while i < opts.watchers {
            if Instant::now() >= deadline || guard::interrupted() {
                break;
            }
            let wave: Vec<_> = (i..opts.watchers.min(i + CONNECT_PARALLELISM))
                .map(|_| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        tokio::time::timeout(REQUEST_TIMEOUT, open_watch(&client, since)).await
                    })
                })
                .collect();
            i += wave.len();
            for w in wave {
                match w.await {
                    Ok(Ok(Ok((body, buf)))) => {
                        let s = Arc::new(Seen {
                            max: AtomicU64::new(since),
                            events: Mutex::new(Vec::with_capacity(opts.changes + 4)),
                            resets: AtomicUsize::new(0),
                            failed: AtomicBool::new(false),
                        });
                        tasks.push(tokio::spawn(follow(body, buf, s.clone())));
                        seen.push(s);
                    }
                    Ok(Ok(Err(e))) => {
                        failed += 1;
                        first.get_or_insert(e);
                    }
                    Ok(Err(_)) => {
                        failed += 1;
                        first.get_or_insert(format!("no `synced` within {REQUEST_TIMEOUT:?}"));
                    }
                    Err(e) => {
                        failed += 1;
                        first.get_or_insert(e.to_string());
                    }
                }
            }
        }
        (seen, tasks, first.map(|e| (failed, e)))
    });
    report.connect_time = t.elapsed();
    report.connected = seen.len();
    report.connect_errors = errors;
    std::thread::sleep(Duration::from_millis(500));
    report.daemon_watchers = rt.block_on(client.status()).ok().map(|s| s.watchers);
    report.rss_connected_kib = rss(pid).0;
    eprintln!(
        "netd-bench: registry: {} watchers connected in {:.1} s; {} changes, one every {} ms",
        report.connected,
        report.connect_time.as_secs_f64(),
        opts.changes,
        opts.interval.as_millis()
    );

    let cpu_before = (cpu_time(&pid.to_string()), cpu_time("self"));
    let writer = {
        let (client, opts, ns) = (client.clone(), opts.clone(), ns.to_string());
        std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || write_changes(client, opts, ns, deadline))
    };
    let (changes, failed, first, elapsed) = match writer.map(|h| h.join()) {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => (
            Vec::new(),
            1,
            Some("writer panicked".into()),
            Duration::ZERO,
        ),
        Err(e) => (
            Vec::new(),
            1,
            Some(format!("writer thread: {e}")),
            Duration::ZERO,
        ),
    };
    // Give every watcher until DRAIN_TIMEOUT to see the last acknowledged change.
    let last = changes.iter().map(|c| c.revision).max().unwrap_or(since);
    let drain_end = Instant::now() + DRAIN_TIMEOUT;
    while Instant::now() < drain_end && !guard::interrupted() {
        let behind = seen
            .iter()
            .filter(|s| s.max.load(Ordering::Relaxed) < last && !s.failed.load(Ordering::Relaxed))
            .count();
        if behind == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let cpu_after = (cpu_time(&pid.to_string()), cpu_time("self"));
    report.daemon_cpu = cpu_before.0.zip(cpu_after.0).map(|(a, b)| b - a);
    report.bench_cpu = cpu_before.1.zip(cpu_after.1).map(|(a, b)| b - a);
    report.rss_after_kib = rss(pid).0;
    for t in &tasks {
        t.abort();
    }
    // Dropping the aborted tasks' bodies closes the streams.
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });

    let lat: Vec<f64> = changes
        .iter()
        .map(|c| c.acked.duration_since(c.sent).as_secs_f64() * 1e3)
        .collect();
    report.changes = WriteStats {
        attempted: changes.len() + failed,
        ok: changes.len(),
        errors: first.map(|e| (failed, e)),
        elapsed,
        latency: Summary::of(&lat),
        daemon_cpu: None,
        cut_short: changes.len() + failed < opts.changes,
    };
    let by_rev: HashMap<u64, &Change> = changes.iter().map(|c| (c.revision, c)).collect();
    let mut from_send = Vec::with_capacity(seen.len() * changes.len());
    let mut from_ack = Vec::with_capacity(seen.len() * changes.len());
    let mut slowest: HashMap<u64, f64> = HashMap::new();
    for s in &seen {
        report.resets += s.resets.load(Ordering::Relaxed);
        report.stream_errors += usize::from(s.failed.load(Ordering::Relaxed));
        let events = s.events.lock().unwrap_or_else(|p| p.into_inner());
        let mut got: HashMap<u64, Instant> = HashMap::new();
        for &(rev, at) in events.iter() {
            got.entry(rev).or_insert(at);
        }
        for (rev, at) in got {
            if let Some(c) = by_rev.get(&rev) {
                let ms = signed_ms(at, c.sent);
                from_send.push(ms);
                from_ack.push(signed_ms(at, c.acked));
                let e = slowest.entry(rev).or_insert(ms);
                *e = e.max(ms);
            }
        }
    }
    report.delivered = from_send.len();
    report.expected = seen.len() * changes.len();
    report.from_send = Summary::of(&from_send);
    report.from_ack = Summary::of(&from_ack);
    report.slowest_per_change = Summary::of(&slowest.values().copied().collect::<Vec<_>>());
    report
}

// ---------------------------------------------------------------------------------------------
// The run

/// Everything measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// netd version (`GET /v1/status`).
    pub version: Option<String>,
    /// Store backend and location, as the daemon reports them.
    pub store: Option<String>,
    /// Filesystem type and mount point of the data directory.
    pub data_fs: Option<(String, String)>,
    /// CPU idle fraction just before the run.
    pub idle_before: f64,
    /// `/proc/loadavg` at the start and at the end.
    pub loadavg: (String, String),
    /// Daemon RSS right after startup (+300 ms), KiB.
    pub rss_idle_kib: Option<u64>,
    /// Registration, one per concurrency level.
    pub levels: Vec<Level>,
    /// The watch phase.
    pub watch: Option<WatchReport>,
    /// The VIP phase.
    pub vip: Option<VipReport>,
    /// Daemon peak RSS (`VmHWM`) at the end, KiB.
    pub rss_peak_kib: Option<u64>,
    /// Total wall time.
    pub elapsed: Duration,
    /// What stopped the run, if anything.
    pub error: Option<String>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs the `registry` benchmark; `Ok(false)` when something failed (the table shows what was
/// measured).
pub fn run(opts: &Options) -> Result<bool, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "run as root: the daemon runs in a network namespace the benchmark creates".into(),
        );
    }
    let bin = crate::procfs::find_binary("netd", opts.netd.as_deref(), "--netd")?;
    let nofile = raise_nofile();
    if (opts.watchers as u64) + 256 > nofile {
        return Err(format!(
            "--watchers {}: the open-file limit is {nofile}; raise it (ulimit -n) or use fewer",
            opts.watchers
        ));
    }
    let mut report = Report {
        loadavg: (loadavg(), String::new()),
        ..Report::default()
    };
    eprintln!("netd-bench: registry: waiting for the CPUs to be idle");
    report.idle_before = crate::runner::wait_quiet();
    let scratch = Scratch::create().map_err(|e| format!("scratch directory: {e}"))?;
    eprintln!("netd-bench: scratch directory {}", scratch.root().display());
    // A private copy: a rebuild of netd during the run cannot mix two versions.
    let bin = scratch
        .snapshot_binary(&bin)
        .map_err(|e| format!("copying {}: {e}", bin.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let start = Instant::now();
    let result = measure(opts, &bin, &scratch, &rt, &mut report);
    report.elapsed = start.elapsed();
    report.loadavg.1 = loadavg();
    if let Err(e) = result {
        report.error = Some(e);
    }
    drop(rt);
    drop(scratch);
    if guard::interrupted() {
        return Err("interrupted; everything was removed".into());
    }
    print!("{}", table(opts, &report));
    if let Some(path) = &opts.json {
        let text =
            serde_json::to_string_pretty(&json_doc(opts, &report)).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("netd-bench: results written to {}", path.display());
    }
    let writes_ok = report.levels.iter().all(|l| {
        l.services.errors.is_none()
            && l.endpoints.errors.is_none()
            && l.deletes.as_ref().is_none_or(|d| d.errors.is_none())
    });
    let watch_ok = report.watch.as_ref().is_none_or(|w| {
        w.connect_errors.is_none() && w.changes.errors.is_none() && w.delivered == w.expected
    });
    Ok(report.error.is_none() && writes_ok && watch_ok)
}

fn measure(
    opts: &Options,
    bin: &Path,
    scratch: &Scratch,
    rt: &tokio::runtime::Runtime,
    report: &mut Report,
) -> Result<(), String> {
    let deadline = Instant::now() + opts.time_limit;
    let ns_path = scratch.ns_path("registry-host");
    netns::create_many(std::slice::from_ref(&ns_path), 1, true)
        .map_err(|e| format!("network namespace: {e}"))?;
    let ns = NetNs::open(&ns_path).map_err(|e| format!("{}: {e}", ns_path.display()))?;
    let state = scratch
        .state_dir("netd")
        .map_err(|e| format!("state directory: {e}"))?;
    let paths = Paths {
        socket: scratch.root().join("netd.sock"),
        data_dir: state.join("data"),
        cni_dir: state.join("cni"),
        log: scratch.root().join("netd.log"),
    };
    report.data_fs = filesystem_of(&state);
    eprintln!(
        "netd-bench: registry: starting {} in a fresh network namespace, data on {}",
        bin.display(),
        report
            .data_fs
            .as_ref()
            .map_or("?".into(), |(t, m)| format!("{t} ({m})"))
    );
    let _etcd;
    let with_etcd;
    let opts = if opts.etcd > 0 {
        let cluster = start_etcd(&ns, &state, opts.etcd)?;
        with_etcd = Options {
            store: Some(cluster.url.clone()),
            ..opts.clone()
        };
        _etcd = cluster;
        &with_etcd
    } else {
        opts
    };
    let mut daemon = start_daemon(bin, &ns, &paths, opts, rt)?;
    let client = Client::new(&paths.socket);
    if let Ok(s) = rt.block_on(client.status()) {
        report.version = Some(s.version);
        report.store = Some(format!("{} {}", s.store.backend, s.store.location));
    }
    std::thread::sleep(Duration::from_millis(300));
    report.rss_idle_kib = rss(daemon.pid()).0;

    for (i, &c) in opts.concurrency.iter().enumerate() {
        if Instant::now() >= deadline || guard::interrupted() {
            break;
        }
        let last = i + 1 == opts.concurrency.len();
        report
            .levels
            .push(run_level(rt, &daemon, &client, opts, c, last, deadline));
        if let Some(e) = daemon.exited() {
            return Err(e);
        }
    }
    if opts.watchers > 0 && Instant::now() < deadline && !guard::interrupted() {
        let ns = report
            .levels
            .last()
            .map(|l| l.namespace.clone())
            .ok_or("no services registered for the watch phase")?;
        report.watch = Some(run_watch(rt, &daemon, &client, opts, &ns, deadline));
        if let Some(e) = daemon.exited() {
            return Err(e);
        }
    }
    if Instant::now() < deadline && !guard::interrupted() {
        report.vip = Some(run_vip(rt, &ns, &client, deadline));
        if let Some(e) = daemon.exited() {
            return Err(e);
        }
    }
    report.rss_peak_kib = rss(daemon.pid()).1;
    if Instant::now() >= deadline {
        return Err(format!(
            "time limit of {} s reached; figures cover what was done",
            opts.time_limit.as_secs()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// etcd

/// An etcd cluster the benchmark started inside its namespace; killed by PID on drop.
struct Etcd {
    members: Vec<Child>,
    url: String,
    _watches: Vec<Option<guard::ChildWatch>>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

/// Starts `n` etcd members on 127.0.0.1 of the benchmark's namespace (ports 23790+ for
/// clients, 23800+ for peers: the namespace is new, so they are free), data under `state`,
/// and waits until every member serves a linearizable read.
fn start_etcd(ns: &NetNs, state: &Path, n: usize) -> Result<Etcd, String> {
    let etcd = crate::procfs::which("etcd")
        .ok_or("etcd not found: apt-get install etcd-server (or run without --etcd)")?;
    let initial: Vec<String> = (0..n)
        .map(|i| format!("m{i}=http://127.0.0.1:{}", 23800 + i))
        .collect();
    let mut cluster = Etcd {
        members: Vec::new(),
        url: format!(
            "etcd://{}",
            (0..n)
                .map(|i| format!("127.0.0.1:{}", 23790 + i))
                .collect::<Vec<_>>()
                .join(",")
        ),
        _watches: Vec::new(),
    };
    for i in 0..n {
        let log = std::fs::File::create(state.join(format!("etcd-m{i}.log")))
            .map_err(|e| format!("etcd log: {e}"))?;
        let client = format!("http://127.0.0.1:{}", 23790 + i);
        let peer = format!("http://127.0.0.1:{}", 23800 + i);
        let mut cmd = Command::new(&etcd);
        cmd.args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(state.join(format!("etcd-m{i}")))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let child = ns
            .run(|| {
                netns::set_loopback_up()?;
                cmd.spawn()
            })
            .and_then(|r| r)
            .map_err(|e| format!("starting etcd: {e}"))?;
        cluster
            ._watches
            .push(guard::watch_child(child.id(), Duration::from_secs(3600)));
        cluster.members.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = |port: u16| -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let body = r#"{"key":"eA=="}"#;
        let req = format!(
            "POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut answer = String::new();
        s.write_all(req.as_bytes()).is_ok()
            && s.read_to_string(&mut answer).is_ok()
            && answer.starts_with("HTTP/1.1 200")
    };
    loop {
        let up = ns
            .run(|| (0..n).all(|i| ready(23790 + i as u16)))
            .unwrap_or(false);
        if up {
            return Ok(cluster);
        }
        if Instant::now() >= deadline || guard::interrupted() {
            return Err(format!(
                "etcd did not come up within 30 s; log: {}",
                log_tail(&state.join("etcd-m0.log"))
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// VIP propagation

/// New services whose VIP is timed in the VIP phase.
const VIP_CHANGES: usize = 50;

/// What the VIP phase measured.
#[derive(Debug, Clone, Default)]
pub struct VipReport {
    /// Service ports in the daemon's VIP table when the phase started.
    pub services_before: usize,
    /// From the endpoint registration's acknowledgement to the first connection to the VIP
    /// that reaches the endpoint, ms.
    pub from_ack: Option<Summary>,
    /// The same from just before the registration was sent, ms.
    pub from_send: Option<Summary>,
    /// Services whose VIP never answered within the bound.
    pub missed: usize,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// Times how long a new service's VIP takes to reach its endpoint, with every service of the
/// earlier phases (and their endpoints) in the VIP table: the namespace gets the VIP range as
/// a local route (a VIP not yet programmed answers with a reset at once), a listener on
/// 127.0.0.1 is the endpoint, and a thread in the namespace connects to VIP:80 every 0.2 ms
/// until the connection reaches it.
fn run_vip(
    rt: &tokio::runtime::Runtime,
    ns: &NetNs,
    client: &Client,
    deadline: Instant,
) -> VipReport {
    let mut report = VipReport {
        services_before: rt
            .block_on(client.services(None))
            .map(|s| s.len())
            .unwrap_or(0),
        ..VipReport::default()
    };
    let setup = ns.run(|| -> Result<std::net::TcpListener, String> {
        let out = Command::new("ip")
            .args(["route", "add", "local", "10.96.0.0/16", "dev", "lo"])
            .output()
            .map_err(|e| format!("ip route: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip route add local 10.96.0.0/16 dev lo: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("listener: {e}"))
    });
    let listener = match setup {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            report.error = Some(e);
            return report;
        }
        Err(e) => {
            report.error = Some(format!("entering the namespace: {e}"));
            return report;
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    // Accepted connections are closed at once; the accept loop ends with the phase.
    let accepting = Arc::new(AtomicBool::new(true));
    let acceptor = {
        let accepting = accepting.clone();
        let _ = listener.set_nonblocking(true);
        std::thread::spawn(move || {
            while accepting.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        })
    };
    let (mut from_ack, mut from_send) = (Vec::new(), Vec::new());
    for k in 0..VIP_CHANGES {
        if Instant::now() >= deadline || guard::interrupted() {
            break;
        }
        let name = format!("vip{k}");
        let spec = ServiceSpec {
            name: name.clone(),
            namespace: "bench-vip".into(),
            ports: vec![ServicePort {
                name: None,
                port: 80,
                protocol: Protocol::Tcp,
                host_port: None,
            }],
            health_check: None,
        };
        let vip = match rt.block_on(client.put_service(&spec)) {
            Ok(s) => s.vip,
            Err(e) => {
                report.error = Some(format!("creating {name}: {e}"));
                break;
            }
        };
        let ep = EndpointSpec {
            id: None,
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            port,
            node: None,
            container_id: None,
            health: Health::Unknown,
            weight: 1,
            labels: Default::default(),
            lease: None,
        };
        let sent = Instant::now();
        if let Err(e) = rt.block_on(client.register_endpoint("bench-vip", &name, &ep)) {
            report.error = Some(format!("registering {name}'s endpoint: {e}"));
            break;
        }
        let acked = Instant::now();
        let target = SocketAddr::new(vip, 80);
        let reached = ns.run(move || {
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                if std::net::TcpStream::connect_timeout(&target, Duration::from_millis(100)).is_ok()
                {
                    return Some(Instant::now());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            None
        });
        match reached {
            Ok(Some(at)) => {
                from_ack.push(at.saturating_duration_since(acked).as_secs_f64() * 1e3);
                from_send.push(at.saturating_duration_since(sent).as_secs_f64() * 1e3);
            }
            _ => report.missed += 1,
        }
    }
    accepting.store(false, Ordering::Relaxed);
    let _ = acceptor.join();
    report.from_ack = Summary::of(&from_ack);
    report.from_send = Summary::of(&from_send);
    report
}

// ---------------------------------------------------------------------------------------------
// Output

fn mb(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

fn write_row(out: &mut String, name: &str, s: &WriteStats) {
    let _ = writeln!(
        out,
        "  {name:<28} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9}{}",
        s.ok,
        s.rate().map_or("-".into(), |r| format!("{r:.0}")),
        ms(s.latency.map(|l| l.p50)),
        ms(s.latency.map(|l| l.p99)),
        ms(s.latency.map(|l| l.max)),
        s.daemon_cpu
            .zip((s.ok > 0).then_some(s.ok))
            .map_or("-".into(), |(c, n)| format!("{:.3}", c * 1e3 / n as f64)),
        match (&s.errors, s.cut_short) {
            (Some((n, e)), _) => format!("  {n} failed: {e}"),
            (None, true) => "  (cut short)".into(),
            _ => String::new(),
        }
    );
}

fn table(opts: &Options, r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nnetd-bench registry: netd {} ({}), store {}, data on {}",
        r.version.as_deref().unwrap_or("?"),
        match (&opts.store, opts.etcd) {
            (_, n) if n > 0 => format!("{n}-member etcd started by the benchmark"),
            (Some(url), _) => url.clone(),
            (None, _) => "embedded default".into(),
        },
        r.store.as_deref().unwrap_or("?"),
        r.data_fs
            .as_ref()
            .map_or("?".into(), |(t, m)| format!("{t} ({m})"))
    );
    let _ = writeln!(
        out,
        "{} CPUs, kernel {}; CPUs {:.0}% idle before the run; load average {} at start, {} at end; \
         {:.0} s in total\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        r.idle_before * 100.0,
        r.loadavg.0,
        r.loadavg.1,
        r.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "Registration ({} services x {} endpoints per level; durable writes, one connection each)",
        opts.services, opts.endpoints
    );
    let _ = writeln!(
        out,
        "  {:<28} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "", "writes", "writes/s", "p50 ms", "p99 ms", "max ms", "cpu ms/w"
    );
    for l in &r.levels {
        let c = l.concurrency;
        write_row(&mut out, &format!("services, concurrency {c}"), &l.services);
        write_row(
            &mut out,
            &format!("endpoints, concurrency {c}"),
            &l.endpoints,
        );
        if let Some(d) = &l.deletes {
            write_row(&mut out, &format!("delete services, conc. {c}"), d);
        }
    }
    if let Some(w) = &r.watch {
        let _ = writeln!(
            out,
            "\nWatch propagation ({} of {} watchers connected in {:.1} s, daemon counts {}; {} \
             changes, one every {} ms)",
            w.connected,
            w.watchers,
            w.connect_time.as_secs_f64(),
            w.daemon_watchers.map_or("?".into(), |n| n.to_string()),
            w.changes.ok,
            opts.interval.as_millis()
        );
        let _ = writeln!(
            out,
            "  {:<34} {:>9} {:>9} {:>9} {:>9}",
            "", "p50 ms", "p99 ms", "max ms", "mean ms"
        );
        let lrow = |out: &mut String, name: &str, s: Option<Summary>| {
            let _ = writeln!(
                out,
                "  {name:<34} {:>9} {:>9} {:>9} {:>9}",
                ms(s.map(|s| s.p50)),
                ms(s.map(|s| s.p99)),
                ms(s.map(|s| s.max)),
                ms(s.map(|s| s.mean))
            );
        };
        lrow(&mut out, "write sent -> watcher has event", w.from_send);
        lrow(&mut out, "write acked -> watcher has event", w.from_ack);
        lrow(&mut out, "slowest watcher per change", w.slowest_per_change);
        lrow(&mut out, "the writes themselves", w.changes.latency);
        let _ = writeln!(
            out,
            "  delivered {} of {} (watcher, change) pairs ({:.2}%); resets {}; streams lost {}",
            w.delivered,
            w.expected,
            if w.expected > 0 {
                100.0 * w.delivered as f64 / w.expected as f64
            } else {
                0.0
            },
            w.resets,
            w.stream_errors
        );
        let _ = writeln!(
            out,
            "  CPU during the changes: daemon {}, watchers (this process) {}",
            w.daemon_cpu.map_or("-".into(), |c| format!("{c:.2} s")),
            w.bench_cpu.map_or("-".into(), |c| format!("{c:.2} s"))
        );
        if let Some((n, e)) = &w.connect_errors {
            let _ = writeln!(out, "  {n} watchers failed to connect: {e}");
        }
        if let Some((n, e)) = &w.changes.errors {
            let _ = writeln!(out, "  {n} changes failed: {e}");
        }
    }
    if let Some(v) = &r.vip {
        let _ = writeln!(
            out,
            "\nVIP propagation ({VIP_CHANGES} new services, {} already in the VIP table; connect to VIP:80 every 0.2 ms)",
            v.services_before
        );
        let _ = writeln!(
            out,
            "  {:<38} {:>9} {:>9} {:>9} {:>9}",
            "", "p50 ms", "p99 ms", "max ms", "mean ms"
        );
        for (name, s) in [
            ("endpoint sent -> VIP reaches it", v.from_send),
            ("endpoint acked -> VIP reaches it", v.from_ack),
        ] {
            let _ = writeln!(
                out,
                "  {name:<38} {:>9} {:>9} {:>9} {:>9}",
                ms(s.map(|s| s.p50)),
                ms(s.map(|s| s.p99)),
                ms(s.map(|s| s.max)),
                ms(s.map(|s| s.mean))
            );
        }
        if v.missed > 0 {
            let _ = writeln!(out, "  {} VIPs never answered within 5 s", v.missed);
        }
        if let Some(e) = &v.error {
            let _ = writeln!(out, "  error: {e}");
        }
    }
    let _ = writeln!(out, "\nDaemon RSS (MB)");
    let _ = writeln!(
        out,
        "  {:<52} {:>8}",
        "idle after startup",
        mb(r.rss_idle_kib)
    );
    for l in &r.levels {
        let _ = writeln!(
            out,
            "  {:<52} {:>8}",
            format!(
                "loaded: {} services + {} endpoints (conc. {})",
                l.services.ok, l.endpoints.ok, l.concurrency
            ),
            mb(l.rss_loaded_kib)
        );
    }
    if let Some(w) = &r.watch {
        let _ = writeln!(
            out,
            "  {:<52} {:>8}",
            format!("loaded + {} watchers connected", w.connected),
            mb(w.rss_connected_kib)
        );
        let _ = writeln!(
            out,
            "  {:<52} {:>8}",
            "after the changes",
            mb(w.rss_after_kib)
        );
    }
    let _ = writeln!(out, "  {:<52} {:>8}", "peak (VmHWM)", mb(r.rss_peak_kib));
    if let Some(e) = &r.error {
        let _ = writeln!(out, "\nerror: {e}");
    }
    out
}

fn json_doc(opts: &Options, r: &Report) -> Value {
    let levels: Vec<Value> = r
        .levels
        .iter()
        .map(|l| {
            json!({
                "concurrency": l.concurrency,
                "namespace": l.namespace,
                "services": l.services.to_json(),
                "endpoints": l.endpoints.to_json(),
                "deletes": l.deletes.as_ref().map(WriteStats::to_json),
                "rss_loaded_kib": l.rss_loaded_kib,
            })
        })
        .collect();
    let watch = r.watch.as_ref().map(|w| {
        json!({
            "watchers": w.watchers,
            "connected": w.connected,
            "connect_s": round3(w.connect_time.as_secs_f64()),
            "daemon_watchers": w.daemon_watchers,
            "connect_errors": w.connect_errors.as_ref().map(|e| json!({"count": e.0, "first": e.1})),
            "changes": w.changes.to_json(),
            "interval_ms": opts.interval.as_millis() as u64,
            "from_send_ms": w.from_send.map(|s| s.to_json()),
            "from_ack_ms": w.from_ack.map(|s| s.to_json()),
            "slowest_per_change_ms": w.slowest_per_change.map(|s| s.to_json()),
            "delivered": w.delivered,
            "expected": w.expected,
            "resets": w.resets,
            "streams_lost": w.stream_errors,
            "rss_connected_kib": w.rss_connected_kib,
            "rss_after_kib": w.rss_after_kib,
            "daemon_cpu_s": w.daemon_cpu.map(round3),
            "bench_cpu_s": w.bench_cpu.map(round3),
        })
    });
    let vip = r.vip.as_ref().map(|v| {
        json!({
            "services_before": v.services_before,
            "changes": VIP_CHANGES,
            "from_send_ms": v.from_send.map(|s| s.to_json()),
            "from_ack_ms": v.from_ack.map(|s| s.to_json()),
            "missed": v.missed,
            "error": v.error,
        })
    });
    json!({
        "benchmark": "registry",
        "netd_version": r.version,
        "store_option": opts.store,
        "store": r.store,
        "data_fs": r.data_fs.as_ref().map(|(t, m)| json!({"type": t, "mount": m})),
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu_idle_before": round3(r.idle_before),
        "loadavg_start": r.loadavg.0,
        "loadavg_end": r.loadavg.1,
        "elapsed_s": round3(r.elapsed.as_secs_f64()),
        "services": opts.services,
        "endpoints_per_service": opts.endpoints,
        "rss_idle_kib": r.rss_idle_kib,
        "levels": levels,
        "watch": watch,
        "vip": vip,
        "rss_peak_kib": r.rss_peak_kib,
        "error": r.error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Options, String> {
        Options::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn options() {
        let o = parse("").unwrap();
        assert_eq!((o.services, o.endpoints, o.watchers), (1000, 10, 1000));
        assert_eq!(o.concurrency, vec![1, 64]);
        let o = parse("--watchers 3 --quick --concurrency 4").unwrap();
        assert!(o.quick);
        assert_eq!((o.services, o.watchers, o.concurrency), (50, 3, vec![4]));
        assert_eq!(
            parse("--store etcd://127.0.0.1:2379")
                .unwrap()
                .store
                .as_deref(),
            Some("etcd://127.0.0.1:2379")
        );
        assert!(parse("--services 0").is_err());
        assert!(parse("--concurrency 1,0").is_err());
        assert!(parse("--services 50000 --endpoints 1000").is_err());
        assert!(parse("--bogus").is_err());
        assert!(parse("--json").is_err());
    }

    #[test]
    fn revisions_and_addresses() {
        let line =
            br#"{"type":"put","revision":4711,"kind":"endpoint","object":{"revision":4711}}"#;
        assert_eq!(line_revision(line), Some(4711));
        assert_eq!(line_revision(br#"{"type":"synced","revision":9}"#), Some(9));
        assert_eq!(line_revision(b"{}"), None);
        let o = Options::default();
        assert_eq!(endpoint_address(&o, 0, 0), "10.0.0.1");
        assert_eq!(endpoint_address(&o, 999, 9), "10.0.39.16");
        let t = Instant::now();
        assert!(signed_ms(t, t + Duration::from_millis(2)) < 0.0);
    }
}
