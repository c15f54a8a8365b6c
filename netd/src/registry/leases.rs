//! Lease deadlines and expiry.
//!
//! Leases are stored (id and TTL) so they survive a restart, but their deadlines live only in
//! memory: a keepalive is a map update, never a disk write. After a restart every lease gets a
//! full TTL again (etcd does the same after a leader change), so owners have time to reconnect.
//! [`run_expiry`] checks deadlines every [`CHECK_INTERVAL`] and deletes each expired lease
//! together with its endpoints in one registry transaction. The lease operations of the
//! registry (grant, keepalive, revoke, expire) live here too.
//!
//! With a shared store ([`super::store::SharedLeases`], etcd) a lease is the backend's lease:
//! its id is the backend's, the lease record and the endpoints registered with it are attached
//! to it, and the node that grants it (or that a client keeps it alive through) holds it alive
//! in the backend while its local deadline runs. When the deadline passes the node revokes it;
//! when the node dies the backend expires it after its TTL. Either way the backend deletes the
//! attached records in one revision, which every node applies from the store's feed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netd_config::netd::{Deleted, Lease, LeaseGrant};
use tokio::sync::watch;

use super::model::{LeaseRecord, Record};
use super::{deleted, Registry, RegistryError, WriteTxn};

/// How often deadlines are checked.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// In-memory deadlines of the stored leases.
#[derive(Default)]
pub struct LeaseClock {
    deadlines: Mutex<HashMap<u64, Instant>>,
}

impl LeaseClock {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Instant>> {
        self.deadlines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts (or restarts) the countdown of `id`; returns the deadline as Unix milliseconds.
    pub fn arm(&self, id: u64, ttl_seconds: u64) -> u64 {
        let ttl = Duration::from_secs(ttl_seconds);
        self.lock().insert(id, Instant::now() + ttl);
        unix_millis(SystemTime::now() + ttl)
    }

