//! Many allocators racing on one store must never hand out an address twice: threads with
//! their own [`Ipam`] (each operation opens its own lock descriptor, so `flock` excludes them
//! exactly as it excludes processes), and real processes (the test binary re-executed as a
//! worker).

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Barrier};

use super::*;

const DUAL: &str =
    r#"{"type":"netd","ranges":[[{"subnet":"10.30.0.0/24"}],[{"subnet":"fd30::/64"}]]}"#;
/// Set in a re-executed test binary: the store's root; the worker allocates there.
const WORKER_ROOT: &str = "NETD_IPAM_TEST_WORKER_ROOT";
/// The worker's number, which makes its owners unique.
const WORKER_ID: &str = "NETD_IPAM_TEST_WORKER_ID";
const PER_WORKER: usize = 10;
const WORKERS: usize = 10;

/// Asserts that no address appears twice and that the store agrees with what was handed out.
fn assert_unique(ipam: &Ipam, handed_out: &[(Owner, IpAddr)]) {
    let mut seen = HashSet::new();
    for (o, a) in handed_out {
        assert!(
            seen.insert(*a),
            "{a} handed out twice (second time to {o:?})"
        );
    }
    let mut stored: Vec<(Owner, IpAddr)> = ipam
        .allocations()
        .expect("list")
        .into_iter()
        .map(|(a, o)| (o, a))
        .collect();
    let mut handed_out = handed_out.to_vec();
    stored.sort_by_key(|(_, a)| *a);
    handed_out.sort_by_key(|(_, a)| *a);
    assert_eq!(stored, handed_out);
}

#[test]
fn hundred_threads_with_their_own_instances_never_share_an_address() {
    let tmp = TempDir::new("threads");
    let root = Arc::new(tmp.path().to_path_buf());
    let barrier = Arc::new(Barrier::new(100));
    let workers: Vec<_> = (0..100)
        .map(|i| {
            let (root, barrier) = (Arc::clone(&root), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let ipam = Ipam::open(&conf(DUAL), "net", &root).expect("open");
                let o = owner(&format!("t{i}"));
                barrier.wait();
                let got = ipam.allocate(&o, &[]).expect("allocate");
                addrs(&got)
                    .into_iter()
                    .map(|a| (o.clone(), a))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let handed_out: Vec<(Owner, IpAddr)> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("thread"))
        .collect();
    assert_eq!(handed_out.len(), 200);
    assert_unique(&open(&tmp, DUAL), &handed_out);
}

#[test]
fn racing_past_exhaustion_hands_out_each_address_once() {
    let tmp = TempDir::new("threads-full");
    let json = subnet("10.31.0.0/27"); // .2 ..= .30: 29 addresses
    let root = Arc::new(tmp.path().to_path_buf());
    let barrier = Arc::new(Barrier::new(40));
    let workers: Vec<_> = (0..40)
        .map(|i| {
            let (root, barrier, json) = (Arc::clone(&root), Arc::clone(&barrier), json.clone());
            std::thread::spawn(move || {
                let ipam = Ipam::open(&conf(&json), "net", &root).expect("open");
                let o = owner(&format!("t{i}"));
                barrier.wait();
                match ipam.allocate(&o, &[]) {
                    Ok(got) => Some((o, got[0].address.addr())),
                    Err(IpamError::Exhausted { .. }) => None,
                    Err(e) => panic!("unexpected: {e}"),
                }
            })
        })
        .collect();
    let results: Vec<_> = workers
        .into_iter()
        .map(|w| w.join().expect("thread"))
        .collect();
    let handed_out: Vec<(Owner, IpAddr)> = results.iter().flatten().cloned().collect();
    assert_eq!(handed_out.len(), 29);
    assert_eq!(results.iter().filter(|r| r.is_none()).count(), 11);
    assert_unique(&open(&tmp, &json), &handed_out);
}

/// Not a test on its own: the body of a worker process of the test below. Without the
/// environment variable it does nothing.
#[test]
fn process_worker() {
    let (Ok(root), Ok(id)) = (std::env::var(WORKER_ROOT), std::env::var(WORKER_ID)) else {
        return;
    };
    let ipam = Ipam::open(&conf(DUAL), "net", Path::new(&root)).expect("open");
    for n in 0..PER_WORKER {
        let o = owner(&format!("p{id}-{n}"));
        for a in addrs(&ipam.allocate(&o, &[]).expect("allocate")) {
            println!("ALLOC {} {a}", o.container_id);
        }
    }
}

#[test]
fn hundred_allocations_from_ten_processes_never_share_an_address() {
    let tmp = TempDir::new("procs");
    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = (0..WORKERS)
        .map(|id| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "ipam::tests::concurrency::process_worker",
                    "--nocapture",
                ])
                .args(["--test-threads", "1"])
                .env(WORKER_ROOT, tmp.path())
                .env(WORKER_ID, id.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let mut handed_out = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("worker");
        assert!(out.status.success(), "worker failed: {out:?}");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // libtest may print "test <name> ... " in front of the first line.
            if let Some((_, rest)) = line.split_once("ALLOC ") {
                let mut words = rest.split_whitespace();
                let (Some(id), Some(a)) = (words.next(), words.next()) else {
                    panic!("bad worker line {line:?}");
                };
                handed_out.push((owner(id), ip(a)));
            }
        }
    }
    assert_eq!(handed_out.len(), 2 * WORKERS * PER_WORKER);
    assert_unique(&open(&tmp, DUAL), &handed_out);
}
