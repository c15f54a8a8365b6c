//! The on-disk store, in host-local's format, and its crash-safe primitives.
//!
//! `<dataDir>/<network>/` holds one file per allocated address, named by the address and
//! containing `<containerID>\r\n<ifname>`, plus `last_reserved_ip.<set>` (the round-robin
//! cursor) and `lock`. Every operation holds an exclusive `flock` on `lock` (host-local takes
//! the same lock), and only a [`Locked`] guard exposes the file operations, so nothing reads or
//! writes the store without it.
//!
//! Crash safety: a reservation is written to a temp file, then `link()`ed to its address name,
//! so it never exists without its owner and `EEXIST` means taken. This is atomic against the
//! plugin being killed at any point. It is deliberately not fsynced (host-local does not fsync
//! either): a power loss also takes every namespace, veth and nf_tables rule with it, and the
//! runtime's GC/DEL after the reboot releases whatever the store still holds; an fsync per
//! reservation would triple the cost of ADD. Temp files
//! (prefix [`TEMP_PREFIX`]) are only created under the lock and removed before it is released,
//! so one seen by a lock holder was left by a killed process: it is overwritten or removed.
//! This module does not decide *which* address to take; that is `range` and the wiring in
//! `mod.rs`.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{IpamError, Owner};

/// Name of the lock file, shared with host-local.
const LOCK_FILE: &str = "lock";
/// Prefix of the round-robin cursor files (`last_reserved_ip.0`), as host-local names them.
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// Prefix of netd's temp files; never a valid address, so host-local ignores them.
pub(crate) const TEMP_PREFIX: &str = ".netd-tmp-";
/// Separator of a record's two lines, as host-local writes it.
const LINE_BREAK: &str = "\r\n";

type Result<T> = std::result::Result<T, IpamError>;

/// One network's store directory.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
}

/// Proof that the store's lock is held; the lock is released when this is dropped (closing
/// the descriptor drops the `flock`, and so does the process dying).
#[derive(Debug)]
pub(crate) struct Locked<'a> {
    store: &'a Store,
    _lock: File,
}

/// The content of a reservation file.
pub(crate) fn record(owner: &Owner) -> String {
    format!("{}{LINE_BREAK}{}", owner.container_id, owner.ifname)
}

/// Parses a reservation file; a legacy host-local record (container ID only) yields an empty
/// interface name, which [`Owner::holds`] treats as "any interface".
pub(crate) fn parse_record(content: &str) -> Owner {
    let content = content.trim();
    let (id, ifname) = content
        .split_once(LINE_BREAK)
        .or_else(|| content.split_once('\n'))
        .unwrap_or((content, ""));
    Owner {
        container_id: id.trim().to_string(),
        ifname: ifname.trim().to_string(),
    }
}

fn not_found_is_ok(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl Store {
    /// Creates `dir` (mode 0700) when missing.
    pub(crate) fn create(dir: PathBuf) -> Result<Store> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| IpamError::io(&dir, e))?;
        Ok(Store { dir })
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Blocks until this process holds the store's exclusive lock.
    pub(crate) fn lock(&self) -> Result<Locked<'_>> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| IpamError::io(&path, e))?;
        loop {
            // SAFETY: flock only operates on the descriptor, which `file` owns and keeps open
            // for the duration of the call; it touches no memory of ours.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(IpamError::io(&path, e));
            }
        }
        Ok(Locked {
            store: self,
            _lock: file,
        })
    }
}

