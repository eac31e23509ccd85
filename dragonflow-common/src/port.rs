//! Per-port configuration, keyed by the tap's ifindex.

/// Port security is enabled: source MAC/IP, ARP and ND are checked.
/// Without it every frame the VM sends passes (Neutron `port_security_enabled=false`).
pub const PORT_F_PORT_SECURITY: u32 = 1 << 0;
/// The port has at least one CIDR allowed address pair: the LPM map is consulted after
/// an exact-address miss. Ports without one never pay for the trie walk.
pub const PORT_F_CIDR_AAP: u32 = 1 << 1;

/// Value of [`crate::maps::PORTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortConfig {
    /// Network key: the logical switch's segmentation id (VXLAN VNI).
    pub net_id: u32,
    /// `PORT_F_*` bits.
    pub flags: u32,
    /// The port's own MAC (DHCPDISCOVER chaddr, ARP probes, DAD come only from it).
    pub mac: [u8; 6],
    /// The network's MTU (0 = unset); enforced by the forwarding stage.
    pub mtu: u16,
}
const _: () = assert!(core::mem::size_of::<PortConfig>() == 16);

impl PortConfig {
    #[inline(always)]
    pub const fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}
