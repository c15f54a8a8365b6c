//! Test harness: a real `netd up` process per test, with its own temporary data directory,
//! socket and CNI conf directory (never the defaults), killed by PID when the guard drops.

#![allow(dead_code)]

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use netd::client::Client;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_netd");

/// `prefix-<test process id>-<counter>`: unique among the tests running in parallel.
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `netd --socket <dir>/netd.sock up --data-dir <dir>/data --cni-conf-dir <dir>/cni`: a
/// daemon with private paths; the caller adds the rest.
pub fn netd_up(mut cmd: Command, dir: &Path) -> Command {
    cmd.arg("--socket")
        .arg(dir.join("netd.sock"))
        .arg("up")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--cni-conf-dir")
        .arg(dir.join("cni"));
    cmd
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "netd-it-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running daemon; SIGKILLed on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub cni_dir: PathBuf,
    /// Extra `netd up` arguments: always `--no-vip`, and by default `--no-network-dns`, so
    /// tests never touch the host's nf_tables or listen on its gateway addresses.
    pub up_args: Vec<String>,
    starts: usize,
    // Last so it is removed after the process is gone.
    pub dir: TempDir,
}

impl Daemon {
    /// Starts a daemon in a fresh directory and waits until it answers.
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, &["--no-network-dns"])
    }

    /// Starts a daemon in a fresh directory with these extra `netd up` arguments.
    pub fn start_with(tag: &str, up_args: &[&str]) -> Self {
        let dir = TempDir::new(tag);
        let mut d = Daemon {
            socket: dir.0.join("netd.sock"),
            data_dir: dir.0.join("data"),
            cni_dir: dir.0.join("cni"),
            child: None,
            // These daemons run in the machine's own namespace: never let them program
            // nf_tables there (VIPs are tested inside a throwaway namespace, tests/vip.rs).
            up_args: std::iter::once("--no-vip")
                .chain(up_args.iter().copied())
                .map(ToString::to_string)
                .collect(),
            starts: 0,
            dir,
        };
        d.spawn();
        d
    }

    /// Starts the process again on the same directories.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        self.starts += 1;
        let log = self.dir.0.join(format!("daemon-{}.log", self.starts));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .arg("up")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--cni-conf-dir")
            .arg(&self.cni_dir)
            .arg("--node")
            .arg("test-node")
            .args(&self.up_args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn netd up");
        self.child = Some(child);
        let ok = wait_until(Duration::from_secs(20), || {
            UnixStream::connect(&self.socket).is_ok()
        });
        if !ok {
            panic!("netd did not come up; log:\n{}", self.log());
        }
    }

    /// The daemon's output so far (all starts).
    pub fn log(&self) -> String {
        logs(&self.dir.0, "daemon", self.starts)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        send_signal(self.pid(), sig);
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Runs `netd --socket S ARGS...` to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.socket, args)
    }

    /// Starts `netd --socket S ARGS...` in the background.
    pub fn cli_spawn(&self, args: &[&str]) -> Child {
        Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn netd cli")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The logs `<dir>/<stem>-1.log` ... `<stem>-<starts>.log` of a daemon started `starts`
/// times, one after the other.
pub fn logs(dir: &Path, stem: &str, starts: usize) -> String {
    (1..=starts)
        .map(|i| std::fs::read_to_string(dir.join(format!("{stem}-{i}.log"))).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("--- restart ---\n")
}

/// Runs the CLI against `socket`.
pub fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("NETD_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run netd cli")
}

/// Asserts success and returns stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async version of [`wait_until`].
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `sig` to `pid`.
pub fn send_signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a PID this test spawned and has not reaped yet.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Pids of the processes whose network namespace is the one at `path` (by the namespace's
/// device and inode, read from every `/proc/<pid>/ns/net`); empty when `path` is gone.
pub fn pids_in_netns(path: &Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(ns) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
            if (m.dev(), m.ino()) == (ns.dev(), ns.ino()) {
                pids.push(pid);
            }
        }
    }
    pids
}
