//! Node-local links: two sidecars of one node talk over a unix stream instead of TCP.
//!
//! A connection from one container's outbound sidecar to another container on the same node
//! otherwise crosses the kernel's TCP stack three times (app → sidecar, sidecar → sidecar
//! through veth, bridge, conntrack and the peer's redirect, sidecar → app); the middle hop is
//! the only one both ends control, so it goes over a unix stream when it can.
//!
//! - Every sidecar of a network on this node gets the same directory (`--local-links DIR`,
//!   made by netd, root only). The inbound side listens on `DIR/<address>.sock` for each of
//!   its container's addresses (`--local-addr`), replacing a stale socket file and removing
//!   its own when it stops.
//! - The outbound side, about to connect to `IP:PORT`, tries `DIR/<IP>.sock` first and falls
//!   back to TCP when nobody listens there (a miss is remembered for [`MISS_TTL`]) and for
//!   ports that every sidecar leaves alone inbound (`--local-exclude-port`: the application
//!   serves those itself, so they must arrive as they were sent).
//! - The first bytes on a link are a PROXY protocol v2 header (`PROXY`, `TCP over IPv4/IPv6`)
//!   carrying what TCP would have: the source (the sending container's address, port 0) and
//!   the original destination `IP:PORT`. The inbound side reads it within a deadline and then
//!   serves the connection exactly like a redirected TCP one to that destination; a header
//!   that is malformed or names an address that is not its container's closes the link.
//!
//! Unix sockets are named in the filesystem, not in a network namespace, so the link works
//! between sidecars that each live in their own container's namespace. Sockets are bound and
//! reached through `/proc/self/fd/<directory fd>/`, so the directory's own path may be longer
//! than a unix socket address allows.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// How long a destination without a listening local socket goes straight to TCP.
pub const MISS_TTL: Duration = Duration::from_secs(1);
/// Remembered misses past which expired ones are swept on the next miss.
const MISS_SWEEP_AT: usize = 256;
/// The PROXY protocol v2 signature.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Fixed part of a v2 header: signature, version/command, family, length.
const FIXED: usize = 16;
/// Longest address block accepted (addresses plus TLVs, which are skipped).
const MAX_BLOCK: usize = 512;

/// The settings of node-local links (from the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// The directory shared by the network's sidecars on this node.
    pub dir: PathBuf,
    /// This container's addresses: the inbound side listens for each.
    pub addrs: Vec<IpAddr>,
    /// Destination ports never sent over a link.
    pub exclude_ports: Vec<u16>,
}

impl LocalConfig {
    /// Checks what can be checked before opening anything.
    pub fn check(&self) -> Result<(), String> {
        if self.dir.is_relative() {
            return Err(format!(
                "--local-links {}: must be an absolute path",
                self.dir.display()
            ));
        }
        Ok(())
    }
}

/// The open link directory: sockets are named through its descriptor.
#[derive(Debug)]
pub struct LinkDir {
    dir: PathBuf,
    via_fd: PathBuf,
    _fd: std::fs::File,
}

impl LinkDir {
    /// Opens `dir` (it must exist: netd makes it, root only).
    pub fn open(dir: &Path) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            via_fd: PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            _fd: fd,
        })
    }

    /// The socket of a container address, as bound and connected to (short, whatever the
    /// directory's path).
    pub fn socket_path(&self, ip: IpAddr) -> PathBuf {
        self.via_fd.join(socket_name(ip))
    }

    /// The same socket under the directory's own path (for messages).
    pub fn display_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(socket_name(ip))
    }
}

fn socket_name(ip: IpAddr) -> String {
    format!("{}.sock", ip.to_canonical())
}

/// Counters of the links (rendered by [`crate::metrics`]).
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Upstream connections opened over a link.
    pub opened: AtomicU64,
    /// Links accepted by the inbound side (header read and valid).
    pub accepted: AtomicU64,
    /// Links closed because of their header (malformed, late, or not for this container).
    pub refused: AtomicU64,
}

/// The outbound side: where links go, and which destinations recently had none.
#[derive(Debug)]
pub struct LocalLinks {
    config: LocalConfig,
    dir: Arc<LinkDir>,
    misses: Mutex<HashMap<IpAddr, Instant>>,
    stats: Arc<LinkStats>,
}

impl LocalLinks {
    /// Links under `config` (whose directory is `dir`), counted in `stats`. The container's
    /// addresses are kept in canonical form (IPv4-mapped IPv6 as IPv4), as headers carry them.
    pub fn new(mut config: LocalConfig, dir: Arc<LinkDir>, stats: Arc<LinkStats>) -> Self {
        for a in &mut config.addrs {
            *a = a.to_canonical();
        }
        Self {
            config,
            dir,
            misses: Mutex::new(HashMap::new()),
            stats,
        }
    }

