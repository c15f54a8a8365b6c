//! Which addresses a range hands out, in which order, and what happens when it is full.

use super::*;

#[test]
fn v4_slash24_defaults_skip_network_gateway_and_broadcast() {
    let tmp = TempDir::new("v4-24");
    let ipam = open(&tmp, &subnet("10.88.0.0/24"));
    assert_eq!(ipam.exhausted().expect("status"), None);
    let first = ipam.allocate(&owner("c0"), &[]).expect("first");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].address, "10.88.0.2/24".parse().expect("net"));
    assert_eq!(first[0].gateway, Some(ip("10.88.0.1")));
    assert_eq!(first[0].range_set, 0);
    let mut last = first[0].address.addr();
    for i in 1..253 {
        last = take(&ipam, &format!("c{i}"));
    }
    assert_eq!(last, ip("10.88.0.254"));
    let err = ipam
        .allocate(&owner("one-too-many"), &[])
        .expect_err("full");
    assert_eq!(err.to_string(), "no free address in 10.88.0.2-10.88.0.254");
    assert_eq!(exhausted_range(err), "10.88.0.2-10.88.0.254");
    assert_eq!(
        ipam.exhausted().expect("status").as_deref(),
        Some("10.88.0.2-10.88.0.254")
    );
    let all = ipam.allocations().expect("list");
    assert_eq!(all.len(), 253);
    assert!(!all
        .iter()
        .any(|(a, _)| ["10.88.0.0", "10.88.0.1", "10.88.0.255"].contains(&a.to_string().as_str())));
}

#[test]
fn v4_slash30_has_exactly_one_address() {
    let tmp = TempDir::new("v4-30");
    let ipam = open(&tmp, &subnet("10.0.0.0/30"));
    assert_eq!(take(&ipam, "a"), ip("10.0.0.2"));
    let err = ipam.allocate(&owner("b"), &[]).expect_err("full");
    assert_eq!(exhausted_range(err), "10.0.0.2-10.0.0.2");
}

#[test]
fn v6_slash64_defaults() {
    let tmp = TempDir::new("v6-64");
    let ipam = open(&tmp, &subnet("fd00:88::/64"));
    let a = ipam.allocate(&owner("a"), &[]).expect("allocate");
    assert_eq!(a[0].address, "fd00:88::2/64".parse().expect("net"));
    assert_eq!(a[0].gateway, Some(ip("fd00:88::1")));
    assert_eq!(take(&ipam, "b"), ip("fd00:88::3"));
    // IPv6 has no broadcast: the last address is allocatable.
    let last = ip("fd00:88::ffff:ffff:ffff:ffff");
    assert_eq!(
        addrs(&ipam.allocate(&owner("c"), &[last]).expect("static")),
        [last]
    );
    // Round-robin wraps from the very end of a 2^64 range without scanning it.
    assert_eq!(take(&ipam, "d"), ip("fd00:88::4"));
    assert_eq!(ipam.exhausted().expect("status"), None);
}

#[test]
fn custom_start_end_and_gateway_are_honoured() {
    let tmp = TempDir::new("custom");
    let ipam = open(
        &tmp,
        r#"{"type":"netd","ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10",
            "rangeEnd":"10.1.0.12","gateway":"10.1.0.11"}]]}"#,
    );
    let a = ipam.allocate(&owner("a"), &[]).expect("a");
    assert_eq!(a[0].gateway, Some(ip("10.1.0.11")));
    assert_eq!(a[0].address.addr(), ip("10.1.0.10"));
    assert_eq!(take(&ipam, "b"), ip("10.1.0.12"));
    let err = ipam.allocate(&owner("c"), &[]).expect_err("full");
    assert_eq!(exhausted_range(err), "10.1.0.10-10.1.0.12");
}

#[test]
fn v4_network_and_broadcast_are_never_allocated_even_if_configured() {
    let tmp = TempDir::new("clamp");
    let ipam = open(
        &tmp,
        r#"{"type":"netd","ranges":[[{"subnet":"10.2.0.0/29","rangeStart":"10.2.0.0",
            "rangeEnd":"10.2.0.7","gateway":"10.2.0.6"}]]}"#,
    );
    let got: Vec<IpAddr> = (0..5).map(|i| take(&ipam, &format!("c{i}"))).collect();
    let want: Vec<IpAddr> = (1..=5).map(|i| ip(&format!("10.2.0.{i}"))).collect();
    assert_eq!(got, want);
    let err = ipam.allocate(&owner("x"), &[]).expect_err("full");
    assert_eq!(exhausted_range(err), "10.2.0.1-10.2.0.5");
}

