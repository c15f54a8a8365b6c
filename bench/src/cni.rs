//! Invoking CNI plugins directly, the way libcni does for a network configuration list.
//!
//! ADD runs the plugins in order, each receiving the previous one's result as `prevResult`;
//! DEL runs them in reverse, each receiving the cached final ADD result. `runtimeConfig` keys
//! are passed only to plugins that declare the matching capability. Plugins inherit the network
//! namespace of the calling thread, so callers invoke them from a thread inside the benchmark's
//! host namespace.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Map, Value};

/// The container port every attachment publishes.
pub const CONTAINER_PORT: u16 = 8080;

/// A plugin invocation may take this long before the watchdog kills it.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);

/// One entry of a configuration list.
#[derive(Debug, Clone)]
pub struct Plugin {
    /// The executable.
    pub binary: PathBuf,
    /// Its configuration, without `name`/`cniVersion` (added from the list).
    pub conf: Value,
}

/// A network configuration list and where its plugins (and their delegates) live.
#[derive(Debug, Clone)]
pub struct ConfList {
    /// Network name.
    pub name: String,
    /// CNI version of every invocation.
    pub cni_version: String,
    /// Plugins in ADD order.
    pub plugins: Vec<Plugin>,
    /// `CNI_PATH` (where `bridge` finds `host-local`).
    pub cni_path: String,
}

/// One container: its namespace and the host port it publishes.
#[derive(Debug, Clone)]
pub struct Container {
    /// `CNI_CONTAINERID`.
    pub id: String,
    /// `CNI_NETNS`.
    pub netns: PathBuf,
    /// Published as `hostPort` → [`CONTAINER_PORT`]/tcp.
    pub host_port: u16,
}

/// A failed plugin invocation, with everything the plugin said.
#[derive(Debug, Clone)]
pub struct PluginError {
    /// Which plugin.
    pub plugin: String,
    /// `ADD`, `DEL`, ...
    pub command: String,
    /// Container ID.
    pub container: String,
    /// Exit status description.
    pub status: String,
    /// stdout (the CNI error JSON) and stderr, trimmed.
    pub output: String,
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} of {} failed ({}): {}",
            self.plugin, self.command, self.container, self.status, self.output
        )
    }
}

impl std::error::Error for PluginError {}

impl ConfList {
    /// ADD through the whole list; returns the final result (what a runtime caches).
    pub fn add(&self, c: &Container) -> Result<Value, PluginError> {
        let mut prev: Option<Value> = None;
        for p in &self.plugins {
            let conf = self.plugin_conf(p, c, prev.as_ref());
            let out = exec(&p.binary, "ADD", c, &self.cni_path, &conf)?;
            prev = Some(out.ok_or_else(|| PluginError {
                plugin: plugin_name(&p.binary),
                command: "ADD".into(),
                container: c.id.clone(),
                status: "exit 0".into(),
                output: "printed no result".into(),
            })?);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL through the list in reverse order, each plugin given the cached ADD result.
    pub fn del(&self, c: &Container, cached: &Value) -> Result<(), PluginError> {
        for p in self.plugins.iter().rev() {
            let conf = self.plugin_conf(p, c, Some(cached));
            exec(&p.binary, "DEL", c, &self.cni_path, &conf)?;
        }
        Ok(())
    }

    /// The configuration one plugin receives on stdin.
    pub fn plugin_conf(&self, p: &Plugin, c: &Container, prev: Option<&Value>) -> Value {
        let mut conf = match &p.conf {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        conf.insert("name".into(), json!(self.name));
        conf.insert("cniVersion".into(), json!(self.cni_version));
        let declares =
            |cap: &str| conf.get("capabilities").and_then(|c| c.get(cap)) == Some(&json!(true));
        if declares("portMappings") {
            let rc = json!({"portMappings": [{
                "hostPort": c.host_port, "containerPort": CONTAINER_PORT, "protocol": "tcp"
            }]});
            conf.insert("runtimeConfig".into(), rc);
        }
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        Value::Object(conf)
    }
}

/// Runs one plugin command; returns its parsed stdout (`None` when empty).
pub fn exec(
    binary: &Path,
    command: &str,
    c: &Container,
    cni_path: &str,
    conf: &Value,
) -> Result<Option<Value>, PluginError> {
    let fail = |status: String, output: String| PluginError {
        plugin: plugin_name(binary),
        command: command.to_string(),
        container: c.id.clone(),
        status,
        output,
    };
    let mut child = Command::new(binary)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &c.id)
        .env("CNI_NETNS", &c.netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail("not started".into(), e.to_string()))?;
    let _watch = crate::guard::watch_child(child.id(), PLUGIN_TIMEOUT);
    let input = serde_json::to_vec(conf).unwrap_or_default();
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading its input shows up in its status below.
        let _ = stdin.write_all(&input);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail("wait failed".into(), e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let text = format!("{} {}", stdout.trim(), stderr.trim());
        return Err(fail(out.status.to_string(), text.trim().to_string()));
    }
    if stdout.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&stdout).map(Some).map_err(|e| {
        fail(
            "exit 0".into(),
            format!("unparsable result ({e}): {stdout}"),
        )
    })
}

/// `CNI_COMMAND=VERSION` answer of a plugin, to fail early with a clear message.
pub fn version(binary: &Path, cni_version: &str) -> Result<Value, PluginError> {
    let probe = Container {
        id: String::new(),
        netns: PathBuf::new(),
        host_port: 0,
    };
    exec(
        binary,
        "VERSION",
        &probe,
        "",
        &json!({ "cniVersion": cni_version }),
    )?
    .ok_or_else(|| PluginError {
        plugin: plugin_name(binary),
        command: "VERSION".into(),
        container: String::new(),
        status: "exit 0".into(),
        output: "printed nothing".into(),
    })
}

fn plugin_name(binary: &Path) -> String {
    binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| binary.display().to_string())
}

/// The container's first IPv4 address and its gateway, from an ADD result.
pub fn ipv4_and_gateway(result: &Value) -> Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let addr = ip["address"].as_str()?.split('/').next()?.parse().ok()?;
        let gw = ip["gateway"].as_str()?.parse().ok()?;
        Some((addr, gw))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_config_only_for_declared_capabilities() {
        let list = ConfList {
            name: "n".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![],
            cni_path: String::new(),
        };
        let c = Container {
            id: "c".into(),
            netns: "/x".into(),
            host_port: 20001,
        };
        let bridge = Plugin {
            binary: "bridge".into(),
            conf: json!({"type": "bridge"}),
        };
        let portmap = Plugin {
            binary: "portmap".into(),
            conf: json!({"type": "portmap", "capabilities": {"portMappings": true}}),
        };
        let b = list.plugin_conf(&bridge, &c, None);
        assert!(b.get("runtimeConfig").is_none() && b.get("prevResult").is_none());
        assert_eq!(b["name"], "n");
        let p = list.plugin_conf(&portmap, &c, Some(&json!({"ips": []})));
        assert_eq!(p["runtimeConfig"]["portMappings"][0]["hostPort"], 20001);
        assert_eq!(p["prevResult"], json!({"ips": []}));
    }

    #[test]
    fn address_from_result() {
        let r =
            json!({"ips": [{"address": "10.201.0.5/20", "gateway": "10.201.0.1", "interface": 2}]});
        let (ip, gw) = ipv4_and_gateway(&r).unwrap();
        assert_eq!(
            (ip.to_string(), gw.to_string()),
            ("10.201.0.5".into(), "10.201.0.1".into())
        );
    }
}
