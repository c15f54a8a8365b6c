//! One tool's run from start to finish: namespaces, the attachment scenario and the datapath
//! measurements on a driver thread inside the tool's host namespace, then teardown.
//!
//! Each tool gets a host namespace of its own (`<tool>-host`, with `lo` up) in which its
//! plugins run and its bridge, veth host ends and NAT state live; deleting that namespace and
//! the container namespaces removes everything the plugins made.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::attach::{self, AttachReport};
use crate::cli::{Options, Tool};
use crate::cni::{self, ConfList, Container, CONTAINER_PORT};
use crate::datapath::{self, Load, LoadResult, Mode, Server};
use crate::netns::{self, NetNs};
use crate::scratch::Scratch;
use crate::stats::round3;
use crate::tools;

/// First published host port; container `i` publishes `HOST_PORT_BASE + i`.
const HOST_PORT_BASE: u16 = 20000;
/// Idle CPU fraction that counts as a quiet machine.
const QUIET: f64 = 0.75;
/// Warm-up before each measured datapath run.
const WARMUP: Duration = Duration::from_millis(300);

/// Everything measured for one tool.
#[derive(Debug, Clone)]
pub struct ToolReport {
    /// Which tool.
    pub tool: Tool,
    /// Human name for the table.
    pub label: String,
    /// Seconds spent creating namespaces (not part of any measurement).
    pub netns_secs: f64,
    /// Fraction of CPU time idle just before the run (low: the machine was busy).
    pub idle_before: f64,
    /// Wall time of the whole tool run.
    pub wall_secs: f64,
    /// Attachment scenario.
    pub attach: AttachReport,
    /// Datapath measurements (when run and the scenario completed).
    pub datapath: Option<DatapathReport>,
    /// Setup failure that prevented the scenario.
    pub error: Option<String>,
}

impl ToolReport {
    /// JSON form.
    pub fn to_json(&self) -> Value {
        json!({
            "label": self.label,
            "netns_setup_secs": round3(self.netns_secs),
            "cpu_idle_before": round3(self.idle_before),
            "wall_secs": round3(self.wall_secs),
            "attach": self.attach.to_json(),
            "datapath": self.datapath.as_ref().map(DatapathReport::to_json),
            "error": self.error,
        })
    }
}

/// Request rates through a published port and directly, with the network at its largest size.
#[derive(Debug, Clone, Default)]
pub struct DatapathReport {
    /// Port mappings present during the runs.
    pub mappings: usize,
    /// rr straight to the newest container's address.
    pub rr_direct: Option<LoadResult>,
    /// rr to gateway:hostPort of the newest container (DNAT).
    pub rr_dnat: Option<LoadResult>,
    /// crr straight to the newest container.
    pub crr_direct: Option<LoadResult>,
    /// crr through the newest container's mapping.
    pub crr_dnat: Option<LoadResult>,
    /// crr through the oldest container's mapping (the other end of a rule list).
    pub crr_dnat_first: Option<LoadResult>,
    /// Paths that did not work.
    pub errors: Vec<String>,
}

impl DatapathReport {
    /// JSON form.
    pub fn to_json(&self) -> Value {
        let j = |r: &Option<LoadResult>| r.as_ref().map(LoadResult::to_json);
        json!({
            "mappings": self.mappings,
            "rr_direct": j(&self.rr_direct),
            "rr_hostport": j(&self.rr_dnat),
            "crr_direct": j(&self.crr_direct),
            "crr_hostport_newest": j(&self.crr_dnat),
            "crr_hostport_oldest": j(&self.crr_dnat_first),
            "errors": self.errors,
        })
    }
}

/// Runs one tool's benchmark and removes everything it created.
pub fn run(opts: &Options, tool: Tool, scratch: &Scratch, netd: Option<&Path>) -> ToolReport {
    let started = Instant::now();
    let key = tool.key();
    let mut report = ToolReport {
        tool,
        label: label(tool).into(),
        netns_secs: 0.0,
        idle_before: 1.0,
        wall_secs: 0.0,
        attach: AttachReport::default(),
        datapath: None,
        error: None,
    };
    let progress = |msg: &str| {
        eprintln!("[{key} {:6.1}s] {msg}", started.elapsed().as_secs_f64());
    };
    report.idle_before = settle(&progress);
    if let Err(e) = run_inner(opts, tool, scratch, netd, &mut report, &progress) {
        progress(&format!("failed: {e}"));
        report.error = Some(e);
    }
    progress("removing namespaces and state");
    scratch.remove_tool(key);
    report.wall_secs = started.elapsed().as_secs_f64();
    report
}

