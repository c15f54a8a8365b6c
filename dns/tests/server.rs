//! netd's own answers over real UDP and TCP sockets on loopback: every name form, negative
//! answers, snapshot swaps, protocol errors, garbage input, truncation and shutdown.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{addresses, exchange_tcp, exchange_udp, query_message, tcp, udp, Running};
use netd_dns::proto::op::{Edns, OpCode, Query, ResponseCode};
use netd_dns::proto::rr::{DNSClass, Name, RData, RecordType};
use netd_dns::{
    ContainerRecord, DnsServer, PortProtocol, ServerError, ServerOptions, ServicePort,
    ServiceRecord, SnapshotBuilder, SnapshotHandle, Transport,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn snapshot(web: &str) -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new();
    b.reverse_zone("10.88.0.0/16".parse().expect("net"));
    b.container(&ContainerRecord {
        names: vec!["web".into(), "www-alias".into()],
        addresses: vec![ip(web), ip("fd00:88::2")],
    })
    .expect("container");
    b.container(&ContainerRecord {
        names: vec!["db".into()],
        addresses: vec![ip("10.88.0.3")],
    })
    .expect("container");
    b.service(&ServiceRecord {
        name: "api".into(),
        namespace: "prod".into(),
        vips: vec![ip("10.96.0.10"), ip("fd00:96::10")],
        ports: vec![
            ServicePort {
                name: Some("http".into()),
                protocol: PortProtocol::Http,
                port: 8080,
            },
            ServicePort {
                name: None,
                protocol: PortProtocol::Grpc,
                port: 9090,
            },
        ],
    })
    .expect("service");
    b
}

async fn start() -> (Running, SnapshotHandle) {
    let handle = SnapshotHandle::new(snapshot("10.88.0.2").build());
    let running = Running::start(handle.clone(), vec![], ServerOptions::default()).await;
    (running, handle)
}

