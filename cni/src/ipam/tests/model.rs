//! A randomized check (seeded, so failures reproduce): random operations on a small range,
//! compared after every step with a model that predicts exact results, round-robin included.

use std::collections::BTreeMap;

use super::*;

/// xorshift64*: enough randomness for a test, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const JSON: &str = r#"{"type":"netd","ranges":[[{"subnet":"10.40.0.0/28"}]]}"#;
/// Allocatable host parts of 10.40.0.0/28: .2 ..= .14 (.1 is the gateway).
const FIRST: u8 = 2;
const LAST: u8 = 14;

#[derive(Default)]
struct Model {
    held: BTreeMap<IpAddr, Owner>,
    cursor: Option<u8>,
}

fn host(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(_) => panic!("unexpected v6 address {a}"),
    }
}

fn v4(h: u8) -> IpAddr {
    ip(&format!("10.40.0.{h}"))
}

impl Model {
    fn holding(&self, o: &Owner) -> Option<IpAddr> {
        self.held.iter().find(|(_, h)| *h == o).map(|(a, _)| *a)
    }

    fn next_free(&self) -> Option<IpAddr> {
        let start = self
            .cursor
            .map_or(FIRST, |c| if c >= LAST { FIRST } else { c + 1 });
        let n = LAST - FIRST + 1;
        (0..n)
            .map(|i| v4(FIRST + (start - FIRST + i) % n))
            .find(|a| !self.held.contains_key(a))
    }

    /// The predicted result of `allocate(o, requested)`, applied to the model.
    fn allocate(&mut self, o: &Owner, requested: Option<IpAddr>) -> Result<IpAddr, &'static str> {
        if let Some(r) = requested {
            match host(r) {
                0 | 1 | 15 => return Err("Reserved"),
                _ => {}
            }
        }
        let held = self.holding(o);
        let addr = match (held, requested) {
            (Some(h), None) => return Ok(h),
            (Some(h), Some(r)) if h == r => return Ok(h),
            (Some(_), Some(_)) => return Err("AlreadyHolds"),
            (None, Some(r)) if self.held.contains_key(&r) => return Err("Taken"),
            (None, Some(r)) => r,
            (None, None) => self.next_free().ok_or("Exhausted")?,
        };
        self.held.insert(addr, o.clone());
        self.cursor = Some(host(addr));
        Ok(addr)
    }
}

fn kind(e: &IpamError) -> &'static str {
    match e {
        IpamError::Reserved { .. } => "Reserved",
        IpamError::AlreadyHolds { .. } => "AlreadyHolds",
        IpamError::Taken { .. } => "Taken",
        IpamError::Exhausted { .. } => "Exhausted",
        _ => "other",
    }
}

fn run(seed: u64, steps: usize) {
    let tmp = TempDir::new("model");
    let mut rng = Rng(seed);
    let mut ipam = open(&tmp, JSON);
    let mut model = Model::default();
    let owners: Vec<Owner> = (0..18).map(|i| owner(&format!("o{i}"))).collect();
    for step in 0..steps {
        let o = &owners[rng.below(owners.len() as u64) as usize];
        let what = rng.below(100);
        let ctx = format!("seed {seed} step {step} op {what} owner {}", o.container_id);
        match what {
            0..=44 => {
                let want = model.allocate(o, None);
                let got = ipam.allocate(o, &[]).map(|a| a[0].address.addr());
                assert_eq!(got.map_err(|e| kind(&e)), want, "{ctx}");
            }
            45..=59 => {
                let r = v4(rng.below(16) as u8);
                let want = model.allocate(o, Some(r));
                let got = ipam.allocate(o, &[r]).map(|a| a[0].address.addr());
                assert_eq!(got.map_err(|e| kind(&e)), want, "{ctx} requested {r}");
            }
            60..=74 => {
                let addrs: Vec<IpAddr> = (0..rng.below(3))
                    .map(|_| v4(FIRST + rng.below(13) as u8))
                    .collect();
                ipam.release_addrs(o, &addrs).expect("release_addrs");
                model.held.retain(|a, h| !(h == o && addrs.contains(a)));
            }
            75..=84 => {
                let want: Vec<IpAddr> = model
                    .held
                    .iter()
                    .filter(|(_, h)| *h == o)
                    .map(|(a, _)| *a)
                    .collect();
                model.held.retain(|_, h| h != o);
                assert_eq!(ipam.release(o).expect("release"), want, "{ctx}");
            }
            85..=89 => {
                let valid: Vec<Owner> = owners
                    .iter()
                    .filter(|_| rng.below(4) != 0)
                    .cloned()
                    .collect();
                let want: Vec<(IpAddr, Owner)> = model
                    .held
                    .iter()
                    .filter(|(_, h)| !valid.contains(h))
                    .map(|(a, h)| (*a, h.clone()))
                    .collect();
                model.held.retain(|_, h| valid.contains(h));
                assert_eq!(ipam.gc(&valid).expect("gc"), want, "{ctx}");
            }
            90..=94 => {
                let full = model.held.len() == usize::from(LAST - FIRST + 1);
                let status = ipam.exhausted().expect("exhausted");
                assert_eq!(status.is_some(), full, "{ctx}");
            }
            _ => ipam = open(&tmp, JSON), // another process
        }
        let want: Vec<(IpAddr, Owner)> = model.held.iter().map(|(a, h)| (*a, h.clone())).collect();
        assert_eq!(ipam.allocations().expect("list"), want, "{ctx}");
    }
}

#[test]
fn random_operations_match_the_model() {
    for seed in [0x9e37_79b9_7f4a_7c15, 1, 42, 0xdead_beef] {
        run(seed, 250);
    }
}
