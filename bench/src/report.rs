//! The side-by-side table and the JSON document.
//!
//! Both come from one list of [`Row`]s, so the table and the JSON summary always agree; the
//! JSON additionally carries every raw figure (each fill ADD latency, NAT counts, latency
//! summaries).

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::cli::{Options, Tool};
use crate::datapath::LoadResult;
use crate::runner::{DatapathReport, ToolReport};
use crate::stats::{ratio, round3, Summary};

/// How a row's values are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// A count.
    Count,
    /// Per second.
    Rate,
    /// A dimensionless ratio.
    Ratio,
}

/// One comparison line.
#[derive(Debug, Clone)]
pub struct Row {
    /// What is measured, with its unit.
    pub name: String,
    /// Formatting.
    pub kind: Kind,
    /// netd-cni's figure.
    pub netd: Option<f64>,
    /// The reference chain's figure.
    pub reference: Option<f64>,
}

impl Row {
    /// netd / reference.
    pub fn ratio(&self) -> Option<f64> {
        ratio(self.netd, self.reference)
    }
}

/// Builds the comparison rows from whichever tools ran.
pub fn rows(reports: &[ToolReport], opts: &Options) -> Vec<Row> {
    let get = |tool: Tool| reports.iter().find(|r| r.tool == tool);
    let (netd, reference) = (get(Tool::Netd), get(Tool::Reference));
    let mut rows = Vec::new();
    let mut row = |name: String, kind: Kind, f: &dyn Fn(&ToolReport) -> Option<f64>| {
        rows.push(Row {
            name,
            kind,
            netd: netd.and_then(f),
            reference: reference.and_then(f),
        });
    };
    for (i, &size) in opts.sizes.iter().enumerate() {
        let at = move |r: &ToolReport, add: bool| -> Option<Summary> {
            let s = r.attach.sizes.get(i)?;
            if add {
                s.add
            } else {
                s.del
            }
        };
        row(format!("ADD p50 @{size} (ms)"), Kind::Ms, &|r| {
            at(r, true).map(|s| s.p50)
        });
        row(format!("ADD p99 @{size} (ms)"), Kind::Ms, &|r| {
            at(r, true).map(|s| s.p99)
        });
        row(format!("DEL p50 @{size} (ms)"), Kind::Ms, &|r| {
            at(r, false).map(|s| s.p50)
        });
        row(format!("DEL p99 @{size} (ms)"), Kind::Ms, &|r| {
            at(r, false).map(|s| s.p99)
        });
    }
    let n = opts.max_size();
    let full = |r: &ToolReport| r.attach.fill_add_ms.len() == n;
    row("first ADD (ms)".into(), Kind::Ms, &|r| r.attach.first_add());
    row(format!("{} ADD (ms)", ordinal(n)), Kind::Ms, &|r| {
        r.attach.last_add().filter(|_| full(r))
    });
    row(
        format!("{} ADD / first ADD", ordinal(n)),
        Kind::Ratio,
        &|r| r.attach.growth().filter(|_| full(r)),
    );
    row(
        "p50 last 10 / first 10 fill ADDs".into(),
        Kind::Ratio,
        &|r| r.attach.growth_p50_10().filter(|_| full(r)),
    );
    let nat_at_max = |r: &ToolReport| {
        r.attach
            .sizes
            .iter()
            .find(|s| s.attached == n)
            .and_then(|s| s.nat)
    };
    row(format!("NAT rules @{n}"), Kind::Count, &|r| {
        nat_at_max(r).map(|c| c.rules() as f64)
    });
    row(format!("nft set/map elements @{n}"), Kind::Count, &|r| {
        nat_at_max(r).map(|c| c.nft_elements as f64)
    });
    let dp = |r: &ToolReport, f: &dyn Fn(&DatapathReport) -> &Option<LoadResult>| {
        r.datapath
            .as_ref()
            .and_then(|d| f(d).as_ref())
            .map(LoadResult::rate)
    };
    let p99 = |r: &ToolReport, f: &dyn Fn(&DatapathReport) -> &Option<LoadResult>| {
        r.datapath
            .as_ref()
            .and_then(|d| f(d).as_ref())
            .and_then(|l| l.latency_us)
            .map(|s| s.p99)
    };
    row("rr direct (req/s)".into(), Kind::Rate, &|r| {
        dp(r, &|d| &d.rr_direct)
    });
    row("rr via hostPort (req/s)".into(), Kind::Rate, &|r| {
        dp(r, &|d| &d.rr_dnat)
    });
    row("rr hostPort / direct".into(), Kind::Ratio, &|r| {
        ratio(dp(r, &|d| &d.rr_dnat), dp(r, &|d| &d.rr_direct))
    });
    row("rr via hostPort p99 (µs)".into(), Kind::Us, &|r| {
        p99(r, &|d| &d.rr_dnat)
    });
    row("crr direct (conn/s)".into(), Kind::Rate, &|r| {
        dp(r, &|d| &d.crr_direct)
    });
    row(
        "crr via hostPort, newest (conn/s)".into(),
        Kind::Rate,
        &|r| dp(r, &|d| &d.crr_dnat),
    );
    row(
        "crr via hostPort, oldest (conn/s)".into(),
        Kind::Rate,
        &|r| dp(r, &|d| &d.crr_dnat_first),
    );
    row("crr hostPort (newest) / direct".into(), Kind::Ratio, &|r| {
        ratio(dp(r, &|d| &d.crr_dnat), dp(r, &|d| &d.crr_direct))
    });
    row("crr via hostPort p99 (µs)".into(), Kind::Us, &|r| {
        p99(r, &|d| &d.crr_dnat)
    });
    rows
}