impl Locked<'_> {
    fn path(&self, name: &str) -> PathBuf {
        self.store.dir.join(name)
    }

    fn addr_path(&self, addr: IpAddr) -> PathBuf {
        self.store.dir.join(addr.to_string())
    }

    /// Who holds `addr`, if anyone.
    pub(crate) fn read_owner(&self, addr: IpAddr) -> Result<Option<Owner>> {
        let path = self.addr_path(addr);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(parse_record(&String::from_utf8_lossy(&bytes)))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IpamError::io(path, e)),
        }
    }

    /// Whether a reservation file exists for `addr` (a cheap probe: no read).
    pub(crate) fn is_taken(&self, addr: IpAddr) -> Result<bool> {
        let path = self.addr_path(addr);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(IpamError::io(path, e)),
        }
    }

    /// Atomically reserves `addr` for `owner`: `Ok(false)` when it is already taken.
    pub(crate) fn reserve(&self, addr: IpAddr, owner: &Owner) -> Result<bool> {
        let tmp = self.path(&format!("{TEMP_PREFIX}reserve"));
        self.write_temp(&tmp, record(owner).as_bytes())?;
        let target = self.addr_path(addr);
        let linked = match fs::hard_link(&tmp, &target) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(IpamError::io(&target, e)),
        };
        // If this fails, the leftover is a second name of the reservation; the next lock
        // holder unlinks it, which leaves the reservation intact.
        let unlinked = not_found_is_ok(fs::remove_file(&tmp)).map_err(|e| IpamError::io(&tmp, e));
        let linked = linked?;
        unlinked?;
        Ok(linked)
    }

    /// Removes the reservation of `addr`; a missing one is not an error.
    pub(crate) fn remove(&self, addr: IpAddr) -> Result<()> {
        let path = self.addr_path(addr);
        not_found_is_ok(fs::remove_file(&path)).map_err(|e| IpamError::io(path, e))
    }

    /// Every reservation, sorted by address. Removes leftover temp files on the way (only a
    /// killed process can have left them, since they only exist while the lock is held).
    pub(crate) fn scan(&self) -> Result<Vec<(IpAddr, Owner)>> {
        let mut out = Vec::new();
        for name in self.names()? {
            if name.starts_with(TEMP_PREFIX) {
                // Best effort: a leftover is harmless, and the next scan retries.
                let _ = fs::remove_file(self.path(&name));
            } else if let Ok(addr) = name.parse::<IpAddr>() {
                if let Some(owner) = self.read_owner(addr)? {
                    out.push((addr, owner));
                }
            }
        }
        out.sort_by_key(|(addr, _)| *addr);
        Ok(out)
    }

    /// Names of the directory's entries (non-UTF-8 names are not ours and are skipped).
    pub(crate) fn names(&self) -> Result<Vec<String>> {
        let dir = &self.store.dir;
        let entries = fs::read_dir(dir).map_err(|e| IpamError::io(dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| IpamError::io(dir, e))?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// The round-robin cursor of range set `set`; a missing or unreadable one only costs
    /// round-robin once, so it reads as `None`.
    pub(crate) fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        let content =
            fs::read_to_string(self.path(&format!("{LAST_RESERVED_PREFIX}{set}"))).ok()?;
        content.trim().parse().ok()
    }

    /// Moves the round-robin cursor of range set `set`. Written in place, not replaced: it is
    /// only a hint (a torn write reads as no cursor), and rewriting one inode is cheaper than
    /// allocating a new one on every ADD.
    pub(crate) fn set_last_reserved(&self, set: usize, addr: IpAddr) -> Result<()> {
        let path = self.path(&format!("{LAST_RESERVED_PREFIX}{set}"));
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(addr.to_string().as_bytes()))
            .map_err(|e| IpamError::io(path, e))
    }

    /// Reads a private (netd-only) file; `None` when it does not exist.
    pub(crate) fn read_private(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IpamError::io(path, e)),
        }
    }

    /// Atomically replaces a private file with `content`.
    pub(crate) fn write_private(&self, name: &str, content: &[u8]) -> Result<()> {
        self.replace(name, content)
    }

    /// Removes a private file; a missing one is not an error.
    pub(crate) fn remove_private(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        not_found_is_ok(fs::remove_file(&path)).map_err(|e| IpamError::io(path, e))
    }

    fn replace(&self, name: &str, content: &[u8]) -> Result<()> {
        let tmp = self.path(&format!("{TEMP_PREFIX}{name}"));
        self.write_temp(&tmp, content)?;
        let path = self.path(name);
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            IpamError::io(path, e)
        })
    }

    /// Writes a fresh temp file. A leftover of the same name is unlinked first, never
    /// truncated: after a crash between `link` and `unlink` it is a reservation's other name.
    fn write_temp(&self, tmp: &Path, content: &[u8]) -> Result<()> {
        not_found_is_ok(fs::remove_file(tmp)).map_err(|e| IpamError::io(tmp, e))?;
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
            .and_then(|mut f| f.write_all(content));
        written.map_err(|e| {
            let _ = fs::remove_file(tmp);
            IpamError::io(tmp, e)
        })
    }
}
