//! The CNI environment: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`
//! and `CNI_PATH`, read once and checked per command.

use std::path::PathBuf;

use netd_config::names::{check_container_id, check_ifname};

use crate::error::Error;

/// The operation the runtime asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container (idempotent).
    Del,
    /// Verify an attachment.
    Check,
    /// Release everything not in the valid-attachments list.
    Gc,
    /// Report whether ADD can succeed now.
    Status,
    /// Print the supported versions.
    Version,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// The environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`, split into pairs.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`, split.
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Env {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS").map(PathBuf::from),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS").map(|a| parse_args(&a)).unwrap_or_default(),
            path: var("CNI_PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default(),
        }
    }

    /// `CNI_CONTAINERID`, required by ADD, DEL and CHECK.
    pub fn container_id(&self) -> Result<&str, Error> {
        let id = self
            .container_id
            .as_deref()
            .ok_or_else(|| Error::Env("CNI_CONTAINERID is not set".into()))?;
        check_container_id(id).map_err(|m| Error::Env(format!("CNI_CONTAINERID {m}")))?;
        Ok(id)
    }

    /// `CNI_IFNAME`, required by ADD, DEL and CHECK.
    pub fn ifname(&self) -> Result<&str, Error> {
        let name = self
            .ifname
            .as_deref()
            .ok_or_else(|| Error::Env("CNI_IFNAME is not set".into()))?;
        check_ifname(name).map_err(|m| Error::Env(format!("CNI_IFNAME {m}")))?;
        Ok(name)
    }

    /// `CNI_NETNS`, required by ADD and CHECK.
    pub fn netns(&self) -> Result<&std::path::Path, Error> {
        self.netns
            .as_deref()
            .ok_or_else(|| Error::Env("CNI_NETNS is not set".into()))
    }

    /// The value of `key` in `CNI_ARGS`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits `K=V;K2=V2`; entries without `=` are ignored.
pub fn parse_args(s: &str) -> Vec<(String, String)> {
    s.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_and_names() {
        let a = parse_args("IgnoreUnknown=1;K8S_POD_NAME=web-0;IP=10.1.0.9;junk");
        assert_eq!(a.len(), 3);
        let env = Env {
            args: a,
            ifname: Some("eth0/1".into()),
            container_id: Some("ab$".into()),
            ..Env::default()
        };
        assert_eq!(env.arg("IP"), Some("10.1.0.9"));
        assert!(env.ifname().is_err());
        assert!(env.container_id().is_err());
        assert!(Env::default().netns().is_err());
    }
}