#[tokio::test]
async fn udp_and_tcp_share_one_port() {
    let (running, _) = start().await;
    assert_eq!(running.addrs.udp.port(), running.addrs.tcp.port());
    assert!(running.addrs.udp.ip().is_loopback());
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn container_and_service_names_over_udp_and_tcp() {
    let (running, _) = start().await;
    let (u, t) = (running.addrs.udp, running.addrs.tcp);
    for (qname, qtype, want) in [
        ("web.", RecordType::A, "10.88.0.2"),
        ("web.netd.local.", RecordType::A, "10.88.0.2"),
        ("WWW-Alias.NETD.local.", RecordType::AAAA, "fd00:88::2"),
        ("api.", RecordType::A, "10.96.0.10"),
        ("api.prod.", RecordType::AAAA, "fd00:96::10"),
        ("api.prod.svc.netd.local.", RecordType::A, "10.96.0.10"),
        ("API.Prod.Svc.Netd.Local.", RecordType::AAAA, "fd00:96::10"),
    ] {
        for (transport, response) in [
            ("udp", udp(u, qname, qtype).await),
            ("tcp", tcp(t, qname, qtype).await),
        ] {
            assert_eq!(
                response.metadata.response_code,
                ResponseCode::NoError,
                "{qname} {qtype} over {transport}"
            );
            assert!(response.metadata.authoritative, "{qname} over {transport}");
            assert!(response.metadata.recursion_available);
            assert_eq!(
                addresses(&response),
                vec![ip(want)],
                "{qname} over {transport}"
            );
            // The question is echoed as asked (case preserved, for 0x20 clients).
            assert_eq!(response.queries[0].name().to_ascii(), qname);
            assert!(response.edns.is_some(), "EDNS answered with EDNS");
        }
    }
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn srv_ptr_and_negative_answers() {
    let (running, _) = start().await;
    let server = running.addrs.udp;

    let srv = udp(
        server,
        "_http._tcp.api.prod.svc.netd.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(srv.metadata.response_code, ResponseCode::NoError);
    let RData::SRV(record) = &srv.answers[0].data else {
        panic!("expected SRV, got {:?}", srv.answers);
    };
    assert_eq!(record.port, 8080);
    assert_eq!(record.target.to_ascii(), "api.prod.svc.netd.local.");
    let glue = srv
        .additionals
        .iter()
        .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
        .count();
    assert_eq!(glue, 2, "VIPs in the additional section");
    let grpc = tcp(
        running.addrs.tcp,
        "_grpc._tcp.api.prod.svc.netd.local.",
        RecordType::SRV,
    )
    .await;
    assert!(matches!(&grpc.answers[0].data, RData::SRV(s) if s.port == 9090));

    let ptr = udp(server, "2.0.88.10.in-addr.arpa.", RecordType::PTR).await;
    assert!(matches!(&ptr.answers[0].data, RData::PTR(p) if p.0.to_ascii() == "web.netd.local."));
    let vip = Name::from(ip("fd00:96::10")).to_ascii();
    let ptr = tcp(running.addrs.tcp, &vip, RecordType::PTR).await;
    assert!(matches!(&ptr.answers[0].data,
        RData::PTR(p) if p.0.to_ascii() == "api.prod.svc.netd.local."));

    // Unknown name inside the domain: NXDOMAIN with the SOA for negative caching.
    let nx = udp(server, "nope.netd.local.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.metadata.authoritative);
    assert!(nx.answers.is_empty());
    assert_eq!(nx.authorities.len(), 1);
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
    // Unknown address in a configured network: NXDOMAIN too, not forwarded.
    let nx = udp(server, "200.0.88.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);

    // Known name, no record of that type: NODATA.
    let nodata = tcp(running.addrs.tcp, "db.netd.local.", RecordType::AAAA).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_new_snapshot_is_seen_by_the_next_query() {
    let (running, handle) = start().await;
    let server = running.addrs.udp;
    assert_eq!(
        addresses(&udp(server, "web.", RecordType::A).await),
        vec![ip("10.88.0.2")]
    );
    assert_eq!(
        udp(server, "new.netd.local.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );

    let mut next = snapshot("10.88.0.42");
    next.container(&ContainerRecord {
        names: vec!["new".into()],
        addresses: vec![ip("10.88.0.7")],
    })
    .expect("container");
    handle.store(next.build());

    assert_eq!(
        addresses(&udp(server, "web.", RecordType::A).await),
        vec![ip("10.88.0.42")]
    );
    assert_eq!(
        addresses(&tcp(running.addrs.tcp, "new.netd.local.", RecordType::A).await),
        vec![ip("10.88.0.7")]
    );

    // And away again.
    handle.store(SnapshotBuilder::new().build());
    assert_eq!(
        udp(server, "web.netd.local.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn protocol_errors_get_proper_codes() {
    let (running, _) = start().await;
    let server = running.addrs.udp;

    let mut notify = query_message("web.netd.local.", RecordType::SOA);
    notify.metadata.op_code = OpCode::Notify;
    assert_eq!(
        exchange_udp(server, &notify).await.metadata.response_code,
        ResponseCode::NotImp
    );

    let mut two = query_message("web.netd.local.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("db.netd.local.").expect("name"),
        RecordType::A,
    ));
    assert_eq!(
        exchange_udp(server, &two).await.metadata.response_code,
        ResponseCode::FormErr
    );

    let mut future_edns = query_message("web.netd.local.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_version(1);
    future_edns.set_edns(edns);
    // BADVERS and BADSIG share code 16; hickory decodes it as BADSIG.
    let badvers = exchange_udp(server, &future_edns).await;
    assert_eq!(
        u16::from(badvers.metadata.response_code),
        u16::from(ResponseCode::BADVERS)
    );
    assert!(badvers.edns.is_some(), "extended code carried in OPT");

    let mut chaos = query_message("web.netd.local.", RecordType::TXT);
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(
        exchange_tcp(running.addrs.tcp, &chaos)
            .await
            .metadata
            .response_code,
        ResponseCode::Refused
    );
    let axfr = tcp(running.addrs.tcp, "netd.local.", RecordType::AXFR).await;
    assert_eq!(axfr.metadata.response_code, ResponseCode::Refused);

    // No upstreams configured: a foreign name is SERVFAIL, fast.
    let foreign = udp(server, "example.com.", RecordType::A).await;
    assert_eq!(foreign.metadata.response_code, ResponseCode::ServFail);
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn garbage_does_not_stop_the_server() {
    let (running, _) = start().await;
    let server = running.addrs.udp;

    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut header_only = query_message("web.", RecordType::A)
        .to_vec()
        .expect("encode");
    header_only.truncate(12); // claims one question, carries none
    let mut cut_name = query_message("web.netd.local.", RecordType::A)
        .to_vec()
        .expect("encode");
    cut_name.truncate(18);
    let mut pointer_loop = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    pointer_loop.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    let packets: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff],
        vec![0; 11],
        vec![0xff; 512],
        (0..=255u8).cycle().take(1400).collect(),
        header_only,
        cut_name,
        pointer_loop,
    ];
    for packet in &packets {
        socket.send_to(packet, server).await.expect("send garbage");
    }
    // A response sent as a query is dropped (no reflection), not answered.
    let mut reflected = query_message("web.", RecordType::A);
    reflected.metadata.message_type = netd_dns::proto::op::MessageType::Response;
    socket
        .send_to(&reflected.to_vec().expect("encode"), server)
        .await
        .expect("send");

    // Garbage over TCP: a frame of junk, then a connection dropped mid-frame.
    let mut stream = TcpStream::connect(running.addrs.tcp)
        .await
        .expect("connect");
    stream
        .write_all(&[0, 4, 0xde, 0xad, 0xbe, 0xef])
        .await
        .expect("write");
    drop(stream);
    let mut stream = TcpStream::connect(running.addrs.tcp)
        .await
        .expect("connect");
    stream.write_all(&[0x02, 0x00, 0x01]).await.expect("write");
    drop(stream);

    for _ in 0..3 {
        assert_eq!(
            addresses(&udp(server, "web.", RecordType::A).await),
            vec![ip("10.88.0.2")]
        );
        assert_eq!(
            addresses(&tcp(running.addrs.tcp, "db.", RecordType::A).await),
            vec![ip("10.88.0.3")]
        );
    }
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_malformed_query_gets_formerr_and_a_response_gets_nothing() {
    let (running, _) = start().await;
    let server = running.addrs.udp;
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut buf = [0u8; 512];

    // A header that claims one question and carries none: FORMERR with the query's ID.
    let mut header_only = query_message("web.", RecordType::A);
    header_only.metadata.id = 0x4242;
    let mut bytes = header_only.to_vec().expect("encode");
    bytes.truncate(12);
    socket.send_to(&bytes, server).await.expect("send");
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("an answer to a malformed query")
        .expect("recv");
    let answer = netd_dns::proto::op::Message::from_vec(&buf[..len]).expect("decodable");
    assert_eq!(answer.metadata.id, 0x4242);
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(
        answer.metadata.message_type,
        netd_dns::proto::op::MessageType::Response
    );

    // A response sent to the server is never answered (no reflection); the query after it
    // is, and is the first thing this socket receives.
    let mut reflected = query_message("web.", RecordType::A);
    reflected.metadata.message_type = netd_dns::proto::op::MessageType::Response;
    reflected.metadata.id = 0x5151;
    socket
        .send_to(&reflected.to_vec().expect("encode"), server)
        .await
        .expect("send");
    let mut query = query_message("web.", RecordType::A);
    query.metadata.id = 0x6161;
    socket
        .send_to(&query.to_vec().expect("encode"), server)
        .await
        .expect("send");
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("an answer to the query")
        .expect("recv");
    let answer = netd_dns::proto::op::Message::from_vec(&buf[..len]).expect("decodable");
    assert_eq!(
        answer.metadata.id, 0x6161,
        "the reflected response was answered"
    );
    assert_eq!(addresses(&answer), vec![ip("10.88.0.2")]);
    running.shutdown().await.expect("clean shutdown");
}

/// A burst of queries (more than one `recvmmsg` batch) from several clients, some for names
/// netd answers and some it must forward, interleaved: every query gets its own answer.
#[tokio::test]
async fn a_burst_of_queries_gets_every_answer() {
    let (running, _) = start().await;
    let server = running.addrs.udp;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    }
    const PER_CLIENT: u16 = 100;
    for (c, socket) in clients.iter().enumerate() {
        for i in 0..PER_CLIENT {
            // Every 10th is a foreign name: SERVFAIL from the (upstream-less) forwarder.
            let name = match i % 10 {
                9 => "example.com.",
                n if n % 2 == 0 => "web.",
                _ => "db.",
            };
            let mut q = query_message(name, RecordType::A);
            q.metadata.id = (c as u16) * 1000 + i;
            socket
                .send_to(&q.to_vec().expect("encode"), server)
                .await
                .expect("send");
        }
    }
    let mut buf = [0u8; 512];
    for (c, socket) in clients.iter().enumerate() {
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < usize::from(PER_CLIENT) {
            let (len, _) =
                tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("client {c}: only {} answers", seen.len()))
                    .expect("recv");
            let m = netd_dns::proto::op::Message::from_vec(&buf[..len]).expect("decodable");
            let i = m.metadata.id - (c as u16) * 1000;
            let expected = match i % 10 {
                9 => (ResponseCode::ServFail, vec![]),
                n if n % 2 == 0 => (ResponseCode::NoError, vec![ip("10.88.0.2")]),
                _ => (ResponseCode::NoError, vec![ip("10.88.0.3")]),
            };
            assert_eq!(
                (m.metadata.response_code, addresses(&m)),
                expected,
                "id {i}"
            );
            assert!(seen.insert(i), "answer {i} twice");
        }
    }
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_complete_over_tcp() {
    let mut b = SnapshotBuilder::new();
    for i in 0..120u8 {
        b.container(&ContainerRecord {
            names: vec![format!("web-{i}"), "pool".into()],
            addresses: vec![IpAddr::from([10, 88, 1, i])],
        })
        .expect("container");
    }
    let handle = SnapshotHandle::new(b.build());
    let running = Running::start(handle, vec![], ServerOptions::default()).await;

    // Without EDNS the limit is 512 bytes.
    let mut plain = query_message("pool.netd.local.", RecordType::A);
    plain.edns = None;
    let truncated = exchange_udp(running.addrs.udp, &plain).await;
    assert!(truncated.metadata.truncation, "TC set");
    assert!(truncated.answers.len() < 120);
    let full = tcp(running.addrs.tcp, "pool.netd.local.", RecordType::A).await;
    assert!(!full.metadata.truncation);
    assert_eq!(full.answers.len(), 120);
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn hickory_client_resolves_over_udp_and_tcp() {
    use hickory_net::client::{Client, ClientHandle};
    use hickory_net::runtime::TokioRuntimeProvider;
    use hickory_net::tcp::TcpClientStream;
    use hickory_net::udp::UdpClientStream;

    let (running, _) = start().await;
    let provider = TokioRuntimeProvider::default();

    let stream = UdpClientStream::builder(running.addrs.udp, provider.clone()).build();
    let (mut client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
    let background = tokio::spawn(background);
    let response = tokio::time::timeout(
        common::WAIT,
        client.query(
            Name::from_ascii("api.prod.svc.netd.local.").expect("name"),
            DNSClass::IN,
            RecordType::A,
        ),
    )
    .await
    .expect("bounded")
    .expect("UDP answer");
    assert_eq!(addresses(&response), vec![ip("10.96.0.10")]);
    background.abort();

    let (connect, sender) =
        TcpClientStream::new(running.addrs.tcp, None, Some(common::WAIT), provider);
    let stream = tokio::time::timeout(common::WAIT, connect)
        .await
        .expect("bounded")
        .expect("TCP connect");
    let (mut client, background) = Client::<TokioRuntimeProvider>::new(stream, sender);
    let background = tokio::spawn(background);
    let response = tokio::time::timeout(
        common::WAIT,
        client.query(
            Name::from_ascii("web.netd.local.").expect("name"),
            DNSClass::IN,
            RecordType::AAAA,
        ),
    )
    .await
    .expect("bounded")
    .expect("TCP answer");
    assert_eq!(addresses(&response), vec![ip("fd00:88::2")]);
    background.abort();
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn listens_on_ipv6_loopback() {
    let Ok(probe) = UdpSocket::bind("[::1]:0").await else {
        eprintln!("skipping: no IPv6 loopback here");
        return;
    };
    drop(probe);
    let handle = SnapshotHandle::new(snapshot("10.88.0.2").build());
    let server = DnsServer::bind(
        "[::1]:0".parse().expect("addr"),
        None,
        handle,
        vec![],
        ServerOptions::default(),
    )
    .await
    .expect("bind ::1");
    let running = Running::spawn(server);
    assert!(running.addrs.udp.is_ipv6());
    assert_eq!(
        addresses(&udp(running.addrs.udp, "web.", RecordType::AAAA).await),
        vec![ip("fd00:88::2")]
    );
    assert_eq!(
        addresses(&tcp(running.addrs.tcp, "api.", RecordType::A).await),
        vec![ip("10.96.0.10")]
    );
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn separate_tcp_address_and_bind_errors() {
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let err = DnsServer::bind(
        "127.0.0.1:0".parse().expect("addr"),
        Some(taken_addr),
        SnapshotHandle::default(),
        vec![],
        ServerOptions::default(),
    )
    .await
    .expect_err("TCP port in use");
    match &err {
        ServerError::Bind {
            addr, transport, ..
        } => {
            assert_eq!(*addr, taken_addr);
            assert_eq!(*transport, Transport::Tcp);
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains(&taken_addr.to_string()), "{err}");

    let tcp_addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let server = DnsServer::bind(
        "127.0.0.1:0".parse().expect("addr"),
        Some(tcp_addr),
        SnapshotHandle::new(snapshot("10.88.0.2").build()),
        vec![],
        ServerOptions::default(),
    )
    .await
    .expect("bind");
    let running = Running::spawn(server);
    assert_eq!(
        addresses(&tcp(running.addrs.tcp, "web.", RecordType::A).await),
        vec![ip("10.88.0.2")]
    );
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let (running, _) = start().await;
    let addrs = running.addrs;
    assert_eq!(udp(addrs.udp, "web.", RecordType::A).await.answers.len(), 1);
    running.shutdown().await.expect("clean shutdown");
    // The TCP port is closed, and the UDP port can be bound again.
    let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addrs.tcp)).await;
    assert!(matches!(connect, Ok(Err(_))), "TCP refused after shutdown");
    UdpSocket::bind(addrs.udp).await.expect("UDP port released");
}
