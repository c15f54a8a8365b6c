//! Load balancing: per service, a set of endpoints and a [`Policy`] that picks one per HTTP
//! request or TCP connection; and the [`Directory`] that keeps one [`ServiceBalancer`] per
//! service in step with the snapshot.
//!
//! Endpoint state (in-flight count, latency estimate, pooled connections, metrics) lives in an
//! [`Endpoint`] shared by `Arc`. A snapshot update builds new endpoint sets that reuse the
//! `Arc`s of endpoints that stay, so their state survives; an endpoint that leaves the
//! snapshot is simply no longer in the set: it gets no new requests, while requests already
//! on it hold their `Arc` and finish (zero failed requests on scale-down).
//!
//! This module does not send anything; `pool` and `http`/`tcp` do.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::metrics::{Direction, HttpMetrics, Metrics};
use crate::pool::Pool;
use crate::snapshot::{EndpointAddr, Snapshot, SnapshotStore};
use crate::sockopt::ConnectOptions;

pub mod ewma;
pub mod policy;

pub use policy::{HashKey, Policy, PolicyError};

use ewma::PeakEwma;

/// Virtual nodes per unit of weight on a hash ring.
const RING_VNODES: u64 = 64;
/// Most points on one ring (weights are scaled down beyond this).
const RING_MAX_POINTS: u64 = 16_384;
/// Most direct (non-service) destinations kept with their pools.
const MAX_DIRECT: usize = 1024;

/// One upstream address and everything the sidecar knows about it.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    in_flight: AtomicUsize,
    ewma: Mutex<PeakEwma>,
    /// Pooled HTTP connections to it.
    pub pool: Pool,
    /// Request metrics with this endpoint as the peer.
    pub metrics: Arc<HttpMetrics>,
    /// For an inbound application endpoint ([`Directory::local`]): the service it serves and
    /// that service's request metrics (balanced endpoints are counted by their balancer).
    pub service_metrics: Option<Arc<HttpMetrics>>,
    service: Option<Arc<str>>,
}

impl Endpoint {
    /// A fresh endpoint with an empty pool.
    pub fn new(addr: SocketAddr, connect: ConnectOptions, metrics: Arc<HttpMetrics>) -> Self {
        Self {
            addr,
            in_flight: AtomicUsize::new(0),
            ewma: Mutex::new(PeakEwma::new(
                ewma::DEFAULT_PRIOR,
                ewma::DEFAULT_DECAY,
                Instant::now(),
            )),
            pool: Pool::new(addr, connect),
            metrics,
            service_metrics: None,
            service: None,
        }
    }

    /// The service this endpoint is counted under when it is not balanced by one (see
    /// [`Directory::local`]).
    pub fn service(&self) -> Option<&str> {
        self.service.as_deref()
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests or connections on it right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one request or connection until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
            started: Instant::now(),
        }
    }

    /// Records one round trip (request sent → response headers, or connect time for TCP).
    pub fn observe(&self, rtt: Duration) {
        if let Ok(mut e) = self.ewma.lock() {
            e.observe(rtt, Instant::now());
        }
    }

    /// Records one round trip that started at `started` and ends now (one clock read for
    /// both the duration and the estimate's timestamp).
    pub fn observe_since(&self, started: Instant) {
        let now = Instant::now();
        if let Ok(mut e) = self.ewma.lock() {
            e.observe(now.saturating_duration_since(started), now);
        }
    }

    /// Peak-EWMA load at `now`: latency estimate × (in-flight + 1).
    fn load(&self, now: Instant) -> f64 {
        let estimate = self.ewma.lock().map(|e| e.cost_ns(now)).unwrap_or(0.0);
        estimate * (self.in_flight() as f64 + 1.0)
    }
}

/// A request or connection in flight on an endpoint; dropping it ends it.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    started: Instant,
}

