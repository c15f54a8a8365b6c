//! Interface addresses: add (idempotent), delete, list one link's addresses.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{LinkError, Netlink};

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// An address message as `ip addr add` builds it: `IFA_LOCAL` and `IFA_ADDRESS` both the
/// address (no point-to-point peer).
fn address_message(index: u32, addr: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(addr.addr());
    msg.header.prefix_len = addr.prefix_len();
    msg.header.index = index;
    msg.attributes = vec![
        AddressAttribute::Local(addr.addr()),
        AddressAttribute::Address(addr.addr()),
    ];
    msg
}

/// The address an `RTM_NEWADDR` reply describes: `IFA_LOCAL` when present (IPv4, and the
/// local end of a point-to-point link), otherwise `IFA_ADDRESS`.
fn address_of(msg: &AddressMessage) -> Option<IpNet> {
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    IpNet::new(local.or(address)?, msg.header.prefix_len).ok()
}

impl Netlink {
    /// Adds `addr` (e.g. `10.88.0.5/16`; the prefix route comes with it) to link `index`, with
    /// the subnet's broadcast address for IPv4. `nodad` skips duplicate address detection for
    /// IPv6, so the address is usable at once. `Ok(false)` if the link already has it.
    pub fn add_address(&mut self, index: u32, addr: IpNet, nodad: bool) -> Result<bool, LinkError> {
        let mut msg = address_message(index, addr);
        match addr {
            IpNet::V4(v4) if v4.prefix_len() < 31 => {
                msg.attributes
                    .push(AddressAttribute::Broadcast(v4.broadcast()));
            }
            IpNet::V6(_) if nodad => {
                msg.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            _ => {}
        }
        match self.exec(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(()) => Ok(true),
            Err(f) if f.errno() == Some(libc::EEXIST) => Ok(false),
            Err(f) => {
                let link = self.describe(index);
                Err(self.error(f, format!("add address {addr} to {link}")))
            }
        }
    }

    /// Removes `addr` (address and prefix length) from link `index`.
    pub fn del_address(&mut self, index: u32, addr: IpNet) -> Result<(), LinkError> {
        let msg = address_message(index, addr);
        self.exec_on(index, RouteNetlinkMessage::DelAddress(msg), 0, |link| {
            format!("remove address {addr} from {link}")
        })
    }

    /// The addresses of link `index`, IPv4 and IPv6 (link-local included), each with its prefix
    /// length. The kernel filters the dump by link where it can.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, LinkError> {
        let mut request = AddressMessage::default();
        request.header.index = index;
        let result = self.io.dump(
            RouteNetlinkMessage::GetAddress(request),
            |reply| match reply {
                RouteNetlinkMessage::NewAddress(msg) if msg.header.index == index => {
                    address_of(&msg)
                }
                _ => None,
            },
        );
        match result {
            Ok(found) => Ok(found),
            Err(f) => {
                let link = self.describe(index);
                Err(self.error(f, format!("list addresses of {link}")))
            }
        }
    }
}
