//! `netd watch`: follows registry changes until ctrl-c.

use netd_config::netd::Event;

use super::output::Format;
use super::CliError;
use crate::client::Client;

/// Arguments of `netd watch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Start after this revision (0: a full snapshot first).
    #[arg(long, default_value_t = 0)]
    pub since: u64,
}

/// Prints events as they come.
pub async fn run(client: &Client, out: Format, args: Args) -> Result<(), CliError> {
    let mut stream = client.watch(args.since).await?;
    while let Some(event) = stream.next().await? {
        if out == Format::Json {
            println!("{}", serde_json::to_string(&event).unwrap_or_default());
            continue;
        }
        match &event {
            Event::Put { revision, object } => {
                println!(
                    "{revision:>8}  put     {:<10}  {}",
                    object.kind(),
                    object.key()
                );
            }
            Event::Delete { revision, object } => {
                println!(
                    "{revision:>8}  delete  {:<10}  {}",
                    object.kind(),
                    object.key()
                );
            }
            Event::Reset { revision } => println!("{revision:>8}  reset (snapshot follows)"),
            Event::Synced { revision } => println!("{revision:>8}  synced"),
        }
    }
    Ok(())
}
