//! One sidecar's supervision, from the attachment's arrival to its removal: install the
//! interception rules in the container's namespace, adopt the sidecar an earlier netd left
//! running or start one, restart it with capped exponential backoff when it exits, and on stop
//! terminate it (SIGTERM, SIGKILL after a bound), remove its rules and its pidfile.
//!
//! Rules go in before the process starts and stay while it restarts: the application's
//! connections never bypass the mesh (they are refused until the sidecar listens, which at
//! CNI ADD time is before the application runs).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netd_cni::nat::intercept::{self, InterceptSpec};
use netd_cni::netns::NetNs;
use tokio::sync::watch;

use super::process::{PidFile, Proc};
use super::status::{SidecarState, SidecarStatus};
use super::MeshOptions;

/// A process that ran at least this long before exiting is considered to have been healthy:
/// the next restart comes after the minimum backoff again.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// What one sidecar serves: an attachment on a meshed network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Container id.
    pub container_id: String,
    /// Interface.
    pub ifname: String,
    /// Network name.
    pub network: String,
    /// Network namespace path.
    pub netns: String,
    /// The container's addresses (inbound interception applies to these).
    pub ips: Vec<std::net::IpAddr>,
    /// Its network's gateway addresses (where netd answers DNS).
    pub gateways: Vec<std::net::IpAddr>,
}

/// The shared, live status of one sidecar.
pub type Shared = Arc<Mutex<SidecarStatus>>;

/// A fresh status for `t`.
pub fn new_status(t: &Target) -> Shared {
    Arc::new(Mutex::new(SidecarStatus {
        container_id: t.container_id.clone(),
        ifname: t.ifname.clone(),
        network: t.network.clone(),
        netns: t.netns.clone(),
        state: SidecarState::Starting,
        pid: None,
        restarts: 0,
        adopted: false,
        intercepting: false,
        last_error: None,
    }))
}

fn update(status: &Shared, f: impl FnOnce(&mut SidecarStatus)) {
    if let Ok(mut s) = status.lock() {
        f(&mut s);
    }
}

/// The interception settings for `t`: the node's (ports, mark, exclusions) for its addresses.
pub fn intercept_spec(opts: &MeshOptions, t: &Target) -> InterceptSpec {
    InterceptSpec {
        addresses: t.ips.clone(),
        ..opts.intercept.clone()
    }
}

