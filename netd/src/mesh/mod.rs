//! The mesh on the node: one `netd-sidecar` per container attached to a network with
//! `mesh: true`, with transparent interception in the container's namespace.
//!
//! [`start`] runs a reconciler that follows the registry's revisions (the same feed as the
//! VIP task): every attachment on a meshed network with a namespace path gets a supervisor
//! task ([`supervisor`]) that installs `table inet netd-mesh` in the namespace
//! ([`netd_cni::nat::intercept`]), starts the sidecar (which enters the namespace itself,
//! `--netns`) and restarts it with capped exponential backoff; an attachment that goes (CNI
//! DEL, liveness sweep, network no longer meshed) has its sidecar stopped (SIGTERM, SIGKILL
//! after a bound) and its rules removed. An attachment whose namespace or addresses change
//! gets a new sidecar once the old one is gone.
//!
//! Restarts: sidecars outlive a netd that crashes (own process group, no parent-death
//! signal), so the mesh keeps serving; the next netd adopts them through their pidfiles in
//! [`MeshOptions::state_dir`] ([`process`]) instead of starting duplicates, and stops those
//! whose attachment is gone. A netd that stops normally (SIGTERM, ctrl-c) leaves its sidecars
//! serving the same way, so a restart or an upgrade of netd never interrupts meshed traffic;
//! with [`MeshOptions::stop_sidecars_on_exit`] it stops every sidecar and removes every rule
//! first: nothing is left behind.
//!
//! [`probe`] drives the mesh like an unmodified application (demo and tests).
//!
//! Not here: the sidecar itself (crate `netd-sidecar`), the sidecar's snapshot (it reads the
//! API), and interception's layout (`netd_cni::nat::intercept`).

pub mod probe;
pub mod process;
pub mod status;
pub mod supervisor;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::process::{PidFile, Proc};
use self::status::SidecarStatus;
use self::supervisor::{Order, Shared, Target};
use crate::api::drained;
use crate::registry::model::Snapshot;
use crate::registry::Registry;

/// First restart delay after a sidecar exits.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Restart delays double up to this.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Default `--drain-timeout` given to sidecars.
pub const DEFAULT_SIDECAR_DRAIN: Duration = Duration::from_secs(5);
/// How much longer than its drain timeout a sidecar gets after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// The sidecar's admin listener (`--admin`), inside the container's namespace.
pub const SIDECAR_ADMIN: &str = "127.0.0.1:15000";
/// File name of the sidecar binary.
pub const SIDECAR_BIN: &str = "netd-sidecar";

/// Settings of the mesh supervisor.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// The sidecar program.
    pub sidecar_bin: PathBuf,
    /// netd's API socket, passed to sidecars (`--socket`).
    pub api_socket: PathBuf,
    /// Where sidecar pidfiles live (one netd per directory).
    pub state_dir: PathBuf,
    /// The sidecars' drain timeout (`--drain-timeout`).
    pub sidecar_drain: Duration,
    /// First restart delay.
    pub backoff_min: Duration,
    /// Largest restart delay.
    pub backoff_max: Duration,
    /// Interception settings for every sidecar (ports, mark, exclusions); each attachment's
    /// addresses are filled in per sidecar.
    pub intercept: netd_cni::nat::intercept::InterceptSpec,
    /// Whether a netd that stops normally stops its sidecars and removes their rules (else
    /// they keep serving, to be adopted by the next netd).
    pub stop_sidecars_on_exit: bool,
    /// netd answers DNS on each network's gateway: sidecars forward the names they do not
    /// own there (`--upstream-dns <gateway>:53`), since interception sends the container's
    /// port-53 traffic to its sidecar. Without it sidecars answer only the mesh's names.
    pub network_dns: bool,
    /// Node-local links (root-only directory; `None`: off): sidecars of one network on this
    /// node reach each other over unix streams in `<dir>/<network>/` instead of TCP (see
    /// `netd_sidecar::local`).
    pub local_links: Option<PathBuf>,
}

impl MeshOptions {
    /// How long a sidecar gets between SIGTERM and SIGKILL.
    pub fn stop_bound(&self) -> Duration {
        self.sidecar_drain + STOP_GRACE
    }
}

/// The default sidecar program: `netd-sidecar` next to this executable, else the first on
/// `PATH`, else the bare name (starting it then fails visibly in the sidecar's status).
pub fn default_sidecar_bin() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(SIDECAR_BIN))
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(SIDECAR_BIN))
                .find(|p| p.is_file())
        })
    };
    beside
        .or_else(on_path)
        .unwrap_or_else(|| PathBuf::from(SIDECAR_BIN))
}

/// A view of the supervised sidecars, for the API.
#[derive(Debug, Clone, Default)]
pub struct MeshHandle {
    sidecars: Arc<Mutex<BTreeMap<String, Shared>>>,
}

impl MeshHandle {
    /// Every supervised sidecar, by attachment key.
    pub fn sidecars(&self) -> Vec<SidecarStatus> {
        let Ok(map) = self.sidecars.lock() else {
            return Vec::new();
        };
        map.values()
            .filter_map(|s| s.lock().ok().map(|s| s.clone()))
            .collect()
    }
}

/// Starts the mesh reconciler; it ends when `drain` turns true, after every sidecar is left
/// serving or (with [`MeshOptions::stop_sidecars_on_exit`]) stopped and its rules removed.
pub fn start(
    registry: Arc<Registry>,
    opts: MeshOptions,
    drain: watch::Receiver<bool>,
) -> (MeshHandle, JoinHandle<()>) {
    let handle = MeshHandle::default();
    let task = tokio::spawn(run(registry, Arc::new(opts), handle.clone(), drain));
    (handle, task)
}

