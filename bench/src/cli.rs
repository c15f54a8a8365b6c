//! Command-line options of `netd-bench` (hand-rolled: a handful of flags does not justify a
//! parser dependency).

use std::path::PathBuf;
use std::time::Duration;

/// Usage text printed by `--help` and on bad arguments.
pub const USAGE: &str = "\
usage: netd-bench cni [options]
       netd-bench dns [options]   (netd-dns vs dnsmasq; see netd-bench dns --help)
       netd-bench registry [options]
                                  (the netd daemon's registry: writes/s, watch latency, RSS;
                                   see netd-bench registry --help)
       netd-bench mesh [options]  (client -> sidecar -> sidecar -> server vs direct, nginx
                                   and HAProxy, on loopback; see netd-bench mesh --help)

Compares netd-cni with the reference chain bridge + host-local + portmap, side by side,
inside throwaway network namespaces. Run as root.

options:
  --sizes A,B,C      attached-container counts to measure at   (default 1,250,1000)
  --window N         ADDs (then DELs) measured at each size     (default 20)
  --quick            small smoke run: sizes 1,50, window 5, short datapath runs
  --json PATH        also write the results as JSON to PATH
  --netd PATH        netd-cni binary (default: next to this binary, then target/release)
  --ref-dir DIR      reference plugins directory                (default /usr/lib/cni)
  --tools LIST       which tools to run: netd,reference         (default both)
  --conns N          concurrent connections of the load generator (default 8)
  --duration SECS    measured seconds per datapath run          (default 3)
  --rounds N         datapath runs per path, interleaved across paths; the median run
                     of each path is reported                   (default 3)
  --no-datapath      skip the datapath measurements
  --no-ipv6          disable IPv6 in every benchmark namespace (as Docker does for IPv4-only
                     networks): removes the kernel's per-port IPv6 multicast flood
";

/// Containers one tool may use in total (its /20 subnet holds 4093).
pub const MAX_CONTAINERS: usize = 4000;

/// Which side of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// netd-cni, one plugin with built-in IPAM and nf_tables port maps.
    Netd,
    /// bridge + host-local + portmap from containernetworking-plugins.
    Reference,
}

impl Tool {
    /// Short name used in namespaces, container IDs and JSON keys.
    pub fn key(self) -> &'static str {
        match self {
            Tool::Netd => "netd",
            Tool::Reference => "reference",
        }
    }
}

/// Options of the `cni` subcommand.
#[derive(Debug, Clone)]
pub struct Options {
    /// Attached-container counts, ascending, deduplicated.
    pub sizes: Vec<usize>,
    /// ADDs (then DELs) measured at each size.
    pub window: usize,
    /// Smoke-run mode.
    pub quick: bool,
    /// Where to write JSON results.
    pub json: Option<PathBuf>,
    /// Explicit netd-cni binary.
    pub netd: Option<PathBuf>,
    /// Reference plugin directory.
    pub ref_dir: PathBuf,
    /// Tools to run, in order.
    pub tools: Vec<Tool>,
    /// Load generator connections.
    pub conns: usize,
    /// Measured time per datapath run.
    pub duration: Duration,
    /// Datapath runs per path (interleaved; the median is reported).
    pub rounds: usize,
    /// Whether to run the datapath measurements.
    pub datapath: bool,
    /// Whether the benchmark's namespaces keep IPv6 enabled (the kernel default).
    pub ipv6: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sizes: vec![1, 250, 1000],
            window: 20,
            quick: false,
            json: None,
            netd: None,
            ref_dir: PathBuf::from("/usr/lib/cni"),
            tools: vec![Tool::Netd, Tool::Reference],
            conns: 8,
            duration: Duration::from_secs(3),
            rounds: 3,
            datapath: true,
            ipv6: true,
        }
    }
}

