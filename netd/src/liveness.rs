//! Attachment liveness: a container's endpoints expire when the container is gone, even if
//! nobody says so.
//!
//! The CNI plugin reports DEL, but DEL may never come (the runtime crashed, the plugin was not
//! called, netd was down at the time). The container's network namespace is the ground truth:
//! runtimes keep it at the `CNI_NETNS` path the attachment records (a bind mount under
//! `/run/netns`, or `/proc/PID/ns/net`) exactly as long as the container lives, and remove it
//! afterwards. [`run`] sweeps every few seconds ([`DEFAULT_SWEEP_MS`]): attachments whose path no
//! longer exists are removed together with their endpoints, in one transaction per sweep.
//!
//! Only a path that is certainly gone counts (`ENOENT`, `ENOTDIR`); any other error, an empty
//! or relative path (nothing to check) keeps the attachment. A removal is guarded by the
//! attachment's revision, so a container re-added under the same id and interface while the
//! sweep ran is never removed by mistake.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use netd_config::netd::Attachment;
use tokio::sync::watch;

use crate::api::drained;
use crate::registry::{Registry, RegistryError};

/// How often attachments are checked by default, in milliseconds ("every few seconds": quick
/// enough that a dead container's name and endpoints vanish about as fast as a CNI DEL would
/// make them, cheap because a sweep is one `stat` per attachment).
pub const DEFAULT_SWEEP_MS: u64 = 2_000;

/// What a namespace path says about its owner.
#[derive(Debug)]
pub enum NetnsState {
    /// The path exists: the namespace (and so the container) is there.
    Present,
    /// The path is gone: so is the container.
    Gone,
    /// Cannot tell (permissions, I/O error); the attachment is kept.
    Unknown(io::Error),
}

/// Checks one namespace path. Blocking (a `stat`): call off the runtime.
pub fn netns_state(path: &Path) -> NetnsState {
    match std::fs::metadata(path) {
        Ok(_) => NetnsState::Present,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            NetnsState::Gone
        }
        Err(e) => NetnsState::Unknown(e),
    }
}

/// One sweep: removes the attachments whose namespace is gone, with their endpoints. Returns
/// what was removed.
pub async fn sweep(registry: &Arc<Registry>) -> Result<Vec<Arc<Attachment>>, RegistryError> {
    let snap = registry.snapshot();
    let candidates: Vec<(String, u64, String)> = snap
        .attachments
        .values()
        .filter(|a| a.netns.starts_with('/'))
        .map(|a| (a.key(), a.revision, a.netns.clone()))
        .collect();
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let gone = tokio::task::spawn_blocking(move || {
        candidates
            .into_iter()
            .filter(|(_, _, path)| matches!(netns_state(Path::new(path)), NetnsState::Gone))
            .map(|(key, revision, _)| (key, revision))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| RegistryError::Internal(format!("netns check task failed: {e}")))?;
    if gone.is_empty() {
        return Ok(Vec::new());
    }
    registry.detach_gone(&gone).await
}

/// Sweeps every `interval` until `stop` turns true.
pub async fn run(registry: Arc<Registry>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = drained(&mut stop) => return,
        }
        match sweep(&registry).await {
            Ok(removed) => {
                for a in removed {
                    crate::log(&format!(
                        "container {} ({}) is gone: namespace {} no longer exists; removed its attachment and {} endpoint(s)",
                        short_id(&a.container_id),
                        a.ifname,
                        a.netns,
                        a.endpoints.len()
                    ));
                }
            }
            Err(e) => crate::log(&format!("attachment sweep failed (will retry): {e}")),
        }
    }
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_paths() {
        assert!(matches!(
            netns_state(Path::new("/proc/self/ns/net")),
            NetnsState::Present
        ));
        assert!(matches!(
            netns_state(Path::new("/run/netns/netd-no-such-namespace")),
            NetnsState::Gone
        ));
        assert!(matches!(
            netns_state(Path::new("/proc/self/status/net")),
            NetnsState::Gone
        ));
    }
}
