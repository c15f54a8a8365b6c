//! netd-cni driven by a real runtime: Podman 4 (Debian) with its CNI backend.
//!
//! Podman runs the plugin in its own network namespace, so the test runs Podman itself inside
//! the throwaway host namespace: the bridge, veths and nf_tables state land there, and the
//! root namespace is never touched. Everything else Podman would share with the machine is
//! private to the test too:
//!
//! - `CONTAINERS_CONF` points at a file written here: `runtime = "runc"`,
//!   `cgroup_manager = "cgroupfs"`, `events_logger = "file"`, `default_ulimits = []` (without
//!   it runc fails here: "error setting rlimit type 7: operation not permitted"),
//!   `network_backend = "cni"`, `cni_plugin_dirs` = a private directory holding `netd-cni`
//!   then `/usr/lib/cni`, and a private `network_config_dir`;
//! - storage is private: `--root`, `--runroot`, `--tmpdir` under the test's temp dir, with the
//!   `vfs` driver (no overlay mounts to clean up);
//! - the image is built locally (no registry is reachable): `podman import` of a tarball with
//!   the static busybox (`sh`, `httpd`, `nc`, `sleep`) and a page to serve.
//!
//! Not private: libcni's result cache in `/var/lib/cni/results` (where Podman 4.3 keeps it;
//! entries are removed with the containers) and
//! `/var/lib/containers/cache` (an image blob-info cache created by `podman import`).
//!
//! Needs `podman`, `runc`, `conmon` and `busybox-static` (see `scripts/test`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use netd_tests::net::{http_get, sa};
use netd_tests::plugin::wait_bounded;
use netd_tests::{podman, poll, Host};
use serde_json::json;

const IMAGE: &str = "localhost/netd-busybox:test";
const PAGE: &str = "netd-podman-ok";
const PODMAN_DEADLINE: Duration = Duration::from_secs(120);

/// A private Podman installation run inside a host namespace. Dropping it removes every
/// container (and so every attachment) it made, then any mount left under its storage.
struct Podman<'a> {
    host: &'a Host,
    dir: PathBuf,
    conf: PathBuf,
}

impl<'a> Podman<'a> {
    fn new(host: &'a Host) -> Podman<'a> {
        podman::require_tools();
        let dir = host.tmp.join("podman");
        let netconf = dir.join("net.d");
        let conf = podman::prepare(&dir, host.plugin.path(), &netconf);
        let podman = Podman { host, dir, conf };
        podman.write_network(&netconf);
        let tar = podman::busybox_rootfs_tar(
            &podman.dir,
            &["sh", "httpd", "nc", "sleep", "printf", "cat"],
            PAGE,
        );
        podman.ok(&["import", &tar.display().to_string(), IMAGE]);
        podman
    }

    /// The network as a conflist of one netd-cni plugin, as `podman network create` would
    /// write it for the bridge plugin.
    fn write_network(&self, netconf: &Path) {
        let mut plugin = self.host.conf_with(json!({
            "ipMasq": true,
            "hairpinMode": true,
            "capabilities": { "portMappings": true },
        }));
        let obj = plugin.as_object_mut().expect("object");
        obj.remove("cniVersion");
        obj.remove("name");
        let list = self.host.net.conflist("1.0.0", vec![plugin]);
        let path = netconf.join(format!("{}.conflist", self.host.net.name));
        std::fs::write(path, serde_json::to_vec_pretty(&list).expect("json")).expect("conflist");
    }

    /// Runs `podman <args>` inside the host namespace with the private configuration.
    fn run(&self, args: &[&str]) -> std::process::Output {
        let child = podman::command(&self.host.ns, &self.dir, &self.conf, args)
            .spawn()
            .expect("cannot run podman");
        wait_bounded(child, PODMAN_DEADLINE)
    }

    /// Runs `podman <args>`; panics unless it succeeds. Returns stdout, trimmed.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The address Podman reports for `container` on the test network.
    fn ip_of(&self, container: &str) -> String {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.host.net.name
        );
        self.ok(&["inspect", "--format", &format, container])
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        let out = self.run(&["rm", "--all", "--force", "--time", "0"]);
        if !out.status.success() {
            eprintln!(
                "netd-tests: podman rm -af: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        podman::unmount_under(&self.dir);
    }
}

#[test]
fn podman_runs_containers_on_netd_cni() {
    let host = Host::new();
    let podman = Podman::new(&host);
    let net = host.net.name.clone();

    podman.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        &net,
        "-p",
        "18080:80",
        IMAGE,
        "/bin/httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let ip = podman.ip_of("web");
    let addr: std::net::IpAddr = ip
        .parse()
        .unwrap_or_else(|_| panic!("podman inspect: {ip:?}"));
    assert_eq!(
        host.allocations(),
        vec![addr],
        "the built-in IPAM allocated it"
    );
    assert_eq!(host.veths().len(), 1, "one veth on the host side");
    assert_eq!(
        host.ruleset().port_elems(),
        1,
        "the published port is a map element"
    );

    // From the host namespace: loopback and the bridge address.
    for target in [std::net::Ipv4Addr::LOCALHOST.into(), host.net.gateway4()] {
        let page = poll::eventually(|| {
            http_get(&host.ns, sa(target, 18080), "/")
                .ok()
                .filter(|p| p.contains(PAGE))
        });
        assert!(
            page.is_some(),
            "GET {target}:18080 from the host reaches httpd"
        );
    }

    // From a second container: the published port through the gateway (hairpin NAT), and
    // the first container directly.
    let gw = host.net.gateway4().to_string();
    for (to, port) in [(gw.as_str(), "18080"), (ip.as_str(), "80")] {
        let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc {to} {port}");
        let out = podman.ok(&[
            "run",
            "--rm",
            "--network",
            &net,
            IMAGE,
            "/bin/sh",
            "-c",
            &script,
        ]);
        assert!(out.contains(PAGE), "container → {to}:{port}: {out}");
    }

    podman.ok(&["rm", "--force", "--time", "0", "web"]);
    host.assert_clean("after podman rm");
}
