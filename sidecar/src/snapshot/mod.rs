//! The sidecar's view of the registry: services, their endpoints and the containers of the
//! mesh, as one immutable [`Snapshot`] swapped atomically in a [`SnapshotStore`].
//!
//! A snapshot is built from [`SnapshotData`] (the same objects netd's API returns, plus the
//! balancer policy per service) and indexes it for the data path: `VIP:port` → service port,
//! every name form of a service (`web`, `web.ns`, `web.ns.svc.<domain>`) → service, and each
//! service's HTTP routes, sorted for matching ([`routes::RouteTable`]). Routes come with the
//! services themselves (the `routes` of netd's service objects).
//! Readers never lock; a new registry state is a new snapshot.
//!
//! Where snapshots come from is not this module's business: see [`file`](mod@file) (a JSON
//! file) and [`netd`] (the daemon's watch stream).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use netd_config::netd::{Attachment, Endpoint, Health, Protocol, Service, DEFAULT_DOMAIN};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::balance::Policy;

pub mod file;
pub mod netd;
pub mod routes;

use routes::RouteTable;

/// The registry state the sidecar works from, as plain data (the `--snapshot` file format and
/// what `/config` shows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotData {
    /// Registry revision this state is at (0 for files).
    #[serde(default)]
    pub revision: u64,
    /// Cluster DNS domain (default `netd.local`).
    #[serde(default = "default_domain")]
    pub domain: String,
    /// Services.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Endpoints of every service.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Containers of the mesh (DNS names, and which one this sidecar serves).
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// Balancer policy by service key (`namespace/name`); others use the default.
    #[serde(default)]
    pub balancers: BTreeMap<String, Policy>,
}

fn default_domain() -> String {
    DEFAULT_DOMAIN.to_string()
}

/// Empty, in the default domain (the state before the first snapshot: DNS serves the zone
/// with no names rather than a broken one).
impl Default for SnapshotData {
    fn default() -> Self {
        Self {
            revision: 0,
            domain: default_domain(),
            services: Vec::new(),
            endpoints: Vec::new(),
            attachments: Vec::new(),
            balancers: BTreeMap::new(),
        }
    }
}

/// One port of a service, as seen from `VIP:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortTarget {
    /// Service key (`namespace/name`).
    pub service: Arc<str>,
    /// Protocol hint of the port.
    pub protocol: Protocol,
}

/// One endpoint a service balances over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointAddr {
    /// Where it answers.
    pub addr: SocketAddr,
    /// Relative weight (at least 1).
    pub weight: u32,
}

/// An immutable, indexed registry state.
#[derive(Debug, Default)]
pub struct Snapshot {
    data: SnapshotData,
    by_vip: HashMap<SocketAddr, PortTarget>,
    by_name: HashMap<String, Arc<str>>,
    endpoints: HashMap<Arc<str>, Vec<EndpointAddr>>,
    by_endpoint: HashMap<SocketAddr, Arc<str>>,
    routes: HashMap<Arc<str>, Arc<RouteTable>>,
}

impl Snapshot {
    /// Indexes `data`. Endpoints marked `unhealthy` are left out (they get no traffic);
    /// `unknown` ones stay in, as in netd's VIP balancing.
    pub fn new(data: SnapshotData) -> Self {
        Self::build(data, None)
    }

    /// Indexes `data` as the successor of `previous`: route tables of services whose routes
    /// did not change are kept (with their resolved metric series), so endpoint churn does
    /// not make the data path resolve route series again.
    pub fn after(data: SnapshotData, previous: &Snapshot) -> Self {
        Self::build(data, Some(previous))
    }

