//! Forwarding of names netd does not own to the caller's upstream servers, with a small
//! TTL-respecting cache.
//!
//! - Upstreams are tried in the order given, each with one short timeout. A query goes over UDP
//!   and is repeated over TCP to the same upstream when the answer is truncated; a query that
//!   reached netd over TCP goes upstream over TCP directly. An upstream that times out, fails,
//!   sends a mismatched answer or answers SERVFAIL/REFUSED/NOTIMP/FORMERR is skipped; when every
//!   upstream failed the caller answers SERVFAIL.
//! - Each upstream query uses a fresh random ID and a fresh ephemeral UDP port (the kernel's
//!   choice), and an answer counts only if its ID and question match: off-path spoofing has to
//!   guess both. Upstream sockets carry [`ForwardOptions::mark`] when set (the mesh sidecar's
//!   forwarder, whose own queries to port 53 must not be intercepted again).
//! - The cache is a bounded LRU keyed by (lowercased name, type, class). Positive answers live
//!   for their smallest TTL (capped by [`ForwardOptions::max_ttl`]); NXDOMAIN and NODATA live
//!   for the SOA minimum (RFC 2308, capped by [`ForwardOptions::negative_ttl_cap`]) and are not
//!   cached without an SOA; TTLs served from the cache count down. Failures are not cached.
//!
//! The forwarder never reads `/etc/resolv.conf`: the caller passes the upstreams (and may
//! replace them with [`Forwarder::set_upstreams`]). It does not validate DNSSEC, does not
//! forward the client's EDNS options, and does not coalesce identical in-flight misses.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use lru::LruCache;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::sync::Semaphore;

/// Largest UDP answer read from an upstream; we advertise less (see
/// [`ForwardOptions::edns_payload`]), so a compliant upstream never sends more.
const UDP_RECV_BUFFER: usize = 4096;

/// Tuning of the forwarder. `Default` gives the values documented on each field.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForwardOptions {
    /// Time allowed for one upstream (UDP, plus the TCP retry when truncated). Default 1 s.
    pub timeout: Duration,
    /// Cache capacity in entries (one per name/type/class); 0 disables the cache. Default 4096.
    pub cache_size: usize,
    /// Longest time a positive answer is cached, in seconds. Default 86400 (1 day).
    pub max_ttl: u32,
    /// Longest time an NXDOMAIN/NODATA answer is cached, in seconds. Default 60.
    pub negative_ttl_cap: u32,
    /// Upstream exchanges in flight at once; a miss beyond this is answered SERVFAIL at once
    /// rather than queued (so 0 disables forwarding). Default 1024.
    pub max_in_flight: usize,
    /// EDNS UDP payload size advertised upstream. Default 1232 (no fragmentation on common
    /// paths, per DNS Flag Day 2020).
    pub edns_payload: u16,
    /// `SO_MARK` put on every upstream socket (needs `CAP_NET_ADMIN`), so that a forwarder
    /// running behind transparent interception (the mesh sidecar) is not redirected back to
    /// itself. Default `None`: unmarked.
    pub mark: Option<u32>,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(1),
            cache_size: 4096,
            max_ttl: 86_400,
            negative_ttl_cap: 60,
            max_in_flight: 1024,
            edns_payload: 1232,
            mark: None,
        }
    }
}

/// Transport of a DNS exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP (with a TCP retry upstream when the answer is truncated).
    Udp,
    /// TCP.
    Tcp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        })
    }
}

