//! The mesh end to end, with real components only: `netd up` runs inside a throwaway "host"
//! namespace with `--sidecar-bin` pointing at the real `netd-sidecar`; a network is created
//! with `mesh: true`; three containers (throwaway namespaces) are attached with the real
//! `netd-cni` as a runtime would (`client`, and `hello-1`/`hello-2` serving HTTP on port 80 and
//! registering `hello:80` through `NETD_SERVICE`). netd then starts one sidecar per container,
//! inside its namespace, with nf_tables interception in there.
//!
//! The client is unmodified: a plain std `TcpStream` speaking HTTP/1.1 keep-alive to the VIP
//! it resolved with a plain UDP DNS query to the gateway's port 53, which interception sends
//! to the client's sidecar (it answers the mesh's names itself, also with netd down, and
//! forwards the others to netd's DNS on the gateway, whose upstream is a stand-in on the
//! host namespace's loopback).
//!
//! A lab can also give the replicas more services (`Lab::with`), served by the applications
//! of `common/apps.rs` on the lab's runtime, so every protocol the sidecars tell apart is
//! driven through the real interception on both sides: h2c balanced per request over one
//! connection, gRPC (trailers, bidirectional streams, large messages), TLS passed through
//! (the client verifies the replica's own certificate), opaque and server-first TCP with
//! half-closes, HTTP/1.1 upgrades; and abuse: garbage, oversized heads, half-closed and
//! stalled clients, streams reset or abandoned midway, applications closing their
//! keep-alive connections. After abuse, the sidecars must be the same processes, serving,
//! and hold no more file descriptors (and no more open opaque connections) than before.
//!
//! Every namespace is deleted and every process in it killed (by pid) when the lab drops,
//! also on failure; names carry the test process id and a counter, so tests run in parallel.
//! Needs the binaries: `cargo build -p netd-cni -p netd-sidecar` (next to the `netd` binary
//! under test, or `NETD_CNI_BIN` / `NETD_SIDECAR_BIN`). No timings are asserted.

#[path = "common/apps/mod.rs"]
mod apps;
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{netd_up, pids_in_netns, unique, wait_until, TempDir, BIN};
use netd::client::Client;
use netd::mesh::probe::{self, metric, Tally};
use netd::mesh::status::SidecarState;
use netd_cni::netns::NamedNetNs;
use netd_config::netd::{NetworkSpec, Protocol, ServicePort, ServiceSpec};
use netd_dns::proto::op::{Message, MessageType, Query};
use netd_dns::proto::rr::rdata::A;
use netd_dns::proto::rr::{Name, RData, Record, RecordType};
use serde_json::{json, Value};

/// Longest wait for anything the mesh does on its own (sidecars up, snapshots propagated).
const WAIT: Duration = Duration::from_secs(30);
/// Dual stack: the IPv6 half exercises the sidecars' IPv6 listeners.
const SUBNETS: [&str; 2] = ["10.91.0.0/24", "fd00:91::/64"];
/// The network's gateway, where containers send DNS (port 53).
const DNS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 91, 0, 1)), 53);
/// The sidecar's admin listener, inside each container.
const ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
/// A plain TCP echo port in `hello-1` that is no service port.
const ECHO_PORT: u16 = 7000;

