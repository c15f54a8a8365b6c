//! The sidecar supervisor with real processes, namespaces and nf_tables: `netd up` runs with a
//! stand-in sidecar (a shell script that logs its command line and then `nsenter`s the
//! namespace given by `--netns`), and containers are throwaway namespaces attached to a
//! meshed network through the API.
//!
//! What is checked from outside: which processes live in each container namespace (by the
//! namespace inode of every `/proc/<pid>`), the `netd-mesh` table in there, and
//! `GET /v1/sidecars`. Every namespace is deleted, and every process left in it killed by pid,
//! when its guard drops (after the daemon's guard, which kills netd).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{eventually, Daemon, TempDir};
use netd::client::Client;
use netd::mesh::status::{SidecarState, SidecarStatus};
use netd_cni::nat::intercept::{self, InterceptSpec};
use netd_cni::netns::NetNs;
use netd_config::netd::{AttachmentSpec, NetworkSpec};

const WAIT: Duration = Duration::from_secs(15);

/// The stand-in sidecar. Files next to it steer it: `crash` makes it exit with status 3 at
/// once, `ignore-term` makes it ignore SIGTERM, `listen` makes it answer `sidecar` on the
/// outbound listener (127.0.0.1:15001) instead of sleeping.
const STAND_IN: &str = r#"#!/bin/sh
dir=$(dirname "$0")
echo "$$ $*" >> "$dir/args.log"
netns=
while [ $# -gt 0 ]; do
    case "$1" in --netns) netns=$2; shift ;; esac
    shift
done
[ -e "$dir/crash" ] && exit 3
[ -e "$dir/ignore-term" ] && trap '' TERM
[ -e "$dir/listen" ] && exec nsenter --net="$netns" \
    socat TCP-LISTEN:15001,bind=127.0.0.1,reuseaddr,fork SYSTEM:"echo sidecar"
exec nsenter --net="$netns" sleep 1000
"#;

/// A throwaway container namespace; on drop, processes inside are SIGKILLed by pid and the
/// namespace deleted.
struct Ctr {
    name: String,
    deleted: std::cell::Cell<bool>,
}