/// The table printed on stdout.
pub fn table(rows: &[Row], reports: &[ToolReport], opts: &Options) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nnetd-bench cni: netd-cni vs bridge+host-local+portmap ({})",
        opts.ref_dir.display()
    );
    let _ = writeln!(
        out,
        "{} CPUs, kernel {}; window {} ADDs+DELs per size; datapath {} conns x {:.1} s, \
         median of {} interleaved runs; IPv6 in namespaces {}\n",
        cpus(),
        kernel(),
        opts.window,
        opts.conns,
        opts.duration.as_secs_f64(),
        opts.rounds,
        if opts.ipv6 {
            "on (kernel default)"
        } else {
            "off"
        }
    );
    let _ = writeln!(
        out,
        "{:<36} {:>12} {:>12} {:>10}",
        "", "netd-cni", "reference", "netd/ref"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<36} {:>12} {:>12} {:>10}",
            r.name,
            fmt(r.netd, r.kind),
            fmt(r.reference, r.kind),
            fmt(r.ratio(), Kind::Ratio)
        );
    }
    out.push_str("\nnetd/ref < 1 is better for latencies and rule counts, > 1 for rates.\n");
    for r in reports {
        let mut notes: Vec<String> = r.error.iter().cloned().collect();
        notes.extend(
            r.attach
                .error
                .iter()
                .map(|e| format!("scenario stopped: {e}")),
        );
        notes.extend(r.attach.warnings.iter().cloned());
        if let Some(d) = &r.datapath {
            notes.extend(d.errors.iter().map(|e| format!("datapath: {e}")));
            for (what, l) in [
                ("rr direct", &d.rr_direct),
                ("rr via hostPort", &d.rr_dnat),
                ("crr direct", &d.crr_direct),
                ("crr via hostPort (newest)", &d.crr_dnat),
                ("crr via hostPort (oldest)", &d.crr_dnat_first),
            ] {
                if let Some(l) = l.as_ref().filter(|l| l.errors > 0) {
                    notes.push(format!(
                        "{what}: {} errors, first: {}",
                        l.errors,
                        l.first_error.as_deref().unwrap_or("?")
                    ));
                }
            }
        }
        for n in notes {
            let _ = writeln!(out, "{}: {n}", r.label);
        }
        let _ = writeln!(
            out,
            "{}: {:.0} s in total ({:.1} s creating namespaces, not measured); CPUs {:.0}% idle \
             before it started",
            r.label,
            r.wall_secs,
            r.netns_secs,
            r.idle_before * 100.0
        );
    }
    out
}

/// The JSON document written by `--json`.
pub fn json(rows: &[Row], reports: &[ToolReport], opts: &Options) -> Value {
    let summary: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "netd": r.netd.map(round3),
                "reference": r.reference.map(round3),
                "netd_over_reference": r.ratio().map(round3),
            })
        })
        .collect();
    let mut tools = Map::new();
    for r in reports {
        tools.insert(r.tool.key().into(), r.to_json());
    }
    json!({
        "benchmark": "cni",
        "machine": {"cpus": cpus(), "kernel": kernel()},
        "options": {
            "sizes": opts.sizes,
            "window": opts.window,
            "quick": opts.quick,
            "conns": opts.conns,
            "duration_secs": opts.duration.as_secs_f64(),
            "ipv6": opts.ipv6,
            "ref_dir": opts.ref_dir,
        },
        "summary": summary,
        "tools": tools,
    })
}

fn fmt(v: Option<f64>, kind: Kind) -> String {
    let Some(v) = v.filter(|v| v.is_finite()) else {
        return "-".into();
    };
    match kind {
        Kind::Ms if v < 10.0 => format!("{v:.2}"),
        Kind::Ms => format!("{v:.1}"),
        Kind::Us | Kind::Count | Kind::Rate => format!("{v:.0}"),
        Kind::Ratio => format!("{v:.2}"),
    }
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_and_formats() {
        assert_eq!(ordinal(1000), "1000th");
        assert_eq!(ordinal(1), "1st");
        assert_eq!(ordinal(112), "112th");
        assert_eq!(ordinal(22), "22nd");
        assert_eq!(fmt(Some(1.234), Kind::Ms), "1.23");
        assert_eq!(fmt(Some(123.45), Kind::Ms), "123.5");
        assert_eq!(fmt(None, Kind::Rate), "-");
        assert_eq!(fmt(Some(f64::NAN), Kind::Ratio), "-");
    }
}
