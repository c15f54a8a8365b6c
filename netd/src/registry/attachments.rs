//! Container attachments reported by the CNI plugin: the record (addresses, DNS names) and the
//! endpoints registered for the services the container serves (`NETD_SERVICE`), created and
//! removed together in one transaction. Removal comes from the plugin's DEL
//! ([`Registry::detach`]) or from the liveness sweep when the container's namespace is gone
//! ([`Registry::detach_gone`], driven by [`crate::liveness`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use netd_config::netd::{
    attachment_key, endpoint_id, service_key, Attachment, AttachmentSpec, Deleted, Endpoint,
    Health, Protocol, Service, ServicePort,
};

use super::model::{Record, Snapshot};
use super::{deleted, Registry, RegistryError, WriteTxn};

impl Registry {
    /// Records a container attachment (replacing a previous one of the same container and
    /// interface) and registers an endpoint per address and service port it serves, creating
    /// missing services.
    pub async fn attach(
        self: &Arc<Self>,
        spec: AttachmentSpec,
    ) -> Result<Arc<Attachment>, RegistryError> {
        spec.validate()?;
        self.retry_conflicts(|| self.attach_once(spec.clone()))
            .await
    }

    async fn attach_once(
        self: &Arc<Self>,
        spec: AttachmentSpec,
    ) -> Result<Arc<Attachment>, RegistryError> {
        let valid = spec.validate()?;
        let mut tx = self.begin().await;
        if !tx.snapshot().networks.contains_key(&spec.network) {
            return Err(RegistryError::NotFound {
                message: format!("network {} does not exist", spec.network),
                field: Some("network".into()),
            });
        }
        let key = attachment_key(&spec.container_id, &spec.ifname);
        let previous = tx.snapshot().attachments.get(&key).cloned();

        // Services to create, merged when one is named twice.
        let mut new_services: BTreeMap<String, Service> = BTreeMap::new();
        let mut new_vips = HashSet::new();
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for r in &valid.services {
            let skey = service_key(&r.namespace, &r.name);
            if !tx.snapshot().services.contains_key(&skey) {
                let port = ServicePort {
                    name: None,
                    port: r.port,
                    protocol: Protocol::Tcp,
                    host_port: None,
                };
                if let Some(s) = new_services.get_mut(&skey) {
                    if !s.ports.iter().any(|p| p.port == r.port) {
                        s.ports.push(port);
                    }
                } else {
                    let vip = self.allocate_vip(tx.snapshot(), &skey, &new_vips)?;
                    new_vips.insert(vip);
                    new_services.insert(
                        skey.clone(),
                        Service {
                            name: r.name.clone(),
                            namespace: r.namespace.clone(),
                            ports: vec![port],
                            vip,
                            health_check: None,
                            routes: Vec::new(),
                            revision: 0,
                        },
                    );
                }
            }
            for ip in &valid.ips {
                let mut labels = BTreeMap::new();
                labels.insert("netd.network".to_string(), spec.network.clone());
                labels.insert("netd.ifname".to_string(), spec.ifname.clone());
                endpoints.push(Endpoint {
                    id: endpoint_id(*ip, r.port),
                    service: r.name.clone(),
                    namespace: r.namespace.clone(),
                    address: *ip,
                    port: r.port,
                    node: self.config.node.clone(),
                    container_id: Some(spec.container_id.clone()),
                    health: Health::Unknown,
                    weight: 1,
                    labels,
                    lease: None,
                    revision: 0,
                });
            }
        }
        let endpoint_keys: Vec<String> = endpoints.iter().map(Endpoint::key).collect();
        if let Some(prev) = &previous {
            for stale in prev.endpoints.iter().filter(|k| !endpoint_keys.contains(k)) {
                if let Some(e) = find_endpoint(tx.snapshot(), stale) {
                    tx.delete(Record::Endpoint(e));
                }
            }
        }
        for s in new_services.into_values() {
            tx.put(Record::Service(Arc::new(s)));
        }
        for e in endpoints {
            tx.put(Record::Endpoint(Arc::new(e)));
        }
        tx.put(Record::Attachment(Arc::new(Attachment {
            container_id: spec.container_id,
            ifname: spec.ifname,
            network: spec.network,
            netns: spec.netns,
            ips: valid.ips,
            names: spec.names,
            services: valid.services,
            endpoints: endpoint_keys,
            node: self.config.node.clone(),
            revision: 0,
        })));
        let done = tx.commit().await?;
        done.snapshot
            .attachments
            .get(&key)
            .cloned()
            .ok_or_else(|| RegistryError::Internal(format!("attachment {key} vanished")))
    }

    /// Removes a container attachment and the endpoints registered for it. Idempotent, as CNI
    /// DEL must be: a missing attachment is not an error.
    pub async fn detach(
        self: &Arc<Self>,
        container_id: &str,
        ifname: &str,
    ) -> Result<Deleted, RegistryError> {
        self.retry_conflicts(|| self.detach_once(container_id, ifname))
            .await
    }

    async fn detach_once(
        self: &Arc<Self>,
        container_id: &str,
        ifname: &str,
    ) -> Result<Deleted, RegistryError> {
        let key = attachment_key(container_id, ifname);
        let mut tx = self.begin().await;
        let Some(att) = tx.snapshot().attachments.get(&key).cloned() else {
            return Ok(deleted("attachment", key, tx.snapshot().revision, false));
        };
        stage_detach(&mut tx, att);
        let done = tx.commit().await?;
        Ok(deleted("attachment", key, done.revision, true))
    }

    /// Removes the attachments in `gone` (key and the revision at which its owner was found
    /// dead) with their endpoints, in one transaction. An attachment changed since (re-added by
    /// a new CNI ADD, so a different revision) is left alone, and so, with a shared store, is
    /// one reported to another node: its namespace path means something on that machine only.
    /// Returns the removed attachments.
    pub async fn detach_gone(
        self: &Arc<Self>,
        gone: &[(String, u64)],
    ) -> Result<Vec<Arc<Attachment>>, RegistryError> {
        self.retry_conflicts(|| self.detach_gone_once(gone)).await
    }

    async fn detach_gone_once(
        self: &Arc<Self>,
        gone: &[(String, u64)],
    ) -> Result<Vec<Arc<Attachment>>, RegistryError> {
        let mut tx = self.begin().await;
        let mut removed = Vec::new();
        for (key, revision) in gone {
            match tx.snapshot().attachments.get(key) {
                Some(att)
                    if att.revision == *revision
                        && (!self.is_shared() || att.node == self.config.node) =>
                {
                    removed.push(att.clone())
                }
                _ => {}
            }
        }
        for att in &removed {
            stage_detach(&mut tx, att.clone());
        }
        tx.commit().await?;
        Ok(removed)
    }
}

/// Stages the delete of `att` and of the endpoints registered for it (those still owned by its
/// container: an endpoint re-registered by someone else since is kept).
fn stage_detach(tx: &mut WriteTxn, att: Arc<Attachment>) {
    for k in &att.endpoints {
        if let Some(e) = find_endpoint(tx.snapshot(), k) {
            if e.container_id.as_deref() == Some(att.container_id.as_str()) {
                tx.delete(Record::Endpoint(e));
            }
        }
    }
    tx.delete(Record::Attachment(att));
}

fn find_endpoint(snap: &Snapshot, key: &str) -> Option<Arc<Endpoint>> {
    let mut parts = key.splitn(3, '/');
    let (ns, svc, id) = (parts.next()?, parts.next()?, parts.next()?);
    snap.endpoints.get(&service_key(ns, svc))?.get(id).cloned()
}
