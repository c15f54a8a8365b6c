//! The service registry: networks, services, endpoints, leases and container attachments, with
//! a global revision and a watch feed.
//!
//! Reads go to an immutable [`Snapshot`] swapped atomically on every change (readers never
//! lock). Writes are serialised: [`Registry::begin`] takes the write lock and the newest
//! snapshot, the caller validates against it and stages [`Op`]s, and [`WriteTxn::commit`]
//! hands them to the committer, then publishes the next snapshot and the watch batch once they
//! are durable. A request is therefore either fully applied or not at all, and every
//! acknowledged change is on disk.
//!
//! **Group commit** (local store): the write lock is released as soon as a change is queued,
//! not when it is durable, so the next writer validates against the *tip* (the snapshot with
//! every queued change) while the committer task writes everything queued so far as one store
//! transaction (one fsync for many writers). Changes are published, and their writers
//! answered, in revision order after their transaction is durable; readers never see a change
//! that is not. If a store transaction fails, every change in it and every change queued after
//! it (they were validated against it) fails, and the tip falls back to the published snapshot.
//!
//! With a shared store (etcd, several nodes) writers are grouped too, by a committer of its
//! own (`shared`: chains of changes guarded by the store's revision, groups within the
//! store's transaction limits). The snapshot and the watch batch come from the store's feed
//! instead ([`Store::follow`]): a follower task applies every change, this node's and other
//! nodes', in revision order, and `commit` waits until its own revision has come through.
//! Operations re-run against the newer snapshot when another node committed first
//! ([`StoreError::Conflict`]), a few times, then give up with [`StoreError::Contended`].
//!
//! Submodules: [`model`] (snapshot and records), [`store`] (persistence behind a trait),
//! [`watch`] (fan-out), [`leases`] (lease operations, deadlines and expiry), [`health`] (the
//! health checker's write path); `services` and `attachments` hold the other operations,
//! `shared` the group commit on a shared store.
//! Networks' conflist side effects live in [`crate::networks`], not here.

mod attachments;
pub mod health;
pub mod leases;
pub mod model;
mod services;
mod shared;
pub mod store;
pub mod watch;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use netd_config::netd::{Deleted, Event};
use netd_config::ConfigError;
use tokio::sync::{mpsc, oneshot, watch as revision_watch, Mutex, OwnedMutexGuard};

use self::leases::LeaseClock;
use self::model::{Op, Record, Snapshot};
use self::store::{
    Change, ChangeFeed, ChangeOp, Entry, Store, StoreError, StoreInfo, StoreOp, Table, Txn,
};
use self::watch::{Batch, WatchHub};

/// Settings of the registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// This node's name: the default `node` of endpoints registered here.
    pub node: String,
    /// Range service VIPs are allocated from.
    pub vip_range: IpNet,
    /// DNS domain of services.
    pub domain: String,
}

/// A registry operation failed. Nothing of the request was applied.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The request is invalid; the error names the field.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// Something the request refers to does not exist.
    #[error("{message}")]
    NotFound {
        /// What is missing, and what to do.
        message: String,
        /// Request field that referred to it, if any.
        field: Option<String>,
    },
    /// The request conflicts with the registry's state.
    #[error("{message}")]
    Conflict {
        /// What conflicts, and what to do.
        message: String,
        /// Request field at fault, if any.
        field: Option<String>,
    },
    /// No free VIP is left.
    #[error("the service VIP range {range} is full: delete unused services or restart netd with a larger --vip-range")]
    VipRangeFull {
        /// The range.
        range: IpNet,
    },
    /// A stored record cannot be decoded.
    #[error("stored record {table}/{key} is unreadable: {message}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// Key.
        key: String,
        /// Decoder message.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A side effect on the filesystem failed (e.g. writing a conflist).
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// File involved.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The commit task died (a bug); the change may or may not be stored.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RegistryError {
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound {
            message: message.into(),
            field: None,
        }
    }
}

