//! The `netd` CLI against a real daemon: networks (with their conflists), services and
//! endpoints, `expose` with a lease (SIGKILL: gone within the TTL; SIGINT: gone at once),
//! `--persist`, `unexpose`, JSON output, usage errors, completions.

mod common;

use std::time::Duration;

use common::{ok, send_signal, stderr, wait_until, Daemon};
use netd_config::netd::{Endpoint, Network, Service};

fn endpoints(d: &Daemon, svc: &str) -> Vec<Endpoint> {
    let out = d.cli(&["-o", "json", "endpoints", svc]);
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn network_create_ls_inspect_rm() {
    let d = Daemon::start("netcli");
    let text = ok(&d.cli(&[
        "network",
        "create",
        "dev",
        "--subnet",
        "10.90.0.0/24",
        "--subnet",
        "fd00:90::/64",
        "--isolate",
    ]));
    assert!(text.contains("created network dev"), "{text}");
    let conf_path = d.cni_dir.join("dev.conflist");
    let conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&conf_path).unwrap()).unwrap();
    assert_eq!(conf["name"], "dev");
    let plugin = &conf["plugins"][0];
    assert_eq!(plugin["type"], "netd-cni");
    assert_eq!(plugin["bridge"], "netd1");
    assert_eq!(plugin["isolate"], true);
    assert_eq!(plugin["ipMasq"], true);
    assert_eq!(plugin["ipam"]["type"], "netd");
    assert_eq!(plugin["ipam"]["ranges"][0][0]["subnet"], "10.90.0.0/24");
    assert_eq!(plugin["ipam"]["ranges"][1][0]["subnet"], "fd00:90::/64");

    let ls = ok(&d.cli(&["network", "ls"]));
    assert!(ls.lines().next().unwrap().starts_with("NAME"), "{ls}");
    assert!(
        ls.contains("dev") && ls.contains("10.90.0.0/24, fd00:90::/64") && ls.contains("netd0"),
        "{ls}"
    );
    let nets: Vec<Network> =
        serde_json::from_slice(&d.cli(&["-o", "json", "network", "ls"]).stdout).unwrap();
    assert_eq!(nets.len(), 2);
    let dev: Network =
        serde_json::from_slice(&d.cli(&["-o", "json", "network", "inspect", "dev"]).stdout)
            .unwrap();
    assert!(dev.isolate && !dev.mesh);
    assert!(ok(&d.cli(&["network", "inspect", "dev"])).contains("bridge:    netd1"));

    // A bad subnet: non-zero exit, the field named, nothing written.
    let out = d.cli(&["network", "create", "bad", "--subnet", "10.300.0.0/24"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("subnets[0]") && stderr(&out).contains("10.300.0.0/24"),
        "{}",
        stderr(&out)
    );
    assert!(!d.cni_dir.join("bad.conflist").exists());
    // Overlapping another network: refused too.
    let out = d.cli(&["network", "create", "clash", "--subnet", "10.90.0.128/25"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("overlaps a subnet of network dev"),
        "{}",
        stderr(&out)
    );
    // Missing --subnet is a usage error.
    assert_eq!(d.cli(&["network", "create", "x"]).status.code(), Some(2));

    ok(&d.cli(&["network", "rm", "dev"]));
    assert!(!conf_path.exists());
    let out = d.cli(&["network", "inspect", "dev"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("network dev does not exist"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn services_and_endpoints_via_cli() {
    let d = Daemon::start("svccli");
    let text = ok(&d.cli(&[
        "expose",
        "web",
        "8080",
        "--persist",
        "--protocol",
        "http",
        "--host-port",
        "9090",
    ]));
    assert!(text.contains("web.default.svc.netd.local:8080"), "{text}");
    assert!(text.contains("vip   10.96."), "{text}");
    assert!(text.contains("host  *:9090"), "{text}");
    ok(&d.cli(&[
        "expose",
        "web",
        "8080",
        "--persist",
        "--address",
        "10.89.0.9",
        "-n",
        "shop",
    ]));

    let table = ok(&d.cli(&["services"]));
    assert!(table.starts_with("NAMESPACE"), "{table}");
    assert!(table.contains("web.shop.svc.netd.local"), "{table}");
    assert!(table.contains("8080/http (host 9090)"), "{table}");
    let svcs: Vec<Service> =
        serde_json::from_slice(&d.cli(&["-o", "json", "services", "-n", "default"]).stdout)
            .unwrap();
    assert_eq!(svcs.len(), 1);
    assert_eq!(svcs[0].ports[0].host_port, Some(9090));

    let eps = endpoints(&d, "web");
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].address.to_string(), "127.0.0.1");
    assert_eq!(eps[0].lease, None);
    let table = ok(&d.cli(&["endpoints", "web", "-n", "shop"]));
    assert!(
        table.contains("10.89.0.9") && table.contains("test-node"),
        "{table}"
    );

    // unexpose removes the service and its endpoints.
    let text = ok(&d.cli(&["unexpose", "web"]));
    assert!(text.contains("removed service web.default"), "{text}");
    let out = d.cli(&["endpoints", "web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("service default/web does not exist"),
        "{}",
        stderr(&out)
    );
    assert_eq!(d.cli(&["unexpose", "web"]).status.code(), Some(1));
    // Bad arguments are usage errors.
    assert_eq!(d.cli(&["expose", "web", "70000"]).status.code(), Some(2));
    assert_eq!(
        d.cli(&["expose", "web", "80", "--protocol", "udp"])
            .status
            .code(),
        Some(2)
    );
    let out = d.cli(&["expose", "Web", "80", "--persist"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("name"), "{}", stderr(&out));
}

#[test]
fn expose_lives_as_long_as_its_process() {
    let d = Daemon::start("expose");
    // SIGINT: the lease is revoked and the endpoint is gone at once.
    let mut p = d.cli_spawn(&["expose", "api", "7000", "--ttl", "30"]);
    assert!(wait_until(Duration::from_secs(10), || endpoints(&d, "api")
        .len()
        == 1));
    let ep = &endpoints(&d, "api")[0];
    assert!(ep.lease.is_some());
    assert!(ep.labels["netd.expose"].starts_with("pid "));
    send_signal(p.id() as i32, libc::SIGINT);
    let st = p.wait().unwrap();
    assert!(st.success(), "{st:?}");
    // Revoked before the process exited: no waiting for the 30 s TTL.
    assert!(endpoints(&d, "api").is_empty());

    // SIGKILL: nobody revokes; the lease expires within its TTL (2 s) plus the check interval.
    let mut p = d.cli_spawn(&["expose", "api", "7001", "--ttl", "2"]);
    assert!(wait_until(Duration::from_secs(10), || endpoints(&d, "api")
        .len()
        == 1));
    // Kept alive past its TTL while the process runs.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(endpoints(&d, "api").len(), 1);
    p.kill().unwrap();
    p.wait().unwrap();
    assert!(wait_until(Duration::from_secs(10), || endpoints(&d, "api").is_empty()));
    // The service itself stays (with its VIP) until unexposed.
    let svcs: Vec<Service> =
        serde_json::from_slice(&d.cli(&["-o", "json", "services"]).stdout).unwrap();
    assert_eq!(svcs.len(), 1);
    let ports: Vec<u16> = svcs[0].ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, [7000, 7001]);
}

#[test]
fn completions_and_help() {
    let d = Daemon::start("help");
    let bash = ok(&d.cli(&["completions", "bash"]));
    assert!(
        bash.contains("netd") && bash.contains("expose"),
        "completion script"
    );
    let help = ok(&d.cli(&["--help"]));
    assert!(
        help.contains("Examples:") && help.contains("netd expose web 8080"),
        "{help}"
    );
    let help = ok(&d.cli(&["expose", "--help"]));
    assert!(
        help.contains("svc.netd.local") && help.contains("every address of this machine"),
        "{help}"
    );
}

#[test]
fn expose_sets_keeps_and_removes_routes() {
    let d = Daemon::start("routescli");
    let text = ok(&d.cli(&[
        "expose",
        "web",
        "8080",
        "--persist",
        "--protocol",
        "http",
        "--route",
        "users=/users:GET,POST",
        "--route",
        "admin=/admin",
    ]));
    assert!(text.contains("route users=/users:GET,POST"), "{text}");
    assert!(text.contains("route admin=/admin"), "{text}");
    let routes = |d: &Daemon| -> Vec<String> {
        let svcs: Vec<Service> =
            serde_json::from_slice(&d.cli(&["-o", "json", "services"]).stdout).unwrap();
        svcs[0].routes.iter().map(|r| r.to_string()).collect()
    };
    assert_eq!(routes(&d), ["users=/users:GET,POST", "admin=/admin"]);
    let table = ok(&d.cli(&["services"]));
    assert!(
        table.contains("ROUTES") && table.contains("users,admin"),
        "{table}"
    );

    // Another replica without --route keeps them; --route replaces; --no-routes removes.
    ok(&d.cli(&[
        "expose",
        "web",
        "8080",
        "--persist",
        "--address",
        "127.0.0.2",
    ]));
    assert_eq!(routes(&d), ["users=/users:GET,POST", "admin=/admin"]);
    ok(&d.cli(&["expose", "web", "8080", "--persist", "--route", "all=/"]));
    assert_eq!(routes(&d), ["all=/"]);
    ok(&d.cli(&["expose", "web", "8080", "--persist", "--no-routes"]));
    assert!(routes(&d).is_empty());

    // Bad routes are usage errors, before anything is registered.
    for bad in [
        vec!["--route", "users"],
        vec!["--route", "users=/u:FETCH"],
        vec!["--route", "a=/a", "--route", "a=/b"],
        vec!["--route", "a=/a", "--no-routes"],
    ] {
        let mut args = vec!["expose", "api", "9000", "--persist"];
        args.extend(bad.iter().copied());
        let out = d.cli(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
    }
    let out = d.cli(&[
        "expose",
        "api",
        "9000",
        "--persist",
        "--route",
        "a=/a",
        "--route",
        "a=/b",
    ]);
    assert!(stderr(&out).contains("routes[1].name"), "{}", stderr(&out));
    assert_eq!(d.cli(&["endpoints", "api"]).status.code(), Some(1));
}
