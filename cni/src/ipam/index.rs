//! The owner index: which addresses an owner may hold, so an ADD retry finds its earlier
//! allocation without scanning the whole directory.
//!
//! It is a *hint*, kept a superset of the truth: addresses are added before
//! they are reserved and removed only after their reservation is gone, so a process killed at
//! any point leaves an index that names every reservation of the owner, plus perhaps some it
//! no longer holds. Readers check each entry against its reservation file, which stays the
//! only authority. Files are named `.netd-owner-<hash of the owner>` (never a valid address,
//! so host-local ignores them) and hold a JSON list of entries, so two owners whose hashes
//! collide share a file correctly. Reservations made by host-local itself are not indexed;
//! the directory scans (`release`, `gc`, `owned_by`) still see them.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::store::Locked;
use super::{IpamError, Owner};

const PREFIX: &str = ".netd-owner-";

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    owner: Owner,
    addrs: Vec<IpAddr>,
}

/// FNV-1a: stable across builds and platforms (unlike `DefaultHasher`), which a file name
/// must be.
fn file_name(owner: &Owner) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = owner
        .container_id
        .bytes()
        .chain([0xff])
        .chain(owner.ifname.bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{PREFIX}{h:016x}")
}

/// A damaged index file reads as empty: it is only a hint.
fn read(locked: &Locked<'_>, name: &str) -> Result<Vec<Entry>, IpamError> {
    Ok(locked
        .read_private(name)?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default())
}

fn write(locked: &Locked<'_>, name: &str, entries: &[Entry]) -> Result<(), IpamError> {
    if entries.is_empty() {
        return locked.remove_private(name);
    }
    // Serializing plain strings and addresses cannot fail; fall back to an empty list anyway.
    let json = serde_json::to_vec(entries).unwrap_or_else(|_| b"[]".to_vec());
    locked.write_private(name, &json)
}

/// The addresses the index names for `owner` (unverified).
pub(crate) fn load(locked: &Locked<'_>, owner: &Owner) -> Result<Vec<IpAddr>, IpamError> {
    let entries = read(locked, &file_name(owner))?;
    Ok(entries
        .into_iter()
        .filter(|e| &e.owner == owner)
        .flat_map(|e| e.addrs)
        .collect())
}

/// Sets the addresses the index names for `owner` (none: forget it). Durable once the
/// directory is synced.
pub(crate) fn save(locked: &Locked<'_>, owner: &Owner, addrs: &[IpAddr]) -> Result<(), IpamError> {
    let name = file_name(owner);
    let mut entries = read(locked, &name)?;
    entries.retain(|e| &e.owner != owner);
    if !addrs.is_empty() {
        entries.push(Entry {
            owner: owner.clone(),
            addrs: addrs.to_vec(),
        });
    }
    write(locked, &name, &entries)
}

/// Forgets every owner for which `keep` is false (GC).
pub(crate) fn retain(locked: &Locked<'_>, keep: impl Fn(&Owner) -> bool) -> Result<(), IpamError> {
    for name in locked
        .names()?
        .into_iter()
        .filter(|n| n.starts_with(PREFIX))
    {
        let mut entries = read(locked, &name)?;
        let before = entries.len();
        entries.retain(|e| keep(&e.owner));
        if entries.len() != before || entries.is_empty() {
            write(locked, &name, &entries)?;
        }
    }
    Ok(())
}
