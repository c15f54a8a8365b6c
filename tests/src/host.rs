//! The usual fixture: one throwaway "host" namespace, one state directory, one network, and
//! the containers attached to it.
//!
//! [`Host`] runs every plugin invocation inside its namespace, so bridges, veths, sysctls and
//! nf_tables state land there and vanish with it. It also answers "what did the plugin leave
//! behind?" — veths, allocations, records, map elements — which lifecycle, GC and concurrency
//! tests assert on. A [`Peer`] is a third namespace wired to the host by a veth: the view of
//! another machine on the host's network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde_json::Value;

use crate::conf::Network;
use crate::nft::Ruleset;
use crate::ns::{as_vec, Ns};
use crate::plugin::{Call, Outcome, Plugin};
use crate::tmp::TempDir;

/// The host's end of the link to a [`Peer`].
pub const UPLINK: &str = "uplink0";

/// A host namespace with a network and the netd-cni plugin. Fields drop in order: the
/// namespace (and everything in it) first, then the state directory.
#[derive(Debug)]
pub struct Host {
    /// The host namespace: the plugin runs here.
    pub ns: Ns,
    /// The network under test.
    pub net: Network,
    /// The plugin.
    pub plugin: Plugin,
    /// The CNI version of the default configuration.
    pub version: String,
    /// State of the plugin (`dataDir`, `ipam.dataDir`) and any test files.
    pub tmp: TempDir,
}

/// A container namespace attached to a [`Host`]'s network.
#[derive(Debug)]
pub struct Container {
    /// The container's namespace.
    pub ns: Ns,
    /// `CNI_CONTAINERID`.
    pub id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The configuration it was added with (DEL and CHECK reuse it).
    pub conf: Value,
    /// The ADD result.
    pub result: Value,
}

impl Host {
    /// An IPv4 network, configurations in CNI 1.0.0.
    pub fn new() -> Host {
        Host::with(|n| n)
    }

    /// A network shaped by `f` (e.g. `Network::dual_stack`).
    pub fn with(f: impl FnOnce(Network) -> Network) -> Host {
        let tmp = TempDir::new();
        let net = f(Network::new(tmp.path()));
        Host {
            ns: Ns::new(),
            net,
            plugin: Plugin::netd(),
            version: "1.0.0".into(),
            tmp,
        }
    }

    /// The default configuration of the network.
    pub fn conf(&self) -> Value {
        self.net.conf(&self.version)
    }

    /// The default configuration with `patch` merged in.
    pub fn conf_with(&self, patch: Value) -> Value {
        self.net.conf_with(&self.version, patch)
    }

