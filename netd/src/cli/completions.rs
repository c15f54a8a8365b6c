//! `netd completions SHELL`: prints a completion script.

use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, CliError};

/// Arguments of `netd completions`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example: netd completions bash > /etc/bash_completion.d/netd")]
pub struct Args {
    /// Shell to generate for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Prints the script.
pub fn run(args: Args) -> Result<(), CliError> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "netd", &mut std::io::stdout());
    Ok(())
}