/// A binary built next to the `netd` under test, or at `$env`.
fn binary(name: &str, env: &str) -> PathBuf {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(BIN)
            .parent()
            .expect("netd binary has a directory")
            .join(name)
    });
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p netd-cni -p netd-sidecar` first",
        path.display()
    );
    path
}

/// Brings `lo` up in `ns`.
fn lo_up(ns: &NamedNetNs) {
    ns.ns()
        .run(|| netd_cni::link::Netlink::open()?.set_up(1))
        .expect("enter namespace")
        .expect("set lo up");
}

/// A container: its namespace, CNI container id and address.
struct Ctr {
    name: String,
    id: String,
    ip: Ipv4Addr,
    ip6: Ipv6Addr,
    ns: NamedNetNs,
}

impl Ctr {
    /// Runs `f` on a thread inside the container's namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.ns().run(f).expect("enter container namespace")
    }
}

/// netd in a host namespace, a meshed network, three containers; all removed on drop.
struct Lab {
    rt: tokio::runtime::Runtime,
    api: Client,
    daemon: Option<Child>,
    /// How many times netd was started (one log file each).
    starts: usize,
    conf: Value,
    sidecar: PathBuf,
    cni: PathBuf,
    ctrs: Vec<Ctr>,
    stop_servers: Arc<AtomicBool>,
    /// The stand-in upstream DNS server, in the host namespace.
    upstream: SocketAddr,
    host: NamedNetNs,
    /// Extra `netd up` arguments (every start).
    up_args: Vec<String>,
    // Last: removed after the processes are gone.
    dir: TempDir,
}

/// A service the replicas serve besides `hello:80`: both register an endpoint for it when
/// attached; the test starts its servers.
#[derive(Debug, Clone, Copy)]
struct Svc {
    name: &'static str,
    port: u16,
    protocol: Protocol,
}

impl Svc {
    const fn new(name: &'static str, port: u16, protocol: Protocol) -> Svc {
        Svc {
            name,
            port,
            protocol,
        }
    }

    /// `name:port`, as `NETD_SERVICE` lists it.
    fn reference(&self) -> String {
        format!("{}:{}", self.name, self.port)
    }
}

/// The service every lab has: HTTP/1.1 on port 80 of both replicas.
const HELLO: Svc = Svc::new("hello", 80, Protocol::Http);

impl Lab {
    /// A lab with `hello` only.
    fn new() -> Lab {
        Lab::with(&[])
    }

    /// A lab whose replicas serve `hello` and `extra` (`hello`'s servers started).
    fn with(extra: &[Svc]) -> Lab {
        Lab::build(extra, &[])
    }

    /// [`Lab::with`], netd started with `up_args` too.
    fn build(extra: &[Svc], up_args: &[&str]) -> Lab {
        let tag = unique("m");
        let sidecar = binary("netd-sidecar", "NETD_SIDECAR_BIN");
        let cni = binary("netd-cni", "NETD_CNI_BIN");
        let dir = TempDir::new("mesh-e2e");
        let host = NamedNetNs::create(&format!("netd-me-h-{tag}")).expect("host namespace");
        lo_up(&host);
        let socket = dir.0.join("netd.sock");
        let stop_servers = Arc::new(AtomicBool::new(false));
        let upstream = fake_upstream(&host, stop_servers.clone());
        let mut lab = Lab {
            rt: tokio::runtime::Runtime::new().expect("runtime"),
            api: Client::new(&socket),
            daemon: None,
            starts: 0,
            conf: Value::Null,
            sidecar,
            cni,
            ctrs: Vec::new(),
            stop_servers,
            upstream,
            host,
            up_args: up_args.iter().map(ToString::to_string).collect(),
            dir,
        };
        lab.start_netd();
        let net = lab
            .rt
            .block_on(lab.api.create_network(&NetworkSpec {
                name: "m".into(),
                subnets: SUBNETS.iter().map(ToString::to_string).collect(),
                mesh: true,
                isolate: false,
                bridge: None,
            }))
            .expect("create meshed network");
        assert!(net.mesh);
        // The plugin's configuration is the conflist netd wrote, as a runtime would read it.
        let list: Value = serde_json::from_str(
            &std::fs::read_to_string(lab.dir.0.join("cni").join("m.conflist")).expect("conflist"),
        )
        .expect("conflist JSON");
        let mut conf = list["plugins"][0].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        conf["dataDir"] = json!(lab.dir.0.join("cni-state"));
        lab.conf = conf;
        // `hello` is known HTTP (the protocol hint skips detection).
        let services: Vec<Svc> = std::iter::once(HELLO)
            .chain(extra.iter().copied())
            .collect();
        for svc in &services {
            lab.rt
                .block_on(lab.api.put_service(&ServiceSpec {
                    name: svc.name.into(),
                    namespace: "default".into(),
                    ports: vec![ServicePort {
                        name: None,
                        port: svc.port,
                        protocol: svc.protocol,
                        host_port: None,
                    }],
                    health_check: None,
                }))
                .unwrap_or_else(|e| panic!("create service {}: {e}", svc.name));
        }
        let refs = services
            .iter()
            .map(Svc::reference)
            .collect::<Vec<_>>()
            .join(",");
        for (name, service) in [
            ("client", None),
            ("hello-1", Some(refs.as_str())),
            ("hello-2", Some(refs.as_str())),
        ] {
            lab.attach(&tag, name, service);
        }
        for c in &lab.ctrs[1..] {
            http_server(c, 80, &c.name, lab.stop_servers.clone());
        }
        echo_server(&lab.ctrs[1], ECHO_PORT, lab.stop_servers.clone());
        for c in &lab.ctrs {
            lab.wait_ready(c);
        }
        lab
    }

    /// Starts `netd up` in the host namespace (again, after a kill: same directories, so it
    /// adopts the sidecars left running) and waits until it answers.
    fn start_netd(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.0.join(format!("netd-{}.log", self.starts)))
            .expect("log");
        let mut cmd = Command::new(BIN);
        self.host.ns().enter_on_exec(&mut cmd);
        let mut cmd = netd_up(cmd, &self.dir.0);
        cmd.args(["--node", "test-node", "--dns-upstream"])
            .arg(self.upstream.to_string())
            .arg("--sidecar-bin")
            .arg(&self.sidecar)
            .args(["--sidecar-drain-timeout", "1"])
            .args(&self.up_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.daemon = Some(cmd.spawn().expect("spawn netd up"));
        let socket = self.api.socket().to_path_buf();
        assert!(
            wait_until(WAIT, || std::os::unix::net::UnixStream::connect(&socket)
                .is_ok()),
            "netd did not come up:\n{}",
            self.log()
        );
    }

    /// Attaches a new container `name` with `netd-cni ADD`, as a runtime would.
    fn attach(&mut self, tag: &str, name: &str, service: Option<&str>) {
        let ns = NamedNetNs::create(&format!("netd-me-{name}-{tag}")).expect("namespace");
        let id = format!("{name}-{tag}");
        let mut args = format!("K8S_POD_NAME={name}");
        if let Some(s) = service {
            args.push_str(&format!(";NETD_SERVICE={s}"));
        }
        let result = self.cni_call("ADD", &id, &ns, &args);
        let addrs: Vec<IpAddr> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
            .collect();
        let (ip, ip6) = match (
            addrs.iter().find(|a| a.is_ipv4()),
            addrs.iter().find(|a| a.is_ipv6()),
        ) {
            (Some(IpAddr::V4(v4)), Some(IpAddr::V6(v6))) => (*v4, *v6),
            _ => panic!("no IPv4 and IPv6 address in {result}"),
        };
        // Loopback is where the sidecar listens and the application is reached.
        lo_up(&ns);
        self.ctrs.push(Ctr {
            name: name.into(),
            id,
            ip,
            ip6,
            ns,
        });
    }

    fn cni_call(&self, command: &str, id: &str, ns: &NamedNetNs, args: &str) -> Value {
        let mut cmd = Command::new(&self.cni);
        self.host.ns().enter_on_exec(&mut cmd);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", ns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .env("CNI_ARGS", args)
            .env("NETD_SOCKET", self.api.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn netd-cni");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(self.conf.to_string().as_bytes())
            .expect("write conf");
        let out = child.wait_with_output().expect("netd-cni");
        assert!(
            out.status.success(),
            "netd-cni {command} {id}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// netd's output (and its sidecars'), all starts.
    fn log(&self) -> String {
        common::logs(&self.dir.0, "netd", self.starts)
    }

    /// Waits until 20 requests from the client to `vip` all succeed and are answered by
    /// exactly the replicas `names` (sorted).
    fn answered_by(&self, vip: SocketAddr, names: &[&str]) -> bool {
        wait_until(WAIT, || {
            let t = self.ctr("client").run(|| requests(vip, 20));
            t.failed == 0 && t.answers.keys().eq(names.iter())
        })
    }

    /// Removes every endpoint of `hello` on container `name`'s addresses.
    fn remove_endpoints_of(&self, name: &str) {
        let c = self.ctr(name);
        let eps = self
            .rt
            .block_on(self.api.endpoints("default", "hello"))
            .expect("endpoints");
        let gone: Vec<_> = eps
            .iter()
            .filter(|e| e.address == IpAddr::V4(c.ip) || e.address == IpAddr::V6(c.ip6))
            .collect();
        assert_eq!(gone.len(), 2, "{name}'s endpoints (IPv4 and IPv6): {eps:?}");
        for ep in gone {
            self.rt
                .block_on(self.api.delete_endpoint("default", "hello", &ep.id))
                .expect("remove an endpoint");
        }
    }

    fn ctr(&self, name: &str) -> &Ctr {
        self.ctrs
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    /// Waits until the container's sidecar answers `/ready` with 200.
    fn wait_ready(&self, c: &Ctr) {
        let ok = wait_until(WAIT, || {
            c.run(|| probe::admin_get(ADMIN, "/ready"))
                .is_some_and(|(status, _)| status == 200)
        });
        assert!(ok, "sidecar of {} never got ready:\n{}", c.name, self.log());
    }

    /// The sidecar process of container `name`, as netd reports it.
    fn sidecar_pid(&self, name: &str) -> Option<u32> {
        let id = &self.ctr(name).id;
        let all = self.rt.block_on(self.api.sidecars()).ok()?;
        all.into_iter()
            .find(|s| &s.container_id == id && s.state == SidecarState::Running)
            .and_then(|s| s.pid)
    }

    /// A TCP connection from container `from` to `addr`, for the lab's runtime.
    fn connect(&self, from: &str, addr: SocketAddr) -> Result<tokio::net::TcpStream, String> {
        let s = self
            .ctr(from)
            .run(|| TcpStream::connect_timeout(&addr, apps::IO_TIMEOUT))
            .map_err(|e| format!("connect from {from} to {addr}: {e}"))?;
        Ok(self.for_runtime(s))
    }

    /// `s` as a tokio stream on the lab's runtime.
    fn for_runtime(&self, s: TcpStream) -> tokio::net::TcpStream {
        let _rt = self.rt.enter();
        apps::tokio_stream(s)
    }

    /// Starts a server on `[::]:port` (both families) in each replica, on the lab's runtime:
    /// `serve(listener, replica name)`.
    fn serve_on_replicas(&self, port: u16, serve: impl Fn(tokio::net::TcpListener, &str)) {
        for c in &self.ctrs[1..] {
            let listener = c
                .run(|| TcpListener::bind(("::", port)))
                .unwrap_or_else(|e| panic!("bind port {port} in {}: {e}", c.name));
            let _rt = self.rt.enter();
            serve(apps::tokio_listener(listener), &c.name);
        }
    }

    /// How many file descriptors the sidecar process `pid` holds (its listeners, the
    /// connections it serves and its pooled upstream ones).
    fn open_fds(pid: u32) -> usize {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Asserts that the sidecar of container `name` counted `at_least` in the samples of
    /// `metric_name` that have every one of `labels`.
    fn assert_counted(&self, name: &str, metric_name: &str, labels: &[&str], at_least: u64) {
        let text = self.metrics(name);
        let n = metric(&text, metric_name, labels);
        assert!(
            n >= at_least,
            "{name}'s sidecar counted {n} {metric_name}{labels:?} (< {at_least}):\n{text}"
        );
    }

    /// The sidecar's `/metrics`, from inside container `name`.
    fn metrics(&self, name: &str) -> String {
        self.ctr(name)
            .run(|| probe::admin_get(ADMIN, "/metrics"))
            .map(|(_, body)| body)
            .unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_servers.store(true, Ordering::Relaxed);
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The sidecars netd started (own process groups, they outlive netd).
        for c in &self.ctrs {
            for pid in pids_in_netns(c.ns.path()) {
                // SAFETY: kill(2) on a sidecar netd started for this test's namespace.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// An HTTP/1.1 keep-alive server on `[::]:port` (both families) in `c`, answering every request with
/// `name`; it stops accepting once `stop` is set.
fn http_server(c: &Ctr, port: u16, name: &str, stop: Arc<AtomicBool>) {
    let listener = c
        .run(|| TcpListener::bind(("::", port)))
        .expect("bind HTTP server");
    probe::serve(listener, name.to_string(), stop);
}

/// A TCP echo server (not HTTP) on `[::]:port` (both families) in `c`.
fn echo_server(c: &Ctr, port: u16, stop: Arc<AtomicBool>) {
    let listener = c
        .run(|| TcpListener::bind(("::", port)))
        .expect("bind echo server");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                if let Ok(mut w) = conn.try_clone() {
                    let _ = std::io::copy(&mut &conn, &mut w);
                }
            });
        }
    });
}

/// What [`fake_upstream`] answers for every name.
const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

/// A stand-in for the Internet's DNS, in the host namespace on loopback: answers every
/// query with one A record, [`UPSTREAM_ANSWER`].
fn fake_upstream(host: &NamedNetNs, stop: Arc<AtomicBool>) -> SocketAddr {
    let sock = host
        .ns()
        .run(|| UdpSocket::bind("127.0.0.1:0"))
        .expect("enter host namespace")
        .expect("bind fake upstream");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let addr = sock.local_addr().expect("address");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(mut m) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            m.metadata.message_type = MessageType::Response;
            let Some(name) = m.queries.first().map(|q| q.name().clone()) else {
                continue;
            };
            m.answers
                .push(Record::from_rdata(name, 60, RData::A(A(UPSTREAM_ANSWER))));
            if let Ok(bytes) = m.to_vec() {
                let _ = sock.send_to(&bytes, peer);
            }
        }
    });
    addr
}

/// The A record of `name` (fully qualified) from a plain UDP query to `server:53`, as a stub
/// resolver sends it.
fn resolve(server: SocketAddr, name: &str) -> Option<Ipv4Addr> {
    let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    sock.send_to(&q.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf).ok()?;
    let r = Message::from_vec(&buf[..n]).ok()?;
    r.answers.iter().find_map(|rec| match &rec.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

/// `n` requests for `http://hello/` over one keep-alive connection to `vip` (from inside
/// the calling thread's namespace).
fn requests(vip: SocketAddr, n: usize) -> Tally {
    probe::requests(vip, "hello", n)
}

