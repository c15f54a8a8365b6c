//! Network lifecycle: the registry record and its CNI conflist, kept consistent.
//!
//! A create validates against every other network (name, subnets, bridge, the VIP range), writes
//! the conflist, then commits the record; if the commit fails, the conflist is made to match the
//! registry again (removed, or another node's network of that name written). A delete refuses
//! while containers are attached. At startup [`Networks::reconcile`] creates the default network
//! if missing and rewrites any conflist that is missing or differs; then [`Networks::follow`]
//! keeps conflists equal to the registry's networks as they change, which with a shared store
//! includes networks created and removed on other nodes.
//!
//! Every conflist change happens under one lock and (except the write before a create's commit)
//! makes the file match the current snapshot, so a create, a delete and the follower racing for
//! one name always leave the file the registry's network says.
//!
//! The rest of a network's life on a node follows the registry by itself: DNS listeners on its
//! gateways ([`crate::dns`]), sidecars for its meshed containers ([`crate::mesh`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use netd_config::netd::{
    overlaps, Deleted, Network, NetworkSpec, DEFAULT_BRIDGE, DEFAULT_NETWORK,
    DEFAULT_NETWORK_SUBNETS,
};

use crate::conflist;
use crate::registry::model::Record;
use crate::registry::{Registry, RegistryError};

/// Network operations with their conflist side effects.
#[derive(Clone)]
pub struct Networks {
    registry: Arc<Registry>,
    conf_dir: PathBuf,
    /// Held while a conflist is written or removed.
    files: Arc<Mutex<()>>,
}

/// What [`Networks::sync_conflist`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// The file already matched.
    Unchanged,
    /// The network's conflist was written.
    Written,
    /// The conflist of a network that no longer exists was removed.
    Removed,
}

impl Networks {
    /// Networks of `registry`, with conflists in `conf_dir`.
    pub fn new(registry: Arc<Registry>, conf_dir: PathBuf) -> Self {
        Self {
            registry,
            conf_dir,
            files: Arc::default(),
        }
    }

    /// Directory the conflists go to.
    pub fn conf_dir(&self) -> &std::path::Path {
        &self.conf_dir
    }

    /// Creates a network and writes its conflist (re-run against the newer state when another
    /// node changed the registry first).
    pub async fn create(&self, spec: NetworkSpec) -> Result<Arc<Network>, RegistryError> {
        let subnets = spec.validate()?;
        self.registry
            .retry_conflicts(|| self.create_once(spec.clone(), subnets.clone()))
            .await
    }

    async fn create_once(
        &self,
        spec: NetworkSpec,
        subnets: Vec<ipnet::IpNet>,
    ) -> Result<Arc<Network>, RegistryError> {
        let mut tx = self.registry.begin().await;
        let snap = tx.snapshot();
        if snap.networks.contains_key(&spec.name) {
            return Err(conflict(
                "name",
                format!(
                    "network {} already exists (`netd network rm {}` first to change it)",
                    spec.name, spec.name
                ),
            ));
        }
        let vip_range = self.registry.config().vip_range;
        for (i, s) in subnets.iter().enumerate() {
            let field = format!("subnets[{i}]");
            if let Some(other) = snap
                .networks
                .values()
                .find(|n| n.subnets.iter().any(|o| overlaps(o, s)))
            {
                return Err(conflict(
                    &field,
                    format!("{s} overlaps a subnet of network {}", other.name),
                ));
            }
            if overlaps(&vip_range, s) {
                return Err(conflict(
                    &field,
                    format!("{s} overlaps the service VIP range {vip_range}"),
                ));
            }
        }
        let bridge = match spec.bridge {
            Some(b) => {
                if let Some(other) = snap.networks.values().find(|n| n.bridge == b) {
                    return Err(conflict(
                        "bridge",
                        format!("bridge {b} is used by network {}", other.name),
                    ));
                }
                b
            }
            None => free_bridge(snap.networks.values().map(|n| n.bridge.as_str())),
        };
        let net = Network {
            name: spec.name,
            subnets,
            mesh: spec.mesh,
            isolate: spec.isolate,
            bridge,
            revision: tx.snapshot().revision + 1,
        };
        {
            let _files = self.lock_files();
            self.write_conflist(&net)?;
        }
        let name = net.name.clone();
        tx.put(Record::Network(Arc::new(net)));
        match tx.commit().await {
            Ok(done) => done
                .snapshot
                .networks
                .get(&name)
                .cloned()
                .ok_or_else(|| RegistryError::Internal(format!("network {name} vanished"))),
            Err(e) => {
                if let Err(undo) = self.sync_conflist(&name) {
                    crate::log(&format!("network {name} not created: {undo}"));
                }
                Err(e)
            }
        }
    }

    /// Deletes a network and its conflist; refused while containers are attached to it.
    pub async fn delete(&self, name: &str) -> Result<Deleted, RegistryError> {
        self.registry
            .retry_conflicts(|| self.delete_once(name))
            .await
    }

