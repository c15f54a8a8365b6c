//! The service registry: networks, services, endpoints, leases and container attachments, with
//! a global revision and a watch feed.
//!
//! Reads go to an immutable [`Snapshot`] swapped atomically on every change (readers never
//! lock). Writes are serialised: [`Registry::begin`] takes the write lock and the current
//! snapshot, the caller validates against it and stages [`Op`]s, and [`WriteTxn::commit`]
//! stores them as one durable transaction, then publishes the next snapshot and the watch
//! batch. A request is therefore either fully applied or not at all, and every acknowledged
//! change is on disk.
//!
//! Submodules: [`model`] (snapshot and records), [`store`] (persistence behind a trait),
//! [`watch`] (fan-out), [`leases`] (lease operations, deadlines and expiry), [`health`] (the
//! health checker's write path); `services` and `attachments` hold the other operations.
//! Networks' conflist side effects live in [`crate::networks`], not here.

mod attachments;
pub mod health;
pub mod leases;
pub mod model;
mod services;
pub mod store;
pub mod watch;

use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use netd_config::netd::{Deleted, Event};
use netd_config::ConfigError;
use tokio::sync::{watch as revision_watch, Mutex, OwnedMutexGuard};

use self::leases::LeaseClock;
use self::model::{Op, Record, Snapshot};
use self::store::{Store, StoreError, StoreInfo, Txn};
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
    write: Arc<Mutex<()>>,
    hub: Arc<WatchHub>,
    /// Last committed revision, for in-process followers (health checker) that only need to
    /// know *that* something changed; they read the snapshot themselves.
    revisions: revision_watch::Sender<u64>,
    leases: LeaseClock,
    config: RegistryConfig,
}

/// A write in progress: holds the write lock; nothing is visible until [`WriteTxn::commit`].
pub struct WriteTxn {
    registry: Arc<Registry>,
    guard: OwnedMutexGuard<()>,
    base: Arc<Snapshot>,
    ops: Vec<Op>,
}

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
            return Ok(Committed {
                revision: self.base.revision,
                snapshot: self.base,
            });
        }
        tokio::spawn(self.commit_inner())
            .await
            .map_err(|e| RegistryError::Internal(format!("commit task failed: {e}")))?
    }

    async fn commit_inner(self) -> Result<Committed, RegistryError> {
        let WriteTxn {
            registry,
            guard,
            base,
            ops,
        } = self;
        let revision = base.revision + 1;
        let ops: Vec<Op> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put(r) => Op::Put(r.with_revision(revision)),
                del => del,
            })
            .collect();
        registry
            .store
            .commit(Txn {
                base_revision: base.revision,
                revision,
                ops: ops.iter().map(Op::to_store_op).collect(),
            })
            .await?;
        let mut next = (*base).clone();
        for op in &ops {
            next.apply(op);
        }
        next.revision = revision;
        let next = Arc::new(next);
        registry.snapshot.store(next.clone());
        let events = ops
            .iter()
            .filter_map(|op| match op {
                Op::Put(r) => r.to_object().map(|object| Event::Put { revision, object }),
                Op::Delete(r) => r
                    .to_object()
                    .map(|object| Event::Delete { revision, object }),
            })
            .collect();
        registry.hub.publish(Batch::new(revision, events));
        registry.revisions.send_replace(revision);
        drop(guard);
        Ok(Committed {
            revision,
            snapshot: next,
        })
    }
}

impl Registry {
    /// Loads everything from `store` and arms every lease with a full TTL.
    pub async fn open(
        store: Arc<dyn Store>,
        config: RegistryConfig,
    ) -> Result<Arc<Self>, RegistryError> {
        let loaded = store.load().await?;
        let mut snap = Snapshot {
            revision: loaded.revision,
            ..Snapshot::default()
        };
        for (table, key, value) in loaded.records {
            let record = Record::decode(table, &value).map_err(|e| RegistryError::Corrupt {
                table: table.name(),
                key: key.clone(),
                message: e.to_string(),
            })?;
            snap.apply(&Op::Put(record));
        }
        let leases = LeaseClock::default();
        for l in snap.leases.values() {
            leases.arm(l.id, l.ttl_seconds);
        }
        Ok(Arc::new(Self {
            store,
            hub: WatchHub::new(snap.revision),
            revisions: revision_watch::Sender::new(snap.revision),
            snapshot: ArcSwap::from_pointee(snap),
            write: Arc::new(Mutex::new(())),
            leases,
            config,
        }))
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

    /// Starts a write: waits for the write lock.
    pub async fn begin(self: &Arc<Self>) -> WriteTxn {
        let guard = self.write.clone().lock_owned().await;
        WriteTxn {
            registry: self.clone(),
            guard,
            base: self.snapshot(),
            ops: Vec::new(),
        }
    }
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
