//! The DNS server: a hickory-server [`RequestHandler`] over the current
//! [`Snapshot`](crate::Snapshot) and a [`Forwarder`], and the UDP/TCP listeners that feed it.
//!
//! Per query the handler loads the snapshot (lock-free), asks [`answer`](mod@crate::answer) and
//! either writes the precomputed records straight into the response (authoritative) or awaits
//! the forwarder (answers SERVFAIL when it fails).
//!
//! TCP is hickory-server's listener. UDP is this module's own loop over hickory's request
//! parsing and response encoding: hickory-server's UDP listener zeroes a 4 KiB buffer, spawns a
//! task and sends through a channel for every datagram, while most queries here are answered
//! from memory at once: under callgrind, 18.6k instructions per query through hickory's
//! listener, 7.4k through this one (1000 names, 10% unknown). The loop drains the
//! socket whenever it is readable, up to 32 datagrams per `recvmmsg`, answers netd's names
//! inline from reused buffers, sends a batch's answers with one `sendmmsg` (under load the
//! system calls cost more than the answers), and hands other names to a task that awaits the
//! forwarder. Malformed packets get FORMERR when a header can be read and are dropped
//! otherwise; a response is never answered (no reflection), so a garbage datagram never stops
//! the listener.
//!
//! This module owns sockets and lifecycle only; it does not decide answers and does not know
//! where snapshots or upstreams come from.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::runtime::{Time, TokioTime};
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::io::Interest;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;

use crate::answer::{answer, Answer};
use crate::batch::{RecvBatch, SendBatch, BATCH};
use crate::forward::{ForwardOptions, Forwarder, Transport};
use crate::snapshot::{Snapshot, SnapshotHandle};

const NO_RECORDS: &[Record] = &[];

/// Largest datagram read: a query is far smaller, and anything longer than this is truncated
/// by the kernel and then fails to parse (FORMERR), as with hickory's own 4096-byte buffer.
const MAX_DATAGRAM: usize = 4096;

/// How often binding TCP on the port the kernel picked for UDP is retried when that port is
/// taken for TCP (only when both are asked on port 0).
const SAME_PORT_ATTEMPTS: usize = 16;

/// Server tuning. `Default` gives the values documented on each field.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerOptions {
    /// A TCP connection that sends no query for this long is closed. Default 10 s.
    pub tcp_idle_timeout: Duration,
    /// Responses queued per TCP connection before the writer waits. Default 32.
    pub tcp_response_buffer: usize,
    /// Largest UDP response sent, whatever larger size a client's EDNS offers; longer answers
    /// are truncated (TC) and the client retries over TCP. Default 1232.
    pub max_udp_payload: u16,
    /// How long [`DnsServer::serve`] waits for in-flight work after the shutdown signal.
    /// Default 5 s.
    pub shutdown_timeout: Duration,
    /// Forwarder tuning (used by [`DnsServer::bind`], which builds the forwarder).
    pub forward: ForwardOptions,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_response_buffer: 32,
            max_udp_payload: 1232,
            shutdown_timeout: Duration::from_secs(5),
            forward: ForwardOptions::default(),
        }
    }
}

/// The addresses a [`DnsServer`] listens on (ports resolved when bound to port 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenAddrs {
    /// UDP socket address.
    pub udp: SocketAddr,
    /// TCP listener address.
    pub tcp: SocketAddr,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound (address in use, not local, permission for port 53...).
    #[error("cannot listen for DNS over {transport} on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// UDP or TCP.
        transport: Transport,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// A listener task ended on its own (socket closed or failed).
    #[error("DNS listener stopped unexpectedly: {0}")]
    Stopped(#[source] NetError),
    /// In-flight work did not finish within [`ServerOptions::shutdown_timeout`].
    #[error("DNS server did not stop within {0:?}")]
    ShutdownTimeout(Duration),
}

