//! netd's DNS for Podman containers, end to end: `netd up`, a network it creates, Podman
//! running containers on that network's conflist, and netd-cni reporting each attachment.
//!
//! Everything runs inside one throwaway host namespace (the daemon and Podman are spawned with
//! a `setns` `pre_exec`), so the bridge, the veths and netd's DNS listeners on the gateway
//! address (port 53, `IP_FREEBIND`) never touch the root namespace. The daemon is private too:
//! its own `--socket`, `--data-dir` and `--cni-conf-dir` under the test's temp dir, and
//! `--dns-upstream 127.0.0.1:9` (nothing is meant to be forwarded; a forwarded question fails).
//!
//! The flow:
//!
//! 1. `netd up`, then `netd network create` of a test-unique network (name, bridge and /24 from
//!    [`netd_tests::Network`]); netd writes its conflist, with `dns.nameservers` = the gateway.
//! 2. Podman (private storage and `containers.conf`, CNI backend, `network_config_dir` = netd's
//!    CNI conf dir, `netd-cni` first in `cni_plugin_dirs`) runs with `NETD_SOCKET` in its
//!    environment; libcni hands its environment to the plugin, which reports to the daemon.
//!    The test checks that the report arrived (`GET /v1/attachments` names `web`).
//! 3. Container `web` serves a page with busybox httpd; container `client` resolves `web`
//!    through netd (`nslookup web <gateway>`, `nslookup web.netd.local <gateway>`) and fetches
//!    `http://web/` with busybox wget.
//! 4. `podman rm -f web`: within a bounded wait `web.netd.local` is NXDOMAIN and the bare `web`
//!    no longer resolves to the old address.
//!
//! This test found three bugs, now fixed and guarded here: netd wrote conflists of
//! `cniVersion` 1.1.0, which Podman 4's libcni rejects; netd-cni refused Podman's per-network
//! `aliases` map; and an unpinned bridge MAC changed when the container holding the lowest port
//! MAC left, cutting the others off from the gateway (and DNS) until their ARP entries expired —
//! `podman rm web` below exercises that. Busybox wget runs without `-T` (Debian's static
//! busybox segfaults with it).
//!
//! Not private: netd-cni's default `dataDir` (`/run/cni/netd/<network>` and
//! `/run/cni/netd/ipam/<network>`, as netd's conflists do not set one; the network name is
//! unique to the test and both directories are removed on drop, then the two parents if they are
//! empty), libcni's result cache in
//! `/var/lib/cni/results` and Podman's `/var/lib/containers/cache`, as in `podman.rs`.
//!
//! Needs `podman`, `runc`, `conmon` and `busybox-static`, and the binaries built by
//! `cargo build --workspace --bins` (`netd` next to `netd-cni`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use netd_tests::plugin::wait_bounded;
use netd_tests::{podman, poll, Network, Ns, Plugin, TempDir};
use serde_json::Value;

const IMAGE: &str = "localhost/netd-busybox-dns:test";
const PAGE: &str = "netd-podman-dns-ok";
const PODMAN_DEADLINE: Duration = Duration::from_secs(120);
const CLI_DEADLINE: Duration = Duration::from_secs(30);
/// netd-cni's default `dataDir`, which netd's conflists use.
const CNI_DATA_DIR: &str = "/run/cni/netd";

/// The whole world of the test. Dropping it removes the containers, stops netd (by PID),
/// unmounts what Podman left under the temp dir and removes the plugin's state for the
/// network; then the namespace and the temp dir go (field order).
struct World {
    ns: Ns,
    tmp: TempDir,
    net: Network,
    netd_bin: PathBuf,
    socket: PathBuf,
    daemon: Option<Child>,
    podman_dir: PathBuf,
    podman_conf: PathBuf,
}

impl World {
    fn new() -> World {
        podman::require_tools();
        let plugin = Plugin::netd();
        let netd_bin = plugin.path().with_file_name("netd");
        assert!(
            netd_bin.is_file(),
            "{} is missing: run `cargo build --workspace --bins` first",
            netd_bin.display()
        );
        let tmp = TempDir::new();
        let net = Network::new(tmp.path());
        let podman_dir = tmp.join("podman");
        let mut world = World {
            ns: Ns::new(),
            socket: tmp.join("netd.sock"),
            podman_conf: podman_dir.join("containers.conf"),
            podman_dir,
            netd_bin,
            daemon: None,
            net,
            tmp,
        };
        world.start_netd();
        world.setup_podman(&plugin);
        world
    }

