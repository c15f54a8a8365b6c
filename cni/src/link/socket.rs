//! The rtnetlink transport: one blocking `NETLINK_ROUTE` socket, request/ack and dump
//! exchanges, and the kernel's refusals decoded (errno plus its extended-ack text).
//!
//! It knows nothing about links or routes: callers hand it a [`RouteNetlinkMessage`] and get the
//! replies back through a callback, or a [`Failure`] to which they add what they were doing.
//! Buffers are owned by the [`Transport`] and reused across requests.

use std::io;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Receive buffer size. The kernel caps dump datagrams at 32 KiB; a single reply larger than
/// this (none we request comes close: stats and VF lists are filtered out) is reported as an
/// error rather than silently truncated.
const RX_CAPACITY: usize = 64 * 1024;

/// How often a dump the kernel flagged as inconsistent (`NLM_F_DUMP_INTR`) is retried.
const DUMP_ATTEMPTS: usize = 3;

/// Where `nlmsg_seq` sits in a netlink header.
const SEQ_FIELD: std::ops::Range<usize> = 8..12;

/// `NLMSGERR_ATTR_MSG`: the human-readable reason in an extended ack.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Why an exchange failed, before the caller says what it was doing.
#[derive(Debug)]
pub(super) enum Failure {
    /// The kernel answered with a negative errno (made positive here).
    Kernel {
        /// The errno, e.g. `libc::EEXIST`.
        errno: i32,
        /// The kernel's extended-ack message, when it gave one.
        msg: Option<String>,
    },
    /// The socket itself failed.
    Io(io::Error),
    /// A reply could not be decoded.
    Decode(String),
}

impl Failure {
    /// The kernel's errno, when the kernel refused the request.
    pub(super) fn errno(&self) -> Option<i32> {
        match self {
            Failure::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

/// One `NETLINK_ROUTE` socket with its sequence counter and reusable buffers.
pub(super) struct Transport {
    socket: Socket,
    seq: u32,
    tx: Vec<u8>,
    rx: Vec<u8>,
}

impl Transport {
    /// Opens and binds a socket in the calling thread's network namespace.
    pub(super) fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        // Each option only improves replies (short acks, the kernel's reason for a refusal,
        // dumps filtered in the kernel); a kernel without one still works, so failures are
        // ignored. Replies are filtered here as well, whatever the kernel did.
        let _ = socket.set_cap_ack(true);
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_netlink_get_strict_chk(true);
        Ok(Self {
            socket,
            seq: 0,
            tx: Vec::with_capacity(1024),
            rx: Vec::with_capacity(RX_CAPACITY),
        })
    }

    /// Sends `msg` with `NLM_F_REQUEST | NLM_F_ACK | flags` and blocks until its ack. Replies
    /// that arrive before the ack (the answer to a targeted GET) go to `on_reply`.
    pub(super) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        on_reply: &mut dyn FnMut(RouteNetlinkMessage),
    ) -> Result<(), Failure> {
        self.encode(msg, NLM_F_ACK | flags);
        self.exchange(on_reply).map(|_| ())
    }

    /// Sends `msg` as a dump request and collects what `pick` keeps of each reply, until
    /// `NLMSG_DONE`. A dump the kernel marks as interrupted by a concurrent change is restarted
    /// a few times before it is accepted.
    pub(super) fn dump<T>(
        &mut self,
        msg: RouteNetlinkMessage,
        mut pick: impl FnMut(RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>, Failure> {
        self.encode(msg, NLM_F_DUMP);
        let mut found = Vec::new();
        for attempt in 1..=DUMP_ATTEMPTS {
            if attempt > 1 {
                found.clear();
                self.renumber();
            }
            if !self.exchange(&mut |reply| found.extend(pick(reply)))? {
                break;
            }
        }
        Ok(found)
    }

    /// Sends the encoded request and reads its replies. Returns whether a dump was flagged
    /// `NLM_F_DUMP_INTR`.
    fn exchange(&mut self, on_reply: &mut dyn FnMut(RouteNetlinkMessage)) -> Result<bool, Failure> {
        let seq = self.seq;
        retry_interrupted(|| self.socket.send_to(&self.tx, &SocketAddr::new(0, 0), 0))?;
        let mut interrupted = false;
        loop {
            let len = retry_interrupted(|| {
                self.rx.clear();
                self.socket.recv(&mut self.rx, libc::MSG_TRUNC)
            })?;
            if len > self.rx.len() {
                return Err(Failure::Decode(format!(
                    "a reply of {len} bytes does not fit the {RX_CAPACITY}-byte buffer"
                )));
            }
            let mut rest: &[u8] = &self.rx;
            while !rest.is_empty() {
                let (raw, tail) = split_message(rest)?;
                rest = tail;
                if NetlinkBuffer::new(raw).sequence_number() != seq {
                    continue; // a late reply to an earlier request that failed half-way
                }
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw)
                    .map_err(|e| Failure::Decode(e.to_string()))?;
                interrupted |= message.header.flags & NLM_F_DUMP_INTR != 0;
                let header_flags = message.header.flags;
                match message.payload {
                    NetlinkPayload::InnerMessage(inner) => on_reply(inner),
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            None => Ok(interrupted),
                            Some(code) => Err(Failure::Kernel {
                                errno: code.get().saturating_abs(),
                                msg: error_text(header_flags, &err.header),
                            }),
                        };
                    }
                    NetlinkPayload::Done(done) if done.code < 0 => {
                        return Err(Failure::Kernel {
                            errno: done.code.saturating_abs(),
                            msg: ext_ack_msg(header_flags, &done.extended_ack),
                        });
                    }
                    NetlinkPayload::Done(_) => return Ok(interrupted),
                    NetlinkPayload::Overrun(_) => {
                        return Err(Failure::Decode("the kernel reported an overrun".into()));
                    }
                    _ => {} // NOOP
                }
            }
        }
    }

