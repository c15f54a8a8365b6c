//! Service VIPs: keeps the host's nf_tables VIP table (`table inet netd-vip`, see
//! [`netd_cni::nat::vip`]) in step with the registry.
//!
//! Every service port `VIP:port` is balanced per connection, at random in proportion to the
//! endpoints' weights, across the service's endpoints whose health is not `unhealthy` (weight
//! 0 takes no new connections). A port with a `host_port` is also published on that port of
//! every local address of the host. The task
//! follows registry revisions: after a change it waits [`DEBOUNCE`] so a burst of changes costs
//! one transaction, builds the desired state from the snapshot and, when it differs from the
//! last one applied, syncs it on a blocking thread (the nf_tables layer is synchronous). netd
//! runs in the host network namespace, so that is the namespace programmed. Service protocols
//! (`tcp`, `http`, `grpc`) are all TCP at L4. A failed sync is retried after [`RETRY`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use netd_cni::nat::vip::{Desired, Target, VipNat, VipPort, L4};
use netd_config::netd::Health;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::registry::model::Snapshot;
use crate::registry::Registry;

/// Wait after a registry change before syncing (coalesces bursts).
pub const DEBOUNCE: Duration = Duration::from_millis(20);
/// Wait before retrying a failed sync.
pub const RETRY: Duration = Duration::from_secs(1);

/// The desired VIP state of a registry snapshot.
pub fn desired(snap: &Snapshot) -> Desired {
    let mut d = Desired::new();
    for svc in snap.services.values() {
        let eps: Vec<(SocketAddr, u32)> = snap
            .endpoints_of(&svc.key())
            .filter(|e| e.health != Health::Unhealthy && e.weight > 0)
            .filter(|e| e.address.is_ipv4() == svc.vip.is_ipv4())
            .map(|e| (SocketAddr::new(e.address, e.port), e.weight))
            .collect();
        for p in &svc.ports {
            let key = VipPort {
                vip: svc.vip,
                proto: L4::Tcp,
                port: p.port,
            };
            let target = Target {
                endpoints: eps.clone(),
                host_port: p.host_port,
            };
            d.insert(key, target);
        }
    }
    d
}

/// Starts the VIP task; it ends when `drain` turns true (the table is left in place, so VIPs
/// keep working across a daemon restart; the next start rebuilds it).
pub fn start(registry: Arc<Registry>, drain: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(run(registry, drain))
}

async fn run(registry: Arc<Registry>, mut drain: watch::Receiver<bool>) {
    let mut revisions = registry.revisions();
    let mut nat: Option<VipNat> = None;
    let mut applied: Option<Desired> = None;
    loop {
        revisions.borrow_and_update();
        let want = desired(&registry.snapshot());
        let mut ok = true;
        if applied.is_none() && want.is_empty() && nat.is_none() {
            // Nothing to balance: create nothing, only remove a table left by an earlier run.
            let res = tokio::task::spawn_blocking(|| {
                let mut n = VipNat::open()?;
                n.remove().map(|()| n)
            })
            .await;
            match res {
                Ok(Ok(n)) => {
                    nat = Some(n);
                    applied = Some(want.clone());
                }
                Ok(Err(e)) => crate::log(&format!("VIP: cannot check the VIP table: {e}")),
                Err(e) => crate::log(&format!("VIP: task failed: {e}")),
            }
        }
        if applied.as_ref() != Some(&want) {
            let taken = nat.take();
            let job = want.clone();
            let res = tokio::task::spawn_blocking(move || {
                let mut n = match taken {
                    Some(n) => n,
                    None => VipNat::open()?,
                };
                let r = n.sync(&job);
                r.map(|rep| (n, rep))
            })
            .await;
            match res {
                Ok(Ok((n, _report))) => {
                    nat = Some(n);
                    applied = Some(want);
                }
                Ok(Err(e)) => {
                    crate::log(&format!("VIP: sync failed (retrying): {e}"));
                    ok = false;
                }
                Err(e) => {
                    crate::log(&format!("VIP: sync task failed (retrying): {e}"));
                    ok = false;
                }
            }
        }
        if !ok {
            tokio::select! {
                () = tokio::time::sleep(RETRY) => continue,
                _ = drain.wait_for(|d| *d) => return,
            }
        }
        tokio::select! {
            changed = revisions.changed() => if changed.is_err() { return },
            _ = drain.wait_for(|d| *d) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(DEBOUNCE) => {}
            _ = drain.wait_for(|d| *d) => return,
        }
    }
}