/// A bound DNS server; [`DnsServer::serve`] runs it.
pub struct DnsServer {
    server: Server<Handler>,
    udp: Arc<UdpSocket>,
    handler: Handler,
    addrs: ListenAddrs,
    forwarder: Arc<Forwarder>,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addrs", &self.addrs)
            .field("forwarder", &self.forwarder)
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Binds UDP on `udp` and TCP on `tcp` (`None`: the same address and port as UDP, also
    /// when UDP asked for port 0), answering from `snapshot` and forwarding everything else to
    /// `upstreams` in order, with a cache of its own.
    pub async fn bind(
        udp: SocketAddr,
        tcp: Option<SocketAddr>,
        snapshot: SnapshotHandle,
        upstreams: Vec<SocketAddr>,
        options: ServerOptions,
    ) -> Result<Self, ServerError> {
        let forwarder = Arc::new(Forwarder::new(upstreams, options.forward.clone()));
        Self::bind_with_forwarder(udp, tcp, snapshot, forwarder, options).await
    }

    /// Like [`DnsServer::bind`] with a given forwarder, so several servers (one per network
    /// gateway) share one upstream list and cache. `options.forward` is not used.
    pub async fn bind_with_forwarder(
        udp: SocketAddr,
        tcp: Option<SocketAddr>,
        snapshot: SnapshotHandle,
        forwarder: Arc<Forwarder>,
        options: ServerOptions,
    ) -> Result<Self, ServerError> {
        let (udp_socket, tcp_listener) = bind_sockets(udp, tcp).await?;
        let addrs = ListenAddrs {
            udp: local_addr(&udp_socket, udp, Transport::Udp)?,
            tcp: local_addr(&tcp_listener, tcp.unwrap_or(udp), Transport::Tcp)?,
        };
        Ok(Self::assemble(
            udp_socket,
            tcp_listener,
            addrs,
            snapshot,
            forwarder,
            options,
        ))
    }

    /// Like [`DnsServer::bind_with_forwarder`] over sockets the caller already bound (and
    /// listened on, for TCP), e.g. with `IP_FREEBIND` for an address that is not up yet. The
    /// sockets are switched to non-blocking mode; must be called inside a tokio runtime.
    pub fn from_sockets(
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
        snapshot: SnapshotHandle,
        forwarder: Arc<Forwarder>,
        options: ServerOptions,
    ) -> Result<Self, ServerError> {
        let udp_addr = udp.local_addr().map_err(|source| ServerError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            transport: Transport::Udp,
            source,
        })?;
        let tcp_addr = tcp.local_addr().map_err(|source| ServerError::Bind {
            addr: udp_addr,
            transport: Transport::Tcp,
            source,
        })?;
        let adopt_err = |addr, transport| {
            move |source| ServerError::Bind {
                addr,
                transport,
                source,
            }
        };
        udp.set_nonblocking(true)
            .map_err(adopt_err(udp_addr, Transport::Udp))?;
        tcp.set_nonblocking(true)
            .map_err(adopt_err(tcp_addr, Transport::Tcp))?;
        let udp_socket = UdpSocket::from_std(udp).map_err(adopt_err(udp_addr, Transport::Udp))?;
        let tcp_listener =
            TcpListener::from_std(tcp).map_err(adopt_err(tcp_addr, Transport::Tcp))?;
        let addrs = ListenAddrs {
            udp: udp_addr,
            tcp: tcp_addr,
        };
        Ok(Self::assemble(
            udp_socket,
            tcp_listener,
            addrs,
            snapshot,
            forwarder,
            options,
        ))
    }

    fn assemble(
        udp_socket: UdpSocket,
        tcp_listener: TcpListener,
        addrs: ListenAddrs,
        snapshot: SnapshotHandle,
        forwarder: Arc<Forwarder>,
        options: ServerOptions,
    ) -> Self {
        let handler = Handler {
            snapshot,
            forwarder: forwarder.clone(),
            max_udp_payload: options.max_udp_payload.max(512),
        };
        let mut server = Server::new(handler.clone());
        server.register_listener(
            tcp_listener,
            options.tcp_idle_timeout,
            options.tcp_response_buffer.max(1),
        );
        Self {
            server,
            udp: Arc::new(udp_socket),
            handler,
            addrs,
            forwarder,
            shutdown_timeout: options.shutdown_timeout,
        }
    }

    /// Where the server listens.
    pub fn local_addrs(&self) -> ListenAddrs {
        self.addrs
    }

