//! Network namespaces for the benchmark: create many quickly, enter one on the current thread.
//!
//! A namespace is created with `unshare(CLONE_NEWNET)` on a dedicated worker thread and kept
//! alive by bind-mounting `/proc/thread-self/ns/net` onto a file in the run's scratch
//! directory (what `ip netns add` does, without one process per namespace). Unmounting the file
//! lets the kernel destroy the namespace and everything in it (bridges, veths, firewall state).
//!
//! `setns(2)` changes only the calling thread: callers enter a namespace on threads they own
//! (the per-tool driver thread, load-generator threads), never on a shared one.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace mounted (or linked, as `/proc/<pid>/ns/net`) at `path`.
    pub fn open(path: impl AsRef<Path>) -> io::Result<NetNs> {
        let path = path.as_ref().to_path_buf();
        Ok(NetNs {
            file: File::open(&path)?,
            path,
        })
    }

    /// Where the namespace was opened from (what `CNI_NETNS` carries).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the calling thread into this namespace, for good.
    ///
    /// Call it only on a thread created for work in this namespace; processes and threads it
    /// creates afterwards start in the namespace too.
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: the fd is an open namespace file owned by `self`; setns affects only the
        // calling thread, which the caller dedicates to this namespace.
        let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Runs `f` on a scoped thread inside this namespace and returns its value.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("thread inside the network namespace panicked"))?
        })
    }
}

/// Creates a new network namespace and bind-mounts it on `path` (a new file).
///
/// The calling thread is left inside the new namespace: call it only from throwaway threads
/// (as [`create_many`] does).
fn create_on_this_thread(path: &Path, ipv6: bool) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    // SAFETY: unshare only changes the calling thread's network namespace; see the doc above.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if !ipv6 {
        disable_ipv6()?;
    }
    let src = c"/proc/thread-self/ns/net";
    let dst = cpath(path)?;
    // SAFETY: both are valid NUL-terminated paths; the bind mount keeps the namespace alive
    // after the thread moves on.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Turns IPv6 off for every interface the calling thread's namespace has or will have.
///
/// `/proc/sys/net` resolves to the namespace of the thread that opens it.
fn disable_ipv6() -> io::Result<()> {
    for which in ["all", "default"] {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{which}/disable_ipv6"), "1")?;
    }
    Ok(())
}

/// Creates one namespace per path, spread over `workers` threads; with `ipv6` false, IPv6 is
/// disabled in each before anything is created in it.
///
/// On error some namespaces may exist already: the caller's scratch cleanup removes them.
pub fn create_many(paths: &[PathBuf], workers: usize, ipv6: bool) -> io::Result<()> {
    let chunk = paths.len().div_ceil(workers.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> io::Result<()> {
                    for p in part {
                        if crate::guard::interrupted() {
                            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
                        }
                        create_on_this_thread(p, ipv6).map_err(|e| {
                            io::Error::new(e.kind(), format!("creating netns {}: {e}", p.display()))
                        })?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| io::Error::other("netns worker panicked"))?
        })
    })
}

/// Unmounts a namespace file and removes it; the namespace goes once nothing else holds it.
pub fn remove(path: &Path) {
    if let Ok(p) = cpath(path) {
        // SAFETY: a valid path; MNT_DETACH never blocks and fails harmlessly when not mounted.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_file(path);
}

/// Brings `lo` up in the calling thread's namespace (a fresh namespace has it down).
pub fn set_loopback_up() -> io::Result<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed `ifreq` whose name is NUL-terminated; the
    // socket is closed on every path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc == 0 {
            Ok(())
        } else {
            Err(err)
        }
    }
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)
}
