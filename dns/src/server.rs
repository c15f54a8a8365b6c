//! The DNS server: a hickory-server [`RequestHandler`] over the current
//! [`Snapshot`](crate::Snapshot) and a [`Forwarder`], and the UDP/TCP listeners that feed it.
//!
//! Per query the handler loads the snapshot (lock-free), asks [`answer`](mod@crate::answer) and
//! either writes the precomputed records straight into the response (authoritative, no
//! allocation of its own) or awaits the forwarder (answers SERVFAIL when it fails). Malformed
//! packets are hickory's business: it answers FORMERR when it can read a header and drops the
//! rest, so a garbage datagram never reaches this code nor stops the listener.
//!
//! This module owns sockets and lifecycle only; it does not decide answers and does not know
//! where snapshots or upstreams come from.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_server::net::runtime::Time;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

use crate::answer::{answer, Answer};
use crate::forward::{ForwardOptions, Forwarder, Transport};
use crate::snapshot::SnapshotHandle;

const NO_RECORDS: &[Record] = &[];

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
        let mut server = Server::new(handler);
        server.register_socket(udp_socket);
        server.register_listener(
            tcp_listener,
            options.tcp_idle_timeout,
            options.tcp_response_buffer.max(1),
        );
        Self {
            server,
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
        let ended = tokio::select! {
            result = server.block_until_done() => Some(result),
            () = shutdown => None,
        };
        match ended {
            Some(Ok(())) => Ok(()),
            Some(Err(error)) => Err(ServerError::Stopped(error)),
            None => match tokio::time::timeout(self.shutdown_timeout, server.shutdown_gracefully())
                .await
            {
                Ok(result) => result.map_err(ServerError::Stopped),
                Err(_) => Err(ServerError::ShutdownTimeout(self.shutdown_timeout)),
            },
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
struct Handler {
    snapshot: SnapshotHandle,
    forwarder: Arc<Forwarder>,
    max_udp_payload: u16,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        // RFC 6891: answer EDNS with EDNS; our payload limit bounds UDP responses.
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().clamp(512, self.max_udp_payload));
            edns
        });
        let reply = Reply {
            builder: MessageResponseBuilder::new(&request.queries, edns.as_ref()),
            handle: response_handle,
        };

        if request
            .edns
            .as_ref()
            .is_some_and(|asked| asked.version() > 0)
        {
            metadata.response_code = ResponseCode::BADVERS;
            return reply.empty(metadata).await;
        }
        if request.metadata.op_code != OpCode::Query {
            metadata.response_code = ResponseCode::NotImp;
            return reply.empty(metadata).await;
        }
        let Ok(info) = request.request_info() else {
            // Not exactly one question.
            metadata.response_code = ResponseCode::FormErr;
            return reply.empty(metadata).await;
        };
        let query = info.query;

        {
            let snapshot = self.snapshot.load();
            let decision = answer(
                &snapshot,
                query.name(),
                query.query_type(),
                query.query_class(),
            );
            if decision != Answer::Forward {
                return reply.local(metadata, decision).await;
            }
        }

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
                let response = reply.builder.build(
                    metadata,
                    &forwarded.answers,
                    &forwarded.authorities,
                    NO_RECORDS,
                    &forwarded.additionals,
                );
                send(reply.handle, response, metadata).await
            }
            Err(_) => {
                metadata.response_code = ResponseCode::ServFail;
                reply.empty(metadata).await
            }
        }
    }
}

/// The pieces of one response: the question section (borrowed from the request) and the
/// client's handle.
struct Reply<'q, R> {
    builder: MessageResponseBuilder<'q>,
    handle: R,
}

impl<R: ResponseHandler> Reply<'_, R> {
    /// A response with no records (errors, SERVFAIL).
    async fn empty(self, metadata: Metadata) -> ResponseInfo {
        let response = self.builder.build_no_records(metadata);
        send(self.handle, response, metadata).await
    }

    /// An authoritative answer from the snapshot.
    async fn local(self, mut metadata: Metadata, decision: Answer<'_>) -> ResponseInfo {
        metadata.authoritative = true;
        let (answers, soa, additionals) = match decision {
            Answer::Records {
                answers,
                additionals,
            } => (answers, None, additionals),
            Answer::NoData { soa } => (NO_RECORDS, soa, NO_RECORDS),
            Answer::NxDomain { soa } => {
                metadata.response_code = ResponseCode::NXDomain;
                (NO_RECORDS, Some(soa), NO_RECORDS)
            }
            Answer::Refused | Answer::Forward => {
                metadata.authoritative = false;
                metadata.response_code = ResponseCode::Refused;
                return self.empty(metadata).await;
            }
        };
        let response = self
            .builder
            .build(metadata, answers, NO_RECORDS, soa, additionals);
        send(self.handle, response, metadata).await
    }
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
