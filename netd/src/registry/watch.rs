//! Watch fan-out: every committed revision becomes one [`Batch`] of events, serialized to
//! newline-delimited JSON once and shared by every subscriber through a tokio broadcast
//! channel. A bounded history of recent batches lets a client that reconnects with
//! `since=REV` catch up without a full snapshot; a client asking for a revision older than the
//! history (or 0, or one from the future) gets a `reset` and a snapshot instead, as does a
//! subscriber that falls too far behind.
//!
//! This module knows nothing about HTTP: it hands out [`Subscription`]s; the API turns them into
//! streams.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use netd_config::netd::Event;
use tokio::sync::broadcast;

use super::model::Snapshot;

/// Events kept for catch-up, counted in events (whole batches are dropped).
pub const HISTORY_EVENTS: usize = 10_000;
/// Batches a subscriber may lag behind before it is resynchronised with a snapshot.
pub const CHANNEL_BATCHES: usize = 1_024;

/// The events of one committed revision.
#[derive(Debug)]
pub struct Batch {
    /// The revision.
    pub revision: u64,
    /// Its events (all carry `revision`).
    pub events: Vec<Event>,
    /// The events as newline-delimited JSON, serialized once for every subscriber.
    pub ndjson: Bytes,
}

impl Batch {
    /// Builds a batch and its wire form.
    pub fn new(revision: u64, events: Vec<Event>) -> Self {
        let ndjson = Bytes::from(ndjson(&events));
        Self {
            revision,
            events,
            ndjson,
        }
    }
}

/// Encodes events one per line.
pub fn ndjson(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.len() * 256);
    for e in events {
        // Events hold only serializable plain data.
        if serde_json::to_writer(&mut out, e).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

struct Inner {
    history: VecDeque<Arc<Batch>>,
    history_events: usize,
    /// History holds every batch after this revision.
    complete_after: u64,
    /// Last published revision.
    current: u64,
}

/// Publishes batches and hands out subscriptions.
pub struct WatchHub {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Batch>>,
    watchers: AtomicUsize,
}

/// Where a new subscriber starts.
pub enum Start {
    /// Replay these batches (possibly none), then follow live.
    Replay(Vec<Arc<Batch>>),
    /// Send `reset`, then this snapshot, then follow live.
    Snapshot(Arc<Snapshot>),
}

/// A subscriber: its starting point and its live feed. Events with a revision at or below what
/// the start covered must be skipped (they may arrive twice around the hand-over).
pub struct Subscription {
    /// Catch-up.
    pub start: Start,
    /// Live batches.
    pub live: broadcast::Receiver<Arc<Batch>>,
    hub: Arc<WatchHub>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WatchHub {
    /// A hub whose history starts at `revision` (the store's revision at startup).
    pub fn new(revision: u64) -> Arc<Self> {
        let (tx, _) = broadcast::channel(CHANNEL_BATCHES);
        Arc::new(Self {
            inner: Mutex::new(Inner {
                history: VecDeque::new(),
                history_events: 0,
                complete_after: revision,
                current: revision,
            }),
            tx,
            watchers: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves consistent data (plain pushes and pops).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a committed revision. Called by the registry in revision order, after the
    /// snapshot containing it has been published.
    pub fn publish(&self, batch: Batch) {
        let batch = Arc::new(batch);
        let mut inner = self.lock();
        inner.current = batch.revision;
        inner.history_events += batch.events.len();
        inner.history.push_back(batch.clone());
        while inner.history_events > HISTORY_EVENTS && inner.history.len() > 1 {
            if let Some(old) = inner.history.pop_front() {
                inner.history_events -= old.events.len();
                inner.complete_after = old.revision;
            }
        }
        // No receivers is fine.
        let _ = self.tx.send(batch);
    }

    /// Subscribes from `since` (0: snapshot). `snapshot` is read under the hub's lock, so
    /// nothing falls between the catch-up and the live feed.
    pub fn subscribe(
        self: &Arc<Self>,
        since: u64,
        snapshot: impl FnOnce() -> Arc<Snapshot>,
    ) -> Subscription {
        let inner = self.lock();
        let live = self.tx.subscribe();
        let start = if since != 0 && since >= inner.complete_after && since <= inner.current {
            Start::Replay(
                inner
                    .history
                    .iter()
                    .filter(|b| b.revision > since)
                    .cloned()
                    .collect(),
            )
        } else {
            Start::Snapshot(snapshot())
        };
        drop(inner);
        self.watchers.fetch_add(1, Ordering::Relaxed);
        Subscription {
            start,
            live,
            hub: self.clone(),
        }
    }

    /// Open subscriptions.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Relaxed)
    }

    /// Last published revision.
    pub fn current(&self) -> u64 {
        self.lock().current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(rev: u64, n: usize) -> Batch {
        Batch::new(
            rev,
            (0..n).map(|_| Event::Synced { revision: rev }).collect(),
        )
    }

    #[test]
    fn replay_or_snapshot() {
        let hub = WatchHub::new(5);
        hub.publish(batch(6, 1));
        hub.publish(batch(7, 2));
        let snap = || Arc::new(Snapshot::default());
        match &hub.subscribe(6, snap).start {
            Start::Replay(b) => assert_eq!(b.iter().map(|b| b.revision).collect::<Vec<_>>(), [7]),
            Start::Snapshot(_) => panic!("expected replay"),
        }
        match &hub.subscribe(5, snap).start {
            Start::Replay(b) => assert_eq!(b.len(), 2),
            Start::Snapshot(_) => panic!("expected replay"),
        }
        assert!(matches!(hub.subscribe(7, snap).start, Start::Replay(ref b) if b.is_empty()));
        assert!(matches!(hub.subscribe(0, snap).start, Start::Snapshot(_)));
        assert!(matches!(hub.subscribe(4, snap).start, Start::Snapshot(_)));
        assert!(matches!(hub.subscribe(99, snap).start, Start::Snapshot(_)));
        assert_eq!(hub.watchers(), 0);
    }

    #[test]
    fn history_is_bounded() {
        let hub = WatchHub::new(0);
        for rev in 1..=3 {
            hub.publish(batch(rev, HISTORY_EVENTS / 2 + 1));
        }
        let snap = || Arc::new(Snapshot::default());
        assert!(matches!(hub.subscribe(1, snap).start, Start::Snapshot(_)));
        assert!(matches!(hub.subscribe(2, snap).start, Start::Replay(ref b) if b.len() == 1));
    }

    #[tokio::test]
    async fn live_feed() {
        let hub = WatchHub::new(0);
        let mut sub = hub.subscribe(0, || Arc::new(Snapshot::default()));
        assert_eq!(hub.watchers(), 1);
        hub.publish(batch(1, 1));
        let b = sub.live.recv().await.unwrap();
        assert_eq!(b.revision, 1);
        assert_eq!(&b.ndjson[..], b"{\"type\":\"synced\",\"revision\":1}\n");
        drop(sub);
        assert_eq!(hub.watchers(), 0);
    }
}