/// The registry. Shared as `Arc<Registry>`.
pub struct Registry {
    store: Arc<dyn Store>,
    snapshot: ArcSwap<Snapshot>,
    /// The write lock; it guards the tip: the published snapshot plus every change queued for
    /// the committer (equal to the published one when nothing is queued).
    write: Arc<Mutex<Tip>>,
    /// Queue of the committer task.
    committer: Committer,
    /// Shared store: sequence number ([`Tip::seq`]) of the last change whose writer is done
    /// (answered, or failed); when it is the last one queued, writers validate against the
    /// published snapshot.
    finished: AtomicU64,
    hub: Arc<WatchHub>,
    /// Last committed revision, for in-process followers (health checker) that only need to
    /// know *that* something changed; they read the snapshot themselves.
    revisions: revision_watch::Sender<u64>,
    leases: LeaseClock,
    config: RegistryConfig,
    /// The store is shared: snapshots come from its feed, not from local commits.
    shared: bool,
}

/// How long a commit to a shared store waits for its change to come back through the feed.
pub const APPLY_WAIT: Duration = Duration::from_secs(10);

/// How many times an operation runs when other nodes keep committing first.
pub const CONFLICT_ATTEMPTS: u32 = 10;

/// A random pause before attempt `tries + 1`, up to 5 ms × 2^tries (at most 250 ms), so two
/// nodes that keep colliding drift apart instead of colliding again in lock step.
fn conflict_backoff(tries: u32) -> Duration {
    let cap = (5u64 << tries.min(6)).min(250);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // A cheap mix of the clock and the process id; only needs to differ between nodes.
    let seed =
        u64::from(nanos ^ std::process::id().rotate_left(16)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Duration::from_millis((seed >> 32) % (cap + 1))
}

/// What writers validate against, under the write lock.
struct Tip {
    /// The published snapshot plus every change queued for the committer. With a shared
    /// store it is only used while a queued change is pending (see [`Registry::begin`]).
    snapshot: Arc<Snapshot>,
    /// Shared store: sequence number of the last change queued.
    seq: u64,
}

/// The committer a registry queues its changes to.
enum Committer {
    /// Local store: one store transaction per group, published here.
    Local(mpsc::UnboundedSender<Queued>),
    /// Shared store: one store transaction per group, published from the feed.
    Shared(mpsc::UnboundedSender<shared::Queued>),
}

/// A write in progress: holds the write lock; nothing is visible until [`WriteTxn::commit`].
pub struct WriteTxn {
    registry: Arc<Registry>,
    guard: OwnedMutexGuard<Tip>,
    base: Arc<Snapshot>,
    /// The base is the tip left by a pending change of a shared store, not the published
    /// snapshot.
    chained: bool,
    ops: Vec<Op>,
}

/// A change queued for the committer: its store operations, what to publish once durable,
/// and who to tell.
struct Queued {
    base_revision: u64,
    revision: u64,
    store_ops: Vec<StoreOp>,
    ops: Vec<Op>,
    next: Arc<Snapshot>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// At most this many queued changes go into one store transaction.
const GROUP_MAX: usize = 256;

/// Result of a commit.
pub struct Committed {
    /// Revision of the change (the unchanged revision when nothing was staged).
    pub revision: u64,
    /// The snapshot right after the change.
    pub snapshot: Arc<Snapshot>,
}

impl WriteTxn {
    /// The snapshot the transaction is based on (staged changes are not visible in it).
    pub fn snapshot(&self) -> &Snapshot {
        &self.base
    }

    /// Stages a create or replace.
    pub fn put(&mut self, r: Record) {
        self.ops.push(Op::Put(r));
    }

    /// Stages a delete of `r` (as it is now).
    pub fn delete(&mut self, r: Record) {
        self.ops.push(Op::Delete(r));
    }

    /// Stores the staged changes as one durable transaction with the next revision, then
    /// publishes the new snapshot and the watch batch. Runs to completion even if the caller
    /// is cancelled, so memory and store never diverge.
    pub async fn commit(self) -> Result<Committed, RegistryError> {
        if self.ops.is_empty() {
            let durable = match self.registry.committer {
                Committer::Local(_) => self.registry.snapshot().revision >= self.base.revision,
                Committer::Shared(_) => !self.chained,
            };
            if durable {
                return Ok(Committed {
                    revision: self.base.revision,
                    snapshot: self.base,
                });
            }
            // Nothing to change, but the state judged is still queued: answer once it is
            // durable (or fail with it).
        }
        tokio::spawn(self.commit_inner())
            .await
            .map_err(|e| RegistryError::Internal(format!("commit task failed: {e}")))?
    }

    async fn commit_inner(self) -> Result<Committed, RegistryError> {
        let WriteTxn {
            registry,
            mut guard,
            base,
            chained,
            ops,
        } = self;
        let revision = base.revision + u64::from(!ops.is_empty());
        let ops: Vec<Op> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put(r) => Op::Put(r.with_revision(revision)),
                del => del,
            })
            .collect();
        let next = if ops.is_empty() {
            base.clone()
        } else {
            let mut next = (*base).clone();
            for op in &ops {
                next.apply(op);
            }
            next.revision = revision;
            Arc::new(next)
        };
        let committer = match &registry.committer {
            Committer::Local(committer) => committer,
            Committer::Shared(committer) => {
                let base = (!chained).then_some(base.revision);
                let ops = ops.iter().map(Op::to_store_op).collect();
                return shared::commit(&registry, committer, guard, base, ops, next).await;
            }
        };
        let (done, wait) = oneshot::channel();
        let queued = Queued {
            base_revision: base.revision,
            revision,
            store_ops: ops.iter().map(Op::to_store_op).collect(),
            ops,
            next: next.clone(),
            done,
        };
        if committer.send(queued).is_err() {
            return Err(RegistryError::Internal("the committer stopped".into()));
        }
        guard.snapshot = next.clone();
        drop(guard);
        match wait.await {
            Ok(Ok(())) => Ok(Committed {
                revision,
                snapshot: next,
            }),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(RegistryError::Internal("the committer stopped".into())),
        }
    }
}

