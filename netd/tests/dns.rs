//! DNS end to end: a real `netd up` answering on loopback, queried with raw hickory-proto
//! messages over std UDP/TCP sockets, forwarding to a tiny upstream the test runs on loopback.
//! No traffic leaves 127.0.0.1; every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::{eventually, Daemon};
use netd_config::netd::{AttachmentSpec, NetworkSpec, Protocol, ServicePort, ServiceSpec};
use netd_dns::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use netd_dns::proto::rr::rdata::A;
use netd_dns::proto::rr::{Name, RData, Record, RecordType};

/// Bound on every socket wait.
const WAIT: Duration = Duration::from_secs(5);
/// What the test upstream answers for every A question.
const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

/// A UDP-only upstream on 127.0.0.1 that answers every A query with [`UPSTREAM_ANSWER`].
struct Upstream {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind upstream");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, s) = (queries.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(request) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::Relaxed);
                let mut response = Message::response(request.metadata.id, OpCode::Query);
                response.metadata.recursion_desired = request.metadata.recursion_desired;
                response.metadata.recursion_available = true;
                for query in &request.queries {
                    response.add_query(query.clone());
                    if query.query_type() == RecordType::A {
                        response.answers.push(Record::from_rdata(
                            query.name().clone(),
                            60,
                            RData::A(A(UPSTREAM_ANSWER)),
                        ));
                    }
                }
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, from);
                }
            }
        });
        Self {
            addr,
            queries,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn query(qname: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(qname).expect("name"), qtype));
    m
}

fn udp(server: SocketAddr, qname: &str, qtype: RecordType) -> Message {
    let request = query(qname, qtype);
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");
    socket.connect(server).expect("connect");
    socket
        .send(&request.to_vec().expect("encode"))
        .expect("send");
    let mut buf = [0u8; 4096];
    loop {
        let len = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no UDP answer for {qname} {qtype} within {WAIT:?}: {e}"));
        let response = Message::from_vec(&buf[..len]).expect("decode");
        if response.metadata.id == request.metadata.id {
            assert_eq!(response.metadata.message_type, MessageType::Response);
            return response;
        }
    }
}

fn tcp(server: SocketAddr, qname: &str, qtype: RecordType) -> Message {
    let request = query(qname, qtype);
    let mut stream = TcpStream::connect_timeout(&server, WAIT).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let bytes = request.to_vec().expect("encode");
    let len = u16::try_from(bytes.len()).expect("short");
    stream.write_all(&len.to_be_bytes()).expect("write");
    stream.write_all(&bytes).expect("write");
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).expect("TCP answer length");
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).expect("TCP answer");
    let response = Message::from_vec(&buf).expect("decode");
    assert_eq!(response.metadata.id, request.metadata.id);
    response
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers.iter().filter_map(|r| r.data.ip_addr()).collect()
}

