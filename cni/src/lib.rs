//! netd-cni: a CNI 1.1 plugin that attaches containers to a Linux bridge, with built-in IPAM,
//! masquerade and port mapping, all done through netlink (rtnetlink and nf_tables).

pub mod ipam;
pub mod link;
pub mod nat;
pub mod netns;