impl InFlight {
    /// The endpoint.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// When it started.
    pub fn started(&self) -> Instant {
        self.started
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of one service at one snapshot, prepared for every policy.
#[derive(Debug, Default)]
struct EndpointSet {
    endpoints: Vec<Arc<Endpoint>>,
    weights: Vec<u32>,
    /// Running sums of `weights`, for weighted choices by binary search.
    cumulative: Vec<u64>,
    /// Sorted (point, endpoint index); only for hash policies.
    ring: Vec<(u64, u32)>,
    policy: Policy,
}

impl EndpointSet {
    fn new(endpoints: Vec<Arc<Endpoint>>, weights: Vec<u32>, policy: Policy) -> Self {
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                total += u64::from(*w);
                total
            })
            .collect();
        let ring = match policy {
            Policy::Hash(_) => build_ring(&endpoints, &weights),
            _ => Vec::new(),
        };
        Self {
            endpoints,
            weights,
            cumulative,
            ring,
            policy,
        }
    }

    fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The endpoint owning position `x` in `[0, total)` of the weighted line.
    fn weighted(&self, x: u64) -> usize {
        self.cumulative.partition_point(|c| *c <= x)
    }

    fn pick(&self, rr: &AtomicU64, key: Option<u64>) -> Option<&Arc<Endpoint>> {
        let n = self.endpoints.len();
        if n <= 1 {
            return self.endpoints.first();
        }
        let total = self.total();
        let i = match &self.policy {
            Policy::RoundRobin => self.weighted(rr.fetch_add(1, Ordering::Relaxed) % total),
            Policy::Random => self.weighted(below(total)),
            Policy::Hash(_) => match key {
                Some(k) => self.ring_lookup(k),
                None => self.weighted(below(total)),
            },
            Policy::P2c => {
                let a = self.weighted(below(total));
                let mut b = self.weighted(below(total));
                if b == a {
                    b = (a + 1 + below(n as u64 - 1) as usize) % n;
                }
                let now = Instant::now();
                let cost = |i: usize| self.endpoints[i].load(now) / f64::from(self.weights[i]);
                // `a` is a random draw: near-ties (within 0.1%, e.g. endpoints that differ only
                // by when their estimate last decayed) stay random instead of always favouring
                // the same endpoint.
                if cost(b) < cost(a) * 0.999 {
                    b
                } else {
                    a
                }
            }
        };
        self.endpoints.get(i)
    }

    fn ring_lookup(&self, key: u64) -> usize {
        let i = self.ring.partition_point(|(p, _)| *p < key);
        let (_, idx) = self.ring[i % self.ring.len()];
        idx as usize
    }
}

