//! Harness for netd's integration tests: real topologies in throwaway network namespaces.
//!
//! Every test builds its own world and tears it down in `Drop`, even when it panics:
//!
//! - [`ns::Ns`]: a named network namespace (`netd-t-<pid>-<n>`), deleted on drop. The plugin
//!   always runs inside one of these "host" namespaces, never in the root namespace, so the
//!   machine's bridges, firewall and sysctls are never touched.
//! - [`tmp::TempDir`]: a private state directory (the plugin's `dataDir` and `ipam.dataDir`),
//!   so tests run in parallel without sharing state.
//! - [`conf::Network`]: the configuration of one network (unique name, bridge and subnets),
//!   rendered as netd-cni JSON or as the reference `bridge` plugin's equivalent.
//! - [`plugin::Plugin`] and [`plugin::Call`]: run `netd-cni` (or a reference plugin) with the
//!   CNI environment, inside a namespace, with a bounded wait.
//! - [`host::Host`]: the usual fixture — one host namespace, one state directory, one network —
//!   with helpers to attach containers and to inspect what the plugin left behind.
//! - [`net`]: traffic between namespaces (ping, TCP and UDP servers that report the peer's
//!   address, clients), loopback or namespace-local addresses only.
//! - [`nft`]: reading `nft -j list ruleset` (tests may exec `nft`; the plugin never does).
//! - [`process::Background`]: a helper process (a DHCP server, a daemon) started inside a test
//!   namespace, killed by PID on drop.
//!
//! Nothing here retries forever: every loop has a count and a deadline ([`poll`]).

pub mod conf;
pub mod host;
pub mod net;
pub mod nft;
pub mod ns;
pub mod plugin;
pub mod podman;
pub mod poll;
pub mod process;
pub mod tmp;

pub use conf::Network;
pub use host::{Container, Host};
pub use ns::Ns;
pub use plugin::{Call, Outcome, Plugin};
pub use tmp::TempDir;