    /// A link to the sidecar serving `dest`, with its header written; `None` when `dest` is
    /// not a container of this node with a listening sidecar (or its port is excluded), for
    /// the caller to use TCP.
    pub async fn connect(&self, dest: SocketAddr, timeout: Duration) -> Option<UnixStream> {
        let ip = dest.ip().to_canonical();
        // Excluded ports go as sent; calls to this container itself stay off its own inbound
        // side, as over TCP (a marked connect to its own address is never redirected).
        if self.config.exclude_ports.contains(&dest.port()) || self.config.addrs.contains(&ip) {
            return None;
        }
        if let Ok(misses) = self.misses.lock() {
            if misses.get(&ip).is_some_and(|at| at.elapsed() < MISS_TTL) {
                return None;
            }
        }
        let path = self.dir.socket_path(ip);
        let header = encode_header(self.source_for(ip), SocketAddr::new(ip, dest.port()));
        let attempt = async {
            let mut s = UnixStream::connect(&path).await?;
            s.write_all(&header).await?;
            Ok::<_, io::Error>(s)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(s)) => {
                self.stats.opened.fetch_add(1, Ordering::Relaxed);
                Some(s)
            }
            outcome => {
                if let Ok(Err(e)) = &outcome {
                    if e.kind() != io::ErrorKind::NotFound {
                        let path = self.dir.display_path(ip);
                        tracing::debug!(path = %path.display(), error = %e, "local link refused; using TCP");
                    }
                }
                if let Ok(mut misses) = self.misses.lock() {
                    // Swept only when it grows: a sweep walks every remembered miss.
                    if misses.len() >= MISS_SWEEP_AT {
                        misses.retain(|_, at| at.elapsed() < MISS_TTL);
                    }
                    misses.insert(ip, Instant::now());
                }
                None
            }
        }
    }

    /// This container's addresses (canonical) and the ports that never take a link: what the
    /// inbound side checks a link's header against.
    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<LinkStats> {
        &self.stats
    }

    /// The source a link names: this container's address of the destination's family.
    fn source_for(&self, dest: IpAddr) -> SocketAddr {
        let ip = self
            .config
            .addrs
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == dest.is_ipv4())
            .unwrap_or(match dest {
                IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
            });
        SocketAddr::new(ip, 0)
    }
}

/// A listening socket of the inbound side; its file is removed on drop if it is still the one
/// this listener bound (a successor may have replaced it).
#[derive(Debug)]
pub struct BoundSocket {
    /// The listener.
    pub listener: UnixListener,
    /// Its path under the directory's own name.
    pub path: PathBuf,
    via_fd: PathBuf,
    inode: Option<(u64, u64)>,
    _dir: Arc<LinkDir>,
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        let now = std::fs::symlink_metadata(&self.via_fd).map(|m| (m.dev(), m.ino()));
        if now.ok() == self.inode {
            let _ = std::fs::remove_file(&self.via_fd);
        }
    }
}

/// Binds the inbound side's socket for `ip` in `dir`, replacing a stale file (only a
/// socket file: anything else at that path is an error).
pub fn bind(dir: &Arc<LinkDir>, ip: IpAddr) -> io::Result<BoundSocket> {
    let path = dir.socket_path(ip);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(&path)?
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket",
                    dir.display_path(ip).display()
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    let inode = std::fs::symlink_metadata(&path)
        .map(|m| (m.dev(), m.ino()))
        .ok();
    Ok(BoundSocket {
        listener,
        path: dir.display_path(ip),
        via_fd: path,
        inode,
        _dir: dir.clone(),
    })
}

/// The addresses a link's header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkHeader {
    /// The sending container's address.
    pub source: SocketAddr,
    /// The destination the sender connected for.
    pub dest: SocketAddr,
}

/// Why a link was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Not a PROXY v2 header.
    #[error("not a PROXY protocol v2 header")]
    Signature,
    /// A version, command or family this side does not take.
    #[error("unsupported PROXY header (version/command {0:#04x}, family {1:#04x})")]
    Unsupported(u8, u8),
    /// The address block is shorter than its family needs, or too long.
    #[error("PROXY header address block of {0} bytes")]
    Length(usize),
    /// The connection closed or failed before a whole header came.
    #[error("connection ended inside the header")]
    Truncated,
    /// The header did not come in time.
    #[error("no header within {0:?}")]
    Timeout(Duration),
}