/// Decodes a stored record, stamped with the store's revision when it reports one.
fn decode_entry(entry: &Entry) -> Result<Record, RegistryError> {
    let record = Record::decode(entry.table, &entry.value).map_err(|e| RegistryError::Corrupt {
        table: entry.table.name(),
        key: entry.key.clone(),
        message: e.to_string(),
    })?;
    Ok(match entry.revision {
        Some(rev) => record.with_revision(rev),
        None => record,
    })
}

/// The snapshot holding exactly `entries` at `revision`.
fn snapshot_of(revision: u64, entries: &[Entry]) -> Result<Snapshot, RegistryError> {
    let mut snap = Snapshot {
        revision,
        ..Snapshot::default()
    };
    for entry in entries {
        snap.apply(&Op::Put(decode_entry(entry)?));
    }
    Ok(snap)
}

impl Registry {
    /// Loads everything from `store` and arms every lease with a full TTL.
    pub async fn open(
        store: Arc<dyn Store>,
        config: RegistryConfig,
    ) -> Result<Arc<Self>, RegistryError> {
        let loaded = store.load().await?;
        let snap = snapshot_of(loaded.revision, &loaded.records)?;
        let leases = LeaseClock::default();
        // Shared leases are kept alive by whoever holds them (a node adopts one when a client
        // keeps it alive through it); local ones get a full TTL after a restart.
        if store.leases().is_none() {
            for l in snap.leases.values() {
                leases.arm(l.id, l.ttl_seconds);
            }
        }
        let feed = store.follow(snap.revision);
        let snap = Arc::new(snap);
        let (local, local_queue) = mpsc::unbounded_channel();
        let (shared, shared_queue) = mpsc::unbounded_channel();
        let registry = Arc::new(Self {
            store,
            hub: WatchHub::new(snap.revision),
            revisions: revision_watch::Sender::new(snap.revision),
            snapshot: ArcSwap::new(snap.clone()),
            write: Arc::new(Mutex::new(Tip {
                snapshot: snap,
                seq: 0,
            })),
            committer: match feed {
                Some(_) => Committer::Shared(shared),
                None => Committer::Local(local),
            },
            finished: AtomicU64::new(0),
            leases,
            config,
            shared: feed.is_some(),
        });
        let weak = Arc::downgrade(&registry);
        match feed {
            Some(feed) => {
                tokio::spawn(follow_feed(weak.clone(), feed));
                tokio::spawn(shared::run(weak, shared_queue));
            }
            None => {
                tokio::spawn(run_committer(weak, local_queue));
            }
        }
        Ok(registry)
    }

