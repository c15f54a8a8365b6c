//! The `dns` benchmark: netd's DNS server (`netd-dns`, run by this binary's `dns-server` mode)
//! against dnsmasq, side by side, both answering the same names on loopback, loaded by dnsperf.
//!
//! Each server runs as its own process pinned to CPU 0 (`taskset`), dnsperf runs pinned to
//! CPU 1. Both read one hosts file (`<ip> <name>` lines) and own the domain `netd.local`, so an
//! unknown name in it is NXDOMAIN for both (dnsmasq: `--local=/netd.local/`); neither has an
//! upstream, so nothing ever leaves loopback and `/etc/resolv.conf` is never read by either.
//! Every process is killed by PID (and registered with the [`guard`](crate::guard) watchdog by
//! pidfd); all files live in the run's [`Scratch`] directory.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::guard;
use crate::procfs::{log_tail, rss, which};
use crate::scratch::Scratch;
use crate::stats::{ratio, round3};

/// Usage text of `netd-bench dns`.
pub const USAGE: &str = "\
usage: netd-bench dns [options]

Compares netd's DNS server (netd-dns, in a `netd-bench dns-server` process) with dnsmasq,
side by side on 127.0.0.1: the same names, the same dnsperf load (known names + 10% unknown),
servers pinned to CPU 0 and dnsperf to CPU 1. Needs dnsmasq, dnsperf and taskset
(apt-get install -y dnsmasq-base dnsperf). Nothing is forwarded; nothing leaves loopback.

options:
  --duration SECS    measured dnsperf seconds per server        (default 10)
  --rate QPS         query rate of the latency run (percentiles) (default 20000, 5 s)
  --names N          container names in the zone                (default 1000)
  --quick            smoke run: 2 s per server (explicit flags still win)
  --json PATH        also write the results as JSON to PATH
  --tools LIST       which servers: netd,dnsmasq                (default both)
";

/// The zone both servers own.
pub const DOMAIN: &str = "netd.local";
/// CPU the servers are pinned to.
const SERVER_CPU: &str = "0";
/// CPU dnsperf is pinned to.
const LOAD_CPU: &str = "1";
/// How long a server gets to answer its first query.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// netd-dns in `netd-bench dns-server`.
    Netd,
    /// dnsmasq from dnsmasq-base.
    Dnsmasq,
}

impl Server {
    /// Short name for JSON keys and the table.
    pub fn key(self) -> &'static str {
        match self {
            Server::Netd => "netd",
            Server::Dnsmasq => "dnsmasq",
        }
    }
}

/// Options of the `dns` subcommand.
#[derive(Debug, Clone)]
pub struct Options {
    /// dnsperf run length per server.
    pub duration: Duration,
    /// Names in the zone.
    pub names: usize,
    /// Smoke-run mode.
    pub quick: bool,
    /// Where to write JSON results.
    pub json: Option<PathBuf>,
    /// Servers to run, in order.
    pub servers: Vec<Server>,
    /// Query rate of the latency run (queries/s).
    pub rate: u32,
    /// Length of the latency run.
    pub rate_duration: Duration,
}

