//! Routes in the main table: add (idempotent) and dump.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{LinkError, Netlink};

/// A unicast route: destination, optional next hop, optional output interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination network (`0.0.0.0/0` / `::/0` for a default route).
    pub dst: IpNet,
    /// Next hop; `None` for a route straight out of `oif` (scope link).
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
}

fn family(v6: bool) -> AddressFamily {
    if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

/// The `RTM_NEWROUTE` for `route`, as `ip route add` builds it: main table, protocol boot,
/// scope link for an IPv4 route without a gateway.
fn route_message(route: &RouteEntry) -> Result<RouteMessage, LinkError> {
    let dst = route.dst.trunc(); // the kernel refuses host bits in the destination
    let v6 = dst.addr().is_ipv6();
    if let Some(gw) = route.gateway.filter(|gw| gw.is_ipv6() != v6) {
        return Err(LinkError::Invalid {
            what: format!("route to {dst}: gateway {gw} is not of the same IP version"),
        });
    }
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(v6);
    msg.header.destination_prefix_length = dst.prefix_len();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = if route.gateway.is_none() && !v6 {
        RouteScope::Link
    } else {
        RouteScope::Universe
    };
    if dst.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(dst.addr().into()));
    }
    if let Some(gw) = route.gateway {
        msg.attributes.push(RouteAttribute::Gateway(gw.into()));
    }
    if let Some(oif) = route.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    Ok(msg)
}

/// A main-table unicast route from a dump, or `None` for anything else (other tables, local
/// and broadcast routes, cached exceptions).
fn entry_of(msg: &RouteMessage) -> Option<RouteEntry> {
    let header = &msg.header;
    if header.kind != RouteType::Unicast || header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let mut table = u32::from(header.table);
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(addr) => dst = ip_of(addr),
            RouteAttribute::Gateway(addr) => gateway = ip_of(addr),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let unspecified = match header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let dst = IpNet::new(dst.unwrap_or(unspecified), header.destination_prefix_length).ok()?;
    Some(RouteEntry { dst, gateway, oif })
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

impl Netlink {
    /// Adds `route` to the main table; `Ok(false)` if an identical route is already there.
    pub fn add_route(&mut self, route: &RouteEntry) -> Result<bool, LinkError> {
        let msg = route_message(route)?;
        match self.exec(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(()) => Ok(true),
            Err(f) if f.errno() == Some(libc::EEXIST) => Ok(false),
            Err(f) => {
                let mut op = format!("add route to {}", route.dst);
                if let Some(gw) = route.gateway {
                    op.push_str(&format!(" via {gw}"));
                }
                if let Some(oif) = route.oif {
                    op.push_str(&format!(" dev {}", self.describe(oif)));
                }
                Err(self.error(f, op))
            }
        }
    }

    /// The unicast routes of the main table, IPv6 or IPv4 (one dump).
    pub fn routes(&mut self, v6: bool) -> Result<Vec<RouteEntry>, LinkError> {
        let mut request = RouteMessage::default();
        request.header.address_family = family(v6);
        let result = self.io.dump(
            RouteNetlinkMessage::GetRoute(request),
            |reply| match reply {
                RouteNetlinkMessage::NewRoute(msg) => entry_of(&msg),
                _ => None,
            },
        );
        let what = if v6 { "IPv6" } else { "IPv4" };
        result.map_err(|f| self.error(f, format!("list {what} routes")))
    }
}
