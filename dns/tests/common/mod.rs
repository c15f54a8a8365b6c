//! Test harness: a raw DNS client over UDP/TCP, a tiny upstream DNS server on loopback, and a
//! helper that starts netd's server. Everything binds 127.0.0.1 (or ::1) port 0 and every wait
//! is bounded; nothing here talks to the machine's resolvers.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use netd_dns::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use netd_dns::proto::rr::rdata::{A, SOA};
use netd_dns::proto::rr::{LowerName, Name, RData, Record, RecordType};
use netd_dns::{DnsServer, ListenAddrs, ServerOptions, SnapshotHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Bound on every wait in the tests.
pub const WAIT: Duration = Duration::from_secs(5);

pub fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("test name")
}

/// A query message as a stub resolver sends it (random ID, RD, EDNS 1232).
pub fn query_message(qname: &str, qtype: RecordType) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name(qname), qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    message.set_edns(edns);
    message
}

/// Sends `message` over UDP to `server` and returns the matching response.
pub async fn exchange_udp(server: SocketAddr, message: &Message) -> Message {
    let bind: SocketAddr = if server.is_ipv4() {
        "127.0.0.1:0".parse().expect("addr")
    } else {
        "[::1]:0".parse().expect("addr")
    };
    let socket = UdpSocket::bind(bind).await.expect("bind client");
    socket.connect(server).await.expect("connect");
    socket
        .send(&message.to_vec().expect("encode"))
        .await
        .expect("send");
    let mut buf = vec![0u8; 65_535];
    tokio::time::timeout(WAIT, async {
        loop {
            let len = socket.recv(&mut buf).await.expect("recv");
            let response = Message::from_vec(&buf[..len]).expect("decode response");
            if response.metadata.id == message.metadata.id {
                return response;
            }
        }
    })
    .await
    .expect("UDP answer within the bound")
}

/// Sends `message` over a new TCP connection to `server` and returns the response.
pub async fn exchange_tcp(server: SocketAddr, message: &Message) -> Message {
    tokio::time::timeout(WAIT, async {
        let mut stream = TcpStream::connect(server).await.expect("connect");
        let bytes = message.to_vec().expect("encode");
        let len = u16::try_from(bytes.len()).expect("short message");
        stream.write_all(&len.to_be_bytes()).await.expect("write");
        stream.write_all(&bytes).await.expect("write");
        let len = stream.read_u16().await.expect("read length");
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.expect("read");
        let response = Message::from_vec(&buf).expect("decode response");
        assert_eq!(response.metadata.id, message.metadata.id);
        response
    })
    .await
    .expect("TCP answer within the bound")
}

pub async fn udp(server: SocketAddr, qname: &str, qtype: RecordType) -> Message {
    exchange_udp(server, &query_message(qname, qtype)).await
}

pub async fn tcp(server: SocketAddr, qname: &str, qtype: RecordType) -> Message {
    exchange_tcp(server, &query_message(qname, qtype)).await
}

/// The IPv4/IPv6 addresses in the answer section.
pub fn addresses(message: &Message) -> Vec<std::net::IpAddr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// A running netd DNS server and the means to stop it.
pub struct Running {
    pub addrs: ListenAddrs,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), netd_dns::ServerError>>>,
}

impl Running {
    pub async fn start(
        snapshot: SnapshotHandle,
        upstreams: Vec<SocketAddr>,
        options: ServerOptions,
    ) -> Self {
        let server = DnsServer::bind(
            "127.0.0.1:0".parse().expect("addr"),
            None,
            snapshot,
            upstreams,
            options,
        )
        .await
        .expect("bind netd DNS");
        Self::spawn(server)
    }