/// Why a name could not be forwarded. The server turns every one of these into SERVFAIL.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The upstream list is empty.
    #[error("no upstream DNS servers are configured")]
    NoUpstreams,
    /// Too many upstream exchanges already in flight.
    #[error("{limit} upstream DNS queries already in flight; shedding load")]
    Overloaded {
        /// [`ForwardOptions::max_in_flight`].
        limit: usize,
    },
    /// The query could not be encoded (cannot happen for a name that was decoded).
    #[error("cannot encode a query for {name}: {reason}")]
    Encode {
        /// Queried name.
        name: String,
        /// Encoder error.
        reason: String,
    },
    /// The upstream did not answer in time.
    #[error("upstream {upstream} did not answer over {transport} within {timeout:?}")]
    Timeout {
        /// Upstream server.
        upstream: SocketAddr,
        /// Transport of the attempt that timed out.
        transport: Transport,
        /// [`ForwardOptions::timeout`].
        timeout: Duration,
    },
    /// A socket operation failed (connection refused, unreachable, reset...).
    #[error("upstream {upstream} over {transport}: {source}")]
    Io {
        /// Upstream server.
        upstream: SocketAddr,
        /// Transport of the failed attempt.
        transport: Transport,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The upstream sent something that is not an answer to our question.
    #[error("upstream {upstream} sent an unusable answer: {reason}")]
    BadResponse {
        /// Upstream server.
        upstream: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// The upstream answered with an error code (SERVFAIL, REFUSED, ...).
    #[error("upstream {upstream} answered {code}")]
    Rcode {
        /// Upstream server.
        upstream: SocketAddr,
        /// Its response code.
        code: ResponseCode,
    },
    /// Every upstream failed; carries the last failure.
    #[error("all {tried} upstream DNS servers failed; last: {last}")]
    AllFailed {
        /// Number of upstreams tried.
        tried: usize,
        /// The last upstream's failure.
        last: Box<ForwardError>,
    },
}

/// A forwarded answer, ready to be copied into the client's response.
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarded {
    /// NOERROR or NXDOMAIN (errors are [`ForwardError`]s).
    pub response_code: ResponseCode,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section (SOA of negative answers, NS records).
    pub authorities: Vec<Record>,
    /// Additional section, without the upstream's OPT record.
    pub additionals: Vec<Record>,
    /// Whether it came from the cache (TTLs then counted down).
    pub from_cache: bool,
}

/// Sends questions to the upstream servers and caches their answers. Shareable (`Arc`) between
/// several listeners, so they share one cache.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: ArcSwap<Vec<SocketAddr>>,
    cache: Cache,
    in_flight: Semaphore,
    options: ForwardOptions,
}

impl Forwarder {
    /// A forwarder over `upstreams`, tried in this order.
    pub fn new(upstreams: Vec<SocketAddr>, options: ForwardOptions) -> Self {
        Self {
            upstreams: ArcSwap::from_pointee(upstreams),
            cache: Cache::new(&options),
            in_flight: Semaphore::new(options.max_in_flight.min(Semaphore::MAX_PERMITS)),
            options,
        }
    }

    /// Replaces the upstream servers (e.g. after `/etc/resolv.conf` changed). The cache is kept.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        self.upstreams.store(Arc::new(upstreams));
    }

    /// The upstream servers, in the order they are tried.
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.upstreams.load().as_ref().clone()
    }

    /// The options in force.
    pub fn options(&self) -> &ForwardOptions {
        &self.options
    }

    /// Number of cached answers (expired ones included until they are evicted or asked for).
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Drops every cached answer.
    pub fn clear_cache(&self) {
        self.cache.clear();
    }

    /// Answers `name`/`qtype`/`qclass` from the cache or the upstreams. `transport` is how the
    /// client asked: TCP questions go upstream over TCP.
    pub async fn resolve(
        &self,
        name: &LowerName,
        qtype: RecordType,
        qclass: DNSClass,
        transport: Transport,
    ) -> Result<Forwarded, ForwardError> {
        let key = CacheKey {
            name: name.clone(),
            qtype,
            qclass,
        };
        if let Some(hit) = self.cache.get(&key, Instant::now()) {
            return Ok(hit);
        }

        let _permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| ForwardError::Overloaded {
                limit: self.options.max_in_flight,
            })?;
        let upstreams = self.upstreams.load_full();
        if upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }

        let query = self.query_message(name, qtype, qclass);
        let framed = frame(&query).map_err(|reason| ForwardError::Encode {
            name: name.to_string(),
            reason,
        })?;
        let mut last = None;
        for upstream in upstreams.iter() {
            match self.exchange(*upstream, &framed, &query, transport).await {
                Ok(response) => return Ok(self.cache.store(key, response, Instant::now())),
                Err(error) => last = Some(error),
            }
        }
        Err(ForwardError::AllFailed {
            tried: upstreams.len(),
            last: Box::new(last.unwrap_or(ForwardError::NoUpstreams)),
        })
    }

    fn query_message(&self, name: &LowerName, qtype: RecordType, qclass: DNSClass) -> Message {
        let mut question = Query::query(Name::from(name.clone()), qtype);
        question.set_query_class(qclass);
        let mut edns = Edns::new();
        edns.set_max_payload(self.options.edns_payload);
        // `query()` draws a random ID.
        let mut message = Message::query();
        message.metadata.recursion_desired = true;
        message.add_query(question);
        message.set_edns(edns);
        message
    }

    /// One upstream: UDP then TCP if truncated, or TCP directly; error codes count as failures.
    async fn exchange(
        &self,
        upstream: SocketAddr,
        framed: &[u8],
        query: &Message,
        transport: Transport,
    ) -> Result<Message, ForwardError> {
        let within = |transport: Transport| {
            let timeout = self.options.timeout;
            move |_| ForwardError::Timeout {
                upstream,
                transport,
                timeout,
            }
        };
        let deadline = tokio::time::Instant::now() + self.options.timeout;
        let response = match transport {
            Transport::Tcp => tokio::time::timeout_at(
                deadline,
                over_tcp(upstream, framed, query, self.options.mark),
            )
            .await
            .map_err(within(Transport::Tcp))??,
            Transport::Udp => {
                let payload = framed.get(2..).unwrap_or_default();
                let response = tokio::time::timeout_at(
                    deadline,
                    over_udp(upstream, payload, query, self.options.mark),
                )
                .await
                .map_err(within(Transport::Udp))??;
                if response.metadata.truncation {
                    tokio::time::timeout_at(
                        deadline,
                        over_tcp(upstream, framed, query, self.options.mark),
                    )
                    .await
                    .map_err(within(Transport::Tcp))??
                } else {
                    response
                }
            }
        };
        match response.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => Ok(response),
            code => Err(ForwardError::Rcode { upstream, code }),
        }
    }
}

