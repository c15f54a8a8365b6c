//! Protocol detection: reads the first bytes of a connection (bounded in size and time) and
//! classifies them as HTTP/1.x, HTTP/2 prior knowledge (gRPC included), TLS (with the SNI of
//! its ClientHello) or opaque TCP. The bytes read are handed back so they can be replayed to
//! the upstream: see [`PrefixedIo`].
//!
//! Detection only decides; it does not parse HTTP (hyper does) or terminate TLS (TLS is
//! passed through). Server-first protocols (the server speaks first) would stall detection
//! until its timeout, so their ports skip it ([`SERVER_FIRST_PORTS`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Ports of server-first protocols (SMTP, MySQL, PostgreSQL, Redis, ...): never detected.
pub const SERVER_FIRST_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];
/// Most bytes read while detecting (a large TLS ClientHello fits).
const MAX_PEEK: usize = 16 * 1024;
/// Longest HTTP/1 method accepted before the first space.
const MAX_METHOD: usize = 16;

/// What a connection speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge (h2c, gRPC).
    Http2,
    /// TLS; the server name of its ClientHello, when it has one.
    Tls {
        /// SNI host name.
        sni: Option<String>,
    },
    /// Anything else (also: nothing arrived in time, or the client closed first).
    Opaque,
}

impl Detected {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::Http2 => "h2",
            Detected::Tls { .. } => "tls",
            Detected::Opaque => "tcp",
        }
    }
}

/// Classifies the bytes read so far; `None` means "need more".
pub fn classify(buf: &[u8]) -> Option<Detected> {
    let first = *buf.first()?;
    if first == 0x16 {
        if buf.len() < 5 {
            return None;
        }
        if buf[1] != 0x03 {
            return Some(Detected::Opaque);
        }
        let record = 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]));
        if buf.len() < record && buf.len() < MAX_PEEK {
            return None;
        }
        return Some(Detected::Tls {
            sni: client_hello_sni(buf),
        });
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (buf.len() >= H2_PREFACE.len()).then_some(Detected::Http2);
    }
    match buf.iter().take(MAX_METHOD + 1).position(|b| *b == b' ') {
        Some(0) => Some(Detected::Opaque),
        Some(i) if buf[..i].iter().all(u8::is_ascii_uppercase) => Some(Detected::Http1),
        Some(_) => Some(Detected::Opaque),
        None if buf.len() <= MAX_METHOD && buf.iter().all(u8::is_ascii_uppercase) => None,
        None => Some(Detected::Opaque),
    }
}

/// Reads from `io` until the bytes classify, `timeout` passes or the client stops sending;
/// returns the verdict and the bytes read (to replay).
pub async fn detect<R: AsyncRead + Unpin>(
    io: &mut R,
    timeout: Duration,
) -> io::Result<(Detected, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(d) = classify(&buf) {
            return Ok((d, buf.freeze()));
        }
        if buf.len() >= MAX_PEEK {
            return Ok((Detected::Opaque, buf.freeze()));
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(4096);
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok((Detected::Opaque, buf.freeze())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// The SNI host name of a TLS ClientHello record, if it has one.
pub fn client_hello_sni(record: &[u8]) -> Option<String> {
    let mut p = Parser(record.get(5..)?);
    if p.u8()? != 1 {
        return None; // not a ClientHello
    }
    p.skip(3 + 2 + 32)?; // handshake length, client version, random
    let session = usize::from(p.u8()?);
    p.skip(session)?;
    let suites = p.u16()?;
    p.skip(suites)?;
    let compression = usize::from(p.u8()?);
    p.skip(compression)?;
    let mut ext = Parser(p.take_prefixed()?);
    while !ext.0.is_empty() {
        let kind = ext.u16()?;
        let mut data = Parser(ext.take_prefixed()?);
        if kind != 0 {
            continue;
        }
        let mut list = Parser(data.take_prefixed()?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.take_prefixed()?;
            if name_type == 0 {
                return std::str::from_utf8(name).ok().map(str::to_ascii_lowercase);
            }
        }
    }
    None
}

struct Parser<'a>(&'a [u8]);

impl<'a> Parser<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    /// A slice prefixed by its 16-bit length.
    fn take_prefixed(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

/// A connection whose first bytes were already read: reads replay them, then continue from
/// the connection; writes go straight through.
#[derive(Debug)]
pub struct PrefixedIo<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> PrefixedIo<T> {
    /// Replays `prefix` before reading from `inner`.
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }

    /// The same connection replaying `front` first, then what this one had not replayed yet
    /// (for bytes read through it, e.g. by [`detect`]).
    pub fn prepend(self, front: Bytes) -> Self {
        let prefix = if self.prefix.is_empty() {
            front
        } else if front.is_empty() {
            self.prefix
        } else {
            let mut joined = bytes::BytesMut::with_capacity(front.len() + self.prefix.len());
            joined.extend_from_slice(&front);
            joined.extend_from_slice(&self.prefix);
            joined.freeze()
        };
        Self {
            prefix,
            inner: self.inner,
        }
    }

    /// The connection and the bytes not yet replayed.
    pub fn into_parts(self) -> (Bytes, T) {
        (self.prefix, self.inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PrefixedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_read_through_a_prefixed_connection_are_replayed_before_the_rest() {
        // A link's first read brought the header's tail ("abc", kept as the prefix); detection
        // then read "ab" through it: the connection replays "ab", "c", then the socket.
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = PrefixedIo::new(Bytes::from_static(b"abc"), server);
        let mut two = [0u8; 2];
        io.read_exact(&mut two).await.unwrap();
        let mut io = io.prepend(Bytes::copy_from_slice(&two));
        tokio::io::AsyncWriteExt::write_all(&mut client, b"def")
            .await
            .unwrap();
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"abcdef");
        // Nothing read before: the prefix is the bytes read, as is.
        let (_c, s) = tokio::io::duplex(8);
        let io = PrefixedIo::new(Bytes::new(), s).prepend(Bytes::from_static(b"xy"));
        assert_eq!(&io.into_parts().0[..], b"xy");
    }

    /// A minimal TLS 1.2 ClientHello record with one SNI extension.
    pub(crate) fn client_hello(host: &str) -> Vec<u8> {
        let name = host.as_bytes();
        let mut sni = Vec::new();
        sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name);
        let mut ext = vec![0, 0];
        ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sni);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn classifies_protocols() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"\x00\x01garbage"), Some(Detected::Opaque));
        assert_eq!(classify(b" GET"), Some(Detected::Opaque));
        assert_eq!(
            classify(b"AAAAAAAAAAAAAAAAAAAAAAAA"),
            Some(Detected::Opaque)
        );
        let hello = client_hello("Web.Example");
        assert_eq!(classify(&hello[..20]), None);
        assert_eq!(
            classify(&hello),
            Some(Detected::Tls {
                sni: Some("web.example".into())
            })
        );
    }

    #[test]
    fn sni_parser_survives_truncation() {
        let hello = client_hello("a.b");
        for n in 0..hello.len() {
            let _ = client_hello_sni(&hello[..n]);
        }
        assert_eq!(client_hello_sni(&hello).as_deref(), Some("a.b"));
    }

    #[tokio::test]
    async fn detect_times_out_to_opaque_and_replays() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GE")
            .await
            .unwrap();
        let (d, prefix) = detect(&mut server, Duration::from_millis(20))
            .await
            .unwrap();
        assert_eq!((d, &prefix[..]), (Detected::Opaque, &b"GE"[..]));
        let mut io = PrefixedIo::new(prefix, server);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"T")
            .await
            .unwrap();
        let mut got = [0u8; 3];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET");
    }
}
