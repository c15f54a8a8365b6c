//! Persistence behind one trait, so the registry does not care where its records live.
//!
//! The registry is the only writer: it validates a request against its in-memory snapshot, turns
//! the result into one [`Txn`] (puts and deletes of JSON records, plus the new global revision)
//! and hands it to [`Store::commit`], which must make it durable before returning. At startup it
//! reads everything back with [`Store::load`].
//!
//! Backends: [`embedded`] (redb, a single file, the default; this process is its only writer)
//! and [`etcd`] (shared by the daemons of several machines). A shared store differs in three
//! ways, each an optional part of the trait:
//!
//! - [`Store::follow`]: a feed of every change, this process's own included, in revision
//!   order. The registry then applies changes only from the feed (one apply path for local and
//!   remote writes), and [`Store::commit`] returns the revision the change got so the
//!   registry can wait until the feed has delivered it.
//! - [`Store::commit`] may fail with [`StoreError::Conflict`] when another writer committed
//!   since `base_revision`; the registry re-runs the operation against the newer snapshot.
//!   One commit may carry the changes of several writers (group commit); [`Store::limits`]
//!   says how many fit, and a shared store must accept any set of changes to distinct keys
//!   within them.
//! - [`Store::leases`]: leases live in the backend (granted, kept alive and expired by it), so
//!   a dead node's leased records vanish without that node's help.

pub mod embedded;
pub mod etcd;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;

/// Opens the store `netd up` asked for: the etcd cluster at `url` (`etcd://h1:2379,...`), or
/// the embedded store in `data_dir` when `url` is `None`. `node` names this node as a writer.
pub async fn open(
    url: Option<&str>,
    data_dir: &Path,
    node: &str,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match url {
        Some(url) => Arc::new(etcd::EtcdStore::connect(url, node).await?),
        None => Arc::new(embedded::EmbeddedStore::open(data_dir)?),
    })
}

/// Future returned by store operations.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// One table of the store; each holds JSON records under string keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Networks by name.
    Networks,
    /// Services by `namespace/name`.
    Services,
    /// Endpoints by `namespace/service/id`.
    Endpoints,
    /// Leases by id (decimal).
    Leases,
    /// Container attachments by `container_id/ifname`.
    Attachments,
}

impl Table {
    /// Every table, in load order.
    pub const ALL: [Table; 5] = [
        Table::Networks,
        Table::Services,
        Table::Endpoints,
        Table::Leases,
        Table::Attachments,
    ];

    /// The table called `name` (see [`Table::name`]).
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Stable name (the redb table name, the etcd key segment).
    pub fn name(self) -> &'static str {
        match self {
            Table::Networks => "networks",
            Table::Services => "services",
            Table::Endpoints => "endpoints",
            Table::Leases => "leases",
            Table::Attachments => "attachments",
        }
    }
}

/// One change inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Insert or replace `key` in `table`.
    Put {
        /// Table.
        table: Table,
        /// Key.
        key: String,
        /// JSON value.
        value: Vec<u8>,
        /// Backend lease the record lives and dies with (a shared store's lease id; the
        /// embedded store ignores it and expires leases itself).
        lease: Option<u64>,
    },
    /// Remove `key` from `table` (no error when absent).
    Delete {
        /// Table.
        table: Table,
        /// Key.
        key: String,
    },
}

/// An atomic, durable change: all of it or none of it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    /// Revision the change was computed against; a backend shared between writers refuses the
    /// transaction with [`StoreError::Conflict`] when the stored revision differs.
    pub base_revision: u64,
    /// Revision the store has after the change.
    pub revision: u64,
    /// The changes.
    pub ops: Vec<StoreOp>,
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Table.
    pub table: Table,
    /// Key within the table.
    pub key: String,
    /// JSON value.
    pub value: Vec<u8>,
    /// Revision of the record's last change when the backend tracks it (etcd's
    /// `mod_revision`); it then overrides the revision inside the JSON, which a shared store
    /// cannot know before the commit. `None`: the JSON's revision is right.
    pub revision: Option<u64>,
}

/// Everything stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Revision of the last committed transaction (0 for a new store).
    pub revision: u64,
    /// Every record.
    pub records: Vec<Entry>,
}

/// One change reported by a shared store's feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOp {
    /// A record was created or replaced.
    Put(Entry),
    /// A record was removed (by a writer, or by the expiry of the lease it was attached to).
    Delete {
        /// Table.
        table: Table,
        /// Key.
        key: String,
    },
}

/// What a shared store's feed delivers, in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Everything one revision changed: one transaction, or one lease expiry.
    Revision {
        /// The revision.
        revision: u64,
        /// Its changes.
        ops: Vec<ChangeOp>,
    },
    /// The feed lost its place (the backend compacted the history it needed): everything
    /// stored at a newer revision. The registry publishes the difference.
    Resync(Loaded),
}

/// Receiving end of a shared store's feed; it ends when the store is dropped.
pub type ChangeFeed = mpsc::Receiver<Change>;