/// The query with its two-byte TCP length prefix; UDP sends the bytes after the prefix.
fn frame(query: &Message) -> Result<Vec<u8>, String> {
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    let len = u16::try_from(bytes.len()).map_err(|_| "query longer than 65535 bytes")?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(&bytes);
    Ok(framed)
}

async fn over_udp(
    upstream: SocketAddr,
    payload: &[u8],
    query: &Message,
    mark: Option<u32>,
) -> Result<Message, ForwardError> {
    let io = |source| ForwardError::Io {
        upstream,
        transport: Transport::Udp,
        source,
    };
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    if let Some(mark) = mark {
        socket2::SockRef::from(&socket).set_mark(mark).map_err(io)?;
    }
    // Connected: the kernel drops datagrams from other sources and reports ICMP errors.
    socket.connect(upstream).await.map_err(io)?;
    socket.send(payload).await.map_err(io)?;
    let mut buffer = vec![0u8; UDP_RECV_BUFFER];
    loop {
        let len = socket.recv(&mut buffer).await.map_err(io)?;
        let Some(bytes) = buffer.get(..len) else {
            continue;
        };
        // Garbage or an answer to something else: keep waiting until the deadline.
        if let Ok(response) = Message::from_vec(bytes) {
            if answers(&response, query) {
                return Ok(response);
            }
        }
    }
}

async fn over_tcp(
    upstream: SocketAddr,
    framed: &[u8],
    query: &Message,
    mark: Option<u32>,
) -> Result<Message, ForwardError> {
    let io = |source| ForwardError::Io {
        upstream,
        transport: Transport::Tcp,
        source,
    };
    let socket = match upstream {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(io)?;
    // Marked before the SYN leaves.
    if let Some(mark) = mark {
        socket2::SockRef::from(&socket).set_mark(mark).map_err(io)?;
    }
    let mut stream = socket.connect(upstream).await.map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    stream.write_all(framed).await.map_err(io)?;
    let len = stream.read_u16().await.map_err(io)?;
    let mut bytes = vec![0u8; usize::from(len)];
    stream.read_exact(&mut bytes).await.map_err(io)?;
    let response = Message::from_vec(&bytes).map_err(|e| ForwardError::BadResponse {
        upstream,
        reason: e.to_string(),
    })?;
    if !answers(&response, query) {
        return Err(ForwardError::BadResponse {
            upstream,
            reason: "ID or question does not match the query".into(),
        });
    }
    Ok(response)
}

/// Whether `response` answers `query`: same ID, a response, the same single question.
fn answers(response: &Message, query: &Message) -> bool {
    let same_question = match (response.queries.as_slice(), query.queries.as_slice()) {
        ([got], [asked]) => {
            got.name() == asked.name()
                && got.query_type() == asked.query_type()
                && got.query_class() == asked.query_class()
        }
        _ => false,
    };
    response.metadata.id == query.metadata.id
        && response.metadata.message_type == MessageType::Response
        && same_question
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    name: LowerName,
    qtype: RecordType,
    qclass: DNSClass,
}

#[derive(Debug)]
struct CachedResponse {
    response_code: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    stored: Instant,
    expires: Instant,
}

impl CachedResponse {
    /// A copy with every TTL reduced by the time spent in the cache.
    fn aged(&self, now: Instant) -> Forwarded {
        let elapsed =
            u32::try_from(now.saturating_duration_since(self.stored).as_secs()).unwrap_or(u32::MAX);
        let age = |records: &[Record]| {
            records
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = r.ttl.saturating_sub(elapsed);
                    r
                })
                .collect()
        };
        Forwarded {
            response_code: self.response_code,
            answers: age(&self.answers),
            authorities: age(&self.authorities),
            additionals: age(&self.additionals),
            from_cache: true,
        }
    }
}

