//! Static requests, dual stack, idempotent retries and all-or-nothing allocation.

use super::*;

const DUAL: &str =
    r#"{"type":"netd","ranges":[[{"subnet":"10.10.0.0/24"}],[{"subnet":"fd10::/64"}]]}"#;

#[test]
fn static_request_success_not_in_range_reserved_and_taken() {
    let tmp = TempDir::new("static");
    let ipam = open(
        &tmp,
        r#"{"type":"netd","ranges":[[{"subnet":"10.88.0.0/24","rangeEnd":"10.88.0.200"}]]}"#,
    );
    let a = ipam
        .allocate(&owner("a"), &[ip("10.88.0.50")])
        .expect("static");
    assert_eq!(a[0].address, "10.88.0.50/24".parse().expect("net"));
    // The same owner asking again gets it back.
    assert_eq!(
        ipam.allocate(&owner("a"), &[ip("10.88.0.50")])
            .expect("retry"),
        a
    );

    match ipam.allocate(&owner("b"), &[ip("10.88.0.50")]) {
        Err(IpamError::Taken { addr, by }) => {
            assert_eq!(addr, ip("10.88.0.50"));
            assert_eq!(by, owner("a"));
        }
        other => panic!("expected Taken, got {other:?}"),
    }
    let err = ipam
        .allocate(&owner("b"), &[ip("10.99.0.1")])
        .expect_err("outside");
    assert!(matches!(err, IpamError::NotInRange { .. }), "{err:?}");
    let err = ipam
        .allocate(&owner("b"), &[ip("10.88.0.201")])
        .expect_err("after rangeEnd");
    assert!(matches!(err, IpamError::NotInRange { .. }), "{err:?}");
    for (addr, what) in [
        ("10.88.0.1", "gateway"),
        ("10.88.0.0", "network address"),
        ("10.88.0.255", "broadcast address"),
    ] {
        match ipam.allocate(&owner("b"), &[ip(addr)]) {
            Err(IpamError::Reserved { what: w, .. }) => assert_eq!(w, what),
            other => panic!("{addr}: expected Reserved, got {other:?}"),
        }
    }
    let err = ipam
        .allocate(&owner("b"), &[ip("10.88.0.60"), ip("10.88.0.61")])
        .expect_err("two in one set");
    assert!(matches!(err, IpamError::SameSet { .. }), "{err:?}");
    let err = ipam
        .allocate(&owner("a"), &[ip("10.88.0.51")])
        .expect_err("holds another");
    assert!(matches!(err, IpamError::AlreadyHolds { .. }), "{err:?}");
    assert!(err.is_invalid_request());
    // None of the failures reserved anything.
    assert_eq!(
        ipam.allocations().expect("list"),
        [(ip("10.88.0.50"), owner("a"))]
    );
    // A static request moves the cursor, as host-local does.
    assert_eq!(take(&ipam, "c"), ip("10.88.0.51"));
}

#[test]
fn dual_stack_allocates_one_address_per_set() {
    let tmp = TempDir::new("dual");
    let ipam = open(&tmp, DUAL);
    let a = ipam.allocate(&owner("a"), &[]).expect("dual");
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].address, "10.10.0.2/24".parse().expect("net"));
    assert_eq!((a[0].range_set, a[1].range_set), (0, 1));
    assert_eq!(a[1].address, "fd10::2/64".parse().expect("net"));
    assert_eq!(a[1].gateway, Some(ip("fd10::1")));
    // A static v6 address goes to set 1; set 0 still gets a dynamic one.
    let b = ipam
        .allocate(&owner("b"), &[ip("fd10::abcd")])
        .expect("mixed");
    assert_eq!(addrs(&b), [ip("10.10.0.3"), ip("fd10::abcd")]);
    assert_eq!(
        ipam.owned_by(&owner("b")).expect("owned"),
        [ip("10.10.0.3"), ip("fd10::abcd")]
    );
}

