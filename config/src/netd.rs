//! The netd daemon's typed surfaces: the registry's objects as its API returns them, the request
//! bodies it accepts, the watch event format, the daemon's defaults, and validation that names
//! the offending field.
//!
//! Every type here tolerates unknown fields, so a newer daemon's records stay readable by an
//! older one and by sidecars that outlive an upgrade (a service's ports, routes and health
//! check are inside the stored and watched objects). Request bodies (`*Spec`, [`LeaseGrant`])
//! are refused when they carry one, at any depth, by the daemon's API decoder: a typo must not
//! be silently dropped. Field names are `snake_case` on the wire.
//!
//! This module owns no I/O: the daemon (`netd` crate) decides what is stored and when.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Default path of the daemon's API socket.
pub const DEFAULT_SOCKET: &str = "/run/netd/netd.sock";
/// Default directory of the embedded store.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/netd";
/// Default directory the daemon writes network conflists into.
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Default range that service virtual IPs are allocated from.
pub const DEFAULT_VIP_RANGE: &str = "10.96.0.0/16";
/// Namespace of a service when the request names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// DNS domain of services: `SVC.NAMESPACE.svc.<domain>`.
pub const DEFAULT_DOMAIN: &str = "netd.local";
/// Name of the network the daemon creates on first start.
pub const DEFAULT_NETWORK: &str = "netd";
/// Subnets of the default network.
pub const DEFAULT_NETWORK_SUBNETS: [&str; 2] = ["10.89.0.0/24", "fd00:89::/64"];
/// Bridge of the default network (the CNI plugin's default too).
pub const DEFAULT_BRIDGE: &str = "netd0";
/// Group whose members may use the API socket (besides root).
pub const SOCKET_GROUP: &str = "netd";
/// Environment variable that selects the API socket for the CLI.
pub const SOCKET_ENV: &str = "NETD_SOCKET";
/// Longest lease TTL accepted, in seconds (one day).
pub const MAX_LEASE_TTL_SECONDS: u64 = 86_400;
/// Largest endpoint weight accepted.
pub const MAX_WEIGHT: u32 = 1_000_000;

// ---------------------------------------------------------------------------------------------
// Networks

/// Request body of `POST /v1/networks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Network name: names the conflist (`<name>.conflist`) and what runtimes pass as `--network`.
    pub name: String,
    /// Subnets in CIDR form; one IPv4 and/or one IPv6 for dual stack.
    pub subnets: Vec<String>,
    /// Put a netd sidecar in every container of this network (later slice).
    #[serde(default)]
    pub mesh: bool,
    /// Forbid traffic between this network and other netd networks.
    #[serde(default)]
    pub isolate: bool,
    /// Bridge name (at most 15 characters); default: the first free `netdN`.
    #[serde(default)]
    pub bridge: Option<String>,
}

impl NetworkSpec {
    /// Checks the request and returns its subnets parsed. Overlaps with *other* networks are the
    /// registry's business: this only sees one request.
    pub fn validate(&self) -> Result<Vec<IpNet>, ConfigError> {
        validate_network_name("name", &self.name)?;
        if self.subnets.is_empty() {
            return Err(ConfigError::new(
                "subnets",
                "needs at least one subnet (e.g. 10.90.0.0/24)",
            ));
        }
        let mut parsed: Vec<IpNet> = Vec::with_capacity(self.subnets.len());
        for (i, s) in self.subnets.iter().enumerate() {
            let field = format!("subnets[{i}]");
            let net = parse_subnet(&field, s)?;
            if let Some(other) = parsed.iter().find(|o| overlaps(o, &net)) {
                return Err(ConfigError::new(
                    field,
                    format!("{net} overlaps {other} of the same network"),
                ));
            }
            parsed.push(net);
        }
        if let Some(b) = &self.bridge {
            validate_ifname("bridge", b)?;
        }
        Ok(parsed)
    }
}

/// A network as stored and returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Network name.
    pub name: String,
    /// Its subnets (network addresses, no host bits).
    pub subnets: Vec<IpNet>,
    /// Sidecars in every container (later slice).
    #[serde(default)]
    pub mesh: bool,
    /// No traffic to or from other netd networks.
    #[serde(default)]
    pub isolate: bool,
    /// Linux bridge the CNI plugin attaches containers to.
    pub bridge: String,
    /// Revision of the last change to this object.
    #[serde(default)]
    pub revision: u64,
}

/// Parses one subnet in CIDR form; rejects host bits and subnets too small to hold a gateway
/// and a container.
pub fn parse_subnet(field: &str, s: &str) -> Result<IpNet, ConfigError> {
    let net: IpNet = s.trim().parse().map_err(|_| {
        ConfigError::new(
            field,
            format!("{s:?} is not a valid CIDR (e.g. 10.90.0.0/24 or fd00:90::/64)"),
        )
    })?;
    if net.trunc() != net {
        return Err(ConfigError::new(
            field,
            format!("{net} has host bits set (did you mean {}?)", net.trunc()),
        ));
    }
    let host_bits = net.max_prefix_len() - net.prefix_len();
    if host_bits < 2 {
        return Err(ConfigError::new(
            field,
            format!("{net} is too small to hold a gateway and a container"),
        ));
    }
    Ok(net)
}

/// True when two subnets share an address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

// ---------------------------------------------------------------------------------------------
// Services

/// Application protocol of a service port; decides what the sidecar does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 or HTTP/2: balanced per request.
    Http,
    /// Opaque TCP: balanced per connection.
    #[default]
    Tcp,
    /// gRPC (HTTP/2): balanced per request.
    Grpc,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
            Protocol::Grpc => "grpc",
        })
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Ok(Protocol::Http),
            "tcp" => Ok(Protocol::Tcp),
            "grpc" => Ok(Protocol::Grpc),
            other => Err(format!(
                "{other:?} is not a protocol (use http, tcp or grpc)"
            )),
        }
    }
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// Optional port name (a DNS label), used in SRV records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port on the service's VIP (1-65535).
    #[serde(deserialize_with = "de_port")]
    pub port: u16,
    /// `http`, `tcp` (default) or `grpc`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Port published on the host for this service port (programmed with the VIP work).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_port"
    )]
    pub host_port: Option<u16>,
}

/// Request body of `POST /v1/services` (create, or replace the ports of an existing service;
/// its VIP never changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Service name (a DNS label).
    pub name: String,
    /// Namespace (a DNS label), default `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// At least one port.
    pub ports: Vec<ServicePort>,
    /// Active health check of the service's endpoints; none: endpoints stay `unknown`
    /// (balanced to). Replacing a service replaces its check too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

