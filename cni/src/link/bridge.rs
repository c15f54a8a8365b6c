//! Bridge ports and VLANs, set through `AF_BRIDGE` link messages: port flags (hairpin,
//! isolated) in `IFLA_PROTINFO`, VLAN membership in `IFLA_AF_SPEC`.

use netlink_packet_core::DefaultNla;
use netlink_packet_route::link::{
    AfSpecBridge, BridgeFlag, BridgeVlanInfo, BridgeVlanInfoFlags, LinkAttribute, LinkMessage,
    LinkProtoInfoBridge,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{LinkError, Netlink};

/// `IFLA_BRPORT_MODE`: hairpin mode (send frames back out of the port they came in on).
const IFLA_BRPORT_MODE: u16 = 4;
/// `IFLA_BRPORT_ISOLATED`: isolated ports only talk to non-isolated ones.
const IFLA_BRPORT_ISOLATED: u16 = 33;

/// An `AF_BRIDGE` message for link `index`. Without `BRIDGE_FLAGS_SELF` the kernel hands it to
/// the link's master bridge, which applies it to the port.
fn bridge_message(index: u32, attribute: LinkAttribute) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.interface_family = AddressFamily::Bridge;
    msg.header.index = index;
    msg.attributes = vec![attribute];
    msg
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

impl Netlink {
    /// Sets a bridge port's hairpin and isolated flags (both, every call). The link must
    /// already be attached to a bridge.
    pub fn set_bridge_port(
        &mut self,
        index: u32,
        hairpin: bool,
        isolated: bool,
    ) -> Result<(), LinkError> {
        let msg = port_flags_message(index, hairpin, isolated);
        self.exec_on(index, RouteNetlinkMessage::SetLink(msg), 0, |link| {
            format!(
                "set hairpin {} and isolated {} on bridge port {link}",
                on_off(hairpin),
                on_off(isolated)
            )
        })
    }

    /// Adds VLAN `vid` to a bridge port, as its PVID and egress-untagged when `pvid_untagged`
    /// (an access port). With `self_`, `index` is the bridge itself and the VLAN is added to
    /// the bridge device (so addresses on the bridge can talk in that VLAN).
    pub fn add_bridge_vlan(
        &mut self,
        index: u32,
        vid: u16,
        pvid_untagged: bool,
        self_: bool,
    ) -> Result<(), LinkError> {
        let flags = if pvid_untagged {
            BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged
        } else {
            BridgeVlanInfoFlags::empty()
        };
        let msg = vlan_message(index, vid, flags, self_)?;
        self.exec_on(index, RouteNetlinkMessage::SetLink(msg), 0, |link| {
            format!("add VLAN {vid} to {link}")
        })
    }

    /// Removes VLAN `vid` from a bridge port (or, with `self_`, from the bridge device), e.g.
    /// the default VLAN 1.
    pub fn del_bridge_vlan(&mut self, index: u32, vid: u16, self_: bool) -> Result<(), LinkError> {
        let msg = vlan_message(index, vid, BridgeVlanInfoFlags::empty(), self_)?;
        // RTM_DELLINK with AF_BRIDGE goes to the bridge's VLAN handler; it never deletes links.
        self.exec_on(index, RouteNetlinkMessage::DelLink(msg), 0, |link| {
            format!("remove VLAN {vid} from {link}")
        })
    }
}

/// `bridge link set dev <port> hairpin <on|off> isolated <on|off>`.
pub(super) fn port_flags_message(index: u32, hairpin: bool, isolated: bool) -> LinkMessage {
    let flags = vec![
        LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![hairpin.into()])),
        LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_ISOLATED, vec![isolated.into()])),
    ];
    bridge_message(index, LinkAttribute::ProtoInfoBridge(flags))
}

/// `bridge vlan {add|del} dev <link> vid <vid> [pvid untagged] [self]`.
pub(super) fn vlan_message(
    index: u32,
    vid: u16,
    flags: BridgeVlanInfoFlags,
    self_: bool,
) -> Result<LinkMessage, LinkError> {
    if !(1..=4094).contains(&vid) {
        return Err(LinkError::Invalid {
            what: format!("VLAN id {vid} is out of range (1 to 4094)"),
        });
    }
    let mut spec = Vec::with_capacity(2);
    if self_ {
        spec.push(AfSpecBridge::Flags(BridgeFlag::LowerDev)); // BRIDGE_FLAGS_SELF
    }
    spec.push(AfSpecBridge::VlanInfo(BridgeVlanInfo { flags, vid }));
    Ok(bridge_message(index, LinkAttribute::AfSpecBridge(spec)))
}
