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
use std::process::Stdio;
use std::time::Duration;

use netd_tests::net::{http_get, sa};
use netd_tests::plugin::wait_bounded;
use netd_tests::{poll, Host};
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
        for tool in ["/usr/bin/podman", "/usr/bin/busybox"] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: apt-get install podman runc busybox-static"
            );
        }
        let dir = host.tmp.join("podman");
        let bin = dir.join("cni-bin");
        let netconf = dir.join("net.d");
        for d in [&bin, &netconf, &dir.join("storage")] {
            std::fs::create_dir_all(d).expect("podman dirs");
        }
        std::os::unix::fs::symlink(host.plugin.path(), bin.join("netd-cni")).expect("symlink");
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = []\n\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [{:?}, \"/usr/lib/cni\"]\n\
                 network_config_dir = {:?}\n",
                bin.display().to_string(),
                netconf.display().to_string(),
            ),
        )
        .expect("write containers.conf");
        let podman = Podman { host, dir, conf };
        podman.write_network(&netconf);
        podman.import_image();
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

    /// A one-layer image: static busybox, its applets, and a page for httpd.
    fn import_image(&self) {
        let root = self.dir.join("rootfs");
        for d in ["bin", "www", "tmp", "etc"] {
            std::fs::create_dir_all(root.join(d)).expect("rootfs");
        }
        std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
        for applet in ["sh", "httpd", "nc", "sleep", "printf", "cat"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet");
        }
        std::fs::write(root.join("www/index.html"), PAGE).expect("page");
        let tar = self.dir.join("rootfs.tar");
        let ok = std::process::Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("run tar");
        assert!(ok.success(), "tar failed");
        self.ok(&["import", &tar.display().to_string(), IMAGE]);
    }

    /// Runs `podman <args>` inside the host namespace with the private configuration.
    fn run(&self, args: &[&str]) -> std::process::Output {
        let storage = self.dir.join("storage");
        let mut cmd = self.host.ns.command("podman");
        cmd.env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .arg("--tmpdir")
            .arg(storage.join("tmp"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("cannot run podman");
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
        unmount_under(&self.dir);
    }
}

/// Lazily unmounts whatever is still mounted below `dir` (deepest first).
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = std::process::Command::new("umount")
            .args(["-l", p])
            .status();
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
