//! A service's HTTP routes prepared for matching on the data path: sorted once when the
//! snapshot is indexed (longest prefix first; on equal prefixes, routes that list methods
//! before routes for any method), methods as a bit set, so that matching a request is a short
//! scan of byte comparisons with no allocation.
//!
//! The table also keeps, per direction, the metric series of its routes (the default route
//! last), resolved on first use: label sets are looked up in the metrics registry once per
//! table and direction, not per connection or request, and a new snapshot that leaves a
//! service's routes as they were keeps its table ([`Snapshot::after`](super::Snapshot::after)).
//! The matching rule itself is documented on [`HttpRoute`].

use std::sync::{Arc, OnceLock};

use hyper::Method;
use netd_config::netd::{path_under, HttpMethod, HttpRoute, DEFAULT_ROUTE};

use crate::metrics::{Direction, HttpMetrics, Metrics};

/// One route, ready to match.
#[derive(Debug)]
struct Matcher {
    /// The prefix without trailing slashes (`""` matches every path).
    prefix: Box<str>,
    /// Bit `i` set: [`HttpMethod::ALL`]`[i]` matches; 0: any method.
    methods: u16,
    name: Arc<str>,
}

/// The routes of one service, sorted for matching, with their metric series.
#[derive(Debug)]
pub struct RouteTable {
    service: Arc<str>,
    /// The routes as configured, to tell whether a new snapshot changed them.
    source: Box<[HttpRoute]>,
    routes: Box<[Matcher]>,
    /// Whether any route lists methods (else a request's method is never looked at).
    by_method: bool,
    /// Series per direction (outbound, inbound): one per route in `routes` order, then the
    /// default route's.
    series: [OnceLock<Box<[Arc<HttpMetrics>]>>; 2],
}

impl RouteTable {
    /// The table of `service`'s `routes` (validated or not: a route that another always wins
    /// over simply never matches).
    pub fn new(service: Arc<str>, routes: &[HttpRoute]) -> Self {
        let mut sorted: Vec<Matcher> = routes
            .iter()
            .map(|r| Matcher {
                prefix: r.match_prefix().into(),
                methods: r.methods.iter().fold(0, |bits, m| bits | method_bit(*m)),
                name: r.name.as_str().into(),
            })
            .collect();
        // Stable: among equals, declaration order decides.
        sorted.sort_by_key(|m| (std::cmp::Reverse(m.prefix.len()), m.methods == 0));
        Self {
            service,
            source: routes.into(),
            by_method: sorted.iter().any(|m| m.methods != 0),
            routes: sorted.into_boxed_slice(),
            series: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// Whether this is the table of `routes` (as configured, in order).
    pub fn is_for(&self, routes: &[HttpRoute]) -> bool {
        *self.source == *routes
    }

    /// Index of the route `method path` matches (`path` without the query), `None` for the
    /// default route.
    pub fn find(&self, method: &Method, path: &str) -> Option<usize> {
        let bit = if self.by_method {
            request_method_bit(method)
        } else {
            0
        };
        self.routes
            .iter()
            .position(|r| (r.methods == 0 || r.methods & bit != 0) && path_under(path, &r.prefix))
    }

    /// The name of a [`RouteTable::find`] result.
    pub fn name(&self, found: Option<usize>) -> &str {
        match found.and_then(|i| self.routes.get(i)) {
            Some(r) => &r.name,
            None => DEFAULT_ROUTE,
        }
    }

    /// The series of a [`RouteTable::find`] result in direction `dir`, resolved in `metrics`
    /// the first time the table is used in that direction.
    pub fn series(
        &self,
        dir: Direction,
        metrics: &Metrics,
        found: Option<usize>,
    ) -> &Arc<HttpMetrics> {
        let all = self.series[slot(dir)].get_or_init(|| {
            self.routes
                .iter()
                .map(|r| metrics.http_route(dir, &self.service, &r.name))
                .chain(std::iter::once(metrics.http_route(
                    dir,
                    &self.service,
                    DEFAULT_ROUTE,
                )))
                .collect()
        });
        // `all` has one more element than `routes`: the default route is last.
        &all[found.unwrap_or(self.routes.len()).min(self.routes.len())]
    }
}

/// Index of a direction in [`RouteTable`]'s series.
fn slot(dir: Direction) -> usize {
    match dir {
        Direction::Outbound => 0,
        Direction::Inbound => 1,
    }
}

/// The bit of a configured method.
fn method_bit(m: HttpMethod) -> u16 {
    let i = HttpMethod::ALL.iter().position(|x| *x == m).unwrap_or(0);
    1 << i
}

/// The bit of a request's method; 0 (matched only by routes for any method) for extension
/// methods.
fn request_method_bit(m: &Method) -> u16 {
    let i = match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ => return 0,
    };
    1 << i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: serde_json::Value) -> RouteTable {
        let routes: Vec<HttpRoute> = serde_json::from_value(routes).unwrap();
        RouteTable::new("default/web".into(), &routes)
    }

