//! The binary as netd's supervisor runs it: starts from a snapshot file, reports ready,
//! serves, reloads on SIGHUP, drains and exits 0 on SIGTERM; bad flags and bad snapshot files
//! fail with a message naming the culprit.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_netd-sidecar");

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("netd-sidecar-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

fn loopback_args(snapshot: &std::path::Path) -> Vec<String> {
    [
        "--snapshot",
        snapshot.to_str().unwrap(),
        "--outbound",
        "127.0.0.1:0",
        "--inbound",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--log-json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test]
async fn binary_gets_ready_reloads_and_drains_on_sigterm() {
    let a = backend("a", Proto::H1).await;
    let snap = temp_file(
        "ok.json",
        &serde_json::to_string(&web_snapshot("http", &[a.addr], "p2c")).unwrap(),
    );
    let mut child = Command::new(BIN)
        .args(loopback_args(&snap))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready: serde_json::Value = loop {
        let line = lines.next().expect("sidecar exited before ready").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "ready" {
            break v;
        }
    };
    assert!(ready["ready_us"].as_u64().is_some());
    let outbound: std::net::SocketAddr = ready["outbound"].as_str().unwrap().parse().unwrap();
    let admin: std::net::SocketAddr = ready["admin"].as_str().unwrap().parse().unwrap();
    let mut client = h1(admin).await;
    let (status, _, _) = read(client.send_request(get("a", "/ready")).await.unwrap()).await;
    assert_eq!(status, 200);
    let mut proxy = h1(outbound).await;
    let (status, _, body) = read(proxy.send_request(get("web", "/")).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (200, "a"));

    // SIGHUP reloads the file: the service is gone afterwards.
    std::fs::write(&snap, r#"{"services": []}"#).unwrap();
    // SAFETY: signalling the child this test started, by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let mut gone = false;
    for _ in 0..200 {
        let (status, _, _) = read(proxy.send_request(get("web", "/")).await.unwrap()).await;
        if status == 502 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "snapshot reloaded on SIGHUP");
    drop((client, proxy));

    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("drained")), "{rest:?}");
    let _ = std::fs::remove_file(snap);
}

#[test]
fn bad_flags_and_snapshot_files_are_named() {
    let out = Command::new(BIN).args(["--mark", "nope"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mark"));

    let bad = temp_file(
        "bad.json",
        r#"{"services": [{"name": "web", "namespace": "default", "vip": "10.96.0.10", "ports": [{"port": 70000}]}]}"#,
    );
    let out = Command::new(BIN)
        .args(loopback_args(&bad))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("services[0].ports[0].port"), "{err}");
    let _ = std::fs::remove_file(bad);

    let out = Command::new(BIN)
        .args(["--netns", "/nonexistent/ns"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ns"));
}

#[tokio::test]
async fn without_netd_it_is_live_but_not_ready() {
    let running = netd_sidecar::start(netd_sidecar::Config::loopback(netd_sidecar::Source::Netd(
        "/nonexistent/netd.sock".into(),
    )))
    .await
    .unwrap();
    assert_eq!(admin_get(&running, "/live").await.0, 200);
    let (status, body) = admin_get(&running, "/ready").await;
    assert_eq!(status, 503, "{body}");
    running.shutdown().await;
}
