//! CNI network configuration lists for netd networks: what `<cni-conf-dir>/<name>.conflist`
//! contains, and writing/removing it atomically (temporary file, fsync, rename), so a runtime
//! never reads a half-written file.
//!
//! The conflist runs `netd-cni` with the network's bridge and subnets (one IPAM range set per
//! subnet, so two subnets give dual stack) and the capabilities Podman and containerd use. Its
//! `dns` section points containers at netd's DNS on each subnet's gateway.

use std::io::Write;
use std::path::{Path, PathBuf};

use netd_config::netd::Network;
use serde_json::{json, Value};

/// CNI version the conflists declare: 1.0.0, the newest that Podman 4's CNI library reads
/// (netd-cni also speaks 1.1.0 to runtimes that send it).
pub const CNI_VERSION: &str = "1.0.0";

/// Path of a network's conflist.
pub fn path(dir: &Path, network: &str) -> PathBuf {
    dir.join(format!("{network}.conflist"))
}

/// The conflist of `net`.
pub fn render(net: &Network) -> Value {
    let ranges: Vec<Value> = net
        .subnets
        .iter()
        .map(|s| json!([{ "subnet": s.to_string() }]))
        .collect();
    let mut routes = Vec::new();
    if net.subnets.iter().any(|s| s.addr().is_ipv4()) {
        routes.push(json!({ "dst": "0.0.0.0/0" }));
    }
    if net.subnets.iter().any(|s| s.addr().is_ipv6()) {
        routes.push(json!({ "dst": "::/0" }));
    }
    let mut plugin = json!({
        "type": "netd-cni",
        "bridge": net.bridge,
        "isGateway": true,
        "isDefaultGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "capabilities": { "portMappings": true, "ips": true, "mac": true, "aliases": true },
        "dataDir": netd_config::cni::DEFAULT_DATA_DIR,
        "ipam": { "type": "netd", "ranges": ranges, "routes": routes },
    });
    if net.isolate {
        plugin["isolate"] = json!(true);
    }
    // netd answers DNS on the gateways; netd-cni returns this section as the result's `dns`.
    let nameservers: Vec<String> = net
        .subnets
        .iter()
        .map(|s| crate::dns::gateway_address(s).to_string())
        .collect();
    plugin["dns"] = json!({
        "nameservers": nameservers,
        "search": [crate::dns::SEARCH_DOMAIN],
    });
    json!({
        "cniVersion": CNI_VERSION,
        "name": net.name,
        "plugins": [plugin],
    })
}

/// Writes `net`'s conflist into `dir` (created if missing) unless it already has exactly this
/// content. Returns true when the file was written.
pub fn write(dir: &Path, net: &Network) -> std::io::Result<bool> {
    let target = path(dir, &net.name);
    let mut text = serde_json::to_vec_pretty(&render(net)).map_err(std::io::Error::other)?;
    text.push(b'\n');
    if std::fs::read(&target).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.conflist.tmp", net.name));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &target)?;
    Ok(true)
}

/// Removes a network's conflist; a missing file is fine. Returns true when a file was removed.
pub fn remove(dir: &Path, network: &str) -> std::io::Result<bool> {
    match std::fs::remove_file(path(dir, network)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_is_a_valid_netd_cni_config() {
        let net = Network {
            name: "netd".into(),
            subnets: vec![
                "10.89.0.0/24".parse().unwrap(),
                "fd00:89::/64".parse().unwrap(),
            ],
            mesh: false,
            isolate: false,
            bridge: "netd0".into(),
            revision: 1,
        };
        let v = render(&net);
        assert_eq!(v["name"], "netd");
        let mut plugin = v["plugins"][0].clone();
        plugin["name"] = v["name"].clone();
        plugin["cniVersion"] = v["cniVersion"].clone();
        let conf: netd_config::cni::NetConf = serde_json::from_value(plugin).unwrap();
        conf.validate().unwrap();
        assert_eq!(conf.bridge_name(), "netd0");
        assert!(conf.has_capability("portMappings"));
        assert_eq!(conf.ipam.unwrap().range_sets().len(), 2);
        assert_eq!(
            v["plugins"][0]["dns"],
            serde_json::json!({
                "nameservers": ["10.89.0.1", "fd00:89::1"],
                "search": ["netd.local"],
            })
        );
    }
}