impl Options {
    /// Parses the arguments after `dns`.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, String> {
        let args: Vec<String> = args.into_iter().collect();
        let mut o = Options {
            duration: Duration::from_secs(10),
            names: 1000,
            quick: false,
            json: None,
            servers: vec![Server::Netd, Server::Dnsmasq],
            rate: 20_000,
            rate_duration: Duration::from_secs(5),
        };
        if args.iter().any(|a| a == "--quick") {
            o.quick = true;
            o.duration = Duration::from_secs(2);
            o.rate_duration = Duration::from_secs(1);
        }
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
            match flag.as_str() {
                "--quick" => {}
                "--duration" => {
                    let v = value("--duration")?;
                    let secs: u64 =
                        v.parse()
                            .ok()
                            .filter(|s| (1..=600).contains(s))
                            .ok_or(format!(
                                "--duration {v:?}: expected whole seconds in 1..=600"
                            ))?;
                    o.duration = Duration::from_secs(secs);
                }
                "--names" => {
                    let v = value("--names")?;
                    o.names = v
                        .parse()
                        .ok()
                        .filter(|n| (10..=60_000).contains(n))
                        .ok_or(format!("--names {v:?}: expected a number in 10..=60000"))?;
                }
                "--json" => o.json = Some(PathBuf::from(value("--json")?)),
                "--rate" => {
                    let v = value("--rate")?;
                    o.rate = v
                        .parse()
                        .ok()
                        .filter(|n| (100..=200_000).contains(n))
                        .ok_or(format!("--rate {v:?}: expected queries/s in 100..=200000"))?;
                }
                "--tools" => {
                    o.servers.clear();
                    for t in value("--tools")?.split(',') {
                        let s = match t.trim() {
                            "netd" | "netd-dns" => Server::Netd,
                            "dnsmasq" => Server::Dnsmasq,
                            other => {
                                return Err(format!(
                                    "--tools: unknown server {other:?} (netd, dnsmasq)"
                                ))
                            }
                        };
                        if !o.servers.contains(&s) {
                            o.servers.push(s);
                        }
                    }
                }
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        Ok(o)
    }
}

/// The address of name `i` (10.88.0.0/16, skipping .0 and .255).
fn address(i: usize) -> Ipv4Addr {
    let n = u32::try_from(i).unwrap_or(0);
    Ipv4Addr::new(10, 88, (1 + n / 250) as u8, (1 + n % 250) as u8)
}

/// The hosts file both servers read: `<ip> ctr-NNNN.<domain>` per line.
pub fn hosts_file(names: usize) -> String {
    let mut s = String::new();
    for i in 0..names {
        let _ = writeln!(s, "{} ctr-{i:04}.{DOMAIN}", address(i));
    }
    s
}

/// The dnsperf input: every known name once (type A), plus one unknown name after every 10th.
pub fn query_file(names: usize) -> String {
    let mut s = String::new();
    for i in 0..names {
        let _ = writeln!(s, "ctr-{i:04}.{DOMAIN} A");
        if i % 10 == 9 {
            let _ = writeln!(s, "missing-{:04}.{DOMAIN} A", i / 10);
        }
    }
    s
}

/// dnsperf's summary figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Perf {
    /// Queries sent.
    pub sent: u64,
    /// Queries answered.
    pub completed: u64,
    /// Queries that timed out.
    pub lost: u64,
    /// Queries per second.
    pub qps: f64,
    /// Average latency, seconds.
    pub avg: f64,
    /// Minimum latency, seconds.
    pub min: f64,
    /// Maximum latency, seconds.
    pub max: f64,
    /// Latency standard deviation, seconds.
    pub stddev: f64,
    /// Response codes and counts (`NOERROR`, `NXDOMAIN`, ...).
    pub rcodes: Vec<(String, u64)>,
}

fn first_number(s: &str) -> Option<f64> {
    s.split_whitespace().next().and_then(|w| {
        w.trim_matches(|c: char| matches!(c, '(' | ')' | ','))
            .parse()
            .ok()
    })
}

fn after<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    s.find(key).map(|i| &s[i + key.len()..])
}

