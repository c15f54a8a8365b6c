//! netd-sidecar: the per-container data plane of the netd mesh.
//!
//! A transparent proxy (outbound and inbound listeners fed by nf_tables redirects, original
//! destination from `SO_ORIGINAL_DST`), built as tower layers over tokio and hyper: protocol
//! detection, HTTP balanced per request and TCP per connection over a service's endpoints,
//! pooled upstream connections, golden metrics, trace context, discovery DNS, graceful drain.
//!
//! Modules, in the order a connection meets them:
//! - [`netns`]: entering the container's namespace before anything else;
//! - [`snapshot`]: the registry view (from netd or a file) swapped atomically;
//! - [`listen`]: the listeners, with the IPv6 companions interception needs;
//! - [`local`]: node-local links, unix streams between the sidecars of one node;
//! - [`stream`]: one connection type over TCP and node-local links;
//! - [`proxy`]: original destination, target and protocol choice per connection;
//! - [`sockopt`]: `SO_ORIGINAL_DST`, `SO_MARK`, marked connects;
//! - [`detect`]: protocol detection and replay of the bytes read;
//! - [`http`]: the hyper server and the tower stack (trace → observe → route → balance →
//!   upstream);
//! - [`balance`]: endpoints, policies (P2C peak-EWMA, round robin, random, ring hash) and the
//!   per-service directory;
//! - [`pool`]: upstream HTTP/1.1 and HTTP/2 connections per endpoint;
//! - [`tcp`]: opaque forwarding (TCP, TLS passthrough);
//! - [`metrics`], [`admin`]: Prometheus series and the admin listener;
//! - [`dns`]: discovery DNS over `netd-dns`;
//! - [`drain`], [`app`]: shutdown signal and wiring; [`cli`]: the command line.

pub mod admin;
pub mod app;
pub mod balance;
pub mod cli;
pub mod detect;
pub mod dns;
pub mod drain;
pub mod http;
pub mod listen;
pub mod local;
pub mod metrics;
pub mod netns;
pub mod pool;
pub mod proxy;
pub mod snapshot;
pub mod sockopt;
pub mod stream;
pub mod tcp;

pub use app::{start, Addrs, Config, Running, Source, StartError};