    pub fn spawn(server: DnsServer) -> Self {
        let addrs = server.local_addrs();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Self {
            addrs,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Signals shutdown and waits (bounded) for `serve` to return.
    pub async fn shutdown(mut self) -> Result<(), netd_dns::ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(WAIT, task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve task")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What the test upstream answers for one name/type.
#[derive(Debug, Clone)]
pub struct UpstreamAnswer {
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    /// Over UDP, answer with TC set and no records (the full answer only over TCP).
    pub truncate_udp: bool,
}

impl UpstreamAnswer {
    pub fn a(owner: &str, ttl: u32, ips: &[Ipv4Addr]) -> Self {
        Self {
            code: ResponseCode::NoError,
            answers: ips
                .iter()
                .map(|ip| Record::from_rdata(name(owner), ttl, RData::A(A(*ip))))
                .collect(),
            authorities: vec![],
            truncate_udp: false,
        }
    }

    pub fn nxdomain(soa_minimum: u32) -> Self {
        let soa = SOA::new(
            name("ns.example."),
            name("hostmaster.example."),
            1,
            3600,
            600,
            86400,
            soa_minimum,
        );
        Self {
            code: ResponseCode::NXDomain,
            answers: vec![],
            authorities: vec![Record::from_rdata(name("example."), 3600, RData::SOA(soa))],
            truncate_udp: false,
        }
    }

    pub fn code(code: ResponseCode) -> Self {
        Self {
            code,
            answers: vec![],
            authorities: vec![],
            truncate_udp: false,
        }
    }
}

/// A minimal authoritative upstream on loopback, written with hickory-proto messages over
/// tokio sockets; counts the queries it gets per transport. Unknown names are REFUSED.
pub struct Upstream {
    pub addr: SocketAddr,
    pub udp_queries: Arc<AtomicUsize>,
    pub tcp_queries: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

type Zone = Arc<HashMap<(LowerName, RecordType), UpstreamAnswer>>;

impl Upstream {
    pub async fn start(entries: Vec<(&str, RecordType, UpstreamAnswer)>) -> Self {
        let zone: Zone = Arc::new(
            entries
                .into_iter()
                .map(|(n, t, a)| ((LowerName::new(&name(n)), t), a))
                .collect(),
        );
        let (socket, listener) = bind_same_port().await;
        let addr = socket.local_addr().expect("local addr");
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let udp_task = tokio::spawn(serve_udp(socket, zone.clone(), udp_queries.clone()));
        let tcp_task = tokio::spawn(serve_tcp(listener, zone, tcp_queries.clone()));
        Self {
            addr,
            udp_queries,
            tcp_queries,
            tasks: vec![udp_task, tcp_task],
        }
    }

    pub fn queries(&self) -> (usize, usize) {
        (
            self.udp_queries.load(Ordering::SeqCst),
            self.tcp_queries.load(Ordering::SeqCst),
        )
    }

    /// Stops answering: closes both sockets (so the port now refuses).
    pub async fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn bind_same_port() -> (UdpSocket, TcpListener) {
    for _ in 0..16 {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = socket.local_addr().expect("addr");
        if let Ok(listener) = TcpListener::bind(addr).await {
            return (socket, listener);
        }
    }
    panic!("no port free for both UDP and TCP");
}

fn respond(zone: &Zone, request: &Message, over_udp: bool) -> Message {
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_queries(request.queries.iter().cloned());
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    let key = (LowerName::new(query.name()), query.query_type());
    match zone.get(&key) {
        Some(answer) if answer.truncate_udp && over_udp => {
            response.metadata.truncation = true;
        }
        Some(answer) => {
            response.metadata.response_code = answer.code;
            response.answers = answer.answers.clone();
            response.authorities = answer.authorities.clone();
        }
        None => response.metadata.response_code = ResponseCode::Refused,
    }
    response
}

async fn serve_udp(socket: UdpSocket, zone: Zone, count: Arc<AtomicUsize>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        if request.metadata.message_type != MessageType::Query {
            continue;
        }
        count.fetch_add(1, Ordering::SeqCst);
        let response = respond(&zone, &request, true);
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Zone, count: Arc<AtomicUsize>) {
    // Connection tasks live in this set: aborting the accept task drops (aborts) them too.
    let mut connections = JoinSet::new();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let zone = zone.clone();
        let count = count.clone();
        connections.spawn(async move {
            loop {
                let Ok(len) = stream.read_u16().await else {
                    return;
                };
                let mut buf = vec![0u8; usize::from(len)];
                if stream.read_exact(&mut buf).await.is_err() {
                    return;
                }
                let Ok(request) = Message::from_vec(&buf) else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let Ok(bytes) = respond(&zone, &request, false).to_vec() else {
                    return;
                };
                let Ok(len) = u16::try_from(bytes.len()) else {
                    return;
                };
                if stream.write_all(&len.to_be_bytes()).await.is_err()
                    || stream.write_all(&bytes).await.is_err()
                {
                    return;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
}
