//! The CNI specification's data types: versions, results in every supported version's format,
//! and the error object. Nothing here touches the system.

pub mod error;
pub mod result;
pub mod version;

pub use error::{code, ErrorBody};
pub use result::{CniResult, Interface, IpConfig};
pub use version::{Version, SUPPORTED};
