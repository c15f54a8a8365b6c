//! Balancer policies and their text form (`p2c`, `round-robin`, `random`,
//! `hash:header:NAME`, `hash:cookie:NAME`, `hash:source`), used by `--balancer` and by the
//! snapshot's `balancers` map.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How a service picks an endpoint for a request (HTTP) or a connection (TCP).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Power of two choices over peak-EWMA latency × (in-flight + 1) / weight (Linkerd's).
    #[default]
    P2c,
    /// Weighted round robin.
    RoundRobin,
    /// Weighted random.
    Random,
    /// Consistent hashing (a ring with virtual nodes per unit of weight).
    Hash(HashKey),
}

/// What a consistent-hash balancer hashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HashKey {
    /// A request header (lowercase name). Requests without it fall back to random.
    Header(String),
    /// A cookie by name. Requests without it fall back to random.
    Cookie(String),
    /// The client's IP address (works for TCP too).
    Source,
}

/// A policy string that is not one of the known forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a balancer: use p2c, round-robin, random, hash:header:NAME, hash:cookie:NAME or hash:source")]
pub struct PolicyError(pub String);

impl FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PolicyError(s.to_string());
        let lower = s.trim().to_ascii_lowercase();
        Ok(match lower.as_str() {
            "p2c" | "ewma" | "p2c-ewma" | "least-request" => Policy::P2c,
            "round-robin" | "roundrobin" | "rr" => Policy::RoundRobin,
            "random" => Policy::Random,
            "hash:source" => Policy::Hash(HashKey::Source),
            other => {
                let rest = other.strip_prefix("hash:").ok_or_else(bad)?;
                let (kind, name) = rest.split_once(':').ok_or_else(bad)?;
                let valid_name = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !valid_name {
                    return Err(bad());
                }
                match kind {
                    "header" => Policy::Hash(HashKey::Header(name.to_string())),
                    // Cookie names are case-sensitive: keep the original spelling.
                    "cookie" => Policy::Hash(HashKey::Cookie(
                        s.trim()[s.trim().len() - name.len()..].to_string(),
                    )),
                    _ => return Err(bad()),
                }
            }
        })
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::P2c => f.write_str("p2c"),
            Policy::RoundRobin => f.write_str("round-robin"),
            Policy::Random => f.write_str("random"),
            Policy::Hash(HashKey::Header(h)) => write!(f, "hash:header:{h}"),
            Policy::Hash(HashKey::Cookie(c)) => write!(f, "hash:cookie:{c}"),
            Policy::Hash(HashKey::Source) => f.write_str("hash:source"),
        }
    }
}

impl Serialize for Policy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        for s in [
            "p2c",
            "round-robin",
            "random",
            "hash:header:x-user",
            "hash:cookie:Session",
            "hash:source",
        ] {
            assert_eq!(s.parse::<Policy>().unwrap().to_string(), s);
        }
        assert_eq!("RR".parse::<Policy>().unwrap(), Policy::RoundRobin);
        for bad in [
            "",
            "hash",
            "hash:header:",
            "hash:body:x",
            "fastest",
            "hash:header:a b",
        ] {
            let e = bad.parse::<Policy>().unwrap_err().to_string();
            assert!(e.contains("is not a balancer"), "{e}");
        }
    }
}