/// The sidecar's command line (the contract with `netd-sidecar`).
pub fn sidecar_args(opts: &MeshOptions, t: &Target) -> Vec<String> {
    let spec = &opts.intercept;
    let mut args: Vec<String> = [
        "--socket",
        &opts.api_socket.display().to_string(),
        "--container-id",
        &t.container_id,
        "--netns",
        &t.netns,
        "--outbound",
        &format!("127.0.0.1:{}", spec.outbound_port),
        "--inbound",
        &format!("0.0.0.0:{}", spec.inbound_port),
        "--admin",
        super::SIDECAR_ADMIN,
        "--dns",
        &format!(
            "127.0.0.1:{}",
            spec.dns_port.unwrap_or(intercept::DEFAULT_DNS_PORT)
        ),
        "--mark",
        &format!("{:#x}", spec.mark),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.push("--drain-timeout".into());
    args.push(format!("{}s", opts.sidecar_drain.as_secs()));
    if let Some(dir) = links_dir(opts, t) {
        args.push("--local-links".into());
        args.push(dir.display().to_string());
        for ip in &t.ips {
            args.push("--local-addr".into());
            args.push(ip.to_string());
        }
        for port in &spec.exclude_inbound_ports {
            args.push("--local-exclude-port".into());
            args.push(port.to_string());
        }
    }
    if opts.network_dns && !t.gateways.is_empty() {
        args.push("--upstream-dns".into());
        args.extend(
            t.gateways
                .iter()
                .map(|g| std::net::SocketAddr::new(*g, 53).to_string()),
        );
    }
    args
}

/// The node-local link directory of `t`'s network, `<links>/<network>` (network names are
/// plain file names); `None` when links are off.
pub fn links_dir(opts: &MeshOptions, t: &Target) -> Option<std::path::PathBuf> {
    Some(opts.local_links.as_ref()?.join(&t.network))
}

/// Makes `t`'s link directory (root only, like its parent) and checks both are directories
/// only this user can write to: whoever can create a socket there can stand in for a
/// container. `Ok(false)` when links are off.
fn prepare_links_dir(opts: &MeshOptions, t: &Target) -> Result<bool, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let (Some(base), Some(dir)) = (opts.local_links.as_ref(), links_dir(opts, t)) else {
        return Ok(false);
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    for d in [base, &dir] {
        let m = std::fs::symlink_metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
        if !m.is_dir() || m.uid() != me || m.mode() & 0o022 != 0 {
            return Err(format!(
                "{} is not a directory owned by uid {me} and writable by it alone",
                d.display()
            ));
        }
    }
    Ok(true)
}

/// Installs the rules for `t` in its namespace, on a blocking thread.
async fn install_rules(opts: &MeshOptions, t: &Target) -> Result<(), String> {
    let spec = intercept_spec(opts, t);
    let path = t.netns.clone();
    blocking(move || {
        refuse_own_netns(Path::new(&path))?;
        let ns =
            NetNs::open(&path).map_err(|e| format!("cannot open network namespace {path}: {e}"))?;
        intercept::install(&ns, &spec)
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
}

/// Fails when `path` is netd's own network namespace (an attachment recorded with the host's
/// namespace, e.g. a host-network container): intercepting there would capture the host's
/// traffic, netd's included.
pub fn refuse_own_netns(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    match (id(path), id(Path::new("/proc/self/ns/net"))) {
        (Ok(a), Ok(b)) if a == b => Err(format!(
            "{} is netd's own network namespace: not intercepting there",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// Removes the rules from the namespace at `path`, on a blocking thread. A namespace that is
/// gone has nothing left to remove.
pub async fn remove_rules(path: &str) -> Result<(), String> {
    let path = path.to_string();
    blocking(move || match NetNs::open(&path) {
        Ok(ns) => intercept::remove(&ns).map(drop).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot open network namespace {path}: {e}")),
    })
    .await
}

/// Rule operations in flight at once: a netd starting with many meshed containers programs
/// their namespaces a few at a time instead of occupying a thread per container.
static RULE_OPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

async fn blocking(f: impl FnOnce() -> Result<(), String> + Send + 'static) -> Result<(), String> {
    let _permit = RULE_OPS
        .acquire()
        .await
        .map_err(|e| format!("rules: {e}"))?;
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("rules task failed: {e}")))
}

/// What a supervisor is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Keep the sidecar running (restart it when it exits).
    Supervise,
    /// Stop the sidecar and remove its rules (its attachment is gone or changed).
    Stop,
    /// netd is exiting and leaves the sidecar serving: process, rules and pidfile stay for the
    /// next netd to adopt.
    Leave,
}

/// Sleeps `d` unless an order other than [`Order::Supervise`] comes first; returns true then.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<Order>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|o| *o != Order::Supervise) => true,
    }
}

/// Supervises the sidecar of `t` until `stop` says otherwise (a dropped sender counts as
/// [`Order::Stop`]), then stops it and removes its rules, or, on [`Order::Leave`], leaves it
/// serving. `before` is the task of a sidecar this one replaces (same attachment, changed
/// namespace or addresses): it is awaited first so the two never overlap.
pub async fn supervise(
    t: Target,
    opts: Arc<MeshOptions>,
    status: Shared,
    mut stop: watch::Receiver<Order>,
    before: Option<tokio::task::JoinHandle<()>>,
) {
    if let Some(b) = before {
        let _ = b.await;
    }
    let key = format!("{}/{}", t.container_id, t.ifname);
    let pidfile = PidFile::path(&opts.state_dir, &t.container_id, &t.ifname);
    // A sidecar left by an earlier netd is adopted first, so that whatever happens next
    // (even the attachment going before its rules could be written) it is stopped with it.
    let mut proc = PidFile::read(&pidfile)
        .filter(|rec| rec.netns == t.netns)
        .and_then(|rec| Proc::adopt(&rec));
    if let Some(p) = &proc {
        crate::log(&format!(
            "sidecar {key}: adopted running process {}",
            p.pid().unwrap_or(0)
        ));
        update(&status, |s| {
            s.adopted = true;
            s.pid = p.pid();
        });
    }
    // Rules before any new process; a namespace not usable yet is retried like a crash.
    let mut delay = opts.backoff_min;
    let stopped = loop {
        match install_rules(&opts, &t).await {
            Ok(()) => {
                update(&status, |s| s.intercepting = true);
                break false;
            }
            Err(e) => {
                crate::log(&format!("sidecar {key}: cannot install interception: {e}"));
                update(&status, |s| {
                    s.state = SidecarState::Backoff;
                    s.last_error = Some(e);
                });
                if sleep_or_stop(delay, &mut stop).await {
                    break true;
                }
                delay = (delay * 2).min(opts.backoff_max);
            }
        }
    };
    if !stopped {
        proc = run(&t, &opts, &status, &mut stop, proc, &pidfile).await;
    }
    if *stop.borrow() == Order::Leave {
        // The rules stay even without a process (between restarts): the application's
        // connections never bypass the mesh, and the next netd starts a sidecar.
        if let Some(p) = proc {
            crate::log(&format!(
                "sidecar {key}: left running for the next netd (pid {})",
                p.pid().unwrap_or(0)
            ));
            drop(p); // not killed on drop: it runs on, and is re-parented
        }
        return;
    }
    update(&status, |s| s.state = SidecarState::Stopping);
    if let Some(mut p) = proc {
        let how = p.terminate(opts.stop_bound()).await;
        crate::log(&format!("sidecar {key}: stopped ({how})"));
    }
    let _ = std::fs::remove_file(&pidfile);
    if let Err(e) = remove_rules(&t.netns).await {
        crate::log(&format!("sidecar {key}: cannot remove interception: {e}"));
    }
    update(&status, |s| {
        s.pid = None;
        s.intercepting = false;
    });
}

/// The start/restart loop; returns the process still running when `stop` turned true.
async fn run(
    t: &Target,
    opts: &MeshOptions,
    status: &Shared,
    stop: &mut watch::Receiver<Order>,
    mut proc: Option<Proc>,
    pidfile: &Path,
) -> Option<Proc> {
    let key = format!("{}/{}", t.container_id, t.ifname);
    let mut delay = opts.backoff_min;
    let mut first = true;
    loop {
        // Before a restart, repair the rules if something changed them meanwhile (a no-op
        // when they are intact).
        if !std::mem::take(&mut first) && proc.is_none() {
            if let Err(e) = install_rules(opts, t).await {
                crate::log(&format!("sidecar {key}: cannot check interception: {e}"));
            }
        }
        let mut p = match proc.take() {
            Some(p) => p,
            None => match start(t, opts, pidfile) {
                Ok(p) => p,
                Err(e) => {
                    crate::log(&format!("sidecar {key}: {e}"));
                    update(status, |s| {
                        s.state = SidecarState::Backoff;
                        s.pid = None;
                        s.last_error = Some(e);
                    });
                    if sleep_or_stop(delay, stop).await {
                        return None;
                    }
                    delay = (delay * 2).min(opts.backoff_max);
                    continue;
                }
            },
        };
        update(status, |s| {
            s.state = SidecarState::Running;
            s.pid = p.pid();
        });
        let started = Instant::now();
        let exited = tokio::select! {
            how = p.wait() => Some(how),
            _ = stop.wait_for(|o| *o != Order::Supervise) => None,
        };
        let Some(how) = exited else {
            return Some(p);
        };
        if started.elapsed() >= STABLE_AFTER {
            delay = opts.backoff_min;
        }
        crate::log(&format!("sidecar {key}: {how}; restarting in {delay:?}"));
        update(status, |s| {
            s.state = SidecarState::Backoff;
            s.pid = None;
            s.adopted = false;
            s.restarts += 1;
            s.last_error = Some(how);
        });
        if sleep_or_stop(delay, stop).await {
            return None;
        }
        delay = (delay * 2).min(opts.backoff_max);
    }
}

/// Spawns the sidecar and records its pidfile.
fn start(t: &Target, opts: &MeshOptions, pidfile: &Path) -> Result<Proc, String> {
    let args = match prepare_links_dir(opts, t) {
        Ok(_) => sidecar_args(opts, t),
        Err(e) => {
            // The links, not the sidecar: it talks TCP like one of another node.
            crate::log(&format!(
                "sidecar {}/{}: node-local links off: {e}",
                t.container_id, t.ifname
            ));
            let without = MeshOptions {
                local_links: None,
                ..opts.clone()
            };
            sidecar_args(&without, t)
        }
    };
    let p = Proc::spawn(&opts.sidecar_bin, &args)
        .map_err(|e| format!("cannot start {}: {e}", opts.sidecar_bin.display()))?;
    if let Some(pid) = p.pid() {
        let rec = PidFile {
            pid,
            start_time: super::process::start_time(pid).unwrap_or(0),
            container_id: t.container_id.clone(),
            ifname: t.ifname.clone(),
            netns: t.netns.clone(),
        };
        if let Err(e) = rec.write(pidfile) {
            crate::log(&format!(
                "sidecar {}/{}: cannot write {}: {e} (it will not be adopted after a netd restart)",
                t.container_id,
                t.ifname,
                pidfile.display()
            ));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_is_refused() {
        let err = refuse_own_netns(Path::new("/proc/self/ns/net")).expect_err("own netns");
        assert!(err.contains("own network namespace"), "{err}");
        assert!(refuse_own_netns(Path::new("/run/netns/netd-no-such-namespace")).is_ok());
    }

    /// Options as netd's defaults, links off.
    fn test_options() -> MeshOptions {
        MeshOptions {
            sidecar_bin: "netd-sidecar".into(),
            api_socket: "/run/netd/netd.sock".into(),
            state_dir: "/tmp/x".into(),
            sidecar_drain: Duration::from_secs(5),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            intercept: InterceptSpec::default(),
            network_dns: false,
            stop_sidecars_on_exit: false,
            local_links: None,
        }
    }

    #[test]
    fn link_directories_must_be_private_real_directories() {
        use std::os::unix::fs::PermissionsExt;
        let top = std::env::temp_dir().join(format!("netd-links-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir_all(&top).unwrap();
        let t = Target {
            container_id: "c".into(),
            ifname: "eth0".into(),
            network: "n".into(),
            netns: "/run/netns/x".into(),
            ips: Vec::new(),
            gateways: Vec::new(),
        };
        let opts = |base: Option<std::path::PathBuf>| MeshOptions {
            local_links: base,
            ..test_options()
        };
        assert_eq!(prepare_links_dir(&opts(None), &t), Ok(false));
        let base = top.join("links");
        std::fs::create_dir(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(prepare_links_dir(&opts(Some(base.clone())), &t), Ok(true));
        let made = std::fs::metadata(base.join("n")).unwrap();
        assert_eq!(made.permissions().mode() & 0o777, 0o700);
        // Writable by others: refused.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(prepare_links_dir(&opts(Some(base.clone())), &t)
            .unwrap_err()
            .contains("writable by it alone"));
        // A symlink standing for the directory: refused.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = top.join("via-symlink");
        std::os::unix::fs::symlink(&base, &link).unwrap();
        assert!(prepare_links_dir(&opts(Some(link)), &t).is_err());
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn args_follow_the_sidecar_contract() {
        let opts = test_options();
        let mut t = Target {
            container_id: "abc".into(),
            ifname: "eth0".into(),
            network: "n".into(),
            netns: "/run/netns/x".into(),
            ips: Vec::new(),
            gateways: vec!["10.89.0.1".parse().unwrap(), "fd00:89::1".parse().unwrap()],
        };
        assert_eq!(
            sidecar_args(&opts, &t).join(" "),
            "--socket /run/netd/netd.sock --container-id abc --netns /run/netns/x \
             --outbound 127.0.0.1:15001 --inbound 0.0.0.0:15006 --admin 127.0.0.1:15000 \
             --dns 127.0.0.1:15053 --mark 0x4e44 --drain-timeout 5s"
        );
        // With netd's DNS on the gateways, other names are forwarded there.
        let opts = MeshOptions {
            network_dns: true,
            ..opts
        };
        assert!(sidecar_args(&opts, &t)
            .join(" ")
            .ends_with("--upstream-dns 10.89.0.1:53 [fd00:89::1]:53"));
        t.gateways.clear();
        assert!(!sidecar_args(&opts, &t).contains(&"--upstream-dns".to_string()));
        // Node-local links: the network's directory, the container's addresses, and the
        // inbound ports that must not take a link.
        let opts = MeshOptions {
            local_links: Some("/run/netd/links".into()),
            intercept: InterceptSpec {
                exclude_inbound_ports: vec![9100],
                ..InterceptSpec::default()
            },
            ..opts
        };
        t.ips = vec!["10.89.0.5".parse().unwrap(), "fd00:89::5".parse().unwrap()];
        let dir = links_dir(&opts, &t).unwrap();
        assert_eq!(dir, Path::new("/run/netd/links/n"));
        assert!(sidecar_args(&opts, &t).join(" ").ends_with(&format!(
            "--local-links {} --local-addr 10.89.0.5 --local-addr fd00:89::5 \
             --local-exclude-port 9100",
            dir.display()
        )));
        // Links off: no link arguments.
        let opts = MeshOptions {
            local_links: None,
            ..opts
        };
        assert_eq!(links_dir(&opts, &t), None);
        assert!(!sidecar_args(&opts, &t).contains(&"--local-links".to_string()));
    }
}