fn run_inner(
    opts: &Options,
    tool: Tool,
    scratch: &Scratch,
    netd: Option<&Path>,
    report: &mut ToolReport,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), String> {
    let key = tool.key();
    let state = scratch
        .state_dir(key)
        .map_err(|e| format!("state dir: {e}"))?;
    let list = conflist(opts, tool, netd, &state)?;
    for p in &list.plugins {
        cni::version(&p.binary, &list.cni_version).map_err(|e| e.to_string())?;
    }

    let count = opts.containers_per_tool();
    let containers: Vec<Container> = (0..count)
        .map(|i| Container {
            id: format!("nb-{key}-{i:05}"),
            netns: scratch.ns_path(&format!("{key}-c{i:05}")),
            host_port: HOST_PORT_BASE + i as u16,
        })
        .collect();
    let host_path = scratch.ns_path(&format!("{key}-host"));
    let mut paths: Vec<PathBuf> = vec![host_path.clone()];
    paths.extend(containers.iter().map(|c| c.netns.clone()));
    progress(&format!("creating {} network namespaces", paths.len()));
    let t = Instant::now();
    netns::create_many(&paths, 8, opts.ipv6).map_err(|e| e.to_string())?;
    report.netns_secs = t.elapsed().as_secs_f64();
    progress(&format!("namespaces ready in {:.1} s", report.netns_secs));
    let host = NetNs::open(&host_path).map_err(|e| format!("host netns: {e}"))?;

    // The driver thread lives in the host namespace: the plugins it spawns inherit it.
    let (attach, datapath) = std::thread::scope(|s| {
        s.spawn(|| -> Result<_, String> {
            host.enter()
                .map_err(|e| format!("entering host netns: {e}"))?;
            netns::set_loopback_up().map_err(|e| format!("lo up in host netns: {e}"))?;
            let attach = attach::run(tool, &list, &containers, &opts.sizes, opts.window, progress);
            let datapath = (opts.datapath && attach.error.is_none() && !attach.attached.is_empty())
                .then(|| {
                    progress(&format!(
                        "datapath with {} mappings ({} connections, {:.1} s per run)",
                        attach.attached.len(),
                        opts.conns,
                        opts.duration.as_secs_f64()
                    ));
                    measure_datapath(&host, &attach.attached, opts)
                });
            Ok((attach, datapath))
        })
        .join()
        .map_err(|_| "driver thread panicked".to_string())?
    })?;
    if let Some(e) = &attach.error {
        progress(&format!("scenario stopped: {e}"));
    }
    report.attach = attach;
    report.datapath = datapath;
    Ok(())
}

fn label(tool: Tool) -> &'static str {
    match tool {
        Tool::Netd => "netd-cni",
        Tool::Reference => "bridge+host-local+portmap",
    }
}

fn conflist(
    opts: &Options,
    tool: Tool,
    netd: Option<&Path>,
    state: &Path,
) -> Result<ConfList, String> {
    match tool {
        Tool::Netd => {
            let bin = netd.ok_or("netd-cni binary not found")?;
            Ok(tools::netd_conflist(bin, state))
        }
        Tool::Reference => {
            for p in ["bridge", "host-local", "portmap"] {
                if !opts.ref_dir.join(p).is_file() {
                    return Err(format!(
                        "{}/{p} missing: install containernetworking-plugins or pass --ref-dir",
                        opts.ref_dir.display()
                    ));
                }
            }
            Ok(tools::reference_conflist(&opts.ref_dir, state))
        }
    }
}

