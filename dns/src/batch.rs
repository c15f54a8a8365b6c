//! Datagrams in batches: `recvmmsg(2)` and `sendmmsg(2)` for the UDP listener, so a busy
//! server pays one system call per batch of queries and one per batch of answers instead of
//! one per datagram each way (under load, the system calls cost more than answering).
//!
//! This module owns the buffers and the unsafe system-call plumbing only; what is received and
//! sent is the listener's business.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use socket2::SockAddr;

/// Datagrams taken or sent per system call.
pub const BATCH: usize = 32;

/// Receive buffers for [`BATCH`] datagrams of up to `size` bytes each.
pub struct RecvBatch {
    size: usize,
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    count: usize,
}

impl RecvBatch {
    /// Buffers for datagrams of up to `size` bytes (longer ones are truncated by the kernel).
    pub fn new(size: usize) -> Self {
        Self {
            size,
            bufs: vec![0; size * BATCH],
            // SAFETY: all-zero is a valid (unspecified-family) sockaddr_storage.
            addrs: vec![unsafe { zeroed() }; BATCH],
            lens: vec![0; BATCH],
            count: 0,
        }
    }

    /// Takes the datagrams waiting on `fd` (non-blocking), at most [`BATCH`]; returns how
    /// many. `WouldBlock` when there are none.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.count = 0;
        let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths); every pointer set
        // below points into `self.bufs`, `self.addrs` or `iovs`, all alive and unmoved until
        // the call returns.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            // SAFETY: `i * size` is within `bufs` (BATCH * size bytes).
            iovs[i].iov_base = unsafe { base.add(i * self.size) }.cast();
            iovs[i].iov_len = self.size;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = std::ptr::from_mut(&mut self.addrs[i]).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: `hdrs` describes BATCH valid, writable buffers (see above).
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (len, h) in self.lens.iter_mut().zip(&hdrs).take(n) {
            *len = (h.msg_len as usize).min(self.size);
        }
        self.count = n;
        Ok(n)
    }

    /// Datagram `i` of the last [`RecvBatch::recv`]: its bytes and sender (`None` for a
    /// sender that is not IPv4 or IPv6).
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        debug_assert!(i < self.count);
        let start = i * self.size;
        (
            &self.bufs[start..start + self.lens[i]],
            socket_addr(&self.addrs[i]),
        )
    }
}

fn socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for AF_INET; sockaddr_storage is larger
            // and aligned for it.
            let sin = unsafe { &*std::ptr::from_ref(ss).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for AF_INET6 and sockaddr_in6.
            let sin6 = unsafe { &*std::ptr::from_ref(ss).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Answers gathered for one `sendmmsg(2)`.
#[derive(Default)]
pub struct SendBatch {
    data: Vec<u8>,
    msgs: Vec<(usize, usize, SockAddr, SocketAddr)>,
}

impl SendBatch {
    /// Queues `bytes` for `dst`.
    pub fn push(&mut self, bytes: &[u8], dst: SocketAddr) {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        self.msgs
            .push((start, bytes.len(), SockAddr::from(dst), dst));
    }

    /// Sends what is queued on `fd` (non-blocking), from the first unsent message on; returns
    /// how many went. `WouldBlock` when the socket's buffer is full.
    pub fn send(&mut self, fd: RawFd, from: usize) -> io::Result<usize> {
        let pending = &self.msgs[from..];
        let mut iovs: Vec<libc::iovec> = pending
            .iter()
            .map(|(start, len, _, _)| libc::iovec {
                // SAFETY: `start..start + len` is within `data` (see `push`).
                iov_base: unsafe { self.data.as_ptr().add(*start) }.cast_mut().cast(),
                iov_len: *len,
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = pending
            .iter()
            .zip(iovs.iter_mut())
            .map(|((_, _, dst, _), iov)| {
                // SAFETY: all-zero is a valid mmsghdr; the pointers set point into `pending`
                // and `iovs`, alive and unmoved until the call returns. The kernel only reads
                // through them (sendmmsg).
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_name = dst.as_ptr().cast_mut().cast();
                h.msg_hdr.msg_namelen = dst.len();
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: `hdrs` describes `hdrs.len()` valid messages (see above).
        let n = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Forgets everything queued.
    pub fn clear(&mut self) {
        self.data.clear();
        self.msgs.clear();
    }
}
