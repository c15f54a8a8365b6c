//! The host's resolvers, read once from `/etc/resolv.conf` at startup: netd forwards names
//! outside its own zones there unless `--dns-upstream` says otherwise.

use std::net::{IpAddr, SocketAddr};

/// Where the host's resolvers are listed.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The `nameserver` addresses of a resolv.conf text, on port 53, in order (zone ids such as
/// `fe80::1%eth0` are dropped with the address: forwarding needs a scope netd cannot know).
pub fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            words.next()?.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The default upstreams: the host's nameservers minus netd's own listeners (a host whose
/// resolv.conf already points at netd would otherwise forward to itself in a loop).
pub fn default_upstreams(text: &str, own: &[SocketAddr]) -> Vec<SocketAddr> {
    nameservers(text)
        .into_iter()
        .filter(|ns| !own.contains(ns))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nameservers_and_skips_our_own_listeners() {
        let text = "# generated\nsearch example.com\nnameserver 127.0.0.53\n\
                    nameserver  192.0.2.1 # comment\nnameserver 2001:db8::1\nnameserver bogus\n\
                    options edns0\n";
        let all = nameservers(text);
        let want: Vec<SocketAddr> = ["127.0.0.53:53", "192.0.2.1:53", "[2001:db8::1]:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(all, want);
        // 127.0.0.53 stays unless it is one of netd's listeners.
        assert_eq!(default_upstreams(text, &[]), want);
        let own = ["127.0.0.53:53".parse().unwrap()];
        assert_eq!(default_upstreams(text, &own), want[1..]);
    }
}
