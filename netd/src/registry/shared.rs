//! Group commit on a shared store (etcd): the changes of concurrent writers on this node go to
//! the store together, several per transaction, instead of one round trip each.
//!
//! **Tip and chain.** A writer validates against the *tip*: the published snapshot when none
//! of this node's changes is pending, otherwise the snapshot a pending change left behind
//! (the published one plus every change queued since). It queues its store operations and
//! releases the write lock at once; it is answered when the store has committed them and the
//! feed has brought them back. A change validated against the published snapshot at revision
//! `P` starts a *chain* and is guarded by `P`; a change validated against the tip follows the
//! change before it and is guarded by the revision that change's transaction got. Either way
//! the store refuses the transaction ([`StoreError::Conflict`]) if another netd transaction
//! committed in between, so no change is ever applied on a state other than the one it was
//! validated against (etcd's own lease expiries are not netd transactions: as before grouping,
//! a change may still name a lease that has just expired, and etcd refuses it).
//!
//! **Groups.** The committer sends everything queued while the previous transaction was in
//! flight as one transaction, guarded like the group's first change, cut where the store's
//! [limits](super::store::Store::limits) would be exceeded (etcd's `--max-txn-ops`, whose
//! revision guard the store counts itself), where a change touches a key already in the group
//! (etcd refuses two changes of one key in one transaction; the second goes first in the next
//! group, guarded by the first's revision) and where a new chain starts. Every writer of a
//! group gets the group's revision, and watchers get the group as one batch.
//!
//! **Failures.** A conflict fails the group and every change queued after it (they were
//! validated against it): their writers re-run their operations against the newer snapshot
//! ([`Registry::retry_conflicts`]), and the tip falls back to the published snapshot. A store
//! that is unreachable fails them all with that error. Any other refusal (a lease that
//! expired, a change too large) concerns one change, but the store does not say which: the
//! group is sent again one change per transaction, so the culprit alone gets the error and the
//! changes after it re-run as after a conflict.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot, OwnedMutexGuard};

use super::model::Snapshot;
use super::store::{StoreError, StoreOp, Table, Txn, TxnLimits};
use super::{Committed, Registry, RegistryError, Tip, GROUP_MAX};

/// A change queued for the shared committer.
pub(super) struct Queued {
    /// Revision of the published snapshot the change was validated against when it starts a
    /// chain; `None` when it was validated against the tip and follows the change before it.
    pub base: Option<u64>,
    /// Its store operations (none: the writer only waits for the changes before it).
    pub ops: Vec<StoreOp>,
    /// Gets the revision of the transaction that stored the change.
    pub done: oneshot::Sender<Result<u64, StoreError>>,
}

/// Queues a change validated against `base` (`None`: against the tip, after the change queued
/// before it), makes `next` the tip and releases the write lock; then waits until the change
/// is stored and this node's snapshot includes it.
pub(super) async fn commit(
    registry: &Registry,
    queue: &mpsc::UnboundedSender<Queued>,
    mut tip: OwnedMutexGuard<Tip>,
    base: Option<u64>,
    ops: Vec<StoreOp>,
    next: Arc<Snapshot>,
) -> Result<Committed, RegistryError> {
    let stopped = || RegistryError::Internal("the committer stopped".into());
    let (done, stored) = oneshot::channel();
    queue
        .send(Queued { base, ops, done })
        .map_err(|_| stopped())?;
    tip.seq += 1;
    let seq = tip.seq;
    tip.snapshot = next;
    drop(tip);
    let committed = match stored.await {
        Ok(Ok(revision)) => registry
            .wait_applied(revision)
            .await
            .map(|snapshot| Committed { revision, snapshot }),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(stopped()),
    };
    // Published (or failed, or lagging): when this was the last change queued, the next
    // writer validates against the published snapshot.
    registry.finished.fetch_max(seq, Ordering::AcqRel);
    committed
}

