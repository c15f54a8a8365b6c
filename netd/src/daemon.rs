//! `netd up`: startup, task supervision and graceful shutdown of the node daemon.
//!
//! Startup, in order: refuse if another daemon answers on the socket (remove a stale socket
//! file), open the store (embedded: its file lock refuses a second daemon on the same data
//! directory; etcd: a member must answer), load the registry, create the default network and
//! write conflists, bind the API socket (mode 0660, group `netd` when it exists), start the
//! background tasks (lease expiry, health checks, attachment liveness, conflists of networks
//! as they come and go, DNS names and listeners, service VIPs, sidecars) and the API server,
//! print one line. On SIGTERM or ctrl-c: stop accepting, let in-flight requests finish
//! (bounded), stop the background tasks (sidecars are stopped and their rules removed), remove
//! the socket.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netd_config::netd::DEFAULT_DOMAIN;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::api::peer::Access;
use crate::api::{self, ApiState};
use crate::dns::{self, DnsOptions};
use crate::mesh::{self, MeshOptions};
use crate::networks::Networks;
use crate::registry::leases;
use crate::registry::store::{self, StoreError};
use crate::registry::{Registry, RegistryConfig, RegistryError};
use crate::{health, liveness, vip};

/// Settings of `netd up`.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// API socket path.
    pub socket: PathBuf,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// `etcd://...` to share the registry through etcd; `None`: the embedded store.
    pub store: Option<String>,
    /// Where network conflists are written.
    pub cni_conf_dir: PathBuf,
    /// Range service VIPs come from.
    pub vip_range: IpNet,
    /// Node name (default: the host name).
    pub node: Option<String>,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Health-check probes in flight at once.
    pub health_max_in_flight: usize,
    /// How often attachments are checked for a vanished network namespace.
    pub netns_sweep_interval: Duration,
    /// DNS listeners and upstreams.
    pub dns: DnsOptions,
    /// Program service VIPs (nf_tables) in the daemon's network namespace.
    pub vip: bool,
    /// Supervise sidecars for meshed networks (`None`: `--no-mesh`).
    pub mesh: Option<MeshOptions>,
}

/// The daemon could not start, or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon answers on the socket.
    #[error("another netd is already running on {socket}: stop it first, or give this one its own --socket")]
    AlreadyRunning {
        /// Socket path.
        socket: String,
    },
    /// Something that is not a socket sits at the socket path.
    #[error("{path} exists and is not a socket: remove it or choose another --socket")]
    NotASocket {
        /// Path.
        path: String,
    },
    /// The socket could not be prepared or bound.
    #[error("cannot listen on {path}: {source}")]
    Socket {
        /// Path.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// Opening the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Loading or initialising the registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Installing signal handlers failed.
    #[error("cannot install signal handlers: {0}")]
    Signal(io::Error),
}