/// The header for a link from `source` to `dest` (both of `dest`'s family; a source of the
/// other family is sent as unspecified).
pub fn encode_header(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, PROXY
    match dest.ip() {
        IpAddr::V4(d) => {
            let s = match source.ip() {
                IpAddr::V4(s) => s,
                IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            };
            out.push(0x11); // TCP over IPv4
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        IpAddr::V6(d) => {
            let s = match source.ip() {
                IpAddr::V6(s) => s,
                IpAddr::V4(s) => s.to_ipv6_mapped(),
            };
            out.push(0x21); // TCP over IPv6
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&dest.port().to_be_bytes());
    out
}

/// Parses a whole header: `Ok(None)` when `buf` does not hold all of it yet, else the header
/// and its length.
pub fn decode_header(buf: &[u8]) -> Result<Option<(LinkHeader, usize)>, HeaderError> {
    let n = buf.len().min(SIGNATURE.len());
    if buf[..n] != SIGNATURE[..n] {
        return Err(HeaderError::Signature);
    }
    if buf.len() < FIXED {
        return Ok(None);
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let need = match (ver_cmd, family) {
        (0x21, 0x11) => 12,
        (0x21, 0x21) => 36,
        _ => return Err(HeaderError::Unsupported(ver_cmd, family)),
    };
    if len < need || len > MAX_BLOCK {
        return Err(HeaderError::Length(len));
    }
    if buf.len() < FIXED + len {
        return Ok(None);
    }
    let b = &buf[FIXED..FIXED + len];
    let port = |at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    let header = if need == 12 {
        let ip = |at: usize| IpAddr::from([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        LinkHeader {
            source: SocketAddr::new(ip(0), port(8)),
            dest: SocketAddr::new(ip(4), port(10)),
        }
    } else {
        let ip = |at: usize| {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[at..at + 16]);
            IpAddr::from(o).to_canonical()
        };
        LinkHeader {
            source: SocketAddr::new(ip(0), port(32)),
            dest: SocketAddr::new(ip(16), port(34)),
        }
    };
    Ok(Some((header, FIXED + len)))
}

/// Reads a link's header within `timeout`; the bytes that came after it are returned for the
/// connection's first reads.
pub async fn read_header(
    stream: &mut UnixStream,
    timeout: Duration,
) -> Result<(LinkHeader, Bytes), HeaderError> {
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            if let Some((header, used)) = decode_header(&buf)? {
                let rest = buf.split_off(used).freeze();
                return Ok((header, rest));
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Err(HeaderError::Truncated),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(HeaderError::Timeout(timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory removed with everything in it when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!("netd-local-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn headers_round_trip_for_both_families() {
        let cases = [
            ("10.89.0.2:0", "10.89.0.3:8080"),
            ("[fd00:89::2]:0", "[fd00:89::3]:443"),
        ];
        for (s, d) in cases {
            let (s, d): (SocketAddr, SocketAddr) = (s.parse().unwrap(), d.parse().unwrap());
            let mut bytes = encode_header(s, d);
            let len = bytes.len();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let (h, used) = decode_header(&bytes).unwrap().unwrap();
            assert_eq!((h.source, h.dest, used), (s, d, len));
            // Any prefix of the header is "not yet", never an error.
            for cut in 0..len {
                assert_eq!(decode_header(&bytes[..cut]), Ok(None), "cut at {cut}");
            }
        }
        // A source of the other family: IPv4 as mapped IPv6 (read back canonical), IPv6 as
        // unspecified IPv4.
        let d6: SocketAddr = "[fd00::3]:80".parse().unwrap();
        let (h, _) = decode_header(&encode_header("10.0.0.1:0".parse().unwrap(), d6))
            .unwrap()
            .unwrap();
        assert_eq!(h.source, "10.0.0.1:0".parse().unwrap());
        let d4: SocketAddr = "10.0.0.3:80".parse().unwrap();
        let (h, _) = decode_header(&encode_header("[fd00::1]:0".parse().unwrap(), d4))
            .unwrap()
            .unwrap();
        assert_eq!(h.source, "0.0.0.0:0".parse().unwrap());
    }

    #[test]
    fn bad_headers_are_refused() {
        let good = encode_header(
            "10.0.0.1:0".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        assert_eq!(
            decode_header(b"GET / HTTP/1.1\r\n"),
            Err(HeaderError::Signature)
        );
        // PROXY v1 text, LOCAL command, v1 version nibble, UDP, unix family.
        assert_eq!(
            decode_header(b"PROXY TCP4 1.1.1.1"),
            Err(HeaderError::Signature)
        );
        for (at, value) in [(12, 0x20u8), (12, 0x11), (13, 0x12), (13, 0x31)] {
            let mut b = good.clone();
            b[at] = value;
            assert!(
                matches!(decode_header(&b), Err(HeaderError::Unsupported(..))),
                "byte {at} = {value:#x}"
            );
        }
        // Too short for the family, or absurdly long.
        for len in [4u16, 11, 513, 0xffff] {
            let mut b = good.clone();
            b[14..16].copy_from_slice(&len.to_be_bytes());
            assert_eq!(decode_header(&b), Err(HeaderError::Length(len.into())));
        }
        // A longer block (TLVs) is skipped.
        let mut b = good.clone();
        b[14..16].copy_from_slice(&15u16.to_be_bytes());
        b.extend_from_slice(&[0x04, 0, 0, 0xaa]);
        let (_, used) = decode_header(&b).unwrap().unwrap();
        assert_eq!(used, FIXED + 15);
    }

    #[test]
    fn a_directory_too_long_for_socket_addresses_still_works() {
        let relative = LocalConfig {
            dir: PathBuf::from("l"),
            addrs: vec![],
            exclude_ports: vec![],
        };
        assert!(relative.check().unwrap_err().contains("absolute"));
        // 200 bytes of directory: far past the 107 of a unix socket address.
        let top = TempDir::new("long");
        let long = top.path().join("d".repeat(100)).join("e".repeat(100));
        std::fs::create_dir_all(&long).unwrap();
        let dir = Arc::new(LinkDir::open(&long).unwrap());
        let ip: IpAddr = "fd00:89::2".parse().unwrap();
        assert_eq!(dir.display_path(ip), long.join("fd00:89::2.sock"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let bound = bind(&dir, ip).unwrap();
            assert!(long.join("fd00:89::2.sock").exists());
            let _c = UnixStream::connect(dir.socket_path(ip)).await.unwrap();
            bound.listener.accept().await.unwrap();
            drop(bound);
            assert!(!long.join("fd00:89::2.sock").exists());
        });
        assert!(LinkDir::open(&top.path().join("missing")).is_err());
    }

    #[tokio::test]
    async fn a_link_falls_back_when_nobody_listens_and_remembers_it() {
        let dir = TempDir::new("fallback");
        let stats = Arc::new(LinkStats::default());
        let config = LocalConfig {
            dir: dir.path().to_path_buf(),
            addrs: vec!["127.0.0.1".parse().unwrap()],
            exclude_ports: vec![9],
        };
        let ldir = Arc::new(LinkDir::open(dir.path()).unwrap());
        let links = LocalLinks::new(config.clone(), ldir.clone(), stats.clone());
        let dest: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let t = Duration::from_secs(1);
        assert!(links.connect(dest, t).await.is_none());
        // Now a sidecar listens, but the miss is remembered for a while.
        let bound = bind(&ldir, dest.ip()).unwrap();
        assert!(links.connect(dest, t).await.is_none());
        links.misses.lock().unwrap().clear();
        let mut client = links.connect(dest, t).await.unwrap();
        let (mut server, _) = bound.listener.accept().await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let (h, rest) = read_header(&mut server, t).await.unwrap();
        assert_eq!(h.dest, dest);
        assert_eq!(h.source, "127.0.0.1:0".parse().unwrap());
        let mut more = vec![0u8; 5 - rest.len()];
        server.read_exact(&mut more).await.unwrap();
        assert_eq!([&rest[..], &more[..]].concat(), b"hello");
        assert_eq!(stats.opened.load(Ordering::Relaxed), 1);
        // An excluded port never takes a link, nor does a call to this container itself.
        assert!(links
            .connect(SocketAddr::new(dest.ip(), 9), t)
            .await
            .is_none());
        let own = bind(&ldir, "127.0.0.1".parse().unwrap()).unwrap();
        assert!(links
            .connect("127.0.0.1:80".parse().unwrap(), t)
            .await
            .is_none());
        drop(own);
        // The socket file goes with its listener, unless it was replaced meanwhile.
        let path = bound.path.clone();
        assert_eq!(path, dir.path().join("127.0.0.2.sock"));
        drop(bound);
        assert!(!path.exists());
        let first = bind(&ldir, dest.ip()).unwrap();
        let second = bind(&ldir, dest.ip()).unwrap();
        drop(first);
        assert!(path.exists());
        drop(second);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_silent_or_short_link_gets_no_header() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let t = Duration::from_millis(50);
        assert_eq!(read_header(&mut a, t).await, Err(HeaderError::Timeout(t)));
        let (mut a2, mut b2) = UnixStream::pair().unwrap();
        b2.write_all(&SIGNATURE[..5]).await.unwrap();
        drop(b2);
        assert_eq!(read_header(&mut a2, t).await, Err(HeaderError::Truncated));
        drop(b);
    }

    #[test]
    fn bind_refuses_to_replace_a_regular_file() {
        let dir = TempDir::new("regular");
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        std::fs::write(dir.path().join("10.0.0.1.sock"), b"x").unwrap();
        let ldir = Arc::new(LinkDir::open(dir.path()).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let err = bind(&ldir, ip).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
    }
}
