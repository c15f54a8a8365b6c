//! nfnetlink wire layer: message and attribute encoding, reply decoding, and a synchronous
//! `NETLINK_NETFILTER` socket that runs nf_tables batches and queries.
//!
//! Owns the bytes on the wire and nothing about *what* is written (that is `expr` and
//! `ruleset`). Written from the kernel UAPI headers (`linux/netfilter/nfnetlink.h`,
//! `nf_tables.h`) and the kernel's YNL spec `Documentation/netlink/specs/nftables.yaml`.
//!
//! Besides nf_tables (subsystem 10), the same socket speaks ctnetlink (subsystem 1,
//! `linux/netfilter/nfnetlink_conntrack.h`) for `conntrack`: `ct_type` builds its message types
//! and `request`/`dump` run its requests.
//!
//! Layout reminders: `nlmsghdr` fields are host order; every nf_tables message starts with an
//! `nfgenmsg` (family, version 0, big-endian `res_id`); nf_tables integer attributes are
//! big-endian; attributes are 4-byte aligned.

use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket as RawSocket, SocketAddr};

/// nfnetlink subsystem id of nf_tables (`NFNL_SUBSYS_NFTABLES`).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// nfnetlink subsystem id of connection tracking (`NFNL_SUBSYS_CTNETLINK`).
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// `NFNL_BATCH_GENID`: the attribute of `BATCH_BEGIN` carrying the generation the batch was
/// computed against (big-endian u32); the kernel refuses the batch with `ERESTART` when the
/// ruleset has moved on since.
const NFNL_BATCH_GENID: u16 = 1;
/// Batch delimiters (`NFNL_MSG_BATCH_BEGIN` / `_END`, i.e. `NLMSG_MIN_TYPE` and the next).
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// nf_tables message types (`enum nf_tables_msg_types`; DESTROYSETELEM from the YNL spec,
/// kernel >= 6.3).
pub(super) mod msg {
    pub const NEWTABLE: u8 = 0x00;
    pub const GETTABLE: u8 = 0x01;
    pub const DELTABLE: u8 = 0x02;
    pub const NEWCHAIN: u8 = 0x03;
    pub const NEWRULE: u8 = 0x06;
    pub const GETRULE: u8 = 0x07;
    pub const NEWSET: u8 = 0x09;
    pub const NEWSETELEM: u8 = 0x0c;
    pub const GETSETELEM: u8 = 0x0d;
    pub const DELSETELEM: u8 = 0x0e;
    pub const GETGEN: u8 = 0x10;
    pub const DESTROYSETELEM: u8 = 0x1e;
}

/// Writes attributes into a message buffer; every attribute is padded to 4 bytes.
pub(super) struct Attrs<'a>(&'a mut Vec<u8>);

impl Attrs<'_> {
    /// Writes attributes at the end of `buf` (tests build kernel-style replies with it).
    #[cfg(test)]
    pub fn new(buf: &mut Vec<u8>) -> Attrs<'_> {
        Attrs(buf)
    }

    /// A raw binary attribute.
    pub fn bytes(&mut self, ty: u16, val: &[u8]) -> &mut Self {
        self.header(ty, val.len());
        self.0.extend_from_slice(val);
        self.pad()
    }

    /// A NUL-terminated string attribute.
    pub fn str(&mut self, ty: u16, val: &str) -> &mut Self {
        self.header(ty, val.len() + 1);
        self.0.extend_from_slice(val.as_bytes());
        self.0.push(0);
        self.pad()
    }

    /// A big-endian u32 attribute (nf_tables' integer convention).
    pub fn be32(&mut self, ty: u16, val: u32) -> &mut Self {
        self.bytes(ty, &val.to_be_bytes())
    }

    /// Already encoded attributes (e.g. the content of a nest copied from a kernel reply).
    pub fn raw(&mut self, encoded: &[u8]) -> &mut Self {
        self.0.extend_from_slice(encoded);
        self.pad()
    }

    /// A nested attribute whose content `f` writes.
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs<'_>)) -> &mut Self {
        let start = self.0.len();
        self.header(ty | NLA_F_NESTED, 0);
        f(&mut Attrs(self.0));
        let len = saturating_u16(self.0.len() - start);
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn header(&mut self, ty: u16, payload: usize) {
        self.0
            .extend_from_slice(&saturating_u16(4 + payload).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
    }

    fn pad(&mut self) -> &mut Self {
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }
}

