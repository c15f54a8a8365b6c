//! Running a CNI plugin the way a runtime does: the `CNI_*` environment, the configuration on
//! stdin, the result or error JSON on stdout — inside a test's host namespace.
//!
//! The `netd-cni` binary is looked up next to the test executable
//! (`target/<profile>/netd-cni`), or at `$NETD_CNI_BIN`. Reference plugins come from
//! `/usr/lib/cni` (Debian's `containernetworking-plugins`). Every run has a deadline; a
//! plugin that overruns it is killed (by PID) and the test fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ns::Ns;

/// Where Debian installs the reference plugins (used as `CNI_PATH` for delegated IPAM).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// How long one plugin invocation may take before the test gives up on it.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A plugin binary.
#[derive(Debug, Clone)]
pub struct Plugin {
    path: PathBuf,
}

impl Plugin {
    /// The `netd-cni` binary built alongside the tests. Panics with the command to run when it
    /// is missing.
    pub fn netd() -> Plugin {
        if let Some(p) = std::env::var_os("NETD_CNI_BIN") {
            return Plugin::at(PathBuf::from(p));
        }
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/<test>-<hash> → target/<profile>/netd-cni
        let path = exe
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("netd-cni"))
            .expect("test executable has no grandparent directory");
        Plugin::at(path)
    }

    /// A reference plugin from `/usr/lib/cni` (`bridge`, `host-local`, `portmap`, ...).
    pub fn reference(name: &str) -> Plugin {
        Plugin::at(Path::new(REFERENCE_PLUGINS).join(name))
    }

    fn at(path: PathBuf) -> Plugin {
        assert!(
            path.is_file(),
            "plugin binary {} is missing: run `cargo build -p netd-cni` first \
             (reference plugins: `apt-get install containernetworking-plugins`)",
            path.display()
        );
        Plugin { path }
    }

    /// The binary.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts describing an invocation with `CNI_COMMAND=command`, run inside `host`.
    pub fn call<'a>(&'a self, host: &'a Ns, command: &str) -> Call<'a> {
        Call {
            plugin: self,
            host,
            env: vec![
                ("CNI_COMMAND".into(), command.into()),
                ("CNI_PATH".into(), REFERENCE_PLUGINS.into()),
            ],
            stdin: Vec::new(),
        }
    }
}

/// One invocation being described; [`Call::run`] executes it.
#[derive(Debug)]
pub struct Call<'a> {
    plugin: &'a Plugin,
    host: &'a Ns,
    env: Vec<(String, String)>,
    stdin: Vec<u8>,
}

impl Call<'_> {
    /// Sets (or with `None`, removes) a `CNI_*` variable.
    pub fn env(mut self, key: &str, value: Option<&str>) -> Self {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.into(), v.into()));
        }
        self
    }

    /// `CNI_CONTAINERID`, `CNI_NETNS` and `CNI_IFNAME` for an attachment.
    pub fn container(self, id: &str, netns: &Path, ifname: &str) -> Self {
        self.env("CNI_CONTAINERID", Some(id))
            .env("CNI_NETNS", Some(&netns.display().to_string()))
            .env("CNI_IFNAME", Some(ifname))
    }

    /// `CNI_ARGS` (`K=V;K2=V2`).
    pub fn args(self, args: &str) -> Self {
        self.env("CNI_ARGS", Some(args))
    }

    /// The configuration on stdin, as JSON.
    pub fn conf(mut self, conf: &Value) -> Self {
        self.stdin = serde_json::to_vec(conf).expect("encode configuration");
        self
    }

    /// Raw bytes on stdin (for malformed-input tests).
    pub fn stdin(mut self, bytes: &[u8]) -> Self {
        self.stdin = bytes.to_vec();
        self
    }

    /// Starts the plugin and writes stdin; the caller owns the child (and must kill or wait
    /// for it). Used to interrupt a plugin mid-operation.
    pub fn spawn(&self) -> Child {
        let mut cmd = self.host.command(self.plugin.path());
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.plugin.path().display()));
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that fails before reading stdin closes the pipe: its exit status tells.
            let _ = stdin.write_all(&self.stdin);
        }
        child
    }

    /// Runs the plugin to completion (at most [`DEADLINE`]).
    pub fn run(&self) -> Outcome {
        let child = self.spawn();
        let out = wait_bounded(child, DEADLINE);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let json = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).unwrap_or(Value::Null)
        };
        Outcome {
            command: self
                .env
                .iter()
                .find(|(k, _)| k == "CNI_COMMAND")
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            status: out.status.code(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            json,
        }
    }
}

/// Waits for `child` for at most `limit`, killing it (by PID) when it overruns.
pub fn wait_bounded(mut child: Child, limit: Duration) -> std::process::Output {
    let start = Instant::now();
    // Read the pipes on threads so a chatty plugin cannot block on a full pipe.
    let stdout = child.stdout.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut s, &mut v);
            v
        })
    });
    let stderr = child.stderr.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut s, &mut v);
            v
        })
    });
    let status = loop {
        match child.try_wait().expect("wait for plugin") {
            Some(status) => break status,
            None if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "plugin did not finish within {limit:?}; killed pid {}",
                    child.id()
                );
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    let collect = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    std::process::Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    }
}

/// What a plugin invocation produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `CNI_COMMAND` of the run, for messages.
    pub command: String,
    /// Exit code (`None`: killed by a signal).
    pub status: Option<i32>,
    /// stdout as text.
    pub stdout: String,
    /// stderr (the plugin's logs).
    pub stderr: String,
    /// stdout parsed as JSON (`Null` when empty or not JSON).
    pub json: Value,
}

impl Outcome {
    /// Whether the plugin exited 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// Asserts success and returns the parsed stdout (the ADD result; `Null` for DEL).
    #[track_caller]
    pub fn ok(self) -> Value {
        assert!(
            self.success(),
            "{} failed (exit {:?}): stdout {} stderr {}",
            self.command,
            self.status,
            self.stdout,
            self.stderr
        );
        self.json
    }

    /// Asserts a failure that follows the spec — non-zero exit, and an error JSON on stdout
    /// with `cniVersion`, numeric `code` and string `msg` — and returns `(code, msg)`.
    #[track_caller]
    pub fn err(&self) -> (u64, String) {
        assert!(
            !self.success(),
            "{} unexpectedly succeeded: {}",
            self.command,
            self.stdout
        );
        assert!(
            self.status.is_some(),
            "{} was killed by a signal",
            self.command
        );
        let e = &self.json;
        assert!(
            e.is_object(),
            "{} failed without error JSON on stdout (exit {:?}): stdout {:?} stderr {}",
            self.command,
            self.status,
            self.stdout,
            self.stderr
        );
        assert!(
            e["cniVersion"].is_string(),
            "error JSON lacks cniVersion: {e}"
        );
        let code = e["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("error JSON lacks a numeric code: {e}"));
        let msg = e["msg"]
            .as_str()
            .unwrap_or_else(|| panic!("error JSON lacks msg: {e}"))
            .to_string();
        (code, msg)
    }

    /// Asserts a spec-shaped failure with `code` and returns the message (with details).
    #[track_caller]
    pub fn err_code(&self, code: u64) -> String {
        let (got, msg) = self.err();
        assert_eq!(
            got, code,
            "{} failed with code {got} ({msg}), expected {code}; stderr {}",
            self.command, self.stderr
        );
        let details = self.json["details"].as_str().unwrap_or_default();
        format!("{msg} {details}")
    }
}