    /// The forwarder (to replace upstreams or inspect the cache while serving).
    pub fn forwarder(&self) -> &Arc<Forwarder> {
        &self.forwarder
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight queries finish
    /// (bounded by [`ServerOptions::shutdown_timeout`]) and returns. Returns early with an
    /// error if a listener dies.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let mut server = self.server;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let udp = serve_udp(self.udp, self.handler, stopped);
        tokio::pin!(udp);
        let ended = tokio::select! {
            result = server.block_until_done() => Some(result.map_err(ServerError::Stopped)),
            result = &mut udp => Some(match result {
                Ok(()) => Err(ServerError::Stopped(NetError::from("the UDP listener stopped"))),
                Err(e) => Err(ServerError::Stopped(NetError::from(e))),
            }),
            () = shutdown => None,
        };
        if let Some(ended) = ended {
            return ended;
        }
        let _ = stop.send(true);
        let drain = async {
            let (tcp, udp) = tokio::join!(server.shutdown_gracefully(), &mut udp);
            tcp.map_err(ServerError::Stopped)?;
            udp.map_err(|e| ServerError::Stopped(NetError::from(e)))
        };
        match tokio::time::timeout(self.shutdown_timeout, drain).await {
            Ok(result) => result,
            Err(_) => Err(ServerError::ShutdownTimeout(self.shutdown_timeout)),
        }
    }
}

async fn bind_sockets(
    udp: SocketAddr,
    tcp: Option<SocketAddr>,
) -> Result<(UdpSocket, TcpListener), ServerError> {
    let bind_udp = |addr: SocketAddr| async move {
        UdpSocket::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr,
                transport: Transport::Udp,
                source,
            })
    };
    let bind_tcp = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr,
                transport: Transport::Tcp,
                source,
            })
    };
    if let Some(tcp) = tcp {
        return Ok((bind_udp(udp).await?, bind_tcp(tcp).await?));
    }
    // TCP on the same address and port as UDP; with port 0, retry if the kernel's UDP pick
    // is taken for TCP.
    let attempts = if udp.port() == 0 {
        SAME_PORT_ATTEMPTS
    } else {
        1
    };
    let mut last = None;
    for _ in 0..attempts {
        let socket = bind_udp(udp).await?;
        let port = local_addr(&socket, udp, Transport::Udp)?.port();
        match bind_tcp(SocketAddr::new(udp.ip(), port)).await {
            Ok(listener) => return Ok((socket, listener)),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or(ServerError::Bind {
        addr: udp,
        transport: Transport::Tcp,
        source: io::ErrorKind::AddrInUse.into(),
    }))
}

/// Sockets whose bound address can be asked.
trait LocalAddr {
    fn local(&self) -> io::Result<SocketAddr>;
}

impl LocalAddr for UdpSocket {
    fn local(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
}

impl LocalAddr for TcpListener {
    fn local(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
}

fn local_addr(
    socket: &impl LocalAddr,
    asked: SocketAddr,
    transport: Transport,
) -> Result<SocketAddr, ServerError> {
    socket.local().map_err(|source| ServerError::Bind {
        addr: asked,
        transport,
        source,
    })
}

/// Answers one request: snapshot first, forwarder for the rest.
#[derive(Clone)]
struct Handler {
    snapshot: SnapshotHandle,
    forwarder: Arc<Forwarder>,
    max_udp_payload: u16,
}

/// What to do with a request, decided from the snapshot alone.
enum Decision<'s> {
    /// Send this response (an authoritative answer, or an error with no records).
    Respond {
        metadata: Metadata,
        answers: &'s [Record],
        soa: Option<&'s Record>,
        additionals: &'s [Record],
    },
    /// Not netd's name: the forwarder answers, under this response metadata.
    Forward(Metadata),
}

impl Decision<'_> {
    fn empty(metadata: Metadata) -> Self {
        Decision::Respond {
            metadata,
            answers: NO_RECORDS,
            soa: None,
            additionals: NO_RECORDS,
        }
    }
}

