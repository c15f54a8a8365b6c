//! Sidecar processes: spawning one, adopting one left by an earlier netd, signalling and
//! waiting for either, and the pidfiles that make adoption safe.
//!
//! Sidecars run in their own process group and are not killed when netd dies, so a crashed or
//! upgraded netd leaves the mesh serving; the next netd finds them through their pidfiles
//! (`<state dir>/<container id>_<ifname>.pid`, JSON with the pid and its start time from
//! `/proc/<pid>/stat`, so a recycled pid is never mistaken for a sidecar) and supervises them
//! through a pidfd. This module knows nothing of rules, backoff or the registry.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// What a pidfile records about a running sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidFile {
    /// Process id.
    pub pid: u32,
    /// Its start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// Container id and interface of the attachment it serves.
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
    /// The attachment's namespace path (to clean its rules when the attachment is gone).
    pub netns: String,
}

impl PidFile {
    /// Where the pidfile of attachment `container_id/ifname` lives in `dir`.
    pub fn path(dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
        dir.join(format!(
            "{}_{}.pid",
            file_safe(container_id),
            file_safe(ifname)
        ))
    }

    /// Reads a pidfile; `None` when absent or unreadable.
    pub fn read(path: &Path) -> Option<PidFile> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Writes it atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("pid.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).map_err(io::Error::other)?)?;
        std::fs::rename(&tmp, path)
    }

    /// Whether the recorded process still runs (same pid, same start time).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// Keeps letters, digits, `-` and `.` (dots only when the name does not start with one),
/// percent-encodes the rest: no name can escape the directory or collide through `_`.
fn file_safe(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.') && !s.starts_with('.') {
                char::from(b).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

/// The start time of process `pid` (clock ticks after boot), `None` when it does not exist.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain anything: skip past it.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields 3.. follow; the start time is field 22, i.e. the 20th after the name.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A sidecar process: a child netd spawned, or one adopted from an earlier netd.
pub enum Proc {
    /// Spawned by this netd (reaped by tokio).
    Child(tokio::process::Child),
    /// Left by an earlier netd, watched through its pidfd.
    Adopted {
        /// Process id.
        pid: u32,
        /// Readable once the process has exited.
        fd: AsyncFd<OwnedFd>,
    },
}

impl Proc {
    /// Spawns `bin args...` in its own process group, stdin from /dev/null, output to
    /// netd's.
    pub fn spawn(bin: &Path, args: &[String]) -> io::Result<Proc> {
        let child = tokio::process::Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(false)
            .spawn()?;
        Ok(Proc::Child(child))
    }

    /// Adopts the process a pidfile describes, if it still runs.
    pub fn adopt(rec: &PidFile) -> Option<Proc> {
        let fd = pidfd_open(rec.pid).ok()?;
        // Checked after opening the pidfd: from here on the pid cannot be recycled under us.
        if !rec.alive() {
            return None;
        }
        // SAFETY: an OwnedFd keeps its one descriptor open, unchanged, until it is dropped,
        // which happens only with the AsyncFd that owns it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()?;
        Some(Proc::Adopted { pid: rec.pid, fd })
    }

    /// The process id (`None` for a child already reaped).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Proc::Child(c) => c.id(),
            Proc::Adopted { pid, .. } => Some(*pid),
        }
    }

    /// Sends `sig`. A process that already exited is not an error.
    pub fn signal(&self, sig: libc::c_int) {
        match self {
            Proc::Child(c) => {
                if let Some(pid) = c.id() {
                    // SAFETY: kill(2) on our own child, not yet reaped (tokio reaps only in
                    // wait, which has not returned), so the pid cannot have been recycled.
                    unsafe { libc::kill(pid as libc::pid_t, sig) };
                }
            }
            Proc::Adopted { fd, .. } => {
                // SAFETY: pidfd_send_signal(2) with a pidfd we own; no siginfo, no flags.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.get_ref().as_raw_fd(),
                        sig,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
            }
        }
    }

    /// Waits for the process to exit; describes how it ended.
    pub async fn wait(&mut self) -> String {
        match self {
            Proc::Child(c) => match c.wait().await {
                Ok(st) => describe(st),
                Err(e) => format!("cannot wait: {e}"),
            },
            Proc::Adopted { fd, .. } => match fd.readable().await {
                // Not our child: the exit status belongs to its parent.
                Ok(_) => "exited (adopted; status unknown)".to_string(),
                Err(e) => format!("cannot wait: {e}"),
            },
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `bound`. Returns how it ended.
    pub async fn terminate(&mut self, bound: Duration) -> String {
        self.signal(libc::SIGTERM);
        if let Ok(how) = tokio::time::timeout(bound, self.wait()).await {
            return how;
        }
        self.signal(libc::SIGKILL);
        format!("{} (killed after {bound:?})", self.wait().await)
    }
}

fn describe(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => st.to_string(),
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_names_cannot_escape_the_directory() {
        let p = PidFile::path(Path::new("/d"), "../x/y", "eth0");
        assert_eq!(p, Path::new("/d/%2e%2e%2fx%2fy_eth0.pid"));
        assert_eq!(
            PidFile::path(Path::new("/d"), "abc-1.2", "eth0"),
            Path::new("/d/abc-1.2_eth0.pid")
        );
    }

    #[test]
    fn start_time_identifies_this_process() {
        let me = std::process::id();
        let t = start_time(me).expect("own start time");
        let rec = PidFile {
            pid: me,
            start_time: t,
            container_id: "c".into(),
            ifname: "eth0".into(),
            netns: String::new(),
        };
        assert!(rec.alive());
        assert!(!PidFile {
            start_time: t + 1,
            ..rec
        }
        .alive());
    }
}