/// The VIP of `hello` as the client resolves it through its namespace's DNS path.
fn hello_vip(lab: &Lab) -> SocketAddr {
    service_vip(lab, HELLO)
}

/// A new lab, once both replicas answer the client's requests to `hello`'s VIP (returned).
fn hello_answering() -> (Lab, SocketAddr) {
    let lab = Lab::new();
    let vip = hello_vip(&lab);
    assert!(
        lab.answered_by(vip, &["hello-1", "hello-2"]),
        "both replicas never answered"
    );
    (lab, vip)
}

/// `svc`'s `VIP:port` as the client resolves it through its namespace's DNS path.
fn service_vip(lab: &Lab, svc: Svc) -> SocketAddr {
    let mut vip = None;
    let name = format!("{}.netd.local.", svc.name);
    let found = wait_until(WAIT, || {
        vip = lab.ctr("client").run(|| resolve(DNS, &name));
        vip.is_some()
    });
    assert!(found, "client cannot resolve {name}:\n{}", lab.log());
    SocketAddr::new(IpAddr::V4(vip.expect("resolved")), svc.port)
}

#[test]
fn unmodified_client_is_balanced_per_request_through_both_sidecars() {
    let lab = Lab::new();
    // DNS: netd's own DNS is off; the client's port-53 query is answered by its sidecar.
    let vip = hello_vip(&lab);
    let svc = lab
        .rt
        .block_on(lab.api.service("default", "hello"))
        .expect("service")
        .expect("hello exists");
    assert_eq!(vip.ip(), svc.vip, "DNS answered the service VIP");
    // Other names: the sidecar forwards them to netd's DNS on the gateway (from a marked
    // socket, else interception would send the query back to the sidecar), which forwards
    // them to the host's upstream.
    assert_eq!(
        lab.ctr("client").run(|| resolve(DNS, "www.example.org.")),
        Some(UPSTREAM_ANSWER),
        "a name outside the mesh was not forwarded upstream (netd's DNS answers {:?}):\n{}",
        lab.host.ns().run(|| (
            resolve(DNS, "www.example.org."),
            resolve(lab.upstream, "www.example.org.")
        )),
        lab.log()
    );

    // Endpoints reach the client's sidecar through netd's watch: retry until both answer.
    let mut seen = BTreeMap::new();
    let both = wait_until(WAIT, || {
        let t = lab.ctr("client").run(|| requests(vip, 40));
        assert_eq!(
            t.failed, 0,
            "failed requests over one keep-alive connection"
        );
        seen = t.answers;
        seen.len() == 2
    });
    assert!(
        both,
        "one keep-alive connection was not balanced over both replicas: {seen:?}\n{}",
        lab.log()
    );
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        ["hello-1", "hello-2"]
    );

    // Golden metrics: the client's outbound sidecar counted the requests for the service,
    // each replica's inbound sidecar the ones it served.
    let out = metric(
        &lab.metrics("client"),
        "netd_http_requests_total",
        &["direction=\"outbound\"", "service=\"default/hello\""],
    );
    assert!(out >= 40, "outbound requests counted: {out}");
    for r in ["hello-1", "hello-2"] {
        lab.assert_counted(
            r,
            "netd_http_requests_total",
            &["direction=\"inbound\"", "service=\"default/hello\""],
            1,
        );
    }

    // Opaque TCP to a plain address passes through both sidecars, bytes intact, over IPv4
    // and over IPv6 (redirected to the outbound listener's [::1] companion, then to the
    // dual-stack inbound listener).
    let hello1 = lab.ctr("hello-1");
    for ip in [IpAddr::V4(hello1.ip), IpAddr::V6(hello1.ip6)] {
        let echo = SocketAddr::new(ip, ECHO_PORT);
        let reply = lab.ctr("client").run(|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&echo, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"ping from an unmodified client\n")?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        });
        assert_eq!(
            reply.unwrap_or_else(|e| panic!("echo through the mesh to {echo}: {e}")),
            "ping from an unmodified client\n"
        );
    }
    let tcp = metric(
        &lab.metrics("client"),
        "netd_tcp_connections_opened_total",
        &["direction=\"outbound\"", "protocol=\"tcp\""],
    );
    assert!(tcp >= 2, "the client's sidecar saw {tcp} TCP connections");
    let inbound = metric(
        &lab.metrics("hello-1"),
        "netd_tcp_connections_opened_total",
        &["direction=\"inbound\"", "protocol=\"tcp\""],
    );
    assert!(
        inbound >= 2,
        "hello-1's sidecar saw {inbound} TCP connections"
    );

    // One node: the sidecars reached each other over node-local links (unix streams in
    // netd's links directory), not over TCP through the bridge — the HTTP connections to
    // both replicas and both echo connections (IPv4 and IPv6); hello-1 took every link it
    // was offered.
    let link = |name: &str, dir: &str, result: &str| {
        metric(
            &lab.metrics(name),
            "netd_local_link_connections_total",
            &[
                &format!("direction=\"{dir}\""),
                &format!("result=\"{result}\""),
            ],
        )
    };
    let opened = link("client", "outbound", "opened");
    assert!(opened >= 4, "the client's sidecar opened {opened} links");
    let accepted = link("hello-1", "inbound", "accepted");
    assert!(accepted >= 3, "hello-1's sidecar accepted {accepted} links");
    assert_eq!(link("hello-1", "inbound", "refused"), 0);
    let links = lab.dir.0.join("links").join("m");
    for c in &lab.ctrs {
        for ip in [IpAddr::V4(c.ip), IpAddr::V6(c.ip6)] {
            assert!(
                links.join(format!("{ip}.sock")).exists(),
                "no link socket for {} ({ip}) in {}",
                c.name,
                links.display()
            );
        }
    }
}