/// Where the store lives, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreInfo {
    /// Backend name (`embedded`, `etcd`).
    pub backend: &'static str,
    /// File path or endpoints.
    pub location: String,
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the store.
    #[error("store {path} is in use by another process (is another `netd up` running with the same --data-dir?)")]
    InUse {
        /// Store location.
        path: String,
    },
    /// The store could not be opened.
    #[error("cannot open store {path}: {message}")]
    Open {
        /// Store location.
        path: String,
        /// Why.
        message: String,
    },
    /// Reading failed.
    #[error("reading the store failed: {0}")]
    Read(String),
    /// Committing failed; nothing of the transaction is stored.
    #[error("writing the store failed: {0}")]
    Write(String),
    /// The stored revision is not the one the transaction was computed against.
    #[error("store revision is {stored}, expected {expected}: another writer changed it")]
    Conflict {
        /// Revision the transaction expected.
        expected: u64,
        /// Revision found.
        stored: u64,
    },
    /// Other writers kept changing the shared store while this change was retried.
    #[error("gave up after {attempts} attempts: other nodes kept changing the registry at the same time (revision {stored} when last tried); nothing was applied, retry the request")]
    Contended {
        /// Attempts made.
        attempts: u32,
        /// Revision found at the last attempt.
        stored: u64,
    },
    /// The backend cannot be reached at all.
    #[error("{0}")]
    Unavailable(String),
    /// The change is stored, but this node's view has not caught up with it in time.
    #[error("the change is stored (revision {revision}) but this node has not seen it come back through the etcd watch within {seconds} s; its view is behind (is an etcd member slow or partitioned?)")]
    Lagging {
        /// Revision of the stored change.
        revision: u64,
        /// How long was waited.
        seconds: u64,
    },
    /// A lease operation of a shared store failed.
    #[error("lease {id}: {message}")]
    Lease {
        /// Lease id.
        id: u64,
        /// What failed.
        message: String,
    },
}

/// How much one transaction of a store may carry. The registry groups concurrent writers of a
/// shared store into one transaction and keeps each group within these limits (a single
/// change larger than them is still sent alone, and the store reports why it is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnLimits {
    /// Record operations ([`StoreOp`]s) per transaction, not counting what the store adds
    /// itself (etcd's revision guard).
    pub ops: usize,
    /// Bytes of keys and values per transaction.
    pub bytes: usize,
}

impl TxnLimits {
    /// No limit (the embedded store).
    pub const NONE: TxnLimits = TxnLimits {
        ops: usize::MAX,
        bytes: usize::MAX,
    };
}

impl StoreOp {
    /// Table and key the operation changes.
    pub fn target(&self) -> (Table, &str) {
        match self {
            StoreOp::Put { table, key, .. } | StoreOp::Delete { table, key } => (*table, key),
        }
    }

    /// Bytes of key and value, for [`TxnLimits::bytes`].
    pub fn size(&self) -> usize {
        match self {
            StoreOp::Put { key, value, .. } => key.len() + value.len(),
            StoreOp::Delete { key, .. } => key.len(),
        }
    }
}

/// Leases kept by a shared store itself: records attached to a lease (see [`StoreOp::Put`])
/// disappear, in one revision reported by the feed, when it is revoked or when nobody keeps
/// it alive for its TTL, for example because the node holding it died.
pub trait SharedLeases: Send + Sync {
    /// Grants a lease of `ttl_seconds`; returns its id.
    fn grant(&self, ttl_seconds: u64) -> StoreFuture<'_, u64>;

    /// Keeps `id` alive from this process (a keepalive every third of its TTL) until it is
    /// revoked or the backend reports it gone. Idempotent.
    fn hold(&self, id: u64, ttl_seconds: u64);

    /// Stops keeping `id` alive and revokes it, deleting its records. A lease that is already
    /// gone is not an error.
    fn revoke(&self, id: u64) -> StoreFuture<'_, ()>;
}

/// Persistence of registry records. Implementations must be safe to call from many tasks;
/// the registry serialises commits itself.
pub trait Store: Send + Sync + 'static {
    /// Backend and location, for status output.
    fn info(&self) -> StoreInfo;

    /// Reads every record and the current revision.
    fn load(&self) -> StoreFuture<'_, Loaded>;

    /// Applies `txn` atomically; when this returns `Ok`, the change survives a crash or
    /// `kill -9` of the daemon (and, for the embedded store, a power loss). Returns the
    /// revision the change got: `txn.revision` for a store this process alone writes, the
    /// backend's revision for a shared one.
    fn commit(&self, txn: Txn) -> StoreFuture<'_, u64>;

    /// A shared store's feed of every change after revision `after` (see the module doc).
    /// `None` (the default) for a store only this process writes. Called once, at startup.
    fn follow(&self, _after: u64) -> Option<ChangeFeed> {
        None
    }

    /// A shared store's leases. `None` (the default): the registry keeps leases itself.
    fn leases(&self) -> Option<&dyn SharedLeases> {
        None
    }

    /// What one [`Store::commit`] may carry (default: no limit).
    fn limits(&self) -> TxnLimits {
        TxnLimits::NONE
    }
}
