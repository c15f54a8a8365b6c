//! A quick loopback load figure (ignored by default; run in release):
//! `cargo test --release -p netd-sidecar --test loopback_load -- --ignored --nocapture`.
//! 50 keep-alive HTTP/1.1 connections, a bounded number of requests each, against a hyper
//! backend directly and through the `netd-sidecar` binary (one worker thread). Prints req/s;
//! asserts only that every request succeeded.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

const CONNS: usize = 50;
const PER_CONN: usize = 2000;

async fn load(target: std::net::SocketAddr) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNS {
        tasks.push(tokio::spawn(async move {
            let mut c = h1(target).await;
            for _ in 0..PER_CONN {
                let resp = c.send_request(get("web", "/")).await.unwrap();
                assert_eq!(resp.status(), 200);
                let _ = read(resp).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (CONNS * PER_CONN) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "load figure; run explicitly in release"]
async fn loopback_requests_per_second() {
    let a = backend("a", Proto::H1).await;
    let snap = std::env::temp_dir().join(format!("netd-sidecar-load-{}.json", std::process::id()));
    std::fs::write(
        &snap,
        serde_json::to_string(&web_snapshot("http", &[a.addr], "p2c")).unwrap(),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_netd-sidecar"))
        .args([
            "--snapshot",
            snap.to_str().unwrap(),
            "--outbound",
            "127.0.0.1:0",
            "--inbound",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--log-json",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready: serde_json::Value = loop {
        let v: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        if v["message"] == "ready" {
            break v;
        }
    };
    let outbound = ready["outbound"].as_str().unwrap().parse().unwrap();
    let direct = load(a.addr).await;
    let proxied = load(outbound).await;
    let rss = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let rss = rss
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap_or("")
        .to_string();
    println!("direct: {direct:.0} req/s; through netd-sidecar: {proxied:.0} req/s ({:.2}x); sidecar {rss} after load; ready in {} us", proxied / direct, ready["ready_us"]);
    // SAFETY: signalling the child this test started, by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = std::fs::remove_file(snap);
}
