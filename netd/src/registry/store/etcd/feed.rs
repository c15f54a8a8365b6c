//! The store's feed: one etcd watch over netd's key prefix, turned into [`Change`]s.
//!
//! Events are grouped by revision (one transaction, or one lease expiry, is one revision and
//! etcd never splits one across watch responses). When the stream breaks (the member died, the
//! connection reset) the watch is opened again on the next member from the revision after the
//! last one delivered, so nothing is lost or repeated. When that revision has been compacted
//! away, everything is read again and delivered as a [`Change::Resync`].
//!
//! A member that hangs (stopped, overloaded, cut off from the others) keeps the connection
//! open and just sends nothing, which looks the same as a registry nobody changes. So when the
//! stream has been silent for [`SILENCE`], the member is asked a linearizable read (which
//! needs it to be alive and in touch with the cluster's leader); no answer within
//! [`PROBE_TIMEOUT`] counts as a broken stream, and the watch moves on.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::gateway::{Gateway, GatewayError};
use super::wire::{
    RangeRequest, RangeResponse, Streamed, WatchCreate, WatchRequest, WatchResponse,
};
use super::{load_all, parse_key, prefix, prefix_end, REVISION_KEY};
use crate::registry::store::{Change, ChangeOp, Entry};

/// Longest pause between attempts to reopen the watch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long the stream may stay silent before its member is asked whether it still answers.
pub const SILENCE: Duration = Duration::from_secs(2);
/// How long that question may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a watch stream ended.
enum Ended {
    /// The stream broke or was refused.
    Broken(String),
    /// The receiver is gone: stop.
    Closed,
}

/// Delivers every change after revision `after` to `tx` until `tx` closes.
pub async fn run(gateway: Arc<Gateway>, after: u64, tx: mpsc::Sender<Change>) {
    let mut next = after + 1;
    let mut idx = gateway.preferred();
    let mut failures: u32 = 0;
    loop {
        let ended = tokio::select! {
            ended = watch(&gateway, idx, &mut next, &tx, &mut failures) => ended,
            () = tx.closed() => Ended::Closed,
        };
        let reason = match ended {
            Ended::Closed => return,
            Ended::Broken(reason) => reason,
        };
        if failures == 0 {
            crate::log(&format!(
                "etcd watch on {} ended ({reason}); resuming at revision {next} on the next member",
                gateway.endpoints()[idx]
            ));
        }
        failures += 1;
        idx = (idx + 1) % gateway.endpoints().len();
        if (failures as usize).is_multiple_of(gateway.endpoints().len()) {
            let pause = Duration::from_millis(100 * u64::from(failures)).min(MAX_BACKOFF);
            tokio::time::sleep(pause).await;
        }
    }
}

/// One watch stream on member `idx`, from `*next`; advances `*next` as revisions are delivered.
async fn watch(
    gateway: &Gateway,
    idx: usize,
    next: &mut u64,
    tx: &mpsc::Sender<Change>,
    failures: &mut u32,
) -> Ended {
    let req = WatchRequest {
        create_request: WatchCreate {
            key: prefix(),
            range_end: prefix_end(),
            start_revision: *next,
        },
    };
    let mut body = match gateway.stream(idx, "/v3/watch", &req).await {
        Ok(body) => body,
        Err(e) => return Ended::Broken(e),
    };
    let mut buf = BytesMut::new();
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = tokio::time::sleep(SILENCE) => {
                if let Err(e) = probe(gateway, idx).await {
                    return Ended::Broken(format!("the member stopped answering ({e})"));
                }
                continue;
            }
        };
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Ended::Broken(e.to_string()),
            None => return Ended::Broken("the member closed the stream".into()),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line = buf.split_to(end + 1);
            let line = line.chunk().trim_ascii();
            if line.is_empty() {
                continue;
            }
            let msg: Streamed<WatchResponse> = match serde_json::from_slice(line) {
                Ok(m) => m,
                Err(e) => return Ended::Broken(format!("undecodable watch message: {e}")),
            };
            let Some(resp) = msg.result else {
                let error = msg.error.map(|e| e.to_string()).unwrap_or_default();
                return Ended::Broken(format!("watch error: {error}"));
            };
            if resp.compact_revision > 0 {
                return resync(gateway, next, tx).await;
            }
            if resp.canceled {
                return Ended::Broken(format!("watch cancelled: {}", resp.cancel_reason));
            }
            if resp.created {
                if *failures > 0 {
                    crate::log(&format!(
                        "etcd watch resumed on {} at revision {next}",
                        gateway.endpoints()[idx]
                    ));
                }
                *failures = 0;
            }
            for change in group(resp) {
                if let Change::Revision { revision, .. } = &change {
                    *next = revision + 1;
                }
                if tx.send(change).await.is_err() {
                    return Ended::Closed;
                }
            }
        }
    }
}

/// Asks member `idx` for a linearizable read of the revision key.
async fn probe(gateway: &Gateway, idx: usize) -> Result<(), GatewayError> {
    let req = RangeRequest {
        key: REVISION_KEY.as_bytes().to_vec(),
        range_end: Vec::new(),
        limit: 1,
        revision: 0,
    };
    let _: RangeResponse = gateway
        .call_member(idx, "/v3/kv/range", &req, PROBE_TIMEOUT)
        .await?;
    Ok(())
}

/// The revision `*next` is gone from etcd's history: read everything and start over after it.
async fn resync(gateway: &Gateway, next: &mut u64, tx: &mpsc::Sender<Change>) -> Ended {
    match load_all(gateway).await {
        Ok(loaded) => {
            crate::log(&format!(
                "etcd compacted revision {next} before it was delivered; resynchronised at revision {}",
                loaded.revision
            ));
            *next = loaded.revision + 1;
            if tx.send(Change::Resync(loaded)).await.is_err() {
                return Ended::Closed;
            }
            Ended::Broken("resynchronised".into())
        }
        Err(e) => Ended::Broken(format!("resynchronising failed: {e}")),
    }
}

/// The events of one watch response, one [`Change`] per revision. Keys outside netd's tables
/// (the revision key) are left out; a revision with nothing left is skipped.
fn group(resp: WatchResponse) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    for ev in resp.events {
        let revision = ev.kv.mod_revision;
        let Some((table, key)) = parse_key(&ev.kv.key) else {
            continue;
        };
        let op = if ev.kind.as_deref() == Some("DELETE") {
            ChangeOp::Delete { table, key }
        } else {
            ChangeOp::Put(Entry {
                table,
                key,
                value: ev.kv.value,
                revision: Some(revision),
            })
        };
        match out.last_mut() {
            Some(Change::Revision { revision: r, ops }) if *r == revision => ops.push(op),
            _ => out.push(Change::Revision {
                revision,
                ops: vec![op],
            }),
        }
    }
    out
}