#[test]
fn same_owner_retry_is_idempotent_and_completes_a_partial_allocation() {
    let tmp = TempDir::new("retry");
    let ipam = open(&tmp, DUAL);
    let first = ipam.allocate(&owner("a"), &[]).expect("first");
    let again = ipam.allocate(&owner("a"), &[]).expect("retry");
    assert_eq!(first, again);
    // Another instance (another process) answers the same.
    assert_eq!(
        open(&tmp, DUAL).allocate(&owner("a"), &[]).expect("other"),
        first
    );
    // Another interface of the same container is another owner.
    let eth1 = Owner {
        ifname: "eth1".into(),
        ..owner("a")
    };
    assert_ne!(
        addrs(&ipam.allocate(&eth1, &[]).expect("eth1")),
        addrs(&first)
    );
    assert_eq!(ipam.allocations().expect("list").len(), 4);

    // A killed ADD that reserved only the v4 address: the retry keeps it and adds a v6 one.
    std::fs::remove_file(ipam.dir().join("fd10::2")).expect("simulate");
    let completed = ipam.allocate(&owner("a"), &[]).expect("complete");
    assert_eq!(completed[0], first[0]);
    assert_eq!(completed[1].range_set, 1);
    assert_eq!(ipam.owned_by(&owner("a")).expect("owned").len(), 2);
}

#[test]
fn exhaustion_in_the_second_set_reserves_nothing() {
    let tmp = TempDir::new("atomic-exhausted");
    let json = r#"{"type":"netd","ranges":[[{"subnet":"10.11.0.0/24"}],
        [{"subnet":"fd11::/120","rangeStart":"fd11::2","rangeEnd":"fd11::2"}]]}"#;
    let ipam = open(&tmp, json);
    ipam.allocate(&owner("a"), &[]).expect("first fills set 1");
    let err = ipam.allocate(&owner("b"), &[]).expect_err("set 1 full");
    assert_eq!(exhausted_range(err), "fd11::2-fd11::2");
    assert!(ipam.owned_by(&owner("b")).expect("owned").is_empty());
    assert_eq!(ipam.allocations().expect("list").len(), 2);
    assert_eq!(
        ipam.exhausted().expect("status").as_deref(),
        Some("fd11::2-fd11::2")
    );
}

#[test]
fn a_failure_after_reserving_the_first_set_rolls_it_back() {
    let tmp = TempDir::new("atomic-rollback");
    let ipam = open(&tmp, DUAL);
    // Something that is not a reservation but occupies the name: the probe of set 1's
    // static address sees no owner, and the link then fails with EEXIST after set 0 is
    // already reserved (what a writer that ignores the lock could cause).
    std::os::unix::fs::symlink("/nonexistent", ipam.dir().join("fd10::9")).expect("symlink");
    let err = ipam
        .allocate(&owner("b"), &[ip("fd10::9")])
        .expect_err("link fails");
    assert!(matches!(err, IpamError::Taken { .. }), "{err:?}");
    assert!(ipam.allocations().expect("list").is_empty());
    assert!(ipam.owned_by(&owner("b")).expect("owned").is_empty());
    let index_files = ipam_private_files(&ipam, ".netd-owner-");
    assert_eq!(index_files, 0, "the owner index was rolled back too");

    // A static request in set 1 taken by someone else also leaves set 0 alone.
    ipam.allocate(&owner("a"), &[ip("fd10::5")]).expect("a");
    let err = ipam
        .allocate(&owner("c"), &[ip("fd10::5")])
        .expect_err("taken");
    assert!(matches!(err, IpamError::Taken { .. }), "{err:?}");
    assert!(ipam.owned_by(&owner("c")).expect("owned").is_empty());
}

#[test]
fn invalid_owners_are_rejected() {
    let tmp = TempDir::new("owner");
    let ipam = open(&tmp, &subnet("10.12.0.0/24"));
    for (id, ifname) in [
        ("", "eth0"),
        ("a", ""),
        ("a\r\nb", "eth0"),
        (" a", "eth0"),
        ("a", "eth\n0"),
    ] {
        let o = Owner {
            container_id: id.into(),
            ifname: ifname.into(),
        };
        let err = ipam.allocate(&o, &[]).expect_err("bad owner");
        assert!(matches!(err, IpamError::BadOwner { .. }), "{o:?}: {err:?}");
    }
    assert!(ipam.allocations().expect("list").is_empty());
}

pub(super) fn ipam_private_files(ipam: &Ipam, prefix: &str) -> usize {
    std::fs::read_dir(ipam.dir())
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .count()
}