    /// Serializes `msg` with a fresh sequence number into the reused send buffer.
    fn encode(&mut self, msg: RouteNetlinkMessage, flags: u16) {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        self.tx.clear();
        self.tx.resize(packet.buffer_len(), 0);
        packet.serialize(&mut self.tx);
    }

    /// Gives the encoded request a fresh sequence number, so replies to its earlier sending
    /// are told apart and skipped.
    fn renumber(&mut self) {
        self.seq = self.seq.wrapping_add(1);
        if let Some(field) = self.tx.get_mut(SEQ_FIELD) {
            field.copy_from_slice(&self.seq.to_ne_bytes());
        }
    }
}

/// Repeats a socket call that a signal interrupted.
fn retry_interrupted<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Splits the first netlink message (checked to be complete) off `buf`.
fn split_message(buf: &[u8]) -> Result<(&[u8], &[u8]), Failure> {
    let len = NetlinkBuffer::new_checked(buf)
        .map_err(|e| Failure::Decode(e.to_string()))?
        .length() as usize;
    // `new_checked` guarantees a full header and `len <= buf.len()`.
    let next = align4(len).min(buf.len());
    Ok((&buf[..len], &buf[next..]))
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// The extended-ack text of an `NLMSG_ERROR`, whose body after the errno is the original
/// request (only its header when `NLM_F_CAPPED`) followed by the TLVs.
fn error_text(flags: u16, body: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let request_len = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        let len = body.get(..4)?;
        u32::from_ne_bytes([len[0], len[1], len[2], len[3]]) as usize
    };
    ext_ack_msg(flags, body.get(align4(request_len)..)?)
}

/// `NLMSGERR_ATTR_MSG` among extended-ack TLVs.
fn ext_ack_msg(flags: u16, tlvs: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    NlasIterator::new(tlvs)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let text = nla.value();
            let text = text.split(|&b| b == 0).next().unwrap_or(text);
            String::from_utf8_lossy(text).into_owned()
        })
        .filter(|text| !text.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `NLMSG_ERROR` body after the errno: the request's header (capped), then TLVs.
    fn error_body(tlvs: &[u8]) -> Vec<u8> {
        let mut body = vec![0u8; 16];
        body[..4].copy_from_slice(&64u32.to_ne_bytes()); // the request was 64 bytes
        body.extend_from_slice(tlvs);
        body
    }

    /// `NLMSGERR_ATTR_MSG` "bad gw\0" (padded) then `NLMSGERR_ATTR_OFFS` 32.
    const TLVS: [u8; 20] = [
        11, 0, 1, 0, b'b', b'a', b'd', b' ', b'g', b'w', 0, 0, 8, 0, 2, 0, 32, 0, 0, 0,
    ];

    #[test]
    fn extended_ack_message_is_read() {
        let flags = NLM_F_CAPPED | NLM_F_ACK_TLVS;
        assert_eq!(
            error_text(flags, &error_body(&TLVS)).as_deref(),
            Some("bad gw")
        );
    }

    #[test]
    fn uncapped_error_skips_the_whole_request() {
        let mut body = error_body(&[]);
        body.resize(64, 0xee); // the rest of the 64-byte request
        body.extend_from_slice(&TLVS);
        assert_eq!(error_text(NLM_F_ACK_TLVS, &body).as_deref(), Some("bad gw"));
    }

    #[test]
    fn no_tlvs_no_message() {
        assert_eq!(error_text(NLM_F_CAPPED, &error_body(&TLVS)), None);
        assert_eq!(
            error_text(NLM_F_CAPPED | NLM_F_ACK_TLVS, &error_body(&[])),
            None
        );
        assert_eq!(error_text(NLM_F_ACK_TLVS, &[1, 2]), None); // truncated: no panic
    }
}