/// Parses dnsperf's statistics block.
pub fn parse_dnsperf(out: &str) -> Result<Perf, String> {
    let mut p = Perf::default();
    let mut seen = 0;
    for line in out.lines().map(str::trim) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "Queries sent" => p.sent = first_number(v).unwrap_or(0.0) as u64,
            "Queries completed" => p.completed = first_number(v).unwrap_or(0.0) as u64,
            "Queries lost" => p.lost = first_number(v).unwrap_or(0.0) as u64,
            "Queries per second" => {
                p.qps = first_number(v).ok_or("bad qps")?;
                seen += 1;
            }
            "Average Latency (s)" => {
                p.avg = first_number(v).ok_or("bad latency")?;
                p.min = after(v, "min ").and_then(first_number).unwrap_or(f64::NAN);
                p.max = after(v, "max ").and_then(first_number).unwrap_or(f64::NAN);
                seen += 1;
            }
            "Latency StdDev (s)" => p.stddev = first_number(v).unwrap_or(f64::NAN),
            "Response codes" => {
                for part in v.split(", ") {
                    let mut w = part.split_whitespace();
                    if let (Some(code), Some(n)) = (w.next(), w.next().and_then(|n| n.parse().ok()))
                    {
                        p.rcodes.push((code.to_string(), n));
                    }
                }
            }
            _ => {}
        }
    }
    if seen < 2 {
        return Err("no statistics in dnsperf's output".into());
    }
    Ok(p)
}

/// Latency percentiles of the fixed-rate run, seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    /// Answers counted.
    pub answered: u64,
    /// Queries sent and not answered.
    pub lost: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest answer.
    pub max: f64,
}

/// Per-query latencies from `dnsperf -v` output (`> RCODE name type seconds` lines) and the
/// summary's lost count.
pub fn parse_verbose(out: &str) -> Result<Latency, String> {
    let mut lat: Vec<f64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    if lat.is_empty() {
        return Err("no per-query lines in dnsperf -v output".into());
    }
    lat.sort_by(f64::total_cmp);
    let p = |q| crate::stats::percentile(&lat, q).unwrap_or(f64::NAN);
    Ok(Latency {
        answered: lat.len() as u64,
        lost: parse_dnsperf(out).map_or(0, |s| s.lost),
        p50: p(50.0),
        p99: p(99.0),
        p999: p(99.9),
        max: lat[lat.len() - 1],
    })
}

/// One server's figures.
#[derive(Debug, Clone, Default)]
pub struct ServerReport {
    /// Which server.
    pub key: &'static str,
    /// dnsperf's figures.
    pub perf: Option<Perf>,
    /// Latency percentiles at the fixed rate.
    pub latency: Option<Latency>,
    /// RSS after startup and one query, KiB.
    pub rss_idle_kib: Option<u64>,
    /// RSS right after the load, KiB.
    pub rss_after_kib: Option<u64>,
    /// Peak RSS (VmHWM), KiB.
    pub rss_peak_kib: Option<u64>,
    /// Server CPU seconds (user + system) spent during the load.
    pub cpu_secs: Option<f64>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// A port free for UDP and TCP on 127.0.0.1 right now.
fn free_port() -> Result<u16, String> {
    for _ in 0..32 {
        let udp = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let port = udp.local_addr().map_err(|e| e.to_string())?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port on 127.0.0.1".into())
}

/// A minimal A query for `name` with ID `id` (RD set).
fn query_packet(id: u16, name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p
}

/// Waits until the server on `port` answers a query for the first name with NOERROR and one
/// answer, or `child` exits, or the timeout passes.
fn wait_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("probe socket: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let start = Instant::now();
    let mut id: u16 = 0x4e00;
    let mut buf = [0u8; 1500];
    while start.elapsed() < READY_TIMEOUT {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited before answering ({status})"));
        }
        if guard::interrupted() {
            return Err("interrupted".into());
        }
        id = id.wrapping_add(1);
        let _ = socket.send_to(&query_packet(id, &format!("ctr-0000.{DOMAIN}")), server);
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            // ID matches, QR set, RCODE 0, ANCOUNT >= 1.
            if n >= 12
                && buf[..2] == id.to_be_bytes()
                && buf[2] & 0x80 != 0
                && buf[3] & 0x0f == 0
                && u16::from_be_bytes([buf[6], buf[7]]) >= 1
            {
                return Ok(());
            }
            if n >= 12 && buf[..2] == id.to_be_bytes() {
                return Err(format!(
                    "answers the probe with RCODE {} and {} answers",
                    buf[3] & 0x0f,
                    u16::from_be_bytes([buf[6], buf[7]])
                ));
            }
        }
    }
    Err(format!("no answer within {READY_TIMEOUT:?}"))
}

