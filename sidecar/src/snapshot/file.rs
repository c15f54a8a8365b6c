//! `--snapshot FILE`: a static registry state in JSON ([`SnapshotData`]), for tests,
//! benchmarks and running without netd. Errors name the file and the offending field.

use std::path::{Path, PathBuf};

use netd_config::strict::StrictError;

use super::SnapshotData;

/// The snapshot file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading failed.
    #[error("cannot read snapshot file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The JSON does not describe a snapshot.
    #[error("snapshot file {path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Path of the offending field (`services[0].ports[0].port`), `.` for the whole file.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads and checks a snapshot file.
pub fn load(path: &Path) -> Result<SnapshotData, FileError> {
    let bytes = std::fs::read(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &bytes)
}

/// Parses snapshot JSON; `path` is only used in errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<SnapshotData, FileError> {
    // Strict: the registry's types tolerate a newer daemon's fields, but a hand-written file's
    // typo (`method` for `methods`) must not be silently dropped.
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let invalid = |field: String, message: String| FileError::Invalid {
        path: path.to_path_buf(),
        field,
        message,
    };
    let data: SnapshotData = match netd_config::strict::from_deserializer(de) {
        Ok(d) => d,
        Err(StrictError::Unknown { path, name }) => {
            return Err(invalid(path, format!("unknown field `{name}`")))
        }
        Err(StrictError::Invalid(e)) => {
            return Err(invalid(e.path().to_string(), e.inner().to_string()))
        }
    };
    de.end()
        .map_err(|e| invalid(String::new(), format!("after the snapshot: {e}")))?;
    for (i, ep) in data.endpoints.iter().enumerate() {
        if !data.services.iter().any(|s| s.key() == ep.service_key()) {
            return Err(FileError::Invalid {
                path: path.to_path_buf(),
                field: format!("endpoints[{i}].service"),
                message: format!("service {} is not in `services`", ep.service_key()),
            });
        }
    }
    for (i, svc) in data.services.iter().enumerate() {
        netd_config::netd::validate_routes(&svc.routes).map_err(|e| FileError::Invalid {
            path: path.to_path_buf(),
            field: format!("services[{i}].{}", e.field),
            message: e.message,
        })?;
    }
    for key in data.balancers.keys() {
        if !data.services.iter().any(|s| &s.key() == key) {
            return Err(FileError::Invalid {
                path: path.to_path_buf(),
                field: format!("balancers.{key}"),
                message: format!("service {key} is not in `services`"),
            });
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        parse(Path::new("s.json"), json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(
            r#"{"services":[{"name":"a","namespace":"d","vip":"10.0.0.1","ports":[{"port":0}]}]}"#,
        );
        assert!(e.contains("services[0].ports[0].port"), "{e}");
        assert!(e.contains("not a valid port"), "{e}");
        let e = err(r#"{"servics":[]}"#);
        assert!(e.contains("servics"), "{e}");
        let e = err(
            r#"{"endpoints":[{"id":"x","service":"a","namespace":"d","address":"127.0.0.1","port":1,"node":"n"}]}"#,
        );
        assert!(e.contains("endpoints[0].service"), "{e}");
        let e = err(
            r#"{"services":[{"name":"a","namespace":"d","vip":"10.0.0.1","ports":[{"port":1}]}],"balancers":{"d/a":"nope"}}"#,
        );
        assert!(e.contains("balancers"), "{e}");
        let e = err(
            r#"{"services":[{"name":"a","namespace":"d","vip":"10.0.0.1","ports":[{"port":1}],"routes":[{"name":"r","path_prefix":"/"},{"name":"r","path_prefix":"/x"}]}]}"#,
        );
        assert!(e.contains("services[0].routes[1].name"), "{e}");
        // Typos at any depth are refused, naming the path (the types alone would accept them).
        let e = err(
            r#"{"services":[{"name":"a","namespace":"d","vip":"10.0.0.1","ports":[{"port":1}],"routes":[{"name":"r","path_prefix":"/","method":["GET"]}]}]}"#,
        );
        assert!(e.contains("services[0].routes[0].method"), "{e}");
        assert!(e.contains("unknown field `method`"), "{e}");
        let e = err(r#"{"revision":1} {"#);
        assert!(e.contains("after the snapshot"), "{e}");
        let e = load(Path::new("/nonexistent/s.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/s.json"), "{e}");
    }
}
