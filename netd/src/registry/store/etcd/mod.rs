//! The etcd store: the registry shared by the daemons of several machines through an etcd v3
//! cluster (`netd up --store etcd://h1:2379,h2:2379,h3:2379`).
//!
//! It talks to etcd's JSON gateway over HTTP/1.1 ([`gateway`], failing over between members;
//! no gRPC stack to build). Layout: each record under `/netd/v1/<table>/<key>` as the same JSON
//! the embedded store keeps, and `/netd/v1/revision`, which every netd transaction rewrites.
//!
//! - **Revisions** are etcd's: a record's revision is its `mod_revision`, the registry's
//!   revision the last etcd revision applied.
//! - **Commit**: one etcd transaction, applied only if `/netd/v1/revision` has not changed
//!   since the revision the registry computed the change against (`mod_revision <
//!   base + 1`), so writers on different nodes can never interleave: the loser gets
//!   [`StoreError::Conflict`] and the registry re-runs its operation. Acknowledged means
//!   committed by an etcd quorum.
//! - **Feed** ([`feed`]): one etcd watch over the prefix; every node applies every change,
//!   its own included, from it.
//! - **Leases** are etcd leases: granted with the TTL, kept alive by this process while it
//!   holds them (a keepalive every third of the TTL), records attached to them, so etcd deletes
//!   a dead node's leased endpoints by itself.
//!
//! Limits: a registry transaction is one etcd transaction, so it is bounded by etcd's
//! `--max-txn-ops` (default 128 operations, [`MAX_TXN_OPS`], one of them the revision guard;
//! the error says so) and `--max-request-bytes`. The registry groups the changes of
//! concurrent writers into one transaction within [`Store::limits`] and never puts two changes
//! of one key into one transaction (etcd refuses duplicate keys).

mod feed;
pub mod gateway;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use self::gateway::{Gateway, GatewayError};
use self::wire::{
    Compare, DeleteRequest, LeaseGrantRequest, LeaseIdRequest, LeaseResponse, PutRequest,
    RangeRequest, RangeResponse, RequestOp, Streamed, TxnRequest, TxnResponse,
};
use super::{
    ChangeFeed, Entry, Loaded, SharedLeases, Store, StoreError, StoreFuture, StoreInfo, StoreOp,
    Table, Txn, TxnLimits,
};

/// Key prefix of everything netd stores.
pub const PREFIX: &str = "/netd/v1/";
/// Key every netd transaction rewrites; transactions compare its `mod_revision`.
pub const REVISION_KEY: &str = "/netd/v1/revision";
/// Keys read per range request when loading.
const PAGE: u64 = 1000;
/// Feed changes buffered before the watch waits for the registry.
const FEED_BUFFER: usize = 1024;
/// How often held leases are checked for a keepalive due.
const KEEPALIVE_TICK: Duration = Duration::from_millis(250);
/// Operations etcd allows in one transaction branch by default (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;
/// Operations every netd transaction spends on the revision guard (the put of
/// [`REVISION_KEY`]), out of [`MAX_TXN_OPS`].
pub const GUARD_OPS: usize = 1;
/// Bytes of keys and values a grouped transaction may carry: a third of etcd's default
/// `--max-request-bytes` (1.5 MiB), leaving room for the encoding.
pub const GROUP_BYTES: usize = 512 * 1024;

fn prefix() -> Vec<u8> {
    PREFIX.as_bytes().to_vec()
}

/// End of the prefix range: the prefix with its last byte incremented (`/netd/v1/` →
/// `/netd/v10`).
fn prefix_end() -> Vec<u8> {
    let mut end = prefix();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

fn record_key(table: Table, key: &str) -> Vec<u8> {
    format!("{PREFIX}{}/{key}", table.name()).into_bytes()
}

/// Table and key of a stored key; `None` for keys that are not records (the revision key).
fn parse_key(raw: &[u8]) -> Option<(Table, String)> {
    let rest = std::str::from_utf8(raw).ok()?.strip_prefix(PREFIX)?;
    let (table, key) = rest.split_once('/')?;
    Some((Table::from_name(table)?, key.to_string()))
}

/// Parses `etcd://host:port[,host:port...]` into the members' `host:port`s.
pub fn parse_url(url: &str) -> Result<Vec<String>, StoreError> {
    let bad = |why: &str| {
        StoreError::Open {
        path: url.to_string(),
        message: format!("{why}; expected etcd://HOST:PORT[,HOST:PORT...], e.g. etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379"),
    }
    };
    let list = url
        .strip_prefix("etcd://")
        .ok_or_else(|| bad("not an etcd:// URL"))?;
    let list = list.strip_suffix('/').unwrap_or(list);
    let mut members = Vec::new();
    for m in list.split(',') {
        let m = m.trim();
        let Some((host, port)) = m.rsplit_once(':') else {
            return Err(bad(&format!("member {m:?} has no port")));
        };
        if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
            return Err(bad(&format!("member {m:?} is not HOST:PORT")));
        }
        members.push(m.to_string());
    }
    Ok(members)
}