#[test]
fn with_local_links_off_sidecars_on_one_node_talk_tcp() {
    let lab = Lab::build(&[], &["--no-local-links"]);
    let vip = hello_vip(&lab);
    let mut seen = BTreeMap::new();
    let both = wait_until(WAIT, || {
        let t = lab.ctr("client").run(|| requests(vip, 20));
        assert_eq!(t.failed, 0, "failed requests");
        seen = t.answers;
        seen.len() == 2
    });
    assert!(
        both,
        "not balanced over both replicas: {seen:?}\n{}",
        lab.log()
    );
    for r in ["hello-1", "hello-2"] {
        lab.assert_counted(
            r,
            "netd_http_requests_total",
            &["direction=\"inbound\"", "service=\"default/hello\""],
            1,
        );
        assert!(
            !lab.metrics(r).contains("netd_local_link"),
            "{r}'s sidecar has links on"
        );
    }
    assert!(!lab.dir.0.join("links").exists());
}

#[test]
fn endpoint_removed_under_load_fails_no_request() {
    let (lab, vip) = hello_answering();
    // Bounded load on two keep-alive connections while hello-2's endpoint goes.
    let running = Arc::new(AtomicBool::new(true));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let running = running.clone();
            let path = lab.ctr("client").ns.path().to_path_buf();
            std::thread::spawn(move || {
                let ns = netd_cni::netns::NetNs::open(&path).expect("client namespace");
                ns.run(|| {
                    let mut total = Tally::default();
                    // At least 200 requests, and until the removal is seen.
                    for i in 0..200 {
                        total.add(requests(vip, 10));
                        if i >= 20 && !running.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    total
                })
                .expect("enter client namespace")
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    lab.remove_endpoints_of("hello-2");
    // Once the removal reached the client's sidecar, only hello-1 answers.
    let only_one = lab.answered_by(vip, &["hello-1"]);
    running.store(false, Ordering::Relaxed);
    let mut served = Tally::default();
    for t in load {
        served.add(t.join().expect("load thread"));
    }
    assert!(only_one, "hello-2 kept getting requests after its removal");
    assert_eq!(
        served.failed, 0,
        "requests failed during the scale-down (served: {served:?})"
    );
    assert!(served.ok() > 0, "no load ran");
}

#[test]
fn sidecar_restart_and_netd_down_keep_the_mesh_serving() {
    let (mut lab, vip) = hello_answering();

    // A sidecar killed: the supervisor starts a new one and requests work again.
    let old = lab.sidecar_pid("client").expect("client's sidecar runs");
    // SAFETY: kill(2) on the sidecar netd started for this test's client container.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let restarted = wait_until(WAIT, || lab.sidecar_pid("client").is_some_and(|p| p != old));
    assert!(
        restarted,
        "the client's sidecar was not restarted:\n{}",
        lab.log()
    );
    lab.wait_ready(lab.ctr("client"));
    let statuses = lab.rt.block_on(lab.api.sidecars()).expect("sidecars");
    let st = statuses
        .iter()
        .find(|s| s.container_id == lab.ctr("client").id)
        .expect("client's sidecar status");
    assert!(st.restarts >= 1 && st.intercepting, "{st:?}");
    assert!(
        lab.answered_by(vip, &["hello-1", "hello-2"]),
        "requests do not work after the sidecar restart"
    );

    // netd killed: every sidecar keeps serving from its last snapshot, DNS included.
    let pids: Vec<u32> = ["client", "hello-1", "hello-2"]
        .iter()
        .map(|n| lab.sidecar_pid(n).expect("sidecar runs"))
        .collect();
    if let Some(mut d) = lab.daemon.take() {
        d.kill().expect("kill netd");
        d.wait().expect("reap netd");
    }
    assert!(
        lab.rt.block_on(lab.api.status()).is_err(),
        "netd still answers"
    );
    for pid in &pids {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "sidecar {pid} died with netd"
        );
    }
    let t = lab.ctr("client").run(|| requests(vip, 40));
    assert_eq!(t.failed, 0, "requests failed with netd down");
    assert_eq!(t.answers.len(), 2, "not balanced with netd down: {t:?}");
    assert_eq!(
        lab.ctr("client").run(|| resolve(DNS, "hello.netd.local.")),
        match vip.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        },
        "DNS stopped answering with netd down"
    );

    // netd back: it adopts the running sidecars, which follow the registry again.
    lab.start_netd();
    let after: Vec<Option<u32>> = ["client", "hello-1", "hello-2"]
        .iter()
        .map(|n| {
            let mut pid = None;
            wait_until(WAIT, || {
                pid = lab.sidecar_pid(n);
                pid.is_some()
            });
            pid
        })
        .collect();
    assert_eq!(
        after,
        pids.iter().copied().map(Some).collect::<Vec<_>>(),
        "the restarted netd did not adopt the sidecars:\n{}",
        lab.log()
    );
    lab.remove_endpoints_of("hello-2");
    assert!(
        lab.answered_by(vip, &["hello-1"]),
        "the sidecars do not follow the restarted netd"
    );
}

/// h2c on a port with the default hint: detected as HTTP/2 prior knowledge.
const H2C: Svc = Svc::new("h2", 8080, Protocol::Tcp);

/// gRPC with its hint: HTTP/2 at once, nothing read first.
const GRPC: Svc = Svc::new("greeter", 50051, Protocol::Grpc);

/// TLS on a port with the default hint: detected by its ClientHello, passed through.
const SECURE: Svc = Svc::new("secure", 8443, Protocol::Tcp);

/// Binary, client-first TCP on a port with the default hint: detected as opaque.
const BLOB: Svc = Svc::new("blob", 7001, Protocol::Tcp);

/// Requests per batch on one HTTP/2 connection, and how many are in flight at once.
const H2_BATCH: usize = 100;
const H2_IN_FLIGHT: usize = 10;

/// `n` calls on ONE HTTP/2 connection from the client to `addr`, `H2_IN_FLIGHT` at a time:
/// the first failure, or every call's result.
fn on_one_h2_connection<T, F, Fut>(
    lab: &Lab,
    addr: SocketAddr,
    n: usize,
    call: F,
) -> Result<Vec<T>, String>
where
    T: Send + 'static,
    F: Fn(apps::http::H2Send, usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
{
    let stream = lab.connect("client", addr)?;
    lab.rt.block_on(async {
        let send = apps::http::h2_handshake(stream).await?;
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(H2_IN_FLIGHT) {
            let calls: Vec<_> = (start..n.min(start + H2_IN_FLIGHT))
                .map(|i| tokio::spawn(call(send.clone(), i)))
                .collect();
            for c in calls {
                out.push(c.await.map_err(|e| e.to_string())??);
            }
        }
        Ok(out)
    })
}

/// How many times each value occurs.
fn count<'a>(items: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, usize> {
    let mut tally = BTreeMap::new();
    for i in items {
        *tally.entry(i.clone()).or_insert(0) += 1;
    }
    tally
}

/// Asserts that both replicas, and only they, served a fair part of the `total` requests
/// tallied in `served`: a twentieth at least (P2C with peak EWMA may favour one replica for
/// a while after a latency spike on a busy machine, but never starves the other for long).
fn assert_shared(served: &BTreeMap<String, usize>, total: usize, what: &str) {
    assert_eq!(
        served.keys().map(String::as_str).collect::<Vec<_>>(),
        ["hello-1", "hello-2"],
        "{what}: served by {served:?}"
    );
    assert_eq!(served.values().sum::<usize>(), total, "{what}: {served:?}");
    assert!(
        served.values().all(|&n| n * 20 >= total),
        "{what}: one replica got less than a twentieth: {served:?}"
    );
}

/// Waits until a batch of `attempt` (one connection's worth) succeeds with both replicas in
/// its answers; panics with the last failure otherwise.
fn wait_for_both(
    lab: &Lab,
    what: &str,
    mut attempt: impl FnMut() -> Result<BTreeMap<String, usize>, String>,
) {
    let mut last = Ok(BTreeMap::new());
    let both = wait_until(WAIT, || {
        last = attempt();
        last.as_ref().is_ok_and(|t| t.len() == 2)
    });
    assert!(
        both,
        "{what}: never served by both replicas: {last:?}\n{}",
        lab.log()
    );
}

/// Runs `attempt(i)` on new connections `i = 0, 1, ...` until both replicas answered (the
/// replica's name is its result), bounded by [`WAIT`]; after the first success no attempt may
/// fail. Returns how many connections each replica served.
fn per_connection_until_both(
    lab: &Lab,
    what: &str,
    mut attempt: impl FnMut(u64) -> Result<String, String>,
) -> BTreeMap<String, usize> {
    let mut served = BTreeMap::new();
    let mut last = Ok(String::new());
    let mut i = 0;
    let both = wait_until(WAIT, || {
        last = attempt(i);
        i += 1;
        match &last {
            Ok(replica) => *served.entry(replica.clone()).or_insert(0) += 1,
            Err(e) => assert!(served.is_empty(), "{what} failed once it worked: {e}"),
        }
        served.len() == 2
    });
    assert!(
        both,
        "{what} never reached both replicas ({served:?}, last: {last:?}):\n{}",
        lab.log()
    );
    served
}

#[test]
fn h2c_on_one_connection_is_balanced_per_request() {
    let lab = Lab::with(&[H2C]);
    lab.serve_on_replicas(H2C.port, apps::http::serve_h2);
    let vip = service_vip(&lab, H2C);
    let uri = format!("http://{}.netd.local:{}/", H2C.name, H2C.port);
    let batch = |addr, n| {
        on_one_h2_connection(&lab, addr, n, |send, _| {
            apps::http::h2_get(send, uri.clone())
        })
        .map(|bodies| count(&bodies))
    };
    // Endpoints reach the client's sidecar through netd's watch.
    wait_for_both(&lab, "h2c", || batch(vip, 20));
    let served = batch(vip, H2_BATCH).unwrap_or_else(|e| panic!("h2c batch: {e}\n{}", lab.log()));
    assert_shared(&served, H2_BATCH, "one h2c connection");

    // To a replica's own address, over IPv6 (the sidecars' IPv6 listeners): no service,
    // every request reaches that replica.
    for r in ["hello-1", "hello-2"] {
        let addr = SocketAddr::new(IpAddr::V6(lab.ctr(r).ip6), H2C.port);
        let served = batch(addr, 10).unwrap_or_else(|e| panic!("h2c to {addr}: {e}"));
        assert_eq!(served, BTreeMap::from([(r.to_string(), 10)]), "to {addr}");
    }

    // Detected as HTTP/2 by both sidecars (the client's, and each replica's inbound one),
    // and counted per request under the service.
    lab.assert_counted(
        "client",
        "netd_detected_connections_total",
        &["direction=\"outbound\"", "protocol=\"h2\""],
        1,
    );
    lab.assert_counted(
        "client",
        "netd_http_requests_total",
        &["direction=\"outbound\"", "service=\"default/h2\""],
        H2_BATCH as u64,
    );
    for r in ["hello-1", "hello-2"] {
        lab.assert_counted(
            r,
            "netd_detected_connections_total",
            &["direction=\"inbound\"", "protocol=\"h2\""],
            1,
        );
    }
}

/// The messages of a bidirectional gRPC stream.
const CHAT: [&str; 5] = ["one", "two", "three", "four", "five"];

#[test]
fn grpc_trailers_cross_both_sidecars_and_calls_are_balanced() {
    let lab = Lab::with(&[GRPC]);
    lab.serve_on_replicas(GRPC.port, apps::http::serve_h2);
    let vip = service_vip(&lab, GRPC);
    let uri = format!(
        "http://{}.netd.local:{}/helloworld.Greeter/SayHello",
        GRPC.name, GRPC.port
    );
    let calls = |n| {
        on_one_h2_connection(&lab, vip, n, |send, i| {
            let uri = uri.clone();
            async move {
                let msg = format!("hello {i}");
                let r = apps::grpc::grpc_call(send, uri, msg.clone().into_bytes()).await?;
                // The message is framed intact and the trailers arrive, all of them, from the
                // replica that answered.
                let text = String::from_utf8_lossy(&r.message).into_owned();
                let (replica, echoed) = text
                    .split_once(':')
                    .ok_or(format!("bad message {text:?}"))?;
                let fine = r.content_type.as_deref() == Some("application/grpc")
                    && echoed == msg
                    && r.trailer("grpc-status") == Some("0")
                    && r.trailer("grpc-message") == Some("ok")
                    && r.trailer("x-replica") == Some(replica);
                if fine {
                    Ok(replica.to_string())
                } else {
                    Err(format!("call {i}: {r:?}"))
                }
            }
        })
        .map(|replicas| count(&replicas))
    };
    wait_for_both(&lab, "gRPC", || calls(20));
    let served = calls(H2_BATCH).unwrap_or_else(|e| panic!("gRPC calls: {e}\n{}", lab.log()));
    assert_shared(&served, H2_BATCH, "one gRPC channel");

    // A failed call: its status travels in the trailers too.
    let failed = on_one_h2_connection(&lab, vip, 1, |send, _| {
        apps::grpc::grpc_call(send, uri.clone(), apps::grpc::GRPC_FAIL.to_vec())
    })
    .unwrap_or_else(|e| panic!("failing gRPC call: {e}"));
    assert_eq!(failed[0].trailer("grpc-status"), Some("5"), "{failed:?}");
    assert_eq!(
        failed[0].trailer("grpc-message"),
        Some("no such thing"),
        "{failed:?}"
    );

    // A large message each way: flow control on every hop.
    let big = binary_bytes(4 << 20, 3);
    let reply = on_one_h2_connection(&lab, vip, 1, |send, _| {
        apps::grpc::grpc_call(send, uri.clone(), big.clone())
    })
    .unwrap_or_else(|e| panic!("a 4 MiB gRPC message: {e}"));
    let (answer, trailers) = (&reply[0].message, reply[0].trailer("grpc-status"));
    assert!(
        answer.starts_with(b"hello-") && answer.ends_with(&big) && trailers == Some("0"),
        "a 4 MiB gRPC message came back as {} bytes, grpc-status {trailers:?}",
        answer.len()
    );

    // Bidirectional streams, several on the connection: each message is sent only once the
    // one before was answered, so answers must flow back while the request is still open.
    let chat_uri = format!(
        "http://{}.netd.local:{}{}",
        GRPC.name,
        GRPC.port,
        apps::grpc::CHAT_PATH
    );
    let chats = on_one_h2_connection(&lab, vip, 4, |send, _| {
        apps::grpc::grpc_chat(send, chat_uri.clone(), &CHAT)
    })
    .unwrap_or_else(|e| panic!("bidirectional gRPC: {e}\n{}", lab.log()));
    for (answers, trailers) in &chats {
        let replica = trailers.get("x-replica").and_then(|v| v.to_str().ok());
        let expected: Vec<String> = CHAT
            .iter()
            .map(|w| format!("{}:{w}", replica.unwrap_or("?")))
            .collect();
        assert_eq!(answers, &expected, "{trailers:?}");
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
    }

    for r in ["hello-1", "hello-2"] {
        lab.assert_counted(
            r,
            "netd_http_requests_total",
            &["direction=\"inbound\"", "service=\"default/greeter\""],
            10,
        );
    }
}

#[test]
fn tls_is_passed_through_to_the_replica_that_holds_the_key() {
    let lab = Lab::with(&[SECURE]);
    let sni = format!("{}.netd.local", SECURE.name);
    // Each replica has its own key and certificate for the same name; the client trusts both.
    let ids: BTreeMap<&str, apps::tls::Identity> = ["hello-1", "hello-2"]
        .into_iter()
        .map(|r| (r, apps::tls::Identity::new(&[&sni])))
        .collect();
    lab.serve_on_replicas(SECURE.port, |l, name| {
        apps::tls::serve_tls(l, name, &ids[name])
    });
    let trusted: Vec<_> = ids.values().map(|i| i.cert.clone()).collect();
    let vip = service_vip(&lab, SECURE);

    // New connections until both replicas answered (balanced per connection), then one to
    // each replica's own address over IPv6.
    let exchange = |addr, i| {
        let line = format!("secret {i}");
        let s = lab.connect("client", addr)?;
        let x = lab
            .rt
            .block_on(apps::tls::tls_exchange(s, &sni, &trusted, &line))?;
        let mut words = x.reply.splitn(3, ' ');
        let (replica, seen_sni, echoed) = (words.next(), words.next(), words.next());
        // The certificate the client verified is the one of the replica that answered: the
        // sidecars did not terminate TLS. The SNI and the bytes arrived intact.
        let replica = replica.unwrap_or_default().to_string();
        assert_eq!(
            ids.get(replica.as_str()).map(|i| &i.cert),
            Some(&x.peer_cert),
            "the client did not see {replica:?}'s own certificate: {x:?}"
        );
        assert_eq!(seen_sni, Some(sni.as_str()), "{x:?}");
        assert_eq!(echoed, Some(line.as_str()), "{x:?}");
        Ok(replica)
    };
    per_connection_until_both(&lab, "TLS", |i| exchange(vip, i));
    for r in ["hello-1", "hello-2"] {
        let addr = SocketAddr::new(IpAddr::V6(lab.ctr(r).ip6), SECURE.port);
        assert_eq!(exchange(addr, 0).as_deref(), Ok(r), "TLS to {addr}");
    }

    lab.assert_counted(
        "client",
        "netd_tcp_connections_opened_total",
        &[
            "direction=\"outbound\"",
            "service=\"default/secure\"",
            "protocol=\"tls\"",
        ],
        2,
    );
    for r in ["hello-1", "hello-2"] {
        lab.assert_counted(
            r,
            "netd_detected_connections_total",
            &["direction=\"inbound\"", "protocol=\"tls\""],
            1,
        );
    }
}

/// A binary exchange with [`apps::tcp::serve_echo`]'s echo: a first part and its echo, then a
/// second part and the write side shut down.
struct Echo {
    first: Vec<u8>,
    second: Vec<u8>,
}

impl Echo {
    fn new() -> Echo {
        let mut first = vec![0x00, 0xff, 0x13];
        first.extend(binary_bytes(1000, 0));
        // Large enough to need several reads and writes on every hop.
        let second = binary_bytes(200 * 1024, 7);
        Echo { first, second }
    }

    /// Bytes sent.
    fn total(&self) -> usize {
        self.first.len() + self.second.len()
    }

    /// The exchange over `s`, bytes checked both ways: the replica that answered.
    async fn exchange(&self, s: tokio::net::TcpStream) -> Result<String, String> {
        let rest = apps::tcp::echo_with_half_close(s, &self.first, &self.second).await?;
        // The echo of the second part, then, after the server saw our half-close, its last
        // record: who served and how many bytes it got.
        let n = self.second.len();
        if rest.len() <= n || rest[..n] != self.second[..] {
            return Err(format!(
                "the echo after the half-close differs ({} bytes)",
                rest.len()
            ));
        }
        let tail = String::from_utf8_lossy(&rest[n + 1..]).into_owned();
        let (replica, total) = tail
            .split_once(' ')
            .ok_or(format!("last record {tail:?}"))?;
        assert_eq!(total, self.total().to_string(), "{tail}");
        Ok(replica.to_string())
    }
}

/// A binary payload that no detector takes for HTTP or TLS: every byte value in turn.
fn binary_bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn raw_tcp_is_balanced_per_connection_with_half_close() {
    let lab = Lab::with(&[BLOB]);
    lab.serve_on_replicas(BLOB.port, apps::tcp::serve_echo);
    let vip = service_vip(&lab, BLOB);
    let echo = Echo::new();
    let served = per_connection_until_both(&lab, "TCP", |_| {
        let s = lab.connect("client", vip)?;
        lab.rt.block_on(echo.exchange(s))
    });

    let l = [
        "direction=\"outbound\"",
        "service=\"default/blob\"",
        "protocol=\"tcp\"",
    ];
    // Every connection ended in both directions (bytes are counted when it ends) ...
    assert!(
        wait_until(WAIT, || metric(
            &lab.metrics("client"),
            "netd_tcp_connections_open",
            &l
        ) == 0),
        "connections left open:\n{}",
        lab.metrics("client")
    );
    // ... and every byte of the successful ones was counted.
    let ok: u64 = served.values().map(|&n| n as u64).sum();
    lab.assert_counted(
        "client",
        "netd_tcp_sent_bytes_total",
        &l,
        ok * echo.total() as u64,
    );
}

#[test]
fn http1_upgrade_switches_to_a_binary_stream_through_both_sidecars() {
    let (lab, _, vip) = trickling_lab(WEB, apps::http::serve_h1_counting);
    let echo = Echo::new();
    // Balanced per request: the upgrade request picks the replica, which then has the
    // connection to itself.
    per_connection_until_both(&lab, "upgrade", |_| {
        let s = lab.connect("client", vip)?;
        lab.rt.block_on(async {
            let s = apps::http::upgrade(s, WEB.name, "netd-echo").await?;
            echo.exchange(s).await
        })
    });
}

/// Writes `bytes` to a new connection from the client to `addr` (write errors ignored: the
/// sidecar may close early), half-closes when asked, and reads until the sidecar closes:
/// what it answered, and whether it closed (rather than leaving the connection hanging).
fn send_raw(lab: &Lab, addr: SocketAddr, bytes: &[u8], half_close: bool) -> (Vec<u8>, bool) {
    lab.ctr("client").run(|| {
        let mut s = TcpStream::connect_timeout(&addr, apps::IO_TIMEOUT).expect("connect");
        s.set_read_timeout(Some(apps::IO_TIMEOUT)).expect("timeout");
        let _ = s.write_all(bytes);
        if half_close {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        let mut reply = Vec::new();
        let closed = match s.read_to_end(&mut reply) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        (reply, closed)
    })
}

/// What a sidecar holds that a leaked connection task would keep: open file descriptors and
/// the opaque connections gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    fds: usize,
    tcp_open: u64,
}

impl Lab {
    fn held(&self, name: &str, pid: u32) -> Held {
        Held {
            fds: Lab::open_fds(pid),
            tcp_open: metric(&self.metrics(name), "netd_tcp_connections_open", &[]),
        }
    }
}

/// Every sidecar's process and what it holds, before a test's abuse.
struct Baseline(Vec<(&'static str, u32, Held)>);

impl Baseline {
    /// The least each sidecar holds over a few samples, once the warm-up's connections are
    /// gone (pooled upstream connections stay, and are reused afterwards).
    fn take(lab: &Lab) -> Baseline {
        Baseline(
            ["client", "hello-1", "hello-2"]
                .into_iter()
                .map(|n| {
                    let pid = lab.sidecar_pid(n).expect("sidecar runs");
                    let least = (0..10)
                        .map(|_| {
                            std::thread::sleep(Duration::from_millis(20));
                            lab.held(n, pid)
                        })
                        .min_by_key(|h| (h.fds, h.tcp_open))
                        .expect("samples");
                    (n, pid, least)
                })
                .collect(),
        )
    }

    /// Asserts that every sidecar is the same process: none crashed and was restarted.
    fn assert_not_replaced(&self, lab: &Lab) {
        for (n, pid, _) in &self.0 {
            assert_eq!(
                lab.sidecar_pid(n),
                Some(*pid),
                "{n}'s sidecar was replaced:\n{}",
                lab.log()
            );
        }
    }

    /// Waits until every sidecar holds no more than before: no connection task left behind.
    fn assert_back(&self, lab: &Lab) {
        for (n, pid, base) in &self.0 {
            let mut now = lab.held(n, *pid);
            let settled = wait_until(WAIT, || {
                now = lab.held(n, *pid);
                now.fds <= base.fds && now.tcp_open <= base.tcp_open
            });
            assert!(
                settled,
                "{n}'s sidecar holds {now:?}, {base:?} before:\n{}",
                lab.metrics(n)
            );
        }
    }
}

#[test]
fn bad_input_through_interception_leaves_the_sidecars_serving_and_clean() {
    let (lab, vip) = hello_answering();
    let before = Baseline::take(&lab);

    // Garbage on the HTTP port: a 400 or a close, never forwarded.
    let (reply, closed) = send_raw(&lab, vip, b"\x00\xff\x13garbage garbage\r\n\r\n", false);
    assert!(
        closed && (reply.is_empty() || reply.starts_with(b"HTTP/1.1 400")),
        "garbage: {:?}",
        String::from_utf8_lossy(&reply)
    );
    // Oversized headers (beyond the sidecar's 64 KiB): a 431 or a close.
    let mut big = b"GET / HTTP/1.1\r\nHost: hello\r\nx-big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 96 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let (reply, closed) = send_raw(&lab, vip, &big, false);
    assert!(
        closed && (reply.is_empty() || reply.starts_with(b"HTTP/1.1 431")),
        "oversized headers: {:?}",
        String::from_utf8_lossy(&reply[..reply.len().min(80)])
    );
    // Half-closed in the middle of a request head: no answer, and the sidecar closes too.
    let (reply, closed) = send_raw(&lab, vip, b"GET / HTTP/1.1\r\nHost: hel", true);
    assert!(
        closed && !reply.starts_with(b"HTTP/1.1 200"),
        "half-closed head: closed {closed}, {:?}",
        String::from_utf8_lossy(&reply)
    );
    // A whole request, then a half-close: still answered, then closed.
    let (reply, closed) = send_raw(&lab, vip, b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n", true);
    assert!(
        closed && reply.starts_with(b"HTTP/1.1 200"),
        "request then half-close: closed {closed}, {:?}",
        String::from_utf8_lossy(&reply)
    );
    // An HTTP/2 preface followed by garbage frames: the sidecar's HTTP/2 server gives up.
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2.extend_from_slice(&[0xff; 64]);
    let (_, closed) = send_raw(&lab, vip, &h2, false);
    assert!(closed, "HTTP/2 garbage: the connection was left open");
    // Garbage on a replica's own address, where nothing hints HTTP: detection takes it for
    // opaque TCP through both sidecars, and the application closes it.
    let direct = SocketAddr::new(IpAddr::V4(lab.ctr("hello-1").ip), 80);
    let (_, closed) = send_raw(&lab, direct, b"\x16\x03garbage", true);
    assert!(closed, "opaque garbage: the connection was left open");
    // Connections opened and abandoned, some in the middle of a head.
    for i in 0..20 {
        lab.ctr("client").run(|| {
            if let Ok(mut s) = TcpStream::connect_timeout(&vip, apps::IO_TIMEOUT) {
                if i % 2 == 0 {
                    let _ = s.write_all(b"GET / HTTP/1.1\r\nHo");
                }
            }
        });
    }

    // The same sidecars, not restarted, still serving, and back to what they held before.
    before.assert_not_replaced(&lab);
    let t = lab.ctr("client").run(|| requests(vip, 10));
    assert_eq!((t.ok(), t.failed), (10, 0), "after the bad input: {t:?}");
    before.assert_back(&lab);
}

/// A lab whose replicas serve `svc` with `serve`, which counts its endless responses in
/// the counter returned (with the VIP).
fn trickling_lab(
    svc: Svc,
    serve: fn(tokio::net::TcpListener, &str, Arc<AtomicUsize>),
) -> (Lab, Arc<AtomicUsize>, SocketAddr) {
    let lab = Lab::with(&[svc]);
    let trickling = Arc::new(AtomicUsize::new(0));
    lab.serve_on_replicas(svc.port, |l, name| serve(l, name, trickling.clone()));
    let vip = service_vip(&lab, svc);
    (lab, trickling, vip)
}

/// Waits until no endless response is being sent any more (each stops when its client is
/// seen gone, by the replica's server).
fn no_trickle_left(trickling: &AtomicUsize, what: &str) {
    let gone = wait_until(WAIT, || trickling.load(Ordering::SeqCst) == 0);
    assert!(
        gone,
        "{what}: {} responses still sent by the replicas",
        trickling.load(Ordering::SeqCst)
    );
}

/// Streams in flight on one connection in the HTTP/2 abuse test.
const TRICKLES: usize = 10;

#[test]
fn h2_streams_reset_or_abandoned_midway_are_released_end_to_end() {
    let (lab, trickling, vip) = trickling_lab(H2C, apps::http::serve_h2_counting);
    let base = format!("http://{}.netd.local:{}", H2C.name, H2C.port);
    let get = |send| apps::http::h2_get(send, format!("{base}/"));
    wait_for_both(&lab, "h2c", || {
        on_one_h2_connection(&lab, vip, 20, |send, _| get(send)).map(|b| count(&b))
    });
    let before = Baseline::take(&lab);
    // Streams whose every hop has started its response, on one connection.
    let open_trickles = |send: &apps::http::H2Send| {
        lab.rt.block_on(async {
            let calls: Vec<_> = (0..TRICKLES)
                .map(|_| {
                    let uri = format!("{base}{}", apps::http::DRIP_PATH);
                    tokio::spawn(apps::http::h2_first_chunk(send.clone(), uri))
                })
                .collect();
            let mut bodies = Vec::new();
            for c in calls {
                match c.await {
                    Ok(Ok(body)) => bodies.push(body),
                    other => panic!("a trickle did not start: {other:?}"),
                }
            }
            bodies
        })
    };
    // An HTTP/2 connection from the client, and a second handle on its socket to cut it
    // (the connection's own tasks hold the first).
    let h2_connection = || {
        let s = lab
            .ctr("client")
            .run(|| TcpStream::connect_timeout(&vip, apps::IO_TIMEOUT))
            .expect("connect");
        let cut = s.try_clone().expect("a second handle");
        let send = lab
            .rt
            .block_on(apps::http::h2_handshake(lab.for_runtime(s)))
            .unwrap_or_else(|e| panic!("{e}"));
        (send, cut)
    };

    // Streams reset by the client (bodies dropped: RST_STREAM) on a connection that stays:
    // each reset travels through both sidecars to the application.
    let (send, socket) = h2_connection();
    let bodies = open_trickles(&send);
    assert_eq!(trickling.load(Ordering::SeqCst), TRICKLES);
    drop(bodies);
    no_trickle_left(&trickling, "streams reset by the client");
    let body = lab
        .rt
        .block_on(get(send.clone()))
        .unwrap_or_else(|e| panic!("the connection after the resets: {e}"));
    assert!(body.starts_with("hello-"), "{body}");
    drop((send, socket));

    // A client that vanishes with streams in flight: its socket shut down at once.
    let (send, socket) = h2_connection();
    let bodies = open_trickles(&send);
    socket
        .shutdown(std::net::Shutdown::Both)
        .expect("shut the socket down");
    no_trickle_left(&trickling, "a connection dropped with streams in flight");
    drop((bodies, send, socket));

    // A header list beyond the sidecar's 64 KiB: refused with a 431 (or the stream reset).
    let (mut send, socket) = h2_connection();
    let big = lab.rt.block_on(async {
        let req = hyper::Request::get(format!("{base}/"))
            .header("x-big", "a".repeat(96 * 1024))
            .body(apps::no_body())
            .expect("request");
        tokio::time::timeout(apps::IO_TIMEOUT, send.send_request(req)).await
    });
    assert!(
        matches!(&big, Ok(Ok(r)) if r.status() == 431) || matches!(&big, Ok(Err(_))),
        "an oversized header list: {big:?}"
    );
    drop((big, send, socket));

    before.assert_not_replaced(&lab);
    let served = on_one_h2_connection(&lab, vip, 20, |send, _| get(send))
        .unwrap_or_else(|e| panic!("after the abuse: {e}"));
    assert_eq!(served.len(), 20);
    before.assert_back(&lab);
}

/// HTTP/1.1 served by hyper, with the `http` hint.
const WEB: Svc = Svc::new("web", 8081, Protocol::Http);

/// A lab whose replicas serve [`WEB`] with hyper's HTTP/1.1 (see [`trickling_lab`]), once
/// both answer the client.
fn web_answering() -> (Lab, Arc<AtomicUsize>, SocketAddr) {
    let (lab, trickling, vip) = trickling_lab(WEB, apps::http::serve_h1_counting);
    assert!(
        lab.answered_by(vip, &["hello-1", "hello-2"]),
        "both replicas never answered"
    );
    (lab, trickling, vip)
}

#[test]
fn http1_responses_abandoned_midway_free_their_upstream_connections() {
    let (lab, trickling, vip) = web_answering();
    let before = Baseline::take(&lab);

    // Keep-alive connections that read the start of an endless response, then close: each
    // hop must close (not pool) its upstream connection with the response half read, so
    // the application sees its client go.
    for i in 0..10 {
        let started = lab.ctr("client").run(|| -> std::io::Result<bool> {
            let mut s = TcpStream::connect_timeout(&vip, apps::IO_TIMEOUT)?;
            s.set_read_timeout(Some(apps::IO_TIMEOUT))?;
            write!(
                s,
                "GET {} HTTP/1.1\r\nHost: web\r\n\r\n",
                apps::http::DRIP_PATH
            )?;
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while seen.len() < 64 * 1024 {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                if seen
                    .windows(apps::http::DRIP.len())
                    .any(|w| w == apps::http::DRIP)
                {
                    return Ok(seen.starts_with(b"HTTP/1.1 200"));
                }
            }
            Ok(false)
        });
        assert!(
            matches!(started, Ok(true)),
            "trickle {i} did not start: {started:?}"
        );
    }
    no_trickle_left(&trickling, "clients gone midway");
    // No leftover of those responses is served as the answer to a later request.
    let t = lab.ctr("client").run(|| requests(vip, 30));
    assert_eq!(t.failed, 0, "{t:?}");
    assert!(
        t.answers.keys().all(|k| k.starts_with("hello-")),
        "answers: {t:?}"
    );

    before.assert_not_replaced(&lab);
    before.assert_back(&lab);
}

/// A server-first protocol on one of the ports the sidecar knows for it: opaque at once.
const SQL: Svc = Svc::new("sql", 3306, Protocol::Tcp);
/// A server-first protocol on a port the sidecar does not know: the client says nothing, so
/// each sidecar's detection waits for its timeout, then passes the connection as opaque.
const GREET: Svc = Svc::new("greet", 2525, Protocol::Tcp);

#[test]
fn server_first_tcp_and_a_server_half_close_pass_through() {
    let lab = Lab::with(&[SQL, GREET]);
    let got = apps::tcp::Received::default();
    // The greeting arrives (the server spoke first, the client waited), the server's
    // half-close reaches the client, and the client's bytes, sent after it, still reach the
    // server whole, with the client's own half-close.
    let exchange = |vip: SocketAddr| {
        let payload = binary_bytes(64 * 1024, vip.port() as u8);
        let s = lab.connect("client", vip)?;
        let replica = lab.rt.block_on(apps::tcp::greeted(s, &payload))?;
        let mut mine = None;
        let arrived = wait_until(WAIT, || {
            let mut got = got.lock().expect("received");
            let found = got.iter().position(|(name, _)| name == &replica);
            mine = found.map(|i| got.remove(i).1);
            mine.is_some()
        });
        assert!(arrived, "{replica} got nothing from the client");
        assert!(
            mine.as_deref() == Some(&payload[..]),
            "{replica} got {} bytes, not the {} sent",
            mine.map_or(0, |m| m.len()),
            payload.len()
        );
        Ok(replica)
    };
    for svc in [SQL, GREET] {
        lab.serve_on_replicas(svc.port, |l, name| {
            apps::tcp::serve_greeter(l, name, got.clone())
        });
    }
    // Balanced per connection on the known port; one connection (two detection timeouts)
    // on the other.
    per_connection_until_both(&lab, SQL.name, |_| exchange(service_vip(&lab, SQL)));
    let greet = service_vip(&lab, GREET);
    let mut replica = Err(String::new());
    let served = wait_until(WAIT, || {
        replica = exchange(greet);
        replica.is_ok()
    });
    assert!(served, "{}: {replica:?}", GREET.name);
}

#[test]
fn replicas_closing_keep_alive_connections_fail_no_request() {
    let lab = Lab::with(&[H2C, WEB]);
    // Every connection from a replica's inbound sidecar to its application is closed by the
    // application, gracefully, after a few requests.
    lab.serve_on_replicas(H2C.port, |l, name| {
        apps::http::serve_closing_after(l, name, apps::http::Http::H2, 7)
    });
    lab.serve_on_replicas(WEB.port, |l, name| {
        apps::http::serve_closing_after(l, name, apps::http::Http::H1, 3)
    });

    // HTTP/2: each GOAWAY lets the streams open finish; the next requests go over a new
    // connection.
    let h2 = service_vip(&lab, H2C);
    let uri = format!("http://{}.netd.local:{}/", H2C.name, H2C.port);
    let batch = |n| {
        on_one_h2_connection(&lab, h2, n, |send, _| apps::http::h2_get(send, uri.clone()))
            .map(|bodies| count(&bodies))
    };
    wait_for_both(&lab, "h2c", || batch(20));
    let served = batch(H2_BATCH * 3).unwrap_or_else(|e| panic!("h2c: {e}\n{}", lab.log()));
    assert_shared(&served, H2_BATCH * 3, "h2c to replicas closing connections");

    // HTTP/1.1: each last response says `connection: close`; the connection is not reused.
    let web = service_vip(&lab, WEB);
    assert!(
        lab.answered_by(web, &["hello-1", "hello-2"]),
        "both replicas never answered"
    );
    let t = lab.ctr("client").run(|| requests(web, 60));
    assert_eq!((t.ok(), t.failed), (60, 0), "{t:?}");
}

/// Longest wait for the sidecar to give up on a stalled client on its own: its detection
/// and request-head timeouts (10 s each by default) back to back, with room to spare.
const STALLED_WAIT: Duration = Duration::from_secs(60);

#[test]
fn stalled_clients_are_closed_by_the_sidecar_itself() {
    let (lab, vip) = hello_answering();
    let before = Baseline::take(&lab);
    // Clients that keep their connections open: half a request head, or nothing at all.
    let stalled: Vec<TcpStream> = (0..20)
        .map(|i| {
            lab.ctr("client").run(|| {
                let mut s = TcpStream::connect_timeout(&vip, apps::IO_TIMEOUT).expect("connect");
                if i % 2 == 0 {
                    s.write_all(b"GET / HTTP/1.1\r\nHost: hel").expect("write");
                }
                s
            })
        })
        .collect();
    // The client's sidecar closes each of them (its timeouts), while the clients still hold
    // theirs: a stalled client pins nothing for long.
    for (i, mut s) in stalled.into_iter().enumerate() {
        s.set_read_timeout(Some(STALLED_WAIT)).expect("timeout");
        let mut rest = Vec::new();
        let closed = s.read_to_end(&mut rest);
        assert!(
            closed.is_ok() && !rest.starts_with(b"HTTP/1.1 200"),
            "stalled client {i}: {closed:?} {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    before.assert_not_replaced(&lab);
    before.assert_back(&lab);
}

#[test]
fn http1_request_bodies_cross_both_sidecars_on_a_keep_alive_connection() {
    let (lab, _, vip) = web_answering();
    let body = binary_bytes(1 << 20, 9);
    let expected = apps::http::digest(&body);
    // POSTs on one keep-alive connection, alternating a length-framed body sent after the
    // `100 Continue` and a chunked one: each arrives whole. Balanced per request: until
    // both replicas have answered (at most 200 requests, and WAIT).
    let deadline = std::time::Instant::now() + WAIT;
    let served = lab
        .connect("client", vip)
        .and_then(|s| {
            lab.rt.block_on(async {
                let mut conn = tokio::io::BufStream::new(s);
                let mut served = BTreeMap::new();
                for i in 0..200 {
                    let framing = if i % 2 == 0 {
                        apps::http::Framing::LengthAfterContinue
                    } else {
                        apps::http::Framing::Chunked
                    };
                    let answer = apps::http::h1_post(&mut conn, WEB.name, &body, framing)
                        .await
                        .map_err(|e| format!("POST {i} ({framing:?}): {e}"))?;
                    let (replica, digest) = answer.split_once(' ').unwrap_or_default();
                    assert_eq!(digest, expected, "the body {replica} got ({framing:?})");
                    *served.entry(replica.to_string()).or_insert(0) += 1;
                    if (i >= 3 && served.len() == 2) || std::time::Instant::now() > deadline {
                        break;
                    }
                }
                Ok::<_, String>(served)
            })
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.log()));
    assert_eq!(
        served.len(),
        2,
        "one connection, per-request balancing: {served:?}"
    );
}