    /// Forgets `id`.
    pub fn disarm(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Deadline of `id` as Unix milliseconds, if armed.
    pub fn expires_at(&self, id: u64) -> Option<u64> {
        let deadline = *self.lock().get(&id)?;
        let left = deadline.saturating_duration_since(Instant::now());
        Some(unix_millis(SystemTime::now() + left))
    }

    /// Ids whose deadline has passed.
    pub fn expired(&self, now: Instant) -> Vec<u64> {
        self.lock()
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// True when `id` is armed and its deadline has passed.
    pub fn is_expired(&self, id: u64, now: Instant) -> bool {
        self.lock().get(&id).is_some_and(|d| *d <= now)
    }

    /// Number of armed leases.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no lease is armed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Registry {
    /// Grants a lease; its id is the revision that stores it.
    pub async fn grant_lease(self: &Arc<Self>, grant: LeaseGrant) -> Result<Lease, RegistryError> {
        grant.validate()?;
        if self.store.leases().is_some() {
            return self.grant_shared_lease(grant.ttl_seconds).await;
        }
        let mut tx = self.begin().await;
        let id = tx.snapshot().revision + 1;
        tx.put(Record::Lease(LeaseRecord {
            id,
            ttl_seconds: grant.ttl_seconds,
        }));
        // Armed before the lock is released, so expiry never sees it unarmed.
        let expires_at = self.leases.arm(id, grant.ttl_seconds);
        if let Err(e) = tx.commit().await {
            self.leases.disarm(id);
            return Err(e);
        }
        Ok(Lease {
            id,
            ttl_seconds: grant.ttl_seconds,
            expires_at,
        })
    }

    /// A lease granted by the shared store, recorded with the lease attached to itself.
    async fn grant_shared_lease(
        self: &Arc<Self>,
        ttl_seconds: u64,
    ) -> Result<Lease, RegistryError> {
        let Some(shared) = self.store.leases() else {
            return Err(RegistryError::Internal("the store has no leases".into()));
        };
        let id = shared.grant(ttl_seconds).await?;
        let expires_at = self.leases.arm(id, ttl_seconds);
        shared.hold(id, ttl_seconds);
        let stored = self
            .retry_conflicts(|| async {
                let mut tx = self.begin().await;
                tx.put(Record::Lease(LeaseRecord { id, ttl_seconds }));
                tx.commit().await
            })
            .await;
        if let Err(e) = stored {
            self.leases.disarm(id);
            if let Err(revoke) = shared.revoke(id).await {
                crate::log(&format!("{revoke} (it expires by itself)"));
            }
            return Err(e);
        }
        Ok(Lease {
            id,
            ttl_seconds,
            expires_at,
        })
    }

    /// Restarts a lease's countdown. Memory only: nothing is written. With a shared store this
    /// node (re)starts holding the lease alive in the backend, so a client may keep a lease
    /// alive through any node, and a restarted node adopts the leases its clients still keep.
    pub fn keepalive(&self, id: u64) -> Result<Lease, RegistryError> {
        let snap = self.snapshot();
        let Some(l) = snap.leases.get(&id) else {
            return Err(lease_not_found(id));
        };
        let expires_at = self.leases.arm(id, l.ttl_seconds);
        if let Some(shared) = self.store.leases() {
            shared.hold(id, l.ttl_seconds);
        }
        Ok(Lease {
            id,
            ttl_seconds: l.ttl_seconds,
            expires_at,
        })
    }

    /// A lease and its current deadline.
    pub fn lease(&self, id: u64) -> Result<Lease, RegistryError> {
        let snap = self.snapshot();
        let l = snap.leases.get(&id).ok_or_else(|| lease_not_found(id))?;
        Ok(Lease {
            id,
            ttl_seconds: l.ttl_seconds,
            expires_at: self.leases.expires_at(id).unwrap_or(0),
        })
    }

    /// Every lease.
    pub fn leases(&self) -> Vec<Lease> {
        self.snapshot()
            .leases
            .values()
            .map(|l| Lease {
                id: l.id,
                ttl_seconds: l.ttl_seconds,
                expires_at: self.leases.expires_at(l.id).unwrap_or(0),
            })
            .collect()
    }

    /// Revokes a lease now, deleting its endpoints.
    pub async fn revoke_lease(self: &Arc<Self>, id: u64) -> Result<Deleted, RegistryError> {
        if let Some(shared) = self.store.leases() {
            if !self.snapshot().leases.contains_key(&id) {
                return Err(lease_not_found(id));
            }
            shared.revoke(id).await?;
            self.leases.disarm(id);
            let snap = self
                .wait_for_snapshot(|s| !s.leases.contains_key(&id))
                .await?;
            return Ok(deleted("lease", id.to_string(), snap.revision, true));
        }
        let mut tx = self.begin().await;
        let Some(l) = tx.snapshot().leases.get(&id).copied() else {
            return Err(lease_not_found(id));
        };
        stage_lease_delete(&mut tx, l);
        let done = tx.commit().await?;
        self.leases.disarm(id);
        Ok(deleted("lease", id.to_string(), done.revision, true))
    }

    /// Deletes every lease whose deadline has passed, with its endpoints, in one transaction.
    /// Returns how many expired.
    pub async fn expire_leases(self: &Arc<Self>) -> Result<usize, RegistryError> {
        let now = Instant::now();
        if self.leases.expired(now).is_empty() {
            return Ok(0);
        }
        if let Some(shared) = self.store.leases() {
            // The backend deletes each lease's records; the feed brings the deletes back.
            let mut gone = 0;
            for id in self.leases.expired(now) {
                if self.snapshot().leases.contains_key(&id) {
                    shared.revoke(id).await?;
                    gone += 1;
                }
                self.leases.disarm(id);
            }
            return Ok(gone);
        }
        let mut tx = self.begin().await;
        // Re-checked under the lock: a keepalive may have come in meanwhile.
        let mut gone = Vec::new();
        for id in self.leases.expired(now) {
            match tx.snapshot().leases.get(&id).copied() {
                Some(l) if self.leases.is_expired(id, now) => {
                    stage_lease_delete(&mut tx, l);
                    gone.push(id);
                }
                Some(_) => {}
                None => self.leases.disarm(id),
            }
        }
        tx.commit().await?;
        for id in &gone {
            self.leases.disarm(*id);
        }
        Ok(gone.len())
    }

    /// Number of live leases.
    pub fn lease_count(&self) -> usize {
        self.snapshot().leases.len()
    }
}

fn stage_lease_delete(tx: &mut WriteTxn, l: LeaseRecord) {
    let owned: Vec<_> = tx
        .snapshot()
        .all_endpoints()
        .filter(|e| e.lease == Some(l.id))
        .cloned()
        .collect();
    for e in owned {
        tx.delete(Record::Endpoint(e));
    }
    tx.delete(Record::Lease(l));
}

fn lease_not_found(id: u64) -> RegistryError {
    RegistryError::not_found(format!(
        "lease {id} does not exist (expired or revoked): grant a new one"
    ))
}

/// Unix time in milliseconds.
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Deletes expired leases (and their endpoints) until `stop` turns true.
pub async fn run_expiry(registry: Arc<Registry>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        match registry.expire_leases().await {
            Ok(0) => {}
            Ok(n) => crate::log(&format!("expired {n} lease(s)")),
            Err(e) => crate::log(&format!("lease expiry failed (will retry): {e}")),
        }
    }
}