/// Attribute lengths are u16 on the wire; callers keep messages far below that (element lists
/// are chunked), so saturating only guards against a corrupt length ever being written.
fn saturating_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Appends one netlink message (header + `nfgenmsg` + attributes) to `buf`.
fn put_msg(
    buf: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    f: impl FnOnce(&mut Attrs<'_>),
) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]); // length, patched below
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    f(&mut Attrs(buf));
    let len = u32::try_from(buf.len() - start).unwrap_or(u32::MAX);
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn nft_type(m: u8) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | u16::from(m)
}

/// The netlink message type of ctnetlink message `m` (`IPCTNL_MSG_CT_*`).
pub(super) fn ct_type(m: u8) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | u16::from(m)
}

/// The messages of one transaction, each with a human-readable name for error reports.
#[derive(Default)]
pub(super) struct Batch {
    buf: Vec<u8>,
    offsets: Vec<usize>,
    ops: Vec<String>,
    genid: Option<u32>,
}

impl Batch {
    /// Appends an nf_tables message; `NLM_F_REQUEST | NLM_F_ACK` are always set.
    pub fn push(
        &mut self,
        m: u8,
        family: u8,
        flags: u16,
        op: String,
        f: impl FnOnce(&mut Attrs<'_>),
    ) {
        self.offsets.push(self.buf.len());
        self.ops.push(op);
        put_msg(
            &mut self.buf,
            nft_type(m),
            NLM_F_REQUEST | NLM_F_ACK | flags,
            0,
            family,
            0,
            f,
        );
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The name given to message `i`.
    pub fn op(&self, i: usize) -> &str {
        &self.ops[i]
    }

    /// Makes the batch conditional: the kernel applies it only if the ruleset generation is
    /// still `genid` (read with `GETGEN`), else refuses the whole batch with `ERESTART`.
    pub fn require_generation(&mut self, genid: u32) {
        self.genid = Some(genid);
    }
}

/// What the kernel said about a batch.
pub(super) struct Outcome {
    /// Per message: 0 when acknowledged, else the errno (EIO if no acknowledgement came).
    pub errors: Vec<i32>,
    /// An error reported against the batch itself (rejected before or at commit).
    pub batch: Option<i32>,
}

impl Outcome {
    /// The first failure: `Some((Some(i), errno))` for message `i`, `(None, errno)` for the batch.
    pub fn first_error(&self) -> Option<(Option<usize>, i32)> {
        if let Some(i) = self.errors.iter().position(|&e| e != 0) {
            return Some((Some(i), self.errors[i]));
        }
        self.batch.map(|e| (None, e))
    }
}

/// One decoded netlink message.
pub(super) struct NlMsg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Iterates the netlink messages of one datagram, stopping at a malformed header.
fn nl_messages(mut buf: &[u8]) -> impl Iterator<Item = NlMsg<'_>> {
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let m = NlMsg {
            ty: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: &buf[NLMSG_HDRLEN..len],
        };
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some(m)
    })
}

/// The errno of an `NLMSG_ERROR` payload (0 for an acknowledgement).
fn ack_errno(payload: &[u8]) -> i32 {
    payload
        .get(0..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]).saturating_neg())
        .unwrap_or(libc::EIO)
}

/// Iterates the attributes in `buf` as `(type without flags, payload)`.
pub(super) fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(buf.get(0..2)?.try_into().ok()?));
        let ty = u16::from_ne_bytes(buf.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let val = buf.get(4..len)?;
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((ty, val))
    })
}

/// The first attribute of type `ty` in `buf`.
pub(super) fn attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|&(t, _)| t == ty).map(|(_, v)| v)
}

/// A big-endian u32 attribute.
pub(super) fn attr_be32(buf: &[u8], ty: u16) -> Option<u32> {
    attr(buf, ty)?.try_into().ok().map(u32::from_be_bytes)
}