impl ServiceSpec {
    /// Checks names, ports and the health check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_dns_label("name", &self.name)?;
        validate_dns_label("namespace", &self.namespace)?;
        validate_ports(&self.ports)?;
        if let Some(hc) = &self.health_check {
            hc.validate("health_check")?;
        }
        Ok(())
    }
}

fn validate_ports(ports: &[ServicePort]) -> Result<(), ConfigError> {
    if ports.is_empty() {
        return Err(ConfigError::new(
            "ports",
            "needs at least one port (e.g. [{\"port\": 8080}])",
        ));
    }
    for (i, p) in ports.iter().enumerate() {
        if let Some(n) = &p.name {
            validate_dns_label(&format!("ports[{i}].name"), n)?;
            if ports[..i].iter().any(|q| q.name.as_deref() == Some(n)) {
                return Err(ConfigError::new(
                    format!("ports[{i}].name"),
                    format!("{n:?} is used by another port"),
                ));
            }
        }
        if ports[..i].iter().any(|q| q.port == p.port) {
            return Err(ConfigError::new(
                format!("ports[{i}].port"),
                format!("{} is listed twice", p.port),
            ));
        }
    }
    Ok(())
}

/// A service as stored and returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Virtual IP, allocated once and kept for the life of the service (and, because it is
    /// derived from the name, usually the same after the service is deleted and re-created).
    pub vip: IpAddr,
    /// Active health check of its endpoints, with defaults filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// HTTP routes: how the sidecars label this service's requests (set through
    /// `PUT /v1/services/{ns}/{name}/routes`; kept when the service's ports are replaced).
    /// Records written before routes existed have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<HttpRoute>,
    /// Revision of the last change to this object.
    #[serde(default)]
    pub revision: u64,
}

impl Service {
    /// Registry key: `namespace/name`.
    pub fn key(&self) -> String {
        service_key(&self.namespace, &self.name)
    }

    /// Fully qualified DNS name: `name.namespace.svc.<domain>`.
    pub fn dns_name(&self, domain: &str) -> String {
        format!("{}.{}.svc.{domain}", self.name, self.namespace)
    }
}

/// Registry key of a service.
pub fn service_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

// ---------------------------------------------------------------------------------------------
// HTTP routes

/// Most routes one service may declare: every route is a metrics series per direction, and
/// the sidecar scans them per request.
pub const MAX_ROUTES: usize = 64;
/// Longest route path prefix, in bytes.
pub const MAX_ROUTE_PREFIX_LEN: usize = 1024;
/// Route label of a request that matches none of its service's routes; no route may take it.
pub const DEFAULT_ROUTE: &str = "default";

/// An HTTP request method a route can match: the methods of RFC 9110 and PATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum HttpMethod {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
    /// `CONNECT`.
    Connect,
    /// `OPTIONS`.
    Options,
    /// `TRACE`.
    Trace,
    /// `PATCH`.
    Patch,
}

impl HttpMethod {
    /// Every method, in a fixed order (the sidecar's bit positions).
    pub const ALL: [HttpMethod; 9] = [
        HttpMethod::Get,
        HttpMethod::Head,
        HttpMethod::Post,
        HttpMethod::Put,
        HttpMethod::Delete,
        HttpMethod::Connect,
        HttpMethod::Options,
        HttpMethod::Trace,
        HttpMethod::Patch,
    ];

    /// The method's token, as on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Connect => "CONNECT",
            HttpMethod::Options => "OPTIONS",
            HttpMethod::Trace => "TRACE",
            HttpMethod::Patch => "PATCH",
        }
    }
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Methods are case-sensitive (RFC 9110): `get` is not `GET`.
impl FromStr for HttpMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HttpMethod::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a method a route can match: use GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE or PATCH (upper case)"
                )
            })
    }
}

impl TryFrom<String> for HttpMethod {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<HttpMethod> for &'static str {
    fn from(m: HttpMethod) -> Self {
        m.as_str()
    }
}

/// A named class of a service's HTTP requests, by path prefix and method: the sidecars label
/// the requests' metrics with the route they match (`route="users"`).
///
/// A route matches a request whose method it lists (any method when `methods` is empty) and
/// whose path (without the query) is the prefix or continues it after a `/`: `/users` matches
/// `/users`, `/users/` and `/users/42`, not `/usersettings`; a trailing `/` in the prefix is
/// ignored, so `/` matches every path. Of the routes that match, the one with the longest
/// prefix wins, and on equal prefixes the one that lists the method; requests that match no
/// route are labelled [`DEFAULT_ROUTE`]. Matching is byte-wise (case-sensitive, no
/// percent-decoding).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HttpRoute {
    /// Route name (a DNS label, unique in the service, not `default`): the `route` label.
    pub name: String,
    /// Path prefix, starting with `/`.
    pub path_prefix: String,
    /// Methods matched; empty: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<HttpMethod>,
}

impl HttpRoute {
    /// The prefix as it is compared, on `/` boundaries: without trailing slashes (`""` for
    /// `/`, which matches every path).
    pub fn match_prefix(&self) -> &str {
        self.path_prefix.trim_end_matches('/')
    }

    /// Whether `path` (without the query) is under this route's prefix.
    pub fn matches_path(&self, path: &str) -> bool {
        path_under(path, self.match_prefix())
    }
}

/// Whether `path` equals `prefix` or continues it with a `/` (`prefix` without a trailing
/// slash; `""` matches everything).
pub fn path_under(path: &str, prefix: &str) -> bool {
    path.len() >= prefix.len()
        && path.as_bytes().starts_with(prefix.as_bytes())
        && (path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/'
            || prefix.is_empty())
}

/// `NAME=PREFIX` or `NAME=PREFIX:METHOD,METHOD`, the form `netd expose --route` takes
/// (`users=/users:GET,POST`).
impl fmt::Display for HttpRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.path_prefix)?;
        for (i, m) in self.methods.iter().enumerate() {
            f.write_str(if i == 0 { ":" } else { "," })?;
            f.write_str(m.as_str())?;
        }
        Ok(())
    }
}

/// Parses the [`Display`](fmt::Display) form and checks the route on its own (names and
/// overlaps between routes are checked by [`validate_routes`]). A `:` followed by upper-case
/// letters and commas at the end starts the methods; any other `:` is part of the prefix.
impl FromStr for HttpRoute {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((name, rest)) = s.split_once('=') else {
            return Err(ConfigError::new(
                "routes",
                format!("{s:?} is not a route: use NAME=PREFIX or NAME=PREFIX:METHOD,METHOD (users=/users:GET,POST)"),
            ));
        };
        let (prefix, methods) = match rest.rsplit_once(':') {
            Some((p, m))
                if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase() || b == b',') =>
            {
                (p, Some(m))
            }
            _ => (rest, None),
        };
        let mut route = HttpRoute {
            name: name.to_string(),
            path_prefix: prefix.to_string(),
            methods: Vec::new(),
        };
        for (j, m) in methods.into_iter().flat_map(|m| m.split(',')).enumerate() {
            let method = m
                .parse()
                .map_err(|e| ConfigError::new(format!("routes[0].methods[{j}]"), e))?;
            route.methods.push(method);
        }
        validate_routes(std::slice::from_ref(&route))?;
        Ok(route)
    }
}