    fn cni_conf_dir(&self) -> PathBuf {
        self.tmp.join("netd-cni-conf")
    }

    /// Podman's `network_config_dir`, holding a copy of netd's conflist.
    fn podman_net_dir(&self) -> PathBuf {
        self.podman_dir.join("net.d")
    }

    /// `netd up` in the namespace with private paths, network DNS on, nothing to forward to.
    fn start_netd(&mut self) {
        let log = File::create(self.tmp.join("netd.log")).expect("netd log");
        let child = self
            .ns
            .command(&self.netd_bin)
            .env_remove("NETD_SOCKET")
            .arg("--socket")
            .arg(&self.socket)
            .arg("up")
            .arg("--data-dir")
            .arg(self.tmp.join("netd-data"))
            .arg("--cni-conf-dir")
            .arg(self.cni_conf_dir())
            .args(["--node", "test-node", "--dns-upstream", "127.0.0.1:9"])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn netd up");
        self.daemon = Some(child);
        let up = poll::until(
            200,
            Duration::from_millis(100),
            Duration::from_secs(20),
            || UnixStream::connect(&self.socket).ok(),
        );
        assert!(up.is_some(), "netd did not come up; log:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.join("netd.log")).unwrap_or_default()
    }

    /// `netd --socket S <args>`; panics unless it succeeds.
    #[track_caller]
    fn netd(&self, args: &[&str]) -> String {
        let child = self
            .ns
            .command(&self.netd_bin)
            .env_remove("NETD_SOCKET")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run netd");
        let out = wait_bounded(child, CLI_DEADLINE);
        assert!(
            out.status.success(),
            "netd {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `GET /v1/attachments` on the daemon's socket, as JSON.
    fn attachments(&self) -> Value {
        let mut s = UnixStream::connect(&self.socket).expect("connect to netd");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(b"GET /v1/attachments HTTP/1.1\r\nHost: netd\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("response");
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "GET /v1/attachments: {head}"
        );
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("attachments JSON: {e}: {body}"))
    }

    /// Private Podman configuration and storage, `netd-cni` in a private plugin dir, and the
    /// test image.
    fn setup_podman(&self, plugin: &Plugin) {
        let conf = podman::prepare(&self.podman_dir, plugin.path(), &self.podman_net_dir());
        assert_eq!(conf, self.podman_conf, "containers.conf location");
        let tar = podman::busybox_rootfs_tar(
            &self.podman_dir,
            &["sh", "httpd", "sleep", "nslookup", "wget", "cat"],
            PAGE,
        );
        self.podman_ok(&["import", &tar.display().to_string(), IMAGE]);
    }

    /// `podman <args>` in the namespace, private configuration, `NETD_SOCKET` set.
    fn podman(&self, args: &[&str]) -> std::process::Output {
        let child = podman::command(&self.ns, &self.podman_dir, &self.podman_conf, args)
            .env("NETD_SOCKET", &self.socket)
            .spawn()
            .expect("cannot run podman");
        wait_bounded(child, PODMAN_DEADLINE)
    }

    /// `podman <args>`; panics unless it succeeds. Returns stdout, trimmed.
    #[track_caller]
    fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {} failed ({}): {}{}\nnetd log:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `podman exec client <args>`: combined output, whatever the exit status.
    fn in_client(&self, args: &[&str]) -> String {
        let mut full = vec!["exec", "client"];
        full.extend_from_slice(args);
        let out = self.podman(&full);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The address Podman reports for `container` on the test network.
    fn ip_of(&self, container: &str) -> String {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.net.name
        );
        self.podman_ok(&["inspect", "--format", &format, container])
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let out = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        if !out.status.success() {
            eprintln!(
                "netd-tests: podman rm -af: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        podman::unmount_under(&self.podman_dir);
        for dir in [
            Path::new(CNI_DATA_DIR).join(&self.net.name),
            Path::new(CNI_DATA_DIR).join("ipam").join(&self.net.name),
        ] {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("netd-tests: cannot remove {}: {e}", dir.display());
                }
            }
        }
        // The plugin created these for us; remove them only if nothing else is in them.
        for dir in [
            Path::new(CNI_DATA_DIR).join("ipam"),
            PathBuf::from(CNI_DATA_DIR),
        ] {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Whether busybox `nslookup` output shows `ip` as an answer (not only the server's address).
fn resolves_to(output: &str, ip: &str) -> bool {
    output
        .lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .any(|l| l.contains(ip))
}

#[test]
fn podman_containers_resolve_each_other_through_netd() {
    let w = World::new();
    let net = w.net.name.clone();
    let gw = w.net.gateway4().to_string();

    w.netd(&[
        "network",
        "create",
        &net,
        "--subnet",
        &w.net.subnet4(),
        "--bridge",
        &w.net.bridge,
    ]);
    let conflist_path = w.cni_conf_dir().join(format!("{net}.conflist"));
    let conflist = poll::eventually(|| {
        let text = std::fs::read_to_string(&conflist_path).ok()?;
        serde_json::from_str::<Value>(&text).ok()
    })
    .unwrap_or_else(|| panic!("netd did not write {}", conflist_path.display()));
    assert_eq!(
        conflist["plugins"][0]["dns"]["nameservers"][0].as_str(),
        Some(gw.as_str()),
        "the conflist points containers at netd on the gateway: {conflist}"
    );

    // Podman 4 (libcni 1.1) reads netd's conflist as written: cniVersion 1.0.0, and the
    // `aliases` capability it sends as a per-network map.
    assert_eq!(conflist["cniVersion"].as_str(), Some("1.0.0"), "{conflist}");
    assert_eq!(
        conflist["plugins"][0]["capabilities"]["aliases"],
        Value::Bool(true),
        "{conflist}"
    );
    let for_podman = conflist.clone();
    std::fs::write(
        w.podman_net_dir().join(format!("{net}.conflist")),
        serde_json::to_vec_pretty(&for_podman).expect("json"),
    )
    .expect("write Podman's conflist");

    w.podman_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        &net,
        IMAGE,
        "/bin/httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let ip = w.ip_of("web");
    assert!(
        ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "podman inspect: {ip:?}"
    );

    // NETD_SOCKET reached the plugin through Podman: the daemon knows the attachment by name.
    let reported = poll::eventually(|| {
        let atts = w.attachments();
        let text = atts.to_string();
        (text.contains("\"web\"") && text.contains(&ip)).then_some(atts)
    });
    assert!(
        reported.is_some(),
        "netd-cni did not report web ({ip}) to netd: {}\nnetd log:\n{}",
        w.attachments(),
        w.log()
    );

    w.podman_ok(&[
        "run",
        "-d",
        "--name",
        "client",
        "--network",
        &net,
        "--dns",
        &gw,
        "--dns-search",
        "netd.local",
        IMAGE,
        "/bin/sleep",
        "600",
    ]);

    for name in ["web", "web.netd.local"] {
        let mut last = String::new();
        let ok = poll::until(
            10,
            Duration::from_millis(500),
            Duration::from_secs(30),
            || {
                last = w.in_client(&["nslookup", name, &gw]);
                resolves_to(&last, &ip).then_some(())
            },
        );
        assert!(
            ok.is_some(),
            "nslookup {name} {gw} from client did not give {ip}: {last}\nnetd log:\n{}",
            w.log()
        );
    }
    // No `-T`: Debian's static busybox wget segfaults with it; podman exec is bounded anyway.
    let page = w.in_client(&["wget", "-q", "-O", "-", "http://web/"]);
    assert!(
        page.contains(PAGE),
        "wget http://web/ from client (resolv.conf → {gw}): {page}"
    );

    w.podman_ok(&["rm", "--force", "--time", "0", "web"]);

    let mut last = String::new();
    let gone = poll::until(
        20,
        Duration::from_millis(500),
        Duration::from_secs(30),
        || {
            last = w.in_client(&["nslookup", "web.netd.local", &gw]);
            (last.contains("NXDOMAIN") && !resolves_to(&last, &ip)).then_some(())
        },
    );
    assert!(
        gone.is_some(),
        "web.netd.local still resolves after podman rm: {last}\nnetd log:\n{}",
        w.log()
    );
    let bare = w.in_client(&["nslookup", "web", &gw]);
    assert!(
        !resolves_to(&bare, &ip),
        "web still resolves to {ip} after podman rm: {bare}"
    );
    assert!(
        !w.attachments().to_string().contains(&ip),
        "netd still lists web's attachment: {}",
        w.attachments()
    );
}