/// A server process that is killed (by PID) and reaped on drop.
struct Running {
    child: Child,
    _watch: Option<guard::ChildWatch>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Tools {
    taskset: PathBuf,
    dnsperf: PathBuf,
    dnsmasq: Option<PathBuf>,
    me: PathBuf,
}

fn find_tools(opts: &Options) -> Result<Tools, String> {
    let missing = |what: &str, pkg: &str| {
        format!("{what} not found: install it with `apt-get install -y {pkg}` (the benchmark installs nothing itself)")
    };
    let taskset = which("taskset").ok_or_else(|| missing("taskset", "util-linux"))?;
    let dnsperf = which("dnsperf").ok_or_else(|| missing("dnsperf", "dnsperf"))?;
    let dnsmasq = if opts.servers.contains(&Server::Dnsmasq) {
        Some(which("dnsmasq").ok_or_else(|| missing("dnsmasq", "dnsmasq-base"))?)
    } else {
        None
    };
    let me = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    Ok(Tools {
        taskset,
        dnsperf,
        dnsmasq,
        me,
    })
}

fn spawn(
    tools: &Tools,
    server: Server,
    port: u16,
    hosts: &Path,
    log: &Path,
) -> Result<Running, String> {
    let mut cmd = Command::new(&tools.taskset);
    cmd.args(["-c", SERVER_CPU]);
    match server {
        Server::Netd => {
            cmd.arg(&tools.me).arg("dns-server");
            cmd.arg("--port").arg(port.to_string());
            cmd.arg("--hosts").arg(hosts);
        }
        Server::Dnsmasq => {
            let dnsmasq = tools.dnsmasq.as_ref().ok_or("dnsmasq not found")?;
            cmd.arg(dnsmasq);
            cmd.args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--cache-size=10000",
                "--pid-file=",
            ]);
            cmd.arg(format!("--local=/{DOMAIN}/"));
            cmd.arg(format!("--port={port}"));
            cmd.arg(format!("--addn-hosts={}", hosts.display()));
        }
    }
    let log_file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", server.key()))?;
    // taskset execs the server, so the PID is the server's.
    let watch = guard::watch_child(child.id(), Duration::from_secs(3600));
    Ok(Running {
        child,
        _watch: watch,
    })
}

fn run_server(
    opts: &Options,
    tools: &Tools,
    scratch: &Scratch,
    server: Server,
    hosts: &Path,
    queries: &Path,
) -> ServerReport {
    let mut report = ServerReport {
        key: server.key(),
        ..ServerReport::default()
    };
    if let Err(e) = measure(opts, tools, scratch, server, hosts, queries, &mut report) {
        report.error = Some(e);
    }
    report
}