/// Request body of `PUT /v1/services/{ns}/{name}/routes`: the service's routes, replacing the
/// ones it had (an empty list removes them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesSpec {
    /// At most [`MAX_ROUTES`] routes.
    pub routes: Vec<HttpRoute>,
}

impl RoutesSpec {
    /// Checks every route and that no two overlap (see [`validate_routes`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_routes(&self.routes)
    }
}

/// Checks a service's routes: at most [`MAX_ROUTES`]; names are DNS labels, unique, not
/// `default`; prefixes start with `/` (visible ASCII, no `?` or `#`: they match the path
/// only); no method listed twice; and no route that another one would always win over
/// (the same prefix and both for any method, or a method in common). Fields are named
/// `routes[i].name`, `routes[i].path_prefix`, `routes[i].methods[j]`.
pub fn validate_routes(routes: &[HttpRoute]) -> Result<(), ConfigError> {
    if routes.len() > MAX_ROUTES {
        return Err(ConfigError::new(
            "routes",
            format!(
                "{} routes is more than the {MAX_ROUTES} a service may have",
                routes.len()
            ),
        ));
    }
    for (i, r) in routes.iter().enumerate() {
        let field = |f: &str| format!("routes[{i}].{f}");
        validate_dns_label(&field("name"), &r.name)?;
        if r.name == DEFAULT_ROUTE {
            return Err(ConfigError::new(
                field("name"),
                format!("{DEFAULT_ROUTE:?} is the label of requests that match no route: pick another name"),
            ));
        }
        if let Some(j) = routes[..i].iter().position(|q| q.name == r.name) {
            return Err(ConfigError::new(
                field("name"),
                format!("{:?} is also the name of routes[{j}]", r.name),
            ));
        }
        validate_path_prefix(&field("path_prefix"), &r.path_prefix)?;
        for (j, m) in r.methods.iter().enumerate() {
            if r.methods[..j].contains(m) {
                return Err(ConfigError::new(
                    format!("routes[{i}].methods[{j}]"),
                    format!("{m} is listed twice"),
                ));
            }
        }
        for (j, q) in routes[..i].iter().enumerate() {
            if q.match_prefix() != r.match_prefix() {
                continue;
            }
            if q.methods.is_empty() && r.methods.is_empty() {
                return Err(ConfigError::new(
                    field("path_prefix"),
                    format!(
                        "{:?} is also the prefix of routes[{j}] ({}), and both match any method: one would never match (list methods, or remove one)",
                        r.path_prefix, q.name
                    ),
                ));
            }
            if let Some(k) = r.methods.iter().position(|m| q.methods.contains(m)) {
                return Err(ConfigError::new(
                    format!("routes[{i}].methods[{k}]"),
                    format!(
                        "{} {} is also matched by routes[{j}] ({}) with the same prefix: a request matches one route",
                        r.methods[k], r.path_prefix, q.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A route's path prefix: starts with `/`, at most [`MAX_ROUTE_PREFIX_LEN`] bytes of visible
/// ASCII without `?` or `#`.
fn validate_path_prefix(field: &str, p: &str) -> Result<(), ConfigError> {
    let ok = p.starts_with('/')
        && p.len() <= MAX_ROUTE_PREFIX_LEN
        && p.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!(
                "{p:?} is not a valid path prefix: start with '/', at most {MAX_ROUTE_PREFIX_LEN} visible ASCII characters, no spaces, '?' or '#' (routes match the path, not the query)"
            ),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Health checks

/// Default time between two probes of one endpoint, in milliseconds.
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 2_000;
/// Default time one probe may take, in milliseconds.
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 1_000;
/// Default consecutive failures that make an endpoint unhealthy.
pub const DEFAULT_UNHEALTHY_AFTER: u32 = 3;
/// Default consecutive successes that make an endpoint healthy.
pub const DEFAULT_HEALTHY_AFTER: u32 = 2;
/// Default request path of HTTP checks.
pub const DEFAULT_HEALTH_PATH: &str = "/";
/// Shortest probe interval accepted, in milliseconds.
pub const MIN_HEALTH_INTERVAL_MS: u64 = 100;
/// Longest probe interval accepted, in milliseconds (one hour).
pub const MAX_HEALTH_INTERVAL_MS: u64 = 3_600_000;
/// Shortest probe timeout accepted, in milliseconds.
pub const MIN_HEALTH_TIMEOUT_MS: u64 = 10;
/// Largest `healthy_after` / `unhealthy_after` accepted.
pub const MAX_HEALTH_THRESHOLD: u32 = 100;
/// Longest HTTP check path accepted, in bytes.
pub const MAX_HEALTH_PATH_LEN: usize = 1024;

/// How an endpoint is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// A TCP connect to `address:port` succeeds.
    Tcp,
    /// `GET <path>` over HTTP/1.1 answers 2xx or 3xx.
    Http,
}

impl fmt::Display for HealthCheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthCheckKind::Tcp => "tcp",
            HealthCheckKind::Http => "http",
        })
    }
}

/// Active health check of a service's endpoints.
///
/// An endpoint turns `unhealthy` after `unhealthy_after` consecutive failed probes and
/// `healthy` after `healthy_after` consecutive successful ones; in between it keeps its
/// health, so a single lost probe does not flap it. A probe that does not finish within
/// `timeout_ms` fails.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HealthCheck {
    /// `tcp` or `http`.
    pub kind: HealthCheckKind,
    /// Request path of `http` checks (default `/`); `tcp` checks have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between two probes of one endpoint, in milliseconds (default 2000).
    #[serde(default = "default_health_interval_ms")]
    pub interval_ms: u64,
    /// Time one probe may take, in milliseconds (default 1000, at most `interval_ms`).
    #[serde(default = "default_health_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failures that make an endpoint unhealthy (default 3).
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
    /// Consecutive successes that make an endpoint healthy (default 2).
    #[serde(default = "default_healthy_after")]
    pub healthy_after: u32,
}

fn default_health_interval_ms() -> u64 {
    DEFAULT_HEALTH_INTERVAL_MS
}

fn default_health_timeout_ms() -> u64 {
    DEFAULT_HEALTH_TIMEOUT_MS
}

fn default_unhealthy_after() -> u32 {
    DEFAULT_UNHEALTHY_AFTER
}

fn default_healthy_after() -> u32 {
    DEFAULT_HEALTHY_AFTER
}

impl HealthCheck {
    /// A check of `kind` with every default (`http` checks get path `/`).
    pub fn new(kind: HealthCheckKind) -> Self {
        Self {
            kind,
            path: (kind == HealthCheckKind::Http).then(|| DEFAULT_HEALTH_PATH.to_string()),
            interval_ms: DEFAULT_HEALTH_INTERVAL_MS,
            timeout_ms: DEFAULT_HEALTH_TIMEOUT_MS,
            unhealthy_after: DEFAULT_UNHEALTHY_AFTER,
            healthy_after: DEFAULT_HEALTHY_AFTER,
        }
    }

    /// Checks the values; `field` is the path of the check in the request (`health_check`).
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if let Some(p) = &self.path {
            let f = format!("{field}.path");
            if self.kind != HealthCheckKind::Http {
                return Err(ConfigError::new(
                    f,
                    format!("only http checks have a path (this one is {})", self.kind),
                ));
            }
            validate_http_path(&f, p)?;
        }
        if !(MIN_HEALTH_INTERVAL_MS..=MAX_HEALTH_INTERVAL_MS).contains(&self.interval_ms) {
            return Err(ConfigError::new(
                format!("{field}.interval_ms"),
                format!(
                    "{} is out of range {MIN_HEALTH_INTERVAL_MS}-{MAX_HEALTH_INTERVAL_MS}",
                    self.interval_ms
                ),
            ));
        }
        if self.timeout_ms < MIN_HEALTH_TIMEOUT_MS {
            return Err(ConfigError::new(
                format!("{field}.timeout_ms"),
                format!(
                    "{} is below the minimum of {MIN_HEALTH_TIMEOUT_MS}",
                    self.timeout_ms
                ),
            ));
        }
        if self.timeout_ms > self.interval_ms {
            return Err(ConfigError::new(
                format!("{field}.timeout_ms"),
                format!(
                    "{} exceeds interval_ms ({}): a probe must end before the next is due",
                    self.timeout_ms, self.interval_ms
                ),
            ));
        }
        for (name, v) in [
            ("unhealthy_after", self.unhealthy_after),
            ("healthy_after", self.healthy_after),
        ] {
            if v == 0 || v > MAX_HEALTH_THRESHOLD {
                return Err(ConfigError::new(
                    format!("{field}.{name}"),
                    format!("{v} is out of range 1-{MAX_HEALTH_THRESHOLD} (consecutive probes)"),
                ));
            }
        }
        Ok(())
    }

    /// The same check with defaults made explicit (an `http` check without a path gets `/`),
    /// as it is stored.
    pub fn normalized(mut self) -> Self {
        if self.kind == HealthCheckKind::Http && self.path.is_none() {
            self.path = Some(DEFAULT_HEALTH_PATH.to_string());
        }
        self
    }

    /// Request path of an `http` check.
    pub fn http_path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_HEALTH_PATH)
    }
}

