//! `netd-bench`: wiring only — parse options, run each tool, print and save the comparison.

use std::process::ExitCode;

use netd_bench::cli::{Options, Tool, USAGE};
use netd_bench::scratch::Scratch;
use netd_bench::{dns, guard, mesh, registry, report, runner, tools};

fn main() -> ExitCode {
    // The DNS server helper is a plain long-running child: no signal thread, no scratch.
    if std::env::args().nth(1).as_deref() == Some("dns-server") {
        return match dns::serve(std::env::args().skip(2)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("netd-bench dns-server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = guard::install() {
        eprintln!("netd-bench: cannot install signal handling: {e}");
        return ExitCode::FAILURE;
    }
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("cni") => {}
        Some("dns") => return dns_main(args),
        Some("registry") => return registry_main(args),
        Some("mesh") => return mesh_main(args),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    }
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let opts = match Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("netd-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("netd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `dns` subcommand: options, run, exit status.
fn dns_main(args: impl Iterator<Item = String>) -> ExitCode {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        print!("{}", dns::USAGE);
        return ExitCode::SUCCESS;
    }
    let opts = match dns::Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("netd-bench: {e}\n\n{}", dns::USAGE);
            return ExitCode::from(2);
        }
    };
    match dns::run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("netd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `registry` subcommand: options, run, exit status.
fn registry_main(args: impl Iterator<Item = String>) -> ExitCode {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        print!("{}", registry::USAGE);
        return ExitCode::SUCCESS;
    }
    let opts = match registry::Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("netd-bench: {e}\n\n{}", registry::USAGE);
            return ExitCode::from(2);
        }
    };
    match registry::run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("netd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `mesh` subcommand: options, run, exit status.
fn mesh_main(args: impl Iterator<Item = String>) -> ExitCode {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        print!("{}", mesh::USAGE);
        return ExitCode::SUCCESS;
    }
    let opts = match mesh::Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("netd-bench: {e}\n\n{}", mesh::USAGE);
            return ExitCode::from(2);
        }
    };
    match mesh::run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("netd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every selected tool; `Ok(false)` when a tool failed (the table still shows the rest).
fn run(opts: &Options) -> Result<bool, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("run as root: the benchmark creates network namespaces".into());
    }
    let netd = if opts.tools.contains(&Tool::Netd) {
        Some(tools::find_netd(opts.netd.as_deref())?)
    } else {
        None
    };
    let scratch = Scratch::create().map_err(|e| format!("scratch directory: {e}"))?;
    eprintln!("netd-bench: scratch directory {}", scratch.root().display());
    // A private copy: a rebuild of netd-cni during the run cannot mix two versions.
    let netd = match netd {
        Some(src) => Some(
            scratch
                .snapshot_binary(&src)
                .map_err(|e| format!("copying {}: {e}", src.display()))?,
        ),
        None => None,
    };
    let mut reports = Vec::new();
    for &tool in &opts.tools {
        if guard::interrupted() {
            break;
        }
        reports.push(runner::run(opts, tool, &scratch, netd.as_deref()));
    }
    drop(scratch);
    if guard::interrupted() {
        return Err("interrupted; everything was removed".into());
    }
    let rows = report::rows(&reports, opts);
    print!("{}", report::table(&rows, &reports, opts));
    if let Some(path) = &opts.json {
        let doc = report::json(&rows, &reports, opts);
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("netd-bench: results written to {}", path.display());
    }
    Ok(reports
        .iter()
        .all(|r| r.error.is_none() && r.attach.error.is_none()))
}
