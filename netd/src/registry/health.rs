//! The write path of endpoint health: the active health checker ([`crate::health`]) decides,
//! this stores. A change is staged only when the stored health differs, so a revision and a
//! watch event happen per transition, never per probe.
//!
//! Each update names the address and port that were probed: if the endpoint was replaced by
//! another target under the same id meanwhile, or its service lost its check, the verdict is
//! stale and dropped.

use std::net::SocketAddr;
use std::sync::Arc;

use netd_config::netd::{Endpoint, Health};

use super::model::Record;
use super::{Registry, RegistryError};

/// A verdict of the health checker about one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthUpdate {
    /// Key of the endpoint's service (`namespace/name`).
    pub service_key: String,
    /// Endpoint id within the service.
    pub id: String,
    /// The address that was probed.
    pub target: SocketAddr,
    /// The new health.
    pub health: Health,
}

impl Registry {
    /// Stores the health verdicts that change something, all in one transaction; returns the
    /// endpoints as stored after the change (only those that changed).
    ///
    /// With a shared store each node is the authority on its own endpoints only (those whose
    /// `node` is this node's name): verdicts about other nodes' endpoints are dropped, so two
    /// nodes that reach an endpoint differently never flap it.
    pub async fn set_health(
        self: &Arc<Self>,
        updates: &[HealthUpdate],
    ) -> Result<Vec<Arc<Endpoint>>, RegistryError> {
        self.retry_conflicts(|| self.set_health_once(updates)).await
    }

    async fn set_health_once(
        self: &Arc<Self>,
        updates: &[HealthUpdate],
    ) -> Result<Vec<Arc<Endpoint>>, RegistryError> {
        let mut tx = self.begin().await;
        let mut changed = Vec::new();
        for u in updates {
            let snap = tx.snapshot();
            let checked = snap
                .services
                .get(&u.service_key)
                .is_some_and(|s| s.health_check.is_some());
            let Some(ep) = snap
                .endpoints
                .get(&u.service_key)
                .and_then(|m| m.get(&u.id))
            else {
                continue;
            };
            if !checked
                || (self.is_shared() && ep.node != self.config().node)
                || ep.health == u.health
                || SocketAddr::new(ep.address, ep.port) != u.target
                || changed
                    .iter()
                    .any(|(s, i)| *s == &u.service_key && *i == &u.id)
            {
                continue;
            }
            let mut next = (**ep).clone();
            next.health = u.health;
            changed.push((&u.service_key, &u.id));
            tx.put(Record::Endpoint(Arc::new(next)));
        }
        let done = tx.commit().await?;
        Ok(changed
            .into_iter()
            .filter_map(|(s, i)| done.snapshot.endpoints.get(s)?.get(i).cloned())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::store::embedded::EmbeddedStore;
    use crate::registry::RegistryConfig;
    use netd_config::netd::{HealthCheck, HealthCheckKind, ServicePort, ServiceSpec};

    async fn registry(tag: &str) -> (Arc<Registry>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("netd-health-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = EmbeddedStore::open(&dir).unwrap();
        let config = RegistryConfig {
            node: "n".into(),
            vip_range: "10.96.0.0/16".parse().unwrap(),
            domain: "netd.local".into(),
        };
        (Registry::open(Arc::new(store), config).await.unwrap(), dir)
    }

    fn spec(check: Option<HealthCheck>) -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            namespace: "default".into(),
            ports: vec![ServicePort {
                name: None,
                port: 80,
                protocol: Default::default(),
                host_port: None,
            }],
            health_check: check,
        }
    }

    fn update(target: &str, health: Health) -> HealthUpdate {
        HealthUpdate {
            service_key: "default/web".into(),
            id: "10.0.0.1:80".into(),
            target: target.parse().unwrap(),
            health,
        }
    }

    #[tokio::test]
    async fn only_transitions_of_current_targets_are_written() {
        let (reg, dir) = registry("set").await;
        reg.put_service(spec(Some(HealthCheck::new(HealthCheckKind::Tcp))))
            .await
            .unwrap();
        let ep = serde_json::from_str(r#"{"address":"10.0.0.1","port":80}"#).unwrap();
        reg.register_endpoint("default", "web", ep).await.unwrap();
        let rev = reg.snapshot().revision;
        // A verdict about another address (the endpoint was replaced meanwhile): dropped.
        let stale = reg
            .set_health(&[update("10.0.0.9:80", Health::Healthy)])
            .await
            .unwrap();
        assert!(stale.is_empty());
        assert_eq!(reg.snapshot().revision, rev);
        // A transition: one revision; the same verdict again: nothing.
        let changed = reg
            .set_health(&[update("10.0.0.1:80", Health::Unhealthy)])
            .await
            .unwrap();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].health, Health::Unhealthy);
        assert_eq!(reg.snapshot().revision, rev + 1);
        reg.set_health(&[update("10.0.0.1:80", Health::Unhealthy)])
            .await
            .unwrap();
        assert_eq!(reg.snapshot().revision, rev + 1);
        // Removing the check resets health in the same revision as the service change, and
        // verdicts arriving late are dropped.
        reg.put_service(spec(None)).await.unwrap();
        let snap = reg.snapshot();
        assert_eq!(snap.revision, rev + 2);
        assert!(snap.all_endpoints().all(|e| e.health == Health::Unknown));
        reg.set_health(&[update("10.0.0.1:80", Health::Healthy)])
            .await
            .unwrap();
        assert_eq!(reg.snapshot().revision, rev + 2);
        drop(reg);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
