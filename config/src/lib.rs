//! netd's shared configuration: serde types for every configuration surface, their defaults in
//! one place, and validation errors that name the offending field.

pub mod cni;
pub mod names;
pub mod netd;
pub mod strict;

/// A configuration value that is present but wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Path of the field, e.g. `ipam.ranges[0][0].subnet`.
    pub field: String,
    /// What is wrong with it and, where possible, what to do.
    pub message: String,
}

impl ConfigError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
