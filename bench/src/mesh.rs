//! The `mesh` benchmark: the HTTP/1.1 request path of the netd mesh (client → netd-sidecar →
//! netd-sidecar → server) against the same client and server directly and through two nginx
//! and two HAProxy hops, side by side in one run, on loopback.
//!
//! Topology (every address on 127.0.0.1, nothing redirected, no namespaces; the scratch
//! directory's `links/` for the node-local link):
//!
//! - **origin**: one nginx process answering `200 hello from netd-bench` to everything
//!   (`return 200`), the same process for every path;
//! - **direct**: load → origin;
//! - **netd**: load → sidecar A (outbound listener; `Host: hello` names service
//!   `default/hello`, whose one endpoint is sidecar B's inbound listener) → sidecar B
//!   (inbound listener, `--inbound-target` the origin) → origin. Both from `--snapshot` files,
//!   default single worker; A reaches B over a node-local link (`--local-links`: a unix
//!   stream, as netd runs two sidecars of one node);
//! - **netd-tcp**: the same over TCP between A and B (as between nodes);
//! - **nginx**: load → nginx → nginx → origin, each hop one process (`master_process off`,
//!   one worker) with a keep-alive upstream pool (`keepalive 64`, HTTP/1.1);
//! - **haproxy**: load → HAProxy → HAProxy → origin, each `nbthread 1`, `mode http`,
//!   `http-reuse always`.
//!
//! The origin and every hop are pinned to CPU 0 (`taskset -c 0`, which execs them, so the PID
//! measured is the process itself); the load generators and this process to CPU 1. Paths run
//! one after the other; only the origin and the current path's hops are running.
//!
//! Per path: startup to ready of each hop (spawn → first 200 through it), RSS after startup,
//! a 1 s wrk warm-up, then the fixed-concurrency run ([`load::parse_wrk`]) with the hops' and
//! the origin's CPU time (utime + stime from `/proc/PID/stat`) and a mid-run RSS sample, then
//! the fixed-rate open-loop run ([`load::open_loop`]). Every process is killed by PID (and
//! watched by pidfd by [`guard`]); every file lives in the run's [`Scratch`] directory.

pub mod configs;
pub mod load;

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::guard;
use crate::procfs::{linkage, log_tail, rss, rss_anon, which};
use crate::scratch::Scratch;
use crate::stats::{ratio, round3};
use load::{RateResult, RateSpec, WrkSummary};

/// Usage text of `netd-bench mesh`.
pub const USAGE: &str = "\
usage: netd-bench mesh [options]

The mesh's HTTP/1.1 path, client -> netd-sidecar -> netd-sidecar -> server, against the same
client and server directly, through two nginx hops and through two HAProxy hops, on loopback.
Server and proxies pinned to CPU 0, load generators to CPU 1. Needs nginx, haproxy, wrk and
taskset (apt-get install -y nginx-light haproxy wrk) and a release netd-sidecar
(scripts/build: statically linked, as netd runs it). The report says how it is linked.

options:
  --duration SECS       fixed-concurrency (wrk) run per path       (default 10)
  --conns N             keep-alive connections of both loads       (default 50)
  --rate RPS            request rate of the open-loop run          (default 5000)
  --rate-duration SECS  open-loop run per path                     (default 10)
  --quick               smoke run: 2 s and 2 s per path, one round (explicit flags win)
  --rounds N            rounds over every path, paths taking turns; each path's median
                        round (by req/s) is reported                (default 3)
  --json PATH           also write every figure as JSON to PATH
  --paths LIST          which paths: direct,netd,netd-tcp,nginx,haproxy (default all;
                        netd: the sidecars' middle hop over a node-local link,
                        netd-tcp: over TCP)
  --sidecar PATH        netd-sidecar binary (default: next to this binary, then
                        target/release/netd-sidecar)
";

/// CPU of the origin and the proxies.
const SERVER_CPU: usize = 0;
/// CPU of the load generators (and of this process).
const LOAD_CPU: usize = 1;
/// Longest wait for a process to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// wrk warm-up before each measured run.
const WARMUP_SECS: u64 = 1;

/// One request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshPath {
    /// Load → origin.
    Direct,
    /// Two netd-sidecar hops, as netd runs two sidecars of one node: the hop between them
    /// is a node-local link (unix stream, `--local-links`).
    Netd,
    /// Two netd-sidecar hops over TCP, as between sidecars of different nodes (or with
    /// `netd up --no-local-links`).
    NetdTcp,
    /// Two nginx hops.
    Nginx,
    /// Two HAProxy hops.
    Haproxy,
}

impl MeshPath {
    /// Short name (JSON keys, `--paths`).
    pub fn key(self) -> &'static str {
        match self {
            MeshPath::Direct => "direct",
            MeshPath::Netd => "netd",
            MeshPath::NetdTcp => "netd-tcp",
            MeshPath::Nginx => "nginx",
            MeshPath::Haproxy => "haproxy",
        }
    }

    /// Either netd path.
    pub fn is_netd(self) -> bool {
        matches!(self, MeshPath::Netd | MeshPath::NetdTcp)
    }

    fn parse(s: &str) -> Result<MeshPath, String> {
        Ok(match s.trim() {
            "direct" => MeshPath::Direct,
            "netd" | "sidecar" | "netd-sidecar" => MeshPath::Netd,
            "netd-tcp" => MeshPath::NetdTcp,
            "nginx" => MeshPath::Nginx,
            "haproxy" => MeshPath::Haproxy,
            other => {
                return Err(format!(
                    "--paths: unknown path {other:?} (direct, netd, netd-tcp, nginx, haproxy)"
                ))
            }
        })
    }
}