fn measure(
    opts: &Options,
    tools: &Tools,
    scratch: &Scratch,
    server: Server,
    hosts: &Path,
    queries: &Path,
    report: &mut ServerReport,
) -> Result<(), String> {
    let port = free_port()?;
    let log = scratch.root().join(format!("{}.log", server.key()));
    eprintln!(
        "netd-bench: {} on 127.0.0.1:{port} (CPU {SERVER_CPU})",
        server.key()
    );
    let mut running = spawn(tools, server, port, hosts, &log)?;
    let pid = running.child.id();
    wait_ready(&mut running.child, port)
        .map_err(|e| format!("{}: {e}; log: {}", server.key(), log_tail(&log)))?;
    std::thread::sleep(Duration::from_millis(300));
    report.rss_idle_kib = rss(pid).0;
    let cpu_before = crate::procfs::cpu_time(&pid.to_string());
    eprintln!(
        "netd-bench: dnsperf against {} for {} s (CPU {LOAD_CPU})",
        server.key(),
        opts.duration.as_secs()
    );
    let mut perf = Command::new(&tools.taskset);
    perf.args(["-c", LOAD_CPU])
        .arg(&tools.dnsperf)
        .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(queries)
        .args([
            "-l",
            &opts.duration.as_secs().to_string(),
            "-c",
            "1",
            "-q",
            "100",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = perf.spawn().map_err(|e| format!("starting dnsperf: {e}"))?;
    let _watch = guard::watch_child(child.id(), opts.duration + Duration::from_secs(60));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("dnsperf: {e}"))?;
    let cpu_after = crate::procfs::cpu_time(&pid.to_string());
    let (after, peak) = rss(pid);
    report.rss_after_kib = after;
    report.rss_peak_kib = peak;
    report.cpu_secs = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
    if let Ok(Some(status)) = running.child.try_wait() {
        return Err(format!(
            "{} exited during the load ({status}); log: {}",
            server.key(),
            log_tail(&log)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "dnsperf failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    report.perf = Some(parse_dnsperf(&stdout)?);
    report.latency = Some(latency_run(opts, tools, port, queries)?);
    drop(running);
    Ok(())
}

/// dnsperf at a fixed rate with per-query output: the latency percentiles a client sees when
/// the server is not saturated.
fn latency_run(
    opts: &Options,
    tools: &Tools,
    port: u16,
    queries: &Path,
) -> Result<Latency, String> {
    eprintln!(
        "netd-bench: latency run at {} queries/s for {} s",
        opts.rate,
        opts.rate_duration.as_secs()
    );
    let child = Command::new(&tools.taskset)
        .args(["-c", LOAD_CPU])
        .arg(&tools.dnsperf)
        .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(queries)
        .args(["-l", &opts.rate_duration.as_secs().to_string()])
        .args(["-Q", &opts.rate.to_string(), "-c", "1", "-q", "100", "-v"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting dnsperf: {e}"))?;
    let _watch = guard::watch_child(child.id(), opts.rate_duration + Duration::from_secs(60));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("dnsperf: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "dnsperf (latency run) failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse_verbose(&String::from_utf8_lossy(&out.stdout))
}

/// How a row's values are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rate,
    Ms,
    Count,
    Mb,
    Pct,
}

struct Row {
    name: &'static str,
    kind: Kind,
    netd: Option<f64>,
    dnsmasq: Option<f64>,
}

fn rows(reports: &[ServerReport]) -> Vec<Row> {
    let get = |key: &str, f: &dyn Fn(&ServerReport) -> Option<f64>| {
        reports.iter().find(|r| r.key == key).and_then(f)
    };
    let row = |name, kind, f: &dyn Fn(&ServerReport) -> Option<f64>| Row {
        name,
        kind,
        netd: get("netd", f),
        dnsmasq: get("dnsmasq", f),
    };
    let perf = |f: fn(&Perf) -> f64| move |r: &ServerReport| r.perf.as_ref().map(f);
    let mb = |k: Option<u64>| k.map(|k| k as f64 / 1024.0);
    vec![
        row("queries/s", Kind::Rate, &perf(|p| p.qps)),
        row("avg latency (ms)", Kind::Ms, &perf(|p| p.avg * 1e3)),
        row("max latency (ms)", Kind::Ms, &perf(|p| p.max * 1e3)),
        row("latency stddev (ms)", Kind::Ms, &perf(|p| p.stddev * 1e3)),
        row("queries lost", Kind::Count, &perf(|p| p.lost as f64)),
        row("p50 at fixed rate (ms)", Kind::Ms, &|r: &ServerReport| {
            r.latency.as_ref().map(|l| l.p50 * 1e3)
        }),
        row("p99 at fixed rate (ms)", Kind::Ms, &|r: &ServerReport| {
            r.latency.as_ref().map(|l| l.p99 * 1e3)
        }),
        row("p99.9 at fixed rate (ms)", Kind::Ms, &|r: &ServerReport| {
            r.latency.as_ref().map(|l| l.p999 * 1e3)
        }),
        row("lost at fixed rate", Kind::Count, &|r: &ServerReport| {
            r.latency.as_ref().map(|l| l.lost as f64)
        }),
        row("NXDOMAIN answers (%)", Kind::Pct, &|r: &ServerReport| {
            let p = r.perf.as_ref()?;
            let nx = p
                .rcodes
                .iter()
                .find(|(c, _)| c == "NXDOMAIN")
                .map_or(0, |c| c.1);
            (p.completed > 0).then(|| 100.0 * nx as f64 / p.completed as f64)
        }),
        row(
            "server CPU during load (%)",
            Kind::Pct,
            &|r: &ServerReport| {
                let p = r.perf.as_ref()?;
                let secs = p.sent as f64 / p.qps.max(1.0);
                r.cpu_secs.map(|c| 100.0 * c / secs.max(1e-9))
            },
        ),
        row("RSS idle (MB)", Kind::Mb, &|r: &ServerReport| {
            mb(r.rss_idle_kib)
        }),
        row("RSS after load (MB)", Kind::Mb, &|r: &ServerReport| {
            mb(r.rss_after_kib)
        }),
        row("RSS peak (MB)", Kind::Mb, &|r: &ServerReport| {
            mb(r.rss_peak_kib)
        }),
    ]
}

fn fmt(v: Option<f64>, kind: Kind) -> String {
    match v {
        Some(v) if v.is_finite() => match kind {
            Kind::Rate | Kind::Count => format!("{v:.0}"),
            Kind::Ms => format!("{v:.3}"),
            Kind::Mb | Kind::Pct => format!("{v:.1}"),
        },
        _ => "-".into(),
    }
}

fn table(opts: &Options, rows: &[Row], reports: &[ServerReport], dnsmasq_version: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nnetd-bench dns: netd-dns vs {dnsmasq_version}, {} names + 10% unknown (NXDOMAIN), \
         dnsperf UDP, 100 outstanding, {} s each; percentiles from a {} s run at {} queries/s",
        opts.names,
        opts.duration.as_secs(),
        opts.rate_duration.as_secs(),
        opts.rate
    );
    let _ = writeln!(
        out,
        "servers pinned to CPU {SERVER_CPU}, dnsperf to CPU {LOAD_CPU}; {} CPUs, kernel {}\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "{:<30} {:>12} {:>12} {:>13}",
        "", "netd-dns", "dnsmasq", "netd/dnsmasq"
    );
    for r in rows {
        let ratio = ratio(r.netd, r.dnsmasq);
        let _ = writeln!(
            out,
            "{:<30} {:>12} {:>12} {:>13}",
            r.name,
            fmt(r.netd, r.kind),
            fmt(r.dnsmasq, r.kind),
            ratio
                .filter(|x| x.is_finite())
                .map_or("-".into(), |x| format!("{x:.2}"))
        );
    }
    out.push_str("\nnetd/dnsmasq > 1 is better for queries/s, < 1 for latency and memory.\n");
    for r in reports {
        if let Some(e) = &r.error {
            let _ = writeln!(out, "{}: {e}", r.key);
        }
    }
    out
}

fn json_doc(opts: &Options, rows: &[Row], reports: &[ServerReport]) -> Value {
    let mut summary = Map::new();
    for r in rows {
        summary.insert(
            r.name.to_string(),
            json!({
                "netd": r.netd.map(round3),
                "dnsmasq": r.dnsmasq.map(round3),
                "ratio": ratio(r.netd, r.dnsmasq).map(round3),
            }),
        );
    }
    let servers: Map<String, Value> = reports
        .iter()
        .map(|r| {
            let perf = r.perf.as_ref().map(|p| {
                json!({
                    "sent": p.sent, "completed": p.completed, "lost": p.lost,
                    "qps": p.qps, "avg_s": p.avg, "min_s": p.min, "max_s": p.max,
                    "stddev_s": p.stddev,
                    "rcodes": p.rcodes.iter().map(|(c, n)| (c.clone(), json!(n))).collect::<Map<_, _>>(),
                })
            });
            let latency = r.latency.as_ref().map(|l| {
                json!({
                    "answered": l.answered, "lost": l.lost, "p50_s": l.p50,
                    "p99_s": l.p99, "p999_s": l.p999, "max_s": l.max,
                })
            });
            (
                r.key.to_string(),
                json!({
                    "dnsperf": perf,
                    "latency": latency,
                    "rss_idle_kib": r.rss_idle_kib,
                    "rss_after_kib": r.rss_after_kib,
                    "rss_peak_kib": r.rss_peak_kib,
                    "cpu_secs": r.cpu_secs,
                    "error": r.error,
                }),
            )
        })
        .collect();
    json!({
        "benchmark": "dns",
        "names": opts.names,
        "duration_s": opts.duration.as_secs(),
        "rate_qps": opts.rate,
        "rate_duration_s": opts.rate_duration.as_secs(),
        "server_cpu": SERVER_CPU,
        "load_cpu": LOAD_CPU,
        "summary": summary,
        "servers": servers,
    })
}

/// Runs the `dns` benchmark; `Ok(false)` when a server failed (the table shows the rest).
pub fn run(opts: &Options) -> Result<bool, String> {
    let tools = find_tools(opts)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return Err("needs 2 CPUs: servers run on CPU 0, dnsperf on CPU 1".into());
    }
    let dnsmasq_version = tools
        .dnsmasq
        .as_ref()
        .and_then(|d| Command::new(d).arg("--version").output().ok())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| {
                    l.split(" Copyright")
                        .next()
                        .unwrap_or(l)
                        .replace(" version", "")
                })
                .map(|l| l.trim().to_lowercase())
        })
        .unwrap_or_else(|| "dnsmasq".into());
    let scratch = Scratch::create().map_err(|e| format!("scratch directory: {e}"))?;
    eprintln!("netd-bench: scratch directory {}", scratch.root().display());
    let hosts = scratch.root().join("hosts");
    let queries = scratch.root().join("queries");
    std::fs::write(&hosts, hosts_file(opts.names)).map_err(|e| format!("hosts file: {e}"))?;
    std::fs::write(&queries, query_file(opts.names)).map_err(|e| format!("query file: {e}"))?;
    let mut reports = Vec::new();
    for &server in &opts.servers {
        if guard::interrupted() {
            break;
        }
        reports.push(run_server(opts, &tools, &scratch, server, &hosts, &queries));
    }
    drop(scratch);
    if guard::interrupted() {
        return Err("interrupted; everything was removed".into());
    }
    let rows = rows(&reports);
    print!("{}", table(opts, &rows, &reports, &dnsmasq_version));
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&json_doc(opts, &rows, &reports))
            .map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("netd-bench: results written to {}", path.display());
    }
    Ok(reports.iter().all(|r| r.error.is_none()))
}