    fn build(data: SnapshotData, previous: Option<&Snapshot>) -> Self {
        let mut by_vip = HashMap::new();
        let mut by_name = HashMap::new();
        let mut endpoints: HashMap<Arc<str>, Vec<EndpointAddr>> = HashMap::new();
        let mut routes = HashMap::new();
        let domain = data.domain.trim_end_matches('.').to_ascii_lowercase();
        for svc in &data.services {
            let key: Arc<str> = Arc::from(svc.key());
            for port in &svc.ports {
                by_vip.insert(
                    SocketAddr::new(svc.vip, port.port),
                    PortTarget {
                        service: key.clone(),
                        protocol: port.protocol,
                    },
                );
            }
            let ns = &svc.namespace;
            let name = &svc.name;
            for form in [
                format!("{name}.{ns}.svc.{domain}"),
                format!("{name}.{ns}.svc"),
                format!("{name}.{ns}"),
                format!("{name}.{ns}.{domain}"),
            ] {
                by_name.insert(form, key.clone());
            }
            // A short name belongs to the default namespace, else to the first namespace.
            for short in [name.clone(), format!("{name}.{domain}")] {
                let replace = match by_name.get(&short) {
                    None => true,
                    Some(owner) => short_name_wins(&key, owner),
                };
                if replace {
                    by_name.insert(short, key.clone());
                }
            }
            if !svc.routes.is_empty() {
                let table = match previous.and_then(|p| p.routes.get(&key)) {
                    Some(t) if t.is_for(&svc.routes) => t.clone(),
                    _ => Arc::new(RouteTable::new(key.clone(), &svc.routes)),
                };
                routes.insert(key.clone(), table);
            }
            endpoints.entry(key).or_default();
        }
        let mut by_endpoint = HashMap::new();
        for ep in &data.endpoints {
            if let Some((key, _)) = endpoints.get_key_value(ep.service_key().as_str()) {
                by_endpoint
                    .entry(SocketAddr::new(ep.address, ep.port))
                    .or_insert_with(|| key.clone());
            }
            if ep.health == Health::Unhealthy || ep.weight == 0 {
                continue;
            }
            if let Some(list) = endpoints.get_mut(ep.service_key().as_str()) {
                list.push(EndpointAddr {
                    addr: SocketAddr::new(ep.address, ep.port),
                    weight: ep.weight,
                });
            }
        }
        for list in endpoints.values_mut() {
            list.sort_by_key(|e| e.addr);
            list.dedup_by_key(|e| e.addr);
        }
        Self {
            data,
            by_vip,
            by_name,
            endpoints,
            by_endpoint,
            routes,
        }
    }

    /// The HTTP routes of service `key`; `None` when it has none (its requests get no route
    /// series).
    pub fn routes(&self, key: &str) -> Option<&Arc<RouteTable>> {
        self.routes.get(key)
    }

    /// The service that `addr` is a registered endpoint of (the first, by service key order
    /// of the data, when several share it), whatever its health: inbound requests are counted
    /// under it.
    pub fn endpoint_service(&self, addr: SocketAddr) -> Option<Arc<str>> {
        self.by_endpoint.get(&addr).cloned()
    }

    /// The plain data this snapshot was built from.
    pub fn data(&self) -> &SnapshotData {
        &self.data
    }

    /// Registry revision.
    pub fn revision(&self) -> u64 {
        self.data.revision
    }

    /// The service port behind `VIP:port`.
    pub fn by_vip(&self, addr: SocketAddr) -> Option<&PortTarget> {
        self.by_vip.get(&addr)
    }

    /// The service a host name (`web`, `web.ns`, `web.ns.svc.netd.local`, with or without a
    /// `:port` and a trailing dot) or a literal `VIP:port` names. A name with a port that the
    /// service does not have still resolves: every port leads to the same endpoints.
    pub fn by_authority(&self, authority: &str) -> Option<Arc<str>> {
        if let Ok(addr) = authority.parse::<SocketAddr>() {
            return self.by_vip(addr).map(|t| t.service.clone());
        }
        let host = match authority.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        };
        let host = host.trim_end_matches('.');
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.by_name.get(&host.to_ascii_lowercase()).cloned();
        }
        self.by_name.get(host).cloned()
    }

    /// Endpoints that get traffic for service `key` (sorted by address); `None` when the
    /// service does not exist.
    pub fn endpoints(&self, key: &str) -> Option<&[EndpointAddr]> {
        self.endpoints.get(key).map(Vec::as_slice)
    }

    /// Every service key with its endpoints.
    pub fn services(&self) -> impl Iterator<Item = (&Arc<str>, &[EndpointAddr])> {
        self.endpoints.iter().map(|(k, v)| (k, v.as_slice()))
    }

    /// The balancer policy of service `key`, if the snapshot sets one.
    pub fn policy(&self, key: &str) -> Option<&Policy> {
        self.data.balancers.get(key)
    }

    /// The attachment of `container_id`, if known.
    pub fn attachment(&self, container_id: &str) -> Option<&Attachment> {
        self.data
            .attachments
            .iter()
            .find(|a| a.container_id == container_id)
    }
}

/// Whether service `new` takes a short name from `owner`: the default namespace wins, then the
/// lexicographically first namespace (as in netd's DNS).
fn short_name_wins(new: &str, owner: &str) -> bool {
    let ns = |key: &str| key.split_once('/').map_or("", |(ns, _)| ns).to_string();
    let (new_ns, owner_ns) = (ns(new), ns(owner));
    let default = netd_config::netd::DEFAULT_NAMESPACE;
    if owner_ns == default {
        return false;
    }
    new_ns == default || new_ns < owner_ns
}