/// Reads every record, one page at a time, all at the revision of the first page.
async fn load_all(gateway: &Gateway) -> Result<Loaded, GatewayError> {
    let mut records = Vec::new();
    let mut from = prefix();
    let mut revision = 0;
    loop {
        let page: RangeResponse = gateway
            .call(
                "/v3/kv/range",
                &RangeRequest {
                    key: from.clone(),
                    range_end: prefix_end(),
                    limit: PAGE,
                    revision,
                },
            )
            .await?;
        if revision == 0 {
            revision = page.header.revision;
        }
        let more = page.more;
        for kv in page.kvs {
            from = kv.key.clone();
            if let Some((table, key)) = parse_key(&kv.key) {
                records.push(Entry {
                    table,
                    key,
                    value: kv.value,
                    revision: Some(kv.mod_revision),
                });
            }
        }
        if !more {
            return Ok(Loaded { revision, records });
        }
        from.push(0);
    }
}

/// A lease this process keeps alive.
struct Held {
    ttl_seconds: u64,
    due: Instant,
}

struct Inner {
    gateway: Arc<Gateway>,
    location: String,
    writer: String,
    held: Arc<Mutex<HashMap<u64, Held>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|p| p.into_inner());
        for t in tasks.drain(..) {
            t.abort();
        }
    }
}

/// [`Store`] on an etcd cluster. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

impl EtcdStore {
    /// Connects to the cluster at `url` (`etcd://h1:2379,h2:2379,...`) and checks that a member
    /// answers. `writer` (the node name) is recorded as the last writer in the revision key.
    pub async fn connect(url: &str, writer: &str) -> Result<Self, StoreError> {
        let members = parse_url(url)?;
        let gateway = Arc::new(Gateway::new(members.clone()));
        let probe: Result<RangeResponse, _> = gateway
            .call(
                "/v3/kv/range",
                &RangeRequest {
                    key: REVISION_KEY.as_bytes().to_vec(),
                    range_end: Vec::new(),
                    limit: 0,
                    revision: 0,
                },
            )
            .await;
        if let Err(e) = probe {
            return Err(StoreError::Unavailable(format!(
                "cannot use the etcd cluster {}: {e}. Check that its members run and that \
                 --store lists their client URLs (etcd's --advertise-client-urls), or start \
                 without --store to use the embedded store",
                members.join(", ")
            )));
        }
        let held = Arc::new(Mutex::new(HashMap::new()));
        let keepalive = tokio::spawn(keep_alive(gateway.clone(), held.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                gateway,
                location: format!("etcd://{}", members.join(",")),
                writer: writer.to_string(),
                held,
                tasks: Mutex::new(vec![keepalive]),
            }),
        })
    }

    fn held(&self) -> MutexGuard<'_, HashMap<u64, Held>> {
        lock(&self.inner.held)
    }

    async fn commit_txn(&self, txn: Txn) -> Result<u64, StoreError> {
        let revision_key = REVISION_KEY.as_bytes().to_vec();
        let mut success = vec![RequestOp::Put(PutRequest {
            key: revision_key.clone(),
            value: self.inner.writer.as_bytes().to_vec(),
            lease: 0,
        })];
        for op in txn.ops {
            success.push(match op {
                StoreOp::Put {
                    table,
                    key,
                    value,
                    lease,
                } => RequestOp::Put(PutRequest {
                    key: record_key(table, &key),
                    value,
                    lease: lease.unwrap_or(0),
                }),
                StoreOp::Delete { table, key } => RequestOp::Delete(DeleteRequest {
                    key: record_key(table, &key),
                }),
            });
        }
        let req = TxnRequest {
            compare: vec![Compare {
                target: "MOD",
                result: "LESS",
                key: revision_key.clone(),
                mod_revision: txn.base_revision + 1,
            }],
            success,
            failure: vec![RequestOp::Range(RangeRequest {
                key: revision_key,
                range_end: Vec::new(),
                limit: 0,
                revision: 0,
            })],
        };
        let resp: TxnResponse = self
            .inner
            .gateway
            .call("/v3/kv/txn", &req)
            .await
            .map_err(write_error)?;
        if resp.succeeded {
            return Ok(resp.header.revision);
        }
        let stored = resp
            .responses
            .first()
            .and_then(|r| r.response_range.as_ref())
            .and_then(|r| r.kvs.first())
            .map_or(resp.header.revision, |kv| kv.mod_revision);
        Err(StoreError::Conflict {
            expected: txn.base_revision,
            stored,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A failed write, with what to do about it.
fn write_error(e: GatewayError) -> StoreError {
    match e {
        GatewayError::Unreachable(_) => {
            StoreError::Unavailable(format!("etcd is unreachable, nothing was written: {e}"))
        }
        GatewayError::Etcd { ref message, .. } if message.contains("too many operations") => {
            StoreError::Write(format!(
                "{e}: this change touches more records than etcd allows in one transaction; \
                 raise etcd's --max-txn-ops (default 128)"
            ))
        }
        GatewayError::Etcd { ref message, .. } if message.contains("lease not found") => {
            StoreError::Write(format!(
                "{e}: a lease this change attaches records to has expired or was revoked; \
                 grant a new one"
            ))
        }
        other => StoreError::Write(other.to_string()),
    }
}

/// Sends a keepalive for every held lease that is due, forever.
async fn keep_alive(gateway: Arc<Gateway>, held: Arc<Mutex<HashMap<u64, Held>>>) {
    let mut tick = tokio::time::interval(KEEPALIVE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let now = Instant::now();
        let due: Vec<u64> = lock(&held)
            .iter()
            .filter(|(_, h)| h.due <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let answer: Result<Streamed<LeaseResponse>, _> = gateway
                .call("/v3/lease/keepalive", &LeaseIdRequest { id })
                .await;
            let mut held = lock(&held);
            match answer {
                Ok(Streamed {
                    result: Some(r), ..
                }) if r.ttl > 0 => {
                    if failing {
                        crate::log("etcd lease keepalives work again");
                        failing = false;
                    }
                    if let Some(h) = held.get_mut(&id) {
                        h.due = Instant::now() + keepalive_period(h.ttl_seconds);
                    }
                }
                Ok(Streamed {
                    result: Some(_), ..
                }) => {
                    // TTL 0: etcd no longer knows the lease; its records are gone with it.
                    held.remove(&id);
                }
                Ok(Streamed { error, .. }) => {
                    crate::log(&format!("etcd lease {id} keepalive failed: {error:?}"));
                    held.remove(&id);
                }
                Err(e) => {
                    if !failing {
                        crate::log(&format!("etcd lease keepalive failed (retrying): {e}"));
                        failing = true;
                    }
                    if let Some(h) = held.get_mut(&id) {
                        h.due = Instant::now() + Duration::from_millis(500);
                    }
                }
            }
        }
    }
}

/// A third of the TTL (at least half a second), so two keepalives may be lost in a row.
fn keepalive_period(ttl_seconds: u64) -> Duration {
    (Duration::from_secs(ttl_seconds) / 3).max(Duration::from_millis(500))
}

impl Store for EtcdStore {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            backend: "etcd",
            location: self.inner.location.clone(),
        }
    }

    fn load(&self) -> StoreFuture<'_, Loaded> {
        Box::pin(async move {
            load_all(&self.inner.gateway)
                .await
                .map_err(|e| StoreError::Read(e.to_string()))
        })
    }

    fn commit(&self, txn: Txn) -> StoreFuture<'_, u64> {
        Box::pin(self.commit_txn(txn))
    }

    fn follow(&self, after: u64) -> Option<ChangeFeed> {
        let (tx, rx) = mpsc::channel(FEED_BUFFER);
        let task = tokio::spawn(feed::run(self.inner.gateway.clone(), after, tx));
        lock(&self.inner.tasks).push(task);
        Some(rx)
    }

    fn leases(&self) -> Option<&dyn SharedLeases> {
        Some(self)
    }

    fn limits(&self) -> TxnLimits {
        TxnLimits {
            ops: MAX_TXN_OPS - GUARD_OPS,
            bytes: GROUP_BYTES,
        }
    }
}

