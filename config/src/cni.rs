//! The network configuration that container runtimes hand to `netd-cni` on stdin.
//!
//! It is a superset of the reference `bridge` plugin's options (same names, same meaning), plus
//! host-local's IPAM schema for the built-in allocator. Unknown fields are tolerated, as the CNI
//! spec requires; values that are present but wrong are rejected by [`NetConf::validate`] with
//! the field's path.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Default bridge name when the configuration names none.
pub const DEFAULT_BRIDGE: &str = "netd0";
/// Default directory for attachment records and the built-in IPAM store: under `/run`, so it
/// lives exactly as long as what it describes (veths, rules and namespaces do not survive a
/// reboot either; netavark keeps its IPAM state in `/run` for the same reason), and on tmpfs,
/// which keeps ADD flat as containers accumulate (on ext4, inode allocation for the state
/// files grows with the directory).
pub const DEFAULT_DATA_DIR: &str = "/run/cni/netd";

/// One network configuration (a single plugin entry of a conflist, with `name` and
/// `cniVersion` copied in by the runtime).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The CNI version the runtime speaks; results are returned in its format.
    #[serde(default)]
    pub cni_version: String,
    /// Network name; unique per host. Names the state directory.
    #[serde(default)]
    pub name: String,
    /// Plugin type (`netd-cni`).
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// Bridge to attach containers to (created when missing).
    #[serde(default)]
    pub bridge: Option<String>,
    /// Give the bridge the gateway address of every range.
    #[serde(default)]
    pub is_gateway: bool,
    /// Install a default route via the gateway in the container (implies `isGateway`).
    #[serde(default)]
    pub is_default_gateway: bool,
    /// Replace a different address already on the bridge instead of failing.
    #[serde(default)]
    pub force_address: bool,
    /// Masquerade traffic that leaves the container subnet.
    #[serde(default)]
    pub ip_masq: bool,
    /// MTU of the bridge and both veth ends (default: kernel default, 1500).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Let a container reach itself through the bridge (needed for hairpin NAT).
    #[serde(default)]
    pub hairpin_mode: bool,
    /// Put the bridge in promiscuous mode.
    #[serde(default)]
    pub promisc_mode: bool,
    /// Untagged VLAN of the container's bridge port (enables VLAN filtering on the bridge).
    #[serde(default)]
    pub vlan: Option<u16>,
    /// Keep VLAN 1 on the port as well when `vlan` is set.
    #[serde(default)]
    pub preserve_default_vlan: Option<bool>,
    /// Drop frames from the container whose source MAC is not its own.
    #[serde(default)]
    pub macspoofchk: bool,
    /// Keep IPv6 duplicate address detection on in the container (off by default, for speed).
    #[serde(default)]
    pub enabledad: bool,
    /// Isolate bridge ports from each other (bridge `isolated` port flag).
    #[serde(default)]
    pub port_isolation: bool,
    /// netd extension: forbid traffic between this network and other netd networks.
    #[serde(default)]
    pub isolate: bool,
    /// netd extension: where attachment records live (default `/run/cni/netd`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// IP address management.
    #[serde(default)]
    pub ipam: Option<IpamConfig>,
    /// DNS settings returned in the result.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// Capabilities the config declares (`portMappings`, `ips`, `mac`, `aliases`, ...).
    #[serde(default)]
    pub capabilities: serde_json::Map<String, serde_json::Value>,
    /// Runtime-supplied values for the declared capabilities.
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// Conventional `args` (e.g. `args.cni.ips`).
    #[serde(default)]
    pub args: Option<serde_json::Value>,
    /// The previous plugin's result in a conflist.
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
}

