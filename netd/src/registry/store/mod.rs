//! Persistence behind one trait, so the registry does not care where its records live.
//!
//! The registry is the only writer: it validates a request against its in-memory snapshot, turns
//! the result into one [`Txn`] (puts and deletes of JSON records, plus the new global revision)
//! and hands it to [`Store::commit`], which must make it durable before returning. At startup it
//! reads everything back with [`Store::load`].
//!
//! Backends: [`embedded`] (redb, a single file, the default). An etcd backend slots in behind
//! the same trait: `commit` becomes one etcd transaction guarded by `base_revision` (compare the
//! stored revision key), `load` a range read; changes made by other nodes then arrive through an
//! etcd watch feeding the same registry apply path.

pub mod embedded;

use std::future::Future;
use std::pin::Pin;

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

    /// Stable name (the redb table name).
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

/// Everything stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Revision of the last committed transaction (0 for a new store).
    pub revision: u64,
    /// Every record: table, key, JSON value.
    pub records: Vec<(Table, String, Vec<u8>)>,
}

/// Where the store lives, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreInfo {
    /// Backend name (`embedded`).
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
}

/// Persistence of registry records. Implementations must be safe to call from many tasks;
/// the registry serialises commits itself.
pub trait Store: Send + Sync + 'static {
    /// Backend and location, for status output.
    fn info(&self) -> StoreInfo;

    /// Reads every record and the current revision.
    fn load(&self) -> StoreFuture<'_, Loaded>;

    /// Applies `txn` atomically; when this returns `Ok`, the change survives a crash or
    /// `kill -9` of the daemon (and, for the embedded store, a power loss).
    fn commit(&self, txn: Txn) -> StoreFuture<'_, ()>;
}
