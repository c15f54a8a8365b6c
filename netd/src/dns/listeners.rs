//! The DNS listeners: the `--dns-listen` addresses (fixed for the daemon's life) and, unless
//! `--no-network-dns`, each network's gateway on port 53, started when a network appears and
//! stopped when it goes. A bind failure is logged once per address and is not fatal: the other
//! listeners keep serving, and the address is tried again if its network is re-created.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use netd_dns::{DnsServer, ServerOptions};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{gateway_address, sockets, DnsHandle, DnsOptions, GATEWAY_PORT};
use crate::registry::model::Snapshot;
use crate::registry::Registry;

/// Gateway listener addresses of every network in `snap`.
pub fn gateway_addrs(snap: &Snapshot) -> BTreeSet<SocketAddr> {
    snap.networks
        .values()
        .flat_map(|n| n.subnets.iter())
        .map(|s| SocketAddr::new(gateway_address(s), GATEWAY_PORT))
        .collect()
}

/// One running server.
struct Listener {
    /// The address actually bound (port 0 resolved).
    bound: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Keeps the running listeners equal to the wanted set until `drain`, then stops them all and
/// waits for their in-flight queries.
pub async fn run(
    registry: Arc<Registry>,
    opts: DnsOptions,
    dns: DnsHandle,
    mut drain: watch::Receiver<bool>,
) {
    let mut revisions = registry.revisions();
    let mut running: BTreeMap<SocketAddr, Listener> = BTreeMap::new();
    let mut failed: BTreeSet<SocketAddr> = BTreeSet::new();
    loop {
        revisions.borrow_and_update();
        let mut wanted: BTreeSet<SocketAddr> = opts.listen.iter().copied().collect();
        if opts.network_dns {
            wanted.extend(gateway_addrs(&registry.snapshot()));
        }
        reconcile(&wanted, &mut running, &mut failed, &dns);
        tokio::select! {
            changed = revisions.changed() => if changed.is_err() { break },
            _ = drain.wait_for(|d| *d) => break,
        }
    }
    for (_, listener) in std::mem::take(&mut running) {
        let _ = listener.stop.send(());
        let _ = listener.task.await;
    }
    set_listening(&dns, &running);
}

/// Stops listeners no longer wanted, starts the missing ones.
fn reconcile(
    wanted: &BTreeSet<SocketAddr>,
    running: &mut BTreeMap<SocketAddr, Listener>,
    failed: &mut BTreeSet<SocketAddr>,
    dns: &DnsHandle,
) {
    running.retain(|addr, listener| {
        let keep = wanted.contains(addr) && !listener.task.is_finished();
        if !keep && !listener.task.is_finished() {
            crate::log(&format!("DNS: stopped listening on {addr}"));
        }
        keep
    });
    // Dropping a Listener drops its stop sender, which ends the server (see `serve`).
    failed.retain(|addr| wanted.contains(addr));
    for addr in wanted {
        if running.contains_key(addr) || failed.contains(addr) {
            continue;
        }
        match start(*addr, dns) {
            Ok(listener) => {
                crate::log(&format!("DNS: listening on {} (udp, tcp)", listener.bound));
                running.insert(*addr, listener);
            }
            Err(e) => {
                crate::log(&format!("DNS: cannot listen on {addr}: {e}"));
                failed.insert(*addr);
            }
        }
    }
    set_listening(dns, running);
}

/// Binds `addr` (free-bound, UDP and TCP) and spawns its server.
fn start(addr: SocketAddr, dns: &DnsHandle) -> Result<Listener, String> {
    let (udp, tcp) = sockets::bind_pair(addr).map_err(|e| e.to_string())?;
    let server = DnsServer::from_sockets(
        udp,
        tcp,
        dns.snapshot.clone(),
        dns.forwarder.clone(),
        ServerOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let bound = server.local_addrs().udp;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        // Either a stop message or the sender being dropped ends the server.
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = server.serve(shutdown).await {
            crate::log(&format!("DNS: listener on {bound} ended: {e}"));
        }
    });
    Ok(Listener { bound, stop, task })
}

/// Publishes the bound addresses of the live listeners for status.
fn set_listening(dns: &DnsHandle, running: &BTreeMap<SocketAddr, Listener>) {
    let now: BTreeSet<SocketAddr> = running.values().map(|l| l.bound).collect();
    match dns.listening.lock() {
        Ok(mut set) => *set = now,
        Err(poisoned) => *poisoned.into_inner() = now,
    }
}