/// IPAM section: `type: "netd"` uses the built-in allocator with host-local's schema; any other
/// type is delegated to the plugin of that name in `CNI_PATH`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConfig {
    /// `netd` (built in) or the name of a delegated IPAM plugin.
    #[serde(rename = "type", default)]
    pub ipam_type: String,
    /// Range sets: one address is allocated from each set (two sets for dual stack).
    #[serde(default)]
    pub ranges: Vec<Vec<IpRange>>,
    /// Legacy single-range form (`subnet`, `rangeStart`, `rangeEnd`, `gateway`).
    #[serde(default)]
    pub subnet: Option<IpNet>,
    /// Legacy form: first allocatable address.
    #[serde(default)]
    pub range_start: Option<IpAddr>,
    /// Legacy form: last allocatable address.
    #[serde(default)]
    pub range_end: Option<IpAddr>,
    /// Legacy form: gateway address.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Routes to install in the container.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Where the allocator keeps its reservations (`<dataDir>/<network>`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Every other field, passed through untouched to a delegated plugin.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One allocatable range inside a subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpRange {
    /// The subnet; container addresses carry its prefix length.
    pub subnet: IpNet,
    /// First allocatable address (default: network address + 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    /// Last allocatable address (default: last address before broadcast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    /// Gateway (default: network address + 1); never allocated to a container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// A route, as in CNI results and IPAM configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop (default: the range's gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings, as in CNI results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Values the runtime passes for declared capabilities.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// Published ports.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// Requested static addresses (`10.88.0.5` or `10.88.0.5/16`).
    #[serde(default)]
    pub ips: Vec<String>,
    /// Requested MAC address of the container interface.
    #[serde(default)]
    pub mac: Option<String>,
    /// DNS names of the container (kept for netd): a list, or, as Podman sends it, a map from
    /// network name to list (see [`NetConf::aliases`]).
    #[serde(default)]
    pub aliases: Aliases,
    /// Traffic shaping of the container's interface.
    #[serde(default)]
    pub bandwidth: Option<BandwidthLimits>,
}

/// The `aliases` capability in either shape runtimes send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Aliases {
    /// `["web", "www"]`.
    List(Vec<String>),
    /// `{"<network>": ["web", "www"]}` (Podman).
    PerNetwork(std::collections::BTreeMap<String, Vec<String>>),
}

impl Default for Aliases {
    fn default() -> Self {
        Aliases::List(Vec::new())
    }
}

/// The `bandwidth` capability: rates in bits per second, bursts in bits; 0 means unlimited.
/// Ingress is traffic to the container, egress traffic from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BandwidthLimits {
    /// Rate of traffic to the container.
    pub ingress_rate: u64,
    /// Burst of traffic to the container.
    pub ingress_burst: u64,
    /// Rate of traffic from the container.
    pub egress_rate: u64,
    /// Burst of traffic from the container.
    pub egress_burst: u64,
}

/// Transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One published port (`portMappings` capability).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Port on the host.
    pub host_port: u16,
    /// Port in the container.
    pub container_port: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default, deserialize_with = "de_protocol")]
    pub protocol: Protocol,
    /// Host address to publish on; empty, `0.0.0.0` or `::` means every host address.
    #[serde(default, rename = "hostIP", deserialize_with = "de_host_ip")]
    pub host_ip: Option<IpAddr>,
}

fn de_protocol<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
    let s = String::deserialize(d)?;
    match s.to_ascii_lowercase().as_str() {
        "" | "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        other => Err(serde::de::Error::custom(format!(
            "protocol {other:?} is not supported (use tcp or udp)"
        ))),
    }
}

fn de_host_ip<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    let s = Option::<String>::deserialize(d)?.unwrap_or_default();
    if s.is_empty() {
        return Ok(None);
    }
    let ip: IpAddr = s
        .parse()
        .map_err(|_| serde::de::Error::custom(format!("hostIP {s:?} is not an IP address")))?;
    Ok((!ip.is_unspecified()).then_some(ip))
}

impl NetConf {
    /// Bridge name, defaulted.
    pub fn bridge_name(&self) -> &str {
        self.bridge.as_deref().unwrap_or(DEFAULT_BRIDGE)
    }

    /// The container's aliases on this network.
    pub fn aliases(&self) -> &[String] {
        match &self.runtime_config.aliases {
            Aliases::List(list) => list,
            Aliases::PerNetwork(map) => map.get(&self.name).map(Vec::as_slice).unwrap_or(&[]),
        }
    }

    /// Whether the bridge carries the gateway address.
    pub fn gateway_on_bridge(&self) -> bool {
        self.is_gateway || self.is_default_gateway
    }

