//! Per-network state on disk: the network lock that serialises plugin invocations on one
//! network, and one attachment record per (container, interface).
//!
//! ADD writes the record *before* it changes anything, and completes it at the end; so a plugin
//! killed mid-ADD leaves a record from which DEL or GC can undo whatever it had done. Records
//! are replaced atomically (temp file + rename) but not fsynced: what they describe (veths,
//! rules) does not outlive a power loss either.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::nat::PortMap;

/// An exclusive lock on one network, released on drop (or when the process dies).
#[derive(Debug)]
pub struct NetworkLock {
    _file: File,
}

/// The state directory of one network: `<dataDir>/<network>/`.
#[derive(Debug, Clone)]
pub struct NetworkDir {
    root: PathBuf,
}

/// Everything DEL and GC need to undo an attachment, and CHECK to verify it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS` at ADD time.
    pub netns: String,
    /// Bridge the host end is attached to.
    pub bridge: String,
    /// Host end of the veth pair.
    pub host_veth: String,
    /// MAC of the container interface, once known.
    #[serde(default)]
    pub mac: Option<String>,
    /// Addresses handed out, once known.
    #[serde(default)]
    pub ips: Vec<IpNet>,
    /// Port mappings programmed (or about to be).
    #[serde(default)]
    pub ports: Vec<PortMap>,
    /// Whether macspoofchk elements were added.
    #[serde(default)]
    pub macspoofchk: bool,
    /// `ipam.type` used, so DEL releases through the same allocator.
    #[serde(default)]
    pub ipam_type: String,
    /// Names the runtime gave (`aliases`, `K8S_POD_NAME`), kept for netd.
    #[serde(default)]
    pub names: Vec<String>,
    /// False until ADD finished.
    #[serde(default)]
    pub complete: bool,
}

impl NetworkDir {
    /// The directory for `network` under `data_dir` (created on first use).
    pub fn new(data_dir: &Path, network: &str) -> NetworkDir {
        NetworkDir {
            root: data_dir.join(network),
        }
    }

    /// `<dataDir>/<network>`.
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn attachments_dir(&self) -> PathBuf {
        self.root.join("attachments")
    }

    fn ensure(&self) -> Result<(), Error> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.attachments_dir())
            .map_err(|e| Error::io(format!("cannot create {}", self.root.display()), e))
    }

    /// Takes the network's exclusive lock, waiting for other invocations to finish.
    pub fn lock(&self) -> Result<NetworkLock, Error> {
        self.ensure()?;
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        loop {
            // SAFETY: flock on a file descriptor we own; the lock is released when it closes.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(NetworkLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io(format!("cannot lock {}", path.display()), err));
            }
        }
    }

    fn record_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.attachments_dir()
            .join(format!("{container_id}.{}.json", escape(ifname)))
    }

    /// Reads the record of (container, interface), if any.
    pub fn load(&self, container_id: &str, ifname: &str) -> Result<Option<Attachment>, Error> {
        read_record(&self.record_path(container_id, ifname))
    }

    /// Writes (atomically replaces) a record.
    pub fn save(&self, a: &Attachment) -> Result<(), Error> {
        self.ensure()?;
        let path = self.record_path(&a.container_id, &a.ifname);
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec(a).map_err(|e| Error::io("encode record", e.into()))?;
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&body)?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
    }

    /// Removes a record; missing is fine.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<(), Error> {
        let path = self.record_path(container_id, ifname);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("cannot remove {}", path.display()), e)),
        }
    }

    /// Every record of the network.
    pub fn all(&self) -> Result<Vec<Attachment>, Error> {
        let dir = self.attachments_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("cannot list {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                if let Some(a) = read_record(&path)? {
                    out.push(a);
                }
            }
        }
        Ok(out)
    }
}

impl Attachment {
    /// Container addresses, without prefix.
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.ips.iter().map(IpNet::addr).collect()
    }
}

fn read_record(path: &Path) -> Result<Option<Attachment>, Error> {
    match fs::read(path) {
        Ok(body) => serde_json::from_slice(&body).map(Some).map_err(|e| {
            Error::io(
                format!("corrupt attachment record {}", path.display()),
                e.into(),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
    }
}

/// Interface names may hold characters that are awkward in file names; keep them readable.
fn escape(ifname: &str) -> String {
    ifname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '~'
            }
        })
        .collect()
}

