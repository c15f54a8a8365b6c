//! Discovery DNS from the sidecar's snapshot (raw UDP queries built with hickory-proto), and
//! forwarding of other names to an upstream started here on loopback.

mod common;

use common::*;
use netd_dns::proto::op::{Message, Query, ResponseCode};
use netd_dns::proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

async fn query(server: std::net::SocketAddr, name: &str, rtype: RecordType) -> Message {
    let mut msg = Message::query();
    msg.metadata.id = 4242;
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&msg.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("DNS answer")
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

#[tokio::test]
async fn answers_services_srv_and_containers_and_forwards_the_rest() {
    // An upstream that answers every query with 192.0.2.7 (a documentation address; nothing
    // is ever sent to it).
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = upstream.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.metadata.recursion_available = true;
            for query in q.queries.iter() {
                r.add_query(query.clone());
                let record = netd_dns::proto::rr::Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::A("192.0.2.7".parse().unwrap()),
                );
                r.add_answer(record);
            }
            let _ = upstream.send_to(&r.to_vec().unwrap(), from).await;
        }
    });

    let mut data = web_snapshot("http", &[], "p2c");
    data.services[0].ports[0].name = Some("http".into());
    data.attachments = serde_json::from_value(serde_json::json!([
        {"container_id": "c1", "ifname": "eth0", "network": "netd", "ips": ["10.89.0.5"], "names": ["db"]}
    ]))
    .unwrap();
    let running = sidecar(data, |c| {
        c.dns = Some("127.0.0.1:0".parse().unwrap());
        c.upstream_dns = vec![upstream_addr];
    })
    .await;
    let dns = running.addrs.dns.unwrap().udp;

    let a = query(dns, "web.default.svc.netd.local.", RecordType::A).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    let ips: Vec<String> = a.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(ips, ["10.96.0.10"]);
    let short = query(dns, "web.", RecordType::A).await;
    assert_eq!(short.answers.len(), 1);

    let srv = query(
        dns,
        "_http._tcp.web.default.svc.netd.local.",
        RecordType::SRV,
    )
    .await;
    let port = srv.answers.iter().find_map(|r| match &r.data {
        RData::SRV(s) => Some(s.port),
        _ => None,
    });
    assert_eq!(port, Some(80));

    let db = query(dns, "db.netd.local.", RecordType::A).await;
    assert_eq!(db.answers[0].data.to_string(), "10.89.0.5");

    let missing = query(dns, "nope.default.svc.netd.local.", RecordType::A).await;
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);

    let forwarded = query(dns, "example.org.", RecordType::A).await;
    assert_eq!(forwarded.answers[0].data.to_string(), "192.0.2.7");

    // A new snapshot is answered at once.
    let mut next = service_snapshot("api", "10.96.0.11", 8080, "grpc", &[], "p2c");
    next.revision = 2;
    running.store.publish(next);
    let mut api = query(dns, "api.default.svc.netd.local.", RecordType::A).await;
    for _ in 0..100 {
        if !api.answers.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        api = query(dns, "api.default.svc.netd.local.", RecordType::A).await;
    }
    assert_eq!(api.answers[0].data.to_string(), "10.96.0.11");
    running.shutdown().await;
}
