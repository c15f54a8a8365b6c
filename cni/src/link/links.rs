//! Links: targeted lookups and dumps, creating bridges and veth pairs (the peer directly in
//! its namespace), setting state, master, MAC, MTU and name, and deleting.

use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoBridge, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{format_mac, validate_name, LinkError, Netlink};
use crate::netns::NetNs;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index, unique within its namespace.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address, for Ethernet-like links.
    pub mac: Option<[u8; 6]>,
    /// MTU in bytes.
    pub mtu: u32,
    /// Index of the master (e.g. the bridge a port is attached to).
    pub master: Option<u32>,
    /// Administratively up (`IFF_UP`); says nothing about carrier.
    pub up: bool,
    /// Link kind: `bridge`, `veth`, …; `None` for physical devices and loopback.
    pub kind: Option<String>,
    /// The interface alias (`ip link set … alias …`), if set.
    pub alias: Option<String>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            master: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind: None,
            alias: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Address(addr) => link.mac = <[u8; 6]>::try_from(&addr[..]).ok(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Controller(master) if *master != 0 => link.master = Some(*master),
                LinkAttribute::LinkInfo(infos) => link.kind = kind_of(infos),
                LinkAttribute::IfAlias(alias) if !alias.is_empty() => {
                    link.alias = Some(alias.clone());
                }
                _ => {}
            }
        }
        link
    }
}

fn kind_of(infos: &[LinkInfo]) -> Option<String> {
    infos.iter().find_map(|info| match info {
        LinkInfo::Kind(kind) => Some(kind.to_string()),
        _ => None,
    })
}

/// Whether a bridge's link message says VLAN filtering is on.
fn vlan_filtering_on(msg: &LinkMessage) -> bool {
    msg.attributes.iter().any(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|info| match info {
            LinkInfo::Data(InfoData::Bridge(opts)) => {
                opts.contains(&InfoBridge::VlanFiltering(true))
            }
            _ => false,
        }),
        _ => false,
    })
}

/// `ip link add <name> [mtu <mtu>] type bridge [vlan_filtering 1]`.
pub(super) fn bridge_request(name: &str, mtu: Option<u32>, vlan_filtering: bool) -> LinkMessage {
    let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
    if vlan_filtering {
        info.push(LinkInfo::Data(InfoData::Bridge(vec![
            InfoBridge::VlanFiltering(true),
        ])));
    }
    let mut attributes: Vec<LinkAttribute> = mtu.map(LinkAttribute::Mtu).into_iter().collect();
    attributes.push(LinkAttribute::IfName(name.to_string()));
    attributes.push(LinkAttribute::LinkInfo(info));
    message(0, attributes)
}

/// `ip link set <bridge> type bridge vlan_filtering 1` (`RTM_NEWLINK` without create flags).
pub(super) fn vlan_filtering_request(index: u32) -> LinkMessage {
    let info = vec![
        LinkInfo::Kind(InfoKind::Bridge),
        LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(true)])),
    ];
    message(index, vec![LinkAttribute::LinkInfo(info)])
}

/// A link message addressed to `index` (0 when addressed by name).
fn message(index: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes = attributes;
    msg
}

/// Statistics are never read here; skipping them shrinks every reply.
fn skip_stats() -> LinkAttribute {
    LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])
}

fn peer_mac_error(mac: [u8; 6]) -> Option<LinkError> {
    let multicast = mac[0] & 1 != 0;
    let zero = mac == [0; 6];
    (multicast || zero).then(|| LinkError::Invalid {
        what: format!(
            "MAC {} is not a unicast address (it is {})",
            format_mac(mac),
            if zero { "all zeros" } else { "multicast" }
        ),
    })
}