    /// Builds the next snapshot from `base` and `ops`, publishes it and the watch batch of
    /// `revision`. Callers publish in revision order, one at a time (the write lock for a
    /// local store, the single follower task for a shared one).
    fn publish(&self, base: &Snapshot, ops: &[Op], revision: u64) -> Arc<Snapshot> {
        let mut next = base.clone();
        for op in ops {
            next.apply(op);
        }
        next.revision = revision;
        let next = Arc::new(next);
        self.publish_next(next.clone(), ops, revision);
        next
    }

    /// Applies one change from a shared store's feed.
    fn apply_change(&self, change: Change) {
        let base = self.snapshot();
        let (revision, ops) = match change {
            Change::Revision { revision, ops } => {
                if revision <= base.revision {
                    return;
                }
                let mut staged = (*base).clone();
                let mut out = Vec::with_capacity(ops.len());
                for op in ops {
                    let op = match op {
                        ChangeOp::Put(entry) => match decode_entry(&entry) {
                            Ok(r) => Op::Put(r.with_revision(revision)),
                            Err(e) => {
                                crate::log(&format!("ignoring a change from the store: {e}"));
                                continue;
                            }
                        },
                        ChangeOp::Delete { table, key } => match staged.get(table, &key) {
                            Some(r) => Op::Delete(r),
                            None => continue,
                        },
                    };
                    staged.apply(&op);
                    out.push(op);
                }
                (revision, out)
            }
            Change::Resync(loaded) => {
                if loaded.revision <= base.revision {
                    return;
                }
                match snapshot_of(loaded.revision, &loaded.records) {
                    Ok(fresh) => (loaded.revision, diff(&base, &fresh)),
                    Err(e) => {
                        crate::log(&format!("cannot resynchronise with the store: {e}"));
                        return;
                    }
                }
            }
        };
        for op in &ops {
            if let Op::Delete(Record::Lease(l)) = op {
                self.leases.disarm(l.id);
            }
        }
        self.publish(&base, &ops, revision);
    }

    /// Waits until the snapshot includes `revision` (shared store); returns it.
    async fn wait_applied(&self, revision: u64) -> Result<Arc<Snapshot>, RegistryError> {
        let mut rx = self.revisions.subscribe();
        let waited = tokio::time::timeout(APPLY_WAIT, rx.wait_for(|r| *r >= revision))
            .await
            .map(|r| r.is_ok());
        match waited {
            Ok(true) => Ok(self.snapshot()),
            Ok(false) => Err(RegistryError::Internal("registry closed".into())),
            Err(_) => Err(StoreError::Lagging {
                revision,
                seconds: APPLY_WAIT.as_secs(),
            }
            .into()),
        }
    }

    /// Waits until a snapshot satisfies `cond` (a shared store's feed brings the change);
    /// returns it.
    async fn wait_for_snapshot(
        &self,
        cond: impl Fn(&Snapshot) -> bool,
    ) -> Result<Arc<Snapshot>, RegistryError> {
        let mut rx = self.revisions.subscribe();
        let wait = async {
            loop {
                let snap = self.snapshot();
                if cond(&snap) {
                    return Ok(snap);
                }
                if rx.changed().await.is_err() {
                    return Err(RegistryError::Internal("registry closed".into()));
                }
            }
        };
        tokio::time::timeout(APPLY_WAIT, wait)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Lagging {
                    revision: self.snapshot().revision,
                    seconds: APPLY_WAIT.as_secs(),
                }
                .into())
            })
    }

    /// Runs `attempt` again when another writer of a shared store committed first (after
    /// this node has caught up with that change), up to [`CONFLICT_ATTEMPTS`] times.
    /// Operations are written against the snapshot `begin` gives them, so a re-run validates
    /// against the newer state: nothing is applied twice or half.
    pub async fn retry_conflicts<T, F, Fut>(&self, mut attempt: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match attempt().await {
                Err(RegistryError::Store(StoreError::Conflict { stored, .. })) if self.shared => {
                    if tries >= CONFLICT_ATTEMPTS {
                        return Err(StoreError::Contended {
                            attempts: tries,
                            stored,
                        }
                        .into());
                    }
                    self.wait_applied(stored).await?;
                    tokio::time::sleep(conflict_backoff(tries)).await;
                }
                other => return other,
            }
        }
    }

    /// True when the store is shared with other nodes.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// The current snapshot. Never blocks.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Watch fan-out.
    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.hub
    }

    /// Follows the committed revision. Cheaper than a watch subscription (nothing is queued
    /// or counted as a watcher): for in-process tasks that re-read [`Registry::snapshot`] on
    /// change. Intermediate revisions may be skipped.
    pub fn revisions(&self) -> revision_watch::Receiver<u64> {
        self.revisions.subscribe()
    }

    /// Settings.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Where the store lives.
    pub fn store_info(&self) -> StoreInfo {
        self.store.info()
    }

    /// Starts a write: waits for the write lock. The transaction sees every change committed
    /// before it, durable or still queued.
    pub async fn begin(self: &Arc<Self>) -> WriteTxn {
        let guard = self.write.clone().lock_owned().await;
        // A shared store's published snapshot also moves with other nodes' changes: it is the
        // base unless one of this node's changes is still pending.
        let chained = self.shared && self.finished.load(Ordering::Acquire) < guard.seq;
        let base = if self.shared && !chained {
            self.snapshot()
        } else {
            guard.snapshot.clone()
        };
        WriteTxn {
            registry: self.clone(),
            guard,
            base,
            chained,
            ops: Vec::new(),
        }
    }

    /// Publishes a durable change whose snapshot was computed when it was queued.
    fn publish_next(&self, next: Arc<Snapshot>, ops: &[Op], revision: u64) {
        self.snapshot.store(next);
        self.hub
            .publish(Batch::new(revision, events_of(ops, revision)));
        self.revisions.send_replace(revision);
    }
}