impl Ctr {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "netd-mesh-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip");
        assert!(out.status.success(), "ip netns add {name}");
        Ctr {
            name,
            deleted: std::cell::Cell::new(false),
        }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Pids of the processes whose network namespace is this one.
    fn procs(&self) -> Vec<u32> {
        common::pids_in_netns(std::path::Path::new(&self.path()))
    }

    /// Whether `table inet netd-mesh` exists in here.
    fn intercepting(&self) -> bool {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-j", "list", "tables"])
            .output()
            .expect("run nft");
        String::from_utf8_lossy(&out.stdout).contains(intercept::TABLE)
    }

    /// Deletes the namespace's path, as a runtime does when the container is gone (processes
    /// inside keep the namespace itself alive).
    fn delete(&self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
            .expect("run ip");
        assert!(out.status.success(), "ip netns del {}", self.name);
        self.deleted.set(true);
    }

    fn netns(&self) -> NetNs {
        NetNs::open(self.path()).expect("open netns")
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        for pid in self.procs() {
            // SAFETY: kill(2) on a stand-in sidecar this test's netd started in this namespace.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if !self.deleted.get() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

/// The stand-in's directory and path.
struct StandIn {
    dir: TempDir,
}

impl StandIn {
    fn new() -> Self {
        let dir = TempDir::new("sidecar");
        let bin = dir.0.join("netd-sidecar");
        std::fs::write(&bin, STAND_IN).expect("write stand-in");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        StandIn { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.0.join("netd-sidecar")
    }

    fn set(&self, mode: &str, on: bool) {
        let p = self.dir.0.join(mode);
        if on {
            std::fs::write(p, "").expect("mode file");
        } else {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Command lines it was started with, by pid.
    fn starts(&self) -> Vec<(u32, String)> {
        std::fs::read_to_string(self.dir.0.join("args.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (pid, args) = l.split_once(' ')?;
                Some((pid.parse().ok()?, args.to_string()))
            })
            .collect()
    }
}

fn daemon(stand_in: &StandIn, tag: &str) -> Daemon {
    daemon_with(stand_in, tag, &[])
}

fn daemon_with(stand_in: &StandIn, tag: &str, extra: &[&str]) -> Daemon {
    let bin = stand_in.bin();
    let mut args = vec![
        "--no-network-dns",
        "--sidecar-bin",
        bin.to_str().expect("utf-8 path"),
        "--sidecar-drain-timeout",
        "1",
    ];
    args.extend_from_slice(extra);
    Daemon::start_with(tag, &args)
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// SIGKILLs a process this test's netd started, by pid, on drop (for processes in a namespace
/// whose path is gone, which [`Ctr`]'s drop can no longer find).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            // SAFETY: kill(2) on a stand-in sidecar started by this test's netd.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn mesh_network(client: &Client, name: &str, subnet: &str, mesh: bool) {
    client
        .create_network(&NetworkSpec {
            name: name.into(),
            subnets: vec![subnet.into()],
            mesh,
            isolate: false,
            bridge: None,
        })
        .await
        .expect("create network");
}

async fn attach(client: &Client, id: &str, network: &str, ctr: &Ctr, ip: &str) {
    client
        .attach(&AttachmentSpec {
            container_id: id.into(),
            ifname: "eth0".into(),
            network: network.into(),
            netns: ctr.path(),
            ips: vec![ip.into()],
            names: Vec::new(),
            service: None,
        })
        .await
        .expect("attach");
}

async fn sidecar(client: &Client, id: &str) -> Option<SidecarStatus> {
    client
        .sidecars()
        .await
        .expect("sidecars")
        .into_iter()
        .find(|s| s.container_id == id)
}

/// Waits until the sidecar of `id` runs as the one process in `ctr`; returns its pid.
async fn running(client: &Client, id: &str, ctr: &Ctr) -> u32 {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = sidecar(client, id).await;
        let procs = ctr.procs();
        if let Some(pid) = s
            .as_ref()
            .filter(|s| s.state == SidecarState::Running)
            .and_then(|s| s.pid)
        {
            if procs == [pid] {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "sidecar of {id} not running alone in its namespace: {s:?}, procs {procs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spec_for(ip: &str) -> InterceptSpec {
    InterceptSpec {
        addresses: vec![ip.parse().expect("ip")],
        ..InterceptSpec::default()
    }
}

#[test]
fn meshed_attachment_gets_a_sidecar_in_its_namespace_until_del() {
    let stand_in = StandIn::new();
    let ctr = Ctr::new();
    let plain = Ctr::new();
    let d = daemon_with(
        &stand_in,
        "mesh-del",
        &[
            "--mesh-exclude-port",
            "22",
            "--mesh-exclude-cidr",
            "192.0.2.0/24",
        ],
    );
    let client = d.client();
    rt().block_on(async {
        mesh_network(&client, "meshed", "10.123.0.0/24", true).await;
        attach(&client, "c1", "meshed", &ctr, "10.123.0.5/24").await;
        // The same on a network without the mesh: no sidecar, no rules.
        attach(&client, "c2", "netd", &plain, "10.89.0.5/24").await;

        let pid = running(&client, "c1", &ctr).await;
        let s = sidecar(&client, "c1").await.expect("status");
        assert!(s.intercepting && !s.adopted && s.restarts == 0, "{s:?}");
        assert_eq!((s.network.as_str(), s.netns.clone()), ("meshed", ctr.path()));
        // The contract's command line.
        let starts = stand_in.starts();
        let (_, args) = starts.iter().find(|(p, _)| *p == pid).expect("logged start");
        let want = format!(
            "--socket {} --container-id c1 --netns {} --outbound 127.0.0.1:15001 --inbound 0.0.0.0:15006 --admin 127.0.0.1:15000 --dns 127.0.0.1:15053 --mark 0x4e44 --drain-timeout 1s \
             --local-links {} --local-addr 10.123.0.5",
            d.socket.display(),
            ctr.path(),
            d.socket.with_file_name("links").join("meshed").display()
        );
        assert_eq!(args, &want);
        // The rules, for the container's address.
        assert!(ctr.intercepting());
        let spec = InterceptSpec {
            exclude_outbound_ports: vec![22],
            exclude_cidrs: vec!["192.0.2.0/24".parse().expect("cidr")],
            ..spec_for("10.123.0.5")
        };
        intercept::check(&ctr.netns(), &spec).expect("rules as specified");
        assert!(d.data_dir.join("sidecars/c1_eth0.pid").exists());

        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(plain.procs().is_empty() && !plain.intercepting());
        assert_eq!(client.sidecars().await.expect("sidecars").len(), 1);
        let table = common::ok(&d.cli(&["sidecars"]));
        assert!(
            table.contains("c1") && table.contains("running") && table.contains(&pid.to_string()),
            "{table}"
        );
        let json: Vec<SidecarStatus> =
            serde_json::from_str(&common::ok(&d.cli(&["-o", "json", "sidecars"]))).expect("json");
        assert_eq!(json.len(), 1);
        assert_eq!(json[0].pid, Some(pid));

        // DEL: the sidecar stops (SIGTERM suffices here), the rules and pidfile go.
        let t = Instant::now();
        client.detach("c1", "eth0").await.expect("detach");
        assert!(
            eventually(WAIT, || async { ctr.procs().is_empty() && !ctr.intercepting() }).await,
            "procs {:?}, log:\n{}",
            ctr.procs(),
            d.log()
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(sidecar(&client, "c1").await.is_none());
        assert!(!d.data_dir.join("sidecars/c1_eth0.pid").exists());
    });
}

#[test]
fn crashing_sidecar_is_restarted_with_capped_backoff() {
    let stand_in = StandIn::new();
    let ctr = Ctr::new();
    let d = daemon(&stand_in, "mesh-crash");
    let client = d.client();
    rt().block_on(async {
        mesh_network(&client, "meshed", "10.124.0.0/24", true).await;
        stand_in.set("crash", true);
        attach(&client, "c1", "meshed", &ctr, "10.124.0.5/24").await;
        // Exits at once, every time: restarts after 0.25, 0.5, 1, 2 s... not in a tight loop.
        assert!(
            eventually(WAIT, || async {
                sidecar(&client, "c1")
                    .await
                    .is_some_and(|s| s.restarts >= 1)
            })
            .await
        );
        tokio::time::sleep(Duration::from_millis(3200)).await;
        let s = sidecar(&client, "c1").await.expect("status");
        assert!((3..=5).contains(&s.restarts), "{s:?}");
        assert_eq!(s.state, SidecarState::Backoff);
        assert!(
            s.last_error.as_deref().unwrap_or("").contains("status 3"),
            "{s:?}"
        );
        assert!(s.intercepting, "rules stay while the sidecar restarts");
        assert!(ctr.intercepting());

        // Someone flushes the rules meanwhile: the next restart repairs them.
        let out = Command::new("ip")
            .args(["netns", "exec", &ctr.name, "nft", "flush", "chain", "inet"])
            .args([intercept::TABLE, "output"])
            .output()
            .expect("nft");
        assert!(out.status.success());
        assert!(intercept::check(&ctr.netns(), &spec_for("10.124.0.5")).is_err());

        // Fixed: the next attempt (within the capped delay) runs, alone, with its rules.
        stand_in.set("crash", false);
        let pid = running(&client, "c1", &ctr).await;
        intercept::check(&ctr.netns(), &spec_for("10.124.0.5")).expect("rules repaired");
        // Killed: started again, and still only one.
        common::send_signal(pid as i32, libc::SIGKILL);
        assert!(
            eventually(WAIT, || async {
                sidecar(&client, "c1")
                    .await
                    .and_then(|s| s.pid)
                    .is_some_and(|p| p != pid)
            })
            .await
        );
        let again = running(&client, "c1", &ctr).await;
        assert_ne!(again, pid);
    });
}

#[test]
fn sidecar_ignoring_sigterm_is_killed_after_the_bound() {
    let stand_in = StandIn::new();
    let ctr = Ctr::new();
    let d = daemon(&stand_in, "mesh-kill");
    let client = d.client();
    stand_in.set("ignore-term", true);
    rt().block_on(async {
        mesh_network(&client, "meshed", "10.125.0.0/24", true).await;
        attach(&client, "c1", "meshed", &ctr, "10.125.0.5/24").await;
        running(&client, "c1", &ctr).await;
        let t = Instant::now();
        client.detach("c1", "eth0").await.expect("detach");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(ctr.procs().len(), 1, "SIGTERM is ignored: still there");
        assert!(
            eventually(WAIT, || async { ctr.procs().is_empty() }).await,
            "not killed"
        );
        // Drain 1 s + 2 s grace, then SIGKILL.
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
            "{took:?}"
        );
        assert!(eventually(WAIT, || async { !ctr.intercepting() }).await);
    });
}

#[test]
fn sidecars_outlive_a_crashed_or_stopped_netd_and_are_adopted() {
    let stand_in = StandIn::new();
    let ctr = Ctr::new();
    let ctr2 = Ctr::new();
    let mut d = daemon(&stand_in, "mesh-adopt");
    let client = d.client();
    let rt = rt();
    let (pid, pid2) = rt.block_on(async {
        mesh_network(&client, "meshed", "10.126.0.0/24", true).await;
        attach(&client, "c1", "meshed", &ctr, "10.126.0.5/24").await;
        attach(&client, "c2", "meshed", &ctr2, "10.126.0.6/24").await;
        (
            running(&client, "c1", &ctr).await,
            running(&client, "c2", &ctr2).await,
        )
    });

    // netd crashes: the sidecars and their rules stay (the mesh keeps serving).
    d.kill9();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ctr.procs(), [pid]);
    assert!(ctr.intercepting());

    // The next netd adopts them: no second process, no new start.
    d.spawn();
    rt.block_on(async {
        assert_eq!(running(&client, "c1", &ctr).await, pid);
        assert_eq!(running(&client, "c2", &ctr2).await, pid2);
        let s = sidecar(&client, "c1").await.expect("status");
        assert!(s.adopted, "{s:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(ctr.procs(), [pid]);
        assert_eq!(stand_in.starts().len(), 2, "{:?}", stand_in.starts());

        // An adopted sidecar that dies is started again (watched through its pidfd).
        common::send_signal(pid as i32, libc::SIGKILL);
        assert!(
            eventually(WAIT, || async {
                sidecar(&client, "c1")
                    .await
                    .and_then(|s| s.pid)
                    .is_some_and(|p| p != pid)
            })
            .await
        );
        running(&client, "c1", &ctr).await;
    });

    // A normal stop (a restart, an upgrade) leaves the sidecars serving, rules and pidfiles
    // in place; the next netd adopts them again.
    let pid = rt.block_on(running(&client, "c1", &ctr));
    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(WAIT).is_some_and(|s| s.success()),
        "{}",
        d.log()
    );
    assert_eq!(ctr.procs(), [pid], "{}", d.log());
    assert_eq!(ctr2.procs(), [pid2]);
    assert!(ctr.intercepting() && ctr2.intercepting());
    d.up_args.push("--stop-sidecars-on-exit".into());
    d.spawn();
    rt.block_on(async {
        assert_eq!(running(&client, "c1", &ctr).await, pid);
        assert_eq!(running(&client, "c2", &ctr2).await, pid2);
    });

    // With --stop-sidecars-on-exit: every sidecar stopped, every rule and pidfile removed.
    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(WAIT).is_some_and(|s| s.success()),
        "{}",
        d.log()
    );
    for c in [&ctr, &ctr2] {
        assert!(c.procs().is_empty(), "{:?}", c.procs());
        assert!(!c.intercepting());
    }
    let left: Vec<PathBuf> = std::fs::read_dir(d.data_dir.join("sidecars"))
        .expect("state dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn sidecar_of_a_container_gone_while_netd_was_down_is_stopped() {
    let stand_in = StandIn::new();
    let ctr = Ctr::new();
    let mut d = daemon_with(&stand_in, "mesh-gone", &["--netns-sweep-ms", "200"]);
    let client = d.client();
    let rt = rt();
    let pid = rt.block_on(async {
        mesh_network(&client, "meshed", "10.127.0.0/24", true).await;
        attach(&client, "c1", "meshed", &ctr, "10.127.0.5/24").await;
        running(&client, "c1", &ctr).await
    });
    let _guard = KillOnDrop(pid);
    d.kill9();
    ctr.delete();
    assert!(alive(pid), "the sidecar outlives netd");
    d.spawn();
    // The liveness sweep removes the attachment; its adopted sidecar goes with it.
    let t = Instant::now();
    while alive(pid) && t.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "orphan still running; log:\n{}", d.log());
    rt.block_on(async {
        assert!(
            eventually(WAIT, || async {
                client.sidecars().await.is_ok_and(|l| l.is_empty())
            })
            .await
        );
    });
    assert!(!d.data_dir.join("sidecars/c1_eth0.pid").exists());
    assert_eq!(stand_in.starts().len(), 1, "never started again");
}

#[test]
fn traffic_of_a_meshed_container_reaches_its_sidecar() {
    let stand_in = StandIn::new();
    stand_in.set("listen", true);
    let ctr = Ctr::new();
    let d = daemon(&stand_in, "mesh-traffic");
    let client = d.client();
    // A route, so that connect() gets as far as the nat output hook.
    let out = Command::new("ip")
        .args([
            "-n", &ctr.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ])
        .output()
        .expect("ip");
    assert!(out.status.success());
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "set", "eth1", "up"],
        &["link", "set", "eth0", "up"],
        &["addr", "add", "10.128.0.5/24", "dev", "eth0"],
        &["route", "add", "default", "dev", "eth0"],
    ] {
        let out = Command::new("ip")
            .args(["-n", &ctr.name])
            .args(args)
            .output()
            .expect("ip");
        assert!(out.status.success(), "ip {args:?}");
    }
    rt().block_on(async {
        mesh_network(&client, "meshed", "10.128.0.0/24", true).await;
        attach(&client, "c1", "meshed", &ctr, "10.128.0.5/24").await;
        running(&client, "c1", &ctr).await;
    });
    // An unmodified client in the container, calling an address nobody has, is answered by
    // its sidecar.
    let answer = ctr
        .netns()
        .run(|| {
            let deadline = Instant::now() + WAIT;
            loop {
                let got = std::net::TcpStream::connect_timeout(
                    &"10.200.1.1:80".parse().expect("addr"),
                    Duration::from_secs(1),
                )
                .and_then(|mut c| {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut c, &mut s).map(|_| s)
                });
                match got {
                    Ok(s) => return s,
                    Err(e) if Instant::now() > deadline => return format!("{e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
        .expect("run in netns");
    assert_eq!(answer.trim(), "sidecar");
}

#[test]
fn netds_own_namespace_is_never_intercepted() {
    // netd runs inside a throwaway namespace, so that even a broken guard could only touch
    // that namespace.
    let stand_in = StandIn::new();
    let host = Ctr::new();
    let dir = TempDir::new("mesh-own");
    let socket = dir.0.join("netd.sock");
    let log = std::fs::File::create(dir.0.join("daemon.log")).expect("log");
    let child = Command::new("ip")
        .args(["netns", "exec", &host.name, common::BIN, "--socket"])
        .arg(&socket)
        .arg("up")
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .arg("--cni-conf-dir")
        .arg(dir.0.join("cni"))
        .args(["--node", "test-node", "--no-network-dns", "--no-vip"])
        .arg("--sidecar-bin")
        .arg(stand_in.bin())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn netd");
    // Killed and reaped first on the way out (`ip netns exec` execs netd: this is netd).
    let _netd = Reap(child);
    assert!(common::wait_until(WAIT, || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    }));
    let client = Client::new(&socket);
    rt().block_on(async {
        mesh_network(&client, "meshed", "10.129.0.0/24", true).await;
        attach(&client, "c1", "meshed", &host, "10.129.0.5/24").await;
        assert!(
            eventually(WAIT, || async {
                sidecar(&client, "c1")
                    .await
                    .and_then(|s| s.last_error)
                    .is_some_and(|e| e.contains("own network namespace"))
            })
            .await,
            "{:?}",
            sidecar(&client, "c1").await
        );
        let s = sidecar(&client, "c1").await.expect("status");
        assert!(!s.intercepting && s.pid.is_none(), "{s:?}");
    });
    assert!(!host.intercepting());
    assert!(stand_in.starts().is_empty());
}

/// A child process killed and reaped on drop.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
