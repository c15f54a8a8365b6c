//! The two sides of the comparison: their configuration lists and how their NAT state is
//! counted.
//!
//! Both get the same network shape: a bridge with the gateway address, masquerade, hairpin,
//! a default route, and one published TCP port per container. Each runs in its own host
//! namespace with its own bridge and subnet, and keeps its state under the run's scratch
//! directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::cli::Tool;
use crate::cni::{ConfList, Plugin};

/// CNI version spoken to both (the reference plugins 1.1.1 support up to 1.0.0).
pub const CNI_VERSION: &str = "1.0.0";

/// Subnet of each tool's network: large enough for the fill plus all windows.
pub fn subnet(tool: Tool) -> &'static str {
    match tool {
        Tool::Netd => "10.201.0.0/20",
        Tool::Reference => "10.202.0.0/20",
    }
}

/// netd-cni alone: bridge, built-in IPAM (host-local schema), nf_tables NAT and port maps.
pub fn netd_conflist(binary: &Path, state: &Path) -> ConfList {
    let conf = json!({
        "type": "netd-cni",
        "bridge": "nbnetd0",
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "dataDir": state.join("netd"),
        "capabilities": {"portMappings": true},
        "ipam": {
            "type": "netd",
            "ranges": [[{"subnet": subnet(Tool::Netd)}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": state.join("ipam"),
        },
    });
    ConfList {
        name: "netdbench".into(),
        cni_version: CNI_VERSION.into(),
        plugins: vec![Plugin {
            binary: binary.to_path_buf(),
            conf,
        }],
        cni_path: binary
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    }
}

/// bridge (IPAM host-local) then portmap, as a conflist would chain them.
pub fn reference_conflist(dir: &Path, state: &Path) -> ConfList {
    let bridge = json!({
        "type": "bridge",
        "bridge": "nbref0",
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet(Tool::Reference)}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": state.join("host-local"),
        },
    });
    let portmap = json!({
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "snat": true,
    });
    ConfList {
        name: "refbench".into(),
        cni_version: CNI_VERSION.into(),
        plugins: vec![
            Plugin {
                binary: dir.join("bridge"),
                conf: bridge,
            },
            Plugin {
                binary: dir.join("portmap"),
                conf: portmap,
            },
        ],
        cni_path: dir.display().to_string(),
    }
}

/// Where to find netd-cni: `--netd`, next to this binary, then `target/release/`.
pub fn find_netd(explicit: Option<&Path>) -> Result<PathBuf, String> {
    crate::procfs::find_binary("netd-cni", explicit, "--netd")
}

/// NAT state in the calling thread's namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatCount {
    /// Rules in the nf_tables ruleset (`nft -j list ruleset`; includes iptables-nft rules).
    pub nft_rules: usize,
    /// Elements in all nf_tables sets and maps.
    pub nft_elements: usize,
    /// `-A` lines of `iptables-save` (reference only).
    pub iptables_rules: Option<usize>,
}

impl NatCount {
    /// The figure the report compares: iptables rules for the reference, nf_tables rules
    /// for netd.
    pub fn rules(&self) -> usize {
        self.iptables_rules.unwrap_or(self.nft_rules)
    }

    /// JSON form.
    pub fn to_json(&self) -> Value {
        json!({
            "nft_rules": self.nft_rules,
            "nft_elements": self.nft_elements,
            "iptables_rules": self.iptables_rules,
        })
    }
}

/// Counts NAT state with `nft` (and `iptables-save` for the reference) in the calling
/// thread's namespace; the commands inherit it.
pub fn count_nat(tool: Tool) -> Result<NatCount, String> {
    let ruleset = run_tool_cmd("nft", &["-j", "list", "ruleset"])?;
    let (nft_rules, nft_elements) = count_nft_json(&ruleset)?;
    let iptables_rules = match tool {
        Tool::Netd => None,
        Tool::Reference => Some(count_iptables_save(&run_tool_cmd("iptables-save", &[])?)),
    };
    Ok(NatCount {
        nft_rules,
        nft_elements,
        iptables_rules,
    })
}

fn run_tool_cmd(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e} (install nftables / iptables)"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// (rules, set and map elements) in `nft -j list ruleset` output.
pub fn count_nft_json(text: &str) -> Result<(usize, usize), String> {
    if text.trim().is_empty() {
        return Ok((0, 0));
    }
    let v: Value = serde_json::from_str(text).map_err(|e| format!("nft -j output: {e}"))?;
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let rules = items.iter().filter(|i| i.get("rule").is_some()).count();
    let elements = items
        .iter()
        .filter_map(|i| i.get("set").or_else(|| i.get("map")))
        .filter_map(|s| s["elem"].as_array().map(Vec::len))
        .sum();
    Ok((rules, elements))
}

/// Rules (`-A` lines) in `iptables-save` output, all tables.
pub fn count_iptables_save(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("-A ")).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_json_counts() {
        let j = r#"{"nftables":[{"metainfo":{}},{"table":{"family":"inet","name":"t"}},
            {"chain":{"name":"c"}},{"rule":{"chain":"c"}},{"rule":{"chain":"c"}},
            {"map":{"name":"m","elem":[[1,2],[3,4]]}},{"set":{"name":"s","elem":["10.0.0.0/8"]}},
            {"set":{"name":"empty"}}]}"#;
        assert_eq!(count_nft_json(j).unwrap(), (2, 3));
        assert_eq!(count_nft_json("").unwrap(), (0, 0));
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j CNI-HOSTPORT-DNAT\nCOMMIT\n";
        assert_eq!(count_iptables_save(save), 1);
    }
}
