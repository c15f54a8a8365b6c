//! The CNI error object and the spec's well-known error codes.

use serde::Serialize;

/// Well-known CNI error codes (spec section "Error").
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (`CNI_COMMAND`, `CNI_NETNS`, ...).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (stdin is not the expected JSON).
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: a transient condition should clear up.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The plugin is not available: it cannot add containers now.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// The plugin is not available, with limited connectivity for existing containers.
    pub const PLUGIN_NOT_AVAILABLE_LIMITED: u32 = 51;
}

/// The JSON error object printed on stdout when a command fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Version of the request (or the newest one we speak when it could not be read).
    pub cni_version: String,
    /// One of [`code`], or a plugin code from 100 on.
    pub code: u32,
    /// A short message a user can act on.
    pub msg: String,
    /// Longer context, when there is any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}
