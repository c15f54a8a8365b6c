//! Tests of the built-in IPAM, each in its own throwaway directory under the system temp dir:
//! range bounds and round-robin (`bounds`), static requests, dual stack and all-or-nothing
//! (`requests`), release, GC, on-disk format and crash leftovers (`disk`), threads and
//! processes racing on one store (`concurrency`), and a randomized check against a model
//! (`model`).

mod bounds;
mod concurrency;
mod disk;
mod model;
mod requests;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use netd_config::cni::IpamConfig;

use super::{Allocation, Ipam, IpamError, Owner};

/// A unique directory, removed on drop (so also when the test panics).
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "netd-ipam-{name}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn conf(json: &str) -> IpamConfig {
    serde_json::from_str(json).expect("ipam config")
}

/// Opens network `net` under `tmp` with the IPAM section `json`.
pub(super) fn open(tmp: &TempDir, json: &str) -> Ipam {
    Ipam::open(&conf(json), "net", tmp.path()).expect("open")
}

/// A one-range-set config over `subnet`.
pub(super) fn subnet(subnet: &str) -> String {
    format!(r#"{{"type":"netd","ranges":[[{{"subnet":"{subnet}"}}]]}}"#)
}

pub(super) fn owner(id: &str) -> Owner {
    Owner {
        container_id: id.to_string(),
        ifname: "eth0".to_string(),
    }
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// The addresses of a successful allocation.
pub(super) fn addrs(allocs: &[Allocation]) -> Vec<IpAddr> {
    allocs.iter().map(|a| a.address.addr()).collect()
}

/// Allocates one dynamic address per set for `id` and returns the first.
pub(super) fn take(ipam: &Ipam, id: &str) -> IpAddr {
    addrs(&ipam.allocate(&owner(id), &[]).expect("allocate"))[0]
}

pub(super) fn exhausted_range(e: IpamError) -> String {
    match e {
        IpamError::Exhausted { range } => range,
        other => panic!("expected Exhausted, got {other:?}"),
    }
}
