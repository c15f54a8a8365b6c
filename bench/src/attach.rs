//! The attachment scenario: fill the network up to each size, then measure a window of ADDs
//! and their DELs, and count NAT state.
//!
//! Only plugin invocations are timed (spawn to exit, the whole chain for the reference);
//! namespaces exist before the scenario starts. Every container is a fresh namespace and
//! publishes its own host port.

use std::time::Instant;

use serde_json::{json, Value};

use crate::cli::Tool;
use crate::cni::{ConfList, Container};
use crate::stats::{median, ratio, round3, Summary};
use crate::tools::{count_nat, NatCount};

/// Ports a Linux bridge accepts (`BR_MAX_PORTS` is 1024 and port number 0 is reserved);
/// beyond it, enslaving a veth fails with `EXFULL`.
pub const BRIDGE_MAX_PORTS: usize = 1023;

/// Figures measured at one size.
#[derive(Debug, Clone)]
pub struct SizeReport {
    /// Containers attached when the window started.
    pub attached: usize,
    /// ADDs (and DELs) in the window.
    pub window: usize,
    /// ADD latencies of the window (ms).
    pub add: Option<Summary>,
    /// DEL latencies of the window (ms).
    pub del: Option<Summary>,
    /// NAT state with `attached` containers.
    pub nat: Option<NatCount>,
    /// NAT state after the window's DELs: should equal `nat` (a difference is a leak).
    pub nat_after_del: Option<NatCount>,
}

impl SizeReport {
    /// JSON form.
    pub fn to_json(&self) -> Value {
        json!({
            "attached": self.attached,
            "window": self.window,
            "add_ms": self.add.map(|s| s.to_json()),
            "del_ms": self.del.map(|s| s.to_json()),
            "nat": self.nat.map(|n| n.to_json()),
            "nat_after_window_del": self.nat_after_del.map(|n| n.to_json()),
        })
    }
}

/// Everything the scenario measured, also when it stopped early.
#[derive(Debug, Clone, Default)]
pub struct AttachReport {
    /// Latency of every fill ADD, in order (ms): index k is the ADD that made k+1 attached.
    pub fill_add_ms: Vec<f64>,
    /// One entry per size reached.
    pub sizes: Vec<SizeReport>,
    /// The containers still attached, with their cached ADD results (fill order).
    pub attached: Vec<(Container, Value)>,
    /// Why the scenario stopped early.
    pub error: Option<String>,
    /// Problems that did not stop it (NAT leaks, counting failures).
    pub warnings: Vec<String>,
}

impl AttachReport {
    /// Latency of the very first ADD (creates the bridge and the NAT scaffolding).
    pub fn first_add(&self) -> Option<f64> {
        self.fill_add_ms.first().copied()
    }

    /// Latency of the ADD that brought the network to its largest size.
    pub fn last_add(&self) -> Option<f64> {
        self.fill_add_ms.last().copied()
    }

    /// Growth: last fill ADD / first fill ADD.
    pub fn growth(&self) -> Option<f64> {
        ratio(self.last_add(), self.first_add())
    }

    /// A steadier growth figure: median of the last 10 fill ADDs / median of the first 10.
    pub fn growth_p50_10(&self) -> Option<f64> {
        let n = self.fill_add_ms.len();
        if n < 20 {
            return None;
        }
        ratio(
            median(&self.fill_add_ms[n - 10..]),
            median(&self.fill_add_ms[..10]),
        )
    }

    /// JSON form.
    pub fn to_json(&self) -> Value {
        json!({
            "fill_add_ms": self.fill_add_ms.iter().map(|x| round3(*x)).collect::<Vec<_>>(),
            "first_add_ms": self.first_add().map(round3),
            "last_add_ms": self.last_add().map(round3),
            "last_over_first": self.growth().map(round3),
            "p50_last10_over_first10": self.growth_p50_10().map(round3),
            "sizes": self.sizes.iter().map(SizeReport::to_json).collect::<Vec<_>>(),
            "error": self.error,
            "warnings": self.warnings,
        })
    }
}

