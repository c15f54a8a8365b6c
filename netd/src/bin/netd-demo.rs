//! `netd-demo`: netd end to end in throwaway namespaces, then everything removed again.
//!
//! Builds a "host" namespace running `netd up` (embedded store, its own socket and
//! directories) and two "container" namespaces, attaches both to netd's default network with
//! the conflist netd wrote, exactly as a runtime would (the `netd-cni` binary, env vars,
//! config on stdin), and shows what netd adds to plain networking: containers registered and
//! resolvable by name through netd's DNS on the gateway, a container and a host process
//! exposed as services reached by name and virtual IP, and a host port published by netd.
//! Then the mesh: a network created with `--mesh`, a client and two replicas of `hello`, each
//! with the `netd-sidecar` netd starts in its namespace; the client's plain keep-alive
//! connection to `http://hello/` is balanced per request over both replicas, a replica is
//! removed under load without a failed request, and the client's sidecar shows its metrics.
//! Then it detaches the containers, stops netd and deletes the namespaces.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netd::mesh::probe;
use netd_cni::link::Netlink;
use netd_cni::netns::{NamedNetNs, NetNs};
use serde_json::{json, Value};

/// `println!` that ignores a closed stdout: the demo must reach its cleanup even when its
/// output is piped into `head` (a failed `println!` panics, and release builds abort).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!`, likewise.
macro_rules! tell {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() {
    if let Err(e) = run() {
        tell!("netd-demo: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let tag = std::process::id();
    let netd = sibling("netd")?;
    let plugin = sibling("netd-cni")?;
    let dir = std::env::temp_dir().join(format!("netd-demo-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    let socket = dir.join("netd.sock");
    say!("netd demo: netd and two containers in throwaway namespaces");

    let host = NamedNetNs::create(&format!("netd-demo-host-{tag}"))?;
    let web = NamedNetNs::create(&format!("netd-demo-web-{tag}"))?;
    let client = NamedNetNs::create(&format!("netd-demo-client-{tag}"))?;
    host.ns().run(|| Netlink::open()?.set_up(1))??;

    // netd in the host namespace, on embedded defaults but with private paths.
    let log = dir.join("netd.log");
    let mut daemon = Daemon(Some(
        in_ns(Command::new(&netd), host.ns())
            .arg("--socket")
            .arg(&socket)
            .arg("up")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--cni-conf-dir")
            .arg(dir.join("cni"))
            .args(["--node", "demo"])
            // A throwaway run: its sidecars end with it.
            .arg("--stop-sidecars-on-exit")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.join("netd.err"))?)
            .spawn()?,
    ));
    let conflist = dir.join("cni").join("netd.conflist");
    wait_for("netd to start", Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok() && conflist.exists()
    })
    .map_err(|e| format!("{e}: {}", read(&dir.join("netd.err"))))?;
    say!(
        "  netd up: pid {}, socket {}",
        daemon.pid(),
        socket.display()
    );

    // The plugin's configuration is the one netd wrote for its default network.
    let list: Value = serde_json::from_str(&std::fs::read_to_string(&conflist)?)?;
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    conf["dataDir"] = json!(dir.join("cni-state"));
    say!(
        "  network {} ({}), conflist {}",
        conf["name"].as_str().unwrap_or("?"),
        conf["bridge"].as_str().unwrap_or("?"),
        conflist.display()
    );

    let cni = Cni {
        plugin: &plugin,
        host: &host,
        socket: &socket,
        conf: &conf,
    };
    let (r1, t1) = cni.call("ADD", "demo-web", "web-1", &web)?;
    let (r2, t2) = cni.call("ADD", "demo-client", "client", &client)?;
    let web_ip = first_v4(&r1)?;
    let gw: Ipv4Addr = r1["ips"][0]["gateway"]
        .as_str()
        .ok_or("result has no gateway")?
        .parse()?;
    let dns = r1["dns"]["nameservers"][0]
        .as_str()
        .ok_or("result has no dns nameserver")?
        .parse::<IpAddr>()?;
    say!(
        "  ADD web-1  -> {} in {:.1} ms",
        addrs(&r1),
        t1.as_secs_f64() * 1e3
    );
    say!(
        "  ADD client -> {} in {:.1} ms (DNS {dns})",
        addrs(&r2),
        t2.as_secs_f64() * 1e3
    );

    // Two servers: one in the web container, one a plain host process.
    let web_srv = serve(&web, "0.0.0.0:80", "hello from web-1")?;
    let host_srv = serve(&host, "0.0.0.0:7070", "hello from a host process")?;
    let cli = |args: &[&str]| -> Res<String> {
        let out = Command::new(&netd)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "netd {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8(out.stdout)?)
    };
    let web_addr = web_ip.to_string();
    let gw_addr = gw.to_string();
    cli(&[
        "expose",
        "web",
        "80",
        "--address",
        &web_addr,
        "--host-port",
        "8080",
        "--persist",
    ])?;
    cli(&[
        "expose",
        "hostapp",
        "7070",
        "--address",
        &gw_addr,
        "--persist",
    ])?;
    say!("  netd expose web 80 --address {web_ip} --host-port 8080 --persist");
    say!("  netd expose hostapp 7070 --address {gw} --persist");
    for line in cli(&["services"])?.lines() {
        say!("    {line}");
    }

    let mut failures = 0;
    let mut check = |what: &str, r: Res<String>| match r {
        Ok(v) => say!("  {what:<44} => {}", v.trim()),
        Err(e) => {
            failures += 1;
            say!("  {what:<44} => FAILED: {e}");
        }
    };
    // netd's DNS follows the registry within a few tens of milliseconds: retry briefly.
    let resolve = |name: &'static str| {
        retry(|| {
            client
                .ns()
                .run(move || query_a(SocketAddr::new(dns, 53), name))?
        })
    };
    check(
        "client resolves web-1 (container name)",
        resolve("web-1").map(|ip| ip.to_string()),
    );
    let vip = resolve("web");
    check("client resolves web (service VIP)", vip_str(&vip));
    let hostapp = resolve("hostapp");
    check("client resolves hostapp (service VIP)", vip_str(&hostapp));
    // VIPs are programmed a few milliseconds after the registration: retry briefly.
    if let Ok(vip) = vip {
        check(
            "client -> web:80 (VIP -> web-1)",
            retry(|| {
                client
                    .ns()
                    .run(move || fetch(SocketAddr::new(vip.into(), 80)))?
            }),
        );
    }
    if let Ok(vip) = hostapp {
        check(
            "client -> hostapp:7070 (VIP -> host process)",
            retry(|| {
                client
                    .ns()
                    .run(move || fetch(SocketAddr::new(vip.into(), 7070)))?
            }),
        );
    }
    check(
        "host localhost:8080 (host port -> web-1)",
        retry(|| host.ns().run(|| fetch("127.0.0.1:8080".parse()?))?),
    );
    check(
        "client -> gateway:8080 (host port, hairpin)",
        retry(|| {
            client
                .ns()
                .run(move || fetch(SocketAddr::new(gw.into(), 8080)))?
        }),
    );
    drop(web_srv);
    drop(host_srv);

    let mesh = Mesh {
        tag,
        host: &host,
        plugin: &plugin,
        socket: &socket,
        dir: &dir,
        cli: &cli,
    };
    if let Err(e) = mesh.run(&mut check) {
        check("mesh part", Err(e));
    }

    for (id, name, ns) in [
        ("demo-web", "web-1", &web),
        ("demo-client", "client", &client),
    ] {
        let (_, t) = cni.call("DEL", id, name, ns)?;
        say!("  DEL {name} in {:.1} ms", t.as_secs_f64() * 1e3);
    }
    let status: Value = serde_json::from_str(&cli(&["status", "-o", "json"])?)?;
    say!(
        "  netd status: {} attachments, {} services, {} endpoints, revision {}",
        status["attachments"],
        status["services"],
        status["endpoints"],
        status["revision"]
    );
    daemon.stop();
    say!("  netd stopped; cleaning up namespaces and state");
    if failures > 0 {
        return Err(format!(
            "{failures} check(s) failed; netd log:\n{}{}",
            read(&log),
            read(&dir.join("netd.err"))
        )
        .into());
    }
    say!("netd demo: all good");
    Ok(())
}

/// The mesh part: a client and two replicas of `hello` on a network created with `--mesh`,
/// each with the sidecar netd starts in its namespace.
struct Mesh<'a> {
    tag: u32,
    host: &'a NamedNetNs,
    plugin: &'a Path,
    socket: &'a Path,
    dir: &'a Path,
    cli: &'a dyn Fn(&[&str]) -> Res<String>,
}