    async fn delete_once(&self, name: &str) -> Result<Deleted, RegistryError> {
        let mut tx = self.registry.begin().await;
        let Some(net) = tx.snapshot().networks.get(name).cloned() else {
            return Err(RegistryError::NotFound {
                message: format!("network {name} does not exist"),
                field: None,
            });
        };
        let attached: Vec<&str> = tx
            .snapshot()
            .attachments
            .values()
            .filter(|a| a.network == name)
            .map(|a| a.container_id.as_str())
            .collect();
        if !attached.is_empty() {
            let shown: Vec<&str> = attached.iter().take(5).map(|c| short(c)).collect();
            return Err(RegistryError::Conflict {
                message: format!(
                    "network {name} is in use by {} container(s) ({}): remove them first",
                    attached.len(),
                    shown.join(", ")
                ),
                field: None,
            });
        }
        tx.delete(Record::Network(net.clone()));
        let done = tx.commit().await?;
        if let Err(e) = self.sync_conflist(name) {
            crate::log(&format!(
                "network {name} deleted, but its conflist could not be removed: {e}"
            ));
        }
        Ok(Deleted {
            kind: "network".into(),
            key: name.to_string(),
            revision: done.revision,
            existed: true,
        })
    }

    /// Creates the default network when missing and makes every conflist match its network.
    /// Returns the names of conflists (re)written.
    pub async fn reconcile(&self) -> Result<Vec<String>, RegistryError> {
        let mut written = Vec::new();
        if !self
            .registry
            .snapshot()
            .networks
            .contains_key(DEFAULT_NETWORK)
        {
            let spec = NetworkSpec {
                name: DEFAULT_NETWORK.to_string(),
                subnets: DEFAULT_NETWORK_SUBNETS
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                mesh: false,
                isolate: false,
                bridge: Some(DEFAULT_BRIDGE.to_string()),
            };
            match self.create(spec).await {
                Ok(_) => written.push(DEFAULT_NETWORK.to_string()),
                // Another network took its subnets or bridge: run without the default.
                Err(e @ (RegistryError::Conflict { .. } | RegistryError::Invalid(_))) => {
                    crate::log(&format!(
                        "default network {DEFAULT_NETWORK} not created: {e}"
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        for name in self.registry.snapshot().networks.keys() {
            if self.sync_conflist(name)? == Synced::Written {
                written.push(name.clone());
            }
        }
        written.dedup();
        Ok(written)
    }

    /// Makes `name`'s conflist match the registry as it is now: written when the network
    /// exists, removed when it does not.
    pub fn sync_conflist(&self, name: &str) -> Result<Synced, RegistryError> {
        let _files = self.lock_files();
        match self.registry.snapshot().networks.get(name) {
            Some(net) => Ok(match self.write_conflist(net)? {
                true => Synced::Written,
                false => Synced::Unchanged,
            }),
            None => match conflist::remove(&self.conf_dir, name) {
                Ok(true) => Ok(Synced::Removed),
                Ok(false) => Ok(Synced::Unchanged),
                Err(source) => Err(RegistryError::Io {
                    what: "cannot remove CNI conflist",
                    path: conflist::path(&self.conf_dir, name).display().to_string(),
                    source,
                }),
            },
        }
    }

    /// Keeps every conflist equal to the registry's networks until `drain`: on each new
    /// revision, the conflists of networks that appeared, changed or went are written or
    /// removed (networks created or removed on another node sharing the store, or by this
    /// node's API, which has usually done it already). Files run on the blocking pool.
    pub async fn follow(self, mut drain: watch::Receiver<bool>) {
        let mut revisions = self.registry.revisions();
        let mut seen: Arc<BTreeMap<String, Arc<Network>>> = Arc::default();
        loop {
            revisions.borrow_and_update();
            let now = self.registry.snapshot().networks.clone();
            if !Arc::ptr_eq(&now, &seen) {
                let names: BTreeSet<String> = now
                    .iter()
                    .filter(|(name, net)| seen.get(*name) != Some(net))
                    .map(|(name, _)| name.clone())
                    .chain(seen.keys().filter(|n| !now.contains_key(*n)).cloned())
                    .collect();
                let this = self.clone();
                let synced = tokio::task::spawn_blocking(move || this.sync_conflists(names)).await;
                if let Err(e) = synced {
                    crate::log(&format!("conflist task failed: {e}"));
                }
                seen = now;
            }
            tokio::select! {
                changed = revisions.changed() => if changed.is_err() { return },
                _ = drain.wait_for(|d| *d) => return,
            }
        }
    }

    /// [`Networks::sync_conflist`] for each of `names`, logging what changed.
    fn sync_conflists(&self, names: BTreeSet<String>) {
        for name in names {
            match self.sync_conflist(&name) {
                Ok(Synced::Unchanged) => {}
                Ok(Synced::Written) => crate::log(&format!(
                    "network {name}: wrote {}",
                    conflist::path(&self.conf_dir, &name).display()
                )),
                Ok(Synced::Removed) => crate::log(&format!(
                    "network {name} is gone: removed {}",
                    conflist::path(&self.conf_dir, &name).display()
                )),
                Err(e) => crate::log(&format!("network {name}: {e}")),
            }
        }
    }

    fn lock_files(&self) -> std::sync::MutexGuard<'_, ()> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_conflist(&self, net: &Network) -> Result<bool, RegistryError> {
        conflist::write(&self.conf_dir, net).map_err(|source| RegistryError::Io {
            what: "cannot write CNI conflist",
            path: conflist::path(&self.conf_dir, &net.name)
                .display()
                .to_string(),
            source,
        })
    }
}

fn conflict(field: &str, message: String) -> RegistryError {
    RegistryError::Conflict {
        message,
        field: Some(field.to_string()),
    }
}

/// First `netdN` (N ≥ 1) not used by another network; `netd0` belongs to the default network.
fn free_bridge<'a>(used: impl Iterator<Item = &'a str>) -> String {
    let used: Vec<&str> = used.collect();
    (1..)
        .map(|i| format!("netd{i}"))
        .find(|b| !used.contains(&b.as_str()))
        .unwrap_or_else(|| DEFAULT_BRIDGE.to_string())
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
