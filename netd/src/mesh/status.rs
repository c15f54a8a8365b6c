//! What `GET /v1/sidecars` and `netd sidecars` show about each supervised sidecar. Owns only
//! the wire shape; the supervisor fills it in.

use serde::{Deserialize, Serialize};

/// Where a sidecar is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SidecarState {
    /// Installing the interception rules and starting the process.
    Starting,
    /// The process runs.
    Running,
    /// The process exited (or could not start, or the rules could not be installed); the
    /// next attempt comes after a backoff.
    Backoff,
    /// Being stopped (SIGTERM, then SIGKILL after the bound) and its rules removed.
    Stopping,
}

impl std::fmt::Display for SidecarState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SidecarState::Starting => "starting",
            SidecarState::Running => "running",
            SidecarState::Backoff => "backoff",
            SidecarState::Stopping => "stopping",
        })
    }
}

/// One sidecar, as supervised now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarStatus {
    /// The attachment's container id.
    pub container_id: String,
    /// Its interface.
    pub ifname: String,
    /// Its network.
    pub network: String,
    /// Its network namespace path (the sidecar runs in there).
    pub netns: String,
    /// State.
    pub state: SidecarState,
    /// Process id while a process runs.
    pub pid: Option<u32>,
    /// How many times the process exited unexpectedly and was started again.
    pub restarts: u32,
    /// The running process was left by an earlier netd and adopted.
    pub adopted: bool,
    /// The interception rules are installed in the namespace.
    pub intercepting: bool,
    /// How the last process ended, or the last failure to start one or to install rules.
    pub last_error: Option<String>,
}