impl Netlink {
    /// The link named `name`, if there is one (one targeted `RTM_GETLINK`).
    /// A name the kernel could not hold (too long, `/`, …) is simply not there.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, LinkError> {
        if validate_name(name).is_err() {
            return Ok(None);
        }
        Ok(self
            .get_link(0, Some(name))?
            .as_ref()
            .map(Link::from_message))
    }

    /// The link with index `index`, if there is one.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, LinkError> {
        if index == 0 {
            return Ok(None); // index 0 means "none" to the kernel, never a link
        }
        Ok(self.get_link(index, None)?.as_ref().map(Link::from_message))
    }

    /// Every link in the namespace (one dump).
    pub fn links(&mut self) -> Result<Vec<Link>, LinkError> {
        let request = RouteNetlinkMessage::GetLink(message(0, vec![skip_stats()]));
        let result = self.io.dump(request, |reply| match reply {
            RouteNetlinkMessage::NewLink(msg) => Some(Link::from_message(&msg)),
            _ => None,
        });
        result.map_err(|f| self.error(f, "list links".into()))
    }

    /// The links whose master is `master`, e.g. a bridge's ports (one dump, filtered by the
    /// kernel): cheaper than [`Netlink::links`] on a host with many containers.
    pub fn ports(&mut self, master: u32) -> Result<Vec<Link>, LinkError> {
        let request = RouteNetlinkMessage::GetLink(message(
            0,
            vec![skip_stats(), LinkAttribute::Controller(master)],
        ));
        let result = self.io.dump(request, |reply| match reply {
            RouteNetlinkMessage::NewLink(msg) => {
                Some(Link::from_message(&msg)).filter(|link| link.master == Some(master))
            }
            _ => None,
        });
        match result {
            Ok(ports) => Ok(ports),
            Err(f) => {
                let bridge = self.describe(master);
                Err(self.error(f, format!("list the ports of {bridge}")))
            }
        }
    }

    /// The raw `RTM_NEWLINK` answer for a link by index or name; `None` on `ENODEV`.
    fn get_link(
        &mut self,
        index: u32,
        name: Option<&str>,
    ) -> Result<Option<LinkMessage>, LinkError> {
        let mut attributes = vec![skip_stats()];
        if let Some(name) = name {
            attributes.push(LinkAttribute::IfName(name.to_string()));
        }
        let request = RouteNetlinkMessage::GetLink(message(index, attributes));
        let mut found = None;
        let result = self.io.request(request, 0, &mut |reply| {
            if let RouteNetlinkMessage::NewLink(msg) = reply {
                found = Some(msg);
            }
        });
        match result {
            Ok(()) => Ok(found),
            Err(f) if f.errno() == Some(libc::ENODEV) => Ok(None),
            Err(f) => {
                let op = match name {
                    Some(name) => format!("look up link {name}"),
                    None => format!("look up link index {index}"),
                };
                Err(self.error(f, op))
            }
        }
    }

    /// The link named `name`, which was just created or found: gone means a concurrent delete.
    fn expect_link(&mut self, name: &str) -> Result<Link, LinkError> {
        self.link_by_name(name)?.ok_or_else(|| LinkError::NotFound {
            what: self.error_place(format!("link {name}")),
        })
    }

    /// `what`, plus the namespace when it is not the caller's.
    fn error_place(&self, what: String) -> String {
        match &self.ns {
            Some(ns) => format!("{what} in netns {}", ns.display()),
            None => what,
        }
    }

    /// Creates a bridge; `Ok((bridge, false))` if one of that name already exists (a
    /// concurrent creator is fine: `EEXIST` means "found"). An existing bridge gets VLAN
    /// filtering turned on when asked for; its MTU is left alone. A non-bridge of that name is
    /// [`LinkError::WrongKind`].
    pub fn ensure_bridge(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        vlan_filtering: bool,
    ) -> Result<(Link, bool), LinkError> {
        validate_name(name)?;
        let request = RouteNetlinkMessage::NewLink(bridge_request(name, mtu, vlan_filtering));
        // Usually the bridge exists: look first. Creation racing with another plugin is
        // settled by EEXIST (look again); the loop repeats only if the bridge also vanishes.
        for _ in 0..3 {
            if let Some(existing) = self.get_link(0, Some(name))? {
                let bridge = self.adopt_bridge(&existing, vlan_filtering)?;
                return Ok((bridge, false));
            }
            match self.exec(request.clone(), NLM_F_CREATE | NLM_F_EXCL) {
                Ok(()) => return Ok((self.expect_link(name)?, true)),
                Err(f) if f.errno() == Some(libc::EEXIST) => continue,
                Err(f) => {
                    let with = if vlan_filtering {
                        " with VLAN filtering"
                    } else {
                        ""
                    };
                    return Err(self.error(f, format!("create bridge {name}{with}")));
                }
            }
        }
        Err(LinkError::NotFound {
            what: self.error_place(format!("bridge {name} (deleted while being created)")),
        })
    }

    /// Checks that an existing link is a bridge and turns VLAN filtering on if wanted.
    fn adopt_bridge(&mut self, msg: &LinkMessage, vlan_filtering: bool) -> Result<Link, LinkError> {
        let link = Link::from_message(msg);
        if link.kind.as_deref() != Some("bridge") {
            return Err(LinkError::WrongKind {
                name: self.error_place(link.name),
                kind: link.kind,
                expected: "bridge",
            });
        }
        if vlan_filtering && !vlan_filtering_on(msg) {
            let request = RouteNetlinkMessage::NewLink(vlan_filtering_request(link.index));
            if let Err(f) = self.exec(request, 0) {
                let op = format!("turn on VLAN filtering on bridge {}", link.name);
                return Err(self.error(f, op));
            }
        }
        Ok(link)
    }

    /// Creates a veth pair: `host` in this socket's namespace, and `peer_name` directly inside
    /// `peer_ns` (the peer's own message carries the namespace fd), so the container end never
    /// appears on the host. `mtu` applies to both ends, `peer_mac` to the peer. Returns the host
    /// end. A taken host name is [`LinkError::Exists`]; a taken peer name is
    /// [`LinkError::Kernel`] with `EEXIST`.
    pub fn create_veth(
        &mut self,
        host: &str,
        peer_name: &str,
        peer_ns: &NetNs,
        mtu: Option<u32>,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<Link, LinkError> {
        validate_name(host)?;
        validate_name(peer_name)?;
        if let Some(err) = peer_mac.and_then(peer_mac_error) {
            return Err(err);
        }
        let mut peer = vec![
            LinkAttribute::IfName(peer_name.to_string()),
            LinkAttribute::NetNsFd(peer_ns.as_raw_fd()),
        ];
        peer.extend(mtu.map(LinkAttribute::Mtu));
        peer.extend(peer_mac.map(|mac| LinkAttribute::Address(mac.to_vec())));
        // Explicit queue counts let the kernel skip two expedited RCU waits in veth_newlink.
        peer.extend(single_queue());
        let info = vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(message(0, peer)))),
        ];
        let mut attributes = vec![LinkAttribute::IfName(host.to_string())];
        attributes.extend(mtu.map(LinkAttribute::Mtu));
        attributes.extend(single_queue());
        attributes.push(LinkAttribute::LinkInfo(info));

        let op = || {
            format!(
                "create veth {host} with peer {peer_name} in netns {}",
                peer_ns.path().display()
            )
        };
        match self.exec(
            RouteNetlinkMessage::NewLink(message(0, attributes)),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(()) => self.expect_link(host),
            // The kernel checks the host name first, then the peer's when registering it.
            Err(f)
                if f.errno() == Some(libc::EEXIST) && self.get_link(0, Some(host))?.is_some() =>
            {
                Err(LinkError::Exists {
                    op: self.error_place(op()),
                    name: host.to_string(),
                })
            }
            Err(f) => Err(self.error(f, op())),
        }
    }

    /// Sets the link administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<(), LinkError> {
        self.set_flag(index, LinkFlags::Up, true, "up")
    }

    /// Turns promiscuous mode on or off (as `ip link set promisc` does: one reference).
    pub fn set_promisc(&mut self, index: u32, on: bool) -> Result<(), LinkError> {
        self.set_flag(
            index,
            LinkFlags::Promisc,
            on,
            if on { "promisc on" } else { "promisc off" },
        )
    }

    fn set_flag(
        &mut self,
        index: u32,
        flag: LinkFlags,
        on: bool,
        what: &str,
    ) -> Result<(), LinkError> {
        let mut msg = message(index, Vec::new());
        msg.header.flags = if on { flag } else { LinkFlags::empty() };
        msg.header.change_mask = flag;
        self.exec_on(index, RouteNetlinkMessage::SetLink(msg), 0, |link| {
            format!("set {link} {what}")
        })
    }

    /// Attaches the link to `master` (a bridge port, typically); `master` 0 detaches it.
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<(), LinkError> {
        self.attach_port(index, master, None)
    }

    /// Attaches the link to `master` and, in the same request, sets its alias (up to 255
    /// bytes): the tag that lets GC recognise an interface whose record is lost.
    pub fn attach_port(
        &mut self,
        index: u32,
        master: u32,
        alias: Option<&str>,
    ) -> Result<(), LinkError> {
        let mut attributes = vec![LinkAttribute::Controller(master)];
        attributes.extend(alias.map(|a| LinkAttribute::IfAlias(a.to_string())));
        let msg = message(index, attributes);
        self.exec(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(|f| {
                let (link, master) = (self.describe(index), self.describe(master));
                self.error(f, format!("attach {link} to {master}"))
            })
    }

    /// Sets the hardware address.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), LinkError> {
        let msg = message(index, vec![LinkAttribute::Address(mac.to_vec())]);
        self.exec_on(index, RouteNetlinkMessage::SetLink(msg), 0, |link| {
            format!("set MAC {} on {link}", format_mac(mac))
        })
    }

    /// Renames the link. The kernel refuses (`EBUSY`) to rename a link that is up.
    pub fn rename(&mut self, index: u32, name: &str) -> Result<(), LinkError> {
        validate_name(name)?;
        let msg = message(index, vec![LinkAttribute::IfName(name.to_string())]);
        self.exec_on(index, RouteNetlinkMessage::SetLink(msg), 0, |link| {
            format!("rename {link} to {name}")
        })
    }

    /// Sets the MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), LinkError> {
        let msg = message(index, vec![LinkAttribute::Mtu(mtu)]);
        self.exec_on(index, RouteNetlinkMessage::SetLink(msg), 0, |link| {
            format!("set MTU {mtu} on {link}")
        })
    }

    /// Deletes the link (both ends, for a veth).
    pub fn delete_link(&mut self, index: u32) -> Result<(), LinkError> {
        let msg = message(index, Vec::new());
        self.exec_on(index, RouteNetlinkMessage::DelLink(msg), 0, |link| {
            format!("delete {link}")
        })
    }

    /// Deletes the link named `name`; `Ok(false)` if there is none (which includes names no
    /// link can have, so a DEL for a rejected ADD succeeds).
    pub fn delete_link_by_name(&mut self, name: &str) -> Result<bool, LinkError> {
        if validate_name(name).is_err() {
            return Ok(false);
        }
        let msg = message(0, vec![LinkAttribute::IfName(name.to_string())]);
        match self.exec(RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(()) => Ok(true),
            Err(f) if f.errno() == Some(libc::ENODEV) => Ok(false),
            Err(f) => Err(self.error(f, format!("delete link {name}"))),
        }
    }
}

/// One TX and one RX queue, as the kernel would default a veth to.
fn single_queue() -> [LinkAttribute; 2] {
    [LinkAttribute::NumTxQueues(1), LinkAttribute::NumRxQueues(1)]
}
