//! One module per CNI operation. Each reads as the sequence of steps it performs; this module
//! holds what they share: the invocation context and the specs handed to the NAT layer.

mod add;
mod check;
mod del;
mod gc;
mod status;

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use netd_config::cni::{IpamConfig, NetConf};
use serde_json::Value;

use crate::env::{Command, Env};
use crate::error::Error;
use crate::ipam::{Ipam, Owner};
use crate::nat::{AttachmentSpec, NetworkSpec, PortMap};
use crate::spec::{Version, SUPPORTED};
use crate::state::{Attachment, NetworkDir};

/// Everything one invocation works from.
pub struct Ctx {
    /// The parsed configuration.
    pub conf: NetConf,
    /// The configuration exactly as received (passed on to delegated IPAM plugins).
    pub raw: Value,
    /// The `CNI_*` environment.
    pub env: Env,
    /// The version results are rendered in.
    pub version: Version,
    /// The network's state directory.
    pub dir: NetworkDir,
}

/// Per-step timings on stderr when `NETD_CNI_TRACE` is set (for profiling ADD and DEL).
pub struct Trace {
    on: bool,
    last: std::time::Instant,
}

impl Trace {
    /// Starts timing.
    pub fn start() -> Trace {
        Trace {
            on: std::env::var_os("NETD_CNI_TRACE").is_some(),
            last: std::time::Instant::now(),
        }
    }

    /// Reports the time since the previous mark under `step`.
    pub fn mark(&mut self, step: &str) {
        if self.on {
            let now = std::time::Instant::now();
            eprintln!(
                "netd-cni: {step:<16} {:>8.3} ms",
                (now - self.last).as_secs_f64() * 1e3
            );
            self.last = now;
        }
    }
}

/// Runs `command` on the configuration in `stdin`; returns what to print on success.
pub fn run(command: Command, env: Env, stdin: &[u8]) -> Result<Option<Value>, Error> {
    if command == Command::Version {
        return Ok(Some(version_info(stdin)));
    }
    let ctx = Ctx::parse(env, stdin)?;
    match command {
        Command::Add => add::run(&ctx).map(Some),
        Command::Del => del::run(&ctx).map(|()| None),
        Command::Check => check::run(&ctx).map(|()| None),
        Command::Gc => gc::run(&ctx).map(|()| None),
        Command::Status => status::run(&ctx).map(|()| None),
        Command::Version => Ok(Some(version_info(stdin))),
    }
}

/// The VERSION answer: our supported versions, echoing the config's version when given.
fn version_info(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| Version::parse(v).is_some_and(Version::is_supported))
        .unwrap_or_else(|| Version::LATEST.to_string());
    serde_json::json!({ "cniVersion": asked, "supportedVersions": SUPPORTED })
}

impl Ctx {
    /// Decodes, version-checks and validates the configuration.
    pub fn parse(env: Env, stdin: &[u8]) -> Result<Ctx, Error> {
        let raw: Value = serde_json::from_slice(stdin).map_err(|e| Error::Decode(e.to_string()))?;
        if !raw.is_object() {
            return Err(Error::Decode("expected a JSON object".into()));
        }
        // Well-formed JSON with a wrong value is a configuration error, named by its path.
        let conf: NetConf = serde_path_to_error::deserialize(&raw).map_err(|e| {
            let path = e.path().to_string();
            Error::Config(format!("{path}: {}", e.inner()))
        })?;
        let version = Version::parse(&conf.cni_version)
            .filter(|v| v.is_supported())
            .ok_or_else(|| Error::IncompatibleVersion {
                requested: conf.cni_version.clone(),
                supported: SUPPORTED.join(", "),
            })?;
        conf.validate().map_err(|e| Error::Config(e.to_string()))?;
        let dir = NetworkDir::new(&conf.data_dir(), &conf.name);
        Ok(Ctx {
            conf,
            raw,
            env,
            version,
            dir,
        })
    }

