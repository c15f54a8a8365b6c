//! `netd-demo`: the README's main command until the netd daemon exists.
//!
//! Builds a throwaway "host" namespace and two "container" namespaces, attaches both to a
//! netd-cni network exactly as a runtime would (the plugin binary, env vars, config on stdin),
//! shows them talking and a published port answering from the host's localhost, the bridge
//! address and from the other container (hairpin), then detaches them and removes everything.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netd_cni::link::Netlink;
use netd_cni::netns::NamedNetNs;
use serde_json::{json, Value};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    if let Err(e) = run() {
        eprintln!("netd-demo: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let tag = std::process::id();
    let plugin = plugin_path()?;
    let state = std::env::temp_dir().join(format!("netd-demo-{tag}"));
    let _cleanup = RemoveDir(state.clone());
    println!(
        "netd demo: a netd-cni network in throwaway namespaces (plugin {})",
        plugin.display()
    );

    let host = NamedNetNs::create(&format!("netd-demo-host-{tag}"))?;
    let c1 = NamedNetNs::create(&format!("netd-demo-c1-{tag}"))?;
    let c2 = NamedNetNs::create(&format!("netd-demo-c2-{tag}"))?;
    host.ns().run(|| Netlink::open()?.set_up(1))??;
    println!(
        "  namespaces: host {}, containers {} {}",
        host.path().display(),
        c1.path().display(),
        c2.path().display()
    );

    let conf = json!({
        "cniVersion": "1.1.0", "name": "demo", "type": "netd-cni",
        "bridge": "netd-demo0", "isGateway": true, "isDefaultGateway": true, "ipMasq": true,
        "hairpinMode": true, "dataDir": state,
        "capabilities": {"portMappings": true},
        "ipam": {"type": "netd", "ranges": [[{"subnet": "10.244.7.0/24"}], [{"subnet": "fd00:244:7::/64"}]]}
    });
    let mut published = conf.clone();
    published["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});

    let (r1, t1) = cni(&plugin, &host, "ADD", "demo-c1", &c1, &conf)?;
    let (r2, t2) = cni(&plugin, &host, "ADD", "demo-c2", &c2, &published)?;
    let ip1 = first_v4(&r1)?;
    let ip2 = first_v4(&r2)?;
    let gw = r1["ips"][0]["gateway"]
        .as_str()
        .ok_or("result has no gateway")?
        .to_string();
    println!(
        "  ADD c1 -> {} in {:.1} ms",
        addrs(&r1),
        t1.as_secs_f64() * 1e3
    );
    println!(
        "  ADD c2 -> {} in {:.1} ms, publishing host port 8080 -> c2:80",
        addrs(&r2),
        t2.as_secs_f64() * 1e3
    );

    // c2 serves; every client below must get its greeting back.
    let listener = c2.ns().run(|| TcpListener::bind("0.0.0.0:80"))??;
    let server = std::thread::spawn(move || {
        for conn in listener.incoming().take(4).flatten() {
            let peer = conn
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let mut conn = conn;
            let _ = writeln!(conn, "hello from c2 (you are {peer})");
        }
    });
    let cases = [
        ("c1 -> c2 directly", &c1, format!("{ip2}:80")),
        (
            "host localhost -> published port",
            &host,
            "127.0.0.1:8080".to_string(),
        ),
        ("host -> bridge address:8080", &host, format!("{gw}:8080")),
        ("c1 -> published port (hairpin)", &c1, format!("{gw}:8080")),
    ];
    let mut failures = 0;
    for (what, ns, addr) in cases {
        match ns.ns().run(|| fetch(&addr).map_err(|e| e.to_string()))? {
            Ok(reply) => println!("  {what:<36} {addr:<18} => {}", reply.trim()),
            Err(e) => {
                failures += 1;
                println!("  {what:<36} {addr:<18} => FAILED: {e}");
            }
        }
    }
    let _ = server.join();
    println!("  c1 is {ip1}; c2 is {ip2}; gateway {gw}");

    for (id, ns, c) in [("demo-c1", &c1, &conf), ("demo-c2", &c2, &published)] {
        let (_, t) = cni(&plugin, &host, "DEL", id, ns, c)?;
        println!("  DEL {id} in {:.1} ms", t.as_secs_f64() * 1e3);
    }
    println!("  cleaning up namespaces and state");
    if failures > 0 {
        return Err(format!("{failures} connection(s) failed").into());
    }
    println!("netd demo: all good");
    Ok(())
}

/// Runs the plugin inside the host namespace, as a runtime on that host would.
fn cni(
    plugin: &PathBuf,
    host: &NamedNetNs,
    cmd: &str,
    id: &str,
    ns: &NamedNetNs,
    conf: &Value,
) -> Res<(Value, Duration)> {
    let host_fd = std::os::fd::AsRawFd::as_raw_fd(host.ns());
    let mut child = Command::new(plugin);
    child
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", ns.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: setns is async-signal-safe and only affects the child after fork.
    unsafe {
        child.pre_exec(move || {
            if libc::setns(host_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut proc = child.spawn()?;
    proc.stdin
        .take()
        .ok_or("no stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = proc.wait_with_output()?;
    let took = start.elapsed();
    let value: Value = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout)?
    };
    if !out.status.success() {
        return Err(format!("{cmd} {id} failed: {value}").into());
    }
    Ok((value, took))
}

fn fetch(addr: &str) -> Res<String> {
    let addr: SocketAddr = addr.parse()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply)
}

fn first_v4(result: &Value) -> Res<String> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .find(|a| !a.contains(':'))
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
        .ok_or_else(|| "result has no IPv4 address".into())
}

fn addrs(result: &Value) -> String {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plugin binary next to this one (both are built by `cargo build`).
fn plugin_path() -> Res<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name("netd-cni");
    if !path.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p netd-cni`",
            path.display()
        )
        .into());
    }
    Ok(path)
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
