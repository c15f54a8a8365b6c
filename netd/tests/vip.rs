//! Service VIPs end to end, inside throwaway network namespaces only: `netd up` runs in a
//! fresh "host" namespace connected by veth pairs to three endpoint namespaces, each with a
//! TCP server answering its name; connections from the host namespace to `VIP:port` must be
//! balanced across the registered endpoints, follow endpoint removal, and fail fast when no
//! endpoint is left.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{wait_until, TempDir, BIN};
use netd::client::Client;
use netd_config::netd::{EndpointSpec, Health, ServicePort, ServiceSpec};

const PORT: u16 = 8080;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread that entered the named network namespace.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).expect("open netns");
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A host namespace, endpoint namespaces with a name server each, and `netd up` inside the
/// host namespace. Everything is deleted on drop.
struct Lab {
    host: String,
    eps: Vec<String>,
    daemon: Option<Child>,
    socket: std::path::PathBuf,
    dir: TempDir,
}

impl Lab {
    fn new(n_eps: usize) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let host = format!(
            "netd-vip-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            eps: Vec::new(),
            daemon: None,
            dir: TempDir::new("vip"),
            socket: Default::default(),
            host,
        };
        lab.socket = lab.dir.0.join("netd.sock");
        let h = lab.host.clone();
        ip(&["netns", "add", &h]);
        ip(&["-n", &h, "link", "set", "lo", "up"]);
        for k in 1..=n_eps {
            let e = format!("{h}-e{k}");
            ip(&["netns", "add", &e]);
            lab.eps.push(e.clone());
            let veth = format!("veth{k}");
            ip(&[
                "-n", &h, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &e,
            ]);
            ip(&[
                "-n",
                &h,
                "addr",
                "add",
                &format!("10.77.{k}.1/24"),
                "dev",
                &veth,
            ]);
            ip(&["-n", &h, "link", "set", &veth, "up"]);
            ip(&[
                "-n",
                &e,
                "addr",
                "add",
                &format!("10.77.{k}.2/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &e, "link", "set", "eth0", "up"]);
            ip(&["-n", &e, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &e,
                "route",
                "add",
                "default",
                "via",
                &format!("10.77.{k}.1"),
            ]);
            let name = format!("ep{k}");
            let listener = in_ns(&e, || TcpListener::bind(("0.0.0.0", PORT)).expect("bind"));
            std::thread::spawn(move || {
                for mut c in listener.incoming().flatten() {
                    let _ = c.write_all(name.as_bytes());
                }
            });
        }
        // VIPs must be routable (routing happens before the nat output hook).
        ip(&[
            "-n",
            &h,
            "route",
            "add",
            "10.96.0.0/16",
            "via",
            "10.77.1.2",
            "src",
            "10.77.1.1",
        ]);
        let log = File::create(lab.dir.0.join("daemon.log")).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &h, BIN, "--socket"])
            .arg(&lab.socket)
            .arg("up")
            .arg("--data-dir")
            .arg(lab.dir.0.join("data"))
            .arg("--cni-conf-dir")
            .arg(lab.dir.0.join("cni"))
            .args(["--node", "test-node", "--no-network-dns"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn netd up");
        lab.daemon = Some(child);
        let sock = lab.socket.clone();
        assert!(
            wait_until(Duration::from_secs(20), || UnixStream::connect(&sock)
                .is_ok()),
            "netd did not come up: {}",
            lab.log()
        );
        lab
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("daemon.log")).unwrap_or_default()
    }

    /// `n` connections to `vip:PORT` from the host namespace: the names that answered and
    /// the number of failures.
    fn probe(&self, vip: IpAddr, n: usize) -> (BTreeSet<String>, usize) {
        let (counts, failed) = self.count_from(&self.host, SocketAddr::new(vip, PORT), n);
        (counts.into_keys().collect(), failed)
    }

    /// `n` connections to `addr` from namespace `ns`: how often each name answered, and the
    /// number of failures.
    fn count_from(&self, ns: &str, addr: SocketAddr, n: usize) -> (BTreeMap<String, usize>, usize) {
        in_ns(ns, move || {
            let mut names = BTreeMap::new();
            let mut failed = 0;
            for _ in 0..n {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                    Ok(mut s) => {
                        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut buf = String::new();
                        if s.read_to_string(&mut buf).is_ok() && !buf.is_empty() {
                            *names.entry(buf).or_insert(0) += 1;
                        } else {
                            failed += 1;
                        }
                    }
                    Err(_) => failed += 1,
                }
            }
            (names, failed)
        })
    }