/// `tcp`, or `http` with its path (`http:/healthz`): the form `netd expose --health-check`
/// takes.
impl fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            HealthCheckKind::Tcp => f.write_str("tcp"),
            HealthCheckKind::Http => write!(f, "http:{}", self.http_path()),
        }
    }
}

/// Parses `tcp`, `http` or `http:PATH` into a check with default timing.
impl FromStr for HealthCheck {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, path) = match s.split_once(':') {
            Some((k, p)) => (k, Some(p)),
            None => (s, None),
        };
        let kind = match kind.to_ascii_lowercase().as_str() {
            "tcp" => HealthCheckKind::Tcp,
            "http" => HealthCheckKind::Http,
            _ => {
                return Err(ConfigError::new(
                    "health_check.kind",
                    format!("{s:?} is not a health check: use tcp, http or http:/PATH"),
                ))
            }
        };
        let mut hc = Self::new(kind);
        if let Some(p) = path {
            hc.path = Some(p.to_string());
        }
        hc.validate("health_check")?;
        Ok(hc)
    }
}

/// An HTTP request path: starts with `/`, at most [`MAX_HEALTH_PATH_LEN`] bytes of visible
/// ASCII (no spaces or control characters, which would break the request line).
fn validate_http_path(field: &str, p: &str) -> Result<(), ConfigError> {
    let ok = p.starts_with('/')
        && p.len() <= MAX_HEALTH_PATH_LEN
        && p.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!(
                "{p:?} is not a valid request path: start with '/', at most {MAX_HEALTH_PATH_LEN} visible ASCII characters, no spaces (percent-encode them)"
            ),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Endpoints

/// Health of an endpoint: set by the daemon's active health check when its service has one,
/// else whatever its registrant said (`unknown` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Passed its last check.
    Healthy,
    /// Failed its last check: not balanced to.
    Unhealthy,
    /// Not checked yet: balanced to.
    #[default]
    Unknown,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Unknown => "unknown",
        })
    }
}

/// Request body of `POST /v1/services/{namespace}/{name}/endpoints` (register or replace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    /// Endpoint id, unique within its service; default `address:port` (`[v6]:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Address the service answers on.
    pub address: IpAddr,
    /// Port the service answers on (1-65535).
    #[serde(deserialize_with = "de_port")]
    pub port: u16,
    /// Node that runs it; default: the daemon's node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Container that runs it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Initial health (default `unknown`).
    #[serde(default)]
    pub health: Health,
    /// Relative balancing weight, 1 to 1000000 (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Lease that owns the endpoint: when it expires or is revoked, the endpoint goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
}

impl EndpointSpec {
    /// Checks the request and returns the endpoint id (given or derived).
    pub fn validate(&self) -> Result<String, ConfigError> {
        let id = match &self.id {
            Some(id) => {
                validate_key_part("id", id)?;
                id.clone()
            }
            None => endpoint_id(self.address, self.port),
        };
        if let Some(n) = &self.node {
            validate_key_part("node", n)?;
        }
        if let Some(c) = &self.container_id {
            validate_container_id("container_id", c)?;
        }
        if self.weight == 0 || self.weight > MAX_WEIGHT {
            return Err(ConfigError::new(
                "weight",
                format!(
                    "{} is out of range 1-{MAX_WEIGHT} (mark the endpoint unhealthy to take it out of rotation)",
                    self.weight
                ),
            ));
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.len() > 253 || k.chars().any(|c| c.is_control()) {
                return Err(ConfigError::new(
                    format!("labels.{k}"),
                    "label keys are 1-253 printable characters",
                ));
            }
            if v.len() > 1024 {
                return Err(ConfigError::new(
                    format!("labels.{k}"),
                    "label values are at most 1024 bytes",
                ));
            }
        }
        Ok(id)
    }
}