fn build_ring(endpoints: &[Arc<Endpoint>], weights: &[u32]) -> Vec<(u64, u32)> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum::<u64>() * RING_VNODES;
    let scale = if total > RING_MAX_POINTS {
        RING_MAX_POINTS as f64 / total as f64
    } else {
        1.0
    };
    let mut ring = Vec::new();
    for (i, (ep, w)) in endpoints.iter().zip(weights).enumerate() {
        let points = ((u64::from(*w) * RING_VNODES) as f64 * scale).max(1.0) as u64;
        let addr = ep.addr().to_string();
        for v in 0..points {
            let mut h = Fnv::default();
            h.write(addr.as_bytes());
            h.write_u64(v);
            ring.push((h.finish(), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// The balancer of one service: its current endpoint set and policy.
#[derive(Debug)]
pub struct ServiceBalancer {
    key: Arc<str>,
    set: ArcSwap<EndpointSet>,
    rr: AtomicU64,
    /// Request metrics of the service.
    pub metrics: Arc<HttpMetrics>,
}

impl ServiceBalancer {
    /// Service key (`namespace/name`).
    pub fn key(&self) -> &Arc<str> {
        &self.key
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.set.load().policy.clone()
    }

    /// What the policy hashes, if it hashes.
    pub fn hash_key(&self) -> Option<HashKey> {
        match &self.set.load().policy {
            Policy::Hash(k) => Some(k.clone()),
            _ => None,
        }
    }

    /// Picks an endpoint; `key` is the hash of the request's hash key, when the policy has
    /// one and the request carries it. `None` when the service has no endpoints.
    pub fn pick(&self, key: Option<u64>) -> Option<Arc<Endpoint>> {
        self.set.load().pick(&self.rr, key).cloned()
    }

    /// Picks an endpoint for a request whose hash key `key_of` hashes (called only when the
    /// policy hashes), with one load of the endpoint set; returns the key's hash too, for
    /// picking again. `None` when the service has no endpoints.
    pub fn pick_for(
        &self,
        key_of: impl FnOnce(&HashKey) -> Option<u64>,
    ) -> (Option<Arc<Endpoint>>, Option<u64>) {
        let set = self.set.load();
        let key = match &set.policy {
            Policy::Hash(k) => key_of(k),
            _ => None,
        };
        (set.pick(&self.rr, key).cloned(), key)
    }

    /// Addresses currently balanced over.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.set.load().endpoints.iter().map(|e| e.addr()).collect()
    }
}

/// Stable 64-bit hash of a hash key (FNV-1a with a final mix), the same in every process so
/// that two sidecars send one key to the same endpoint.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.write(bytes);
    h.finish()
}

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        // splitmix64 finalizer: spreads FNV's weak low bits over the ring.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

thread_local! {
    static RNG: std::cell::Cell<u64> = std::cell::Cell::new(
        std::collections::hash_map::RandomState::new().build_hasher().finish() | 1,
    );
}

/// A fast non-cryptographic random number (wyrand), seeded per thread from the OS-seeded
/// `RandomState`. Good for balancing and trace ids, not for secrets.
pub fn random() -> u64 {
    RNG.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// A random number in `[0, n)` from the high bits (multiply-shift), for `n > 0`.
fn below(n: u64) -> u64 {
    ((u128::from(random()) * u128::from(n)) >> 64) as u64
}

/// An inbound application endpoint: its address and the service it serves.
type LocalKey = (SocketAddr, Arc<str>);

/// Balancer settings that do not come from the snapshot.
#[derive(Debug, Clone, Default)]
pub struct DirectoryOptions {
    /// Policy of services the snapshot and `overrides` say nothing about.
    pub default_policy: Policy,
    /// Policy by service key, from the command line; wins over the snapshot.
    pub overrides: HashMap<String, Policy>,
    /// How upstream connections are opened.
    pub connect: ConnectOptions,
}

/// Every service's balancer, kept in step with the snapshot, and the endpoints of direct
/// (non-service) destinations.
#[derive(Debug)]
pub struct Directory {
    services: ArcSwap<HashMap<Arc<str>, Arc<ServiceBalancer>>>,
    direct: Mutex<HashMap<SocketAddr, Arc<Endpoint>>>,
    local: Mutex<HashMap<LocalKey, Arc<Endpoint>>>,
    options: DirectoryOptions,
    metrics: Arc<Metrics>,
    direction: Direction,
    store: SnapshotStore,
    synced: AtomicU64,
    updating: Mutex<()>,
}

impl Directory {
    /// A directory that follows `store`: every lookup first catches up with the latest
    /// published snapshot (one atomic load when nothing changed).
    pub fn new(
        options: DirectoryOptions,
        metrics: Arc<Metrics>,
        direction: Direction,
        store: SnapshotStore,
    ) -> Self {
        Self {
            services: ArcSwap::default(),
            direct: Mutex::default(),
            local: Mutex::default(),
            options,
            metrics,
            direction,
            store,
            synced: AtomicU64::new(0),
            updating: Mutex::new(()),
        }
    }

    /// Catches up with the store's latest snapshot.
    pub fn sync(&self) {
        let generation = self.store.generation();
        if generation == self.synced.load(Ordering::Acquire) {
            return;
        }
        let Ok(_updating) = self.updating.lock() else {
            return;
        };
        if generation != self.synced.load(Ordering::Acquire) {
            self.update(&self.store.load());
            self.synced.store(generation, Ordering::Release);
        }
    }

    /// The metrics registry its series are in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The balancer of service `key`.
    pub fn service(&self, key: &str) -> Option<Arc<ServiceBalancer>> {
        self.sync();
        self.services.load().get(key).cloned()
    }

    /// The endpoint for a destination outside every service (passthrough, inbound).
    pub fn direct(&self, addr: SocketAddr) -> Arc<Endpoint> {
        let Ok(mut direct) = self.direct.lock() else {
            return Arc::new(self.new_endpoint("-", addr));
        };
        if let Some(ep) = direct.get(&addr) {
            return ep.clone();
        }
        if direct.len() >= MAX_DIRECT {
            direct.retain(|_, ep| Arc::strong_count(ep) > 1);
        }
        let ep = Arc::new(self.new_endpoint("-", addr));
        direct.insert(addr, ep.clone());
        ep
    }

    /// The inbound application endpoint at `app` serving `service`: its requests are counted
    /// under the service (and the application as the peer).
    pub fn local(&self, app: SocketAddr, service: Arc<str>) -> Arc<Endpoint> {
        let make = || {
            let mut ep = self.new_endpoint(&service, app);
            ep.service_metrics = Some(self.metrics.http_service(self.direction, &service));
            ep.service = Some(service.clone());
            Arc::new(ep)
        };
        let Ok(mut local) = self.local.lock() else {
            return make();
        };
        let key = (app, service.clone());
        if let Some(ep) = local.get(&key) {
            return ep.clone();
        }
        if local.len() >= MAX_DIRECT {
            local.retain(|_, ep| Arc::strong_count(ep) > 1);
        }
        let ep = make();
        local.insert(key, ep.clone());
        ep
    }

    fn new_endpoint(&self, service: &str, addr: SocketAddr) -> Endpoint {
        let metrics = self.metrics.http_peer(self.direction, service, addr);
        Endpoint::new(addr, self.options.connect, metrics)
    }

    /// Rebuilds every service's endpoint set from `snapshot`, keeping the state of endpoints
    /// that stay. Services gone from the snapshot are dropped (their in-flight work finishes).
    pub fn update(&self, snapshot: &Snapshot) {
        let old = self.services.load_full();
        let mut next = HashMap::with_capacity(old.len());
        for (key, addrs) in snapshot.services() {
            let policy = self
                .options
                .overrides
                .get(&**key)
                .or_else(|| snapshot.policy(key))
                .unwrap_or(&self.options.default_policy)
                .clone();
            let balancer = match old.get(key) {
                Some(b) => b.clone(),
                None => Arc::new(ServiceBalancer {
                    key: key.clone(),
                    set: ArcSwap::default(),
                    rr: AtomicU64::new(0),
                    metrics: self.metrics.http_service(self.direction, key),
                }),
            };
            let set = self.endpoint_set(&balancer, key, addrs, policy);
            balancer.set.store(Arc::new(set));
            next.insert(key.clone(), balancer);
        }
        self.services.store(Arc::new(next));
    }

    fn endpoint_set(
        &self,
        balancer: &ServiceBalancer,
        key: &str,
        addrs: &[EndpointAddr],
        policy: Policy,
    ) -> EndpointSet {
        let current = balancer.set.load();
        let mut endpoints = Vec::with_capacity(addrs.len());
        let mut weights = Vec::with_capacity(addrs.len());
        for a in addrs {
            let ep = current
                .endpoints
                .iter()
                .find(|e| e.addr() == a.addr)
                .cloned()
                .unwrap_or_else(|| Arc::new(self.new_endpoint(key, a.addr)));
            endpoints.push(ep);
            weights.push(a.weight.max(1));
        }
        EndpointSet::new(endpoints, weights, policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SnapshotData;

    fn snapshot(eps: &[(&str, u32)], policy: &str) -> Snapshot {
        let endpoints: Vec<_> = eps
            .iter()
            .map(|(a, w)| {
                let addr: SocketAddr = a.parse().unwrap();
                serde_json::json!({"id": a, "service": "web", "namespace": "default",
                    "address": addr.ip(), "port": addr.port(), "node": "n", "weight": w})
            })
            .collect();
        let data: SnapshotData = serde_json::from_value(serde_json::json!({
            "services": [{"name": "web", "namespace": "default", "vip": "10.96.0.1",
                          "ports": [{"port": 80}]}],
            "endpoints": endpoints,
            "balancers": {"default/web": policy}
        }))
        .unwrap();
        Snapshot::new(data)
    }

    fn directory() -> Directory {
        Directory::new(
            DirectoryOptions::default(),
            Arc::new(Metrics::new()),
            Direction::Outbound,
            SnapshotStore::new(),
        )
    }

    fn counts(
        b: &ServiceBalancer,
        n: usize,
        key: impl Fn(usize) -> Option<u64>,
    ) -> HashMap<u16, usize> {
        let mut c = HashMap::new();
        for i in 0..n {
            *c.entry(b.pick(key(i)).unwrap().addr().port()).or_default() += 1;
        }
        c
    }

    #[test]
    fn weighted_round_robin_is_exact() {
        let d = directory();
        d.update(&snapshot(
            &[("127.0.0.1:1", 1), ("127.0.0.1:2", 3)],
            "round-robin",
        ));
        let c = counts(&d.service("default/web").unwrap(), 400, |_| None);
        assert_eq!((c[&1], c[&2]), (100, 300));
    }

    #[test]
    fn random_respects_weights() {
        let d = directory();
        d.update(&snapshot(
            &[("127.0.0.1:1", 1), ("127.0.0.1:2", 9)],
            "random",
        ));
        let c = counts(&d.service("default/web").unwrap(), 10_000, |_| None);
        assert!(c[&1] > 500 && c[&1] < 1500, "{c:?}");
    }

    #[test]
    fn p2c_avoids_the_loaded_and_the_slow() {
        let d = directory();
        d.update(&snapshot(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)], "p2c"));
        let b = d.service("default/web").unwrap();
        let eps: Vec<_> = (0..50).filter_map(|_| b.pick(None)).collect();
        let slow = eps.iter().find(|e| e.addr().port() == 1).unwrap().clone();
        slow.observe(Duration::from_secs(1));
        let c = counts(&b, 1000, |_| None);
        assert_eq!(c.get(&1), None, "{c:?}");
        // Equal latency, but port 2 carries many requests: port 1 wins.
        let fast = eps.iter().find(|e| e.addr().port() == 2).unwrap().clone();
        fast.observe(Duration::from_secs(1));
        let _busy: Vec<_> = (0..20).map(|_| fast.start()).collect();
        let c = counts(&b, 1000, |_| None);
        assert_eq!(c.get(&2), None, "{c:?}");
    }

    #[test]
    fn hashing_is_sticky_and_moves_little_on_scale_down() {
        let d = directory();
        let three = [("127.0.0.1:1", 1), ("127.0.0.1:2", 1), ("127.0.0.1:3", 1)];
        d.update(&snapshot(&three, "hash:header:x-user"));
        let b = d.service("default/web").unwrap();
        let before: Vec<u16> = (0..300)
            .map(|i| {
                b.pick(Some(hash_bytes(format!("user{i}").as_bytes())))
                    .unwrap()
                    .addr()
                    .port()
            })
            .collect();
        let again: Vec<u16> = (0..300)
            .map(|i| {
                b.pick(Some(hash_bytes(format!("user{i}").as_bytes())))
                    .unwrap()
                    .addr()
                    .port()
            })
            .collect();
        assert_eq!(before, again);
        assert!((1..=3).all(|p| before.contains(&p)));
        d.update(&snapshot(&three[..2], "hash:header:x-user"));
        let after: Vec<u16> = (0..300)
            .map(|i| {
                b.pick(Some(hash_bytes(format!("user{i}").as_bytes())))
                    .unwrap()
                    .addr()
                    .port()
            })
            .collect();
        for (x, y) in before.iter().zip(&after) {
            if *x != 3 {
                assert_eq!(x, y, "a key not on the removed endpoint moved");
            }
        }
    }

    #[test]
    fn update_keeps_state_and_removed_endpoints_finish() {
        let d = directory();
        d.update(&snapshot(
            &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)],
            "round-robin",
        ));
        let b = d.service("default/web").unwrap();
        let first = b.pick(None).unwrap();
        let guard = first.start();
        let gone = first.addr();
        let stays: Vec<_> = [("127.0.0.1:1", 1), ("127.0.0.1:2", 1)]
            .into_iter()
            .filter(|(a, _)| a.parse::<SocketAddr>().unwrap() != gone)
            .collect();
        d.update(&snapshot(&stays, "round-robin"));
        assert!((0..100).all(|_| b.pick(None).unwrap().addr() != gone));
        assert_eq!(guard.endpoint().in_flight(), 1);
        drop(guard);
        assert_eq!(first.in_flight(), 0);
        // The endpoint that stayed kept its identity (and so its pool and estimate).
        let kept = b.pick(None).unwrap();
        d.update(&snapshot(&stays, "round-robin"));
        assert!(Arc::ptr_eq(&kept, &b.pick(None).unwrap()));
    }

    #[test]
    fn empty_service_picks_nothing() {
        let d = directory();
        d.update(&snapshot(&[], "p2c"));
        assert!(d.service("default/web").unwrap().pick(None).is_none());
        assert!(d.service("default/nope").is_none());
    }
}
