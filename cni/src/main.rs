//! `netd-cni`: reads the CNI environment and the configuration on stdin, runs the command, and
//! prints the result, or the CNI error JSON and exits non-zero. Logs go to stderr only.

use std::io::{Read, Write};
use std::process::ExitCode;

use netd_cni::env::{Command, Env};
use netd_cni::error::Error;
use netd_cni::spec::{ErrorBody, Version};
use serde_json::Value;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let outcome = match std::env::var("CNI_COMMAND")
        .ok()
        .as_deref()
        .and_then(Command::parse)
    {
        None => Err(Error::Env(format!(
            "CNI_COMMAND must be one of ADD, DEL, CHECK, GC, STATUS, VERSION (got {:?})",
            std::env::var("CNI_COMMAND").unwrap_or_default()
        ))),
        Some(command) => match std::io::stdin().read_to_end(&mut stdin) {
            Err(e) => Err(Error::io("cannot read stdin", e)),
            Ok(_) => netd_cni::cmd::run(command, Env::from_process(), &stdin),
        },
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(value) => {
            if let Some(v) = value {
                let _ = writeln!(out, "{v}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let body = ErrorBody {
                cni_version: request_version(&stdin),
                code: e.code(),
                msg: e.to_string(),
                details: String::new(),
            };
            eprintln!("netd-cni: {e}");
            let _ = writeln!(out, "{}", serde_json::to_string(&body).unwrap_or_default());
            ExitCode::FAILURE
        }
    }
}

/// The version to report errors in: the request's when we speak it, else our newest.
fn request_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| Version::parse(v).is_some_and(Version::is_supported))
        .unwrap_or_else(|| Version::LATEST.to_string())
}
