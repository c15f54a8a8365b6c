//! Wiring: binds the listeners, starts the snapshot source, the proxies, the admin server
//! and the DNS server, and drains them. [`start`] is what the binary runs and what tests run
//! in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::balance::{Directory, DirectoryOptions};
use crate::drain::{self, DrainSignal};
use crate::http::{HttpLimits, HttpShared};
use crate::listen::{self, BindError};
use crate::local::{self, LinkDir, LinkStats, LocalConfig, LocalLinks};
use crate::metrics::{Direction, Metrics};
use crate::proxy::{self, ProxyShared};
use crate::snapshot::{self, SnapshotData, SnapshotStore};
use crate::sockopt::ConnectOptions;

/// Where snapshots come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The netd daemon's API socket (watch stream, reconnects with backoff).
    Netd(PathBuf),
    /// A JSON file, read at start and again on SIGHUP.
    File(PathBuf),
    /// Given in-process (tests, embedding); publish more through [`Running::store`].
    Data(SnapshotData),
}

/// A resolved configuration (the command line, checked).
#[derive(Debug, Clone)]
pub struct Config {
    /// Snapshot source.
    pub source: Source,
    /// The container this sidecar serves, if known.
    pub container_id: Option<String>,
    /// Transparent outbound listener.
    pub outbound: SocketAddr,
    /// Transparent inbound listener (`None`: no inbound).
    pub inbound: Option<SocketAddr>,
    /// Admin listener (`None`: no admin).
    pub admin: Option<SocketAddr>,
    /// Discovery DNS listener, UDP and TCP (`None`: no DNS).
    pub dns: Option<SocketAddr>,
    /// Where DNS forwards names it does not own.
    pub upstream_dns: Vec<SocketAddr>,
    /// Balancer policies.
    pub balancers: DirectoryOptions,
    /// `SO_MARK` of upstream sockets, and connect timeout.
    pub connect: ConnectOptions,
    /// JSON access log per request.
    pub access_log: bool,
    /// Longest wait for in-flight work on shutdown.
    pub drain_timeout: Duration,
    /// Longest wait for a client's first bytes.
    pub detect_timeout: Duration,
    /// Opaque TCP connections with no byte either way for this long are closed.
    pub tcp_idle_timeout: Duration,
    /// Outbound connections that were not redirected and name no service go here.
    pub default_target: Option<SocketAddr>,
    /// Inbound connections that were not redirected go here.
    pub inbound_target: Option<SocketAddr>,
    /// HTTP server limits.
    pub limits: HttpLimits,
    /// Node-local links (see [`crate::local`]); `None`: off.
    pub local: Option<LocalConfig>,
}

impl Config {
    /// Defaults around a snapshot source, with every listener on an ephemeral loopback port
    /// and DNS off (tests).
    pub fn loopback(source: Source) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            source,
            container_id: None,
            outbound: any,
            inbound: Some(any),
            admin: Some(any),
            dns: None,
            upstream_dns: Vec::new(),
            balancers: DirectoryOptions::default(),
            connect: ConnectOptions::default(),
            access_log: false,
            drain_timeout: Duration::from_secs(5),
            detect_timeout: Duration::from_secs(1),
            tcp_idle_timeout: crate::tcp::DEFAULT_IDLE_TIMEOUT,
            default_target: None,
            inbound_target: None,
            limits: HttpLimits::default(),
            local: None,
        }
    }
}