    /// An invocation of netd-cni inside the host namespace.
    pub fn call(&self, command: &str) -> Call<'_> {
        self.plugin.call(&self.ns, command)
    }

    /// ADD of `id` (interface `eth0`) in `netns`.
    pub fn add(&self, id: &str, netns: &Ns, conf: &Value) -> Outcome {
        self.call("ADD")
            .container(id, &netns.path(), "eth0")
            .conf(conf)
            .run()
    }

    /// DEL of `id` (interface `eth0`), with `netns` as `CNI_NETNS`.
    pub fn del(&self, id: &str, netns: &Path, conf: &Value) -> Outcome {
        self.call("DEL")
            .container(id, netns, "eth0")
            .conf(conf)
            .run()
    }

    /// A new container namespace, added with the default configuration; panics on failure.
    #[track_caller]
    pub fn attach(&self, id: &str) -> Container {
        self.attach_with(id, &self.conf())
    }

    /// A new container namespace, added with `conf`; panics on failure.
    #[track_caller]
    pub fn attach_with(&self, id: &str, conf: &Value) -> Container {
        let ns = Ns::new();
        let result = self.add(id, &ns, conf).ok();
        Container {
            ns,
            id: id.to_string(),
            ifname: "eth0".into(),
            conf: conf.clone(),
            result,
        }
    }

    /// DEL of a container; panics on failure.
    #[track_caller]
    pub fn detach(&self, c: &Container) {
        self.call("DEL")
            .container(&c.id, &c.ns.path(), &c.ifname)
            .conf(&c.conf)
            .run()
            .ok();
    }

    /// CHECK of a container (with its ADD result as `prevResult`).
    pub fn check(&self, c: &Container) -> Outcome {
        let mut conf = c.conf.clone();
        conf["prevResult"] = c.result.clone();
        self.call("CHECK")
            .container(&c.id, &c.ns.path(), &c.ifname)
            .conf(&conf)
            .run()
    }

    /// GC keeping only `valid` (container IDs, interface `eth0`).
    pub fn gc(&self, valid: &[&str]) -> Outcome {
        let list: Vec<Value> = valid
            .iter()
            .map(|id| serde_json::json!({ "containerID": id, "ifname": "eth0" }))
            .collect();
        let mut conf = self.conf();
        conf["cni.dev/valid-attachments"] = Value::Array(list);
        self.call("GC").conf(&conf).run()
    }

    /// Addresses the allocator holds: files of its store named after an address.
    pub fn allocations(&self) -> Vec<IpAddr> {
        let Ok(entries) = std::fs::read_dir(self.net.ipam_store()) else {
            return Vec::new();
        };
        let mut v: Vec<IpAddr> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        v.sort();
        v
    }

    /// Names of the attachment records (`<container>.<ifname>.json`).
    pub fn records(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.net.records_dir()) else {
            return Vec::new();
        };
        let mut v: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.ends_with(".json"))
            .collect();
        v.sort();
        v
    }

    /// Veth interfaces in the host namespace (the host ends of attachments; the peer's
    /// uplink is not one).
    pub fn veths(&self) -> Vec<String> {
        let mut v = self.ns.veths();
        v.retain(|n| n != UPLINK);
        v
    }

    /// The host namespace's nf_tables ruleset.
    pub fn ruleset(&self) -> Ruleset {
        Ruleset::of(&self.ns)
    }

    /// Asserts that no attachment is left: no veth in the host namespace, no allocation, no
    /// record, no port map or MAC check element.
    #[track_caller]
    pub fn assert_clean(&self, when: &str) {
        assert_eq!(
            self.veths(),
            Vec::<String>::new(),
            "{when}: veths left in the host"
        );
        assert_eq!(
            self.allocations(),
            Vec::<IpAddr>::new(),
            "{when}: allocations left"
        );
        assert_eq!(
            self.records(),
            Vec::<String>::new(),
            "{when}: attachment records left"
        );
        let rs = self.ruleset();
        assert_eq!(
            rs.port_elems(),
            0,
            "{when}: port map elements left: {}",
            rs.pretty()
        );
        for set in ["checked", "macs"] {
            assert!(
                rs.elems("netd", set).is_empty(),
                "{when}: {set} elements left"
            );
        }
    }

    /// A third namespace wired to the host by a veth (`172.31.0.1/24`, `fd00:beef::1/64` on the
    /// host side; `.2`/`::2` on the peer, whose default routes point at the host).
    pub fn peer(&self) -> Peer {
        let ns = Ns::new();
        self.ns.exec(&[
            "ip",
            "link",
            "add",
            UPLINK,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        self.ns
            .exec(&["ip", "addr", "add", "172.31.0.1/24", "dev", UPLINK]);
        self.ns.exec(&[
            "ip",
            "addr",
            "add",
            "fd00:beef::1/64",
            "dev",
            UPLINK,
            "nodad",
        ]);
        self.ns.exec(&["ip", "link", "set", UPLINK, "up"]);
        ns.exec(&["ip", "addr", "add", "172.31.0.2/24", "dev", "eth0"]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            "fd00:beef::2/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        ns.exec(&["ip", "link", "set", "eth0", "up"]);
        ns.exec(&["ip", "route", "add", "default", "via", "172.31.0.1"]);
        ns.exec(&["ip", "-6", "route", "add", "default", "via", "fd00:beef::1"]);
        Peer { ns }
    }
}

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}

/// Another machine's view of the host: a namespace on the host's "uplink".
#[derive(Debug)]
pub struct Peer {
    /// The peer's namespace.
    pub ns: Ns,
}

impl Peer {
    /// The host's IPv4 address on the uplink.
    pub const HOST4: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
    /// The peer's IPv4 address.
    pub const PEER4: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
    /// The host's IPv6 address on the uplink.
    pub const HOST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xbeef, 0, 0, 0, 0, 0, 1);
    /// The peer's IPv6 address.
    pub const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xbeef, 0, 0, 0, 0, 0, 2);
}

impl Container {
    /// The addresses of the ADD result, with prefix length.
    pub fn ips(&self) -> Vec<(IpAddr, u8)> {
        as_vec(self.result["ips"].clone())
            .iter()
            .filter_map(|ip| parse_cidr(ip["address"].as_str()?))
            .collect()
    }

    /// The container's IPv4 address (panics when it has none).
    #[track_caller]
    pub fn ip4(&self) -> Ipv4Addr {
        self.ips()
            .into_iter()
            .find_map(|(ip, _)| match ip {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .unwrap_or_else(|| panic!("container {} has no IPv4 address: {}", self.id, self.result))
    }

    /// The container's IPv6 address (panics when it has none).
    #[track_caller]
    pub fn ip6(&self) -> Ipv6Addr {
        self.ips()
            .into_iter()
            .find_map(|(ip, _)| match ip {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            })
            .unwrap_or_else(|| panic!("container {} has no IPv6 address: {}", self.id, self.result))
    }

    /// The host-side interface name reported in the result (the interface without a sandbox
    /// that is not the bridge).
    pub fn host_veth(&self, bridge: &str) -> String {
        as_vec(self.result["interfaces"].clone())
            .iter()
            .filter(|i| i.get("sandbox").is_none())
            .filter_map(|i| i["name"].as_str())
            .find(|n| *n != bridge)
            .unwrap_or_else(|| panic!("no host veth in result {}", self.result))
            .to_string()
    }
}

/// Parses `10.0.0.2/24`.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = s.split_once('/')?;
    Some((a.parse().ok()?, p.parse().ok()?))
}
