//! Strict JSON reading on top of types that tolerate unknown fields: the registry's types read a
//! newer daemon's fields (see [`crate::netd`]), while request bodies and hand-written files must
//! refuse a typo. [`from_deserializer`] reports the first ignored field, at any depth, by its path.

use serde::de::DeserializeOwned;

/// Why a document was refused.
#[derive(Debug)]
pub enum StrictError {
    /// A field the type does not know: its path (`ports[1].prot`) and its name (`prot`).
    Unknown {
        /// Path of the field.
        path: String,
        /// The field's own name.
        name: String,
    },
    /// Any other error, with the path where it happened.
    Invalid(serde_path_to_error::Error<serde_json::Error>),
}

/// Decodes `bytes` as `T`, refusing unknown fields anywhere in it. An unknown field is reported
/// before any other error: it is most likely the typo behind a "missing field". What follows
/// the value is left for the caller to check (`de.end()`).
pub fn from_deserializer<T: DeserializeOwned>(
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>,
) -> Result<T, StrictError> {
    let mut unknown = None;
    let decoded = {
        let mut note = |path: serde_ignored::Path<'_>| {
            unknown.get_or_insert_with(|| ignored_field(&path));
        };
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(de, &mut note))
    };
    if let Some((path, name)) = unknown {
        return Err(StrictError::Unknown { path, name });
    }
    decoded.map_err(StrictError::Invalid)
}

/// An ignored field's path (`ports[0].bogus`, as `serde_path_to_error` writes paths) and name.
fn ignored_field(path: &serde_ignored::Path<'_>) -> (String, String) {
    fn walk(p: &serde_ignored::Path<'_>, out: &mut String) {
        use serde_ignored::Path;
        match p {
            Path::Root => {}
            Path::Seq { parent, index } => {
                walk(parent, out);
                out.push_str(&format!("[{index}]"));
            }
            Path::Map { parent, key } => {
                walk(parent, out);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => walk(parent, out),
        }
    }
    let mut out = String::new();
    walk(path, &mut out);
    let name = match path {
        serde_ignored::Path::Map { key, .. } => key.clone(),
        _ => out.clone(),
    };
    (out, name)
}
