//! API errors: every failure becomes one JSON body `{"error": "...", "field": ...}` with a
//! status code, decided here in one place.

use hyper::StatusCode;
use netd_config::netd::ErrorBody;
use netd_config::ConfigError;

use crate::registry::store::StoreError;
use crate::registry::RegistryError;

/// An error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What failed and what to do.
    pub message: String,
    /// Request field at fault.
    pub field: Option<String>,
}

impl ApiError {
    /// An error with a status and no field.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }

    /// 400 naming `field`.
    pub fn bad_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!("{field}: {}", message.into()),
            field: Some(field),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.message.clone(),
            field: self.field.clone(),
        }
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: e.to_string(),
            field: Some(e.field),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let message = e.to_string();
        let (status, field) = match e {
            RegistryError::Invalid(c) => return c.into(),
            RegistryError::NotFound { field, .. } => (StatusCode::NOT_FOUND, field),
            RegistryError::Conflict { field, .. } => (StatusCode::CONFLICT, field),
            RegistryError::VipRangeFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, None),
            RegistryError::Store(StoreError::Conflict { .. }) => (StatusCode::CONFLICT, None),
            RegistryError::Store(_)
            | RegistryError::Corrupt { .. }
            | RegistryError::Io { .. }
            | RegistryError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, None),
        };
        Self {
            status,
            message,
            field,
        }
    }
}