/// The host-side veth name for an attachment: deterministic, so DEL and GC find it without a
/// record; 15 characters at most.
pub fn host_veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    let h = attachment_hash("", network, container_id, ifname);
    format!("vnd{:012x}", h & 0xffff_ffff_ffff)
}

/// Prefix of the alias netd-cni gives the host end of each veth.
const ALIAS_PREFIX: &str = "netd-cni:";

/// The alias of an attachment's host veth, `netd-cni:<network>/<container id>/<ifname>`: it
/// names the owner so that GC can recognise the interface even when its record is lost (the
/// name is a hash). None of the three may contain `/`; an alias too long for the kernel is
/// not set (`IFALIASZ` is 256 counting the attribute's NUL: 254 characters at most — with 255,
/// attaching the port would fail).
pub fn veth_alias(network: &str, container_id: &str, ifname: &str) -> Option<String> {
    let alias = format!("{ALIAS_PREFIX}{network}/{container_id}/{ifname}");
    (alias.len() <= 254
        && ![network, container_id, ifname]
            .iter()
            .any(|p| p.contains('/')))
    .then_some(alias)
}

/// The `(network, container id, ifname)` an alias made by [`veth_alias`] names.
pub fn parse_veth_alias(alias: &str) -> Option<(&str, &str, &str)> {
    let mut parts = alias.strip_prefix(ALIAS_PREFIX)?.split('/');
    let (network, id, ifname) = (parts.next()?, parts.next()?, parts.next()?);
    let nonempty = !network.is_empty() && !id.is_empty() && !ifname.is_empty();
    (parts.next().is_none() && nonempty).then_some((network, id, ifname))
}

/// A stable 64-bit hash of an attachment's identity, salted by `purpose` so that names and
/// MACs derived from the same attachment are independent. FNV-1a: tiny, stable across
/// releases, good enough to avoid collisions on one host.
pub fn attachment_hash(purpose: &str, network: &str, container_id: &str, ifname: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in purpose
        .bytes()
        .chain(network.bytes())
        .chain([0])
        .chain(container_id.bytes())
        .chain([0])
        .chain(ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_and_short() {
        let a = host_veth_name("netd", "abc", "eth0");
        assert_eq!(a, host_veth_name("netd", "abc", "eth0"));
        assert_ne!(a, host_veth_name("netd", "abc", "eth1"));
        assert_ne!(a, host_veth_name("other", "abc", "eth0"));
        assert_eq!(a.len(), 15);
    }

    #[test]
    fn veth_aliases_name_their_owner() {
        let alias = veth_alias("net-1", "abc_12.x", "eth0").unwrap();
        assert_eq!(alias, "netd-cni:net-1/abc_12.x/eth0");
        assert_eq!(
            parse_veth_alias(&alias),
            Some(("net-1", "abc_12.x", "eth0"))
        );
        // Not ours, or malformed: never taken for an owner.
        for other in [
            "",
            "netd-cni:",
            "netd-cni:n/c",
            "netd-cni:n/c/eth0/x",
            "netd-cni:n//eth0",
            "uplink to the lab",
            "NETD-CNI:n/c/eth0",
        ] {
            assert_eq!(parse_veth_alias(other), None, "{other:?}");
        }
        // Too long for the kernel, or ambiguous: no alias at all.
        assert_eq!(veth_alias("n", &"c".repeat(250), "eth0"), None);
        assert_eq!(veth_alias("n", "a/b", "eth0"), None);
    }

    #[test]
    fn records_round_trip() {
        let dir = std::env::temp_dir().join(format!("netd-state-{}", std::process::id()));
        let nd = NetworkDir::new(&dir, "n1");
        let _lock = nd.lock().unwrap();
        let a = Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            ips: vec!["10.0.0.2/24".parse().unwrap()],
            ..Attachment::default()
        };
        nd.save(&a).unwrap();
        assert_eq!(nd.load("c1", "eth0").unwrap(), Some(a.clone()));
        assert_eq!(nd.all().unwrap(), vec![a]);
        nd.remove("c1", "eth0").unwrap();
        nd.remove("c1", "eth0").unwrap();
        assert!(nd.all().unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }
}
