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