fn measure_datapath(
    host: &NetNs,
    attached: &[(Container, Value)],
    opts: &Options,
) -> DatapathReport {
    let mut report = DatapathReport {
        mappings: attached.len(),
        ..DatapathReport::default()
    };
    let (Some(first), Some(last)) = (attached.first(), attached.last()) else {
        return report;
    };
    let addrs = |(c, result): &(Container, Value)| {
        cni::ipv4_and_gateway(result).map(|(ip, gw)| {
            (
                SocketAddr::V4(SocketAddrV4::new(ip, CONTAINER_PORT)),
                SocketAddr::V4(SocketAddrV4::new(gw, c.host_port)),
            )
        })
    };
    let (Some((direct, dnat)), Some((_, dnat_first))) = (addrs(last), addrs(first)) else {
        report
            .errors
            .push("ADD result has no IPv4 address with a gateway".into());
        return report;
    };
    let workers = opts.conns + 2;
    let servers: Result<Vec<Server>, String> = [&last.0, &first.0]
        .iter()
        .map(|c| {
            NetNs::open(&c.netns)
                .and_then(|ns| Server::start(&ns, CONTAINER_PORT, workers))
                .map_err(|e| format!("server in {}: {e}", c.id))
        })
        .collect();
    let _servers = match servers {
        Ok(s) => s,
        Err(e) => {
            report.errors.push(e);
            return report;
        }
    };
    let load = |mode| Load {
        mode,
        conns: opts.conns,
        warmup: WARMUP,
        duration: opts.duration,
    };
    let measure = |what: &str, addr: SocketAddr, mode: Mode| -> Result<LoadResult, String> {
        if crate::guard::interrupted() {
            return Err("interrupted".into());
        }
        datapath::probe(host, addr).map_err(|e| format!("{what} ({addr}): {e}"))?;
        let r = datapath::run(host, addr, load(mode));
        eprintln!(
            "        {what:<28} {addr:<22} {:>9.0}/s  p99 {:>7.0} µs  errors {}",
            r.rate(),
            r.latency_us.map_or(f64::NAN, |s| s.p99),
            r.errors
        );
        Ok(r)
    };
    // The paths take turns, round after round, so a slow spell of the machine hits them all
    // alike; each path reports its median run.
    let paths = [
        ("rr direct", direct, Mode::Rr),
        ("rr via hostPort", dnat, Mode::Rr),
        ("crr direct", direct, Mode::Crr),
        ("crr via hostPort (newest)", dnat, Mode::Crr),
        ("crr via hostPort (oldest)", dnat_first, Mode::Crr),
    ];
    let mut runs: Vec<Vec<LoadResult>> = vec![Vec::new(); paths.len()];
    let mut failed = vec![false; paths.len()];
    for _ in 0..opts.rounds.max(1) {
        for (i, (what, addr, mode)) in paths.iter().enumerate() {
            if failed[i] {
                continue;
            }
            match measure(what, *addr, *mode) {
                Ok(r) => runs[i].push(r),
                Err(e) => {
                    failed[i] = true;
                    if e != "interrupted" {
                        report.errors.push(e);
                    }
                }
            }
        }
    }
    let mut medians = runs.into_iter().map(median_run);
    report.rr_direct = medians.next().flatten();
    report.rr_dnat = medians.next().flatten();
    report.crr_direct = medians.next().flatten();
    report.crr_dnat = medians.next().flatten();
    report.crr_dnat_first = medians.next().flatten();
    report
}

/// The run with the median rate (the lower middle one of an even count).
fn median_run(mut runs: Vec<LoadResult>) -> Option<LoadResult> {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let mid = runs.len().saturating_sub(1) / 2;
    runs.into_iter().nth(mid)
}

/// Lets the machine settle before a tool starts: waits for earlier namespace teardown to end,
/// then for the CPUs to be mostly idle. Returns the idle fraction seen last.
fn settle(progress: &dyn Fn(&str)) -> f64 {
    if netns_cleanup_running() {
        progress("waiting for the kernel to finish destroying earlier namespaces");
        let t = Instant::now();
        if !wait_netns_cleanup(Duration::from_secs(300)) {
            progress("namespace destruction still running after 300 s; going on");
        }
        progress(&format!(
            "kernel done after {:.1} s",
            t.elapsed().as_secs_f64()
        ));
    }
    let idle = wait_quiet();
    if idle < QUIET {
        progress(&format!(
            "CPUs only {:.0}% idle before starting: something else is running, figures will \
             be noisier",
            idle * 100.0
        ));
    }
    idle
}

/// Waits until no kernel worker has been running the `netns` workqueue for a second.
///
/// Destroying a namespace is asynchronous: after the last reference goes, `cleanup_net` runs
/// on the `netns` workqueue, and for a thousand namespaces with veths it keeps a CPU busy for
/// tens of seconds. Starting the next tool before it ends would charge that work to it.
/// Returns false on timeout or interrupt.
pub fn wait_netns_cleanup(max: Duration) -> bool {
    let deadline = Instant::now() + max;
    let mut quiet = 0;
    while Instant::now() < deadline && !crate::guard::interrupted() {
        if netns_cleanup_running() {
            quiet = 0;
        } else {
            quiet += 1;
            if quiet >= 5 {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Whether a kworker is executing namespace-teardown work right now (the `netns` workqueue, or
/// IPv6 address cleanup of the devices going away): the kernel names a busy worker
/// `kworker/<id>+<workqueue>`.
fn netns_cleanup_running() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .any(|comm| {
            comm.starts_with("kworker/")
                && (comm.trim_end().ends_with("+netns")
                    || comm.trim_end().ends_with("+ipv6_addrconf"))
        })
}

/// Waits (up to 15 s) until the CPUs are mostly idle, so kernel work left over from the
/// previous tool's teardown (namespace destruction runs asynchronously in kernel workers) does
/// not land in the next tool's measurements. Returns the last idle fraction seen; a low value
/// means something else is using the machine and figures will be noisier.
pub fn wait_quiet() -> f64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut idle = 1.0;
    while Instant::now() < deadline && !crate::guard::interrupted() {
        let Some(a) = cpu_times() else { break };
        std::thread::sleep(Duration::from_millis(300));
        let Some(b) = cpu_times() else { break };
        let total = b.0.saturating_sub(a.0);
        idle = if total == 0 {
            1.0
        } else {
            b.1.saturating_sub(a.1) as f64 / total as f64
        };
        if idle >= QUIET {
            break;
        }
    }
    idle
}

/// (total, idle+iowait) jiffies from the first line of /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((fields.iter().sum(), idle))
}