/// A listener could not be bound or a source not read.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A TCP listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The snapshot file is unusable.
    #[error(transparent)]
    Snapshot(#[from] snapshot::file::FileError),
    /// The DNS server could not start.
    #[error(transparent)]
    Dns(#[from] netd_dns::ServerError),
}

/// Addresses actually bound (ports resolved).
#[derive(Debug, Clone)]
pub struct Addrs {
    /// Outbound listener.
    pub outbound: SocketAddr,
    /// Inbound listener.
    pub inbound: Option<SocketAddr>,
    /// Admin listener.
    pub admin: Option<SocketAddr>,
    /// DNS listeners.
    pub dns: Option<netd_dns::ListenAddrs>,
    /// IPv6 companions bound next to the listeners asked for (see [`crate::listen`]).
    pub companions: Vec<SocketAddr>,
}

/// A started sidecar.
#[derive(Debug)]
pub struct Running {
    /// Bound addresses.
    pub addrs: Addrs,
    /// The snapshot store; publishing into it reconfigures the sidecar at once.
    pub store: SnapshotStore,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    signal: DrainSignal,
    tracker: TaskTracker,
    drain_timeout: Duration,
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests and connections finish (HTTP connections
    /// close after their current requests), and returns whether everything finished within
    /// the drain timeout. Anything left is dropped with the runtime.
    pub async fn shutdown(self) -> bool {
        self.signal.drain();
        self.tracker.close();
        let drained = tokio::time::timeout(self.drain_timeout, self.tracker.wait())
            .await
            .is_ok();
        for task in &self.background {
            task.abort();
        }
        drained
    }

    /// Connection tasks alive right now (accepted, not finished).
    pub fn connections(&self) -> usize {
        self.tracker.len()
    }
}

/// The first listener (the address asked for, maybe in its dual-stack form) and the rest
/// (IPv6 companions).
fn split(mut ls: Vec<TcpListener>) -> (TcpListener, Vec<TcpListener>) {
    let first = ls.remove(0);
    (first, ls)
}

/// Binds everything and starts serving. Returns once every listener is bound; readiness
/// (`/ready`) also needs a snapshot, immediate for file and in-process sources.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let store = SnapshotStore::new();
    let metrics = Arc::new(Metrics::new());
    let (signal, drain) = drain::channel();
    let tracker = TaskTracker::new();
    let mut background = Vec::new();

    match &config.source {
        Source::Data(data) => store.publish(data.clone()),
        Source::File(path) => {
            store.publish(snapshot::file::load(path)?);
            background.push(tokio::spawn(reload_on_sighup(path.clone(), store.clone())));
        }
        Source::Netd(socket) => {
            background.push(tokio::spawn(snapshot::netd::follow(
                socket.clone(),
                store.clone(),
            )));
        }
    }

    let (outbound_listener, outbound_extra) = split(listen::bind_tcp("outbound", config.outbound)?);
    let (inbound_listener, inbound_extra) = match config.inbound {
        Some(a) => {
            let (l, extra) = split(listen::bind_tcp("inbound", a)?);
            (Some(l), extra)
        }
        None => (None, Vec::new()),
    };
    let admin_listener = match config.admin {
        Some(a) => Some(TcpListener::bind(a).await.map_err(|source| BindError {
            what: "admin",
            addr: a,
            source,
        })?),
        None => None,
    };
    let mut companions = Vec::new();
    let dns = match config.dns {
        Some(a) => {
            let (addrs, extra, task) = crate::dns::start(
                a,
                config.upstream_dns.clone(),
                config.connect.mark,
                store.clone(),
                drain.clone(),
            )
            .await?;
            background.push(task);
            companions.extend(extra);
            Some(addrs)
        }
        None => None,
    };
    let local = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
    companions.extend(
        outbound_extra
            .iter()
            .chain(&inbound_extra)
            .filter_map(|l| l.local_addr().ok()),
    );
    let addrs = Addrs {
        outbound: local(&outbound_listener, config.outbound),
        inbound: inbound_listener
            .as_ref()
            .zip(config.inbound)
            .map(|(l, a)| local(l, a)),
        admin: admin_listener
            .as_ref()
            .zip(config.admin)
            .map(|(l, a)| local(l, a)),
        dns,
        companions,
    };

    // Node-local links: the outbound side tries them before TCP; the inbound side listens
    // for this container's addresses (only when there is an inbound listener to stand for).
    let mut link_sockets = Vec::new();
    let links: Option<&'static LocalLinks> = match &config.local {
        // A link directory that cannot be used costs the links, not the sidecar: connections
        // go over TCP as between nodes.
        Some(lc) => match LinkDir::open(&lc.dir) {
            Ok(dir) => {
                let stats = Arc::new(LinkStats::default());
                metrics.set_links(stats.clone());
                let dir = Arc::new(dir);
                if addrs.inbound.is_some() {
                    for ip in &lc.addrs {
                        match local::bind(&dir, *ip) {
                            Ok(bound) => link_sockets.push(bound),
                            Err(e) => tracing::warn!(
                                path = %dir.display_path(*ip).display(), error = %e,
                                "cannot listen for node-local links to this address; peers use TCP"
                            ),
                        }
                    }
                }
                // One per process, for its whole life (connect options are `Copy`).
                Some(Box::leak(Box::new(LocalLinks::new(lc.clone(), dir, stats))))
            }
            Err(e) => {
                tracing::warn!(dir = %lc.dir.display(), error = %e, "node-local links off: cannot open their directory");
                None
            }
        },
        None => None,
    };
    let shared = |direction| {
        let mut connect = config.connect;
        let mut balancers = config.balancers.clone();
        if direction == Direction::Outbound {
            connect.local = links;
            balancers.connect.local = links;
        }
        let directory = Arc::new(Directory::new(
            balancers,
            metrics.clone(),
            direction,
            store.clone(),
        ));
        Arc::new(ProxyShared {
            direction,
            http: HttpShared {
                store: store.clone(),
                directory,
                metrics: metrics.clone(),
                access_log: config.access_log,
                limits: config.limits,
            },
            connect,
            detect_timeout: config.detect_timeout,
            tcp_idle_timeout: config.tcp_idle_timeout,
            default_target: match direction {
                Direction::Outbound => config.default_target,
                Direction::Inbound => config.inbound_target,
            },
        })
    };
    let outbound = shared(Direction::Outbound);
    for l in std::iter::once(outbound_listener).chain(outbound_extra) {
        background.push(tokio::spawn(proxy::run(
            l,
            outbound.clone(),
            drain.clone(),
            tracker.clone(),
        )));
    }
    let inbound = shared(Direction::Inbound);
    for l in inbound_listener.into_iter().chain(inbound_extra) {
        background.push(tokio::spawn(proxy::run(
            l,
            inbound.clone(),
            drain.clone(),
            tracker.clone(),
        )));
    }
    if let Some(links) = links {
        let side = proxy::LinkSide {
            own: links.config().addrs.iter().copied().collect(),
            exclude_ports: links.config().exclude_ports.iter().copied().collect(),
            listener: addrs.inbound,
            stats: links.stats().clone(),
        };
        for socket in link_sockets {
            background.push(tokio::spawn(proxy::run_links(
                socket,
                side.clone(),
                inbound.clone(),
                drain.clone(),
                tracker.clone(),
            )));
        }
    }
    let listening = Arc::new(AtomicBool::new(false));
    if let Some(l) = admin_listener {
        let state = AdminState {
            metrics: metrics.clone(),
            store: store.clone(),
            listening: listening.clone(),
            drain: drain.clone(),
        };
        background.push(tokio::spawn(admin::run(
            l,
            state,
            drain.clone(),
            TaskTracker::new(),
        )));
    }
    listening.store(true, Ordering::Release);
    Ok(Running {
        addrs,
        store,
        metrics,
        signal,
        tracker,
        drain_timeout: config.drain_timeout,
        background,
    })
}

async fn reload_on_sighup(path: PathBuf, store: SnapshotStore) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match snapshot::file::load(&path) {
            Ok(data) => {
                store.publish(data);
                tracing::info!(path = %path.display(), "snapshot reloaded");
            }
            Err(e) => tracing::warn!(error = %e, "snapshot reload failed; keeping the last one"),
        }
    }
}
