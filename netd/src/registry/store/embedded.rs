//! The embedded store: one redb file (`<data-dir>/netd.redb`), no external process.
//!
//! Every commit is one redb write transaction with `Durability::Immediate` (fsync before
//! returning), so an acknowledged write survives `kill -9` and power loss. redb takes an
//! exclusive file lock, so two daemons can never share a data directory. The blocking redb
//! calls run on tokio's blocking pool, never on a runtime worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, DatabaseError, Durability, ReadableTable, TableDefinition};

use super::{Entry, Loaded, Store, StoreError, StoreFuture, StoreInfo, StoreOp, Table, Txn};

/// File name of the store inside the data directory.
pub const FILE_NAME: &str = "netd.redb";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";

fn table_def(t: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(t.name())
}

/// redb-backed [`Store`].
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `data_dir`, creating the directory (mode 0700) if needed.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(FILE_NAME);
        let shown = path.display().to_string();
        create_private_dir(data_dir).map_err(|e| StoreError::Open {
            path: data_dir.display().to_string(),
            message: e.to_string(),
        })?;
        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                path: shown.clone(),
            },
            other => StoreError::Open {
                path: shown.clone(),
                message: other.to_string(),
            },
        })?;
        let store = Self {
            db: Arc::new(db),
            path,
        };
        store.create_tables()?;
        Ok(store)
    }

    /// Path of the store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn create_tables(&self) -> Result<(), StoreError> {
        let w = |e: &dyn std::fmt::Display| StoreError::Write(e.to_string());
        let txn = self.db.begin_write().map_err(|e| w(&e))?;
        txn.open_table(META).map_err(|e| w(&e))?;
        for t in Table::ALL {
            txn.open_table(table_def(t)).map_err(|e| w(&e))?;
        }
        txn.commit().map_err(|e| w(&e))
    }

    fn load_blocking(&self) -> Result<Loaded, StoreError> {
        let r = |e: &dyn std::fmt::Display| StoreError::Read(e.to_string());
        let txn = self.db.begin_read().map_err(|e| r(&e))?;
        let meta = txn.open_table(META).map_err(|e| r(&e))?;
        let revision = meta
            .get(REVISION_KEY)
            .map_err(|e| r(&e))?
            .map_or(0, |v| v.value());
        let mut records = Vec::new();
        for t in Table::ALL {
            let table = txn.open_table(table_def(t)).map_err(|e| r(&e))?;
            for item in table.iter().map_err(|e| r(&e))? {
                let (k, v) = item.map_err(|e| r(&e))?;
                records.push(Entry {
                    table: t,
                    key: k.value().to_string(),
                    value: v.value().to_vec(),
                    revision: None,
                });
            }
        }
        Ok(Loaded { revision, records })
    }

    fn commit_blocking(&self, txn: &Txn) -> Result<(), StoreError> {
        let w = |e: &dyn std::fmt::Display| StoreError::Write(e.to_string());
        let mut wtx = self.db.begin_write().map_err(|e| w(&e))?;
        wtx.set_durability(Durability::Immediate);
        {
            let mut meta = wtx.open_table(META).map_err(|e| w(&e))?;
            let stored = meta
                .get(REVISION_KEY)
                .map_err(|e| w(&e))?
                .map_or(0, |v| v.value());
            if stored != txn.base_revision {
                // Dropping the transaction aborts it.
                return Err(StoreError::Conflict {
                    expected: txn.base_revision,
                    stored,
                });
            }
            meta.insert(REVISION_KEY, txn.revision).map_err(|e| w(&e))?;
        }
        for t in Table::ALL {
            if !txn.ops.iter().any(|op| op_table(op) == t) {
                continue;
            }
            let mut table = wtx.open_table(table_def(t)).map_err(|e| w(&e))?;
            for op in txn.ops.iter().filter(|op| op_table(op) == t) {
                match op {
                    StoreOp::Put { key, value, .. } => {
                        table
                            .insert(key.as_str(), value.as_slice())
                            .map_err(|e| w(&e))?;
                    }
                    StoreOp::Delete { key, .. } => {
                        table.remove(key.as_str()).map_err(|e| w(&e))?;
                    }
                }
            }
        }
        wtx.commit().map_err(|e| w(&e))
    }
}

fn op_table(op: &StoreOp) -> Table {
    match op {
        StoreOp::Put { table, .. } | StoreOp::Delete { table, .. } => *table,
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

impl Store for EmbeddedStore {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            backend: "embedded",
            location: self.path.display().to_string(),
        }
    }

    fn load(&self) -> StoreFuture<'_, Loaded> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.load_blocking())
                .await
                .map_err(|e| StoreError::Read(format!("store task failed: {e}")))?
        })
    }

    fn commit(&self, txn: Txn) -> StoreFuture<'_, u64> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.commit_blocking(&txn).map(|()| txn.revision))
                .await
                .map_err(|e| StoreError::Write(format!("store task failed: {e}")))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netd-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn commit_load_and_conflict() {
        let dir = tmpdir("basic");
        {
            let s = EmbeddedStore::open(&dir).unwrap();
            assert_eq!(s.load().await.unwrap(), Loaded::default());
            s.commit(Txn {
                base_revision: 0,
                revision: 1,
                ops: vec![
                    StoreOp::Put {
                        table: Table::Services,
                        key: "default/a".into(),
                        value: b"{}".to_vec(),
                        lease: None,
                    },
                    StoreOp::Put {
                        table: Table::Leases,
                        key: "1".into(),
                        value: b"{}".to_vec(),
                        lease: None,
                    },
                ],
            })
            .await
            .unwrap();
            s.commit(Txn {
                base_revision: 1,
                revision: 2,
                ops: vec![StoreOp::Delete {
                    table: Table::Leases,
                    key: "1".into(),
                }],
            })
            .await
            .unwrap();
            let e = s
                .commit(Txn {
                    base_revision: 1,
                    revision: 2,
                    ops: vec![],
                })
                .await
                .unwrap_err();
            assert!(matches!(e, StoreError::Conflict { stored: 2, .. }), "{e}");
            // A second opener is refused while the first holds the file.
            assert!(matches!(
                EmbeddedStore::open(&dir),
                Err(StoreError::InUse { .. })
            ));
        }
        let s = EmbeddedStore::open(&dir).unwrap();
        let l = s.load().await.unwrap();
        assert_eq!(l.revision, 2);
        assert_eq!(
            l.records,
            vec![Entry {
                table: Table::Services,
                key: "default/a".to_string(),
                value: b"{}".to_vec(),
                revision: None,
            }]
        );
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