impl SharedLeases for EtcdStore {
    fn grant(&self, ttl_seconds: u64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let r: LeaseResponse = self
                .inner
                .gateway
                .call("/v3/lease/grant", &LeaseGrantRequest { ttl: ttl_seconds })
                .await
                .map_err(|e| StoreError::Lease {
                    id: 0,
                    message: format!("etcd could not grant it: {e}"),
                })?;
            Ok(r.id)
        })
    }

    fn hold(&self, id: u64, ttl_seconds: u64) {
        self.held().entry(id).or_insert_with(|| Held {
            ttl_seconds,
            due: Instant::now() + keepalive_period(ttl_seconds),
        });
    }

    fn revoke(&self, id: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.held().remove(&id);
            let r: Result<serde_json::Value, _> = self
                .inner
                .gateway
                .call("/v3/lease/revoke", &LeaseIdRequest { id })
                .await;
            match r {
                Ok(_) => Ok(()),
                Err(GatewayError::Etcd { message, .. }) if message.contains("lease not found") => {
                    Ok(())
                }
                Err(e) => Err(StoreError::Lease {
                    id,
                    message: format!("revoking it in etcd failed: {e}"),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_keys() {
        assert_eq!(
            parse_url("etcd://127.0.0.1:2379,h2:2379,[::1]:2379").unwrap(),
            ["127.0.0.1:2379", "h2:2379", "[::1]:2379"]
        );
        for bad in [
            "http://h:2379",
            "etcd://h",
            "etcd://h:x",
            "etcd://:2379",
            "etcd://",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert_eq!(prefix_end(), b"/netd/v10");
        let k = record_key(Table::Endpoints, "default/web/10.0.0.1:80");
        assert_eq!(k, b"/netd/v1/endpoints/default/web/10.0.0.1:80");
        assert_eq!(
            parse_key(&k),
            Some((Table::Endpoints, "default/web/10.0.0.1:80".to_string()))
        );
        assert_eq!(parse_key(REVISION_KEY.as_bytes()), None);
        assert_eq!(parse_key(b"/netd/v1/other/x"), None);
    }
}
