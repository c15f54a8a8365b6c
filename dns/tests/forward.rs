//! Forwarding through netd's server to an upstream started by the test on loopback: forwarded
//! answers, the cache (hits, TTL count-down and expiry, negative caching), failover, SERVFAIL,
//! and the TCP paths (truncated upstream answers, TCP clients).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{addresses, tcp, udp, Running, Upstream, UpstreamAnswer};
use netd_dns::proto::op::ResponseCode;
use netd_dns::proto::rr::RecordType;
use netd_dns::{
    DnsServer, ForwardOptions, Forwarder, ServerOptions, SnapshotBuilder, SnapshotHandle,
};
use tokio::net::UdpSocket;

const WWW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

fn options(timeout: Duration) -> ServerOptions {
    let mut options = ServerOptions::default();
    options.forward.timeout = timeout;
    options
}

async fn netd(upstreams: Vec<SocketAddr>, timeout: Duration) -> Running {
    let snapshot = SnapshotHandle::new(SnapshotBuilder::new().build());
    Running::start(snapshot, upstreams, options(timeout)).await
}

/// A loopback port with nothing behind it (UDP gets ICMP port unreachable).
async fn closed_port() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.local_addr().expect("addr")
}

#[tokio::test]
async fn forwards_then_serves_from_cache_while_upstream_is_down() {
    let mut upstream = Upstream::start(vec![(
        "www.example.",
        RecordType::A,
        UpstreamAnswer::a("www.example.", 300, &[WWW]),
    )])
    .await;
    let running = netd(vec![upstream.addr], Duration::from_secs(1)).await;
    let server = running.addrs.udp;

    let first = udp(server, "www.example.", RecordType::A).await;
    assert_eq!(first.metadata.response_code, ResponseCode::NoError);
    assert!(
        !first.metadata.authoritative,
        "forwarded answers are not authoritative"
    );
    assert!(first.metadata.recursion_available);
    assert_eq!(addresses(&first), vec![WWW]);
    assert_eq!(upstream.queries(), (1, 0));

    // Same name in another case, over TCP: from the cache.
    let second = tcp(running.addrs.tcp, "WWW.Example.", RecordType::A).await;
    assert_eq!(addresses(&second), vec![WWW]);
    assert!(second.answers[0].ttl <= 300);
    assert_eq!(upstream.queries(), (1, 0), "answered from the cache");

    upstream.stop().await;
    let cached = udp(server, "www.example.", RecordType::A).await;
    assert_eq!(cached.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&cached), vec![WWW]);

    // Not cached and nobody upstream: SERVFAIL.
    let cold = udp(server, "other.example.", RecordType::A).await;
    assert_eq!(cold.metadata.response_code, ResponseCode::ServFail);
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn cached_answers_expire_with_their_ttl() {
    let mut upstream = Upstream::start(vec![(
        "short.example.",
        RecordType::A,
        UpstreamAnswer::a("short.example.", 1, &[WWW]),
    )])
    .await;
    let running = netd(vec![upstream.addr], Duration::from_millis(300)).await;
    let server = running.addrs.udp;

    assert_eq!(
        addresses(&udp(server, "short.example.", RecordType::A).await),
        vec![WWW]
    );
    upstream.stop().await;
    assert_eq!(
        addresses(&udp(server, "short.example.", RecordType::A).await),
        vec![WWW],
        "still within the TTL"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        udp(server, "short.example.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::ServFail,
        "expired, upstream gone"
    );
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn nxdomain_is_forwarded_and_cached_per_soa_minimum() {
    let upstream = Upstream::start(vec![(
        "gone.example.",
        RecordType::A,
        UpstreamAnswer::nxdomain(30),
    )])
    .await;
    let running = netd(vec![upstream.addr], Duration::from_secs(1)).await;
    for _ in 0..3 {
        let nx = udp(running.addrs.udp, "gone.example.", RecordType::A).await;
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
    }
    assert_eq!(upstream.queries(), (1, 0), "negative answer cached");
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn servfail_when_no_upstream_answers() {
    // One port refuses, one swallows queries (a black hole): both fail within the timeout.
    let refused = closed_port().await;
    let hole = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let timeout = Duration::from_millis(300);
    let running = netd(vec![refused, hole.local_addr().expect("addr")], timeout).await;

    let started = Instant::now();
    let failed = udp(running.addrs.udp, "www.example.", RecordType::A).await;
    assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout,
        "waited for the black hole ({elapsed:?})"
    );
    assert!(elapsed < Duration::from_secs(3), "bounded ({elapsed:?})");

    // Over TCP too (refused connect, then a port with no TCP listener).
    let failed = tcp(running.addrs.tcp, "www.example.", RecordType::A).await;
    assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn upstreams_are_tried_in_order() {
    let broken = Upstream::start(vec![(
        "www.example.",
        RecordType::A,
        UpstreamAnswer::code(ResponseCode::ServFail),
    )])
    .await;
    let good = Upstream::start(vec![(
        "www.example.",
        RecordType::A,
        UpstreamAnswer::a("www.example.", 60, &[WWW]),
    )])
    .await;
    let running = netd(
        vec![closed_port().await, broken.addr, good.addr],
        Duration::from_secs(1),
    )
    .await;
    let answer = udp(running.addrs.udp, "www.example.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&answer), vec![WWW]);
    assert_eq!(
        broken.queries(),
        (1, 0),
        "SERVFAIL upstream was asked, then skipped"
    );
    assert_eq!(good.queries(), (1, 0));
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn truncated_upstream_answers_are_retried_over_tcp() {
    let ips: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
    let mut big = UpstreamAnswer::a("big.example.", 60, &ips);
    big.truncate_udp = true;
    let upstream = Upstream::start(vec![("big.example.", RecordType::A, big)]).await;
    let running = netd(vec![upstream.addr], Duration::from_secs(1)).await;

    let answer = udp(running.addrs.udp, "big.example.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(!answer.metadata.truncation);
    assert_eq!(addresses(&answer), ips);
    assert_eq!(upstream.queries(), (1, 1), "UDP got TC, then TCP");
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn tcp_clients_are_forwarded_over_tcp() {
    let upstream = Upstream::start(vec![(
        "www.example.",
        RecordType::A,
        UpstreamAnswer::a("www.example.", 60, &[WWW]),
    )])
    .await;
    let running = netd(vec![upstream.addr], Duration::from_secs(1)).await;
    let answer = tcp(running.addrs.tcp, "www.example.", RecordType::A).await;
    assert_eq!(addresses(&answer), vec![WWW]);
    assert_eq!(upstream.queries(), (0, 1));
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn listeners_can_share_one_forwarder_and_cache() {
    let mut upstream = Upstream::start(vec![(
        "www.example.",
        RecordType::A,
        UpstreamAnswer::a("www.example.", 60, &[WWW]),
    )])
    .await;
    let mut forward = ForwardOptions::default();
    forward.timeout = Duration::from_millis(300);
    let forwarder = Arc::new(Forwarder::new(vec![upstream.addr], forward));
    let snapshot = SnapshotHandle::default();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let server = DnsServer::bind_with_forwarder(
            "127.0.0.1:0".parse().expect("addr"),
            None,
            snapshot.clone(),
            forwarder.clone(),
            ServerOptions::default(),
        )
        .await
        .expect("bind");
        servers.push(Running::spawn(server));
    }
    assert_eq!(
        addresses(&udp(servers[0].addrs.udp, "www.example.", RecordType::A).await),
        vec![WWW]
    );
    upstream.stop().await;
    assert_eq!(
        addresses(&udp(servers[1].addrs.udp, "www.example.", RecordType::A).await),
        vec![WWW],
        "the second listener answers from the shared cache"
    );
    assert_eq!(forwarder.cache_len(), 1);

    // New upstreams take effect without a restart.
    let replacement = Upstream::start(vec![(
        "new.example.",
        RecordType::A,
        UpstreamAnswer::a("new.example.", 60, &[WWW]),
    )])
    .await;
    forwarder.set_upstreams(vec![replacement.addr]);
    assert_eq!(
        addresses(&udp(servers[1].addrs.udp, "new.example.", RecordType::A).await),
        vec![WWW]
    );
    for running in servers {
        running.shutdown().await.expect("clean shutdown");
    }
}

#[tokio::test]
async fn netd_names_are_never_forwarded() {
    let upstream = Upstream::start(vec![]).await;
    let running = netd(vec![upstream.addr], Duration::from_secs(1)).await;
    let nx = udp(running.addrs.udp, "missing.netd.local.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(upstream.queries(), (0, 0));
    running.shutdown().await.expect("clean shutdown");
}
