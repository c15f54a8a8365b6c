//! Reporting attachments to the netd daemon, when one runs.
//!
//! After a successful ADD the plugin tells netd who the container is (id, namespace,
//! addresses, names, `NETD_SERVICE`), and after DEL that it is gone, over netd's unix socket
//! (`POST /v1/attachments`, `DELETE /v1/attachments/<id>/<ifname>`). This is best effort by
//! design: with no daemon (no socket), or a daemon that does not answer within a short bound,
//! plain networking still works and the CNI operation succeeds; the reason goes to stderr.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::state::Attachment;

/// The daemon's default API socket.
pub const DEFAULT_SOCKET: &str = "/run/netd/netd.sock";
/// How long the plugin waits for netd at most, per request.
const TIMEOUT: Duration = Duration::from_millis(1500);

/// Where netd listens: `NETD_SOCKET`, else the default.
pub fn socket_path() -> PathBuf {
    std::env::var_os("NETD_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Tells netd about a new attachment; `service` is `NETD_SERVICE` from `CNI_ARGS`.
pub fn attached(socket: &Path, network: &str, att: &Attachment, service: Option<&str>) {
    let mut body = json!({
        "container_id": att.container_id,
        "ifname": att.ifname,
        "network": network,
        "netns": att.netns,
        "ips": att.ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
        "names": att.names,
    });
    if let Some(s) = service {
        body["service"] = json!(s);
    }
    report(socket, "POST", "/v1/attachments", Some(&body));
}

/// Tells netd an attachment is gone.
pub fn detached(socket: &Path, container_id: &str, ifname: &str) {
    let path = format!("/v1/attachments/{container_id}/{ifname}");
    report(socket, "DELETE", &path, None);
}

fn report(socket: &Path, method: &str, path: &str, body: Option<&Value>) {
    if !socket.exists() {
        return; // no daemon on this host: nothing to tell
    }
    match request(socket, method, path, body) {
        Ok(status) if (200..300).contains(&status) || (method == "DELETE" && status == 404) => {}
        Ok(status) => eprintln!(
            "netd-cni: netd answered {status} to {method} {path}; networking is set up regardless"
        ),
        Err(e) => eprintln!(
            "netd-cni: could not reach netd on {}: {e}; networking is set up regardless",
            socket.display()
        ),
    }
}

/// One HTTP/1.1 request over the unix socket; returns the status code.
fn request(socket: &Path, method: &str, path: &str, body: Option<&Value>) -> std::io::Result<u16> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: netd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(payload.as_bytes())?;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let n = stream.read(&mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let line = std::str::from_utf8(&buf[..got]).unwrap_or_default();
    line.strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {line:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn posts_the_attachment_and_reads_the_status() {
        let dir = std::env::temp_dir().join(format!("netd-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("netd.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&req).contains("\"names\"") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            String::from_utf8(req).unwrap()
        });
        let att = Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            ips: vec!["10.0.0.2/24".parse().unwrap()],
            names: vec!["web".into()],
            ..Attachment::default()
        };
        let body = json!({"container_id": att.container_id, "names": att.names});
        assert_eq!(
            request(&sock, "POST", "/v1/attachments", Some(&body)).unwrap(),
            201
        );
        let req = server.join().unwrap();
        assert!(
            req.starts_with("POST /v1/attachments HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("\"container_id\":\"c1\""), "{req}");
        // No socket: silently nothing (must not block or panic).
        attached(&dir.join("missing.sock"), "n", &att, None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