/// The published snapshot plus a change notification. Cloning shares it.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    current: Arc<ArcSwap<Snapshot>>,
    changed: watch::Sender<u64>,
    loaded: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for SnapshotStore {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotStore {
    /// An empty store; [`SnapshotStore::is_loaded`] stays false until the first
    /// [`SnapshotStore::publish`].
    pub fn new() -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            changed: watch::channel(0).0,
            loaded: Arc::default(),
            generation: Arc::default(),
        }
    }

    /// Publishes a new state. Requests already routed finish with the old one.
    pub fn publish(&self, data: SnapshotData) {
        let next = Snapshot::after(data, &self.current.load());
        self.current.store(Arc::new(next));
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.changed
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// The current snapshot, for a short read.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// How many snapshots were published: readers that derive state from the snapshot
    /// compare it with the generation they derived from.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// True once a snapshot was published.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A receiver that wakes on every publish.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn data() -> SnapshotData {
        serde_json::from_value(serde_json::json!({
            "services": [
                {"name": "web", "namespace": "default", "vip": "10.96.0.10",
                 "ports": [{"port": 80, "protocol": "http"}, {"port": 9000}]},
                {"name": "web", "namespace": "shop", "vip": "10.96.0.11",
                 "ports": [{"port": 80}],
                 "routes": [{"name": "cart", "path_prefix": "/cart", "methods": ["POST"]}]}
            ],
            "endpoints": [
                {"id": "a", "service": "web", "namespace": "default", "address": "127.0.0.2",
                 "port": 8080, "node": "n", "weight": 2},
                {"id": "b", "service": "web", "namespace": "default", "address": "127.0.0.3",
                 "port": 8080, "node": "n", "health": "unhealthy"},
                {"id": "c", "service": "web", "namespace": "default", "address": "127.0.0.4",
                 "port": 8080, "node": "n", "health": "healthy"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn indexes_vips_names_and_healthy_endpoints() {
        let s = Snapshot::new(data());
        let t = s.by_vip("10.96.0.10:80".parse().unwrap()).unwrap();
        assert_eq!((&*t.service, t.protocol), ("default/web", Protocol::Http));
        assert_eq!(
            s.by_vip("10.96.0.10:9000".parse().unwrap())
                .unwrap()
                .protocol,
            Protocol::Tcp
        );
        assert!(s.by_vip("10.96.0.10:81".parse().unwrap()).is_none());
        assert_eq!(s.by_authority("web").as_deref(), Some("default/web"));
        assert_eq!(s.by_authority("WEB:80").as_deref(), Some("default/web"));
        assert_eq!(s.by_authority("web.shop").as_deref(), Some("shop/web"));
        assert_eq!(
            s.by_authority("web.shop.svc.netd.local.").as_deref(),
            Some("shop/web")
        );
        assert_eq!(s.by_authority("10.96.0.11:80").as_deref(), Some("shop/web"));
        assert_eq!(s.by_authority("nope"), None);
        let eps = s.endpoints("default/web").unwrap();
        let addrs: Vec<String> = eps.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.2:8080", "127.0.0.4:8080"]);
        assert_eq!(eps[0].weight, 2);
        assert_eq!(s.endpoints("shop/web").unwrap().len(), 0);
        // Inbound labels: every registered endpoint, healthy or not.
        let svc = |a: &str| s.endpoint_service(a.parse().unwrap());
        assert_eq!(svc("127.0.0.3:8080").as_deref(), Some("default/web"));
        assert_eq!(svc("127.0.0.3:8081"), None);
        // Routes, for services that have them.
        assert!(s.routes("default/web").is_none());
        let cart = s.routes("shop/web").unwrap();
        let found = cart.find(&hyper::Method::POST, "/cart/1");
        assert_eq!(cart.name(found), "cart");
    }

    #[test]
    fn empty_data_is_in_the_default_domain() {
        assert_eq!(SnapshotData::default().domain, DEFAULT_DOMAIN);
    }

    #[test]
    fn store_swaps_and_notifies() {
        let store = SnapshotStore::new();
        assert!(!store.is_loaded());
        let rx = store.subscribe();
        store.publish(data());
        assert!(store.is_loaded());
        assert!(rx.has_changed().unwrap());
        assert!(store.load().endpoints("default/web").is_some());
    }

    #[test]
    fn unchanged_routes_keep_their_table_across_snapshots() {
        let store = SnapshotStore::new();
        store.publish(data());
        let first = store.load().routes("shop/web").unwrap().clone();
        // Endpoint churn: same routes, same table (and so the same resolved series).
        let mut d = data();
        d.endpoints.pop();
        store.publish(d.clone());
        assert!(Arc::ptr_eq(
            &first,
            store.load().routes("shop/web").unwrap()
        ));
        // Changed routes: a new table.
        d.services[1].routes[0].path_prefix = "/basket".into();
        store.publish(d);
        let third = store.load().routes("shop/web").unwrap().clone();
        assert!(!Arc::ptr_eq(&first, &third));
        assert_eq!(
            third.name(third.find(&hyper::Method::POST, "/basket")),
            "cart"
        );
    }
}
