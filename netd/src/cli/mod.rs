//! The `netd` command line: argument definitions (clap derive), dispatch, and the mapping of
//! failures to messages and exit codes. One module per verb; [`output`] renders tables and JSON.
//!
//! Exit codes: 0 success, 1 the request failed (the daemon refused it, or a local error),
//! 2 bad usage, 3 the daemon could not be reached (not running, or no permission).

pub mod completions;
pub mod endpoints;
pub mod expose;
pub mod network;
pub mod output;
pub mod services;
pub mod sidecars;
pub mod status;
pub mod unexpose;
pub mod up;
pub mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use netd_config::netd::{DEFAULT_SOCKET, SOCKET_ENV};

use crate::client::{Client, ClientError};
use crate::daemon::DaemonError;

pub use self::output::Format;

const EXAMPLES: &str = "\
Examples:
  netd up                                  run the node daemon (as root)
  netd status                              daemon, store, networks and counts
  netd expose web 8080                     register a local service until ctrl-c
  netd expose web 8080 --persist           ... permanently (`netd unexpose web` removes it)
  netd services                            list services with their VIPs and DNS names
  netd endpoints web                       list the endpoints of service web
  netd sidecars                            sidecars of containers on meshed networks
  netd network create dev --subnet 10.90.0.0/24 --subnet fd00:90::/64
  netd -o json network ls                  any command's output as JSON
  NETD_SOCKET=/tmp/n.sock netd status      talk to another daemon";

/// netd: container networking, service registry and service mesh for a node.
#[derive(Debug, Parser)]
#[command(name = "netd", version, after_help = EXAMPLES)]
pub struct Cli {
    /// API socket of the daemon.
    #[arg(long, global = true, env = SOCKET_ENV, default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon in the foreground.
    Up(up::Args),
    /// Show the daemon's state: store, networks, counts.
    Status,
    /// Register a service on this machine (kept while this runs, or --persist).
    Expose(expose::Args),
    /// Remove a service and all its endpoints.
    Unexpose(unexpose::Args),
    /// List services.
    Services(services::Args),
    /// List the endpoints of a service.
    Endpoints(endpoints::Args),
    /// List the sidecars of containers on meshed networks (pid, state, restarts).
    Sidecars,
    /// Manage networks.
    #[command(subcommand)]
    Network(network::Command),
    /// Follow registry changes (newline-delimited JSON with -o json).
    Watch(watch::Args),
    /// Print a shell completion script.
    Completions(completions::Args),
}

/// A command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Talking to the daemon failed, or it refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The daemon failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// Bad arguments found after parsing.
    #[error("{0}")]
    Usage(String),
    /// Local I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(e) if e.is_unreachable() => 3,
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let multi_thread = matches!(cli.command, Command::Up(_));
    let runtime = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let result = match runtime {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => Err(CliError::Io(e)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs a parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let client = Client::new(&cli.socket);
    let out = cli.output;
    match cli.command {
        Command::Up(args) => up::run(&cli.socket, args).await,
        Command::Status => status::run(&client, out).await,
        Command::Expose(args) => expose::run(&client, out, args).await,
        Command::Unexpose(args) => unexpose::run(&client, out, args).await,
        Command::Services(args) => services::run(&client, out, args).await,
        Command::Endpoints(args) => endpoints::run(&client, out, args).await,
        Command::Sidecars => sidecars::run(&client, out).await,
        Command::Network(cmd) => network::run(&client, out, cmd).await,
        Command::Watch(args) => watch::run(&client, out, args).await,
        Command::Completions(args) => completions::run(args),
    }
}
