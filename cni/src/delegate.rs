//! Delegated IPAM: runs the plugin named by `ipam.type` from `CNI_PATH` (host-local, static,
//! dhcp, ...) exactly as a runtime would, with our environment and the network configuration on
//! stdin, and reads its result or error.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::env::Env;
use crate::error::Error;
use crate::spec::CniResult;

/// Runs `plugin` with `CNI_COMMAND=command` and `conf` on stdin; returns its parsed stdout
/// (`Value::Null` when it printed nothing, as DEL may).
pub fn exec(plugin: &str, command: &str, env: &Env, conf: &Value) -> Result<Value, Error> {
    let path = find(plugin, env)?;
    let input = serde_json::to_vec(conf).map_err(|e| Error::Decode(e.to_string()))?;
    let mut cmd = Command::new(&path);
    cmd.env("CNI_COMMAND", command);
    // The attachment may not be this invocation's (GC releases others'), so say whose it is.
    for (key, value) in [
        ("CNI_CONTAINERID", env.container_id.as_deref()),
        ("CNI_IFNAME", env.ifname.as_deref()),
        ("CNI_NETNS", env.netns.as_deref().and_then(|p| p.to_str())),
    ] {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io(format!("cannot run IPAM plugin {}", path.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading stdin is reported by its exit status below.
        let _ = stdin.write_all(&input);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("IPAM plugin {} did not finish", path.display()), e))?;
    let parsed: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).map_err(|e| Error::Delegate {
            plugin: plugin.into(),
            code: 999,
            msg: format!("printed something that is not JSON: {e}"),
        })?
    };
    if !out.status.success() {
        let code = parsed.get("code").and_then(Value::as_u64).unwrap_or(999) as u32;
        let mut msg = parsed
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or("failed without an error message")
            .to_string();
        if let Some(d) = parsed.get("details").and_then(Value::as_str) {
            if !d.is_empty() {
                msg = format!("{msg}: {d}");
            }
        }
        return Err(Error::Delegate {
            plugin: plugin.into(),
            code,
            msg,
        });
    }
    Ok(parsed)
}

/// Runs the plugin's ADD and parses its result.
pub fn add(plugin: &str, env: &Env, conf: &Value) -> Result<CniResult, Error> {
    let out = exec(plugin, "ADD", env, conf)?;
    CniResult::from_json(&out).map_err(|e| Error::Delegate {
        plugin: plugin.into(),
        code: 999,
        msg: format!("returned a result we cannot read: {e}"),
    })
}

/// The plugin's path: the first `CNI_PATH` directory that has it.
pub fn find(plugin: &str, env: &Env) -> Result<PathBuf, Error> {
    if env.path.is_empty() {
        return Err(Error::Env(format!(
            "CNI_PATH is not set, so the IPAM plugin {plugin:?} cannot be found"
        )));
    }
    env.path
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Config(format!(
                "ipam.type: no plugin {plugin:?} in CNI_PATH ({})",
                env.path
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            ))
        })
}