/// Default endpoint id: `address:port`, with IPv6 addresses in brackets.
pub fn endpoint_id(address: IpAddr, port: u16) -> String {
    SocketAddr::new(address, port).to_string()
}

fn default_weight() -> u32 {
    1
}

/// An endpoint as stored and returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Id, unique within the service.
    pub id: String,
    /// Service name.
    pub service: String,
    /// Service namespace.
    pub namespace: String,
    /// Address.
    pub address: IpAddr,
    /// Port.
    pub port: u16,
    /// Node that runs it.
    pub node: String,
    /// Container that runs it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Health.
    #[serde(default)]
    pub health: Health,
    /// Balancing weight.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Owning lease, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// Revision of the last change to this object.
    #[serde(default)]
    pub revision: u64,
}

impl Endpoint {
    /// Registry key: `namespace/service/id`.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.service, self.id)
    }

    /// Key of the service it belongs to.
    pub fn service_key(&self) -> String {
        service_key(&self.namespace, &self.service)
    }
}

// ---------------------------------------------------------------------------------------------
// Leases

/// Request body of `POST /v1/leases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// Time to live in seconds (1 to 86400); each keepalive restarts it.
    pub ttl_seconds: u64,
}

impl LeaseGrant {
    /// Checks the TTL.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl_seconds == 0 || self.ttl_seconds > MAX_LEASE_TTL_SECONDS {
            return Err(ConfigError::new(
                "ttl_seconds",
                format!(
                    "{} is out of range 1-{MAX_LEASE_TTL_SECONDS}",
                    self.ttl_seconds
                ),
            ));
        }
        Ok(())
    }
}

/// A lease as returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Lease id.
    pub id: u64,
    /// Time to live in seconds.
    pub ttl_seconds: u64,
    /// When it expires unless kept alive: Unix time in milliseconds.
    pub expires_at: u64,
}

// ---------------------------------------------------------------------------------------------
// Attachments (reported by the CNI plugin)

/// Request body of `POST /v1/attachments`: a container attached to a netd network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentSpec {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// Network name (must exist).
    pub network: String,
    /// `CNI_NETNS`.
    #[serde(default)]
    pub netns: String,
    /// The container's addresses, plain or in CIDR form as in CNI results.
    #[serde(default)]
    pub ips: Vec<String>,
    /// DNS names of the container (container name, aliases, pod name).
    #[serde(default)]
    pub names: Vec<String>,
    /// `NETD_SERVICE`: `name:port[,name:port]` (`namespace/name:port` for another namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// Checked contents of an [`AttachmentSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidAttachment {
    /// Addresses without prefix lengths.
    pub ips: Vec<IpAddr>,
    /// Services the container serves.
    pub services: Vec<ServiceRef>,
}

impl AttachmentSpec {
    /// Checks the request and parses its addresses and services.
    pub fn validate(&self) -> Result<ValidAttachment, ConfigError> {
        validate_container_id("container_id", &self.container_id)?;
        validate_ifname("ifname", &self.ifname)?;
        validate_network_name("network", &self.network)?;
        let mut ips = Vec::with_capacity(self.ips.len());
        for (i, s) in self.ips.iter().enumerate() {
            let ip = s
                .split_once('/')
                .map_or(s.as_str(), |(a, _)| a)
                .parse::<IpAddr>()
                .map_err(|_| {
                    ConfigError::new(format!("ips[{i}]"), format!("{s:?} is not an IP address"))
                })?;
            ips.push(ip);
        }
        for (i, n) in self.names.iter().enumerate() {
            validate_dns_name(&format!("names[{i}]"), n)?;
        }
        let services = match &self.service {
            Some(s) if !s.trim().is_empty() => {
                if ips.is_empty() {
                    return Err(ConfigError::new(
                        "ips",
                        "a container that serves a service needs an address",
                    ));
                }
                parse_service_refs("service", s)?
            }
            _ => Vec::new(),
        };
        Ok(ValidAttachment { ips, services })
    }
}

/// One `name:port` of `NETD_SERVICE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRef {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Port the container serves it on.
    pub port: u16,
}

/// Parses `name:port[,name:port]` (each name optionally `namespace/name`).
pub fn parse_service_refs(field: &str, s: &str) -> Result<Vec<ServiceRef>, ConfigError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || {
            ConfigError::new(
                field,
                format!("{part:?} is not name:port (e.g. web:8080 or shop/web:8080)"),
            )
        };
        let (name, port) = part.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        let (namespace, name) = name.split_once('/').unwrap_or((DEFAULT_NAMESPACE, name));
        validate_dns_label(field, namespace)?;
        validate_dns_label(field, name)?;
        out.push(ServiceRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
            port,
        });
    }
    Ok(out)
}

/// An attachment as stored and returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Container id.
    pub container_id: String,
    /// Interface name inside the container.
    pub ifname: String,
    /// Network.
    pub network: String,
    /// Network namespace path.
    #[serde(default)]
    pub netns: String,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// DNS names.
    #[serde(default)]
    pub names: Vec<String>,
    /// Services it serves.
    #[serde(default)]
    pub services: Vec<ServiceRef>,
    /// Keys (`namespace/service/id`) of the endpoints registered for it; removed with it.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Node whose daemon it was reported to: with a registry shared by several nodes, only
    /// that node can tell whether the container still lives. Empty in records written before
    /// attachments carried it.
    #[serde(default)]
    pub node: String,
    /// Revision of the last change to this object.
    #[serde(default)]
    pub revision: u64,
}

impl Attachment {
    /// Registry key: `container_id/ifname`.
    pub fn key(&self) -> String {
        attachment_key(&self.container_id, &self.ifname)
    }
}

/// Registry key of an attachment.
pub fn attachment_key(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}

// ---------------------------------------------------------------------------------------------
// Watch events

/// One registry object, tagged with its kind: `{"kind": "service", "object": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "object", rename_all = "lowercase")]
pub enum Object {
    /// A network.
    Network(Network),
    /// A service.
    Service(Service),
    /// An endpoint.
    Endpoint(Endpoint),
    /// A container attachment.
    Attachment(Attachment),
}

impl Object {
    /// Kind name as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Network(_) => "network",
            Object::Service(_) => "service",
            Object::Endpoint(_) => "endpoint",
            Object::Attachment(_) => "attachment",
        }
    }

    /// Key, unique within the kind.
    pub fn key(&self) -> String {
        match self {
            Object::Network(n) => n.name.clone(),
            Object::Service(s) => s.key(),
            Object::Endpoint(e) => e.key(),
            Object::Attachment(a) => a.key(),
        }
    }
}