/// Reply payloads of a query, or the errno it failed with.
pub(super) type Replies = Result<Vec<Vec<u8>>, i32>;

/// A synchronous nfnetlink socket, bound to the network namespace it was opened in.
pub(super) struct Socket {
    sock: RawSocket,
    seq: u32,
}

impl Socket {
    /// Opens and binds the socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let mut sock = RawSocket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Best effort: shorter error messages, and room for the acks of a large batch.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_rx_buf_sz::<libc::c_int>(1 << 20);
        Ok(Self { sock, seq: 1 })
    }

    fn take_seqs(&mut self, n: usize) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(u32::try_from(n).unwrap_or(u32::MAX));
        first
    }

    /// Sends `batch` as one transaction and collects the kernel's verdict on each message.
    ///
    /// A `GETGEN` request sent right after the batch acts as a sentinel: the kernel handles a
    /// socket's messages in order, so once its acknowledgement arrives every reply to the batch
    /// has been read, whatever the kernel chose to acknowledge. Replies to older requests
    /// (sequence numbers below this batch) are skipped.
    pub fn send_batch(&mut self, batch: &Batch) -> io::Result<Outcome> {
        let n = batch.len();
        let begin = self.take_seqs(n + 3);
        let end = begin.wrapping_add(n as u32 + 1);
        let sentinel = end.wrapping_add(1);
        let mut buf = Vec::with_capacity(batch.buf.len() + 2 * (NLMSG_HDRLEN + NFGENMSG_LEN));
        put_msg(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin,
            0,
            NFNL_SUBSYS_NFTABLES,
            |a| {
                if let Some(genid) = batch.genid {
                    a.be32(NFNL_BATCH_GENID, genid);
                }
            },
        );
        let base = buf.len();
        buf.extend_from_slice(&batch.buf);
        for (i, off) in batch.offsets.iter().enumerate() {
            let seq = begin.wrapping_add(i as u32 + 1);
            buf[base + off + 8..base + off + 12].copy_from_slice(&seq.to_ne_bytes());
        }
        put_msg(
            &mut buf,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end,
            0,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        self.sock.send(&buf, 0)?;
        let mut getgen = Vec::new();
        put_msg(
            &mut getgen,
            nft_type(msg::GETGEN),
            NLM_F_REQUEST | NLM_F_ACK,
            sentinel,
            0,
            0,
            |_| {},
        );
        self.sock.send(&getgen, 0)?;

        let mut acks = vec![None; n];
        let mut batch_err = None;
        'recv: loop {
            let (data, _) = self.sock.recv_from_full()?;
            for m in nl_messages(&data).filter(|m| m.ty == NLMSG_ERROR) {
                let errno = ack_errno(m.payload);
                let rel = m.seq.wrapping_sub(begin) as usize;
                if m.seq == sentinel {
                    break 'recv;
                } else if rel > n + 1 {
                    continue; // a reply to an earlier request
                } else if rel == 0 || rel == n + 1 {
                    if errno != 0 {
                        batch_err.get_or_insert(errno);
                    }
                } else if let Some(slot) = acks.get_mut(rel - 1) {
                    slot.get_or_insert(errno);
                }
            }
        }
        let errors = acks
            .into_iter()
            .map(|a| a.unwrap_or(if batch_err.is_some() { 0 } else { libc::EIO }))
            .collect();
        Ok(Outcome {
            errors,
            batch: batch_err,
        })
    }

    /// Runs an nf_tables get (`dump == false`) or dump request and returns the attribute
    /// payloads of the replies (after `nfgenmsg`). `Err` carries the errno, `ENOENT` for a
    /// missing object. A dump interrupted by a concurrent ruleset change is retried.
    pub fn query(
        &mut self,
        m: u8,
        family: u8,
        dump: bool,
        f: impl FnOnce(&mut Attrs<'_>),
    ) -> Replies {
        let req = request_msg(nft_type(m), family, dump, f);
        let mut attempts = 0;
        loop {
            let mut replies = Vec::new();
            let (res, interrupted) = self.exchange(&req, &mut |r| replies.push(r.to_vec()))?;
            attempts += 1;
            if !interrupted || attempts >= 5 {
                return res.map(|()| replies);
            }
        }
    }

    /// Runs a request of any subsystem (`ty` is the full message type) that expects an
    /// acknowledgement and no data: `Err` carries the errno.
    pub fn request(
        &mut self,
        ty: u16,
        family: u8,
        f: impl FnOnce(&mut Attrs<'_>),
    ) -> Result<(), i32> {
        let req = request_msg(ty, family, false, f);
        self.exchange(&req, &mut |_| {})?.0
    }

    /// Runs a dump request of any subsystem, handing each reply's attributes (after `nfgenmsg`)
    /// to `each` as it arrives, so a large dump is never held in memory.
    pub fn dump(
        &mut self,
        ty: u16,
        family: u8,
        f: impl FnOnce(&mut Attrs<'_>),
        each: &mut dyn FnMut(&[u8]),
    ) -> Result<(), i32> {
        let req = request_msg(ty, family, true, f);
        self.exchange(&req, each)?.0
    }

    /// Sends one request (with a fresh sequence number) and reads replies until its
    /// acknowledgement, error, or end of dump; also says whether a dump was interrupted by a
    /// ruleset change. The outer `Err` is a socket failure, the inner one the kernel's answer.
    fn exchange(
        &mut self,
        req: &[u8],
        each: &mut dyn FnMut(&[u8]),
    ) -> Result<(Result<(), i32>, bool), i32> {
        let mut req = req.to_vec();
        let seq = self.take_seqs(1);
        req[8..12].copy_from_slice(&seq.to_ne_bytes());
        let io = |e: io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        self.sock.send(&req, 0).map_err(io)?;
        let mut interrupted = false;
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(io)?;
            for m in nl_messages(&data).filter(|m| m.seq == seq) {
                interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                match m.ty {
                    NLMSG_ERROR | NLMSG_DONE => {
                        let errno = if m.payload.len() >= 4 {
                            ack_errno(m.payload)
                        } else {
                            0
                        };
                        let res = if errno == 0 { Ok(()) } else { Err(errno) };
                        return Ok((res, interrupted));
                    }
                    _ => each(m.payload.get(NFGENMSG_LEN..).unwrap_or(&[])),
                }
            }
        }
    }
}

/// A get (acknowledged) or dump request message; its sequence number is set when sent.
fn request_msg(ty: u16, family: u8, dump: bool, f: impl FnOnce(&mut Attrs<'_>)) -> Vec<u8> {
    let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
    let mut req = Vec::new();
    put_msg(&mut req, ty, flags, 0, family, 0, f);
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding_and_nesting() {
        let mut buf = Vec::new();
        let mut a = Attrs(&mut buf);
        a.str(1, "netd").be32(2, 7).nest(3, |n| {
            n.bytes(1, &[1, 2, 3]);
        });
        assert_eq!(buf.len() % 4, 0);
        let got: Vec<_> = attrs(&buf).collect();
        assert_eq!(got[0], (1, &b"netd\0"[..]));
        assert_eq!(attr_be32(&buf, 2), Some(7));
        let nested = attr(&buf, 3).unwrap_or_default();
        assert_eq!(attr(nested, 1), Some(&[1u8, 2, 3][..]));
    }

    #[test]
    fn messages_carry_header_and_nfgenmsg() {
        let mut buf = Vec::new();
        put_msg(
            &mut buf,
            nft_type(msg::NEWTABLE),
            NLM_F_REQUEST,
            42,
            1,
            0,
            |a| {
                a.str(1, "t");
            },
        );
        let m: Vec<_> = nl_messages(&buf).collect();
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].ty, m[0].seq), (0x0a00, 42));
        assert_eq!(&m[0].payload[..4], &[1, 0, 0, 0]);
    }

    #[test]
    fn malformed_input_stops_iteration() {
        assert_eq!(nl_messages(&[0xff; 7]).count(), 0);
        assert_eq!(attrs(&[200, 0, 1, 0, 0]).count(), 0);
    }
}