impl Handler {
    /// The EDNS of the response: RFC 6891 answers EDNS with EDNS, and our payload limit
    /// bounds UDP responses.
    fn response_edns(&self, request: &Request) -> Option<Edns> {
        request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().clamp(512, self.max_udp_payload));
            edns
        })
    }

    /// Everything but forwarding: malformed or unsupported requests and netd's own names.
    fn decide<'s>(&self, request: &Request, snapshot: &'s Snapshot) -> Decision<'s> {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        if request
            .edns
            .as_ref()
            .is_some_and(|asked| asked.version() > 0)
        {
            metadata.response_code = ResponseCode::BADVERS;
            return Decision::empty(metadata);
        }
        if request.metadata.op_code != OpCode::Query {
            metadata.response_code = ResponseCode::NotImp;
            return Decision::empty(metadata);
        }
        let Ok(info) = request.request_info() else {
            // Not exactly one question.
            metadata.response_code = ResponseCode::FormErr;
            return Decision::empty(metadata);
        };
        let query = info.query;
        metadata.authoritative = true;
        let (answers, soa, additionals) = match answer(
            snapshot,
            query.name(),
            query.query_type(),
            query.query_class(),
        ) {
            Answer::Records {
                answers,
                additionals,
            } => (answers, None, additionals),
            Answer::NoData { soa } => (NO_RECORDS, soa, NO_RECORDS),
            Answer::NxDomain { soa } => {
                metadata.response_code = ResponseCode::NXDomain;
                (NO_RECORDS, Some(soa), NO_RECORDS)
            }
            Answer::Refused => {
                metadata.authoritative = false;
                metadata.response_code = ResponseCode::Refused;
                return Decision::empty(metadata);
            }
            Answer::Forward => {
                metadata.authoritative = false;
                return Decision::Forward(metadata);
            }
        };
        Decision::Respond {
            metadata,
            answers,
            soa,
            additionals,
        }
    }

    /// The UDP fast path: answers a datagram from the snapshot into `out`, encoded. Returns
    /// the parsed request when only the forwarder can answer it, and `Ok(None)` when there is
    /// nothing to send (a response, or fewer than 12 bytes).
    fn answer_datagram(
        &self,
        raw: &[u8],
        src: SocketAddr,
        out: &mut Vec<u8>,
    ) -> Result<Option<Request>, ()> {
        out.clear();
        let request = match Request::from_bytes(raw.to_vec(), src, Protocol::Udp) {
            Ok(request) => request,
            Err(_) => {
                // A readable header gets FORMERR, as hickory's own listeners answer.
                let Ok(header) = Header::read(&mut BinDecoder::new(raw)) else {
                    return Err(());
                };
                if header.metadata.message_type != MessageType::Query {
                    return Err(());
                }
                let mut metadata = Metadata::response_from_request(&header.metadata);
                metadata.response_code = ResponseCode::FormErr;
                encode_header(metadata, out);
                return Ok(None);
            }
        };
        if request.metadata.message_type != MessageType::Query {
            return Err(()); // never answer a response (reflection)
        }
        let snapshot = self.snapshot.load();
        let Decision::Respond {
            metadata,
            answers,
            soa,
            additionals,
        } = self.decide(&request, &snapshot)
        else {
            return Ok(Some(request));
        };
        let edns = self.response_edns(&request);
        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            metadata,
            answers,
            NO_RECORDS,
            soa,
            additionals,
        );
        encode_udp(response, out);
        Ok(None)
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let edns = self.response_edns(request);
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let mut metadata = {
            let snapshot = self.snapshot.load();
            match self.decide(request, &snapshot) {
                Decision::Respond {
                    metadata,
                    answers,
                    soa,
                    additionals,
                } => {
                    let response = builder.build(metadata, answers, NO_RECORDS, soa, additionals);
                    return send(response_handle, response, metadata).await;
                }
                Decision::Forward(metadata) => metadata,
            }
        };
        // `decide` forwards only a request with exactly one question.
        let Ok(info) = request.request_info() else {
            metadata.response_code = ResponseCode::FormErr;
            return send(
                response_handle,
                builder.build_no_records(metadata),
                metadata,
            )
            .await;
        };
        let query = info.query;
        let transport = if request.protocol().is_datagram() {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        match self
            .forwarder
            .resolve(
                query.name(),
                query.query_type(),
                query.query_class(),
                transport,
            )
            .await
        {
            Ok(forwarded) => {
                metadata.response_code = forwarded.response_code;
                let response = builder.build(
                    metadata,
                    &forwarded.answers,
                    &forwarded.authorities,
                    NO_RECORDS,
                    &forwarded.additionals,
                );
                send(response_handle, response, metadata).await
            }
            Err(_) => {
                metadata.response_code = ResponseCode::ServFail;
                send(
                    response_handle,
                    builder.build_no_records(metadata),
                    metadata,
                )
                .await
            }
        }
    }
}

/// Encodes a UDP response into `out`, bounded by the response's EDNS payload size (512 bytes
/// without EDNS, RFC 1035 4.2.1): what does not fit is left out and TC set. A response that
/// cannot be encoded becomes SERVFAIL, as in hickory's own listeners.
fn encode_udp<'a>(
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    out: &mut Vec<u8>,
) -> Option<ResponseInfo> {
    out.clear();
    let metadata = *response.metadata();
    let max = response.edns().map_or(512, Edns::max_payload);
    let mut encoder = BinEncoder::new(out);
    encoder.set_max_size(max);
    match response.destructive_emit(&mut encoder) {
        Ok(info) => Some(info),
        Err(_) => {
            let mut failed = Metadata::new(metadata.id, MessageType::Response, OpCode::Query);
            failed.response_code = ResponseCode::ServFail;
            encode_header(failed, out);
            None
        }
    }
}

