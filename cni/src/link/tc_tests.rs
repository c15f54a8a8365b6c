//! Tests of the `bandwidth` shaping: the limits' validation and units, request encodings
//! against what `tc` sends, and the real kernel in throwaway namespaces
//! (the `TestNs` guard of `link::tests`, deleted on drop), checked with `tc -j` and `ip -j`, down
//! to traffic really being slowed. Kernel tests need root, and a kernel with `ifb`, `tbf`,
//! `ingress`, `u32` and `act_mirred`; without them they say so on stderr and pass.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::tc::{ifb_name, Bandwidth, Tbf};
use super::tests::TestNs;
use super::{LinkError, Netlink};
use crate::netns::NetNs;

mod units {
    use super::*;

    fn invalid(bw: Bandwidth) -> String {
        match bw.validate() {
            Err(LinkError::Invalid { what }) => what,
            other => panic!("{bw:?} should be invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_direction_needs_both_rate_and_burst() {
        assert!(Bandwidth::default().validate().is_ok());
        assert!(Bandwidth::default().is_unlimited());
        let text = invalid(Bandwidth {
            ingress_rate: 1_000_000,
            ..Bandwidth::default()
        });
        assert!(
            text.contains("ingressRate") && text.contains("ingressBurst"),
            "{text}"
        );
        let text = invalid(Bandwidth {
            egress_burst: 80_000,
            ..Bandwidth::default()
        });
        assert!(
            text.contains("egressBurst") && text.contains("egressRate"),
            "{text}"
        );
        let text = invalid(Bandwidth {
            egress_rate: 7,
            egress_burst: 80_000,
            ..Bandwidth::default()
        });
        assert!(text.contains("below 8 bit/s"), "{text}");
        let text = invalid(Bandwidth {
            ingress_rate: 1_000_000,
            ingress_burst: 5,
            ..Bandwidth::default()
        });
        assert!(text.contains("below 8 bits"), "{text}");
        let text = invalid(Bandwidth {
            ingress_rate: 1_000_000,
            ingress_burst: (u64::from(u32::MAX) + 1) * 8,
            ..Bandwidth::default()
        });
        assert!(text.contains("over 4 GiB"), "{text}");
        // A burst below one MTU is accepted (documented: full-size frames are then dropped).
        let small = Bandwidth {
            ingress_rate: 1_000_000,
            ingress_burst: 8_000,
            ..Bandwidth::default()
        };
        assert!(small.validate().is_ok());
        assert!(!small.is_unlimited());
    }

    #[test]
    fn runtime_config_is_camel_case_with_defaults() {
        let bw: Bandwidth =
            serde_json::from_str(r#"{"ingressRate": 1000000, "ingressBurst": 80000}"#)
                .expect("parse");
        assert_eq!(
            bw,
            Bandwidth {
                ingress_rate: 1_000_000,
                ingress_burst: 80_000,
                ..Bandwidth::default()
            }
        );
        let json = serde_json::to_value(bw).expect("serialize");
        assert_eq!(json["egressRate"], 0);
    }

    #[test]
    fn tbf_parameters_match_tc() {
        // tc qdisc … tbf rate 1mbit burst 4096 latency 25ms: limit 7221, buffer 512000 ticks.
        let tbf = Tbf::from_bits(1_000_000, 4096 * 8, "ingress")
            .unwrap()
            .unwrap();
        assert_eq!(
            tbf,
            Tbf {
                rate: 125_000,
                burst: 4096
            }
        );
        assert_eq!(tbf.limit(), 7221);
        assert_eq!(tbf.buffer_ticks(), 512_000);
        assert_eq!(Tbf::from_bits(0, 0, "egress").unwrap(), None);
        // Saturation instead of overflow at the extremes.
        let slow = Tbf {
            rate: 1,
            burst: u32::MAX,
        };
        assert_eq!(slow.buffer_ticks(), u32::MAX);
        let fast = Tbf {
            rate: u64::MAX / 8,
            burst: u32::MAX,
        };
        assert_eq!(fast.limit(), u32::MAX);
    }

    #[test]
    fn ifb_names_follow_the_veth() {
        assert_eq!(ifb_name("vnd0123456789ab"), "bnd0123456789ab");
        let other = ifb_name("veth-a");
        assert!(other.starts_with("bnd") && other.len() == 15, "{other}");
        assert_eq!(other, ifb_name("veth-a"));
        assert_ne!(other, ifb_name("veth-b"));
        assert_eq!(ifb_name("vnd").len(), 15);
    }
}

/// Requests byte for byte against iproute2 6.1's for the same command (captured with
/// `strace -e sendmsg -xx`; netlink header left out), for `dev` index 3 and ifb index 4.
mod encoding {
    use netlink_packet_core::Emitable;
    use netlink_packet_route::tc::TcMessage;

    use super::super::tc::{self, Tbf};

    fn bytes(msg: &TcMessage) -> Vec<u8> {
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        buf
    }

    /// `tcmsg` for index 3 with `handle`, `parent` and `info`.
    fn tcmsg(handle: u32, parent: u32, info: u32) -> Vec<u8> {
        let mut header = vec![0, 0, 0, 0, 3, 0, 0, 0];
        for field in [handle, parent, info] {
            header.extend(field.to_ne_bytes());
        }
        header
    }

    #[test]
    fn tbf_qdisc() {
        // tc qdisc replace dev d root handle 1: tbf rate 1mbit burst 4096 latency 25ms,
        // without its 1028-byte TCA_TBF_RTAB (so TCA_OPTIONS is 52 bytes, not 1080).
        let mut want = tcmsg(0x0001_0000, 0xffff_ffff, 0);
        want.extend([8, 0, 1, 0, b't', b'b', b'f', 0]);
        want.extend([52, 0, 2, 0]); // TCA_OPTIONS
        want.extend([40, 0, 1, 0]); // TCA_TBF_PARMS
        want.extend([3, 1, 0, 0, 0xff, 0xff, 0, 0, 0x48, 0xe8, 1, 0]); // rate 125000 B/s
        want.extend([0; 12]); // no peak rate
        want.extend([0x35, 0x1c, 0, 0]); // limit 7221
        want.extend([0, 0xd0, 7, 0]); // buffer 512000 ticks
        want.extend([0; 4]); // mtu
        want.extend([8, 0, 6, 0, 0, 0x10, 0, 0]); // TCA_TBF_BURST 4096
        let tbf = Tbf {
            rate: 125_000,
            burst: 4096,
        };
        assert_eq!(bytes(&tc::tbf_request(3, &tbf)), want);
    }

    #[test]
    fn tbf_above_32_bits_of_rate() {
        // 40 Gbit/s: rate field saturated, the real rate in TCA_TBF_RATE64 after the burst.
        let tbf = Tbf {
            rate: 5_000_000_000,
            burst: 1 << 20,
        };
        let msg = bytes(&tc::tbf_request(3, &tbf));
        let rate32 = &msg[20 + 8 + 4 + 4 + 8..][..4];
        assert_eq!(rate32, u32::MAX.to_ne_bytes());
        let mut rate64 = vec![12, 0, 4, 0];
        rate64.extend(5_000_000_000u64.to_ne_bytes());
        assert!(msg.ends_with(&rate64), "{msg:?}");
    }

    #[test]
    fn ingress_qdisc() {
        // tc qdisc replace dev d handle ffff: ingress
        let mut want = tcmsg(0xffff_0000, 0xffff_fff1, 0);
        want.extend([12, 0, 1, 0, b'i', b'n', b'g', b'r', b'e', b's', b's', 0]);
        assert_eq!(bytes(&tc::ingress_qdisc_request(3)), want);
    }

    #[test]
    fn redirect_filter() {
        // tc filter replace dev d parent ffff: protocol all prio 1 handle 800::800 u32
        //   match u32 0 0 action mirred egress redirect dev ifb
        let mut want = tcmsg(0x8000_0800, 0xffff_0000, 0x0001_0300);
        want.extend([8, 0, 1, 0, b'u', b'3', b'2', 0]);
        want.extend([0x60, 0, 2, 0]); // TCA_OPTIONS
        want.extend([0x38, 0, 7, 0]); // TCA_U32_ACT
        want.extend([0x34, 0, 1, 0]); // action 1
        want.extend([11, 0, 1, 0, b'm', b'i', b'r', b'r', b'e', b'd', 0, 0]);
        want.extend([0x24, 0, 2, 0x80]); // TCA_ACT_OPTIONS, nested
        want.extend([0x20, 0, 2, 0]); // TCA_MIRRED_PARMS
        want.extend([0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0]); // index, capab, TC_ACT_STOLEN
        want.extend([0, 0, 0, 0, 0, 0, 0, 0]); // refcnt, bindcnt
        want.extend([1, 0, 0, 0, 4, 0, 0, 0]); // TCA_EGRESS_REDIR to index 4
        want.extend([0x24, 0, 5, 0]); // TCA_U32_SEL
        want.extend([1, 0, 1, 0]); // terminal, one key
        want.extend([0; 12 + 16]); // the rest of the selector, key 0/0 at offset 0
        assert_eq!(bytes(&tc::redirect_request(3, 4)), want);
    }
}

impl TestNs {
    /// `<cmd> -n <ns> -j <args>` (`ip` or `tc`), parsed.
    fn json(&self, cmd: &str, args: &[&str]) -> Value {
        let mut all = vec!["-n", &self.name, "-j"];
        all.extend_from_slice(args);
        let text = run(cmd, &all).unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    fn qdiscs(&self, dev: &str) -> Vec<Value> {
        array(self.json("tc", &["qdisc", "show", "dev", dev]))
    }

    /// The redirect filters' nodes (those with actions) at `dev`'s ingress.
    fn redirects(&self, dev: &str) -> Vec<Value> {
        array(self.json("tc", &["filter", "show", "dev", dev, "ingress"]))
            .into_iter()
            .filter(|f| f["options"]["actions"].is_array())
            .collect()
    }

    fn link(&self, dev: &str) -> Option<Value> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-j", "-d", "link", "show", "dev", dev])
            .output()
            .expect("run ip");
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).expect("ip JSON")[0].clone())
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn array(v: Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// Whether the kernel has what shaping needs, tried once with iproute2 (so that a bug of ours
/// cannot pass for a missing feature): an ifb with a TBF, an ingress qdisc, and a u32 filter
/// with a mirred redirect.
fn kernel_supports_shaping() -> bool {
    static SUPPORT: OnceLock<Result<(), String>> = OnceLock::new();
    let support = SUPPORT.get_or_init(|| {
        let t = TestNs::new();
        let ns = t.name.as_str();
        let steps: [&[&str]; 4] = [
            &["ip", "-n", ns, "link", "add", "probe0", "type", "ifb"],
            &[
                "tc", "-n", ns, "qdisc", "add", "dev", "probe0", "root", "tbf", "rate", "1mbit",
                "burst", "10kb", "latency", "25ms",
            ],
            &["tc", "-n", ns, "qdisc", "add", "dev", "probe0", "ingress"],
            &[
                "tc", "-n", ns, "filter", "add", "dev", "probe0", "parent", "ffff:", "protocol",
                "all", "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect",
                "dev", "probe0",
            ],
        ];
        steps
            .iter()
            .try_for_each(|step| run(step[0], &step[1..]).map(|_| ()))
    });
    match support {
        Ok(()) => true,
        Err(e) => {
            eprintln!("kernel cannot shape (ifb/tbf/ingress/u32/mirred missing?): {e}; skipped");
            false
        }
    }
}

/// A veth `name` (up, MTU `mtu`) in `host` with peer `eth0` up in `ctr`; `10.77.0.1/24` on
/// the host end and `10.77.0.2/24` on the peer.
fn veth_pair(host: &TestNs, ctr: &TestNs, name: &str, mtu: u32) -> (Netlink, u32) {
    let mut h = host.netlink();
    let veth = h
        .create_veth(name, "eth0", &ctr.ns, Some(mtu), None)
        .expect("create veth");
    h.add_address(veth.index, "10.77.0.1/24".parse().expect("cidr"), false)
        .expect("host address");
    h.set_up(veth.index).expect("host end up");
    let mut c = ctr.netlink();
    let eth0 = c.link_by_name("eth0").expect("look up").expect("eth0");
    c.add_address(eth0.index, "10.77.0.2/24".parse().expect("cidr"), false)
        .expect("container address");
    c.set_up(eth0.index).expect("peer up");
    (h, veth.index)
}

fn bw(ingress: (u64, u64), egress: (u64, u64)) -> Bandwidth {
    Bandwidth {
        ingress_rate: ingress.0,
        ingress_burst: ingress.1,
        egress_rate: egress.0,
        egress_burst: egress.1,
    }
}

fn tbf_of(qdiscs: &[Value]) -> Option<(u64, u64)> {
    qdiscs
        .iter()
        .find(|q| q["kind"] == "tbf" && q["root"] == true)
        .map(|q| {
            let opts = &q["options"];
            (
                opts["rate"].as_u64().unwrap_or(0),
                opts["burst"].as_u64().unwrap_or(0),
            )
        })
}

fn has_ingress(qdiscs: &[Value]) -> bool {
    qdiscs
        .iter()
        .any(|q| q["kind"] == "ingress" && q["handle"] == "ffff:")
}

#[test]
fn shaping_is_applied_replaced_and_cleared() {
    if !kernel_supports_shaping() {
        return;
    }
    let host = TestNs::new();
    let ctr = TestNs::new();
    let (mut nl, index) = veth_pair(&host, &ctr, "vndtc0", 1400);
    let shaped = bw((1_000_000, 80_000), (2_000_000, 160_000));

    // Twice: the second call replaces, it does not add.
    for _ in 0..2 {
        let ifb = nl.set_bandwidth(index, "vndtc0", &shaped).unwrap();
        assert_eq!(ifb.as_deref(), Some("bndtc0"));
        let on_veth = host.qdiscs("vndtc0");
        assert_eq!(tbf_of(&on_veth), Some((125_000, 10_000)), "{on_veth:?}");
        assert!(has_ingress(&on_veth), "{on_veth:?}");
        assert_eq!(on_veth.len(), 2, "{on_veth:?}");
        let on_ifb = host.qdiscs("bndtc0");
        assert_eq!(tbf_of(&on_ifb), Some((250_000, 20_000)), "{on_ifb:?}");
        let redirects = host.redirects("vndtc0");
        assert_eq!(redirects.len(), 1, "{redirects:?}");
        let filter = &redirects[0];
        assert_eq!(filter["kind"], "u32");
        assert_eq!(filter["protocol"], "all");
        let actions = array(filter["options"]["actions"].clone());
        assert_eq!(actions.len(), 1, "{actions:?}");
        let mirred = &actions[0];
        assert_eq!(mirred["kind"], "mirred");
        assert_eq!(mirred["mirred_action"], "redirect");
        assert_eq!(mirred["direction"], "egress");
        assert_eq!(mirred["to_dev"], "bndtc0");
        let ifb = host.link("bndtc0").expect("ifb exists");
        assert_eq!(ifb["linkinfo"]["info_kind"], "ifb", "{ifb}");
        assert_eq!(ifb["mtu"], 1400, "{ifb}");
        assert!(
            array(ifb["flags"].clone()).contains(&Value::from("UP")),
            "{ifb}"
        );
    }

    // New limits replace the old ones in place.
    let faster = bw((4_000_000, 80_000), (8_000_000, 240_000));
    nl.set_bandwidth(index, "vndtc0", &faster).unwrap();
    assert_eq!(tbf_of(&host.qdiscs("vndtc0")), Some((500_000, 10_000)));
    assert_eq!(tbf_of(&host.qdiscs("bndtc0")), Some((1_000_000, 30_000)));
    assert_eq!(host.redirects("vndtc0").len(), 1);

    // Egress unlimited now: the redirect and the ifb go, ingress shaping stays.
    let ingress_only = bw((4_000_000, 80_000), (0, 0));
    assert_eq!(
        nl.set_bandwidth(index, "vndtc0", &ingress_only).unwrap(),
        None
    );
    assert!(host.link("bndtc0").is_none());
    let on_veth = host.qdiscs("vndtc0");
    assert!(!has_ingress(&on_veth), "{on_veth:?}");
    assert_eq!(tbf_of(&on_veth), Some((500_000, 10_000)));

    // Unlimited: the TBF goes too.
    nl.set_bandwidth(index, "vndtc0", &Bandwidth::default())
        .unwrap();
    assert_eq!(tbf_of(&host.qdiscs("vndtc0")), None);

    // clear_bandwidth undoes a full setup, and is a no-op the second time.
    nl.set_bandwidth(index, "vndtc0", &shaped).unwrap();
    assert!(nl.clear_bandwidth("vndtc0").unwrap());
    assert!(host.link("bndtc0").is_none());
    let on_veth = host.qdiscs("vndtc0");
    assert_eq!(tbf_of(&on_veth), None, "{on_veth:?}");
    assert!(!has_ingress(&on_veth), "{on_veth:?}");
    assert!(!nl.clear_bandwidth("vndtc0").unwrap());
    assert!(!nl.clear_bandwidth("no-such-veth").unwrap());
}

#[test]
fn clearing_after_the_veth_is_gone_and_name_clashes() {
    if !kernel_supports_shaping() {
        return;
    }
    let host = TestNs::new();
    let ctr = TestNs::new();
    let (mut nl, index) = veth_pair(&host, &ctr, "vndtc1", 1500);
    let egress_only = bw((0, 0), (1_000_000, 80_000));
    assert_eq!(
        nl.set_bandwidth(index, "vndtc1", &egress_only)
            .unwrap()
            .as_deref(),
        Some("bndtc1")
    );
    assert_eq!(tbf_of(&host.qdiscs("vndtc1")), None);
    nl.delete_link(index).unwrap();
    assert!(host.link("bndtc1").is_some(), "the ifb outlives the veth");
    assert!(nl.clear_bandwidth("vndtc1").unwrap());
    assert!(host.link("bndtc1").is_none());

    // A non-ifb holding the ifb's name: refused by set, left alone by clear.
    let ctr2 = TestNs::new();
    let (mut nl, index) = veth_pair(&host, &ctr2, "vndtc2", 1500);
    run(
        "ip",
        &["-n", &host.name, "link", "add", "bndtc2", "type", "bridge"],
    )
    .unwrap();
    let err = nl.set_bandwidth(index, "vndtc2", &egress_only).unwrap_err();
    assert!(matches!(err, LinkError::WrongKind { .. }), "{err:?}");
    assert!(err.to_string().contains("bndtc2"), "{err}");
    assert!(!nl.clear_bandwidth("vndtc2").unwrap());
    assert!(host.link("bndtc2").is_some());

    // Bad limits are refused before anything changes.
    let err = nl
        .set_bandwidth(index, "vndtc2", &bw((1_000_000, 0), (0, 0)))
        .unwrap_err();
    assert!(matches!(err, LinkError::Invalid { .. }), "{err:?}");
    assert_eq!(tbf_of(&host.qdiscs("vndtc2")), None);

    // A missing veth is an error that names it.
    let err = nl
        .set_bandwidth(999_999, "vndtc9", &bw((1_000_000, 80_000), (0, 0)))
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
    assert!(err.to_string().contains("999999"), "{err}");
}

/// Sends `len` bytes over TCP from a socket in `from` to a listener on `to_addr` in `to`;
/// returns the time until the receiver has read them all.
fn transfer(from: &NetNs, to: &NetNs, to_addr: SocketAddr, len: usize) -> Duration {
    let listener = to
        .run(|| TcpListener::bind(to_addr))
        .expect("enter the receiving namespace")
        .expect("listen");
    let start = Instant::now();
    let receiver = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        loop {
            match stream.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    });
    let mut stream = from
        .run(|| TcpStream::connect_timeout(&to_addr, Duration::from_secs(5)))
        .expect("enter the sending namespace")
        .expect("connect");
    stream.write_all(&vec![0x5a; len]).expect("send");
    stream.shutdown(Shutdown::Write).expect("shutdown");
    let received = receiver.join().expect("receiver").expect("receive");
    assert_eq!(received, len);
    start.elapsed()
}

/// 512 KiB at 1 Mbit/s cannot take less than about 4 s (the 16 KiB burst aside); unshaped, it
/// takes milliseconds. Only the physical lower bound and the comparison are asserted — a busy
/// machine slows both transfers, never speeds the shaped one up: this proves the shaping acts
/// on the data path, not its precision.
fn assert_shaped(direction: &str, unshaped: Duration, shaped: Duration) {
    eprintln!("{direction}: 512 KiB unshaped in {unshaped:?}, at 1 Mbit/s in {shaped:?}");
    assert!(shaped > Duration::from_secs(2), "{shaped:?}");
    assert!(
        shaped > unshaped * 2,
        "unshaped {unshaped:?}, shaped {shaped:?}"
    );
    assert!(shaped < Duration::from_secs(30), "{shaped:?}");
}

const PAYLOAD: usize = 512 * 1024;
/// 1 Mbit/s with a 16 KiB burst (more than one 1500-byte frame).
const LIMIT: (u64, u64) = (1_000_000, 16 * 1024 * 8);

#[test]
fn ingress_shaping_slows_traffic_to_the_container() {
    if !kernel_supports_shaping() {
        return;
    }
    let host = TestNs::new();
    let ctr = TestNs::new();
    let (mut nl, index) = veth_pair(&host, &ctr, "vndtc3", 1500);
    let to_ctr: SocketAddr = "10.77.0.2:5201".parse().expect("addr");
    let unshaped = transfer(&host.ns, &ctr.ns, to_ctr, PAYLOAD);
    nl.set_bandwidth(index, "vndtc3", &bw(LIMIT, (0, 0)))
        .unwrap();
    let shaped = transfer(&host.ns, &ctr.ns, to_ctr, PAYLOAD);
    assert_shaped("to the container", unshaped, shaped);
}

#[test]
fn egress_shaping_slows_traffic_from_the_container() {
    if !kernel_supports_shaping() {
        return;
    }
    let host = TestNs::new();
    let ctr = TestNs::new();
    let (mut nl, index) = veth_pair(&host, &ctr, "vndtc4", 1500);
    let to_host: SocketAddr = "10.77.0.1:5201".parse().expect("addr");
    let unshaped = transfer(&ctr.ns, &host.ns, to_host, PAYLOAD);
    nl.set_bandwidth(index, "vndtc4", &bw((0, 0), LIMIT))
        .unwrap();
    let shaped = transfer(&ctr.ns, &host.ns, to_host, PAYLOAD);
    assert_shaped("from the container", unshaped, shaped);
}
