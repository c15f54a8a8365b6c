//! Only root and the socket's group may use the API: the socket is created 0660, and a peer that
//! is neither root nor in the group is refused by its credentials (SO_PEERCRED) even when the
//! file mode would let it in. The unprivileged client is the CLI itself, run as `nobody`.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::{ok, Daemon, BIN};

const NOBODY: u32 = 65534;

fn as_nobody(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run the CLI as nobody")
}

#[test]
fn socket_is_0660_and_others_are_refused() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a client as nobody");
        return;
    }
    let d = Daemon::start("perm");
    let md = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o660);
    if let Some(gid) = netd::api::peer::lookup_group("netd") {
        assert_eq!(md.gid(), gid);
    }
    // Root is served.
    ok(&d.cli(&["status"]));

    // The file mode keeps nobody out: the CLI says what to do.
    let out = as_nobody(&d, &["status"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied on") && err.contains("netd` group"),
        "{err}"
    );

    // Opened up by mistake, the daemon still refuses nobody by its credentials.
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&d, &["status"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied: uid 65534"), "{err}");
    let out = as_nobody(&d, &["expose", "sneaky", "80", "--persist"]);
    assert_eq!(out.status.code(), Some(1));
    // Nothing was registered.
    let s = ok(&d.cli(&["-o", "json", "services"]));
    assert_eq!(s.trim(), "[]");
}
