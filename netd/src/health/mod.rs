//! Active health checks: every endpoint of every service that carries a `health_check` is
//! probed on its interval, and its `health` is flipped through the registry when a threshold
//! of consecutive outcomes is crossed ([`tracker`]). Endpoints of services without a check are
//! never touched and stay `unknown` (which balancers treat as usable).
//!
//! One task ([`run`]) owns all the state; nothing here locks. It follows the registry's
//! revision ([`Registry::revisions`], not a watch subscription) and re-derives its probe
//! targets from the snapshot, skipping every service whose record and endpoint map are the
//! same shared `Arc`s as last time, so its own health writes cost a pointer comparison per
//! service to re-read. New endpoints are probed right away (spread over up to a second), and
//! removed ones are dropped from the schedule at once; a probe of theirs still in flight is
//! ignored when it returns. A changed address or check starts the endpoint's count afresh.
//!
//! Each probe ([`probe`](mod@probe)) runs in its own task, bounded by the check's timeout; at most
//! `max_in_flight` run at once and at most one per endpoint, the next being due one interval
//! after the previous started. Verdicts are compared with the stored health and only
//! differences are written ([`Registry::set_health`]), so a revision and a watch event come per
//! transition, never per probe; transitions decided by probes that finish together share one
//! transaction (one fsync). Probes run from the host's network namespace: container endpoints
//! are on bridge addresses the host reaches.

pub mod probe;
pub mod tracker;

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use netd_config::netd::{HealthCheck, Service};
use tokio::sync::watch;
use tokio::task::{self, JoinSet};
use tokio::time::Instant;

use self::probe::{probe, ProbeError};
use self::tracker::Tracker;
use crate::api::drained;
use crate::registry::health::HealthUpdate;
use crate::registry::model::EndpointMap;
use crate::registry::Registry;

/// Probes in flight at once, by default.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// New endpoints are first probed within this long (spread by a hash of their key, so a
/// service registered with many endpoints does not probe them all in the same instant).
const FIRST_PROBE_SPREAD: Duration = Duration::from_secs(1);

/// Probes endpoints and records their health until `stop` turns true.
pub async fn run(registry: Arc<Registry>, max_in_flight: usize, mut stop: watch::Receiver<bool>) {
    let mut revisions = registry.revisions();
    revisions.borrow_and_update();
    let mut checker = Checker::new(registry, max_in_flight.max(1));
    checker.reconcile();
    loop {
        checker.launch_due();
        let wake = checker.next_wake();
        tokio::select! {
            _ = drained(&mut stop) => return,
            changed = revisions.changed() => {
                if changed.is_err() {
                    return;
                }
                checker.reconcile();
            }
            Some(first) = checker.probes.join_next_with_id(), if !checker.probes.is_empty() => {
                let mut finished = vec![first];
                while let Some(more) = checker.probes.try_join_next_with_id() {
                    finished.push(more);
                }
                checker.finish(finished).await;
            }
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
        }
    }
}

/// A service being checked.
struct Checked {
    /// The record last synced (compared by pointer).
    service: Arc<Service>,
    /// Its endpoint map last synced (compared by pointer).
    endpoints: Option<Arc<EndpointMap>>,
    check: Arc<HealthCheck>,
    /// Targets by endpoint id.
    targets: HashMap<String, Target>,
}

/// One endpoint being probed.
struct Target {
    addr: SocketAddr,
    tracker: Tracker,
    /// Changes when the address or the check changes: results of older probes are ignored.
    generation: u64,
    /// Sequence number of this target's live queue entry, if it is queued.
    queued: Option<u64>,
    in_flight: bool,
}

/// A queue entry; stale ones (superseded, or of removed targets) are skipped when popped.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    seq: u64,
    service_key: String,
    id: String,
}

/// What a running probe is about.
struct InFlight {
    service_key: String,
    id: String,
    generation: u64,
    started: Instant,
}

type Finished = Result<(task::Id, Result<(), ProbeError>), task::JoinError>;

