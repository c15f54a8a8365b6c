//! Socket reads that remember a drained socket, as nginx does: a read that returns less than
//! the room it was given emptied the kernel's receive queue, so the socket's readiness is
//! cleared right away and the next read waits for the reactor instead of asking the kernel
//! (an `EAGAIN` read: one wasted syscall per request on each side of a hop).
//!
//! Clearing is safe because tokio only clears readiness that is still the one observed
//! before the read (its tick): data (or a FIN) that arrives later raises a new edge in epoll
//! and sets readiness again, and a closed read side is never cleared. A FIN already queued
//! behind the data read is reported by the same readiness, so it is not lost.
//!
//! [`ReadyIo`] wraps a server-side connection for hyper; [`poll_recv`] is what the upstream
//! HTTP/1.1 client ([`super::h1`]) reads with.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Reads what `stream` has into `dst` without waiting: `WouldBlock` when it has nothing (then
/// its readiness is cleared), `Ok(0)` at end of stream. A short read clears readiness too.
pub fn try_recv(stream: &TcpStream, dst: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    let mut short = None;
    let room = dst.len();
    let read = stream.try_io(Interest::READABLE, || {
        let n = SockRef::from(stream).recv(dst)?;
        if n > 0 && n < room {
            // Drained: tell tokio "would block" so it clears the readiness it saw.
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok(n),
        None => read,
    }
}

/// [`try_recv`], waiting for readiness (registering `cx`'s waker) when there is nothing.
pub fn poll_recv(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    dst: &mut [MaybeUninit<u8>],
) -> Poll<io::Result<usize>> {
    loop {
        match try_recv(stream, dst) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready!(stream.poll_read_ready(cx))?;
            }
            r => return Poll::Ready(r),
        }
    }
}

/// A TCP connection whose reads clear readiness when they drain the socket (see the module
/// documentation); writes are the stream's own.
#[derive(Debug)]
pub struct ReadyIo(TcpStream);

impl ReadyIo {
    /// Wraps `stream`.
    pub fn new(stream: TcpStream) -> Self {
        Self(stream)
    }
}

impl AsyncRead for ReadyIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: `recv` only writes into the unfilled part, never de-initializes it.
        let unfilled = unsafe { buf.unfilled_mut() };
        let n = ready!(poll_recv(&self.0, cx, unfilled))?;
        // SAFETY: the kernel wrote `n` bytes at the start of the unfilled part.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ReadyIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn short_reads_then_more_data_then_eof_are_all_seen() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut io = ReadyIo::new(server);
        let mut buf = [0u8; 64];
        client.write_all(b"hello").await.unwrap();
        // A short read: readiness cleared, yet the next bytes still wake the reader.
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        let later = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            client.write_all(b"world").await.unwrap();
            // Data and FIN together: the FIN is not lost behind the short read.
            client.write_all(b"!").await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"world!");
        io.write_all(b"bye").await.unwrap();
        let mut client = later.await.unwrap();
        let mut back = Vec::new();
        drop(io);
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"bye");
    }
}