    /// The IPAM section; every operation but VERSION needs one.
    pub fn ipam_conf(&self) -> Result<&IpamConfig, Error> {
        self.conf
            .ipam
            .as_ref()
            .ok_or_else(|| Error::Config("ipam: is required (e.g. {\"type\": \"netd\", \"ranges\": [[{\"subnet\": \"10.88.0.0/16\"}]]})".into()))
    }

    /// The built-in allocator, when `ipam.type` is `netd`.
    pub fn builtin_ipam(&self) -> Result<Option<Ipam>, Error> {
        let conf = self.ipam_conf()?;
        if !conf.is_builtin() {
            return Ok(None);
        }
        Ok(Some(Ipam::open(conf, &self.conf.name, &self.ipam_root())?))
    }

    fn ipam_root(&self) -> PathBuf {
        self.conf.data_dir().join("ipam")
    }

    /// The network's contribution to the NAT rule set.
    pub fn network_spec(&self, extra_subnets: &[IpNet]) -> NetworkSpec {
        let mut subnets: Vec<IpNet> = self
            .conf
            .ipam
            .iter()
            .flat_map(|i| i.range_sets())
            .flatten()
            .map(|r| r.subnet)
            .collect();
        for s in extra_subnets.iter().map(IpNet::trunc) {
            if !subnets.contains(&s) {
                subnets.push(s);
            }
        }
        NetworkSpec {
            bridge: self.conf.bridge_name().to_string(),
            subnets,
            masquerade: self.conf.ip_masq,
            isolate: self.conf.isolate,
        }
    }

    /// Whether this network needs the NAT/filter tables at all.
    pub fn needs_nat(&self) -> bool {
        self.conf.ip_masq
            || self.conf.isolate
            || self.conf.macspoofchk
            || self.conf.has_capability("portMappings")
    }
}

impl Attachment {
    /// The attachment's contribution to the NAT rule set.
    pub fn nat_spec(&self) -> AttachmentSpec {
        AttachmentSpec {
            host_veth: self.host_veth.clone(),
            mac: if self.macspoofchk {
                self.mac.as_deref().and_then(netd_config::cni::parse_mac)
            } else {
                None
            },
            ports: self.ports.clone(),
        }
    }

    /// The IPAM owner key.
    pub fn owner(&self) -> Owner {
        Owner {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// Expands the runtime's port mappings over the container's addresses: a mapping without
/// `hostIP` is published for each family the container has; one with `hostIP` only for that
/// address's family.
pub fn port_maps(conf: &NetConf, addrs: &[IpAddr]) -> Vec<PortMap> {
    if !conf.has_capability("portMappings") {
        return Vec::new();
    }
    let mut out = Vec::new();
    for pm in &conf.runtime_config.port_mappings {
        for &container_ip in addrs {
            if pm
                .host_ip
                .is_some_and(|h| h.is_ipv4() != container_ip.is_ipv4())
            {
                continue;
            }
            let map = PortMap {
                protocol: pm.protocol,
                host_ip: pm.host_ip,
                host_port: pm.host_port,
                container_ip,
                container_port: pm.container_port,
            };
            if !out.contains(&map) {
                out.push(map);
            }
        }
    }
    out
}

/// The attachments GC must keep: `cni.dev/valid-attachments` (or the older
/// `cni.dev/attachments`), as IPAM owners.
pub fn valid_attachments(raw: &Value) -> Result<Vec<Owner>, Error> {
    let list = raw
        .get("cni.dev/valid-attachments")
        .or_else(|| raw.get("cni.dev/attachments"));
    let Some(list) = list else {
        return Err(Error::Config(
            "cni.dev/valid-attachments: is required for GC (an empty list releases everything)"
                .into(),
        ));
    };
    let items = list.as_array().ok_or_else(|| {
        Error::Config("cni.dev/valid-attachments: must be a list of {containerID, ifname}".into())
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let field = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        Error::Config(format!("cni.dev/valid-attachments[{i}].{k}: is required"))
                    })
            };
            Ok(Owner {
                container_id: field("containerID")?,
                ifname: field("ifname")?,
            })
        })
        .collect()
}