impl Options {
    /// Parses the arguments after the subcommand name. `--quick` sets small defaults that
    /// explicit flags (anywhere on the line) still override.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, String> {
        let args: Vec<String> = args.into_iter().collect();
        let mut o = Options::default();
        if args.iter().any(|a| a == "--quick") {
            o.quick = true;
            o.sizes = vec![1, 50];
            o.window = 5;
            o.conns = 4;
            o.duration = Duration::from_millis(500);
            o.rounds = 1;
        }
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
            match flag.as_str() {
                "--quick" => {}
                "--sizes" => o.sizes = parse_sizes(&value("--sizes")?)?,
                "--window" => o.window = parse_count("--window", &value("--window")?)?,
                "--json" => o.json = Some(PathBuf::from(value("--json")?)),
                "--netd" => o.netd = Some(PathBuf::from(value("--netd")?)),
                "--ref-dir" => o.ref_dir = PathBuf::from(value("--ref-dir")?),
                "--tools" => o.tools = parse_tools(&value("--tools")?)?,
                "--conns" => o.conns = parse_count("--conns", &value("--conns")?)?,
                "--duration" => {
                    let v = value("--duration")?;
                    let secs: f64 = v
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 600.0)
                        .ok_or(format!("--duration {v:?}: expected seconds in (0, 600]"))?;
                    o.duration = Duration::from_secs_f64(secs);
                }
                "--rounds" => o.rounds = parse_count("--rounds", &value("--rounds")?)?,
                "--no-datapath" => o.datapath = false,
                "--no-ipv6" => o.ipv6 = false,
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        if o.max_size() >= crate::attach::BRIDGE_MAX_PORTS {
            return Err(format!(
                "--sizes: at most {} (a Linux bridge holds {} ports, one is needed for the window)",
                crate::attach::BRIDGE_MAX_PORTS - 1,
                crate::attach::BRIDGE_MAX_PORTS
            ));
        }
        if o.containers_per_tool() > MAX_CONTAINERS {
            return Err(format!(
                "--sizes/--window: {} containers per tool is more than the {MAX_CONTAINERS} \
                 the benchmark's subnets and host ports allow",
                o.containers_per_tool()
            ));
        }
        Ok(o)
    }

    /// The largest size: how many containers stay attached at the end of the fill.
    pub fn max_size(&self) -> usize {
        self.sizes.last().copied().unwrap_or(0)
    }

    /// Container namespaces one tool needs: the fill plus one window per size.
    pub fn containers_per_tool(&self) -> usize {
        self.max_size() + self.window * self.sizes.len()
    }
}

fn parse_count(name: &str, v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .ok()
        .filter(|n| (1..=5000).contains(n))
        .ok_or(format!("{name} {v:?}: expected a number in 1..=5000"))
}

fn parse_sizes(v: &str) -> Result<Vec<usize>, String> {
    let mut sizes = v
        .split(',')
        .map(|s| parse_count("--sizes", s.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() {
        return Err("--sizes: give at least one size".into());
    }
    Ok(sizes)
}

fn parse_tools(v: &str) -> Result<Vec<Tool>, String> {
    let mut tools = Vec::new();
    for t in v.split(',') {
        let tool = match t.trim() {
            "netd" | "netd-cni" => Tool::Netd,
            "reference" | "ref" => Tool::Reference,
            other => return Err(format!("--tools: unknown tool {other:?} (netd, reference)")),
        };
        if !tools.contains(&tool) {
            tools.push(tool);
        }
    }
    Ok(tools)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Options, String> {
        Options::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn defaults_and_overrides() {
        let o = parse("").unwrap();
        assert_eq!(o.sizes, vec![1, 250, 1000]);
        assert_eq!(o.containers_per_tool(), 1000 + 3 * 20);
        let o = parse("--window 7 --quick --sizes 10,2,10").unwrap();
        assert!(o.quick);
        assert_eq!((o.sizes.clone(), o.window), (vec![2, 10], 7));
        assert!(parse("--sizes 0").is_err());
        assert!(parse("--bogus").is_err());
        assert!(parse("--json").is_err());
        assert_eq!(parse("--tools ref").unwrap().tools, vec![Tool::Reference]);
        assert!(parse("--sizes 1,2,3,1000 --window 1000").is_err());
        assert!(parse("--sizes 1023").is_err());
    }
}
