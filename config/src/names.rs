//! The names every surface shares — Linux interface names and container ids — each with one
//! rule, so the CNI plugin, the daemon's API and the netlink layer accept and refuse the same
//! strings with the same words.

/// Longest container id accepted. The CNI spec sets no bound; runtimes use 64 hex digits, and
/// every store (records, registry keys, interface aliases) needs one.
pub const MAX_CONTAINER_ID: usize = 256;

/// Checks a Linux interface name: 1-15 bytes, not `.` or `..`, no `/`, `:`, whitespace or
/// control characters (the kernel's `dev_valid_name`, which also refuses the first three; a
/// control character in a name is never intended). The error says what a valid name is.
pub fn check_ifname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid interface name (1-15 bytes; no '/', ':', spaces or control characters)"
        ))
    }
}

/// Checks a container id as the CNI spec defines it — letters, digits, `_`, `.` and `-`,
/// starting with a letter or digit — and at most [`MAX_CONTAINER_ID`] bytes.
pub fn check_container_id(id: &str) -> Result<(), String> {
    let ok = id.len() <= MAX_CONTAINER_ID
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a valid container id (1-{MAX_CONTAINER_ID} letters, digits, '_', '.' or '-', starting with a letter or digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for good in [
            "eth0",
            "a",
            "cni-podman0",
            "x.y_z-1",
            "123456789012345",
            "né0",
        ] {
            assert_eq!(check_ifname(good), Ok(()), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\u{1}b",
            "1234567890123456",
            "ééééééééé", // 18 bytes
        ] {
            let err = check_ifname(bad).unwrap_err();
            assert!(err.contains("not a valid interface name"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn container_ids() {
        let long = "a".repeat(MAX_CONTAINER_ID);
        for good in ["a", "0", "abc-DEF_1.2", long.as_str()] {
            assert_eq!(check_container_id(good), Ok(()), "{good:?}");
        }
        let too_long = "a".repeat(MAX_CONTAINER_ID + 1);
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "a b",
            "a/b",
            "a:b",
            "é",
            too_long.as_str(),
        ] {
            let err = check_container_id(bad).unwrap_err();
            assert!(err.contains("not a valid container id"), "{bad:?}: {err}");
        }
    }
}
