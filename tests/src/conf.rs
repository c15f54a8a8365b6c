//! Network configurations for tests: a unique name, bridge and subnets per network, rendered as
//! netd-cni JSON (or as the equivalent reference `bridge` + `host-local` configuration), with
//! state kept under the test's own directory.
//!
//! Tests start from [`Network::conf`] and change what they exercise with [`merge`] (a JSON
//! merge patch), so each test shows only the options it is about.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One network: its name, bridge, subnets and where its state lives.
#[derive(Debug, Clone)]
pub struct Network {
    /// Network name (names the state directories).
    pub name: String,
    /// Bridge name, at most 15 characters.
    pub bridge: String,
    /// The IPv4 subnet, always a /24: `10.<a>.<b>.0`.
    pub v4: [u8; 3],
    /// The IPv4 prefix length (24 unless a test shrinks the pool).
    pub v4_prefix: u8,
    /// Whether the network also has an IPv6 range (`fd6e:6400:<id>::/64`).
    pub v6: bool,
    /// `dataDir` for attachment records.
    pub data_dir: PathBuf,
    /// `ipam.dataDir` for the allocator's store.
    pub ipam_dir: PathBuf,
    id: u32,
}

impl Network {
    /// A fresh IPv4 network whose state lives under `dir`.
    pub fn new(dir: &Path) -> Network {
        let id = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("netd-t-{pid}-{id}");
        // "nt" + 5 pid digits + "-" + up to 7 id digits: at most 15 characters.
        let bridge = format!("nt{:05}-{id}", pid % 100_000);
        assert!(bridge.len() <= 15, "bridge name {bridge} too long");
        Network {
            name,
            bridge,
            v4: [10, 64 + ((id / 256) % 64) as u8, (id % 256) as u8],
            v4_prefix: 24,
            v6: false,
            data_dir: dir.join("state"),
            ipam_dir: dir.join("ipam"),
            id,
        }
    }

    /// Adds an IPv6 range (dual stack).
    pub fn dual_stack(mut self) -> Network {
        self.v6 = true;
        self
    }

    /// Shrinks the IPv4 pool to a `/prefix` (e.g. 30: one container besides the gateway).
    pub fn with_prefix(mut self, prefix: u8) -> Network {
        self.v4_prefix = prefix;
        self
    }

    /// `10.a.b.0/24` (or the configured prefix).
    pub fn subnet4(&self) -> String {
        format!(
            "{}.{}.{}.0/{}",
            self.v4[0], self.v4[1], self.v4[2], self.v4_prefix
        )
    }

    /// `fd6e:6400:<id>::/64`.
    pub fn subnet6(&self) -> String {
        format!("fd6e:6400:{:x}::/64", self.id % 0xffff)
    }

    /// The `n`th IPv4 address of the subnet (`host4(1)` is the default gateway).
    pub fn host4(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.v4[0], self.v4[1], self.v4[2], n)
    }

    /// The `n`th IPv6 address of the subnet.
    pub fn host6(&self, n: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd6e, 0x6400, (self.id % 0xffff) as u16, 0, 0, 0, 0, n)
    }

    /// The IPv4 gateway (first address of the subnet).
    pub fn gateway4(&self) -> IpAddr {
        IpAddr::V4(self.host4(1))
    }

    /// The IPv6 gateway.
    pub fn gateway6(&self) -> IpAddr {
        IpAddr::V6(self.host6(1))
    }

    /// The IPAM range sets in host-local's schema.
    pub fn ranges(&self) -> Value {
        let mut ranges = vec![json!([{ "subnet": self.subnet4() }])];
        if self.v6 {
            ranges.push(json!([{ "subnet": self.subnet6() }]));
        }
        Value::Array(ranges)
    }

    /// The netd-cni configuration: a gateway bridge with a default route, built-in IPAM, and
    /// state under the test's directory.
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": self.name,
            "type": "netd-cni",
            "bridge": self.bridge,
            "isGateway": true,
            "isDefaultGateway": true,
            "dataDir": self.data_dir,
            "ipam": {
                "type": "netd",
                "ranges": self.ranges(),
                "dataDir": self.ipam_dir,
            },
        })
    }

    /// [`Network::conf`] with `patch` merged in.
    pub fn conf_with(&self, version: &str, patch: Value) -> Value {
        let mut v = self.conf(version);
        merge(&mut v, patch);
        v
    }

    /// The reference plugins' equivalent of [`Network::conf`]: `bridge` with `host-local`.
    pub fn reference_bridge(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": self.name,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "isDefaultGateway": true,
            "ipam": {
                "type": "host-local",
                "ranges": self.ranges(),
                "dataDir": self.ipam_dir,
            },
        })
    }

    /// A configuration list around `plugins`, as runtimes store it.
    pub fn conflist(&self, version: &str, plugins: Vec<Value>) -> Value {
        json!({ "cniVersion": version, "name": self.name, "plugins": plugins })
    }

    /// The allocator's store directory for this network (`<ipam.dataDir>/<name>`).
    pub fn ipam_store(&self) -> PathBuf {
        self.ipam_dir.join(&self.name)
    }

    /// The attachment records' directory (`<dataDir>/<name>/attachments`).
    pub fn records_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name).join("attachments")
    }
}

/// JSON merge patch (RFC 7386): objects merge recursively, `null` removes, anything else
/// replaces.
pub fn merge(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other,
    }
}

/// The configuration a runtime hands to plugin `index` of a conflist: the plugin entry with
/// the list's `name` and `cniVersion`, plus `prevResult` when given.
pub fn plugin_conf(list: &Value, index: usize, prev: Option<&Value>) -> Value {
    let mut c = list["plugins"][index].clone();
    c["name"] = list["name"].clone();
    c["cniVersion"] = list["cniVersion"].clone();
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c
}
