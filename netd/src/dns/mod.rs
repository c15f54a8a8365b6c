//! netd's DNS for its networks: wires the `netd-dns` server to the registry.
//!
//! - [`names`]: registry snapshot → DNS snapshot (pure).
//! - [`listeners`]: which addresses answer (the `--dns-listen` ones and each network's
//!   gateway on port 53), started and stopped as networks come and go.
//! - [`sockets`]: free-bound UDP/TCP sockets for gateway addresses that are not up yet.
//! - [`resolv`]: the host's resolvers, the default upstreams.
//!
//! One [`SnapshotHandle`] and one [`Forwarder`] (upstreams and cache) are shared by every
//! listener. The names task rebuilds the snapshot on every registry revision, at most once per
//! [`REBUILD_INTERVAL`] (longer for large registries, see [`REBUILD_SHARE`]), so a burst of
//! registrations costs one rebuild. Answers themselves are
//! `netd-dns`'s business.

pub mod listeners;
pub mod names;
pub mod resolv;
pub mod sockets;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use netd_config::netd::DnsStatus;
use netd_dns::{ForwardOptions, Forwarder, SnapshotHandle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::registry::Registry;

/// Port of the gateway listeners (what containers' resolv.conf implies).
pub const GATEWAY_PORT: u16 = 53;
/// Search domain handed to containers.
pub const SEARCH_DOMAIN: &str = netd_config::netd::DEFAULT_DOMAIN;
/// Shortest time between two snapshot rebuilds.
pub const REBUILD_INTERVAL: Duration = Duration::from_millis(20);
/// Between two rebuilds, wait at least this many times the last one's duration (so rebuilds
/// take at most about 1/8 of a core during a burst of changes).
pub const REBUILD_SHARE: u32 = 8;

/// DNS settings of `netd up`.
#[derive(Debug, Clone, Default)]
pub struct DnsOptions {
    /// Extra listeners (UDP and TCP), e.g. `127.0.0.1:5353`.
    pub listen: Vec<SocketAddr>,
    /// Listen on each network's gateway address, port 53.
    pub network_dns: bool,
    /// Upstream resolvers; `None`: the nameservers of `/etc/resolv.conf`.
    pub upstreams: Option<Vec<SocketAddr>>,
}

/// The gateway of a subnet: its first host address (what netd-cni puts on the bridge).
pub fn gateway_address(subnet: &IpNet) -> IpAddr {
    match subnet {
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()).wrapping_add(1)).into()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()).wrapping_add(1)).into()),
    }
}

/// What the rest of the daemon sees of DNS: the shared snapshot, forwarder and live listeners.
#[derive(Clone)]
pub struct DnsHandle {
    snapshot: SnapshotHandle,
    forwarder: Arc<Forwarder>,
    listening: Arc<Mutex<BTreeSet<SocketAddr>>>,
}

impl DnsHandle {
    /// For `GET /v1/status`.
    pub fn status(&self) -> DnsStatus {
        let listening = match self.listening.lock() {
            Ok(set) => set.iter().map(ToString::to_string).collect(),
            Err(poisoned) => poisoned.get_ref().iter().map(ToString::to_string).collect(),
        };
        DnsStatus {
            listeners: listening,
            upstreams: self
                .forwarder
                .upstreams()
                .iter()
                .map(ToString::to_string)
                .collect(),
            names: self.snapshot.load().name_count(),
        }
    }
}

/// Starts the names task and the listeners task; both end when `drain` turns true (listeners
/// finish in-flight queries first).
pub fn start(
    registry: Arc<Registry>,
    opts: DnsOptions,
    drain: watch::Receiver<bool>,
) -> (DnsHandle, Vec<JoinHandle<()>>) {
    let upstreams = opts.upstreams.clone().unwrap_or_else(|| {
        let own = own_listeners(&registry, &opts);
        let text = std::fs::read_to_string(resolv::RESOLV_CONF).unwrap_or_else(|e| {
            crate::log(&format!(
                "DNS: cannot read {}: {e}; names outside netd.local will fail (use --dns-upstream)",
                resolv::RESOLV_CONF
            ));
            String::new()
        });
        resolv::default_upstreams(&text, &own)
    });
    if upstreams.is_empty() {
        crate::log("DNS: no upstream resolvers; names outside netd's zones get SERVFAIL");
    }
    let handle = DnsHandle {
        snapshot: SnapshotHandle::default(),
        forwarder: Arc::new(Forwarder::new(upstreams, ForwardOptions::default())),
        listening: Arc::default(),
    };
    let names = tokio::spawn(follow_names(
        registry.clone(),
        handle.snapshot.clone(),
        drain.clone(),
    ));
    let listeners = tokio::spawn(listeners::run(registry, opts, handle.clone(), drain));
    (handle, vec![names, listeners])
}

/// Every address netd will listen on at startup (to keep them out of the upstreams).
fn own_listeners(registry: &Registry, opts: &DnsOptions) -> Vec<SocketAddr> {
    let mut own = opts.listen.clone();
    if opts.network_dns {
        own.extend(listeners::gateway_addrs(&registry.snapshot()));
    }
    own
}

/// Rebuilds and publishes the DNS snapshot on every registry revision, on a blocking thread
/// (a rebuild of thousands of names takes milliseconds), at most once per
/// [`REBUILD_INTERVAL`], or per [`REBUILD_SHARE`] times the last rebuild's duration when that
/// is longer: a change after a quiet spell is answered within one rebuild, and a burst of
/// registrations costs a bounded share of a core. Logs each shadowed or rejected name once.
async fn follow_names(
    registry: Arc<Registry>,
    snapshot: SnapshotHandle,
    mut drain: watch::Receiver<bool>,
) {
    let mut revisions = registry.revisions();
    let mut reported = names::Reported::default();
    let cfg = registry.config().clone();
    loop {
        revisions.borrow_and_update();
        let snap = registry.snapshot();
        let (domain, range) = (cfg.domain.clone(), cfg.vip_range);
        let started = std::time::Instant::now();
        let built = tokio::task::spawn_blocking(move || names::build(&snap, &domain, range)).await;
        let took = started.elapsed();
        match built {
            Ok(Ok((next, skipped))) => {
                for line in reported.fresh(next.shadowed(), &skipped) {
                    crate::log(&line);
                }
                snapshot.store(next);
            }
            Ok(Err(e)) => crate::log(&format!("DNS: cannot build names: {e}")),
            Err(e) => crate::log(&format!("DNS: name rebuild failed: {e}")),
        }
        let pause = REBUILD_INTERVAL.max(took * REBUILD_SHARE);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = drain.wait_for(|d| *d) => return,
        }
        tokio::select! {
            changed = revisions.changed() => if changed.is_err() { return },
            _ = drain.wait_for(|d| *d) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_is_the_first_host_address() {
        let v4: IpNet = "10.89.0.0/24".parse().unwrap();
        let v6: IpNet = "fd00:89::/64".parse().unwrap();
        assert_eq!(gateway_address(&v4).to_string(), "10.89.0.1");
        assert_eq!(gateway_address(&v6).to_string(), "fd00:89::1");
    }
}
