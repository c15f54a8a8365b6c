//! The README's walkthrough, `netd-demo`, run for real: netd in a throwaway namespace, two
//! containers attached with the conflist netd wrote, a container and a host process exposed,
//! reached by name (netd's DNS on the gateway), by VIP and through a host port; then the mesh
//! (three containers with their sidecars, per-request balancing, a replica removed under
//! load without errors, metrics). The demo
//! checks every step itself and exits non-zero on any failure; this test also checks that it
//! leaves no namespace behind.

use std::process::Command;

#[test]
fn demo_runs_end_to_end_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_netd-demo"))
        .output()
        .expect("run netd-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "client resolves web-1 (container name)",
        "client -> web:80 (VIP -> web-1)",
        "client -> hostapp:7070 (VIP -> host process)",
        "host localhost:8080 (host port -> web-1)",
        "client resolves hello (its sidecar's DNS)",
        "client -> http://hello/ x40, one connection",
        "hello-2 removed under load",
        "client's sidecar counted requests to hello",
        "netd demo: all good",
    ] {
        assert!(stdout.contains(line), "missing {line:?}:\n{stdout}");
    }
    assert!(!stdout.contains("FAILED"), "{stdout}");
    // The namespaces carry the demo's PID; none may be left.
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let pid = out_pid(&stdout);
    let left = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !left
            .lines()
            .any(|l| l.starts_with("netd-demo-") && l.contains(&format!("-{pid}"))),
        "left behind: {left}"
    );
}

/// The demo's PID, from its socket path `/tmp/netd-demo-<pid>/netd.sock`.
fn out_pid(stdout: &str) -> String {
    stdout
        .split("netd-demo-")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .expect("socket path in the output")
        .to_string()
}
