//! One probe of one endpoint: a TCP connect, or an HTTP/1.1 `GET` with `Connection: close`
//! whose status line decides (2xx and 3xx are healthy). Every probe is bounded by the check's
//! timeout as a whole (connect, request, status line).
//!
//! The HTTP client is deliberately tiny: the probe needs the status code and nothing else, and
//! a hand-written request line keeps the exact bytes on the wire obvious. After the status
//! line, the rest of a small answer is drained (bounded) so the server closes first and the
//! TIME_WAIT state lands on its side. TCP probes close with a reset (zero linger) for the same
//! reason: thousands of probes a minute must not pile up TIME_WAIT sockets on the host.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use netd_config::netd::{HealthCheck, HealthCheckKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Longest status line read, in bytes.
const MAX_STATUS_LINE: usize = 1024;
/// Most bytes drained after the status line before closing.
const MAX_DRAIN: usize = 16 * 1024;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe did not finish within the check's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The TCP connection could not be established.
    #[error("connect failed: {0}")]
    Connect(io::Error),
    /// Sending the request or reading the answer failed.
    #[error("HTTP exchange failed: {0}")]
    Io(io::Error),
    /// The answer is not an HTTP/1.x status line.
    #[error("not an HTTP response: {0:?}")]
    BadResponse(String),
    /// The server answered with a status other than 2xx or 3xx.
    #[error("HTTP status {0}")]
    Status(u16),
}

/// Probes `target` as `check` says.
pub async fn probe(check: &HealthCheck, target: SocketAddr) -> Result<(), ProbeError> {
    let timeout = Duration::from_millis(check.timeout_ms);
    let deadline = Instant::now() + timeout;
    let run = async {
        match check.kind {
            HealthCheckKind::Tcp => probe_tcp(target).await,
            HealthCheckKind::Http => probe_http(target, check.http_path(), deadline).await,
        }
    };
    tokio::time::timeout_at(deadline, run)
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

async fn probe_tcp(target: SocketAddr) -> Result<(), ProbeError> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(ProbeError::Connect)?;
    // Failing to set linger only costs a TIME_WAIT socket.
    let _ = stream.set_zero_linger();
    Ok(())
}

async fn probe_http(target: SocketAddr, path: &str, deadline: Instant) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(ProbeError::Connect)?;
    stream
        .write_all(request(target, path).as_bytes())
        .await
        .map_err(ProbeError::Io)?;
    let mut buf = Vec::with_capacity(256);
    let line_end = loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            break i;
        }
        if buf.len() >= MAX_STATUS_LINE {
            return Err(ProbeError::BadResponse(shown(&buf)));
        }
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await.map_err(ProbeError::Io)?;
        if n == 0 {
            return Err(ProbeError::BadResponse(shown(&buf)));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let code = parse_status_line(&buf[..line_end])
        .ok_or_else(|| ProbeError::BadResponse(shown(&buf[..line_end])))?;
    // The verdict is known; draining is only about who closes first, so its errors and its
    // deadline do not matter.
    let drained = buf.len();
    let _ = tokio::time::timeout_at(
        deadline,
        drain(&mut stream, MAX_DRAIN.saturating_sub(drained)),
    )
    .await;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(ProbeError::Status(code))
    }
}

/// The request: HTTP/1.1 needs `Host`; `Connection: close` keeps the exchange one-shot.
fn request(target: SocketAddr, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: netd-health/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Reads until EOF or `limit` bytes.
async fn drain(stream: &mut TcpStream, mut limit: usize) {
    let mut chunk = [0u8; 4096];
    while limit > 0 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => limit = limit.saturating_sub(n),
        }
    }
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return None;
    }
    let code: u16 = code.parse().ok()?;
    (100..600).contains(&code).then_some(code)
}

fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 302"), Some(302));
        assert_eq!(
            parse_status_line(b"HTTP/1.1 503 Service Unavailable"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"HTTP/2 200"), None);
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 099 x"), None);
    }

    #[test]
    fn request_line() {
        let r = request("[::1]:8080".parse().unwrap(), "/healthz");
        assert!(
            r.starts_with("GET /healthz HTTP/1.1\r\nHost: [::1]:8080\r\n"),
            "{r}"
        );
        assert!(r.ends_with("Connection: close\r\n\r\n"), "{r}");
    }

    /// A server on loopback that answers every connection with `answer` after reading the
    /// request head; returns its address and the request heads it saw.
    async fn server(answer: &'static [u8]) -> (SocketAddr, tokio::sync::mpsc::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut head = Vec::new();
                let mut b = [0u8; 256];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned()).await;
                let _ = s.write_all(answer).await;
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn http_probe_verdicts() {
        let mut check: HealthCheck = "http:/healthz".parse().unwrap();
        let (ok, mut seen) = server(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        probe(&check, ok).await.unwrap();
        let head = seen.recv().await.unwrap();
        assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
        let (bad, _) = server(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n").await;
        assert!(matches!(
            probe(&check, bad).await,
            Err(ProbeError::Status(500))
        ));
        let (junk, _) = server(b"hello\r\n").await;
        assert!(matches!(
            probe(&check, junk).await,
            Err(ProbeError::BadResponse(_))
        ));
        // A server that accepts and never answers: the timeout decides.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        check.timeout_ms = 100;
        let start = std::time::Instant::now();
        let r = probe(&check, silent.local_addr().unwrap()).await;
        assert!(matches!(r, Err(ProbeError::Timeout(_))), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn tcp_probe_verdicts() {
        let check: HealthCheck = "tcp".parse().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        probe(&check, addr).await.unwrap();
        drop(l);
        assert!(matches!(
            probe(&check, addr).await,
            Err(ProbeError::Connect(_))
        ));
    }
}