/// Addresses the runtime asked for: the `ips` capability, `args.cni.ips`, and `IP=` in
/// `CNI_ARGS` (comma-separated).
pub fn requested_ips(ctx: &Ctx) -> Result<Vec<IpAddr>, Error> {
    let mut raw: Vec<String> = Vec::new();
    if ctx.conf.has_capability("ips") {
        raw.extend(ctx.conf.runtime_config.ips.iter().cloned());
    }
    if let Some(ips) = ctx
        .conf
        .args
        .as_ref()
        .and_then(|a| a.pointer("/cni/ips"))
        .and_then(Value::as_array)
    {
        raw.extend(ips.iter().filter_map(Value::as_str).map(str::to_string));
    }
    if let Some(ip) = ctx.env.arg("IP") {
        raw.extend(ip.split(',').map(str::to_string));
    }
    let mut out = Vec::new();
    for s in raw {
        let ip = netd_config::cni::parse_ip_or_cidr(&s).ok_or_else(|| {
            Error::Config(format!("requested IP {s:?} is not an IP address or CIDR"))
        })?;
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(v: Value) -> Result<Ctx, Error> {
        Ctx::parse(Env::default(), v.to_string().as_bytes())
    }

    fn base() -> Value {
        json!({"cniVersion": "1.0.0", "name": "n", "type": "netd-cni",
               "ipam": {"type": "netd", "ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]}})
    }

    #[test]
    fn parse_maps_failures_to_codes() {
        assert_eq!(
            Ctx::parse(Env::default(), b"{").err().map(|e| e.code()),
            Some(6)
        );
        assert_eq!(
            Ctx::parse(Env::default(), b"[1]").err().map(|e| e.code()),
            Some(6)
        );
        let mut v = base();
        v["cniVersion"] = json!("0.2.0");
        assert_eq!(ctx(v).err().map(|e| e.code()), Some(1));
        let mut v = base();
        v["mtu"] = json!(10);
        let e = ctx(v).err().unwrap();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("mtu"), "{e}");
        assert!(ctx(base()).is_ok());
    }

    #[test]
    fn parse_never_panics_on_mangled_input() {
        // Every prefix and a byte-flipped copy of a real configuration: errors, never panics.
        let text = base().to_string();
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            let _ = Ctx::parse(Env::default(), &bytes[..cut]);
            let mut flipped = bytes.to_vec();
            flipped[cut] ^= 0x20;
            let _ = Ctx::parse(Env::default(), &flipped);
        }
    }

    #[test]
    fn port_maps_follow_families() {
        let mut v = base();
        v["capabilities"] = json!({"portMappings": true});
        v["runtimeConfig"] = json!({"portMappings": [
            {"hostPort": 80, "containerPort": 8080},
            {"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "192.0.2.1"}]});
        let c = ctx(v).unwrap();
        let addrs: Vec<IpAddr> = vec!["10.1.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        let maps = port_maps(&c.conf, &addrs);
        assert_eq!(maps.len(), 3, "{maps:?}");
        assert!(maps
            .iter()
            .all(|m| m.host_ip.is_none() || m.container_ip.is_ipv4()));
    }

    #[test]
    fn valid_attachments_accepts_both_keys() {
        let v = json!({"cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"}]});
        assert_eq!(valid_attachments(&v).unwrap().len(), 1);
        let v = json!({"cni.dev/valid-attachments": [{"containerID": "a"}]});
        assert!(valid_attachments(&v)
            .unwrap_err()
            .to_string()
            .contains("[0].ifname"));
        assert!(valid_attachments(&json!({})).is_err());
    }

    #[test]
    fn requested_ips_from_all_sources() {
        let mut v = base();
        v["capabilities"] = json!({"ips": true});
        v["runtimeConfig"] = json!({"ips": ["10.1.0.9/24"]});
        v["args"] = json!({"cni": {"ips": ["fd00::9"]}});
        let mut c = ctx(v).unwrap();
        c.env.args = crate::env::parse_args("IP=10.1.0.9,10.1.0.10");
        let ips = requested_ips(&c).unwrap();
        assert_eq!(ips.len(), 3, "{ips:?}");
    }
}