/// Starts netd with a loopback DNS listener (port picked by the kernel) and the test upstream;
/// returns the daemon and the listener's address as reported by `netd status`.
async fn start(tag: &str, upstream: &Upstream) -> (Daemon, SocketAddr) {
    let upstream = upstream.addr.to_string();
    let d = Daemon::start_with(
        tag,
        &[
            "--no-network-dns",
            "--dns-listen",
            "127.0.0.1:0",
            "--dns-upstream",
            &upstream,
        ],
    );
    let c = d.client();
    let deadline = std::time::Instant::now() + WAIT;
    let listener = loop {
        let status = c.status().await.expect("status");
        if let Some(addr) = status.dns.listeners.first().and_then(|s| s.parse().ok()) {
            break addr;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no DNS listener reported; log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (d, listener)
}

#[tokio::test]
async fn answers_services_containers_and_forwards_the_rest() {
    let upstream = Upstream::start();
    let (d, dns) = start("dns", &upstream).await;
    let c = d.client();

    // Status shows the listener and the upstream.
    let status = c.status().await.unwrap();
    assert_eq!(status.dns.upstreams, [upstream.addr.to_string()]);
    let text = common::ok(&d.cli(&["status"]));
    assert!(text.contains(&format!("dns:          {dns}")), "{text}");

    let svc = c
        .put_service(&ServiceSpec {
            name: "svc".into(),
            namespace: "default".into(),
            ports: vec![ServicePort {
                name: Some("web".into()),
                port: 8080,
                protocol: Protocol::Http,
                host_port: None,
            }],
            health_check: None,
        })
        .await
        .unwrap();
    let vip = svc.vip;

    // The name appears within a bounded wait (rebuilds are coalesced, ~50 ms).
    let seen = eventually(WAIT, || async {
        addresses(&udp(dns, "svc.default.svc.netd.local.", RecordType::A)) == [vip]
    })
    .await;
    assert!(seen, "service name never resolved; log:\n{}", d.log());
    for name in [
        "svc.",
        "svc.default.",
        "svc.netd.local.",
        "svc.default.svc.netd.local.",
    ] {
        let over_udp = udp(dns, name, RecordType::A);
        assert_eq!(
            over_udp.metadata.response_code,
            ResponseCode::NoError,
            "{name}"
        );
        assert!(over_udp.metadata.authoritative, "{name}");
        assert_eq!(addresses(&over_udp), [vip], "{name} over UDP");
        assert_eq!(
            addresses(&tcp(dns, name, RecordType::A)),
            [vip],
            "{name} over TCP"
        );
    }

    // SRV: the named port, over UDP and TCP.
    for m in [
        udp(
            dns,
            "_web._tcp.svc.default.svc.netd.local.",
            RecordType::SRV,
        ),
        tcp(
            dns,
            "_web._tcp.svc.default.svc.netd.local.",
            RecordType::SRV,
        ),
    ] {
        let ports: Vec<u16> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(srv.port),
                _ => None,
            })
            .collect();
        assert_eq!(ports, [8080], "{m:?}");
    }

    // A container attachment with names resolves, and its address has a PTR.
    c.attach(&AttachmentSpec {
        container_id: "d15c0ffee0000001".into(),
        ifname: "eth0".into(),
        network: "netd".into(),
        netns: format!("/proc/{}/ns/net", std::process::id()),
        ips: vec!["10.89.0.42/24".into()],
        names: vec!["shop".into(), "shop-alias".into()],
        service: None,
    })
    .await
    .unwrap();
    let container: IpAddr = "10.89.0.42".parse().unwrap();
    let seen = eventually(WAIT, || async {
        addresses(&udp(dns, "shop.", RecordType::A)) == [container]
    })
    .await;
    assert!(seen, "container name never resolved; log:\n{}", d.log());
    assert_eq!(
        addresses(&tcp(dns, "shop-alias.netd.local.", RecordType::A)),
        [container]
    );
    let ptr = udp(dns, "42.0.89.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(ptr.metadata.response_code, ResponseCode::NoError);
    let targets: Vec<String> = ptr.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(targets, ["shop.netd.local."], "{ptr:?}");
    // An unknown address inside a netd subnet is ours: NXDOMAIN, not forwarded.
    let before = upstream.queries.load(Ordering::Relaxed);
    let miss = udp(dns, "99.0.89.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(miss.metadata.response_code, ResponseCode::NXDomain);

    // Unknown names in netd.local: NXDOMAIN, never forwarded.
    for m in [
        udp(dns, "nope.netd.local.", RecordType::A),
        tcp(dns, "nope.default.svc.netd.local.", RecordType::A),
    ] {
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{m:?}");
        assert!(m.metadata.authoritative);
    }
    assert_eq!(upstream.queries.load(Ordering::Relaxed), before);

    // Other names come from the upstream.
    let outside = udp(dns, "www.example.org.", RecordType::A);
    assert_eq!(outside.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&outside), [IpAddr::V4(UPSTREAM_ANSWER)]);
    assert!(upstream.queries.load(Ordering::Relaxed) > before);

    // Deleting the service removes its names within a bounded wait.
    c.delete_service("default", "svc").await.unwrap();
    let gone = eventually(WAIT, || async {
        udp(dns, "svc.default.svc.netd.local.", RecordType::A)
            .metadata
            .response_code
            == ResponseCode::NXDomain
    })
    .await;
    assert!(gone, "deleted service still resolves; log:\n{}", d.log());
    c.detach("d15c0ffee0000001", "eth0").await.unwrap();
}

#[tokio::test]
async fn conflists_point_containers_at_the_gateway_dns() {
    let upstream = Upstream::start();
    let (d, _) = start("dnsconf", &upstream).await;
    d.client()
        .create_network(&NetworkSpec {
            name: "blue".into(),
            subnets: vec!["10.77.3.0/24".into(), "fd00:77:3::/64".into()],
            mesh: false,
            isolate: false,
            bridge: None,
        })
        .await
        .unwrap();
    for (name, servers) in [
        ("netd", ["10.89.0.1", "fd00:89::1"]),
        ("blue", ["10.77.3.1", "fd00:77:3::1"]),
    ] {
        let path = d.cni_dir.join(format!("{name}.conflist"));
        let text = std::fs::read_to_string(&path).expect("conflist");
        let conf: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            conf["plugins"][0]["dns"],
            serde_json::json!({ "nameservers": servers, "search": ["netd.local"] }),
            "{name}: {text}"
        );
    }
}

#[test]
fn bad_upstream_is_a_usage_error() {
    let out = common::cli(
        std::path::Path::new("/nonexistent/netd.sock"),
        &["up", "--dns-upstream", "not-an-address"],
    );
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("is not an address"),
        "{}",
        common::stderr(&out)
    );
}
