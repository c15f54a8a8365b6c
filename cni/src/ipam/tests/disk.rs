//! Release and GC, the host-local file format (both ways), and what a killed process leaves.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::requests::ipam_private_files;
use super::*;

#[test]
fn release_addrs_only_releases_the_owners_addresses() {
    let tmp = TempDir::new("release-addrs");
    let ipam = open(&tmp, &subnet("10.20.0.0/24"));
    let a = take(&ipam, "a");
    let b = take(&ipam, "b");
    // b cannot release a's address, and that is not an error (DEL must succeed).
    ipam.release_addrs(&owner("b"), &[a])
        .expect("refused quietly");
    assert_eq!(ipam.owned_by(&owner("a")).expect("owned"), [a]);
    ipam.release_addrs(&owner("a"), &[a, ip("10.20.0.99")])
        .expect("release");
    assert!(ipam.owned_by(&owner("a")).expect("owned").is_empty());
    ipam.release_addrs(&owner("a"), &[a]).expect("idempotent");
    ipam.release_addrs(&owner("a"), &[]).expect("nothing");
    assert_eq!(ipam.allocations().expect("list"), [(b, owner("b"))]);
    // The released owner's index entry is gone; a new allocation for it starts fresh.
    assert_eq!(ipam_private_files(&ipam, ".netd-owner-"), 1);
    assert_ne!(take(&ipam, "a"), a);
}

#[test]
fn release_and_gc_by_owner() {
    let tmp = TempDir::new("gc");
    let ipam = open(
        &tmp,
        r#"{"type":"netd","ranges":[[{"subnet":"10.21.0.0/24"}],[{"subnet":"fd21::/64"}]]}"#,
    );
    let a = addrs(&ipam.allocate(&owner("a"), &[]).expect("a"));
    let b = addrs(&ipam.allocate(&owner("b"), &[]).expect("b"));
    let c = addrs(&ipam.allocate(&owner("c"), &[]).expect("c"));
    assert_eq!(ipam.release(&owner("a")).expect("release"), a);
    assert!(ipam.release(&owner("a")).expect("again").is_empty());
    let released = ipam.gc(&[owner("b")]).expect("gc");
    assert_eq!(
        released,
        c.iter().map(|&x| (x, owner("c"))).collect::<Vec<_>>()
    );
    let left: Vec<IpAddr> = ipam
        .allocations()
        .expect("list")
        .into_iter()
        .map(|(x, _)| x)
        .collect();
    assert_eq!(left, b);
    assert_eq!(
        ipam_private_files(&ipam, ".netd-owner-"),
        1,
        "only b stays indexed"
    );
    assert!(ipam.gc(&[owner("b")]).expect("gc again").is_empty());
    assert_eq!(ipam.gc(&[]).expect("gc all").len(), 2);
    assert_eq!(ipam_private_files(&ipam, ".netd-owner-"), 0);
}

#[test]
fn files_are_host_local_compatible() {
    let tmp = TempDir::new("format");
    let ipam = open(&tmp, &subnet("10.22.0.0/24"));
    assert_eq!(ipam.dir(), tmp.path().join("net"));
    let mode = fs::metadata(ipam.dir()).expect("dir").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let a = ipam.allocate(&owner("3f2a"), &[]).expect("a");
    let record = fs::read(ipam.dir().join("10.22.0.2")).expect("record");
    assert_eq!(record, b"3f2a\r\neth0");
    assert_eq!(
        fs::read(ipam.dir().join("last_reserved_ip.0")).expect("cursor"),
        b"10.22.0.2"
    );
    assert!(ipam.dir().join("lock").exists());
    assert_eq!(a[0].address.addr(), ip("10.22.0.2"));

    // What host-local wrote (current and legacy records) is read, respected and released.
    fs::write(ipam.dir().join("10.22.0.3"), "hl\r\neth1").expect("write");
    fs::write(ipam.dir().join("10.22.0.4"), "legacy\n").expect("write");
    let all = ipam.allocations().expect("list");
    assert_eq!(
        all[1],
        (
            ip("10.22.0.3"),
            Owner {
                container_id: "hl".into(),
                ifname: "eth1".into()
            }
        )
    );
    assert_eq!(
        all[2],
        (
            ip("10.22.0.4"),
            Owner {
                container_id: "legacy".into(),
                ifname: String::new()
            }
        )
    );
    assert_eq!(take(&ipam, "new"), ip("10.22.0.5"));
    assert_eq!(
        ipam.owned_by(&owner("legacy")).expect("owned"),
        [ip("10.22.0.4")]
    );
    let err = ipam
        .allocate(&owner("x"), &[ip("10.22.0.3")])
        .expect_err("taken");
    assert!(
        err.to_string().contains("container hl (interface eth1)"),
        "{err}"
    );
    assert_eq!(
        ipam.release(&owner("legacy")).expect("release"),
        [ip("10.22.0.4")]
    );
    // ipam.dataDir overrides the default root.
    let custom = TempDir::new("format-root");
    let json = format!(
        r#"{{"type":"netd","dataDir":"{}","subnet":"10.23.0.0/24"}}"#,
        custom.path().display()
    );
    let other = Ipam::open(&conf(&json), "net2", tmp.path()).expect("open");
    assert_eq!(other.dir(), custom.path().join("net2"));
}

#[test]
fn crash_leftovers_are_harmless_and_cleaned() {
    let tmp = TempDir::new("crash");
    let ipam = open(&tmp, &subnet("10.24.0.0/24"));
    let dir = ipam.dir().to_path_buf();
    // Killed after writing the temp file, before link: no reservation exists.
    fs::write(dir.join(".netd-tmp-reserve"), "dead1\r\neth0").expect("write");
    // Killed after link, before unlink: a complete reservation, its temp still a second name.
    fs::write(dir.join("10.24.0.7"), "dead2\r\neth0").expect("write");
    fs::write(dir.join(".netd-tmp-last_reserved_ip.0"), "10.24").expect("write");
    let stale = dir.join(".netd-tmp-stale");
    fs::hard_link(dir.join("10.24.0.7"), &stale).expect("link");
    // Killed while writing the owner index: the damaged hint is ignored.
    fs::write(dir.join(".netd-owner-0000000000000000"), "[{\"owner\":").expect("write");

    assert!(ipam.owned_by(&owner("dead1")).expect("owned").is_empty());
    // An allocation replaces the leftover temp without touching the reservation.
    assert_eq!(take(&ipam, "live"), ip("10.24.0.2"));
    assert_eq!(
        fs::read(dir.join("10.24.0.7")).expect("kept"),
        b"dead2\r\neth0"
    );
    // The leftover temps are gone after any scan; GC frees the orphaned reservation.
    let released = ipam.gc(&[owner("live")]).expect("gc");
    assert_eq!(released, [(ip("10.24.0.7"), owner("dead2"))]);
    assert_eq!(ipam_private_files(&ipam, ".netd-tmp-"), 0);
    assert_eq!(
        ipam.allocations().expect("list"),
        [(ip("10.24.0.2"), owner("live"))]
    );
}