/// Runs the scenario on the calling thread, which must be inside the tool's host namespace.
///
/// `containers` must hold at least `max(sizes) + window · sizes.len()` entries; they are used
/// in order, each once.
pub fn run(
    tool: Tool,
    list: &ConfList,
    containers: &[Container],
    sizes: &[usize],
    window: usize,
    progress: &(dyn Fn(&str) + Sync),
) -> AttachReport {
    let mut report = AttachReport::default();
    let mut fresh = containers.iter();
    if let Err(e) = run_sizes(tool, list, &mut fresh, sizes, window, progress, &mut report) {
        report.error = Some(e);
    }
    report
}

fn run_sizes<'a>(
    tool: Tool,
    list: &ConfList,
    fresh: &mut impl Iterator<Item = &'a Container>,
    sizes: &[usize],
    window: usize,
    progress: &(dyn Fn(&str) + Sync),
    report: &mut AttachReport,
) -> Result<(), String> {
    let mut next = || {
        fresh
            .next()
            .cloned()
            .ok_or("not enough container namespaces")
    };
    for &size in sizes {
        let fill_start = Instant::now();
        while report.attached.len() < size {
            interrupted()?;
            let c = next()?;
            let (result, ms) = timed(|| list.add(&c)).map_err(|e| e.to_string())?;
            report.fill_add_ms.push(ms);
            report.attached.push((c, result));
        }
        progress(&format!(
            "{size} attached (fill took {:.1} s)",
            fill_start.elapsed().as_secs_f64()
        ));
        let window = window_at(size, window, &mut report.warnings);
        report.sizes.push(SizeReport {
            attached: size,
            window,
            add: None,
            del: None,
            nat: note(&mut report.warnings, count_nat(tool)),
            nat_after_del: None,
        });

        let mut adds = Vec::with_capacity(window);
        let mut added = Vec::with_capacity(window);
        for _ in 0..window {
            interrupted()?;
            let c = next()?;
            let (result, ms) = timed(|| list.add(&c)).map_err(|e| e.to_string())?;
            adds.push(ms);
            added.push((c, result));
        }
        let mut dels = Vec::with_capacity(window);
        for (c, result) in &added {
            interrupted()?;
            let ((), ms) = timed(|| list.del(c, result)).map_err(|e| e.to_string())?;
            dels.push(ms);
        }
        let nat_after_del = note(&mut report.warnings, count_nat(tool));
        let Some(at) = report.sizes.last_mut() else {
            continue;
        };
        at.add = Summary::of(&adds);
        at.del = Summary::of(&dels);
        at.nat_after_del = nat_after_del;
        if let (Some(a), Some(b)) = (at.nat, at.nat_after_del) {
            if a != b {
                report.warnings.push(format!(
                    "NAT state at {size} differs after the window's ADD+DEL: {a:?} then {b:?} \
                     (DEL leaves or removes too much)"
                ));
            }
        }
        progress(&format!(
            "window of {window} at {size}: ADD p50 {:.1} ms, DEL p50 {:.1} ms",
            at.add.map_or(f64::NAN, |s| s.p50),
            at.del.map_or(f64::NAN, |s| s.p50)
        ));
    }
    Ok(())
}

/// The window that fits on the bridge at `size`: a Linux bridge holds at most
/// [`BRIDGE_MAX_PORTS`] ports, for netd and the reference alike.
fn window_at(size: usize, window: usize, warnings: &mut Vec<String>) -> usize {
    let fits = BRIDGE_MAX_PORTS.saturating_sub(size);
    if fits < window {
        warnings.push(format!(
            "window at {size} cut to {fits}: a Linux bridge holds at most {BRIDGE_MAX_PORTS} ports"
        ));
    }
    window.min(fits)
}

fn timed<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<(T, f64), E> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64() * 1e3))
}

fn interrupted() -> Result<(), String> {
    if crate::guard::interrupted() {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

fn note<T>(warnings: &mut Vec<String>, r: Result<T, String>) -> Option<T> {
    r.map_err(|e| warnings.push(format!("counting NAT state: {e}")))
        .ok()
}
