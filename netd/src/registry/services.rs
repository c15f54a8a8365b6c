//! Services and their endpoints: create/replace (VIP kept), delete (endpoints cascade),
//! register and delete endpoints. Validation happens before the write lock is taken where it
//! can, and against the locked snapshot where it depends on other records.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use netd_config::netd::{
    service_key, Deleted, Endpoint, EndpointSpec, Health, HealthCheck, RoutesSpec, Service,
    ServiceSpec,
};
use netd_config::ConfigError;

use super::model::{allocate_vip, Record, Snapshot};
use super::{deleted, Registry, RegistryError};

impl Registry {
    /// Creates a service, or replaces the ports and health check of an existing one (its VIP and
    /// routes are kept). Returns the stored service and whether it was created.
    ///
    /// Removing a health check resets the health of the service's endpoints to `unknown` in the
    /// same transaction: the check's last verdicts would otherwise stick with nobody to update
    /// them.
    pub async fn put_service(
        self: &Arc<Self>,
        spec: ServiceSpec,
    ) -> Result<(Arc<Service>, bool), RegistryError> {
        spec.validate()?;
        self.retry_conflicts(|| self.put_service_once(spec.clone()))
            .await
    }

    async fn put_service_once(
        self: &Arc<Self>,
        spec: ServiceSpec,
    ) -> Result<(Arc<Service>, bool), RegistryError> {
        let mut tx = self.begin().await;
        let key = service_key(&spec.namespace, &spec.name);
        check_host_ports(tx.snapshot(), &key, &spec)?;
        let existing = tx.snapshot().services.get(&key).cloned();
        let vip = match &existing {
            Some(s) => s.vip,
            None => self.allocate_vip(tx.snapshot(), &key, &HashSet::new())?,
        };
        let health_check = spec.health_check.map(HealthCheck::normalized);
        if let Some(s) = &existing {
            if s.ports == spec.ports && s.health_check == health_check {
                return Ok((s.clone(), false));
            }
            if s.health_check.is_some() && health_check.is_none() {
                stage_health_reset(&mut tx, &key);
            }
        }
        tx.put(Record::Service(Arc::new(Service {
            name: spec.name,
            namespace: spec.namespace,
            ports: spec.ports,
            vip,
            health_check,
            routes: existing
                .as_ref()
                .map(|s| s.routes.clone())
                .unwrap_or_default(),
            revision: 0,
        })));
        let done = tx.commit().await?;
        let stored = done
            .snapshot
            .services
            .get(&key)
            .cloned()
            .ok_or_else(|| RegistryError::Internal(format!("service {key} vanished")))?;
        Ok((stored, existing.is_none()))
    }

    /// Replaces the HTTP routes of an existing service (an empty list removes them); the rest
    /// of the service is untouched. Returns the stored service; unchanged routes write
    /// nothing (no revision, no watch event).
    pub async fn put_routes(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
        spec: RoutesSpec,
    ) -> Result<Arc<Service>, RegistryError> {
        spec.validate()?;
        self.retry_conflicts(|| self.put_routes_once(namespace, name, spec.clone()))
            .await
    }

    async fn put_routes_once(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
        spec: RoutesSpec,
    ) -> Result<Arc<Service>, RegistryError> {
        let key = service_key(namespace, name);
        let mut tx = self.begin().await;
        let Some(existing) = tx.snapshot().services.get(&key).cloned() else {
            return Err(RegistryError::not_found(format!(
                "service {key} does not exist: create it first (POST /v1/services or `netd expose`)"
            )));
        };
        if existing.routes == spec.routes {
            return Ok(existing);
        }
        let mut svc = Arc::unwrap_or_clone(existing);
        svc.routes = spec.routes;
        tx.put(Record::Service(Arc::new(svc)));
        let done = tx.commit().await?;
        done.snapshot
            .services
            .get(&key)
            .cloned()
            .ok_or_else(|| RegistryError::Internal(format!("service {key} vanished")))
    }

    /// Allocates a free VIP for `key` (see [`allocate_vip`]).
    pub(super) fn allocate_vip(
        &self,
        snap: &Snapshot,
        key: &str,
        also_taken: &HashSet<IpAddr>,
    ) -> Result<IpAddr, RegistryError> {
        let taken: HashSet<IpAddr> = snap.services.values().map(|s| s.vip).collect();
        allocate_vip(&self.config.vip_range, key, &|ip| {
            taken.contains(ip) || also_taken.contains(ip)
        })
        .ok_or(RegistryError::VipRangeFull {
            range: self.config.vip_range,
        })
    }

    /// Deletes a service and all its endpoints.
    pub async fn delete_service(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
    ) -> Result<Deleted, RegistryError> {
        self.retry_conflicts(|| self.delete_service_once(namespace, name))
            .await
    }

