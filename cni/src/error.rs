//! Every way a command can fail, and the one function that decides each failure's CNI error
//! code, so the runtime always sees the same code for the same cause.

use crate::ipam::IpamError;
use crate::link::LinkError;
use crate::nat::NatError;
use crate::spec::code;

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required `CNI_*` variable is missing or malformed.
    #[error("{0}")]
    Env(String),
    /// stdin is not a network configuration.
    #[error("cannot decode the network configuration on stdin: {0}")]
    Decode(String),
    /// The configuration's `cniVersion` is one we do not speak.
    #[error("cniVersion {requested:?} is not supported (supported: {supported})")]
    IncompatibleVersion {
        /// What the runtime sent.
        requested: String,
        /// What we speak.
        supported: String,
    },
    /// The configuration is well-formed JSON but wrong.
    #[error("invalid network configuration: {0}")]
    Config(String),
    /// CHECK on an attachment we never made (or whose state is gone).
    #[error("{0}")]
    UnknownContainer(String),
    /// CHECK found the attachment different from its result.
    #[error("check failed: {0}")]
    CheckFailed(String),
    /// A kernel or pool limit is reached; removing containers frees room.
    #[error("{0}")]
    Capacity(String),
    /// The plugin cannot add containers right now (STATUS).
    #[error("{0}")]
    Unavailable(String),
    /// The plugin cannot add containers, and the attached ones are cut off too (STATUS).
    #[error("{0}")]
    Damaged(String),
    /// Built-in IPAM failed.
    #[error("{0}")]
    Ipam(#[from] IpamError),
    /// rtnetlink failed.
    #[error("{0}")]
    Link(#[from] LinkError),
    /// nf_tables failed.
    #[error("{0}")]
    Nat(#[from] NatError),
    /// The delegated IPAM plugin failed; its own code is passed on.
    #[error("IPAM plugin {plugin:?} failed: {msg}")]
    Delegate {
        /// Plugin name.
        plugin: String,
        /// Its error code (or 999 when it printed none).
        code: u32,
        /// Its message.
        msg: String,
    },
    /// Local state (records, locks) could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing, with the path.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl Error {
    /// Shorthand for an [`Error::Io`].
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// The CNI error code for this failure.
    pub fn code(&self) -> u32 {
        match self {
            Error::Env(_) => code::INVALID_ENV,
            Error::Decode(_) => code::DECODE_FAILURE,
            Error::IncompatibleVersion { .. } => code::INCOMPATIBLE_VERSION,
            Error::Config(_) => code::INVALID_CONFIG,
            Error::UnknownContainer(_) => code::UNKNOWN_CONTAINER,
            Error::CheckFailed(_) => code::IO_FAILURE,
            Error::Unavailable(_) => code::PLUGIN_NOT_AVAILABLE,
            Error::Damaged(_) => code::PLUGIN_NOT_AVAILABLE_LIMITED,
            Error::Capacity(_) => code::TRY_AGAIN_LATER,
            Error::Ipam(e) => match e {
                IpamError::Exhausted { .. } => code::TRY_AGAIN_LATER,
                e if e.is_invalid_request() => code::INVALID_CONFIG,
                _ => code::IO_FAILURE,
            },
            Error::Nat(NatError::PortInUse { .. }) => code::INVALID_CONFIG,
            Error::Link(e) if is_transient(e.errno()) => code::TRY_AGAIN_LATER,
            Error::Nat(e) if is_transient(e.errno()) => code::TRY_AGAIN_LATER,
            Error::Link(_) | Error::Nat(_) | Error::Io { .. } => code::IO_FAILURE,
            Error::Delegate { code, .. } => *code,
        }
    }
}

fn is_transient(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc::EBUSY | libc::EAGAIN | libc::ENOBUFS))
}