/// Options of the `mesh` subcommand.
#[derive(Debug, Clone)]
pub struct Options {
    /// wrk run per path.
    pub duration: Duration,
    /// Connections of both loads.
    pub conns: usize,
    /// Open-loop rate, requests/s.
    pub rate: u32,
    /// Open-loop run per path.
    pub rate_duration: Duration,
    /// Smoke-run mode.
    pub quick: bool,
    /// Rounds over every path (paths take turns); each path's median round is reported.
    pub rounds: usize,
    /// Where to write JSON.
    pub json: Option<PathBuf>,
    /// Paths to run, in order.
    pub paths: Vec<MeshPath>,
    /// Explicit netd-sidecar binary.
    pub sidecar: Option<PathBuf>,
}

fn secs(name: &str, v: &str) -> Result<Duration, String> {
    v.parse::<u64>()
        .ok()
        .filter(|s| (1..=600).contains(s))
        .map(Duration::from_secs)
        .ok_or(format!("{name} {v:?}: expected whole seconds in 1..=600"))
}

impl Options {
    /// Parses the arguments after `mesh`.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, String> {
        let args: Vec<String> = args.into_iter().collect();
        let mut o = Options {
            duration: Duration::from_secs(10),
            conns: 50,
            rate: 5000,
            rate_duration: Duration::from_secs(10),
            quick: false,
            rounds: 3,
            json: None,
            paths: vec![
                MeshPath::Direct,
                MeshPath::Netd,
                MeshPath::NetdTcp,
                MeshPath::Nginx,
                MeshPath::Haproxy,
            ],
            sidecar: None,
        };
        if args.iter().any(|a| a == "--quick") {
            o.quick = true;
            o.duration = Duration::from_secs(2);
            o.rate_duration = Duration::from_secs(2);
            o.rounds = 1;
        }
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
            match flag.as_str() {
                "--quick" => {}
                "--duration" => o.duration = secs("--duration", &value("--duration")?)?,
                "--rate-duration" => {
                    o.rate_duration = secs("--rate-duration", &value("--rate-duration")?)?
                }
                "--conns" => {
                    let v = value("--conns")?;
                    o.conns = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=5000).contains(n))
                        .ok_or(format!("--conns {v:?}: expected a number in 1..=5000"))?;
                }
                "--rate" => {
                    let v = value("--rate")?;
                    o.rate = v
                        .parse()
                        .ok()
                        .filter(|n| (10..=200_000).contains(n))
                        .ok_or(format!("--rate {v:?}: expected requests/s in 10..=200000"))?;
                }
                "--json" => o.json = Some(PathBuf::from(value("--json")?)),
                "--rounds" => {
                    let v = value("--rounds")?;
                    o.rounds = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=20).contains(n))
                        .ok_or(format!("--rounds {v:?}: expected a number in 1..=20"))?;
                }
                "--sidecar" => o.sidecar = Some(PathBuf::from(value("--sidecar")?)),
                "--paths" => {
                    o.paths.clear();
                    for p in value("--paths")?.split(',') {
                        let p = MeshPath::parse(p)?;
                        if !o.paths.contains(&p) {
                            o.paths.push(p);
                        }
                    }
                }
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------------------------------
// Processes

/// A process this run started; killed by PID and reaped on drop.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    _watch: Option<guard::ChildWatch>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Tools {
    taskset: PathBuf,
    wrk: PathBuf,
    nginx: PathBuf,
    haproxy: Option<PathBuf>,
    sidecar: Option<PathBuf>,
}

fn find_sidecar(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return p
            .is_file()
            .then(|| p.to_path_buf())
            .ok_or(format!("--sidecar {}: no such file", p.display()));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("netd-sidecar")));
    beside
        .into_iter()
        .chain([PathBuf::from("target/release/netd-sidecar")])
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "netd-sidecar not found next to netd-bench or in target/release: \
             scripts/build (or give --sidecar PATH)"
                .into()
        })
}

fn find_tools(opts: &Options) -> Result<Tools, String> {
    let missing = |what: &str, pkg: &str| {
        format!("{what} not found: install it with `apt-get install -y {pkg}` (the benchmark installs nothing itself)")
    };
    Ok(Tools {
        taskset: which("taskset").ok_or_else(|| missing("taskset", "util-linux"))?,
        wrk: which("wrk").ok_or_else(|| missing("wrk", "wrk"))?,
        nginx: which("nginx").ok_or_else(|| missing("nginx (the origin server)", "nginx-light"))?,
        haproxy: if opts.paths.contains(&MeshPath::Haproxy) {
            Some(which("haproxy").ok_or_else(|| missing("haproxy", "haproxy"))?)
        } else {
            None
        },
        sidecar: if opts.paths.iter().any(|p| p.is_netd()) {
            Some(find_sidecar(opts.sidecar.as_deref())?)
        } else {
            None
        },
    })
}

/// Starts `program args` pinned to the server CPU, stderr and stdout to `dir/<name>.log`.
fn spawn(
    tools: &Tools,
    dir: &Path,
    name: &str,
    program: &Path,
    args: &[String],
) -> Result<Proc, String> {
    let log = dir.join(format!("{name}.log"));
    let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new(&tools.taskset)
        .args(["-c", &SERVER_CPU.to_string()])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {name}: {e}"))?;
    // taskset execs the program, so the PID is the program's.
    let watch = guard::watch_child(child.id(), Duration::from_secs(3600));
    Ok(Proc {
        name: name.to_string(),
        child,
        log,
        _watch: watch,
    })
}

