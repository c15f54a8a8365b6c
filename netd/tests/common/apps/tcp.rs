//! Opaque TCP: a binary echo that answers the client's half-close, a server-first greeter
//! that half-closes first, and their clients.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{accept_loop, bounded, Failed, IO_TIMEOUT};

/// Serves a binary echo on `listener` (see [`echo`]).
pub fn serve_echo(listener: TcpListener, name: &str) {
    let name: Arc<str> = name.into();
    accept_loop(listener, move |s| echo(s, name.clone()));
}

/// A binary echo on `io`: every byte is sent back as it arrives; after the client's
/// half-close, a last record `0xff <name> <byte count>` and the close.
pub(super) async fn echo(mut io: impl AsyncRead + AsyncWrite + Unpin, name: Arc<str>) {
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    loop {
        match tokio::time::timeout(IO_TIMEOUT, io.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                total += n;
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
    let mut tail = vec![0xff];
    tail.extend_from_slice(format!("{name} {total}").as_bytes());
    let _ = io.write_all(&tail).await;
    let _ = io.shutdown().await;
}

/// What a [`serve_greeter`] received: the replica's name and the bytes, per connection.
pub type Received = Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// Serves a server-first protocol on `listener`: a greeting `<name>\n` and at once the
/// server's half-close; then everything the client sends, to its half-close, goes to `got`.
pub fn serve_greeter(listener: TcpListener, name: &str, got: Received) {
    let name: Arc<str> = name.into();
    accept_loop(listener, move |mut s| {
        let (name, got) = (name.clone(), got.clone());
        async move {
            if s.write_all(format!("{name}\n").as_bytes()).await.is_err()
                || s.shutdown().await.is_err()
            {
                return;
            }
            let mut bytes = Vec::new();
            if let Ok(Ok(_)) = tokio::time::timeout(IO_TIMEOUT, s.read_to_end(&mut bytes)).await {
                if let Ok(mut got) = got.lock() {
                    got.push((name.to_string(), bytes));
                }
            }
        }
    });
}

/// The client of [`serve_greeter`] over `stream`: reads the greeting to the server's
/// half-close, then sends `payload` and half-closes; the greeting, once the server closed.
pub async fn greeted(mut stream: TcpStream, payload: &[u8]) -> Result<String, Failed> {
    let mut greeting = Vec::new();
    bounded("read the greeting", stream.read_to_end(&mut greeting)).await?;
    bounded(
        "write after the server's half-close",
        stream.write_all(payload),
    )
    .await?;
    bounded("half-close", stream.shutdown()).await?;
    let mut rest = [0u8; 1];
    let n = bounded("wait for the close", stream.read(&mut rest)).await?;
    if n != 0 {
        return Err("bytes after the server's half-close".into());
    }
    Ok(String::from_utf8_lossy(&greeting).trim_end().to_string())
}

/// Over `stream`: `first` written and its echo read, then `second` written and the write
/// side shut down; returns everything read after the first echo, to the server's close.
pub async fn echo_with_half_close(
    mut stream: TcpStream,
    first: &[u8],
    second: &[u8],
) -> Result<Vec<u8>, Failed> {
    bounded("write", stream.write_all(first)).await?;
    let mut echo = vec![0u8; first.len()];
    bounded("read the echo", stream.read_exact(&mut echo)).await?;
    if echo != first {
        return Err(format!("echo differs: sent {first:?}, got {echo:?}"));
    }
    bounded("write", stream.write_all(second)).await?;
    bounded("half-close", stream.shutdown()).await?;
    let mut rest = Vec::new();
    bounded("read after the half-close", stream.read_to_end(&mut rest)).await?;
    Ok(rest)
}
