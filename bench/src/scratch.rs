//! The run's scratch directory: every namespace mount and every plugin state directory lives
//! under one unique directory, so cleanup is "unmount what is in `ns/`, delete the tree" — the
//! same code on normal exit, on error, on Ctrl-C and from the panic hook.
//!
//! Layout: `<tmp>/netd-bench.<pid>.<nanos>/ns/<tool>-host`, `ns/<tool>-c<index>`, and
//! `state/<tool>/` for the plugins' `dataDir`s.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::netns;

/// Owner of the scratch directory; removes it (and the namespaces in it) on drop.
#[derive(Debug)]
pub struct Scratch {
    root: PathBuf,
}

impl Scratch {
    /// Creates a fresh directory under the system temp dir and registers it with the
    /// interrupt/panic cleanup.
    pub fn create() -> io::Result<Scratch> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let root = std::env::temp_dir().join(format!("netd-bench.{}.{nanos}", std::process::id()));
        std::fs::create_dir(&root)?;
        crate::guard::set_scratch(Some(root.clone()));
        std::fs::create_dir(root.join("ns"))?;
        std::fs::create_dir(root.join("state"))?;
        Ok(Scratch { root })
    }

    /// The scratch root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the namespace file `name` (not created).
    pub fn ns_path(&self, name: &str) -> PathBuf {
        self.root.join("ns").join(name)
    }

    /// A fresh state directory for one tool's plugins.
    pub fn state_dir(&self, tool: &str) -> io::Result<PathBuf> {
        let dir = self.root.join("state").join(tool);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Copies an executable into `bin/` (same file name) and returns the copy's path.
    pub fn snapshot_binary(&self, src: &Path) -> io::Result<PathBuf> {
        let dir = self.root.join("bin");
        std::fs::create_dir_all(&dir)?;
        let dst = dir.join(src.file_name().unwrap_or(src.as_os_str()));
        std::fs::copy(src, &dst)?;
        Ok(dst)
    }

    /// Removes the namespaces whose names start with `prefix` (host namespace first, so the
    /// bridge and host veth ends go with it) and the tool's state directory.
    pub fn remove_tool(&self, prefix: &str) {
        let dir = self.root.join("ns");
        let mut names = list(&dir);
        names.retain(|n| n.starts_with(prefix));
        names.sort_by_key(|n| !n.ends_with("-host"));
        for n in names {
            netns::remove(&dir.join(n));
        }
        let _ = std::fs::remove_dir_all(self.root.join("state").join(prefix));
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_all(&self.root);
        crate::guard::set_scratch(None);
    }
}

/// Unmounts every namespace under `root/ns` and deletes `root`. Idempotent; never follows
/// symlinks out of `root`.
pub fn remove_all(root: &Path) {
    let dir = root.join("ns");
    let mut names = list(&dir);
    names.sort_by_key(|n| !n.ends_with("-host"));
    for n in names {
        netns::remove(&dir.join(n));
    }
    let _ = std::fs::remove_dir_all(root);
}

fn list(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}
