//! The daemon's lifecycle: startup output and status, refusing a second daemon, stale socket
//! removal, graceful shutdown with an open watch stream, restart durability after `kill -9`, and
//! the CLI's message when no daemon runs.

mod common;

use std::time::Duration;

use common::{cli, ok, stderr, Daemon, TempDir};
use netd_config::netd::{EndpointSpec, Event, NetworkSpec, ServicePort, ServiceSpec, Status};

#[test]
fn status_reports_store_networks_and_counts() {
    let d = Daemon::start("status");
    let text = ok(&d.cli(&["status"]));
    assert!(text.contains("test-node"), "{text}");
    assert!(text.contains("netd.redb"), "{text}");
    assert!(text.contains("networks:     netd"), "{text}");
    let s: Status = serde_json::from_str(&ok(&d.cli(&["-o", "json", "status"]))).unwrap();
    assert_eq!(s.store.backend, "embedded");
    assert_eq!(s.networks, ["netd"]);
    assert_eq!(s.node, "test-node");
    assert_eq!(s.socket, d.socket.display().to_string());
    assert_eq!((s.services, s.endpoints, s.leases), (0, 0, 0));
    // The startup line names socket, store and networks.
    let log = d.log();
    assert!(
        log.contains("up: api") && log.contains("netd.redb") && log.contains("10.89.0.0/24"),
        "{log}"
    );
    // The default network's conflist is written.
    let conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.cni_dir.join("netd.conflist")).unwrap()).unwrap();
    assert_eq!(conf["plugins"][0]["type"], "netd-cni");
    assert_eq!(conf["plugins"][0]["bridge"], "netd0");
    assert_eq!(
        conf["plugins"][0]["ipam"]["ranges"][1][0]["subnet"],
        "fd00:89::/64"
    );
}

#[test]
fn no_daemon_gives_a_clear_message_and_exit_code() {
    let dir = TempDir::new("nodaemon");
    let sock = dir.0.join("netd.sock");
    let out = cli(&sock, &["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "error: netd is not running on {}: start it with `netd up`",
            sock.display()
        )
    );
    // A stale socket file (no listener) says the same.
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    drop(l);
    let out = cli(&sock, &["services"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("is not running"), "{}", stderr(&out));
}

#[test]
fn second_daemon_is_refused_and_stale_socket_removed() {
    let mut d = Daemon::start("second");
    let other = TempDir::new("second-b");
    let out = std::process::Command::new(common::BIN)
        .arg("--socket")
        .arg(&d.socket)
        .args(["up", "--data-dir"])
        .arg(other.0.join("data"))
        .arg("--cni-conf-dir")
        .arg(other.0.join("cni"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("another netd is already running"),
        "{}",
        stderr(&out)
    );
    // The first one is unharmed.
    ok(&d.cli(&["status"]));

    // kill -9 leaves the socket file behind; the next start removes it and serves.
    d.kill9();
    assert!(d.socket.exists());
    d.spawn();
    ok(&d.cli(&["status"]));
    assert!(d.log().contains("removing stale socket"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits() {
    let mut d = Daemon::start("sigterm");
    let client = d.client();
    let mut watch = client.watch(0).await.unwrap();
    while !matches!(watch.next().await.unwrap(), Some(Event::Synced { .. })) {}
    d.signal(libc::SIGTERM);
    // The watch stream ends cleanly, the process exits 0, the socket is gone.
    let end = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("watch stream ended on shutdown");
    assert!(matches!(end, Ok(None)), "{end:?}");
    let st = tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(10)));
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", d.log());
    assert!(!d.socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let mut d = Daemon::start("durable");
    let c = d.client();
    c.create_network(&NetworkSpec {
        name: "dev".into(),
        subnets: vec!["10.90.0.0/24".into()],
        mesh: true,
        isolate: true,
        bridge: None,
    })
    .await
    .unwrap();
    let lease = c.grant_lease(600).await.unwrap();
    let mut services = Vec::new();
    for i in 0..20 {
        let svc = c
            .put_service(&ServiceSpec {
                name: format!("svc{i}"),
                namespace: "default".into(),
                ports: vec![ServicePort {
                    name: None,
                    port: 8000 + i,
                    protocol: Default::default(),
                    host_port: None,
                }],
                health_check: None,
            })
            .await
            .unwrap();
        let spec: EndpointSpec = serde_json::from_value(serde_json::json!({
            "address": "127.0.0.1", "port": 9000 + i, "lease": if i % 2 == 0 { Some(lease.id) } else { None },
        }))
        .unwrap();
        c.register_endpoint("default", &svc.name, &spec)
            .await
            .unwrap();
        services.push(svc);
    }
    let before = c.status().await.unwrap();
    let endpoints_before = c.all_endpoints().await.unwrap();
    // The last acknowledged write, then kill -9 at once.
    c.delete_service("default", "svc19").await.unwrap();
    services.pop();
    d.kill9();

    tokio::task::block_in_place(|| d.spawn());
    let after = c.status().await.unwrap();
    assert_eq!(after.revision, before.revision + 1);
    assert_eq!(after.services, 19);
    assert_eq!(after.endpoints, 19);
    assert_eq!(after.leases, 1);
    let stored = c.services(None).await.unwrap();
    for s in &services {
        let got = stored
            .iter()
            .find(|x| x.name == s.name)
            .expect("service kept");
        assert_eq!(got.vip, s.vip, "VIP of {} changed", s.name);
        assert_eq!(got.ports, s.ports);
    }
    let endpoints_after = c.all_endpoints().await.unwrap();
    let expected: Vec<_> = endpoints_before
        .into_iter()
        .filter(|e| e.service != "svc19")
        .collect();
    assert_eq!(endpoints_after, expected);
    let net = c.network("dev").await.unwrap();
    assert!(net.mesh && net.isolate);
    // The lease is still alive after the restart and can be kept alive.
    c.keepalive(lease.id).await.unwrap();
    // A new service after the restart gets a new revision and its own VIP.
    let new = c
        .put_service(&ServiceSpec {
            name: "late".into(),
            namespace: "default".into(),
            ports: vec![ServicePort {
                name: None,
                port: 1,
                protocol: Default::default(),
                host_port: None,
            }],
            health_check: None,
        })
        .await
        .unwrap();
    assert_eq!(new.revision, after.revision + 1);
    assert!(services.iter().all(|s| s.vip != new.vip));
}