/// A sidecar's admin listener, inside its container.
const SIDECAR_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);

impl Mesh<'_> {
    /// Creates the network and containers, shows balancing, DNS, a scale-down under load and
    /// the sidecars' metrics, then removes it all again.
    fn run(&self, check: &mut dyn FnMut(&str, Res<String>)) -> Res<()> {
        say!("netd demo, mesh: a client and two replicas of hello on a meshed network");
        (self.cli)(&[
            "network",
            "create",
            "demo-mesh",
            "--subnet",
            "10.92.0.0/24",
            "--mesh",
        ])?;
        say!("  netd network create demo-mesh --subnet 10.92.0.0/24 --mesh");
        let list: Value = serde_json::from_str(&std::fs::read_to_string(
            self.dir.join("cni").join("demo-mesh.conflist"),
        )?)?;
        let mut conf = list["plugins"][0].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        conf["dataDir"] = json!(self.dir.join("cni-state"));
        let cni = Cni {
            plugin: self.plugin,
            host: self.host,
            socket: self.socket,
            conf: &conf,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut ctrs = Vec::new();
        let result: Res<()> = (|| {
            for name in ["client", "hello-1", "hello-2"] {
                let ns = NamedNetNs::create(&format!("netd-demo-m{name}-{}", self.tag))?;
                let id = format!("demo-mesh-{name}");
                let (r, _) = cni.call("ADD", &id, name, &ns)?;
                ns.ns().run(|| Netlink::open()?.set_up(1))??;
                let ip = first_v4(&r)?;
                say!("  ADD {name:<8} -> {ip} (sidecar started by netd)");
                ctrs.push((id, name, ns, ip));
            }
            for (_, name, ns, ip) in &ctrs[1..] {
                let listener = ns.ns().run(|| TcpListener::bind("0.0.0.0:80"))??;
                probe::serve(listener, name.to_string(), stop.clone());
                let addr = ip.to_string();
                (self.cli)(&[
                    "expose",
                    "hello",
                    "80",
                    "--protocol",
                    "http",
                    "--address",
                    &addr,
                    "--persist",
                ])?;
                say!("  netd expose hello 80 --protocol http --address {ip} --persist");
            }
            self.show(&ctrs, check)
        })();
        stop.store(true, Ordering::Relaxed);
        for (id, name, ns, _) in &ctrs {
            cni.call("DEL", id, name, ns)?;
        }
        (self.cli)(&["unexpose", "hello"])?;
        (self.cli)(&["network", "rm", "demo-mesh"])?;
        say!("  DEL client, hello-1, hello-2 (their sidecars stopped); network removed");
        result
    }

    fn show(
        &self,
        ctrs: &[(String, &str, NamedNetNs, Ipv4Addr)],
        check: &mut dyn FnMut(&str, Res<String>),
    ) -> Res<()> {
        for (_, name, ns, _) in ctrs {
            wait_for(
                &format!("{name}'s sidecar"),
                Duration::from_secs(20),
                || {
                    ns.ns()
                        .run(|| probe::admin_get(SIDECAR_ADMIN, "/ready"))
                        .ok()
                        .flatten()
                        .is_some_and(|(status, _)| status == 200)
                },
            )?;
        }
        let client = &ctrs[0].2;
        let gw = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 92, 0, 1)), 53);
        let vip = retry(|| client.ns().run(|| query_a(gw, "hello"))?)?;
        check(
            "client resolves hello (its sidecar's DNS)",
            Ok(vip.to_string()),
        );
        let vip = SocketAddr::new(vip.into(), 80);
        // The endpoints reach the client's sidecar within milliseconds: retry briefly.
        let balanced = retry(|| {
            let t = client.ns().run(|| probe::requests(vip, "hello", 40))?;
            if t.answers.len() == 2 && t.failed == 0 {
                Ok(t)
            } else {
                Err(format!("not balanced yet: {t:?}").into())
            }
        });
        check(
            "client -> http://hello/ x40, one connection",
            balanced.map(|t| tally(&t)),
        );

        // Scale-down under load: hello-2's endpoint goes while two connections keep asking.
        let running = Arc::new(AtomicBool::new(true));
        let path = client.path().to_path_buf();
        let load = {
            let running = running.clone();
            std::thread::spawn(move || -> Res<probe::Tally> {
                let ns = NetNs::open(&path)?;
                Ok(ns.run(|| {
                    let mut total = probe::Tally::default();
                    // At least 200 requests, and until the removal is seen.
                    for i in 0..300 {
                        total.add(probe::requests(vip, "hello", 10));
                        if i >= 20 && !running.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    total
                })?)
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let api = netd::client::Client::new(self.socket);
        let hello2 = IpAddr::V4(ctrs[2].3);
        let removed = rt.block_on(async {
            let eps = api.endpoints("default", "hello").await?;
            for ep in eps.iter().filter(|e| e.address == hello2) {
                api.delete_endpoint("default", "hello", &ep.id).await?;
            }
            Ok::<_, netd::client::ClientError>(())
        });
        let only_one = removed.map_err(Into::into).and_then(|()| {
            retry(|| {
                let t = client.ns().run(|| probe::requests(vip, "hello", 20))?;
                if t.answers.keys().eq(["hello-1"].iter()) {
                    Ok(())
                } else {
                    Err(format!("hello-2 still answers: {t:?}").into())
                }
            })
        });
        running.store(false, Ordering::Relaxed);
        let under_load = load
            .join()
            .map_err(|_| "load thread panicked")?
            .and_then(|t| match (only_one, t.failed) {
                (Err(e), _) => Err(e),
                (Ok(()), 0) => Ok(format!("{} requests, 0 failed ({})", t.ok(), tally(&t))),
                (Ok(()), n) => Err(format!("{n} failed requests: {t:?}").into()),
            });
        check("hello-2 removed under load", under_load);

        let metrics = client
            .ns()
            .run(|| probe::admin_get(SIDECAR_ADMIN, "/metrics"))?
            .map(|(_, body)| body)
            .ok_or("the client's sidecar does not answer /metrics")?;
        say!("  the client's sidecar, /metrics (outbound requests, node-local links):");
        for line in metrics.lines().filter(|l| {
            (l.starts_with("netd_http_requests_total")
                || l.starts_with("netd_http_peer_requests")
                || l.starts_with("netd_local_link_connections_total"))
                && l.contains("outbound")
        }) {
            say!("    {line}");
        }
        let counted = probe::metric(
            &metrics,
            "netd_http_requests_total",
            &["direction=\"outbound\"", "service=\"default/hello\""],
        );
        check(
            "client's sidecar counted requests to hello",
            if counted >= 40 {
                Ok(counted.to_string())
            } else {
                Err(format!("only {counted}").into())
            },
        );
        // One node: the client's sidecar reached the replicas' sidecars over node-local links.
        let links = probe::metric(
            &metrics,
            "netd_local_link_connections_total",
            &["direction=\"outbound\"", "result=\"opened\""],
        );
        check(
            "sidecar to sidecar over node-local links",
            if links >= 2 {
                Ok(format!("{links} links opened (unix streams, not TCP)"))
            } else {
                Err(format!("only {links} links opened").into())
            },
        );
        Ok(())
    }
}

/// `hello-1: 21, hello-2: 19`.
fn tally(t: &probe::Tally) -> String {
    t.answers
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the plugin inside the host namespace, as a runtime on that host would, reporting to
/// the demo's netd.
struct Cni<'a> {
    plugin: &'a Path,
    host: &'a NamedNetNs,
    socket: &'a Path,
    conf: &'a Value,
}

impl Cni<'_> {
    fn call(&self, cmd: &str, id: &str, name: &str, ns: &NamedNetNs) -> Res<(Value, Duration)> {
        let mut child = in_ns(Command::new(self.plugin), self.host.ns());
        child
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", ns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .env("CNI_ARGS", format!("K8S_POD_NAME={name}"))
            .env("NETD_SOCKET", self.socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let start = Instant::now();
        let mut proc = child.spawn()?;
        proc.stdin
            .take()
            .ok_or("no stdin")?
            .write_all(self.conf.to_string().as_bytes())?;
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
}

/// `cmd` will run in the network namespace `ns`.
fn in_ns(mut cmd: Command, ns: &NetNs) -> Command {
    ns.enter_on_exec(&mut cmd);
    cmd
}

/// A TCP server in `ns` answering every connection with `greeting` and the peer's address;
/// it stops when dropped (its listener is shut down).
struct Server(TcpListener);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: shutting down our own listening socket wakes the accept loop.
        unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

fn serve(ns: &NamedNetNs, addr: &'static str, greeting: &'static str) -> Res<Server> {
    let listener = ns.ns().run(|| TcpListener::bind(addr))??;
    let accept = listener.try_clone()?;
    std::thread::spawn(move || {
        for mut conn in accept.incoming().flatten() {
            let peer = conn
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = writeln!(conn, "{greeting} (you are {peer})");
        }
    });
    Ok(Server(listener))
}

fn fetch(addr: SocketAddr) -> Res<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    if reply.is_empty() {
        return Err(format!("{addr} closed without a reply").into());
    }
    Ok(format!("{addr}: {reply}"))
}

/// Up to 2 s of attempts, 50 ms apart (VIPs, host ports and DNS names follow the registry
/// within a few tens of milliseconds).
fn retry<T>(mut f: impl FnMut() -> Res<T>) -> Res<T> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn vip_str(r: &Res<Ipv4Addr>) -> Res<String> {
    match r {
        Ok(ip) => Ok(ip.to_string()),
        Err(e) => Err(e.to_string().into()),
    }
}

/// One DNS query for `name`'s A record over UDP, as a stub resolver with the conflist's
/// search domain would send it (`name.netd.local`).
fn query_a(server: SocketAddr, name: &str) -> Res<Ipv4Addr> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.split('.').chain(["netd", "local"]) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    sock.send_to(&q, server)?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf)?;
    parse_a(&buf[..n], id).ok_or_else(|| {
        let rcode = buf.get(3).map_or(0, |b| b & 0x0f);
        format!("no A record for {name} from {server} (rcode {rcode}, {n} bytes)").into()
    })
}

