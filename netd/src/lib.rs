//! netd: the node daemon and its CLI.
//!
//! - [`cli`]: the `netd` command line (one module per verb); [`client`]: the API client it uses.
//! - [`daemon`]: `netd up` — startup, supervision, shutdown.
//! - [`api`]: the HTTP/1.1 + JSON API on the unix socket.
//! - [`registry`]: networks, services, endpoints, leases, attachments; snapshot, store
//!   (embedded redb, or etcd shared by several nodes), watch.
//! - [`networks`]: network lifecycle with its CNI conflist ([`conflist`]).
//! - [`health`]: active health checks of service endpoints (TCP connect, HTTP GET).
//! - [`liveness`]: removes attachments (and their endpoints) whose container namespace is gone.
//! - [`dns`]: answers DNS for the networks' containers and services (crate `netd-dns`).
//! - [`mesh`]: one supervised `netd-sidecar` per container on a meshed network, with
//!   transparent interception in its namespace.
//! - [`vip`]: service VIPs and host ports balanced in nf_tables.

pub mod api;
pub mod cli;
pub mod client;
pub mod conflist;
pub mod daemon;
pub mod dns;
pub mod health;
pub mod liveness;
pub mod mesh;
pub mod networks;
pub mod registry;
pub mod vip;

/// Logs one line to stderr (the daemon's log goes to the journal when run by systemd).
pub fn log(msg: &str) {
    eprintln!("netd: {msg}");
}
