//! Network namespaces: open one by path and run work inside it on a dedicated OS thread.
//!
//! `setns(2)` changes only the calling thread, so work for another namespace runs on a scoped
//! thread that enters it and ends with it; the caller's thread never changes namespace. Netlink
//! sockets opened in there stay bound to that namespace and may then be used from anywhere.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace at `path` (e.g. `/run/netns/x` or `/proc/<pid>/ns/net`).
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path)?;
        Ok(Self { file, path })
    }

    /// The namespace of the calling thread.
    pub fn current() -> io::Result<Self> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// The path this handle was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a new OS thread that has entered this namespace, and returns its value.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                enter(fd)?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("thread inside the network namespace panicked"))?
        })
    }

    /// Makes `cmd` start inside this namespace: the child enters it between fork and exec
    /// (the parent never changes namespace). Keep this handle open until `cmd` is spawned.
    pub fn enter_on_exec(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let fd = self.file.as_raw_fd();
        // SAFETY: setns(2) is async-signal-safe and only affects the forked child; `fd` stays
        // open in the parent (and so in the child) until the spawn returns.
        unsafe {
            cmd.pre_exec(move || enter(fd));
        }
    }
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn enter(fd: RawFd) -> io::Result<()> {
    // SAFETY: `fd` is a valid open namespace file for the duration of the call; setns only
    // affects the calling thread, which is a scoped thread owned by `NetNs::run`.
    let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A named namespace under `/run/netns` (as `ip netns add` makes), removed on drop.
///
/// Used by the demo and by tools that need throwaway namespaces without iproute2.
#[derive(Debug)]
pub struct NamedNetNs {
    ns: NetNs,
    path: PathBuf,
}

impl NamedNetNs {
    /// Creates `/run/netns/<name>` holding a new, empty network namespace (only `lo`, down).
    pub fn create(name: &str) -> io::Result<NamedNetNs> {
        let dir = Path::new("/run/netns");
        std::fs::create_dir_all(dir)?;
        let path = dir.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let target = path.clone();
        let made = std::thread::spawn(move || -> io::Result<()> {
            // SAFETY: unshare only changes this short-lived thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let src = c"/proc/thread-self/ns/net";
            let dst = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
                .map_err(io::Error::other)?;
            // SAFETY: both paths are valid NUL-terminated strings; a bind mount of our own
            // namespace file keeps the namespace alive after this thread ends.
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
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?;
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(NamedNetNs {
            ns: NetNs::open(&path)?,
            path,
        })
    }

    /// The open namespace.
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for NamedNetNs {
    fn drop(&mut self) {
        if let Ok(p) = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid path; MNT_DETACH lets the namespace go once unused.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
