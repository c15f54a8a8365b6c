//! [`LinkError`]: what an rtnetlink operation failed to do, on which interface (and in which
//! namespace), with the kernel's errno and, when it gave one, its own reason.

use std::io;

/// A failed rtnetlink operation. Every message names the operation and the interface it was
/// applied to, so it can be shown to a user as is.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The kernel refused the request.
    #[error("{op}: {source}{}", kernel_reason(.kernel_msg))]
    Kernel {
        /// What was being done, e.g. `create veth vnd1a2b with peer eth0 in netns /run/netns/x`.
        op: String,
        /// The errno (positive), e.g. `libc::EEXIST`.
        errno: i32,
        /// The errno as an I/O error, for its text.
        source: io::Error,
        /// The kernel's extended-ack message, e.g. `Nexthop has invalid gateway`.
        kernel_msg: Option<String>,
    },
    /// A link of that name already exists where it was to be created.
    #[error("{op}: an interface named {name} already exists")]
    Exists {
        /// What was being done.
        op: String,
        /// The name that is taken.
        name: String,
    },
    /// A link that should exist does not.
    #[error("{what} does not exist")]
    NotFound {
        /// The link, and where it was looked for.
        what: String,
    },
    /// A link of the right name but of the wrong kind is in the way.
    #[error("{name} exists but is {}, not a {expected}", kind_text(.kind))]
    WrongKind {
        /// The link's name.
        name: String,
        /// Its kind (`veth`, `dummy`, …); `None` for a physical device.
        kind: Option<String>,
        /// The kind that was wanted, e.g. `bridge`.
        expected: &'static str,
    },
    /// An argument the kernel would reject anyway, refused before asking it.
    #[error("{what}")]
    Invalid {
        /// What is wrong, with the value.
        what: String,
    },
    /// The netlink socket, or entering the namespace to open it, failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The cause.
        source: io::Error,
    },
    /// The kernel's reply could not be decoded.
    #[error("{op}: cannot decode the kernel's reply: {reason}")]
    Decode {
        /// What was being done.
        op: String,
        /// Why decoding failed.
        reason: String,
    },
}

impl LinkError {
    /// The errno behind this error, when there is one (`EEXIST` for [`LinkError::Exists`]).
    pub fn errno(&self) -> Option<i32> {
        match self {
            LinkError::Kernel { errno, .. } => Some(*errno),
            LinkError::Exists { .. } => Some(libc::EEXIST),
            LinkError::Io { source, .. } => source.raw_os_error(),
            LinkError::NotFound { .. }
            | LinkError::WrongKind { .. }
            | LinkError::Invalid { .. }
            | LinkError::Decode { .. } => None,
        }
    }
}

fn kernel_reason(msg: &Option<String>) -> String {
    msg.as_deref()
        .map(|m| format!(" (kernel: {m})"))
        .unwrap_or_default()
}

fn kind_text(kind: &Option<String>) -> String {
    match kind {
        Some(kind) => format!("a {kind}"),
        None => "a device without a kind (physical?)".to_string(),
    }
}