/// The first A record of a response with id `id` and rcode NOERROR.
fn parse_a(m: &[u8], id: u16) -> Option<Ipv4Addr> {
    if m.len() < 12 || m[..2] != id.to_be_bytes() || m[3] & 0x0f != 0 {
        return None;
    }
    let (qd, an) = (
        u16::from_be_bytes([m[4], m[5]]),
        u16::from_be_bytes([m[6], m[7]]),
    );
    let mut i = 12;
    let skip_name = |mut i: usize| -> Option<usize> {
        loop {
            let len = *m.get(i)? as usize;
            if len == 0 {
                return Some(i + 1);
            }
            if len & 0xc0 == 0xc0 {
                return Some(i + 2);
            }
            i += 1 + len;
        }
    };
    for _ in 0..qd {
        i = skip_name(i)? + 4;
    }
    for _ in 0..an {
        i = skip_name(i)?;
        let rr = m.get(i..i + 10)?;
        let (ty, len) = (
            u16::from_be_bytes([rr[0], rr[1]]),
            u16::from_be_bytes([rr[8], rr[9]]) as usize,
        );
        let data = m.get(i + 10..i + 10 + len)?;
        if ty == 1 && len == 4 {
            return Some(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + len;
    }
    None
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Res<()> {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn first_v4(result: &Value) -> Res<Ipv4Addr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .find(|a| !a.contains(':'))
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
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

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A binary next to this one (all are built by `cargo build --workspace --bins`).
fn sibling(name: &str) -> Res<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.is_file() {
        return Err(format!(
            "{} not found: build everything with `cargo build --release --workspace --bins`",
            path.display()
        )
        .into());
    }
    Ok(path)
}

/// The demo's netd: stopped with SIGTERM (then killed) when the demo ends, however it ends.
struct Daemon(Option<Child>);

impl Daemon {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    fn stop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        // SAFETY: signalling the child we started, by its PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