    /// Directory for attachment records and built-in IPAM state.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    /// Whether the config declares capability `name` (so its runtimeConfig value applies).
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities
            .get(name)
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
            || self.runtime_config_present(name)
    }

    fn runtime_config_present(&self, name: &str) -> bool {
        // Runtimes only send runtimeConfig keys for declared capabilities, so their presence
        // counts as a declaration (libcni strips undeclared ones).
        match name {
            "portMappings" => !self.runtime_config.port_mappings.is_empty(),
            "ips" => !self.runtime_config.ips.is_empty(),
            "mac" => self.runtime_config.mac.is_some(),
            "aliases" => !self.aliases().is_empty(),
            "bandwidth" => self.runtime_config.bandwidth.is_some(),
            _ => false,
        }
    }

    /// Checks every value a runtime could get wrong; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "is required"));
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || self.name.starts_with('.')
        {
            return Err(ConfigError::new(
                "name",
                format!(
                    "{:?} may only contain letters, digits, '-', '_' and '.'",
                    self.name
                ),
            ));
        }
        let bridge = self.bridge_name();
        crate::names::check_ifname(bridge).map_err(|m| ConfigError::new("bridge", m))?;
        if let Some(mtu) = self.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(ConfigError::new(
                    "mtu",
                    format!("{mtu} is outside 68..=65535"),
                ));
            }
        }
        if let Some(vlan) = self.vlan {
            if !(1..=4094).contains(&vlan) {
                return Err(ConfigError::new(
                    "vlan",
                    format!("{vlan} is outside 1..=4094"),
                ));
            }
        }
        if let Some(ipam) = &self.ipam {
            ipam.validate()?;
        }
        for (i, pm) in self.runtime_config.port_mappings.iter().enumerate() {
            let field = format!("runtimeConfig.portMappings[{i}]");
            if pm.host_port == 0 {
                return Err(ConfigError::new(
                    format!("{field}.hostPort"),
                    "must be 1..=65535",
                ));
            }
            if pm.container_port == 0 {
                return Err(ConfigError::new(
                    format!("{field}.containerPort"),
                    "must be 1..=65535",
                ));
            }
        }
        for (i, a) in self.runtime_config.ips.iter().enumerate() {
            if parse_ip_or_cidr(a).is_none() {
                return Err(ConfigError::new(
                    format!("runtimeConfig.ips[{i}]"),
                    format!("{a:?} is not an IP address or CIDR"),
                ));
            }
        }
        if let Some(mac) = &self.runtime_config.mac {
            if parse_mac(mac).is_none() {
                return Err(ConfigError::new(
                    "runtimeConfig.mac",
                    format!("{mac:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
                ));
            }
        }
        Ok(())
    }
}

impl IpamConfig {
    /// Whether the built-in allocator handles this section.
    pub fn is_builtin(&self) -> bool {
        self.ipam_type == "netd"
    }

    /// The range sets, with the legacy single-range form folded in.
    pub fn range_sets(&self) -> Vec<Vec<IpRange>> {
        let mut sets = self.ranges.clone();
        if let Some(subnet) = self.subnet {
            sets.insert(
                0,
                vec![IpRange {
                    subnet,
                    range_start: self.range_start,
                    range_end: self.range_end,
                    gateway: self.gateway,
                }],
            );
        }
        sets
    }

    /// Checks the built-in allocator's schema.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ipam_type.is_empty() {
            return Err(ConfigError::new("ipam.type", "is required"));
        }
        if !self.is_builtin() {
            if self.ipam_type.contains('/') {
                return Err(ConfigError::new(
                    "ipam.type",
                    format!("{:?} must be a plugin name, not a path", self.ipam_type),
                ));
            }
            return Ok(());
        }
        let sets = self.range_sets();
        if sets.is_empty() {
            return Err(ConfigError::new("ipam.ranges", "needs at least one range"));
        }
        let mut seen: Vec<IpNet> = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            if set.is_empty() {
                return Err(ConfigError::new(format!("ipam.ranges[{i}]"), "is empty"));
            }
            let v4 = set[0].subnet.addr().is_ipv4();
            for (j, r) in set.iter().enumerate() {
                let f = format!("ipam.ranges[{i}][{j}]");
                if r.subnet.addr().is_ipv4() != v4 {
                    return Err(ConfigError::new(
                        format!("{f}.subnet"),
                        "mixes IPv4 and IPv6 in one range set (use one set per family)",
                    ));
                }
                let host_bits = match r.subnet {
                    IpNet::V4(n) => 32 - n.prefix_len(),
                    IpNet::V6(n) => 128 - n.prefix_len(),
                };
                if host_bits < 2 {
                    return Err(ConfigError::new(
                        format!("{f}.subnet"),
                        format!(
                            "{} is too small to hold a gateway and a container",
                            r.subnet
                        ),
                    ));
                }
                if r.subnet.trunc() != r.subnet {
                    return Err(ConfigError::new(
                        format!("{f}.subnet"),
                        format!(
                            "{} has host bits set (did you mean {}?)",
                            r.subnet,
                            r.subnet.trunc()
                        ),
                    ));
                }
                for (name, a) in [
                    ("rangeStart", r.range_start),
                    ("rangeEnd", r.range_end),
                    ("gateway", r.gateway),
                ] {
                    if let Some(a) = a {
                        if !r.subnet.contains(&a) {
                            return Err(ConfigError::new(
                                format!("{f}.{name}"),
                                format!("{a} is not inside {}", r.subnet),
                            ));
                        }
                    }
                }
                if let (Some(s), Some(e)) = (r.range_start, r.range_end) {
                    if s > e {
                        return Err(ConfigError::new(
                            format!("{f}.rangeEnd"),
                            format!("{e} comes before rangeStart {s}"),
                        ));
                    }
                }
                if let Some(other) = seen
                    .iter()
                    .find(|o| o.contains(&r.subnet.network()) || r.subnet.contains(&o.network()))
                {
                    return Err(ConfigError::new(
                        format!("{f}.subnet"),
                        format!("{} overlaps {other}", r.subnet),
                    ));
                }
                seen.push(r.subnet);
            }
        }
        Ok(())
    }
}