    fn matched<'a>(t: &'a RouteTable, method: &str, path: &str) -> &'a str {
        t.name(t.find(&method.parse().unwrap(), path))
    }

    #[test]
    fn request_bits_follow_config_order() {
        for (i, m) in HttpMethod::ALL.iter().enumerate() {
            let parsed: Method = m.as_str().parse().unwrap();
            assert_eq!(request_method_bit(&parsed), 1 << i, "{m}");
            assert_eq!(method_bit(*m), 1 << i, "{m}");
        }
        assert_eq!(request_method_bit(&"PURGE".parse().unwrap()), 0);
    }

    #[test]
    fn longest_prefix_then_method_then_default() {
        let t = table(serde_json::json!([
            {"name": "root", "path_prefix": "/"},
            {"name": "users", "path_prefix": "/users"},
            {"name": "users-write", "path_prefix": "/users/", "methods": ["POST", "PUT"]},
            {"name": "user-photos", "path_prefix": "/users/photos", "methods": ["GET"]},
            {"name": "api", "path_prefix": "/api/v1", "methods": ["GET", "HEAD"]}
        ]));
        for (method, path, want) in [
            ("GET", "/users", "users"),
            ("GET", "/users/42", "users"),
            // Same prefix (the trailing slash is ignored): the route listing POST wins.
            ("POST", "/users", "users-write"),
            ("PUT", "/users/42", "users-write"),
            ("DELETE", "/users/42", "users"),
            // Longest prefix wins even over a method-specific shorter one.
            ("GET", "/users/photos/1", "user-photos"),
            // ...but only for its methods; then the next longest.
            ("POST", "/users/photos/1", "users-write"),
            ("PATCH", "/users/photos", "users"),
            // Segment boundaries: /usersettings is not under /users.
            ("GET", "/usersettings", "root"),
            ("GET", "/api/v1/things", "api"),
            ("HEAD", "/api/v1", "api"),
            ("POST", "/api/v1", "root"),
            ("PURGE", "/users/1", "users"),
            ("PURGE", "/api/v1", "root"),
            ("GET", "/", "root"),
        ] {
            assert_eq!(matched(&t, method, path), want, "{method} {path}");
        }
        // Without a catch-all route, unmatched requests take the default route.
        let t = table(serde_json::json!([
            {"name": "users", "path_prefix": "/users", "methods": ["GET"]}
        ]));
        assert_eq!(matched(&t, "GET", "/users/1"), "users");
        assert_eq!(matched(&t, "POST", "/users/1"), "default");
        assert_eq!(matched(&t, "GET", "/orders"), "default");
        assert_eq!(matched(&t, "GET", ""), "default");
    }

    #[test]
    fn equal_routes_keep_declaration_order() {
        let t = table(serde_json::json!([
            {"name": "first", "path_prefix": "/a"},
            {"name": "second", "path_prefix": "/a/"}
        ]));
        assert_eq!(matched(&t, "GET", "/a/b"), "first");
    }

    #[test]
    fn series_are_resolved_once_per_direction_with_default_last() {
        let t = table(serde_json::json!([
            {"name": "users", "path_prefix": "/users"}
        ]));
        let m = Metrics::new();
        let found = t.find(&Method::GET, "/users/1");
        t.series(Direction::Outbound, &m, found).request();
        t.series(Direction::Outbound, &m, found).request();
        t.series(Direction::Outbound, &m, None).request();
        t.series(Direction::Inbound, &m, found).request();
        // The same series as the registry's, so a new snapshot's table counts on.
        assert_eq!(
            m.http_route(Direction::Outbound, "default/web", "users")
                .requests(),
            2
        );
        assert_eq!(
            m.http_route(Direction::Outbound, "default/web", "default")
                .requests(),
            1
        );
        assert_eq!(
            m.http_route(Direction::Inbound, "default/web", "users")
                .requests(),
            1
        );
    }
}
