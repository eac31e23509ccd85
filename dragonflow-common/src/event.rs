//! Ring-buffer events from the datapath to the agent.

/// ARP op codes as carried in [`GarpEvent::op`]; IPv6 uses the ICMPv6 type.
pub const GARP_OP_ARP_REQUEST: u16 = 1;
pub const GARP_OP_ARP_REPLY: u16 = 2;
pub const GARP_OP_ND_NA: u16 = 136;

/// A gratuitous ARP (op=request, spa=tpa), an ARP reply or an unsolicited IPv6 neighbour
/// advertisement for a watched allowed-address-pair IP, seen on a port that lists that
/// IP, after port security passed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GarpEvent {
    /// bpf_ktime_get_ns() when the frame was seen (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// The tap it came from.
    pub ifindex: u32,
    /// The port's network key (VNI).
    pub net_id: u32,
    /// The announced IP (IPv4 in the first 4 bytes).
    pub ip: [u8; 16],
    /// The announced MAC (ARP sha / NA target link-layer address or Ethernet source).
    pub mac: [u8; 6],
    /// `GARP_OP_*`.
    pub op: u16,
    /// [`crate::addr::FAMILY_V4`] or [`crate::addr::FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<GarpEvent>() == 48);

/// Key of [`crate::maps::GARP_RATE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GarpRateKey {
    pub ifindex: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    pub ip: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<GarpRateKey>() == 24);