/// Parses `10.0.0.5` or `10.0.0.5/24` (the prefix is ignored: the range decides it).
pub fn parse_ip_or_cidr(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<IpNet>().ok().map(|n| n.addr()))
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: &str) -> NetConf {
        serde_json::from_str(json).expect("parse")
    }

    #[test]
    fn reference_bridge_config_parses() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"podman","type":"netd-cni","bridge":"cni-podman0",
            "isGateway":true,"ipMasq":true,"hairpinMode":true,"unknownField":{"a":1},
            "ipam":{"type":"netd","ranges":[[{"subnet":"10.88.0.0/16","gateway":"10.88.0.1"}]],
            "routes":[{"dst":"0.0.0.0/0"}]},
            "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"TCP","hostIP":""}]}}"#,
        );
        c.validate().unwrap();
        assert_eq!(c.bridge_name(), "cni-podman0");
        assert_eq!(c.runtime_config.port_mappings[0].protocol, Protocol::Tcp);
        assert_eq!(c.runtime_config.port_mappings[0].host_ip, None);
        assert!(c.has_capability("portMappings"));
    }

    #[test]
    fn errors_name_the_field() {
        let c = conf(
            r#"{"name":"n","ipam":{"type":"netd","ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.2.0.1"}]]}}"#,
        );
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "ipam.ranges[0][0].rangeStart");
        let c = conf(r#"{"name":"n","ipam":{"type":"netd","subnet":"10.1.0.5/24"}}"#);
        assert!(c.validate().unwrap_err().to_string().contains("host bits"));
        let c = conf(r#"{"name":"n","mtu":20}"#);
        assert_eq!(c.validate().unwrap_err().field, "mtu");
        let bad: Result<NetConf, _> = serde_json::from_str(
            r#"{"name":"n","runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":1,"protocol":"sctp"}]}}"#,
        );
        assert!(bad.unwrap_err().to_string().contains("sctp"));
    }

    #[test]
    fn overlapping_ranges_rejected() {
        let c = conf(
            r#"{"name":"n","ipam":{"type":"netd","ranges":[[{"subnet":"10.1.0.0/16"}],[{"subnet":"10.1.2.0/24"}]]}}"#,
        );
        assert!(c.validate().unwrap_err().to_string().contains("overlaps"));
    }

    #[test]
    fn aliases_as_list_or_per_network_map() {
        let c = conf(r#"{"name":"n","runtimeConfig":{"aliases":["web","www"]}}"#);
        assert_eq!(c.aliases(), ["web", "www"]);
        let c = conf(r#"{"name":"n","runtimeConfig":{"aliases":{"n":["web"],"other":["x"]}}}"#);
        assert_eq!(c.aliases(), ["web"]);
        assert!(c.has_capability("aliases"));
        let c = conf(r#"{"name":"m","runtimeConfig":{"aliases":{"n":["web"]}}}"#);
        assert!(c.aliases().is_empty());
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:00:00:aa:bb:0c"),
            Some([2, 0, 0, 0xaa, 0xbb, 0x0c])
        );
        assert_eq!(parse_mac("02:00:00:aa:bb"), None);
        assert_eq!(parse_mac("02:00:00:aa:bb:0c:00"), None);
    }
}
