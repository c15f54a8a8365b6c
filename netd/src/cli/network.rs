//! `netd network create|ls|inspect|rm`: manage netd networks (each one a CNI conflist).

use netd_config::netd::{Network, NetworkSpec};

use super::output::{print_json, Format, Table};
use super::CliError;
use crate::client::Client;

/// Network subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a network and write its conflist.
    #[command(after_help = "\
Examples:
  netd network create dev --subnet 10.90.0.0/24
  netd network create dev6 --subnet 10.91.0.0/24 --subnet fd00:91::/64 --isolate
Then: podman run --network dev ...")]
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls,
    /// Show one network.
    Inspect {
        /// Network name.
        name: String,
    },
    /// Remove a network and its conflist (refused while containers are attached).
    #[command(alias = "remove")]
    Rm {
        /// Network name.
        name: String,
    },
}

/// Arguments of `netd network create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Network name.
    pub name: String,
    /// Subnet in CIDR form; repeat for dual stack (one IPv4, one IPv6).
    #[arg(long = "subnet", value_name = "CIDR", required = true)]
    pub subnets: Vec<String>,
    /// Put a netd sidecar in every container of the network, with its TCP and DNS
    /// transparently sent through it.
    #[arg(long)]
    pub mesh: bool,
    /// Forbid traffic to and from other netd networks.
    #[arg(long)]
    pub isolate: bool,
    /// Bridge name (default: the first free netdN).
    #[arg(long)]
    pub bridge: Option<String>,
}

/// Runs a network subcommand.
pub async fn run(client: &Client, out: Format, cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::Create(a) => {
            let net = client
                .create_network(&NetworkSpec {
                    name: a.name,
                    subnets: a.subnets,
                    mesh: a.mesh,
                    isolate: a.isolate,
                    bridge: a.bridge,
                })
                .await?;
            if out == Format::Json {
                return Ok(print_json(&net)?);
            }
            println!(
                "created network {} ({}) on bridge {}; use it with `podman run --network {} ...`",
                net.name,
                subnets(&net),
                net.bridge,
                net.name
            );
        }
        Command::Ls => {
            let nets = client.networks().await?;
            if out == Format::Json {
                return Ok(print_json(&nets)?);
            }
            let mut t = Table::new(&["NAME", "SUBNETS", "BRIDGE", "MESH", "ISOLATE"]);
            for n in &nets {
                t.row(vec![
                    n.name.clone(),
                    subnets(n),
                    n.bridge.clone(),
                    yes_no(n.mesh),
                    yes_no(n.isolate),
                ]);
            }
            t.print()?;
        }
        Command::Inspect { name } => {
            let n = client.network(&name).await?;
            if out == Format::Json {
                return Ok(print_json(&n)?);
            }
            println!("name:      {}", n.name);
            println!("subnets:   {}", subnets(&n));
            println!("bridge:    {}", n.bridge);
            println!("mesh:      {}", yes_no(n.mesh));
            println!("isolate:   {}", yes_no(n.isolate));
            println!("revision:  {}", n.revision);
        }
        Command::Rm { name } => {
            let d = client.delete_network(&name).await?;
            if out == Format::Json {
                return Ok(print_json(&d)?);
            }
            println!("removed network {name}");
        }
    }
    Ok(())
}

fn subnets(n: &Network) -> String {
    let s: Vec<String> = n.subnets.iter().map(ToString::to_string).collect();
    s.join(", ")
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}
