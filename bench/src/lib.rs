//! `netd-bench`: side-by-side benchmarks of netd against the tools users would otherwise pick.
//!
//! The `cni` benchmark compares `netd-cni` with the reference chain bridge + host-local +
//! portmap (containernetworking-plugins), invoked directly as a runtime would, inside throwaway
//! network namespaces. Modules, in the order a run uses them:
//!
//! - [`cli`] — options.
//! - [`guard`] — Ctrl-C, watchdog and panic-hook cleanup.
//! - [`scratch`] — the run's temp directory (namespace mounts and plugin state).
//! - [`netns`] — creating and entering network namespaces.
//! - [`cni`] — invoking plugins and configuration lists.
//! - [`tools`] — the two tools' configurations and NAT counting.
//! - [`attach`] — the fill / window scenario (ADD and DEL latency).
//! - [`datapath`] — request/response server and load generator.
//! - [`runner`] — one tool's run, from namespaces to teardown.
//! - [`report`] — the table and the JSON document.
//! - [`stats`] — percentiles.
//! - [`procfs`] — memory and CPU time of processes, programs on `PATH`, log tails.
//!
//! The `dns` benchmark ([`dns`]) compares netd's DNS server (`netd-dns`, run by the same
//! binary's `dns-server` mode) with dnsmasq under dnsperf, on loopback.
//!
//! The `registry` benchmark ([`registry`]) measures the netd daemon itself through its API:
//! registration throughput, watch propagation latency and RSS, with `netd up` inside a
//! throwaway network namespace.
//!
//! The `mesh` benchmark ([`mesh`]) compares the mesh's HTTP path through two `netd-sidecar`
//! hops with the same path direct, through two nginx hops and through two HAProxy hops, on
//! loopback, under wrk (fixed concurrency) and an open-loop generator (fixed rate).

pub mod attach;
pub mod cli;
pub mod cni;
pub mod datapath;
pub mod dns;
pub mod guard;
pub mod mesh;
pub mod netns;
pub mod procfs;
pub mod registry;
pub mod report;
pub mod runner;
pub mod scratch;
pub mod stats;
pub mod tools;