/// A response of just a header (no question, no records).
fn encode_header(metadata: Metadata, out: &mut Vec<u8>) {
    out.clear();
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    // Twelve bytes into a growable buffer: cannot fail.
    let _ = header.emit(&mut BinEncoder::new(out));
}

/// Sends a forwarded answer back over the UDP listener's socket.
#[derive(Clone)]
struct UdpResponder {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpResponder {
    async fn send_response<'a>(
        &mut self,
        response: hickory_server::zone_handler::MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let metadata = *response.metadata();
        let mut out = Vec::with_capacity(512);
        let info = encode_udp(response, &mut out).unwrap_or_else(|| {
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        });
        self.socket.send_to(&out, self.dst).await?;
        Ok(info)
    }
}

/// Whether a response may be sent to `src` (not port 0, not an unspecified or broadcast
/// address), as hickory's listeners check.
fn answerable(src: SocketAddr) -> bool {
    src.port() != 0
        && match src.ip() {
            IpAddr::V4(ip) => !ip.is_unspecified() && !ip.is_broadcast(),
            IpAddr::V6(ip) => !ip.is_unspecified(),
        }
}

/// The UDP listener: drains the socket whenever it is readable, [`BATCH`] datagrams per
/// `recvmmsg`, answers netd's names inline from reused buffers and sends a batch's answers
/// with one `sendmmsg`; a query for another name becomes a task that awaits the forwarder.
/// Stops when `stop` fires and then waits for the forwarding tasks (the caller bounds that
/// wait).
async fn serve_udp(
    socket: Arc<UdpSocket>,
    handler: Handler,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    let mut forwarding = JoinSet::new();
    let mut rx = RecvBatch::new(MAX_DATAGRAM);
    let mut tx = SendBatch::default();
    let mut out = Vec::with_capacity(512);
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break,
            readable = socket.readable() => readable?,
            Some(_) = forwarding.join_next(), if !forwarding.is_empty() => continue,
        }
        // A bounded number of full batches per wake-up, so the forwarding tasks and the TCP
        // listener on the same runtime get their turn under a flood.
        for _ in 0..BATCHES_PER_WAKE {
            let n = match socket.try_io(Interest::READABLE, || rx.recv(fd)) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors from earlier sends surface here; the socket itself is fine.
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e),
            };
            for i in 0..n {
                let (raw, src) = rx.get(i);
                let Some(src) = src.filter(|src| answerable(*src)) else {
                    continue;
                };
                match handler.answer_datagram(raw, src, &mut out) {
                    Ok(None) if !out.is_empty() => tx.push(&out, src),
                    Ok(None) | Err(()) => {}
                    Ok(Some(request)) => {
                        let handler = handler.clone();
                        let responder = UdpResponder {
                            socket: socket.clone(),
                            dst: src,
                        };
                        forwarding.spawn(async move {
                            handler
                                .handle_request::<_, TokioTime>(&request, responder)
                                .await;
                        });
                    }
                }
            }
            flush(&socket, fd, &mut tx).await;
            if n < BATCH {
                break;
            }
        }
    }
    while forwarding.join_next().await.is_some() {}
    Ok(())
}

/// Full receive batches handled before the listener lets other tasks run.
const BATCHES_PER_WAKE: usize = 8;

/// Sends the queued answers, waiting for room in the socket's buffer when it is full; an
/// answer the kernel refuses is dropped (the client retries), as hickory's listeners do.
async fn flush(socket: &UdpSocket, fd: RawFd, tx: &mut SendBatch) {
    let mut sent = 0;
    while sent < tx.len() {
        match socket.try_io(Interest::WRITABLE, || tx.send(fd, sent)) {
            Ok(n) => sent += n.max(1),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if socket.writable().await.is_err() {
                    break;
                }
            }
            Err(_) => sent += 1,
        }
    }
    tx.clear();
}

/// Receive errors that leave the socket usable (ICMP port unreachable from an earlier send,
/// a signal).
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// Sends `response`; a failed send (client gone, socket closed) is reported as SERVFAIL to
/// hickory's bookkeeping and otherwise ignored: there is nobody left to tell.
async fn send<'a, R: ResponseHandler>(
    mut handle: R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    mut metadata: Metadata,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(_) => {
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    }
}
