//! CNI spec versions: which ones we speak and how they compare.

use std::fmt;

/// Every version whose configurations and results we accept and produce.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A parsed spec version, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u16, pub u16, pub u16);

impl Version {
    /// The newest version we speak.
    pub const LATEST: Version = Version(1, 1, 0);

    /// Parses `1.0.0`; `None` for anything that is not three dot-separated numbers.
    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.').map(|p| p.parse::<u16>().ok());
        let v = Version(it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(v)
    }

    /// Whether we accept configurations of this version.
    pub fn is_supported(self) -> bool {
        SUPPORTED.iter().any(|s| Version::parse(s) == Some(self))
    }

    /// Results of versions before 1.0.0 carry `"version": "4"|"6"` on each IP.
    pub fn ips_carry_family(self) -> bool {
        self < Version(1, 0, 0)
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Version(0, 4, 0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        assert_eq!(Version::parse("0.4.0"), Some(Version(0, 4, 0)));
        assert_eq!(Version::parse("1.0"), None);
        assert_eq!(Version::parse("1.0.0.0"), None);
        assert_eq!(Version::parse("x.1.0"), None);
        assert!(Version(0, 3, 1) < Version(0, 4, 0));
        assert!(Version(1, 1, 0).is_supported());
        assert!(!Version(0, 2, 0).is_supported());
        assert!(Version(0, 3, 1).ips_carry_family());
        assert!(!Version(1, 0, 0).ips_carry_family());
    }
}
