//! Throwaway network namespaces.
//!
//! An [`Ns`] is created with `ip netns add` under a name unique to this process
//! (`netd-t-<pid>-<n>`), has `lo` up, and is deleted with `ip netns del` when dropped — so a
//! panicking test still cleans up. Work inside it happens two ways:
//!
//! - commands ([`Ns::command`], [`Ns::exec`]) are spawned with a `pre_exec` `setns(2)` into
//!   the namespace (network namespace only: the mount namespace stays shared, so namespaces
//!   created by the process, e.g. Podman's, are visible to everyone);
//! - Rust code ([`Ns::run`]) runs on a scoped OS thread that entered the namespace. Sockets
//!   created there stay bound to it and may be used from any thread afterwards.
//!
//! Only `ip netns add/del` run in the root namespace; they touch nothing but the namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace owned by the test; deleted on drop.
#[derive(Debug)]
pub struct Ns {
    name: String,
    file: File,
}

impl Ns {
    /// Creates a namespace with `lo` up. Panics when `ip netns add` fails.
    pub fn new() -> Ns {
        let mut last_err = String::new();
        for _ in 0..20 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("netd-t-{}-{n}", std::process::id());
            let out = Command::new("ip")
                .args(["netns", "add", &name])
                .stdin(Stdio::null())
                .output()
                .expect("cannot run `ip` (install iproute2)");
            if !out.status.success() {
                // A stale namespace of an earlier process with our PID: try the next name.
                last_err = String::from_utf8_lossy(&out.stderr).into_owned();
                continue;
            }
            let file = match File::open(format!("/run/netns/{name}")) {
                Ok(f) => f,
                Err(e) => {
                    del_netns(&name);
                    panic!("cannot open /run/netns/{name}: {e}");
                }
            };
            let ns = Ns { name, file };
            ns.exec(&["ip", "link", "set", "lo", "up"]);
            return ns;
        }
        panic!("ip netns add failed 20 times: {last_err}");
    }

    /// The namespace's name (for `ip netns exec`, `ip link ... netns <name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the path runtimes pass as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// A command that will run inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.file.as_raw_fd();
        // SAFETY: between fork and exec the child only calls setns(2), which is
        // async-signal-safe and touches no memory. `fd` stays open for as long as `self`
        // lives; spawning after dropping the `Ns` would make setns fail (or enter whatever
        // the number now names), which is a test bug, not memory unsafety.
        unsafe {
            cmd.pre_exec(move || enter(fd));
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `args` inside the namespace and returns its output, whatever the exit status.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        let (program, rest) = args.split_first().expect("a command");
        self.command(program)
            .args(rest)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    /// Runs `args` inside the namespace; panics (with stderr) unless it succeeds. Returns
    /// stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = self.try_exec(args);
        assert!(
            out.status.success(),
            "`{}` in {} failed ({}): {}",
            args.join(" "),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a new OS thread inside the namespace and returns its value.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                enter(fd).expect("setns into the test namespace");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// `ip -j <args>` inside the namespace, parsed (`[]` when `ip` prints nothing).
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["ip", "-j"];
        full.extend_from_slice(args);
        let out = self.exec(&full);
        if out.trim().is_empty() {
            return Value::Array(Vec::new());
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j {args:?}: {e}: {out}"))
    }

    /// `ip -j -d link show <name>`, or `None` when there is no such link.
    pub fn link(&self, name: &str) -> Option<Value> {
        let out = self.try_exec(&["ip", "-j", "-d", "link", "show", "dev", name]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?.first().cloned()
    }

    /// Every link, with details (`ip -j -d link`).
    pub fn links(&self) -> Vec<Value> {
        as_vec(self.ip_json(&["-d", "link", "show"]))
    }

    /// Names of the veth interfaces in the namespace.
    pub fn veths(&self) -> Vec<String> {
        self.links()
            .iter()
            .filter(|l| l.pointer("/linkinfo/info_kind").and_then(Value::as_str) == Some("veth"))
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    /// Names of the links enslaved to `bridge`.
    pub fn ports_of(&self, bridge: &str) -> Vec<String> {
        self.links()
            .iter()
            .filter(|l| l["master"].as_str() == Some(bridge))
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    /// Global addresses of `dev` as `addr/prefix` (link-local IPv6 left out).
    pub fn addrs(&self, dev: &str) -> Vec<String> {
        let out = self.try_exec(&["ip", "-j", "addr", "show", "dev", dev]);
        if !out.status.success() {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        as_vec(v)
            .iter()
            .flat_map(|l| as_vec(l["addr_info"].clone()))
            .filter(|a| a["scope"].as_str() != Some("link"))
            .filter_map(|a| {
                Some(format!(
                    "{}/{}",
                    a["local"].as_str()?,
                    a["prefixlen"].as_u64()?
                ))
            })
            .collect()
    }

    /// Routes of one family (`-4` or `-6`) as `ip -j route` objects.
    pub fn routes(&self, family: &str) -> Vec<Value> {
        as_vec(self.ip_json(&[family, "route", "show"]))
    }

    /// Reads a sysctl of this namespace (`net/ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/{key}");
        self.run(|| std::fs::read_to_string(&path))
            .unwrap_or_else(|e| panic!("cannot read {path} in {}: {e}", self.name))
            .trim()
            .to_string()
    }
}

impl Default for Ns {
    fn default() -> Self {
        Ns::new()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        del_netns(&self.name);
    }
}

fn del_netns(name: &str) {
    match Command::new("ip")
        .args(["netns", "del", name])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "netd-tests: ip netns del {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("netd-tests: ip netns del {name}: {e}"),
    }
}

/// Enters the network namespace open at `fd` (calling thread only).
fn enter(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor, which the caller keeps open.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The elements of a JSON array (empty for anything else).
pub fn as_vec(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        _ => Vec::new(),
    }
}