/// How many changes at the front of `pending` go into the next transaction: at least one,
/// then as many as fit `limits`, touch no key already taken, and continue the same chain.
pub(super) fn group_len(pending: &VecDeque<Queued>, limits: TxnLimits) -> usize {
    let (mut ops, mut bytes) = (0, 0);
    let mut keys: HashSet<(Table, &str)> = HashSet::new();
    for (i, q) in pending.iter().enumerate().take(GROUP_MAX) {
        let size: usize = q.ops.iter().map(StoreOp::size).sum();
        let fits = ops + q.ops.len() <= limits.ops && bytes + size <= limits.bytes;
        let distinct = q.ops.iter().all(|op| !keys.contains(&op.target()));
        if i > 0 && (q.base.is_some() || !fits || !distinct) {
            return i;
        }
        ops += q.ops.len();
        bytes += size;
        keys.extend(q.ops.iter().map(StoreOp::target));
    }
    pending.len().min(GROUP_MAX)
}

/// The committer of a shared store (see the module docs): runs until the queue closes or the
/// registry is dropped.
pub(super) async fn run(registry: Weak<Registry>, mut queue: mpsc::UnboundedReceiver<Queued>) {
    // Revision of this node's last successful transaction, while its chain goes on.
    let mut chain: Option<u64> = None;
    let mut received = Vec::new();
    while queue.recv_many(&mut received, GROUP_MAX).await > 0 {
        let Some(registry) = registry.upgrade() else {
            return;
        };
        let limits = registry.store.limits();
        let mut pending: VecDeque<Queued> = received.drain(..).collect();
        // After a refused group: how many changes to send one per transaction.
        let mut alone: usize = 0;
        while !pending.is_empty() {
            let n = if alone > 0 {
                1
            } else {
                group_len(&pending, limits)
            };
            let group: Vec<Queued> = pending.drain(..n).collect();
            let base = group[0].base.or(chain);
            let ops: Vec<StoreOp> = group.iter().flat_map(|q| q.ops.iter().cloned()).collect();
            let outcome = match base {
                // Only waits for changes already stored.
                _ if ops.is_empty() => Ok(chain.unwrap_or(0)),
                Some(base) => {
                    let txn = Txn {
                        base_revision: base,
                        revision: base + 1,
                        ops,
                    };
                    registry.store.commit(txn).await
                }
                // A change that follows one the committer has not stored: cannot happen (the
                // queue is emptied whenever a chain breaks); re-run it rather than guess.
                None => Err(StoreError::Conflict {
                    expected: 0,
                    stored: registry.snapshot().revision,
                }),
            };
            alone = alone.saturating_sub(1);
            let error = match outcome {
                Ok(revision) => {
                    chain = Some(revision.max(chain.unwrap_or(0)));
                    for q in group {
                        let _ = q.done.send(Ok(revision));
                    }
                    continue;
                }
                Err(e) => e,
            };
            let retryable = matches!(error, StoreError::Conflict { .. });
            let unavailable = matches!(error, StoreError::Unavailable(_));
            if group.len() > 1 && !retryable && !unavailable {
                alone = group.len();
                for q in group.into_iter().rev() {
                    pending.push_front(q);
                }
                continue;
            }
            chain = None;
            // Whatever follows was validated against the failed change: its writers re-run
            // (or, when the store is unreachable, fail the same way).
            let stored = match &error {
                StoreError::Conflict { stored, .. } => *stored,
                _ => registry.snapshot().revision,
            };
            let message = error.to_string();
            let after = move || {
                if unavailable {
                    StoreError::Unavailable(message.clone())
                } else {
                    StoreError::Conflict {
                        expected: base.unwrap_or(0),
                        stored,
                    }
                }
            };
            let mut first = Some(error);
            let mut fail = |q: Queued| {
                let e = first.take().unwrap_or_else(&after);
                let _ = q.done.send(Err(e));
            };
            // Writers queue while holding the lock: with it held, everything queued after the
            // failed change is in the channel, and nothing new can be.
            let tip = registry.write.lock().await;
            for q in group.into_iter().chain(pending.drain(..)) {
                fail(q);
            }
            while let Ok(q) = queue.try_recv() {
                fail(q);
            }
            // The next writer validates against the published snapshot again.
            registry.finished.fetch_max(tip.seq, Ordering::AcqRel);
            drop(tip);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Duration;

    use netd_config::netd::{EndpointSpec, Event, Object, ServicePort, ServiceSpec};

    use super::super::store::{
        Change, ChangeFeed, ChangeOp, Entry, Loaded, Store, StoreFuture, StoreInfo,
    };
    use super::super::{RegistryConfig, RegistryError};
    use super::*;

    /// A shared store in memory that behaves like etcd where it matters here: a transaction
    /// is refused as a conflict when another one committed since its base, refused outright
    /// when it has more operations than the limit or two of one key (or a key containing
    /// "poison"), gets the next revision, and comes back to every follower in order. Each
    /// commit takes `delay`, so writers pile up behind it.
    struct Fake {
        state: tokio::sync::Mutex<State>,
        limits: TxnLimits,
        delay: Duration,
        commits: AtomicUsize,
        /// Why transactions were refused.
        refused: std::sync::Mutex<Vec<String>>,
    }

    #[derive(Default)]
    struct State {
        revision: u64,
        /// Revision of the last transaction (etcd: the revision key's `mod_revision`).
        guard: u64,
        records: BTreeMap<(Table, String), Vec<u8>>,
        feeds: Vec<mpsc::Sender<Change>>,
    }

    impl Fake {
        fn new(ops: usize) -> Arc<Self> {
            Arc::new(Self {
                state: Default::default(),
                limits: TxnLimits {
                    ops,
                    bytes: usize::MAX,
                },
                delay: Duration::from_millis(5),
                commits: AtomicUsize::new(0),
                refused: Default::default(),
            })
        }

        async fn commit_txn(&self, txn: Txn) -> Result<u64, StoreError> {
            tokio::time::sleep(self.delay).await;
            let mut st = self.state.lock().await;
            self.commits.fetch_add(1, Ordering::Relaxed);
            let refuse = |why: &str| {
                self.refused.lock().unwrap().push(why.to_string());
                Err(StoreError::Write(why.to_string()))
            };
            if txn.ops.len() > self.limits.ops {
                return refuse("too many operations in txn request");
            }
            let keys: HashSet<(Table, &str)> = txn.ops.iter().map(StoreOp::target).collect();
            if keys.len() != txn.ops.len() {
                return refuse("duplicate key given in txn request");
            }
            if keys.iter().any(|(_, k)| k.contains("poison")) {
                return refuse("poisoned");
            }
            if st.guard > txn.base_revision {
                return Err(StoreError::Conflict {
                    expected: txn.base_revision,
                    stored: st.guard,
                });
            }
            st.revision += 1;
            st.guard = st.revision;
            let revision = st.revision;
            let mut changes = Vec::new();
            for op in txn.ops {
                changes.push(match op {
                    StoreOp::Put {
                        table, key, value, ..
                    } => {
                        st.records.insert((table, key.clone()), value.clone());
                        ChangeOp::Put(Entry {
                            table,
                            key,
                            value,
                            revision: Some(revision),
                        })
                    }
                    StoreOp::Delete { table, key } => {
                        st.records.remove(&(table, key.clone()));
                        ChangeOp::Delete { table, key }
                    }
                });
            }
            let change = Change::Revision {
                revision,
                ops: changes,
            };
            for feed in &st.feeds {
                let _ = feed.send(change.clone()).await;
            }
            Ok(revision)
        }
    }

    impl Store for Fake {
        fn info(&self) -> StoreInfo {
            StoreInfo {
                backend: "fake",
                location: "memory".into(),
            }
        }
        fn load(&self) -> StoreFuture<'_, Loaded> {
            Box::pin(async move {
                let st = self.state.lock().await;
                let records = st
                    .records
                    .iter()
                    .map(|((table, key), value)| Entry {
                        table: *table,
                        key: key.clone(),
                        value: value.clone(),
                        revision: None,
                    })
                    .collect();
                Ok(Loaded {
                    revision: st.revision,
                    records,
                })
            })
        }
        fn commit(&self, txn: Txn) -> StoreFuture<'_, u64> {
            Box::pin(self.commit_txn(txn))
        }
        fn follow(&self, _after: u64) -> Option<ChangeFeed> {
            let (tx, rx) = mpsc::channel(4096);
            self.state.try_lock().expect("idle").feeds.push(tx);
            Some(rx)
        }
        fn limits(&self) -> TxnLimits {
            self.limits
        }
    }

    /// One node's way to the fake store, whose commits wait while its gate is closed.
    struct Gated {
        store: Arc<Fake>,
        open: tokio::sync::watch::Sender<bool>,
        /// Commits that reached the gate.
        entered: AtomicUsize,
    }

    impl Store for Gated {
        fn info(&self) -> StoreInfo {
            self.store.info()
        }
        fn load(&self) -> StoreFuture<'_, Loaded> {
            self.store.load()
        }
        fn commit(&self, txn: Txn) -> StoreFuture<'_, u64> {
            Box::pin(async move {
                self.entered.fetch_add(1, Ordering::Relaxed);
                let _ = self.open.subscribe().wait_for(|open| *open).await;
                self.store.commit_txn(txn).await
            })
        }
        fn follow(&self, after: u64) -> Option<ChangeFeed> {
            self.store.follow(after)
        }
        fn limits(&self) -> TxnLimits {
            self.store.limits()
        }
    }

    async fn gated_node(store: &Arc<Fake>, name: &str) -> (Arc<Registry>, Arc<Gated>) {
        let gated = Arc::new(Gated {
            store: store.clone(),
            open: tokio::sync::watch::Sender::new(true),
            entered: AtomicUsize::new(0),
        });
        let config = RegistryConfig {
            node: name.into(),
            vip_range: "10.96.0.0/16".parse().unwrap(),
            domain: "netd.local".into(),
        };
        let registry = Registry::open(gated.clone(), config).await.unwrap();
        (registry, gated)
    }

    async fn node(store: &Arc<Fake>, name: &str) -> Arc<Registry> {
        gated_node(store, name).await.0
    }

    fn service(name: &str, host_port: Option<u16>) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            namespace: "default".into(),
            ports: vec![ServicePort {
                name: None,
                port: 80,
                protocol: Default::default(),
                host_port,
            }],
            health_check: None,
        }
    }

    fn endpoint(i: u32, weight: u32) -> EndpointSpec {
        EndpointSpec {
            id: None,
            address: std::net::IpAddr::from([10, 0, (i >> 8) as u8, i as u8]),
            port: 80,
            node: None,
            container_id: None,
            health: Default::default(),
            weight,
            labels: Default::default(),
            lease: None,
        }
    }

    /// Waits until both nodes have applied everything stored.
    async fn settle(store: &Fake, nodes: &[&Arc<Registry>]) {
        let revision = store.state.lock().await.revision;
        for n in nodes {
            n.wait_applied(revision).await.unwrap();
        }
    }

    /// Many writers on one node share store transactions, yet each change is applied in the
    /// order it was validated in, none is lost, and both nodes end with the same registry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn shared_writers_are_grouped_ordered_and_complete() {
        let store = Fake::new(127);
        let (a, b) = (node(&store, "a").await, node(&store, "b").await);
        let mut watch = b.hub().subscribe(0, || b.snapshot());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64u32 {
            let a = a.clone();
            tasks.spawn(async move {
                // The second write depends on the first being applied.
                let name = format!("svc{i}");
                a.put_service(service(&name, None)).await.unwrap();
                a.register_endpoint("default", &name, endpoint(i, 1))
                    .await
                    .unwrap()
                    .revision
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let commits = store.commits.load(Ordering::Relaxed);
        assert!(commits < 128, "{commits} store transactions for 128 writes");
        settle(&store, &[&a, &b]).await;
        for n in [&a, &b] {
            let snap = n.snapshot();
            assert_eq!(snap.services.len(), 64);
            assert_eq!(snap.all_endpoints().count(), 64);
        }
        // B's watchers saw every service before its endpoint, revisions increasing.
        let mut seen = Vec::new();
        let mut last = 0;
        while seen.len() < 128 {
            let batch = tokio::time::timeout(Duration::from_secs(5), watch.live.recv())
                .await
                .expect("watch batch")
                .expect("open");
            assert!(batch.revision > last, "{} after {last}", batch.revision);
            last = batch.revision;
            for e in &batch.events {
                match e {
                    Event::Put {
                        object: Object::Service(s),
                        ..
                    } => seen.push(("service", s.name.clone())),
                    Event::Put {
                        object: Object::Endpoint(e),
                        ..
                    } => seen.push(("endpoint", e.service.clone())),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        for i in 0..64 {
            let name = format!("svc{i}");
            let pos = |kind| seen.iter().position(|s| *s == (kind, name.clone()));
            assert!(pos("endpoint").is_some(), "{name}: {seen:?}");
            assert!(pos("service") < pos("endpoint"), "{name}: {seen:?}");
        }
    }

    /// A chain of changes queued on node A while its first transaction is on its way; node B
    /// meanwhile takes the host port A's first change wants and deletes the service A's other
    /// changes add endpoints to. None of A's changes may be applied: they re-run against B's
    /// changes and fail as they would have had they come after them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_chain_overtaken_by_another_node_is_revalidated() {
        let store = Fake::new(127);
        let ((a, gate), b) = (gated_node(&store, "a").await, node(&store, "b").await);
        a.put_service(service("victim", None)).await.unwrap();
        settle(&store, &[&a, &b]).await;
        gate.open.send_replace(false);
        let entered = gate.entered.load(Ordering::Relaxed);
        let mut tasks = tokio::task::JoinSet::new();
        {
            let a = a.clone();
            tasks.spawn(async move { a.put_service(service("mine", Some(30000))).await.map(drop) });
        }
        for i in 0..10 {
            let a = a.clone();
            tasks.spawn(async move {
                a.register_endpoint("default", "victim", endpoint(i, 1))
                    .await
                    .map(drop)
            });
        }
        // All eleven queued behind the first, which waits at the gate.
        let queued = async {
            while gate.entered.load(Ordering::Relaxed) == entered || a.write.lock().await.seq < 12 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), queued)
            .await
            .expect("A's writers queued");
        b.put_service(service("theirs", Some(30000))).await.unwrap();
        b.delete_service("default", "victim").await.unwrap();
        gate.open.send_replace(true);
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                Err(RegistryError::Conflict { .. } | RegistryError::NotFound { .. }) => {}
                other => panic!("A's change was applied on a stale state: {other:?}"),
            }
        }
        settle(&store, &[&a, &b]).await;
        for n in [&a, &b] {
            let snap = n.snapshot();
            let names: Vec<&String> = snap.services.keys().collect();
            assert_eq!(names, ["default/theirs"]);
            assert_eq!(snap.all_endpoints().count(), 0);
        }
    }

    /// Writers on two nodes race for the same host ports and for a service being deleted:
    /// a change validated against a state another node has changed since is never applied.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn shared_writers_never_apply_a_stale_change() {
        let store = Fake::new(127);
        let (a, b) = (node(&store, "a").await, node(&store, "b").await);
        a.put_service(service("victim", None)).await.unwrap();
        settle(&store, &[&a, &b]).await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..48u32 {
            let n = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.spawn(async move {
                // Eight host ports for 48 services: exactly eight win.
                let port = 30000 + (i / 2 % 8) as u16;
                let won = match n.put_service(service(&format!("hp{i}"), Some(port))).await {
                    Ok(_) => true,
                    Err(RegistryError::Conflict { .. }) => false,
                    Err(e) => panic!("hp{i}: {e}"),
                };
                // Endpoints of a service the other node deletes meanwhile.
                match n
                    .register_endpoint("default", "victim", endpoint(i, 1))
                    .await
                {
                    Ok(_) | Err(RegistryError::NotFound { .. }) => {}
                    Err(e) => panic!("endpoint {i}: {e}"),
                }
                won
            });
        }
        let deleter = {
            let b = b.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                b.delete_service("default", "victim").await.unwrap();
            })
        };
        let mut won = 0;
        while let Some(r) = tasks.join_next().await {
            won += usize::from(r.unwrap());
        }
        deleter.await.unwrap();
        settle(&store, &[&a, &b]).await;
        assert_eq!(won, 8, "one service per host port");
        for n in [&a, &b] {
            let snap = n.snapshot();
            let mut ports: Vec<u16> = snap
                .services
                .values()
                .flat_map(|s| s.ports.iter().filter_map(|p| p.host_port))
                .collect();
            ports.sort_unstable();
            assert_eq!(ports, (30000..30008).collect::<Vec<u16>>());
            assert!(!snap.services.contains_key("default/victim"));
            assert_eq!(
                snap.all_endpoints().count(),
                0,
                "endpoints of a deleted service"
            );
        }
    }

    /// Big and overlapping changes are split into transactions the store accepts, and a change
    /// the store refuses fails alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn shared_groups_respect_limits_and_isolate_refusals() {
        let store = Fake::new(127);
        let a = node(&store, "a").await;
        // 16 services with 20 endpoints each: deleting one is 21 operations.
        for s in 0..16u32 {
            let name = format!("big{s}");
            a.put_service(service(&name, None)).await.unwrap();
            for e in 0..20 {
                a.register_endpoint("default", &name, endpoint(s * 20 + e, 1))
                    .await
                    .unwrap();
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for s in 0..16u32 {
            let a = a.clone();
            tasks.spawn(async move {
                a.delete_service("default", &format!("big{s}"))
                    .await
                    .map(drop)
            });
        }
        // 16 writers replacing one endpoint: one key, so one transaction each.
        a.put_service(service("one", None)).await.unwrap();
        for w in 1..=16u32 {
            let a = a.clone();
            tasks.spawn(async move {
                a.register_endpoint("default", "one", endpoint(7, w))
                    .await
                    .map(drop)
            });
        }
        // A change the store refuses, among good ones.
        let poisoned = {
            let a = a.clone();
            tokio::spawn(async move { a.put_service(service("poison", None)).await })
        };
        while let Some(r) = tasks.join_next().await {
            r.unwrap().expect("accepted change");
        }
        let refused = poisoned.await.unwrap().unwrap_err();
        assert!(refused.to_string().contains("poisoned"), "{refused}");
        // Only the poisoned change was refused (once in a group, maybe, then alone).
        let reasons = store.refused.lock().unwrap().clone();
        assert!(
            !reasons.is_empty() && reasons.iter().all(|r| r == "poisoned"),
            "{reasons:?}"
        );
        let snap = a.snapshot();
        assert_eq!(snap.services.len(), 1, "only `one` is left");
        let eps: Vec<_> = snap.all_endpoints().collect();
        assert_eq!(eps.len(), 1);
        assert!((1..=16).contains(&eps[0].weight));
    }

    #[test]
    fn groups_are_cut_at_limits_keys_and_chains() {
        let q = |base: Option<u64>, keys: &[&str]| Queued {
            base,
            ops: keys
                .iter()
                .map(|k| StoreOp::Delete {
                    table: Table::Services,
                    key: k.to_string(),
                })
                .collect(),
            done: oneshot::channel().0,
        };
        let limits = TxnLimits {
            ops: 4,
            bytes: usize::MAX,
        };
        let pending: VecDeque<Queued> = [
            q(Some(1), &["a", "b"]),
            q(None, &["c"]),
            q(None, &[]),
            q(None, &["d", "e"]),
        ]
        .into();
        assert_eq!(
            group_len(&pending, limits),
            3,
            "ops: 2 + 1 + 0 fit, + 2 not"
        );
        let pending: VecDeque<Queued> = [q(None, &["a"]), q(None, &["b"]), q(None, &["a"])].into();
        assert_eq!(group_len(&pending, limits), 2, "a key twice");
        let pending: VecDeque<Queued> = [q(None, &["a"]), q(Some(3), &["b"])].into();
        assert_eq!(group_len(&pending, limits), 1, "a new chain");
        let pending: VecDeque<Queued> = [q(Some(1), &["a", "b", "c", "d", "e"])].into();
        assert_eq!(
            group_len(&pending, limits),
            1,
            "too big alone is still sent"
        );
    }
}