/// The sidecars the registry asks for: attachments on meshed networks with a namespace path.
pub fn targets(snap: &Snapshot) -> BTreeMap<String, Target> {
    snap.attachments
        .values()
        .filter(|a| a.netns.starts_with('/'))
        .filter(|a| snap.networks.get(&a.network).is_some_and(|n| n.mesh))
        .map(|a| {
            let t = Target {
                container_id: a.container_id.clone(),
                ifname: a.ifname.clone(),
                network: a.network.clone(),
                netns: a.netns.clone(),
                ips: a.ips.clone(),
                gateways: snap
                    .networks
                    .get(&a.network)
                    .map(|n| n.subnets.iter().map(crate::dns::gateway_address).collect())
                    .unwrap_or_default(),
            };
            (a.key(), t)
        })
        .collect()
}

/// A supervisor task and how to stop it.
struct Running {
    target: Target,
    stop: watch::Sender<Order>,
    task: JoinHandle<()>,
}

async fn run(
    registry: Arc<Registry>,
    opts: Arc<MeshOptions>,
    handle: MeshHandle,
    mut drain: watch::Receiver<bool>,
) {
    if let Some(dir) = &opts.local_links {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let made = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .and_then(|()| {
                // An existing directory keeps its mode: make sure only root can enter it (a
                // symlink is not followed; each sidecar's directory is checked before use).
                if std::fs::symlink_metadata(dir)?.is_dir() {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                } else {
                    Err(std::io::Error::other("not a directory"))
                }
            });
        if let Err(e) = made {
            crate::log(&format!(
                "mesh: cannot create {}: {e} (sidecars will fall back to TCP)",
                dir.display()
            ));
        }
    }
    if let Err(e) = std::fs::create_dir_all(&opts.state_dir) {
        crate::log(&format!(
            "mesh: cannot create {}: {e} (sidecars will not be adopted after a restart)",
            opts.state_dir.display()
        ));
    }
    let mut revisions = registry.revisions();
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut stopping: Vec<JoinHandle<()>> = Vec::new();
    let mut first = true;
    loop {
        revisions.borrow_and_update();
        let want = targets(&registry.snapshot());
        if first {
            stopping.extend(stop_orphans(&opts, &want));
            first = false;
        }
        let mut replaced: HashMap<String, JoinHandle<()>> = HashMap::new();
        let gone: Vec<String> = running
            .iter()
            .filter(|(k, r)| want.get(*k) != Some(&r.target))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(r) = running.remove(&key) {
                let _ = r.stop.send(Order::Stop);
                if want.contains_key(&key) {
                    replaced.insert(key, r.task);
                } else {
                    stopping.push(r.task);
                }
            }
        }
        for (key, t) in &want {
            if running.contains_key(key) {
                continue;
            }
            let status = supervisor::new_status(t);
            let (stop, stop_rx) = watch::channel(Order::Supervise);
            let task = tokio::spawn(supervisor::supervise(
                t.clone(),
                opts.clone(),
                status.clone(),
                stop_rx,
                replaced.remove(key),
            ));
            running.insert(
                key.clone(),
                Running {
                    target: t.clone(),
                    stop,
                    task,
                },
            );
            if let Ok(mut map) = handle.sidecars.lock() {
                map.insert(key.clone(), status);
            }
        }
        if let Ok(mut map) = handle.sidecars.lock() {
            map.retain(|k, _| running.contains_key(k));
        }
        stopping.retain(|t| !t.is_finished());
        tokio::select! {
            changed = revisions.changed() => if changed.is_err() { break },
            _ = drained(&mut drain) => break,
        }
    }
    // Shutdown: leave every sidecar serving, or stop them all at once; then wait for all of
    // their supervisors.
    let order = if opts.stop_sidecars_on_exit {
        Order::Stop
    } else {
        Order::Leave
    };
    for r in running.values() {
        let _ = r.stop.send(order);
    }
    for (_, r) in running {
        let _ = r.task.await;
    }
    for t in stopping {
        let _ = t.await;
    }
    if let Ok(mut map) = handle.sidecars.lock() {
        map.clear();
    }
}

/// Stops the sidecars an earlier netd left running whose attachment is no longer meshed
/// (or whose namespace changed), and removes their rules and pidfiles.
fn stop_orphans(opts: &Arc<MeshOptions>, want: &BTreeMap<String, Target>) -> Vec<JoinHandle<()>> {
    let Ok(dir) = std::fs::read_dir(&opts.state_dir) else {
        return Vec::new();
    };
    let mut tasks = Vec::new();
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pid") {
            continue;
        }
        let Some(rec) = PidFile::read(&path) else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let key = format!("{}/{}", rec.container_id, rec.ifname);
        if want.get(&key).is_some_and(|t| t.netns == rec.netns) {
            continue; // its supervisor adopts it
        }
        let opts = opts.clone();
        tasks.push(tokio::spawn(stop_orphan(rec, path, opts)));
    }
    tasks
}

async fn stop_orphan(rec: PidFile, path: PathBuf, opts: Arc<MeshOptions>) {
    let key = format!("{}/{}", rec.container_id, rec.ifname);
    if let Some(mut p) = Proc::adopt(&rec) {
        let how = p.terminate(opts.stop_bound()).await;
        crate::log(&format!(
            "sidecar {key}: its attachment is gone; stopped the process left by an earlier netd ({how})"
        ));
    }
    if let Err(e) = supervisor::remove_rules(&rec.netns).await {
        crate::log(&format!("sidecar {key}: cannot remove interception: {e}"));
    }
    // The attachment may have come back in another namespace, and its new sidecar rewritten
    // the pidfile meanwhile: remove only the orphan's.
    if PidFile::read(&path).is_some_and(|now| now == rec) {
        let _ = std::fs::remove_file(&path);
    }
}