#[test]
fn legacy_single_range_form_is_set_zero() {
    let tmp = TempDir::new("legacy");
    let ipam = open(
        &tmp,
        r#"{"type":"netd","subnet":"10.5.0.0/24","gateway":"10.5.0.254"}"#,
    );
    let a = ipam.allocate(&owner("a"), &[]).expect("a");
    assert_eq!(a[0].address, "10.5.0.1/24".parse().expect("net"));
    assert_eq!(a[0].gateway, Some(ip("10.5.0.254")));
}

#[test]
fn round_robin_continues_after_the_last_reservation_and_wraps() {
    let tmp = TempDir::new("rr");
    let ipam = open(&tmp, &subnet("10.3.0.0/29")); // .2 ..= .6
    assert_eq!(take(&ipam, "a"), ip("10.3.0.2"));
    assert_eq!(take(&ipam, "b"), ip("10.3.0.3"));
    ipam.release(&owner("a")).expect("release");
    // .2 is free again, but is not reused right away.
    assert_eq!(take(&ipam, "c"), ip("10.3.0.4"));
    let cursor = std::fs::read_to_string(ipam.dir().join("last_reserved_ip.0")).expect("cursor");
    assert_eq!(cursor, "10.3.0.4");
    // A fresh instance (another process) continues from the file, not from memory.
    let other = open(&tmp, &subnet("10.3.0.0/29"));
    assert_eq!(take(&other, "d"), ip("10.3.0.5"));
    assert_eq!(take(&other, "e"), ip("10.3.0.6"));
    // Wraps around to the first free address.
    assert_eq!(take(&ipam, "f"), ip("10.3.0.2"));
    assert!(ipam.exhausted().expect("status").is_some());
}

#[test]
fn a_set_with_several_ranges_walks_them_in_order() {
    let tmp = TempDir::new("multi");
    let ipam = open(
        &tmp,
        r#"{"type":"netd","ranges":[[{"subnet":"10.4.0.0/30"},{"subnet":"10.4.1.0/30"}]]}"#,
    );
    assert_eq!(take(&ipam, "a"), ip("10.4.0.2"));
    let b = ipam.allocate(&owner("b"), &[]).expect("b");
    assert_eq!(b[0].address, "10.4.1.2/30".parse().expect("net"));
    assert_eq!(b[0].gateway, Some(ip("10.4.1.1")));
    let err = ipam.allocate(&owner("c"), &[]).expect_err("full");
    assert_eq!(exhausted_range(err), "10.4.0.2-10.4.0.2, 10.4.1.2-10.4.1.2");
    // Freeing the first range's address: probing wraps from the second range to the first.
    ipam.release(&owner("a")).expect("release");
    assert_eq!(take(&ipam, "c"), ip("10.4.0.2"));
}

#[test]
fn a_cursor_outside_the_ranges_restarts_at_the_first_range() {
    let tmp = TempDir::new("cursor");
    let ipam = open(&tmp, &subnet("10.6.0.0/24"));
    std::fs::write(ipam.dir().join("last_reserved_ip.0"), "192.168.0.1").expect("write");
    assert_eq!(take(&ipam, "a"), ip("10.6.0.2"));
    std::fs::write(ipam.dir().join("last_reserved_ip.0"), "garbage").expect("write");
    assert_eq!(take(&ipam, "b"), ip("10.6.0.3"));
}

#[test]
fn open_rejects_unusable_input() {
    let tmp = TempDir::new("open");
    let c = conf(&subnet("10.7.0.0/24"));
    for bad in ["", ".", "..", "a/b", "../x"] {
        assert!(
            matches!(
                Ipam::open(&c, bad, tmp.path()),
                Err(IpamError::BadNetwork { .. })
            ),
            "{bad:?}"
        );
    }
    let none = conf(r#"{"type":"netd"}"#);
    assert!(matches!(
        Ipam::open(&none, "n", tmp.path()),
        Err(IpamError::NoRanges)
    ));
    let empty =
        conf(r#"{"type":"netd","ranges":[[{"subnet":"10.7.0.0/24","rangeStart":"10.7.0.255"}]]}"#);
    let err = Ipam::open(&empty, "n", tmp.path()).expect_err("empty range");
    assert!(err.to_string().contains("leaves no address"), "{err}");
    let outside =
        conf(r#"{"type":"netd","ranges":[[{"subnet":"10.7.0.0/24","gateway":"10.8.0.1"}]]}"#);
    let err = Ipam::open(&outside, "n", tmp.path()).expect_err("gateway outside");
    assert!(
        err.to_string().contains("gateway 10.8.0.1 is not inside"),
        "{err}"
    );
    assert!(err.is_invalid_request());
}