/// The watch events of a change.
fn events_of(ops: &[Op], revision: u64) -> Vec<Event> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Put(r) => r.to_object().map(|object| Event::Put { revision, object }),
            Op::Delete(r) => r
                .to_object()
                .map(|object| Event::Delete { revision, object }),
        })
        .collect()
}

/// The committer of a local store: writes every queued change so far as one transaction, then
/// publishes them in order and answers their writers (see the module docs on group commit).
async fn run_committer(registry: Weak<Registry>, mut queue: mpsc::UnboundedReceiver<Queued>) {
    let mut group = Vec::new();
    while queue.recv_many(&mut group, GROUP_MAX).await > 0 {
        let Some(registry) = registry.upgrade() else {
            return;
        };
        // Items without operations only wait for the changes queued before them.
        let mut changes = group.iter().filter(|q| !q.ops.is_empty());
        let outcome = match (changes.next(), changes.next_back()) {
            (None, _) => Ok(0),
            (Some(first), last) => {
                let txn = Txn {
                    base_revision: first.base_revision,
                    revision: last.unwrap_or(first).revision,
                    ops: group
                        .iter()
                        .flat_map(|q| q.store_ops.iter().cloned())
                        .collect(),
                };
                registry.store.commit(txn).await
            }
        };
        match outcome {
            Ok(_) => {
                for q in group.drain(..) {
                    if !q.ops.is_empty() {
                        registry.publish_next(q.next, &q.ops, q.revision);
                    }
                    let _ = q.done.send(Ok(()));
                }
            }
            Err(e) => {
                let message = e.to_string();
                let failed = || StoreError::Write(message.clone());
                // Writers queue while holding the lock: with it held, everything queued after
                // the failed group is in the channel, and nothing new can be.
                let mut tip = registry.write.lock().await;
                for q in group.drain(..) {
                    let _ = q.done.send(Err(failed()));
                }
                while let Ok(q) = queue.try_recv() {
                    let _ = q.done.send(Err(failed()));
                }
                tip.snapshot = registry.snapshot();
            }
        }
    }
}

/// Applies a shared store's feed until it ends or the registry is dropped.
async fn follow_feed(registry: Weak<Registry>, mut feed: ChangeFeed) {
    while let Some(change) = feed.recv().await {
        let Some(registry) = registry.upgrade() else {
            return;
        };
        registry.apply_change(change);
    }
}

/// The operations that turn `old` into `new`: deletes of what vanished, puts of what is new or
/// changed.
fn diff(old: &Snapshot, new: &Snapshot) -> Vec<Op> {
    let index = |s: &Snapshot| -> BTreeMap<(Table, String), Record> {
        s.records().map(|r| ((r.table(), r.key()), r)).collect()
    };
    let (old, new) = (index(old), index(new));
    let deletes = old
        .iter()
        .filter(|(k, _)| !new.contains_key(*k))
        .map(|(_, r)| Op::Delete(r.clone()));
    let puts = new
        .iter()
        .filter(|(k, r)| old.get(*k) != Some(*r))
        .map(|(_, r)| Op::Put(r.clone()));
    deletes.chain(puts).collect()
}