/// Per-CPU (total, idle + iowait) jiffies of CPUs 0 and 1.
fn cpu_jiffies() -> Option<[(u64, u64); 2]> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mut out = [(0, 0); 2];
    for (i, slot) in out.iter_mut().enumerate() {
        let line = stat.lines().find(|l| l.starts_with(&format!("cpu{i} ")))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        *slot = (v.iter().sum(), v.get(3)? + v.get(4).copied().unwrap_or(0));
    }
    Some(out)
}

/// Share of CPU 0 and CPU 1 that was idle over the next 300 ms (before a path starts: how
/// busy the machine is with other work).
fn idle_now() -> Option<[f64; 2]> {
    let a = cpu_jiffies()?;
    std::thread::sleep(Duration::from_millis(300));
    let b = cpu_jiffies()?;
    let share = |i: usize| {
        let total = b[i].0.saturating_sub(a[i].0).max(1);
        b[i].1.saturating_sub(a[i].1) as f64 / total as f64
    };
    Some([share(0), share(1)])
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Pins the calling thread (and the threads it starts later) to `cpu`.
fn pin_self(cpu: usize) -> Result<(), String> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write inside it; sched_setaffinity
    // reads it and applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!(
                "cannot pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// One `GET /` with `Connection: close`; true when the answer is a 200.
fn probe(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.set_nodelay(true);
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        configs::HOST
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 200"
}

/// Waits until a request through `addr` is answered with 200; the time since `spawned`.
fn wait_ready(p: &mut Proc, addr: SocketAddr, spawned: Instant) -> Result<Duration, String> {
    while spawned.elapsed() < READY_TIMEOUT {
        if probe(addr) {
            return Ok(spawned.elapsed());
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            return Err(format!(
                "{} exited before answering ({status}); log: {}",
                p.name,
                log_tail(&p.log)
            ));
        }
        if guard::interrupted() {
            return Err("interrupted".into());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Err(format!(
        "{}: no 200 through {addr} within {READY_TIMEOUT:?}; log: {}",
        p.name,
        log_tail(&p.log)
    ))
}

/// A TCP port free on 127.0.0.1 right now.
fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The sidecar's own `ready_us` from its JSON log, if it logged one.
fn sidecar_ready_us(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let at = text.find("\"ready_us\":")? + "\"ready_us\":".len();
    let digits: String = text[at..]
        .chars()
        .skip_while(|c| *c == ' ')
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Measurement

/// One proxy process of a path.
#[derive(Debug, Clone, Default)]
pub struct HopReport {
    /// Process name (`netd-hop1`, ...).
    pub name: String,
    /// Spawn → first 200 through this hop, ms.
    pub startup_ms: Option<f64>,
    /// The process's own figure, where it reports one (netd-sidecar's `ready_us`), ms.
    pub self_ready_ms: Option<f64>,
    /// VmRSS 300 ms after ready (one request served), KiB.
    pub rss_idle_kib: Option<u64>,
    /// RssAnon at the same time (without code pages), KiB.
    pub rss_idle_anon_kib: Option<u64>,
    /// VmRSS halfway through the wrk run, KiB.
    pub rss_load_kib: Option<u64>,
    /// VmHWM after the wrk run, KiB.
    pub rss_peak_kib: Option<u64>,
    /// CPU seconds during the wrk run.
    pub cpu_secs: Option<f64>,
}

impl HopReport {
    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "startup_ms": self.startup_ms.map(round3),
            "self_ready_ms": self.self_ready_ms.map(round3),
            "rss_idle_kib": self.rss_idle_kib,
            "rss_idle_anon_kib": self.rss_idle_anon_kib,
            "rss_load_kib": self.rss_load_kib,
            "rss_peak_kib": self.rss_peak_kib,
            "cpu_secs": self.cpu_secs.map(round3),
        })
    }
}

/// Everything measured for one path.
#[derive(Debug, Clone)]
pub struct PathReport {
    /// Which path.
    pub path: MeshPath,
    /// The proxies, load side first (none for `direct`).
    pub hops: Vec<HopReport>,
    /// Fixed concurrency.
    pub wrk: Option<WrkSummary>,
    /// Fixed rate.
    pub rate: Option<RateResult>,
    /// Origin CPU seconds during the wrk run.
    pub origin_cpu_secs: Option<f64>,
    /// Idle share of CPU 0 and CPU 1 just before the path started.
    pub idle_before: Option<[f64; 2]>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// Fixed-concurrency req/s of every round of this path, in run order (this report is the
    /// median round's).
    pub round_rates: Vec<f64>,
}

impl PathReport {
    /// Hop CPU µs per request of the wrk run (both hops together).
    pub fn proxy_cpu_us(&self) -> Option<f64> {
        let w = self.wrk.as_ref()?;
        if self.hops.is_empty() || w.requests == 0 {
            return None;
        }
        let total: Option<f64> = self.hops.iter().map(|h| h.cpu_secs).sum();
        total.map(|t| t * 1e6 / w.requests as f64)
    }

    /// Origin CPU µs per request of the wrk run.
    pub fn origin_cpu_us(&self) -> Option<f64> {
        let w = self.wrk.as_ref().filter(|w| w.requests > 0)?;
        self.origin_cpu_secs.map(|t| t * 1e6 / w.requests as f64)
    }

    fn max_hop(&self, f: impl Fn(&HopReport) -> Option<f64>) -> Option<f64> {
        self.hops.iter().filter_map(f).reduce(f64::max)
    }

    fn to_json(&self) -> Value {
        json!({
            "hops": self.hops.iter().map(HopReport::to_json).collect::<Vec<_>>(),
            "fixed_concurrency": self.wrk.as_ref().map(WrkSummary::to_json),
            "fixed_rate": self.rate.as_ref().map(RateResult::to_json),
            "origin_cpu_secs": self.origin_cpu_secs.map(round3),
            "proxy_cpu_us_per_request": self.proxy_cpu_us().map(round3),
            "origin_cpu_us_per_request": self.origin_cpu_us().map(round3),
            "idle_before": self.idle_before.map(|i| json!({"cpu0": round3(i[0]), "cpu1": round3(i[1])})),
            "error": self.error,
            "round_req_per_s": self.round_rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        })
    }
}

/// Spawns hop `name` listening on `port` and forwarding to `next`; returns it ready.
fn start_hop(
    path: MeshPath,
    tools: &Tools,
    dir: &Path,
    hop: usize,
    port: u16,
    next: u16,
) -> Result<(Proc, HopReport), String> {
    let name = format!("{}-hop{hop}", path.key());
    let (program, args): (&Path, Vec<String>) = match path {
        MeshPath::Direct => return Err("direct has no hops".into()),
        MeshPath::Nginx => {
            let conf = dir.join(format!("{name}.conf"));
            std::fs::create_dir_all(dir.join(format!("{name}-tmp"))).map_err(|e| e.to_string())?;
            std::fs::write(&conf, configs::nginx_hop(&name, dir, port, next))
                .map_err(|e| format!("{}: {e}", conf.display()))?;
            (&tools.nginx, nginx_args(dir, &conf, &name))
        }
        MeshPath::Haproxy => {
            let conf = dir.join(format!("{name}.cfg"));
            std::fs::write(&conf, configs::haproxy_hop(&name, port, next))
                .map_err(|e| format!("{}: {e}", conf.display()))?;
            let program = tools.haproxy.as_deref().ok_or("haproxy not found")?;
            (
                program,
                vec!["-db".into(), "-f".into(), conf.display().to_string()],
            )
        }
        MeshPath::Netd | MeshPath::NetdTcp => {
            let snap = dir.join(format!("{name}.json"));
            let (data, outbound, inbound, target) = if hop == 1 {
                (
                    configs::sidecar_outbound_snapshot(next),
                    local(port),
                    local(0),
                    None,
                )
            } else {
                (
                    configs::sidecar_inbound_snapshot(),
                    local(0),
                    local(port),
                    Some(local(next)),
                )
            };
            std::fs::write(&snap, data.to_string())
                .map_err(|e| format!("{}: {e}", snap.display()))?;
            let mut args = vec![
                "--snapshot".to_string(),
                snap.display().to_string(),
                "--outbound".into(),
                outbound.to_string(),
                "--inbound".into(),
                inbound.to_string(),
                "--admin".into(),
                local(0).to_string(),
                "--log-json".into(),
            ];
            if let Some(t) = target {
                args.extend(["--inbound-target".into(), t.to_string()]);
            }
            if path == MeshPath::Netd {
                // Hop 2 holds 127.0.0.1 on the links: hop 1's connection to hop 2's inbound
                // listener goes over `links/127.0.0.1.sock`.
                let links = dir.join("links");
                std::fs::create_dir_all(&links).map_err(|e| format!("{}: {e}", links.display()))?;
                args.extend(["--local-links".into(), links.display().to_string()]);
                if hop == 2 {
                    args.extend(["--local-addr".into(), "127.0.0.1".into()]);
                }
            }
            let program = tools.sidecar.as_deref().ok_or("netd-sidecar not found")?;
            (program, args)
        }
    };
    let spawned = Instant::now();
    let mut p = spawn(tools, dir, &name, program, &args)?;
    let startup = wait_ready(&mut p, local(port), spawned)?;
    let report = HopReport {
        name,
        startup_ms: Some(startup.as_secs_f64() * 1e3),
        self_ready_ms: path
            .is_netd()
            .then(|| sidecar_ready_us(&p.log))
            .flatten()
            .map(|us| us as f64 / 1e3),
        ..HopReport::default()
    };
    Ok((p, report))
}

fn nginx_args(dir: &Path, conf: &Path, name: &str) -> Vec<String> {
    vec![
        "-p".into(),
        dir.display().to_string(),
        "-e".into(),
        dir.join(format!("{name}.error.log")).display().to_string(),
        "-c".into(),
        conf.display().to_string(),
    ]
}

/// Runs wrk for `secs` against `port`; samples the hops' RSS halfway through when asked.
fn wrk(
    tools: &Tools,
    opts: &Options,
    script: &Path,
    port: u16,
    secs: u64,
    mid: Option<(&[u32], &mut Vec<Option<u64>>)>,
) -> Result<WrkSummary, String> {
    let child = Command::new(&tools.taskset)
        .args(["-c", &LOAD_CPU.to_string()])
        .arg(&tools.wrk)
        .args(["-t1", &format!("-c{}", opts.conns), &format!("-d{secs}s")])
        .args(["--timeout", "2s", "-s"])
        .arg(script)
        .args(["-H", &format!("Host: {}", configs::HOST)])
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting wrk: {e}"))?;
    let _watch = guard::watch_child(child.id(), Duration::from_secs(secs + 30));
    if let Some((pids, out)) = mid {
        std::thread::sleep(Duration::from_millis(secs * 500));
        *out = pids.iter().map(|&p| rss(p).0).collect();
    }
    let out = child.wait_with_output().map_err(|e| format!("wrk: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk failed ({}): {} {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    load::parse_wrk(&stdout)
}

fn run_path(
    opts: &Options,
    tools: &Tools,
    dir: &Path,
    origin: &Proc,
    origin_port: u16,
    script: &Path,
    path: MeshPath,
) -> PathReport {
    let mut report = PathReport {
        path,
        hops: Vec::new(),
        wrk: None,
        rate: None,
        origin_cpu_secs: None,
        idle_before: idle_now(),
        error: None,
        round_rates: Vec::new(),
    };
    if let Err(e) = measure_path(opts, tools, dir, origin, origin_port, script, &mut report) {
        eprintln!("netd-bench: {}: {e}", path.key());
        report.error = Some(e);
    }
    report
}

fn measure_path(
    opts: &Options,
    tools: &Tools,
    dir: &Path,
    origin: &Proc,
    origin_port: u16,
    script: &Path,
    report: &mut PathReport,
) -> Result<(), String> {
    let path = report.path;
    eprintln!("netd-bench: path {}", path.key());
    // Hops are started from the server side: hop 2 forwards to the origin, hop 1 to hop 2.
    let mut procs: Vec<Proc> = Vec::new();
    let entry = if path == MeshPath::Direct {
        origin_port
    } else {
        let (p1, p2) = (free_port()?, free_port()?);
        let (proc2, hop2) = start_hop(path, tools, dir, 2, p2, origin_port)?;
        procs.push(proc2);
        let (proc1, hop1) = start_hop(path, tools, dir, 1, p1, p2)?;
        procs.insert(0, proc1);
        report.hops = vec![hop1, hop2];
        p1
    };
    std::thread::sleep(Duration::from_millis(300));
    let pids: Vec<u32> = procs.iter().map(Proc::pid).collect();
    for (h, &pid) in report.hops.iter_mut().zip(&pids) {
        h.rss_idle_kib = rss(pid).0;
        h.rss_idle_anon_kib = rss_anon(pid);
    }
    wrk(tools, opts, script, entry, WARMUP_SECS, None).map_err(|e| format!("warm-up: {e}"))?;
    if guard::interrupted() {
        return Err("interrupted".into());
    }
    eprintln!(
        "netd-bench: {}: wrk, {} connections, {} s",
        path.key(),
        opts.conns,
        opts.duration.as_secs()
    );
    let before: Vec<Option<f64>> = pids.iter().map(|&p| cpu_time(p)).collect();
    let origin_before = cpu_time(origin.pid());
    let mut mid = Vec::new();
    let w = wrk(
        tools,
        opts,
        script,
        entry,
        opts.duration.as_secs(),
        Some((&pids, &mut mid)),
    );
    let after: Vec<Option<f64>> = pids.iter().map(|&p| cpu_time(p)).collect();
    report.origin_cpu_secs = origin_before
        .zip(cpu_time(origin.pid()))
        .map(|(a, b)| b - a);
    for (i, h) in report.hops.iter_mut().enumerate() {
        h.cpu_secs = before[i].zip(after[i]).map(|(a, b)| b - a);
        h.rss_load_kib = mid.get(i).copied().flatten();
        h.rss_peak_kib = rss(pids[i]).1;
    }
    report.wrk = Some(w?);
    for p in procs.iter_mut() {
        if let Ok(Some(status)) = p.child.try_wait() {
            return Err(format!(
                "{} exited during the load ({status}); log: {}",
                p.name,
                log_tail(&p.log)
            ));
        }
    }
    if guard::interrupted() {
        return Err("interrupted".into());
    }
    eprintln!(
        "netd-bench: {}: open loop, {} req/s, {} s",
        path.key(),
        opts.rate,
        opts.rate_duration.as_secs()
    );
    report.rate = Some(load::open_loop(RateSpec {
        addr: local(entry),
        host: configs::HOST,
        rate: opts.rate,
        duration: opts.rate_duration,
        conns: opts.conns,
        timeout: Duration::from_secs(2),
    })?);
    // Hop 1 first, so hop 2 never sees its client vanish mid-request.
    while !procs.is_empty() {
        drop(procs.remove(0));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Report

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rate,
    Ms,
    Us,
    Mb,
    Count,
}

struct Row {
    name: &'static str,
    kind: Kind,
    values: Vec<Option<f64>>,
}

fn rows(reports: &[PathReport]) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut row = |name, kind, f: &dyn Fn(&PathReport) -> Option<f64>| {
        rows.push(Row {
            name,
            kind,
            values: reports.iter().map(f).collect(),
        });
    };
    let ms = |us: f64| us / 1e3;
    let mb = |k: Option<u64>| k.map(|k| k as f64 / 1024.0);
    row("req/s, fixed concurrency", Kind::Rate, &|r| {
        r.wrk.as_ref().map(WrkSummary::rate)
    });
    row("  p50 (ms)", Kind::Ms, &|r| {
        r.wrk.as_ref().map(|w| ms(w.p50_us))
    });
    row("  p99 (ms)", Kind::Ms, &|r| {
        r.wrk.as_ref().map(|w| ms(w.p99_us))
    });
    row("  p99.9 (ms)", Kind::Ms, &|r| {
        r.wrk.as_ref().map(|w| ms(w.p999_us))
    });
    row("  errors", Kind::Count, &|r| {
        r.wrk.as_ref().map(|w| w.errors as f64)
    });
    row("req/s answered, fixed rate", Kind::Rate, &|r| {
        r.rate.as_ref().map(|x| x.achieved)
    });
    row("  p50 (ms)", Kind::Ms, &|r| {
        r.rate.as_ref().map(|x| ms(x.p50_us))
    });
    row("  p99 (ms)", Kind::Ms, &|r| {
        r.rate.as_ref().map(|x| ms(x.p99_us))
    });
    row("  p99.9 (ms)", Kind::Ms, &|r| {
        r.rate.as_ref().map(|x| ms(x.p999_us))
    });
    row("  errors", Kind::Count, &|r| {
        r.rate.as_ref().map(|x| x.errors as f64)
    });
    row("proxy CPU per request (µs, 2 hops)", Kind::Us, &|r| {
        r.proxy_cpu_us()
    });
    row("origin CPU per request (µs)", Kind::Us, &|r| {
        r.origin_cpu_us()
    });
    row("RSS idle, largest hop (MB)", Kind::Mb, &|r| {
        r.max_hop(|h| mb(h.rss_idle_kib))
    });
    row("  of which anonymous (MB)", Kind::Mb, &|r| {
        r.max_hop(|h| mb(h.rss_idle_anon_kib))
    });
    row("RSS under load, largest hop (MB)", Kind::Mb, &|r| {
        r.max_hop(|h| mb(h.rss_load_kib))
    });
    row("RSS peak, largest hop (MB)", Kind::Mb, &|r| {
        r.max_hop(|h| mb(h.rss_peak_kib))
    });
    row("startup to ready, slowest hop (ms)", Kind::Ms, &|r| {
        r.max_hop(|h| h.startup_ms)
    });
    rows
}

fn fmt(v: Option<f64>, kind: Kind) -> String {
    match v {
        Some(v) if v.is_finite() => match kind {
            Kind::Rate | Kind::Count => format!("{v:.0}"),
            Kind::Ms => format!("{v:.3}"),
            Kind::Us => format!("{v:.1}"),
            Kind::Mb => format!("{v:.1}"),
        },
        _ => "-".into(),
    }
}

fn index_of(reports: &[PathReport], p: MeshPath) -> Option<usize> {
    reports.iter().position(|r| r.path == p)
}

/// Header facts: versions and machine.
struct Context {
    cpus: usize,
    versions: Vec<(String, String)>,
    load_before: String,
    load_after: String,
}

fn version(program: &Path, flag: &str) -> String {
    Command::new(program)
        .arg(flag)
        .output()
        .ok()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stderr).to_string();
            text.push_str(&String::from_utf8_lossy(&o.stdout));
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

fn table(opts: &Options, ctx: &Context, rows: &[Row], reports: &[PathReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nnetd-bench mesh: two proxy hops on loopback, HTTP/1.1 keep-alive; origin and proxies \
         on CPU {SERVER_CPU}, load on CPU {LOAD_CPU}"
    );
    let _ = writeln!(
        out,
        "fixed concurrency: wrk -t1 -c{} {} s (after {WARMUP_SECS} s warm-up); fixed rate: \
         open loop {} req/s over {} conns, {} s, latency from due time",
        opts.conns,
        opts.duration.as_secs(),
        opts.rate,
        opts.conns,
        opts.rate_duration.as_secs()
    );
    for (k, v) in &ctx.versions {
        let _ = writeln!(out, "  {k}: {v}");
    }
    let _ = writeln!(
        out,
        "load average before / after: {} / {} ({} CPUs, kernel {})\n",
        ctx.load_before,
        ctx.load_after,
        ctx.cpus,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    );
    let (netd, nginx) = (
        index_of(reports, MeshPath::Netd),
        index_of(reports, MeshPath::Nginx),
    );
    let _ = write!(out, "{:<36}", "");
    for r in reports {
        let _ = write!(out, " {:>10}", r.path.key());
    }
    let _ = writeln!(out, " {:>11}", "netd/nginx");
    for row in rows {
        let _ = write!(out, "{:<36}", row.name);
        for v in &row.values {
            let _ = write!(out, " {:>10}", fmt(*v, row.kind));
        }
        let r = netd
            .zip(nginx)
            .and_then(|(a, b)| ratio(row.values[a], row.values[b]));
        let _ = writeln!(
            out,
            " {:>11}",
            r.filter(|x| x.is_finite())
                .map_or("-".into(), |x| format!("{x:.2}"))
        );
    }
    out.push('\n');
    if reports.iter().any(|r| r.round_rates.len() > 1) {
        let _ = writeln!(
            out,
            "{} rounds, paths taking turns; each column is the path's median round by req/s:",
            opts.rounds
        );
        for r in reports {
            let each: Vec<String> = r.round_rates.iter().map(|x| format!("{x:.0}")).collect();
            let _ = writeln!(out, "  {}: req/s {}", r.path.key(), each.join(" / "));
        }
    }
    for r in reports {
        if let Some(i) = r.idle_before {
            let _ = writeln!(
                out,
                "{}: CPU 0 {:.0}% / CPU 1 {:.0}% idle before it started",
                r.path.key(),
                i[0] * 100.0,
                i[1] * 100.0
            );
        }
        if let Some(e) = &r.error {
            let _ = writeln!(out, "{}: {e}", r.path.key());
        }
        if let Some(x) = &r.rate {
            if let Some(e) = x.first_error.as_ref().filter(|_| x.errors > 0) {
                let _ = writeln!(out, "{}: fixed rate, first error: {e}", r.path.key());
            }
            if x.send_lag_p99_us > 1000.0 {
                let _ = writeln!(
                    out,
                    "{}: the load generator sent p99 {:.1} ms late (busy CPU {LOAD_CPU}?)",
                    r.path.key(),
                    x.send_lag_p99_us / 1e3
                );
            }
        }
        for h in &r.hops {
            if let Some(s) = h.self_ready_ms {
                let _ = writeln!(out, "{}: reports ready after {s:.2} ms", h.name);
            }
        }
    }
    out.push_str(&goals(reports));
    out
}

/// The goals for the netd path, met or not.
fn goals(reports: &[PathReport]) -> String {
    let mut out = String::new();
    let get = |p| index_of(reports, p).map(|i| &reports[i]);
    let Some(netd) = get(MeshPath::Netd) else {
        return out;
    };
    out.push_str("\ngoals (netd two hops):\n");
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    if let Some(nginx) = get(MeshPath::Nginx) {
        let rate = ratio(
            netd.wrk.as_ref().map(WrkSummary::rate),
            nginx.wrk.as_ref().map(WrkSummary::rate),
        );
        if let Some(x) = rate {
            let _ = writeln!(
                out,
                "  req/s >= 1.2x nginx: {x:.2}x ({})",
                verdict(x >= 1.2)
            );
        }
        let tcp_rate = get(MeshPath::NetdTcp).and_then(|t| {
            ratio(
                t.wrk.as_ref().map(WrkSummary::rate),
                nginx.wrk.as_ref().map(WrkSummary::rate),
            )
        });
        if let Some(x) = tcp_rate {
            let _ = writeln!(
                out,
                "    (netd-tcp, sidecars over TCP as across nodes: {x:.2}x nginx)"
            );
        }
        let p99 = ratio(
            netd.wrk.as_ref().map(|w| w.p99_us),
            nginx.wrk.as_ref().map(|w| w.p99_us),
        );
        if let Some(x) = p99 {
            let _ = writeln!(
                out,
                "  p99 lower than nginx's (fixed concurrency): {x:.2}x ({})",
                verdict(x < 1.0)
            );
        }
    }
    if let Some(mb) = netd
        .max_hop(|h| h.rss_idle_kib.map(|k| k as f64))
        .map(|k| k / 1024.0)
    {
        let _ = writeln!(
            out,
            "  sidecar idle RSS <= 5 MB: {mb:.1} MB ({})",
            verdict(mb <= 5.0)
        );
    }
    if let Some(ms) = netd.max_hop(|h| h.startup_ms) {
        let _ = writeln!(
            out,
            "  startup <= 20 ms: {ms:.1} ms spawn to first proxied 200 ({})",
            verdict(ms <= 20.0)
        );
    }
    out
}

fn json_doc(opts: &Options, ctx: &Context, rows: &[Row], reports: &[PathReport]) -> Value {
    let mut summary = Vec::new();
    for row in rows {
        let mut m = Map::new();
        m.insert("name".into(), json!(row.name.trim()));
        for (r, v) in reports.iter().zip(&row.values) {
            m.insert(r.path.key().into(), json!(v.map(round3)));
        }
        summary.push(Value::Object(m));
    }
    let paths: Map<String, Value> = reports
        .iter()
        .map(|r| (r.path.key().to_string(), r.to_json()))
        .collect();
    json!({
        "benchmark": "mesh",
        "options": {
            "duration_s": opts.duration.as_secs(),
            "conns": opts.conns,
            "rate": opts.rate,
            "rate_duration_s": opts.rate_duration.as_secs(),
            "warmup_s": WARMUP_SECS,
            "quick": opts.quick,
        },
        "machine": {
            "cpus": ctx.cpus,
            "loadavg_before": ctx.load_before,
            "loadavg_after": ctx.load_after,
            "server_cpu": SERVER_CPU,
            "load_cpu": LOAD_CPU,
        },
        "versions": ctx
            .versions
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<Map<String, Value>>(),
        "summary": summary,
        "paths": paths,
    })
}

/// Runs the `mesh` benchmark; `Ok(false)` when a path failed (the table shows the rest).
pub fn run(opts: &Options) -> Result<bool, String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return Err("needs 2 CPUs: server and proxies on CPU 0, load on CPU 1".into());
    }
    let tools = find_tools(opts)?;
    pin_self(LOAD_CPU)?;
    let mut versions = vec![
        ("nginx".to_string(), version(&tools.nginx, "-v")),
        ("wrk".to_string(), version(&tools.wrk, "-v")),
    ];
    if let Some(h) = &tools.haproxy {
        versions.push(("haproxy".into(), version(h, "-v")));
    }
    let scratch = Scratch::create().map_err(|e| format!("scratch directory: {e}"))?;
    eprintln!("netd-bench: scratch directory {}", scratch.root().display());
    let dir = scratch.root().to_path_buf();
    // A private copy: a rebuild during the run cannot swap the binary under it.
    let tools = Tools {
        sidecar: match &tools.sidecar {
            Some(s) => {
                let v = format!("{}, {}", version(s, "--version"), linkage(s));
                versions.push(("netd-sidecar".into(), v));
                Some(
                    scratch
                        .snapshot_binary(s)
                        .map_err(|e| format!("copying {}: {e}", s.display()))?,
                )
            }
            None => None,
        },
        ..tools
    };
    let script = dir.join("summary.lua");
    std::fs::write(&script, configs::wrk_script()).map_err(|e| format!("wrk script: {e}"))?;
    let load_before = loadavg();
    let reports = {
        let origin_port = free_port()?;
        let conf = dir.join("origin.conf");
        std::fs::create_dir_all(dir.join("origin-tmp")).map_err(|e| e.to_string())?;
        std::fs::write(&conf, configs::nginx_origin(&dir, origin_port))
            .map_err(|e| format!("{}: {e}", conf.display()))?;
        let spawned = Instant::now();
        let mut origin = spawn(
            &tools,
            &dir,
            "origin",
            &tools.nginx,
            &nginx_args(&dir, &conf, "origin"),
        )?;
        let ready = wait_ready(&mut origin, local(origin_port), spawned)?;
        eprintln!(
            "netd-bench: origin (nginx) on 127.0.0.1:{origin_port}, ready in {:.1} ms",
            ready.as_secs_f64() * 1e3
        );
        // Paths take turns, round after round: a slow minute of this shared VM falls on
        // every path alike, and each path's median round is what is reported.
        let mut rounds: Vec<Vec<PathReport>> = vec![Vec::new(); opts.paths.len()];
        'rounds: for round in 0..opts.rounds {
            for (i, &path) in opts.paths.iter().enumerate() {
                if guard::interrupted() {
                    break 'rounds;
                }
                if opts.rounds > 1 {
                    eprintln!("netd-bench: round {}/{}", round + 1, opts.rounds);
                }
                rounds[i].push(run_path(
                    opts,
                    &tools,
                    &dir,
                    &origin,
                    origin_port,
                    &script,
                    path,
                ));
            }
        }
        rounds
            .into_iter()
            .filter_map(median_round)
            .collect::<Vec<_>>()
    };
    let ctx = Context {
        cpus,
        versions,
        load_before,
        load_after: loadavg(),
    };
    drop(scratch);
    if guard::interrupted() {
        return Err("interrupted; everything was removed".into());
    }
    let rows = rows(&reports);
    print!("{}", table(opts, &ctx, &rows, &reports));
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&json_doc(opts, &ctx, &rows, &reports))
            .map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("netd-bench: results written to {}", path.display());
    }
    Ok(reports.iter().all(|r| r.error.is_none()))
}