#[derive(Debug)]
struct Cache {
    entries: Option<Mutex<LruCache<CacheKey, Arc<CachedResponse>>>>,
    max_ttl: u32,
    negative_ttl_cap: u32,
}

impl Cache {
    fn new(options: &ForwardOptions) -> Self {
        Self {
            entries: NonZeroUsize::new(options.cache_size).map(|n| Mutex::new(LruCache::new(n))),
            max_ttl: options.max_ttl,
            negative_ttl_cap: options.negative_ttl_cap,
        }
    }

    fn lock(&self) -> Option<MutexGuard<'_, LruCache<CacheKey, Arc<CachedResponse>>>> {
        // A panic while holding the lock cannot leave the LRU half-updated in a way that
        // matters for a cache, so a poisoned lock is used as is.
        self.entries
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    fn len(&self) -> usize {
        self.lock().map_or(0, |entries| entries.len())
    }

    fn clear(&self) {
        if let Some(mut entries) = self.lock() {
            entries.clear();
        }
    }

    fn get(&self, key: &CacheKey, now: Instant) -> Option<Forwarded> {
        let entry = {
            let mut entries = self.lock()?;
            let entry = entries.get(key)?.clone();
            if now >= entry.expires {
                entries.pop(key);
                return None;
            }
            entry
        };
        // Copy outside the lock.
        Some(entry.aged(now))
    }

    /// Caches `response` when its TTLs allow and returns it as a [`Forwarded`].
    fn store(&self, key: CacheKey, mut response: Message, now: Instant) -> Forwarded {
        let forwarded = Forwarded {
            response_code: response.metadata.response_code,
            answers: std::mem::take(&mut response.answers),
            authorities: std::mem::take(&mut response.authorities),
            additionals: std::mem::take(&mut response.additionals),
            from_cache: false,
        };
        let Some(ttl) = self.cache_ttl(&forwarded) else {
            return forwarded;
        };
        if let Some(mut entries) = self.lock() {
            entries.put(
                key,
                Arc::new(CachedResponse {
                    response_code: forwarded.response_code,
                    answers: forwarded.answers.clone(),
                    authorities: forwarded.authorities.clone(),
                    additionals: forwarded.additionals.clone(),
                    stored: now,
                    expires: now + Duration::from_secs(u64::from(ttl)),
                }),
            );
        }
        forwarded
    }

    /// How long an answer may be cached, `None` for not at all.
    fn cache_ttl(&self, response: &Forwarded) -> Option<u32> {
        // RFC 2308: a negative answer lives for min(SOA TTL, SOA minimum).
        let negative = response
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .map(|ttl| ttl.min(self.negative_ttl_cap));
        let positive = response
            .answers
            .iter()
            .map(|r| r.ttl)
            .min()
            .map(|ttl| ttl.min(self.max_ttl));
        let ttl = match (response.response_code, positive, negative) {
            (ResponseCode::NXDomain, _, negative) => negative,
            (ResponseCode::NoError, Some(positive), negative) => {
                Some(negative.map_or(positive, |n| n.min(positive)))
            }
            (ResponseCode::NoError, None, negative) => negative,
            _ => None,
        };
        ttl.filter(|ttl| *ttl > 0)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::rr::rdata::{A, SOA};

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("test name")
    }

    fn key(s: &str) -> CacheKey {
        CacheKey {
            name: LowerName::new(&name(s)),
            qtype: RecordType::A,
            qclass: DNSClass::IN,
        }
    }