/// Runs the daemon until SIGTERM or ctrl-c.
pub async fn run(opts: DaemonOptions) -> Result<(), DaemonError> {
    let started = Instant::now();
    prepare_socket_path(&opts.socket).await?;
    let node = opts.node.clone().unwrap_or_else(host_name);
    let store = store::open(opts.store.as_deref(), &opts.data_dir, &node).await?;
    let store_path = store.info().location;
    let config = RegistryConfig {
        node,
        vip_range: opts.vip_range,
        domain: DEFAULT_DOMAIN.to_string(),
    };
    let registry = Registry::open(store, config).await?;
    let networks = Networks::new(registry.clone(), opts.cni_conf_dir.clone());
    // Another node sharing the store may create the default network at the same time.
    registry.retry_conflicts(|| networks.reconcile()).await?;

    let access = Access::for_this_process();
    let listener = bind_socket(&opts.socket, &access)?;
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;

    let (drain_tx, drain_rx) = watch::channel(false);
    let (dns, dns_tasks) = dns::start(registry.clone(), opts.dns.clone(), drain_rx.clone());
    let (mesh, sidecars) = match opts.mesh.clone() {
        Some(m) => {
            let (handle, task) = mesh::start(registry.clone(), m, drain_rx.clone());
            (Some(handle), Some(task))
        }
        None => (None, None),
    };
    let conflists = tokio::spawn(networks.clone().follow(drain_rx.clone()));
    let state = Arc::new(ApiState {
        registry: registry.clone(),
        networks,
        socket: opts.socket.clone(),
        started,
        drain: drain_rx.clone(),
        access,
        dns,
        mesh,
    });
    let server = tokio::spawn(api::serve(listener, state, opts.drain_timeout));
    let expiry = tokio::spawn(leases::run_expiry(registry.clone(), drain_rx.clone()));
    let checks = tokio::spawn(health::run(
        registry.clone(),
        opts.health_max_in_flight,
        drain_rx.clone(),
    ));
    let sweep = tokio::spawn(liveness::run(
        registry.clone(),
        opts.netns_sweep_interval,
        drain_rx.clone(),
    ));
    let vips = opts.vip.then(|| vip::start(registry.clone(), drain_rx));

    let snap = registry.snapshot();
    let nets: Vec<String> = snap
        .networks
        .values()
        .map(|n| {
            let subnets: Vec<String> = n.subnets.iter().map(ToString::to_string).collect();
            format!("{} ({})", n.name, subnets.join(", "))
        })
        .collect();
    println!(
        "netd {} up: api {}, store {store_path} (revision {}), networks: {}",
        env!("CARGO_PKG_VERSION"),
        opts.socket.display(),
        snap.revision,
        if nets.is_empty() {
            "none".to_string()
        } else {
            nets.join(", ")
        },
    );

    tokio::select! {
        _ = term.recv() => crate::log("SIGTERM: shutting down"),
        _ = int.recv() => crate::log("interrupt: shutting down"),
    }
    let _ = drain_tx.send(true);
    match server.await {
        Ok(0) => {}
        Ok(n) => crate::log(&format!(
            "{n} connection(s) still busy after {:?}; closing them",
            opts.drain_timeout
        )),
        Err(e) => crate::log(&format!("API server task failed: {e}")),
    }
    let _ = expiry.await;
    let _ = conflists.await;
    let _ = checks.await;
    let _ = sweep.await;
    if let Some(vips) = vips {
        let _ = vips.await;
    }
    if let Some(sidecars) = sidecars {
        let _ = sidecars.await;
    }
    for task in dns_tasks {
        let _ = task.await;
    }
    let _ = std::fs::remove_file(&opts.socket);
    crate::log("stopped");
    Ok(())
}

/// Refuses when a daemon answers on `path`, removes a stale socket file, creates the parent
/// directory.
async fn prepare_socket_path(path: &Path) -> Result<(), DaemonError> {
    let shown = path.display().to_string();
    let sock_err = |source| DaemonError::Socket {
        path: shown.clone(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(md) if !md.file_type().is_socket() => {
            return Err(DaemonError::NotASocket { path: shown });
        }
        Ok(_) => match UnixStream::connect(path).await {
            Ok(_) => return Err(DaemonError::AlreadyRunning { socket: shown }),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                crate::log(&format!("removing stale socket {shown}"));
                std::fs::remove_file(path).map_err(sock_err)?;
            }
            Err(e) => return Err(sock_err(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(sock_err(e)),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(sock_err)?;
    }
    Ok(())
}

/// Binds the socket with mode 0660 (never wider, not even for an instant) and the access
/// group.
fn bind_socket(path: &Path, access: &Access) -> Result<UnixListener, DaemonError> {
    let err = |source| DaemonError::Socket {
        path: path.display().to_string(),
        source,
    };
    // SAFETY: umask only swaps the process's file-creation mask; no other thread creates
    // files while the daemon starts up, and the old mask is restored right after bind.
    let old = unsafe { libc::umask(0o117) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    if access.uses_netd_group() {
        std::os::unix::fs::chown(path, None, Some(access.gid)).map_err(err)?;
    }
    Ok(listener)
}

/// The host name, for the default node name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
