//! Driving the mesh the way an unmodified application does, over plain std sockets: a
//! keep-alive HTTP/1.1 client, a keep-alive HTTP/1.1 server answering one fixed body, a
//! sidecar admin request, and a Prometheus sample reader. `netd-demo` and the end-to-end
//! tests use them from inside container namespaces (call them on a thread that entered one).
//!
//! Deliberately small: GET only, `Content-Length` bodies, no chunked encoding; everything
//! blocking with timeouts, so a broken path fails instead of hanging.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for a connect or a read.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One keep-alive HTTP/1.1 connection, as a plain client holds it.
#[derive(Debug)]
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl KeepAlive {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> io::Result<KeepAlive> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        // Requests are one write each; without this, Nagle holds each one back until the
        // peer's delayed ACK of the previous response (~40 ms a request).
        s.set_nodelay(true)?;
        Ok(KeepAlive {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }

    /// `GET /` with `Host: host` on this connection: the status and the body.
    pub fn get(&mut self, host: &str) -> io::Result<(u16, String)> {
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        self.writer.write_all(request.as_bytes())?;
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if self.reader.read_line(&mut h)? == 0 {
                return Err(bad("connection closed in the response head".into()));
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v
                        .trim()
                        .parse()
                        .map_err(|_| bad(format!("bad content-length {v:?}")))?;
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// What a run of requests got: answers by body (200 only), and failures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// How many times each body answered.
    pub answers: BTreeMap<String, usize>,
    /// Requests without a 200 answer.
    pub failed: usize,
}

impl Tally {
    /// Adds another run's counts.
    pub fn add(&mut self, other: Tally) {
        for (k, v) in other.answers {
            *self.answers.entry(k).or_insert(0) += v;
        }
        self.failed += other.failed;
    }

    /// Requests answered.
    pub fn ok(&self) -> usize {
        self.answers.values().sum()
    }
}

/// `n` requests for `host` over one keep-alive connection to `addr`. A failed request ends
/// its connection; the next request opens a new one.
pub fn requests(addr: SocketAddr, host: &str, n: usize) -> Tally {
    let mut tally = Tally::default();
    let mut conn = None;
    for _ in 0..n {
        if conn.is_none() {
            conn = KeepAlive::connect(addr).ok();
        }
        match conn.as_mut().map(|c| c.get(host)) {
            Some(Ok((200, body))) => *tally.answers.entry(body).or_insert(0) += 1,
            _ => {
                tally.failed += 1;
                conn = None;
            }
        }
    }
    tally
}

/// Serves keep-alive HTTP/1.1 on `listener`, answering every request with `body`, one thread
/// per connection, until `stop` is set (checked at each accept).
pub fn serve(listener: TcpListener, body: String, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let body = body.clone();
            std::thread::spawn(move || serve_connection(conn, &body));
        }
    });
}

fn serve_connection(conn: TcpStream, body: &str) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        // A request head: lines up to the empty one (GETs only, no body).
        let mut any = false;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" || line == "\n" => break,
                Ok(_) => any = true,
            }
        }
        if !any {
            continue;
        }
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// `GET path` on a sidecar's admin listener (`addr`, e.g. `127.0.0.1:15000` from inside its
/// container): status and body, `None` when it does not answer.
pub fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// The sum of the samples of metric `name` in Prometheus text whose labels contain every one
/// of `labels` (e.g. `direction="outbound"`).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> u64 {
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_client_and_server_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        serve(listener, "hi".into(), stop.clone());
        let t = requests(addr, "x", 5);
        assert_eq!((t.answers.get("hi").copied(), t.failed), (Some(5), 0));
        stop.store(true, Ordering::Relaxed);
    }

    #[test]
    fn metric_sums_matching_samples() {
        let text = "# HELP x\nreq_total{d=\"in\",s=\"a\"} 3\nreq_total{d=\"in\",s=\"b\"} 4\n\
                    req_total{d=\"out\",s=\"a\"} 5\nreq_total_other{d=\"in\"} 9\n";
        assert_eq!(metric(text, "req_total", &["d=\"in\""]), 7);
        assert_eq!(metric(text, "req_total", &[]), 12);
        assert_eq!(metric(text, "nope", &[]), 0);
    }
}
