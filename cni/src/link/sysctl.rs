//! Sysctls under `/proc/sys`. The `net/` tree belongs to the network namespace of the thread
//! that opens the file, so these act on the caller's namespace: run them inside
//! [`NetNs::run`](crate::netns::NetNs::run) to reach a container's.
//!
//! Paths are resolved in a private instance of procfs (a detached `fsopen`/`fsmount`), not in
//! the shared `/proc`. In the shared one every network namespace that ever looked up
//! `net/ipv6` (or `net/ipv4`) leaves a dentry of that name under the one `/proc/sys/net`
//! dentry, and each later lookup compares against all of them: with 1000 containers a single
//! open of `/proc/sys/net/ipv6/conf/eth0/disable_ipv6` took 280 µs here, against 10 µs in a
//! fresh instance. The private instance holds only this process's dentries. Where one cannot be
//! created (no `fsopen`, no privilege over the mount namespace), `/proc/sys` is used.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::OnceLock;

/// `/proc/sys/<key>`, refusing keys that would leave `/proc/sys`.
fn path_of(key: &str) -> io::Result<PathBuf> {
    let escapes = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if escapes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{key:?} is not a sysctl key (expected e.g. net/ipv4/ip_forward)"),
        ));
    }
    Ok(PathBuf::from("/proc/sys").join(key))
}

/// Reads a sysctl, without the trailing newline. `key` uses slashes (`net/ipv4/ip_forward`)
/// because interface names in keys may contain dots.
pub fn get_sysctl(key: &str) -> io::Result<String> {
    let mut value = String::new();
    open(key, false)?.read_to_string(&mut value)?;
    let trimmed = value.trim_end_matches('\n').len();
    value.truncate(trimmed);
    Ok(value)
}

/// Writes a sysctl (e.g. `net/ipv4/ip_forward` = `1`), unless it already has that value:
/// the write is skipped so a read-only `/proc/sys` holding the right value is not an error.
pub fn set_sysctl(key: &str, value: &str) -> io::Result<()> {
    if get_sysctl(key).is_ok_and(|current| current == value) {
        return Ok(());
    }
    open(key, true)?.write_all(value.as_bytes())
}

/// Opens `key` for reading or writing (never creating: a missing key is ENOENT).
fn open(key: &str, write: bool) -> io::Result<File> {
    let path = path_of(key)?;
    let Some(root) = private_proc() else {
        return OpenOptions::new().read(!write).write(write).open(&path);
    };
    // `path_of` checked the key stays below /proc/sys; the instance's root is /proc.
    let relative = path.strip_prefix("/proc").unwrap_or(&path);
    let c_path = CString::new(relative.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a sysctl key"))?;
    let access = if write {
        libc::O_WRONLY
    } else {
        libc::O_RDONLY
    };
    let flags = libc::O_CLOEXEC | access;
    // SAFETY: a valid directory descriptor and a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::openat(root.as_raw_fd(), c_path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The root of this process's private procfs instance, created on first use; `None` when the
/// kernel or the privileges do not allow one (then `/proc` is used).
fn private_proc() -> Option<&'static OwnedFd> {
    static ROOT: OnceLock<Option<OwnedFd>> = OnceLock::new();
    ROOT.get_or_init(|| mount_private_proc().ok()).as_ref()
}

// Kernel ABI of the new mount API (linux/mount.h).
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
const MOUNT_ATTR_NOEXEC: libc::c_uint = 0x8;

/// `fsopen("proc")`, `fsconfig(CREATE)`, `fsmount()`: a procfs instance attached nowhere, so
/// nothing in any mount table changes and it disappears with the descriptor.
fn mount_private_proc() -> io::Result<OwnedFd> {
    fn check(rc: libc::c_long) -> io::Result<libc::c_int> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            // Descriptors fit in c_int.
            Ok(rc as libc::c_int)
        }
    }
    // SAFETY: fsopen with a NUL-terminated name and flags; the result is checked.
    let fs = check(unsafe { libc::syscall(libc::SYS_fsopen, c"proc".as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: `fs` was just opened and is owned by nothing else.
    let fs = unsafe { OwnedFd::from_raw_fd(fs) };
    // SAFETY: CMD_CREATE takes no key or value; the result is checked.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    let attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
    // SAFETY: fsmount on a created filesystem context; the result is checked.
    let mnt =
        check(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) })?;
    // SAFETY: `mnt` was just returned and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(mnt) })
}

/// True when sysctls go through a private procfs instance (tests).
#[cfg(test)]
pub(crate) fn private_instance() -> bool {
    private_proc().is_some()
}