    async fn delete_service_once(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
    ) -> Result<Deleted, RegistryError> {
        let key = service_key(namespace, name);
        let mut tx = self.begin().await;
        let Some(svc) = tx.snapshot().services.get(&key).cloned() else {
            return Err(RegistryError::not_found(format!(
                "service {key} does not exist"
            )));
        };
        let eps: Vec<_> = tx.snapshot().endpoints_of(&key).cloned().collect();
        for e in eps {
            tx.delete(Record::Endpoint(e));
        }
        tx.delete(Record::Service(svc));
        let done = tx.commit().await?;
        Ok(deleted("service", key, done.revision, true))
    }

    /// Registers (or replaces) an endpoint of an existing service.
    pub async fn register_endpoint(
        self: &Arc<Self>,
        namespace: &str,
        service: &str,
        spec: EndpointSpec,
    ) -> Result<Arc<Endpoint>, RegistryError> {
        let id = spec.validate()?;
        self.retry_conflicts(|| {
            self.register_endpoint_once(namespace, service, id.clone(), spec.clone())
        })
        .await
    }

    async fn register_endpoint_once(
        self: &Arc<Self>,
        namespace: &str,
        service: &str,
        id: String,
        spec: EndpointSpec,
    ) -> Result<Arc<Endpoint>, RegistryError> {
        let skey = service_key(namespace, service);
        let mut tx = self.begin().await;
        if !tx.snapshot().services.contains_key(&skey) {
            return Err(RegistryError::not_found(format!(
                "service {skey} does not exist: create it first (POST /v1/services or `netd expose`)"
            )));
        }
        if let Some(lease) = spec.lease {
            if !tx.snapshot().leases.contains_key(&lease) {
                return Err(ConfigError::new(
                    "lease",
                    format!("lease {lease} does not exist (expired or revoked): grant a new one"),
                )
                .into());
            }
        }
        let ep = Endpoint {
            id: id.clone(),
            service: service.to_string(),
            namespace: namespace.to_string(),
            address: spec.address,
            port: spec.port,
            node: spec.node.unwrap_or_else(|| self.config.node.clone()),
            container_id: spec.container_id,
            health: spec.health,
            weight: spec.weight,
            labels: spec.labels,
            lease: spec.lease,
            revision: 0,
        };
        let key = ep.key();
        tx.put(Record::Endpoint(Arc::new(ep)));
        let done = tx.commit().await?;
        done.snapshot
            .endpoints
            .get(&skey)
            .and_then(|m| m.get(&id))
            .cloned()
            .ok_or_else(|| RegistryError::Internal(format!("endpoint {key} vanished")))
    }

    /// Deletes one endpoint.
    pub async fn delete_endpoint(
        self: &Arc<Self>,
        namespace: &str,
        service: &str,
        id: &str,
    ) -> Result<Deleted, RegistryError> {
        self.retry_conflicts(|| self.delete_endpoint_once(namespace, service, id))
            .await
    }

    async fn delete_endpoint_once(
        self: &Arc<Self>,
        namespace: &str,
        service: &str,
        id: &str,
    ) -> Result<Deleted, RegistryError> {
        let skey = service_key(namespace, service);
        let mut tx = self.begin().await;
        let Some(ep) = tx
            .snapshot()
            .endpoints
            .get(&skey)
            .and_then(|m| m.get(id))
            .cloned()
        else {
            return Err(RegistryError::not_found(format!(
                "endpoint {id} of service {skey} does not exist"
            )));
        };
        let key = ep.key();
        tx.delete(Record::Endpoint(ep));
        let done = tx.commit().await?;
        Ok(deleted("endpoint", key, done.revision, true))
    }
}

/// Stages every endpoint of `service_key` whose health is not `unknown` back to `unknown`.
fn stage_health_reset(tx: &mut super::WriteTxn, service_key: &str) {
    let checked: Vec<Arc<Endpoint>> = tx
        .snapshot()
        .endpoints_of(service_key)
        .filter(|e| e.health != Health::Unknown)
        .cloned()
        .collect();
    for e in checked {
        let mut e = Arc::unwrap_or_clone(e);
        e.health = Health::Unknown;
        tx.put(Record::Endpoint(Arc::new(e)));
    }
}

/// A host port publishes one service port on every local address: it may appear once in the
/// spec and must not be published by another service.
fn check_host_ports(snap: &Snapshot, key: &str, spec: &ServiceSpec) -> Result<(), RegistryError> {
    for (i, p) in spec.ports.iter().enumerate() {
        let Some(hp) = p.host_port else { continue };
        let field = Some(format!("ports[{i}].host_port"));
        if spec.ports[..i].iter().any(|q| q.host_port == Some(hp)) {
            return Err(RegistryError::Conflict {
                message: format!("host port {hp} is given twice in this service: give each port its own host port"),
                field,
            });
        }
        let other = snap
            .services
            .values()
            .find(|s| s.key() != key && s.ports.iter().any(|q| q.host_port == Some(hp)));
        if let Some(other) = other {
            return Err(RegistryError::Conflict {
                message: format!(
                    "host port {hp} is already published by service {}/{}: pick another --host-port or unexpose {}",
                    other.namespace, other.name, other.name
                ),
                field,
            });
        }
    }
    Ok(())
}
