//! What the benchmarks read about processes and files: memory and CPU time from `/proc`,
//! programs on `PATH` and binaries of this workspace, the tail of a log. One copy for every
//! subcommand.

use std::path::{Path, PathBuf};

/// A field of `/proc/<pid>/status`, in KiB (`VmRSS:`, `VmHWM:`, `RssAnon:`).
fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `VmRSS` and `VmHWM` (peak) of `pid`, KiB.
pub fn rss(pid: u32) -> (Option<u64>, Option<u64>) {
    let pid = pid.to_string();
    (status_kib(&pid, "VmRSS:"), status_kib(&pid, "VmHWM:"))
}

/// `RssAnon` of `pid`: RSS less file-backed pages (the binary's and libraries' code), KiB.
pub fn rss_anon(pid: u32) -> Option<u64> {
    status_kib(&pid.to_string(), "RssAnon:")
}

/// User + system CPU seconds of process `pid` (`"self"` for this one).
pub fn cpu_time(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks / hz as f64)
}

/// `program` on `PATH`, or in the sbin/bin directories root's `PATH` may lack.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A binary of this workspace: `explicit` (given with `flag`), else next to this binary (cargo
/// puts them all in `target/<profile>/`), else in `target/release/` of the current directory.
pub fn find_binary(name: &str, explicit: Option<&Path>, flag: &str) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return p
            .canonicalize()
            .map_err(|e| format!("{flag} {}: {e}", p.display()));
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(name));
    }
    candidates.push(Path::new("target/release").join(name));
    candidates
        .iter()
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
        .ok_or_else(|| {
            format!(
                "{name} not found next to netd-bench nor in target/release: run \
                 `cargo build --release -p {name}` or pass {flag} PATH"
            )
        })
}

/// The last five lines of a log file, joined, for error messages.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let (rss, peak) = rss(std::process::id());
        assert!(rss.unwrap() > 0 && peak.unwrap() >= rss.unwrap());
        assert!(rss_anon(std::process::id()).unwrap() > 0);
        assert!(cpu_time("self").unwrap() >= 0.0);
        assert!(which("sh").is_some());
        assert!(which("no-such-program-netd").is_none());
    }
}