/// A `Deleted` answer.
pub(crate) fn deleted(kind: &str, key: String, revision: u64, existed: bool) -> Deleted {
    Deleted {
        kind: kind.to_string(),
        key,
        revision,
        existed,
    }
}

#[cfg(test)]
mod tests {
    use netd_config::netd::{EndpointSpec, ServicePort, ServiceSpec};

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::store::embedded::EmbeddedStore;
    use super::store::{Loaded, StoreFuture};
    use super::*;

    /// The embedded store, counting its transactions.
    struct Counting(EmbeddedStore, Arc<AtomicUsize>);

    impl Store for Counting {
        fn info(&self) -> StoreInfo {
            self.0.info()
        }
        fn load(&self) -> StoreFuture<'_, Loaded> {
            self.0.load()
        }
        fn commit(&self, txn: Txn) -> StoreFuture<'_, u64> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.commit(txn)
        }
    }

    fn config() -> RegistryConfig {
        RegistryConfig {
            node: "n".into(),
            vip_range: "10.96.0.0/16".parse().unwrap(),
            domain: "netd.local".into(),
        }
    }

    fn service(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            namespace: "default".into(),
            ports: vec![ServicePort {
                name: None,
                port: 80,
                protocol: Default::default(),
                host_port: None,
            }],
            health_check: None,
        }
    }

    fn endpoint(i: u32) -> EndpointSpec {
        EndpointSpec {
            id: None,
            address: std::net::IpAddr::from([10, 0, (i >> 8) as u8, i as u8]),
            port: 80,
            node: None,
            container_id: None,
            health: Default::default(),
            weight: 1,
            labels: Default::default(),
            lease: None,
        }
    }

    /// Many writers at once: grouped into few store transactions, yet every one gets its own
    /// revision, is published in order to watchers, validates against the changes queued
    /// before it, and is on disk when acknowledged.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_are_grouped_ordered_and_durable() {
        let dir = std::env::temp_dir().join(format!("netd-group-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let commits = Arc::new(AtomicUsize::new(0));
        let store = Counting(EmbeddedStore::open(&dir).unwrap(), commits.clone());
        let reg = Registry::open(Arc::new(store), config()).await.unwrap();
        let mut watch = reg.hub().subscribe(0, || reg.snapshot());
        let start = reg.snapshot().revision;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64u32 {
            let reg = reg.clone();
            tasks.spawn(async move {
                // Each writer's second request depends on its first one being visible.
                let name = format!("svc{i}");
                reg.put_service(service(&name)).await.unwrap();
                reg.register_endpoint("default", &name, endpoint(i))
                    .await
                    .unwrap()
                    .revision
            });
        }
        let mut revisions = Vec::new();
        while let Some(r) = tasks.join_next().await {
            revisions.push(r.unwrap());
        }
        let snap = reg.snapshot();
        assert_eq!(snap.revision, start + 128);
        assert_eq!(snap.services.len(), 64);
        assert_eq!(snap.all_endpoints().count(), 64);
        revisions.sort_unstable();
        revisions.dedup();
        assert_eq!(revisions.len(), 64, "every write has its own revision");
        // 128 writes, 64 at a time: while one transaction is being made durable, the next
        // writers' changes queue up and share the following one.
        let commits = commits.load(Ordering::Relaxed);
        assert!(commits < 128, "{commits} store transactions for 128 writes");
        // Watchers got every revision, in order.
        let mut seen = Vec::new();
        while seen.len() < 128 {
            let batch = tokio::time::timeout(Duration::from_secs(5), watch.live.recv())
                .await
                .expect("watch batch")
                .expect("open");
            seen.push(batch.revision);
        }
        assert!(seen.windows(2).all(|w| w[0] + 1 == w[1]), "{seen:?}");
        // Everything acknowledged is in the store.
        drop(watch);
        drop(reg);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let again = Registry::open(Arc::new(EmbeddedStore::open(&dir).unwrap()), config())
            .await
            .unwrap();
        let snap = again.snapshot();
        assert_eq!(snap.revision, start + 128);
        assert_eq!(snap.all_endpoints().count(), 64);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
