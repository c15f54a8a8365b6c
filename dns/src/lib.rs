//! netd's DNS: answers for container and service names from an immutable registry
//! [`Snapshot`], and forwarding with a small cache for every other name.
//!
//! The crate is shared by the node daemon (one listener per network gateway) and the sidecar,
//! so it depends on neither: callers build a [`Snapshot`] from plain data, publish new ones
//! through a [`SnapshotHandle`] and pass the upstream servers themselves (the crate never reads
//! `/etc/resolv.conf`).
//!
//! - [`snapshot`]: the immutable name tables and their builder.
//! - [`answer`](mod@answer): pure lookup, question + snapshot → records, NXDOMAIN, NODATA or
//!   "forward".
//! - [`forward`]: upstream queries over UDP/TCP and the TTL-respecting cache.
//! - [`server`]: the hickory-server request handler and the UDP/TCP listeners.
//! - `batch`: `recvmmsg`/`sendmmsg` buffers for the UDP listener.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use netd_dns::{ContainerRecord, DnsServer, ServerOptions, SnapshotBuilder, SnapshotHandle};
//!
//! let mut builder = SnapshotBuilder::new();
//! builder.container(&ContainerRecord {
//!     names: vec!["web".into()],
//!     addresses: vec!["10.88.0.2".parse()?],
//! })?;
//! let snapshot = SnapshotHandle::new(builder.build());
//! let server = DnsServer::bind(
//!     "10.88.0.1:53".parse()?,
//!     None,
//!     snapshot.clone(),
//!     vec!["192.0.2.53:53".parse()?],
//!     ServerOptions::default(),
//! )
//! .await?;
//! server.serve(std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod answer;
mod batch;
pub mod forward;
pub mod server;
pub mod snapshot;

pub use answer::{answer, Answer};
pub use forward::{ForwardError, ForwardOptions, Forwarded, Forwarder, Transport};
pub use server::{DnsServer, ListenAddrs, ServerError, ServerOptions};
pub use snapshot::{
    ContainerRecord, NameOwner, PortProtocol, ServicePort, ServiceRecord, ShadowedName, Snapshot,
    SnapshotBuilder, SnapshotError, SnapshotHandle, DEFAULT_DOMAIN, DEFAULT_NAMESPACE, DEFAULT_TTL,
};

/// The hickory-proto version this crate speaks (names, record types, records in the API).
pub use hickory_proto as proto;
