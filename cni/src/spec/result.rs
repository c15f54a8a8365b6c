//! The ADD result, kept in the 1.x shape internally and rendered in the shape of the version the
//! runtime asked for. Parsing accepts results of every supported version (a `prevResult`, or the
//! output of a delegated IPAM plugin).

use std::net::IpAddr;

use ipnet::IpNet;
use netd_config::cni::{Dns, Route};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::Version;

/// An interface the plugin created or configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (1.1.0 results only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Network namespace path for interfaces inside the container; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length.
    pub address: IpNet,
    /// Default gateway of the subnet, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into the result's `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A CNI result in the 1.x shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// Interfaces, host and sandbox ends.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes in the container.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS settings.
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// Parses a result of any supported version (`version` fields on IPs are ignored).
    pub fn from_json(v: &Value) -> Result<CniResult, serde_json::Error> {
        CniResult::deserialize(v)
    }

    /// Renders the result in the shape of `version`.
    pub fn to_json(&self, version: Version) -> Value {
        let mut v = json!({ "cniVersion": version.to_string() });
        let mut interfaces = serde_json::to_value(&self.interfaces).unwrap_or(Value::Null);
        if version < Version(1, 1, 0) {
            if let Some(list) = interfaces.as_array_mut() {
                for i in list.iter_mut().filter_map(Value::as_object_mut) {
                    i.remove("mtu");
                }
            }
        }
        if !self.interfaces.is_empty() {
            v["interfaces"] = interfaces;
        }
        let mut ips = serde_json::to_value(&self.ips).unwrap_or(Value::Null);
        if version.ips_carry_family() {
            if let Some(list) = ips.as_array_mut() {
                for (ip, cfg) in list.iter_mut().zip(&self.ips) {
                    let family = if cfg.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    ip["version"] = json!(family);
                }
            }
        }
        if !self.ips.is_empty() {
            v["ips"] = ips;
        }
        if !self.routes.is_empty() {
            v["routes"] = json!(self.routes);
        }
        v["dns"] = json!(self.dns);
        v
    }

    /// Appends `other`'s interfaces, addresses and routes, renumbering its interface indexes so
    /// they keep pointing at the same interfaces (used to extend a `prevResult`).
    pub fn extend(&mut self, other: CniResult) {
        let base = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + base);
            ip
        }));
        for r in other.routes {
            if !self.routes.contains(&r) {
                self.routes.push(r);
            }
        }
        if self.dns == Dns::default() {
            self.dns = other.dns;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "netd0".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1500),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    mtu: Some(1500),
                    sandbox: Some("/run/netns/x".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.88.0.2/16".parse().unwrap(),
                gateway: Some("10.88.0.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: None,
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn renders_per_version() {
        let r = sample();
        let v031 = r.to_json(Version(0, 3, 1));
        assert_eq!(v031["cniVersion"], "0.3.1");
        assert_eq!(v031["ips"][0]["version"], "4");
        assert!(v031["interfaces"][0].get("mtu").is_none());
        let v100 = r.to_json(Version(1, 0, 0));
        assert!(v100["ips"][0].get("version").is_none());
        let v110 = r.to_json(Version(1, 1, 0));
        assert_eq!(v110["interfaces"][1]["mtu"], 1500);
        assert_eq!(v110["interfaces"][1]["sandbox"], "/run/netns/x");
        assert_eq!(v110["ips"][0]["interface"], 1);
    }

    #[test]
    fn parses_old_and_new_shapes() {
        let r = sample();
        for v in [Version(0, 3, 1), Version(0, 4, 0), Version(1, 1, 0)] {
            let back = CniResult::from_json(&r.to_json(v)).unwrap();
            assert_eq!(back.ips, r.ips);
            assert_eq!(back.interfaces.len(), 2);
        }
    }

    #[test]
    fn extend_renumbers_interfaces() {
        let mut prev = sample();
        prev.extend(sample());
        assert_eq!(prev.interfaces.len(), 4);
        assert_eq!(prev.ips[1].interface, Some(3));
        assert_eq!(prev.routes.len(), 1);
    }
}