    fn nft(&self) -> String {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.host, "nft", "list", "table", "inet", "netd-vip",
            ])
            .output()
            .expect("nft");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for e in &self.eps {
            let _ = Command::new("ip").args(["netns", "del", e]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.host])
            .status();
    }
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(ToString::to_string).collect()
}

#[test]
fn vip_balances_across_healthy_endpoints_and_follows_changes() {
    let lab = Lab::new(3);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = Client::new(&lab.socket);
    let svc = rt
        .block_on(client.put_service(&ServiceSpec {
            name: "web".into(),
            namespace: "default".into(),
            ports: vec![ServicePort {
                name: None,
                port: 80,
                protocol: Default::default(),
                host_port: None,
            }],
            health_check: None,
        }))
        .expect("create service");
    let vip = svc.vip;
    let vip80 = |k: usize| EndpointSpec {
        id: Some(format!("ep{k}")),
        address: format!("10.77.{k}.2").parse().expect("addr"),
        port: PORT,
        node: None,
        container_id: None,
        health: Health::Unknown,
        weight: 1,
        labels: Default::default(),
        lease: None,
    };
    for k in 1..=3 {
        rt.block_on(client.register_endpoint("default", "web", &vip80(k)))
            .expect("register");
    }
    // The VIP listens on port 80 while endpoints listen on 8080: probes go to VIP:PORT, so
    // register the service port as PORT too.
    let svc = rt
        .block_on(client.put_service(&ServiceSpec {
            name: "web".into(),
            namespace: "default".into(),
            ports: vec![ServicePort {
                name: None,
                port: PORT,
                protocol: Default::default(),
                host_port: None,
            }],
            health_check: None,
        }))
        .expect("replace service");
    assert_eq!(svc.vip, vip);

    let all = names(&["ep1", "ep2", "ep3"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = BTreeSet::new();
    while Instant::now() < deadline && seen != all {
        let (got, _) = lab.probe(vip, 60);
        seen.extend(got);
    }
    assert_eq!(seen, all, "nft:\n{}\nlog:\n{}", lab.nft(), lab.log());
    let (got, failed) = lab.probe(vip, 60);
    assert_eq!((got, failed), (all.clone(), 0), "all three answer");

    // One endpoint goes: within a bounded wait only the other two answer.
    let t = Instant::now();
    rt.block_on(client.delete_endpoint("default", "web", "ep2"))
        .expect("delete");
    let two = names(&["ep1", "ep3"]);
    assert!(
        wait_until(Duration::from_secs(5), || !lab.nft().contains("10.77.2.2")),
        "nft:\n{}",
        lab.nft()
    );
    eprintln!("endpoint removal visible after {:?}", t.elapsed());
    let (got, failed) = lab.probe(vip, 60);
    assert_eq!((got, failed), (two, 0));

    // An unhealthy endpoint is not balanced to.
    let mut sick = vip80(3);
    sick.health = Health::Unhealthy;
    rt.block_on(client.register_endpoint("default", "web", &sick))
        .expect("mark unhealthy");
    let one = names(&["ep1"]);
    assert!(
        wait_until(Duration::from_secs(5), || !lab.nft().contains("10.77.3.2")),
        "nft:\n{}",
        lab.nft()
    );
    let (got, failed) = lab.probe(vip, 30);
    assert_eq!((got, failed), (one, 0));

    // No endpoint left: connections are refused, fast.
    for id in ["ep1", "ep3"] {
        rt.block_on(client.delete_endpoint("default", "web", id))
            .expect("delete");
    }
    // Refused (a TCP reset), not left to time out.
    let connect = || {
        in_ns(&lab.host, move || {
            let r = TcpStream::connect_timeout(&SocketAddr::new(vip, PORT), Duration::from_secs(3));
            r.err().map(|e| e.kind())
        })
    };
    let refused = Some(std::io::ErrorKind::ConnectionRefused);
    assert!(
        wait_until(Duration::from_secs(5), || {
            let t = lab.nft();
            let empty = t.split("set empty4").nth(1).unwrap_or_default();
            empty
                .split('}')
                .next()
                .unwrap_or_default()
                .contains(&vip.to_string())
        }),
        "nft:\n{}",
        lab.nft()
    );
    assert_eq!(connect(), refused, "nft:\n{}", lab.nft());

    // The service goes: its chain and map go with it.
    rt.block_on(client.delete_service("default", "web"))
        .expect("delete service");
    assert!(
        wait_until(Duration::from_secs(2), || !lab.nft().contains("svc-")),
        "nft:\n{}",
        lab.nft()
    );
}

#[test]
fn weights_share_connections_and_a_host_port_publishes_the_service() {
    let lab = Lab::new(3);
    // The endpoint namespaces reach the host port through the host namespace's forwarding
    // (this sysctl is the throwaway namespace's own).
    ip(&[
        "netns",
        "exec",
        &lab.host,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = Client::new(&lab.socket);
    let port = |host_port| ServicePort {
        name: None,
        port: PORT,
        protocol: Default::default(),
        host_port,
    };
    let spec = |name: &str, host_port| ServiceSpec {
        name: name.into(),
        namespace: "default".into(),
        ports: vec![port(host_port)],
        health_check: None,
    };
    let svc = rt
        .block_on(client.put_service(&spec("web", Some(9090))))
        .expect("create service");
    for (k, weight) in [(1, 1), (2, 3), (3, 1)] {
        let ep = EndpointSpec {
            id: Some(format!("ep{k}")),
            address: format!("10.77.{k}.2").parse().expect("addr"),
            port: PORT,
            node: None,
            container_id: None,
            // ep3 is out of rotation: the host port test connects from its namespace.
            health: if k == 3 {
                Health::Unhealthy
            } else {
                Health::Unknown
            },
            weight,
            labels: Default::default(),
            lease: None,
        };
        rt.block_on(client.register_endpoint("default", "web", &ep))
            .expect("register");
    }

    // Another service cannot take the host port: a conflict naming the field and the owner.
    let err = rt
        .block_on(client.put_service(&spec("other", Some(9090))))
        .expect_err("host port taken");
    assert_eq!(err.status(), Some(409), "{err}");
    assert!(err.to_string().contains("default/web"), "{err}");

    let vip = SocketAddr::new(svc.vip, PORT);
    assert!(
        wait_until(Duration::from_secs(5), || {
            let t = lab.nft();
            t.contains("10.77.1.2") && t.contains("10.77.2.2")
        }),
        "nft:\n{}\nlog:\n{}",
        lab.nft(),
        lab.log()
    );
    // Weight 1 : 3 over 400 connections: ep1 expects 100, ep2 300 (standard deviation about
    // 9); ep3 (unhealthy) none.
    let (counts, failed) = lab.count_from(&lab.host, vip, 400);
    assert_eq!(failed, 0, "{counts:?}");
    let n = |k: &str| counts.get(k).copied().unwrap_or(0);
    assert_eq!(n("ep3"), 0, "{counts:?}");
    assert!((50..=150).contains(&n("ep1")), "{counts:?}");
    assert_eq!(n("ep1") + n("ep2"), 400, "{counts:?}");

    // The host port: from the host itself (output hook) on its own address, and from another
    // namespace through the host (prerouting), balanced like the VIP.
    let hp: SocketAddr = "10.77.1.1:9090".parse().expect("addr");
    let (local, failed) = lab.count_from(&lab.host, hp, 40);
    assert_eq!(failed, 0, "nft:\n{}", lab.nft());
    assert!(local.keys().all(|k| k == "ep1" || k == "ep2"), "{local:?}");
    let from_ep3: SocketAddr = "10.77.3.1:9090".parse().expect("addr");
    let (remote, failed) = lab.count_from(&lab.eps[2], from_ep3, 40);
    assert_eq!(failed, 0, "nft:\n{}", lab.nft());
    assert_eq!(remote.values().sum::<usize>(), 40, "{remote:?}");
    assert!(
        remote.keys().all(|k| k == "ep1" || k == "ep2"),
        "{remote:?}"
    );
    // A port nobody published is not touched.
    let (_, failed) = lab.count_from(&lab.host, "10.77.1.1:9091".parse().expect("addr"), 1);
    assert_eq!(failed, 1);

    // Moving the host port frees the old one (then taken by another service in one go).
    rt.block_on(client.put_service(&spec("web", Some(9092))))
        .expect("move host port");
    rt.block_on(client.put_service(&spec("other", Some(9090))))
        .expect("old host port is free");
    assert!(
        wait_until(Duration::from_secs(2), || lab
            .count_from(&lab.host, "10.77.1.1:9092".parse().expect("addr"), 1)
            .1
            == 0),
        "nft:\n{}",
        lab.nft()
    );
    // `other` has no endpoints: its host port refuses at once.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let addr: SocketAddr = "10.77.1.1:9090".parse().expect("addr");
            in_ns(&lab.host, move || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    .err()
                    .map(|e| e.kind())
            }) == Some(std::io::ErrorKind::ConnectionRefused)
        }),
        "nft:\n{}",
        lab.nft()
    );
    let table = lab.nft();
    assert!(table.contains("hostports4"), "{table}");
}