/// Reads a hosts file (`<ip> <name>...` per line, `#` comments) into container records.
pub fn read_hosts(path: &Path) -> Result<Vec<netd_dns::ContainerRecord>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut records = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(ip) = words.next() else { continue };
        let ip = ip
            .parse()
            .map_err(|e| format!("{}: {ip:?}: {e}", path.display()))?;
        records.push(netd_dns::ContainerRecord {
            names: words.map(String::from).collect(),
            addresses: vec![ip],
        });
    }
    Ok(records)
}

/// `netd-bench dns-server --port P --hosts FILE`: netd-dns on 127.0.0.1:P (UDP and TCP), no
/// upstreams, on a current-thread tokio runtime, until killed.
pub fn serve(args: impl IntoIterator<Item = String>) -> Result<(), String> {
    let mut port = None;
    let mut hosts = None;
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--port" => port = it.next().and_then(|p| p.parse::<u16>().ok()),
            "--hosts" => hosts = it.next().map(PathBuf::from),
            other => return Err(format!("dns-server: unknown option {other:?}")),
        }
    }
    let (Some(port), Some(hosts)) = (port, hosts) else {
        return Err("usage: netd-bench dns-server --port PORT --hosts FILE".into());
    };
    let mut builder = netd_dns::SnapshotBuilder::new();
    for record in read_hosts(&hosts)? {
        builder.container(&record).map_err(|e| e.to_string())?;
    }
    let snapshot = netd_dns::SnapshotHandle::new(builder.build());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async move {
        let server = netd_dns::DnsServer::bind(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            None,
            snapshot,
            Vec::new(),
            netd_dns::ServerOptions::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let _ = writeln!(
            std::io::stderr(),
            "dns-server: listening on 127.0.0.1:{port}"
        );
        server
            .serve(std::future::pending())
            .await
            .map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_options() {
        assert_eq!(
            hosts_file(2),
            "10.88.1.1 ctr-0000.netd.local\n10.88.1.2 ctr-0001.netd.local\n"
        );
        assert_eq!(address(250), Ipv4Addr::new(10, 88, 2, 1));
        let q = query_file(1000);
        assert_eq!(q.lines().count(), 1100);
        assert_eq!(q.lines().filter(|l| l.starts_with("missing-")).count(), 100);
        let o = Options::parse(["--quick".to_string()]).unwrap();
        assert_eq!(o.duration, Duration::from_secs(2));
        let o =
            Options::parse(["--duration", "5", "--quick", "--tools", "dnsmasq"].map(String::from))
                .unwrap();
        assert_eq!(
            (o.duration, o.servers),
            (Duration::from_secs(5), vec![Server::Dnsmasq])
        );
        assert!(Options::parse(["--bogus".to_string()]).is_err());
        assert!(Options::parse(["--duration".to_string(), "0".to_string()]).is_err());
        assert_eq!(query_packet(1, "a.b").len(), 12 + 5 + 4);
    }

    #[test]
    fn parses_dnsperf() {
        let out = "
Statistics:

  Queries sent:         1234567
  Queries completed:    1234500 (99.99%)
  Queries lost:         67 (0.01%)

  Response codes:       NOERROR 1122272 (90.91%), NXDOMAIN 112228 (9.09%)
  Average packet size:  request 37, reply 53
  Run time (s):         10.000100
  Queries per second:   123448.765432

  Average Latency (s):  0.000802 (min 0.000011, max 0.012345)
  Latency StdDev (s):   0.000123
";
        let p = parse_dnsperf(out).unwrap();
        assert_eq!((p.sent, p.completed, p.lost), (1_234_567, 1_234_500, 67));
        assert!((p.qps - 123_448.765_432).abs() < 1e-6);
        assert!((p.avg - 0.000_802).abs() < 1e-12);
        assert!((p.min - 0.000_011).abs() < 1e-12);
        assert!((p.max - 0.012_345).abs() < 1e-12);
        assert_eq!(p.rcodes[1], ("NXDOMAIN".to_string(), 112_228));
        assert!(parse_dnsperf("nothing").is_err());
    }

    #[test]
    fn parses_verbose_latencies() {
        let mut out = String::from("[Status] Sending queries\n");
        for i in 1..=1000 {
            out.push_str(&format!("> NOERROR n{i}.netd.local A 0.{i:06}\n"));
        }
        let l = parse_verbose(&out).unwrap();
        assert_eq!(l.answered, 1000);
        assert!((l.p50 - 0.000500).abs() < 2e-6, "{l:?}");
        assert!((l.p99 - 0.000990).abs() < 2e-6, "{l:?}");
        assert_eq!(l.max, 0.001);
        assert!(parse_verbose("nothing").is_err());
    }
}