/// User + system CPU seconds of `pid`.
/// The round whose fixed-concurrency req/s is the median of a path's rounds (the lower middle
/// one for an even count; rounds without a wrk result sort first), with every round's req/s
/// kept in it for the report.
fn median_round(mut runs: Vec<PathReport>) -> Option<PathReport> {
    let rate = |r: &PathReport| r.wrk.as_ref().map_or(-1.0, WrkSummary::rate);
    let all: Vec<f64> = runs.iter().map(rate).collect();
    runs.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    let mid = runs.len().checked_sub(1)? / 2;
    let mut median = runs.swap_remove(mid);
    median.round_rates = all;
    Some(median)
}

fn cpu_time(pid: u32) -> Option<f64> {
    crate::procfs::cpu_time(&pid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let parse = |s: &str| Options::parse(s.split_whitespace().map(String::from));
        let o = parse("").unwrap();
        assert_eq!((o.duration.as_secs(), o.conns, o.rate), (10, 50, 5000));
        assert_eq!(o.paths.len(), 5);
        let o = parse("--paths netd-tcp,netd").unwrap();
        assert_eq!(o.paths, vec![MeshPath::NetdTcp, MeshPath::Netd]);
        assert!(o.paths.iter().all(|p| p.is_netd()));
        assert_eq!(parse("").unwrap().rounds, 3);
        assert_eq!(parse("--rounds 5").unwrap().rounds, 5);
        assert!(parse("--rounds 0").is_err());
        let o = parse("--quick --duration 3 --paths netd,nginx,netd").unwrap();
        assert!(o.quick);
        assert_eq!(o.rounds, 1);
        assert_eq!((o.duration.as_secs(), o.rate_duration.as_secs()), (3, 2));
        assert_eq!(o.paths, vec![MeshPath::Netd, MeshPath::Nginx]);
        assert!(parse("--paths envoy").is_err());
        assert!(parse("--duration 0").is_err());
        assert!(parse("--rate").is_err());
        assert!(parse("--bogus").is_err());
    }

    #[test]
    fn sidecar_ready_line() {
        let dir = std::env::temp_dir().join(format!("netd-bench-mesh-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("s.log");
        std::fs::write(
            &log,
            "{\"level\":\"INFO\",\"ready_us\":1234,\"message\":\"ready\"}\n",
        )
        .unwrap();
        assert_eq!(sidecar_ready_us(&log), Some(1234));
        std::fs::write(&log, "nothing\n").unwrap();
        assert_eq!(sidecar_ready_us(&log), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_median_round_is_reported_with_every_rounds_rate() {
        let run = |rate: Option<f64>| PathReport {
            path: MeshPath::Netd,
            hops: Vec::new(),
            wrk: rate.map(|r| WrkSummary {
                requests: (r * 10.0) as u64,
                duration_us: 10_000_000,
                ..WrkSummary::default()
            }),
            rate: None,
            origin_cpu_secs: None,
            idle_before: None,
            error: None,
            round_rates: Vec::new(),
        };
        let m = median_round(vec![run(Some(300.0)), run(Some(100.0)), run(Some(200.0))]).unwrap();
        assert_eq!(m.wrk.as_ref().map(WrkSummary::rate), Some(200.0));
        assert_eq!(m.round_rates, vec![300.0, 100.0, 200.0]);
        // A failed round counts as the slowest; even counts take the lower middle.
        let m = median_round(vec![run(None), run(Some(100.0))]).unwrap();
        assert!(m.wrk.is_none());
        assert!(median_round(Vec::new()).is_none());
    }

    #[test]
    fn goals_need_the_netd_path() {
        assert_eq!(goals(&[]), "");
        let r = PathReport {
            path: MeshPath::Netd,
            hops: vec![HopReport {
                rss_idle_kib: Some(4096),
                startup_ms: Some(5.0),
                ..HopReport::default()
            }],
            wrk: None,
            rate: None,
            origin_cpu_secs: None,
            idle_before: None,
            error: None,
            round_rates: Vec::new(),
        };
        let g = goals(&[r]);
        assert!(g.contains("4.0 MB (met)") && g.contains("5.0 ms"), "{g}");
    }
}