/// One line of `GET /v1/watch` (newline-delimited JSON).
///
/// A stream starts with either the changes after the requested revision, or (when that is 0,
/// too old or unknown) a `reset` followed by a `put` of every object; then a `synced` marks
/// that the client is up to date, and live changes follow. All events of one revision are
/// sent together; a delete carries the object as it was last stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    /// An object was created or replaced (or exists, within a snapshot).
    Put {
        /// Revision of the change (of the snapshot, within a snapshot).
        revision: u64,
        /// The object.
        #[serde(flatten)]
        object: Object,
    },
    /// An object was deleted.
    Delete {
        /// Revision of the change.
        revision: u64,
        /// The object as it was.
        #[serde(flatten)]
        object: Object,
    },
    /// Forget everything: a full snapshot at `revision` follows.
    Reset {
        /// Revision of the snapshot that follows.
        revision: u64,
    },
    /// The client has seen everything up to `revision`.
    Synced {
        /// Current revision.
        revision: u64,
    },
}

impl Event {
    /// Revision the event belongs to.
    pub fn revision(&self) -> u64 {
        match self {
            Event::Put { revision, .. }
            | Event::Delete { revision, .. }
            | Event::Reset { revision }
            | Event::Synced { revision } => *revision,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Status and errors

/// Response of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Daemon version.
    pub version: String,
    /// Node name.
    pub node: String,
    /// API socket path.
    pub socket: String,
    /// Store backend and where it lives.
    pub store: StoreStatus,
    /// Current registry revision.
    pub revision: u64,
    /// Networks by name.
    pub networks: Vec<String>,
    /// Number of services.
    pub services: usize,
    /// Number of endpoints.
    pub endpoints: usize,
    /// Number of live leases.
    pub leases: usize,
    /// Number of container attachments.
    pub attachments: usize,
    /// Open watch streams.
    pub watchers: usize,
    /// Range service VIPs come from.
    pub vip_range: String,
    /// DNS domain of services.
    pub domain: String,
    /// Seconds since the daemon started.
    pub uptime_seconds: u64,
    /// netd's DNS server (empty from daemons that predate it).
    #[serde(default)]
    pub dns: DnsStatus,
}

/// DNS part of [`Status`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStatus {
    /// Addresses answering DNS over UDP and TCP right now (`127.0.0.1:5353`, `10.89.0.1:53`).
    pub listeners: Vec<String>,
    /// Where other names are forwarded, in order.
    pub upstreams: Vec<String>,
    /// Names answered from the registry (all name forms, including zone apexes).
    pub names: usize,
}

/// Store part of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// `embedded` (later: `etcd`).
    pub backend: String,
    /// File path or endpoints.
    pub location: String,
}

/// Body of every error response: `{"error": "...", "field": "ports[0].port"}` (`field` is null
/// when the error is not about one field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What failed and, where possible, what to do.
    pub error: String,
    /// Path of the offending request field.
    pub field: Option<String>,
}

/// Body of a successful delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// Kind of the deleted object.
    pub kind: String,
    /// Its key.
    pub key: String,
    /// Revision of the deletion (unchanged when there was nothing to delete).
    pub revision: u64,
    /// False when it did not exist (idempotent deletes only).
    pub existed: bool,
}

// ---------------------------------------------------------------------------------------------
// Field validation

