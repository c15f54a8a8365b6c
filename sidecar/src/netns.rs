//! Entering the container's network namespace (`--netns`). `setns` moves only the calling
//! thread, so this runs on the main thread before the tokio runtime (and its worker threads,
//! which inherit the namespace) exists and before any socket is opened.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The namespace could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path does not open.
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// The path given.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// `setns` refused (not a network namespace, or no `CAP_SYS_ADMIN`).
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// The path given.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

/// Moves the calling thread into the network namespace at `path` (e.g. `/run/netns/x` or
/// `/proc/<pid>/ns/net`). Call before starting any other thread.
pub fn enter(path: &Path) -> Result<(), NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the fd is open for the duration of the call; CLONE_NEWNET makes the kernel check
    // that it refers to a network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(NetnsError::Enter {
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_paths_are_named() {
        let e = enter(Path::new("/nonexistent/netns"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/netns"), "{e}");
        // A regular file is not a namespace: setns refuses it.
        let e = enter(Path::new("/proc/self/status"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot enter"), "{e}");
    }
}
