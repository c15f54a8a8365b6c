//! A private Podman for the runtime tests: its `containers.conf` (CNI backend, `runc`, the
//! test's `netd-cni` first in the plugin path, a private network config dir), private storage
//! (`--root`/`--runroot`/`--tmpdir` with the `vfs` driver), a busybox image built from the
//! static binary (no registry is reachable), and the unmounting Podman needs after it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Ns;

/// Fails the test early, with the packages to install, when Podman or busybox is missing.
pub fn require_tools() {
    for tool in ["/usr/bin/podman", "/usr/bin/busybox"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: apt-get install podman runc busybox-static"
        );
    }
}

/// Lays out `dir` (plugin dir with `netd-cni` linked to `plugin`, storage, `net_dir`) and
/// writes `dir/containers.conf`; returns its path.
///
/// `default_ulimits = []` is needed here: without it runc fails with "error setting rlimit
/// type 7: operation not permitted".
pub fn prepare(dir: &Path, plugin: &Path, net_dir: &Path) -> PathBuf {
    let bin = dir.join("cni-bin");
    for d in [&bin, net_dir, &dir.join("storage")] {
        std::fs::create_dir_all(d).expect("podman dirs");
    }
    std::os::unix::fs::symlink(plugin, bin.join("netd-cni")).expect("symlink");
    let conf = dir.join("containers.conf");
    std::fs::write(
        &conf,
        format!(
            "[containers]\ndefault_ulimits = []\n\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [{:?}, \"/usr/lib/cni\"]\n\
             network_config_dir = {:?}\n",
            bin.display().to_string(),
            net_dir.display().to_string(),
        ),
    )
    .expect("write containers.conf");
    conf
}

/// A tarball of a one-layer image: static busybox with `applets`, and `page` as
/// `/www/index.html`; for `podman import`.
pub fn busybox_rootfs_tar(dir: &Path, applets: &[&str], page: &str) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "www", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs");
    }
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet");
    }
    std::fs::write(root.join("www/index.html"), page).expect("page");
    let tar = dir.join("rootfs.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(ok.success(), "tar failed");
    tar
}

/// `podman <args>` inside `ns` with the configuration `conf` and the storage under `dir`,
/// output captured; the caller adds environment and spawns it.
pub fn command(ns: &Ns, dir: &Path, conf: &Path, args: &[&str]) -> Command {
    let storage = dir.join("storage");
    let mut cmd = ns.command("podman");
    cmd.env("CONTAINERS_CONF", conf)
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
    cmd
}

/// Lazily unmounts whatever is still mounted below `dir` (deepest first).
pub fn unmount_under(dir: &Path) {
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
        let _ = Command::new("umount").args(["-l", p]).status();
    }
}