    fn a(owner: &str, ttl: u32) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))))
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        let data = SOA::new(name("ns.example."), name("h.example."), 1, 1, 1, 1, minimum);
        Record::from_rdata(name("example."), ttl, RData::SOA(data))
    }

    fn response(code: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>) -> Message {
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        m.metadata.response_code = code;
        m.answers = answers;
        m.authorities = authorities;
        m
    }

    fn cache(size: usize) -> Cache {
        Cache::new(&ForwardOptions {
            cache_size: size,
            max_ttl: 600,
            negative_ttl_cap: 30,
            ..ForwardOptions::default()
        })
    }

    #[test]
    fn positive_answers_count_down_and_expire() {
        let c = cache(8);
        let t0 = Instant::now();
        let stored = c.store(
            key("a.example."),
            response(ResponseCode::NoError, vec![a("a.example.", 10)], vec![]),
            t0,
        );
        assert!(!stored.from_cache);
        let hit = c
            .get(&key("A.EXAMPLE."), t0 + Duration::from_secs(4))
            .expect("cached");
        assert!(hit.from_cache);
        assert_eq!(hit.answers[0].ttl, 6);
        assert!(c
            .get(&key("a.example."), t0 + Duration::from_secs(10))
            .is_none());
        assert_eq!(c.len(), 0, "expired entry removed when asked");
    }

    #[test]
    fn ttls_are_capped_and_zero_is_not_cached() {
        let c = cache(8);
        let t0 = Instant::now();
        c.store(
            key("long.example."),
            response(
                ResponseCode::NoError,
                vec![a("long.example.", 100_000)],
                vec![],
            ),
            t0,
        );
        assert!(c
            .get(&key("long.example."), t0 + Duration::from_secs(599))
            .is_some());
        assert!(c
            .get(&key("long.example."), t0 + Duration::from_secs(600))
            .is_none());
        c.store(
            key("zero.example."),
            response(ResponseCode::NoError, vec![a("zero.example.", 0)], vec![]),
            t0,
        );
        assert!(c.get(&key("zero.example."), t0).is_none());
    }

    #[test]
    fn negative_answers_use_the_soa_minimum_capped() {
        let c = cache(8);
        let t0 = Instant::now();
        c.store(
            key("nx.example."),
            response(ResponseCode::NXDomain, vec![], vec![soa(3600, 20)]),
            t0,
        );
        assert!(c
            .get(&key("nx.example."), t0 + Duration::from_secs(19))
            .is_some());
        assert!(c
            .get(&key("nx.example."), t0 + Duration::from_secs(20))
            .is_none());

        // Capped at negative_ttl_cap (30).
        c.store(
            key("nodata.example."),
            response(ResponseCode::NoError, vec![], vec![soa(3600, 3600)]),
            t0,
        );
        let hit = c
            .get(&key("nodata.example."), t0 + Duration::from_secs(29))
            .expect("cached");
        assert_eq!(hit.response_code, ResponseCode::NoError);
        assert!(c
            .get(&key("nodata.example."), t0 + Duration::from_secs(30))
            .is_none());

        // No SOA: not cached.
        c.store(
            key("bare.example."),
            response(ResponseCode::NXDomain, vec![], vec![]),
            t0,
        );
        assert!(c.get(&key("bare.example."), t0).is_none());
        // Errors: never cached.
        c.store(
            key("fail.example."),
            response(ResponseCode::ServFail, vec![a("fail.example.", 60)], vec![]),
            t0,
        );
        assert!(c.get(&key("fail.example."), t0).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = cache(2);
        let t0 = Instant::now();
        for n in ["one.example.", "two.example.", "three.example."] {
            c.store(
                key(n),
                response(ResponseCode::NoError, vec![a(n, 60)], vec![]),
                t0,
            );
        }
        assert_eq!(c.len(), 2);
        assert!(c.get(&key("one.example."), t0).is_none(), "oldest evicted");
        assert!(c.get(&key("three.example."), t0).is_some());
        assert_eq!(cache(0).len(), 0);
    }

    #[test]
    fn only_matching_answers_count() {
        let mut q = Message::query();
        q.add_query(Query::query(name("a.example."), RecordType::A));
        let mut r = Message::response(q.metadata.id, hickory_proto::op::OpCode::Query);
        r.add_query(Query::query(name("A.Example."), RecordType::A));
        assert!(answers(&r, &q));
        r.metadata.id = q.metadata.id.wrapping_add(1);
        assert!(!answers(&r, &q));
        let mut other = Message::response(q.metadata.id, hickory_proto::op::OpCode::Query);
        other.add_query(Query::query(name("b.example."), RecordType::A));
        assert!(!answers(&other, &q));
    }
}
