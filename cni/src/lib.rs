//! netd-cni: a CNI 1.1 plugin that attaches containers to a Linux bridge, with built-in IPAM,
//! masquerade and port mapping, all done through netlink (rtnetlink and nf_tables).
//!
//! `main.rs` only reads the environment and prints; [`cmd`] holds one module per operation;
//! [`link`] and [`nat`] speak rtnetlink and nf_tables; [`ipam`] allocates addresses;
//! [`state`] keeps the per-attachment records that make DEL, GC and rollback complete.

pub mod cmd;
pub mod delegate;
pub mod env;
pub mod error;
pub mod ipam;
pub mod link;
pub mod nat;
pub mod netns;
pub mod report;
pub mod spec;
pub mod state;
