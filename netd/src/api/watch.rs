//! `GET /v1/watch?since=REV`: a long-lived newline-delimited JSON stream of registry changes.
//!
//! One task per watcher copies pre-serialized batches from the registry's broadcast into the
//! response body. It starts with the catch-up (replayed batches, or `reset` + snapshot), sends
//! `synced`, then follows live. A watcher that lags behind the broadcast gets `reset` and a
//! fresh snapshot. The stream ends when the client goes away or the daemon drains.

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use netd_config::netd::Event;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};

use super::body::{with_type, Body, ChannelBody};
use super::drained;
use crate::registry::model::Snapshot;
use crate::registry::watch::{ndjson, Start};
use crate::registry::Registry;

/// Events per chunk when sending a snapshot.
const SNAPSHOT_CHUNK: usize = 256;

/// Starts a watch stream from `since`.
pub fn stream(registry: Arc<Registry>, since: u64, drain: watch::Receiver<bool>) -> Response<Body> {
    let reg = registry.clone();
    let sub = registry.hub().subscribe(since, move || reg.snapshot());
    let (tx, body) = ChannelBody::new(16);
    tokio::spawn(async move {
        let mut sub = sub;
        let start = std::mem::replace(&mut sub.start, Start::Replay(Vec::new()));
        let mut last = match start {
            Start::Snapshot(snap) => match send_snapshot(&tx, &snap).await {
                Some(rev) => rev,
                None => return,
            },
            Start::Replay(batches) => {
                let mut last = since;
                for b in batches {
                    if !b.ndjson.is_empty() && tx.send(b.ndjson.clone()).await.is_err() {
                        return;
                    }
                    last = b.revision;
                }
                let synced = ndjson(&[Event::Synced { revision: last }]);
                if tx.send(Bytes::from(synced)).await.is_err() {
                    return;
                }
                last
            }
        };
        let mut drain = drain;
        loop {
            tokio::select! {
                _ = drained(&mut drain) => return,
                _ = tx.closed() => return,
                r = sub.live.recv() => match r {
                    Ok(b) if b.revision <= last => {}
                    Ok(b) => {
                        last = b.revision;
                        if !b.ndjson.is_empty() && tx.send(b.ndjson.clone()).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) => match send_snapshot(&tx, &registry.snapshot()).await {
                        Some(rev) => last = rev,
                        None => return,
                    },
                    Err(RecvError::Closed) => return,
                },
            }
        }
    });
    let mut r = with_type(
        StatusCode::OK,
        http_body_util::BodyExt::boxed(body),
        "application/x-ndjson",
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    r
}

/// Sends `reset`, every object, and `synced`; returns the snapshot's revision, or `None` when
/// the client went away.
async fn send_snapshot(tx: &mpsc::Sender<Bytes>, snap: &Snapshot) -> Option<u64> {
    let rev = snap.revision;
    let mut chunk = vec![Event::Reset { revision: rev }];
    for object in snap.objects() {
        chunk.push(Event::Put {
            revision: rev,
            object,
        });
        if chunk.len() >= SNAPSHOT_CHUNK {
            tx.send(Bytes::from(ndjson(&chunk))).await.ok()?;
            chunk.clear();
        }
    }
    chunk.push(Event::Synced { revision: rev });
    tx.send(Bytes::from(ndjson(&chunk))).await.ok()?;
    Some(rev)
}
