//! Scale-down under load: an endpoint removed from the snapshot gets no new requests while
//! its in-flight ones finish, then stops — and no client request fails.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_endpoint_under_load_fails_no_request() {
    let (a, b) = (backend("a", Proto::H1).await, backend("b", Proto::H1).await);
    let running = sidecar(web_snapshot("http", &[a.addr, b.addr], "p2c"), |_| {}).await;
    let outbound = running.addrs.outbound;
    const CLIENTS: usize = 4;
    const REQUESTS: usize = 300;
    let (removed_tx, removed_rx) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let removed = removed_rx.clone();
        clients.push(tokio::spawn(async move {
            let mut client = h1(outbound).await;
            let (mut failures, mut after_removal_on_b) = (Vec::new(), 0);
            for i in 0..REQUESTS {
                let removed_before = *removed.borrow();
                let (status, headers, body) =
                    read(client.send_request(get("web", "/slow")).await.unwrap()).await;
                if status != 200 {
                    failures.push((i, status, headers.get("netd-proxy-error").cloned()));
                }
                if removed_before && body == "b" {
                    after_removal_on_b += 1;
                }
            }
            (failures, after_removal_on_b)
        }));
    }
    // Let load build up on both endpoints, then scale down.
    while b.hits.load(Ordering::Relaxed) < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running
        .store
        .publish(web_snapshot("http", &[a.addr], "p2c"));
    removed_tx.send(true).unwrap();
    let b_hits_at_removal = b.hits.load(Ordering::Relaxed);
    b.shutdown().await; // graceful: in-flight requests finish, idle connections close
    for c in clients {
        let (failures, after_removal_on_b) = c.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
        assert_eq!(after_removal_on_b, 0);
    }
    assert!(b_hits_at_removal >= 50);
    assert!(a.hits.load(Ordering::Relaxed) + b_hits_at_removal <= CLIENTS * REQUESTS + CLIENTS);
    assert_eq!(settle(&running).await, 0);
    running.shutdown().await;
}
