//! Sysctls under `/proc/sys`. The `net/` tree belongs to the network namespace of the thread
//! that opens the file, so these act on the caller's namespace: run them inside
//! [`NetNs::run`](crate::netns::NetNs::run) to reach a container's.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;

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
    let mut value = fs::read_to_string(path_of(key)?)?;
    let trimmed = value.trim_end_matches('\n').len();
    value.truncate(trimmed);
    Ok(value)
}

/// Writes a sysctl (e.g. `net/ipv4/ip_forward` = `1`), unless it already has that value:
/// the write is skipped so a read-only `/proc/sys` holding the right value is not an error.
pub fn set_sysctl(key: &str, value: &str) -> io::Result<()> {
    let path = path_of(key)?;
    if let Ok(current) = fs::read_to_string(&path) {
        if current.trim_end_matches('\n') == value {
            return Ok(());
        }
    }
    // No O_CREAT: a missing key is ENOENT, not an attempt to create a file in /proc.
    let mut file = OpenOptions::new().write(true).open(&path)?;
    file.write_all(value.as_bytes())
}