struct Checker {
    registry: Arc<Registry>,
    max_in_flight: usize,
    services: HashMap<String, Checked>,
    queue: BinaryHeap<Reverse<Due>>,
    seq: u64,
    probes: JoinSet<Result<(), ProbeError>>,
    in_flight: HashMap<task::Id, InFlight>,
}

impl Checker {
    fn new(registry: Arc<Registry>, max_in_flight: usize) -> Self {
        Self {
            registry,
            max_in_flight,
            services: HashMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            probes: JoinSet::new(),
            in_flight: HashMap::new(),
        }
    }

    /// Brings the targets in line with the current snapshot.
    fn reconcile(&mut self) {
        let snap = self.registry.snapshot();
        let now = Instant::now();
        let mut live: HashSet<&str> = HashSet::new();
        for (key, svc) in snap.services.iter() {
            let Some(check) = &svc.health_check else {
                continue;
            };
            live.insert(key.as_str());
            let eps = snap.endpoints.get(key);
            if let Some(c) = self.services.get(key) {
                let same_eps = match (&c.endpoints, eps) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                };
                if same_eps && Arc::ptr_eq(&c.service, svc) {
                    continue;
                }
            }
            self.sync_service(key, svc, check, eps, now);
        }
        self.services.retain(|k, _| live.contains(k.as_str()));
    }

    /// Adds, resets and removes the targets of one service.
    fn sync_service(
        &mut self,
        key: &str,
        svc: &Arc<Service>,
        check: &HealthCheck,
        eps: Option<&Arc<EndpointMap>>,
        now: Instant,
    ) {
        let c = self
            .services
            .entry(key.to_string())
            .or_insert_with(|| Checked {
                service: svc.clone(),
                endpoints: None,
                check: Arc::new(check.clone()),
                targets: HashMap::new(),
            });
        let check_changed = *c.check != *check;
        if check_changed {
            c.check = Arc::new(check.clone());
        }
        c.service = svc.clone();
        c.endpoints = eps.cloned();
        c.targets
            .retain(|id, _| eps.is_some_and(|m| m.contains_key(id)));
        for (id, ep) in eps.into_iter().flat_map(|m| m.iter()) {
            let addr = SocketAddr::new(ep.address, ep.port);
            let first = now + spread(key, id, Duration::from_millis(c.check.interval_ms));
            match c.targets.get_mut(id) {
                Some(t) if t.addr == addr && !check_changed => {}
                Some(t) => {
                    self.seq += 1;
                    t.addr = addr;
                    t.tracker = Tracker::default();
                    t.generation = self.seq;
                    // An in-flight probe is rescheduled when it returns.
                    if !t.in_flight {
                        enqueue(&mut self.queue, &mut self.seq, key, id, t, first);
                    }
                }
                None => {
                    self.seq += 1;
                    let mut t = Target {
                        addr,
                        tracker: Tracker::default(),
                        generation: self.seq,
                        queued: None,
                        in_flight: false,
                    };
                    enqueue(&mut self.queue, &mut self.seq, key, id, &mut t, first);
                    c.targets.insert(id.clone(), t);
                }
            }
        }
    }

    /// Starts the probes that are due, as long as there is room.
    fn launch_due(&mut self) {
        let now = Instant::now();
        while self.in_flight.len() < self.max_in_flight {
            match self.queue.peek() {
                Some(Reverse(due)) if due.at <= now => {}
                _ => return,
            }
            let Some(Reverse(due)) = self.queue.pop() else {
                return;
            };
            let Some(c) = self.services.get_mut(&due.service_key) else {
                continue;
            };
            let Some(t) = c.targets.get_mut(&due.id) else {
                continue;
            };
            if t.queued != Some(due.seq) || t.in_flight {
                continue;
            }
            t.queued = None;
            t.in_flight = true;
            let (check, addr) = (c.check.clone(), t.addr);
            let handle = self.probes.spawn(async move { probe(&check, addr).await });
            self.in_flight.insert(
                handle.id(),
                InFlight {
                    service_key: due.service_key,
                    id: due.id,
                    generation: t.generation,
                    started: now,
                },
            );
        }
    }

    /// When the loop must wake to launch the next probe (`None`: only a finished probe or a
    /// registry change can make progress).
    fn next_wake(&self) -> Option<Instant> {
        if self.in_flight.len() >= self.max_in_flight {
            return None;
        }
        self.queue.peek().map(|Reverse(d)| d.at)
    }

    /// Records finished probes, reschedules their targets and writes the transitions.
    async fn finish(&mut self, finished: Vec<Finished>) {
        let snap = self.registry.snapshot();
        let now = Instant::now();
        let mut updates = Vec::new();
        let mut reasons: HashMap<(String, String), String> = HashMap::new();
        for f in finished {
            let (task_id, outcome) = match f {
                Ok((id, outcome)) => (id, outcome),
                // A probe task cannot panic by design; count a panic as a failed probe.
                Err(e) => (
                    e.id(),
                    Err(ProbeError::Io(std::io::Error::other(e.to_string()))),
                ),
            };
            let Some(p) = self.in_flight.remove(&task_id) else {
                continue;
            };
            let Some(c) = self.services.get_mut(&p.service_key) else {
                continue;
            };
            let Some(t) = c.targets.get_mut(&p.id) else {
                continue;
            };
            t.in_flight = false;
            if t.generation != p.generation {
                enqueue(
                    &mut self.queue,
                    &mut self.seq,
                    &p.service_key,
                    &p.id,
                    t,
                    now,
                );
                continue;
            }
            let interval = Duration::from_millis(c.check.interval_ms);
            enqueue(
                &mut self.queue,
                &mut self.seq,
                &p.service_key,
                &p.id,
                t,
                (p.started + interval).max(now),
            );
            let Some(verdict) = t.tracker.record(outcome.is_ok(), &c.check) else {
                continue;
            };
            let stored = snap
                .endpoints
                .get(&p.service_key)
                .and_then(|m| m.get(&p.id))
                .map(|e| e.health);
            if stored.is_some_and(|h| h != verdict) {
                let reason = match &outcome {
                    Ok(()) => format!("{} probes passed", t.tracker.successes()),
                    Err(e) => format!("{} probes failed; last: {e}", t.tracker.failures()),
                };
                updates.push(HealthUpdate {
                    service_key: p.service_key.clone(),
                    id: p.id.clone(),
                    target: t.addr,
                    health: verdict,
                });
                reasons.insert((p.service_key, p.id), reason);
            }
        }
        if updates.is_empty() {
            return;
        }
        match self.registry.set_health(&updates).await {
            Ok(changed) => {
                for e in changed {
                    let reason = reasons
                        .get(&(e.service_key(), e.id.clone()))
                        .map_or("", String::as_str);
                    crate::log(&format!(
                        "health: {}/{} endpoint {} is {} ({reason})",
                        e.namespace, e.service, e.id, e.health
                    ));
                }
            }
            // The verdicts repeat on the next probes, so the write is retried then.
            Err(e) => crate::log(&format!("health: storing endpoint health failed: {e}")),
        }
    }
}

/// Queues `t` to be probed at `at`, superseding any earlier entry of it.
fn enqueue(
    queue: &mut BinaryHeap<Reverse<Due>>,
    seq: &mut u64,
    service_key: &str,
    id: &str,
    t: &mut Target,
    at: Instant,
) {
    *seq += 1;
    t.queued = Some(*seq);
    queue.push(Reverse(Due {
        at,
        seq: *seq,
        service_key: service_key.to_string(),
        id: id.to_string(),
    }));
}

/// Delay of an endpoint's first probe: a stable hash of its key within
/// `min(interval, FIRST_PROBE_SPREAD)`.
fn spread(service_key: &str, id: &str, interval: Duration) -> Duration {
    let window = interval.min(FIRST_PROBE_SPREAD).as_millis().max(1);
    let mut h = DefaultHasher::new();
    (service_key, id).hash(&mut h);
    let ms = u128::from(h.finish()) % window;
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