/// A DNS label: 1-63 of `a-z0-9-`, not starting or ending with `-`.
pub fn validate_dns_label(field: &str, s: &str) -> Result<(), ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!(
                "{s:?} is not a valid name: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
            ),
        ))
    }
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`, at most 253 characters.
pub fn validate_dns_name(field: &str, s: &str) -> Result<(), ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{s:?} is not a valid DNS name"),
        ))
    }
}

/// A network name: 1-64 of `a-zA-Z0-9_.-`, starting with a letter or digit.
pub fn validate_network_name(field: &str, s: &str) -> Result<(), ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!(
                "{s:?} is not a valid network name: use 1-64 letters, digits, '-', '_' and '.', starting with a letter or digit"
            ),
        ))
    }
}

/// A Linux interface name ([`crate::names::check_ifname`]).
pub fn validate_ifname(field: &str, s: &str) -> Result<(), ConfigError> {
    crate::names::check_ifname(s).map_err(|m| ConfigError::new(field, m))
}

/// A container id ([`crate::names::check_container_id`]).
pub fn validate_container_id(field: &str, s: &str) -> Result<(), ConfigError> {
    crate::names::check_container_id(s).map_err(|m| ConfigError::new(field, m))
}

/// Part of a registry key (endpoint id, node name): 1-253 printable characters, no `/`.
pub fn validate_key_part(field: &str, s: &str) -> Result<(), ConfigError> {
    let ok =
        !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{s:?} is not valid: use 1-253 printable characters without '/' or spaces"),
        ))
    }
}

/// Deserializes a port, refusing 0 and anything above 65535 with a message that says so.
fn de_port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    d.deserialize_any(PortVisitor)
}

fn de_opt_port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    d.deserialize_option(OptPortVisitor)
}

struct PortVisitor;

impl serde::de::Visitor<'_> for PortVisitor {
    type Value = u16;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port number 1-65535")
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u16, E> {
        match u16::try_from(v) {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(E::custom(format!("{v} is not a valid port (use 1-65535)"))),
        }
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u16, E> {
        match u64::try_from(v) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(E::custom(format!("{v} is not a valid port (use 1-65535)"))),
        }
    }
}

struct OptPortVisitor;

impl<'de> serde::de::Visitor<'de> for OptPortVisitor {
    type Value = Option<u16>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port number 1-65535 or null")
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        de_port(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_spec_defaults_and_errors() {
        let s: ServiceSpec =
            serde_json::from_str(r#"{"name":"web","ports":[{"port":80}]}"#).unwrap();
        assert_eq!(s.namespace, "default");
        assert_eq!(s.ports[0].protocol, Protocol::Tcp);
        s.validate().unwrap();
        for bad in [
            r#"{"name":"web","ports":[{"port":0}]}"#,
            r#"{"name":"web","ports":[{"port":70000}]}"#,
        ] {
            let e = serde_json::from_str::<ServiceSpec>(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a valid port"), "{e}");
        }
        // Unknown fields: tolerated by the type (the API decoder refuses them).
        assert!(serde_json::from_str::<ServiceSpec>(r#"{"name":"web","ports":[],"x":1}"#).is_ok());
        let s: ServiceSpec =
            serde_json::from_str(r#"{"name":"Web","ports":[{"port":80}]}"#).unwrap();
        assert_eq!(s.validate().unwrap_err().field, "name");
        let s: ServiceSpec =
            serde_json::from_str(r#"{"name":"web","ports":[{"port":80},{"port":80}]}"#).unwrap();
        assert_eq!(s.validate().unwrap_err().field, "ports[1].port");
    }

    #[test]
    fn health_check_defaults_and_errors() {
        let s: ServiceSpec = serde_json::from_str(
            r#"{"name":"web","ports":[{"port":80}],"health_check":{"kind":"http"}}"#,
        )
        .unwrap();
        s.validate().unwrap();
        let hc = s.health_check.unwrap();
        assert_eq!(
            (
                hc.interval_ms,
                hc.timeout_ms,
                hc.unhealthy_after,
                hc.healthy_after
            ),
            (2000, 1000, 3, 2)
        );
        assert_eq!(hc.path, None);
        assert_eq!(hc.clone().normalized().path.as_deref(), Some("/"));
        assert_eq!(hc.http_path(), "/");
        let bad = |json: &str| {
            let hc: HealthCheck = serde_json::from_str(json).unwrap();
            hc.validate("health_check").unwrap_err().field
        };
        assert_eq!(bad(r#"{"kind":"tcp","path":"/x"}"#), "health_check.path");
        assert_eq!(bad(r#"{"kind":"http","path":"x"}"#), "health_check.path");
        assert_eq!(bad(r#"{"kind":"http","path":"/a b"}"#), "health_check.path");
        assert_eq!(
            bad(r#"{"kind":"tcp","interval_ms":5}"#),
            "health_check.interval_ms"
        );
        assert_eq!(
            bad(r#"{"kind":"tcp","timeout_ms":3000}"#),
            "health_check.timeout_ms"
        );
        assert_eq!(
            bad(r#"{"kind":"tcp","timeout_ms":1}"#),
            "health_check.timeout_ms"
        );
        assert_eq!(
            bad(r#"{"kind":"tcp","healthy_after":0}"#),
            "health_check.healthy_after"
        );
        assert_eq!(
            bad(r#"{"kind":"tcp","unhealthy_after":101}"#),
            "health_check.unhealthy_after"
        );
        assert!(serde_json::from_str::<HealthCheck>(r#"{"kind":"udp"}"#).is_err());
        assert!(serde_json::from_str::<HealthCheck>(r#"{"kind":"tcp","x":1}"#).is_ok());
    }

    #[test]
    fn health_check_flag_form() {
        let tcp: HealthCheck = "tcp".parse().unwrap();
        assert_eq!(tcp, HealthCheck::new(HealthCheckKind::Tcp));
        assert_eq!(tcp.to_string(), "tcp");
        let http: HealthCheck = "http".parse().unwrap();
        assert_eq!(http.path.as_deref(), Some("/"));
        let hz: HealthCheck = "HTTP:/healthz?full=1".parse().unwrap();
        assert_eq!(hz.kind, HealthCheckKind::Http);
        assert_eq!(hz.to_string(), "http:/healthz?full=1");
        assert_eq!(hz.to_string().parse::<HealthCheck>().unwrap(), hz);
        assert_eq!(
            "udp".parse::<HealthCheck>().unwrap_err().field,
            "health_check.kind"
        );
        assert_eq!(
            "http:x".parse::<HealthCheck>().unwrap_err().field,
            "health_check.path"
        );
        assert_eq!(
            "tcp:/x".parse::<HealthCheck>().unwrap_err().field,
            "health_check.path"
        );
    }

    fn routes(json: serde_json::Value) -> RoutesSpec {
        serde_json::from_value(json!({ "routes": json })).unwrap()
    }

    #[test]
    fn routes_wire_format_and_defaults() {
        let r = routes(json!([
            {"name": "users", "path_prefix": "/users", "methods": ["GET", "POST"]},
            {"name": "root", "path_prefix": "/"}
        ]));
        r.validate().unwrap();
        assert_eq!(r.routes[0].methods, [HttpMethod::Get, HttpMethod::Post]);
        assert!(r.routes[1].methods.is_empty());
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(
            back,
            json!({"routes": [
                {"name": "users", "path_prefix": "/users", "methods": ["GET", "POST"]},
                {"name": "root", "path_prefix": "/"}
            ]})
        );
        // Unknown methods are refused when decoding; unknown fields are tolerated by the type
        // (a newer daemon's), the API decoder refuses them in request bodies.
        let bad = |v: serde_json::Value| {
            serde_json::from_value::<RoutesSpec>(json!({ "routes": [v] }))
                .unwrap_err()
                .to_string()
        };
        let newer: RoutesSpec = serde_json::from_value(
            json!({"routes": [{"name": "a", "path_prefix": "/", "weight": 3}]}),
        )
        .unwrap();
        assert_eq!(newer.routes[0].name, "a");
        let e = bad(json!({"name": "a", "path_prefix": "/", "methods": ["get"]}));
        assert!(e.contains("\"get\" is not a method"), "{e}");
        assert!(serde_json::from_value::<RoutesSpec>(json!({"routes": [], "x": 1})).is_ok());
    }

    #[test]
    fn old_service_records_without_routes_still_load() {
        let s: Service = serde_json::from_str(
            r#"{"name":"web","namespace":"default","ports":[{"port":80}],"vip":"10.96.0.1","revision":4}"#,
        )
        .unwrap();
        assert!(s.routes.is_empty());
        // And a service without routes is written as before.
        assert!(!serde_json::to_string(&s).unwrap().contains("routes"));
    }

    #[test]
    fn route_validation_names_every_bad_field() {
        let bad = |v: serde_json::Value| {
            let e = routes(v).validate().unwrap_err();
            (e.field, e.message)
        };
        let r = |name: &str, prefix: &str, methods: &[&str]| json!({"name": name, "path_prefix": prefix, "methods": methods});
        let cases = [
            (
                json!([r("Users", "/u", &[])]),
                "routes[0].name",
                "not a valid name",
            ),
            (
                json!([r("", "/u", &[])]),
                "routes[0].name",
                "not a valid name",
            ),
            (
                json!([r("default", "/u", &[])]),
                "routes[0].name",
                "match no route",
            ),
            (
                json!([r("a", "/a", &[]), r("a", "/b", &[])]),
                "routes[1].name",
                "also the name of routes[0]",
            ),
            (
                json!([r("a", "a", &[])]),
                "routes[0].path_prefix",
                "start with '/'",
            ),
            (
                json!([r("a", "", &[])]),
                "routes[0].path_prefix",
                "start with '/'",
            ),
            (
                json!([r("a", "/a b", &[])]),
                "routes[0].path_prefix",
                "no spaces",
            ),
            (
                json!([r("a", "/a?x=1", &[])]),
                "routes[0].path_prefix",
                "'?'",
            ),
            (json!([r("a", "/a#x", &[])]), "routes[0].path_prefix", "'?'"),
            (
                json!([r(
                    "a",
                    &format!("/{}", "x".repeat(MAX_ROUTE_PREFIX_LEN)),
                    &[]
                )]),
                "routes[0].path_prefix",
                "at most",
            ),
            (
                json!([r("a", "/a", &["GET", "GET"])]),
                "routes[0].methods[1]",
                "listed twice",
            ),
            (
                json!([r("a", "/a", &[]), r("b", "/a/", &[])]),
                "routes[1].path_prefix",
                "never match",
            ),
            (
                json!([
                    r("a", "/a", &["GET", "PUT"]),
                    r("b", "/a", &["POST", "PUT"])
                ]),
                "routes[1].methods[1]",
                "PUT /a is also matched by routes[0] (a)",
            ),
        ];
        for (v, field, message) in cases {
            let (f, m) = bad(v.clone());
            assert_eq!(f, field, "{v}: {m}");
            assert!(m.contains(message), "{v}: {m}");
        }
        let many: Vec<_> = (0..=MAX_ROUTES)
            .map(|i| r(&format!("r{i}"), &format!("/{i}"), &[]))
            .collect();
        assert_eq!(bad(json!(many)).0, "routes");
        // Same prefix with disjoint methods, or one of them for any method, is fine.
        routes(json!([
            r("read", "/a", &["GET", "HEAD"]),
            r("write", "/a", &["POST"]),
            r("other", "/a", &[]),
            r("b", "/a/b", &[])
        ]))
        .validate()
        .unwrap();
    }

    #[test]
    fn route_flag_form() {
        let u: HttpRoute = "users=/users:GET,POST".parse().unwrap();
        assert_eq!(
            u,
            HttpRoute {
                name: "users".into(),
                path_prefix: "/users".into(),
                methods: vec![HttpMethod::Get, HttpMethod::Post],
            }
        );
        assert_eq!(u.to_string(), "users=/users:GET,POST");
        let any: HttpRoute = "all=/".parse().unwrap();
        assert!(any.methods.is_empty());
        assert_eq!(any.to_string(), "all=/");
        // A colon that does not start a method list belongs to the prefix.
        let colon: HttpRoute = "v1=/api/v1:batch".parse().unwrap();
        assert_eq!(colon.path_prefix, "/api/v1:batch");
        let err = |s: &str| s.parse::<HttpRoute>().unwrap_err();
        assert_eq!(err("users").field, "routes");
        assert_eq!(err("users=/u:GET,FETCH").field, "routes[0].methods[1]");
        assert_eq!(err("Users=/u").field, "routes[0].name");
        assert_eq!(err("users=u").field, "routes[0].path_prefix");
        assert_eq!(err("users=/u:GET,GET").field, "routes[0].methods[1]");
    }

    #[test]
    fn route_prefixes_match_on_segment_boundaries() {
        let route = |p: &str| HttpRoute {
            name: "r".into(),
            path_prefix: p.into(),
            methods: Vec::new(),
        };
        let users = route("/users");
        for (path, want) in [
            ("/users", true),
            ("/users/", true),
            ("/users/42", true),
            ("/usersettings", false),
            ("/user", false),
            ("/", false),
        ] {
            assert_eq!(users.matches_path(path), want, "{path}");
        }
        assert!(route("/users/").matches_path("/users"));
        assert!(route("/").matches_path("/anything"));
        assert!(route("/").matches_path("/"));
    }

    #[test]
    fn network_spec_subnets() {
        let spec = |subnets: &[&str]| NetworkSpec {
            name: "n1".into(),
            subnets: subnets.iter().map(|s| s.to_string()).collect(),
            mesh: false,
            isolate: false,
            bridge: None,
        };
        assert_eq!(
            spec(&["10.1.0.0/24", "fd00:1::/64"])
                .validate()
                .unwrap()
                .len(),
            2
        );
        let e = spec(&["10.300.0.0/24"]).validate().unwrap_err();
        assert_eq!(e.field, "subnets[0]");
        let e = spec(&["10.1.0.0/24", "10.1.0.5/24"])
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "subnets[1]");
        assert!(e.message.contains("host bits"), "{e}");
        let e = spec(&["10.1.0.0/16", "10.1.2.0/24"])
            .validate()
            .unwrap_err();
        assert!(e.message.contains("overlaps"), "{e}");
        let e = spec(&["10.1.0.0/31"]).validate().unwrap_err();
        assert!(e.message.contains("too small"), "{e}");
    }

    #[test]
    fn service_refs() {
        let r = parse_service_refs("service", "web:8080, shop/cart:81").unwrap();
        assert_eq!(r[0].namespace, "default");
        assert_eq!(r[1].namespace, "shop");
        assert_eq!(r[1].port, 81);
        assert!(parse_service_refs("service", "web").is_err());
        assert!(parse_service_refs("service", "web:0").is_err());
        assert!(parse_service_refs("service", "Web:80").is_err());
    }

    #[test]
    fn event_wire_format() {
        let e = Event::Delete {
            revision: 7,
            object: Object::Network(Network {
                name: "n".into(),
                subnets: vec!["10.1.0.0/24".parse().unwrap()],
                mesh: false,
                isolate: false,
                bridge: "netd1".into(),
                revision: 3,
            }),
        };
        let s = serde_json::to_string(&e).unwrap();
        assert!(
            s.starts_with(r#"{"type":"delete","revision":7,"kind":"network","object":{"#),
            "{s}"
        );
        assert_eq!(serde_json::from_str::<Event>(&s).unwrap(), e);
        let r = serde_json::to_string(&Event::Synced { revision: 9 }).unwrap();
        assert_eq!(r, r#"{"type":"synced","revision":9}"#);
        assert_eq!(
            serde_json::from_str::<Event>(&r).unwrap(),
            Event::Synced { revision: 9 }
        );
    }

    #[test]
    fn endpoint_ids() {
        assert_eq!(endpoint_id("::1".parse().unwrap(), 80), "[::1]:80");
        let spec: EndpointSpec =
            serde_json::from_str(r#"{"address":"127.0.0.1","port":8080}"#).unwrap();
        assert_eq!(spec.validate().unwrap(), "127.0.0.1:8080");
        assert_eq!(spec.weight, 1);
        let spec: EndpointSpec =
            serde_json::from_str(r#"{"address":"127.0.0.1","port":8080,"weight":0}"#).unwrap();
        assert_eq!(spec.validate().unwrap_err().field, "weight");
    }
}
