//! Discovery DNS for the container: netd's own DNS server (`netd-dns`) answering from the
//! sidecar's snapshot — service names → VIP, SRV records with ports, container names — and
//! forwarding other names to `--upstream-dns` with a cache, from sockets that carry the
//! sidecar's mark. The DNS snapshot is rebuilt on every sidecar snapshot change, so it keeps
//! answering from the last one while netd is down.

use std::net::SocketAddr;

use netd_config::netd::Protocol;
use netd_dns::{
    ContainerRecord, DnsServer, ListenAddrs, PortProtocol, ServerError, ServerOptions, ServicePort,
    ServiceRecord, SnapshotBuilder, SnapshotHandle,
};
use tokio::task::JoinHandle;

use crate::drain::Drain;
use crate::snapshot::{SnapshotData, SnapshotStore};

/// The DNS snapshot of a sidecar snapshot; records DNS rejects (bad names) are skipped and
/// logged.
pub fn build(data: &SnapshotData) -> netd_dns::Snapshot {
    let mut builder = match SnapshotBuilder::with_domain(&data.domain) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "bad DNS domain in snapshot; using the default");
            SnapshotBuilder::new()
        }
    };
    builder.serial(data.revision as u32);
    for svc in &data.services {
        let record = ServiceRecord {
            name: svc.name.clone(),
            namespace: svc.namespace.clone(),
            vips: vec![svc.vip],
            ports: svc
                .ports
                .iter()
                .map(|p| ServicePort {
                    name: p.name.clone(),
                    protocol: match p.protocol {
                        Protocol::Http => PortProtocol::Http,
                        Protocol::Tcp => PortProtocol::Tcp,
                        Protocol::Grpc => PortProtocol::Grpc,
                    },
                    port: p.port,
                })
                .collect(),
        };
        if let Err(e) = builder.service(&record) {
            tracing::warn!(error = %e, "service skipped in DNS");
        }
    }
    for att in data.attachments.iter().filter(|a| !a.names.is_empty()) {
        let record = ContainerRecord {
            names: att.names.clone(),
            addresses: att.ips.clone(),
        };
        if let Err(e) = builder.container(&record) {
            tracing::warn!(error = %e, "container skipped in DNS");
        }
    }
    builder.build()
}

/// Binds UDP and TCP on `addr` (and on its IPv6 loopback companion when the namespace has
/// IPv6, see [`crate::listen`]) and serves until `drain` fires; the DNS snapshot follows
/// `store`. Names it does not own go to `upstreams` from sockets carrying `mark`, so that the
/// interception rules (which send port 53 to this server) let them out. Returns the main
/// addresses, the companion's UDP address if one was bound, and the serving task.
pub async fn start(
    addr: SocketAddr,
    upstreams: Vec<SocketAddr>,
    mark: Option<u32>,
    store: SnapshotStore,
    drain: Drain,
) -> Result<(ListenAddrs, Option<SocketAddr>, JoinHandle<()>), ServerError> {
    let handle = SnapshotHandle::new(build(store.load().data()));
    let mut options = ServerOptions::default();
    options.forward.mark = mark;
    let server = DnsServer::bind(addr, None, handle.clone(), upstreams, options.clone()).await?;
    let addrs = server.local_addrs();
    let companion = match crate::listen::loopback_companion(addr) {
        None => None,
        Some(v6) => {
            let forwarder = server.forwarder().clone();
            match DnsServer::bind_with_forwarder(v6, None, handle.clone(), forwarder, options).await
            {
                Ok(s) => Some(s),
                Err(ServerError::Bind { source, .. })
                    if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) =>
                {
                    tracing::debug!(%v6, "no IPv6 in this namespace");
                    None
                }
                Err(e) => return Err(e),
            }
        }
    };
    let companion_addr = companion.as_ref().map(|s| s.local_addrs().udp);
    let mut changes = store.subscribe();
    let follower = {
        let mut drain = drain.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = drain.signaled() => return,
                }
                handle.store(build(store.load().data()));
            }
        })
    };
    let serve = |server: DnsServer, mut drain: Drain| async move {
        if let Err(e) = server.serve(async move { drain.signaled().await }).await {
            tracing::warn!(error = %e, "DNS server stopped");
        }
    };
    let companion_task = companion.map(|s| tokio::spawn(serve(s, drain.clone())));
    let task = tokio::spawn(async move {
        serve(server, drain).await;
        if let Some(t) = companion_task {
            let _ = t.await;
        }
        follower.abort();
    });
    Ok((addrs, companion_addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_and_containers_become_names() {
        let data: SnapshotData = serde_json::from_value(serde_json::json!({
            "services": [{"name": "web", "namespace": "default", "vip": "10.96.0.10",
                          "ports": [{"port": 80, "protocol": "http", "name": "http"}]}],
            "attachments": [{"container_id": "c1", "ifname": "eth0", "network": "netd",
                             "ips": ["10.89.0.5"], "names": ["db"]}]
        }))
        .unwrap();
        let snap = build(&data);
        // web (2 short + 3 namespaced forms), SRV names, db (2 forms), zone apex...
        assert!(snap.name_count() >= 8, "{}", snap.name_count());
    }
}
