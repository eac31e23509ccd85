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

/// Bytes of a dropped frame a [`DropEvent`] carries (from its first byte): Ethernet,
/// one VLAN tag, an IPv6 header with room for its first extension headers and the L4
/// ports / ICMP type or an ARP body all fit; the agent decodes them in userspace.
pub const DROP_EVENT_FRAME: usize = 128;

/// A dropped frame, sampled for `dfctl monitor` (ring buffer
/// [`crate::maps::DROP_EVENTS`]): emitted only while a monitor client is connected
/// ([`MonitorConfig::flags`]) and at most [`MonitorConfig::rate`] per second per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropEvent {
    /// bpf_ktime_get_ns() when the frame was dropped (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// The port's tap (the sender for `from_vm`, the receiver for `to_vm`), or the tunnel
    /// device for `from_tunnel` drops.
    pub ifindex: u32,
    /// `crate::verdict::Direction` as u32.
    pub direction: u32,
    /// `crate::verdict::DropReason` as u32.
    pub reason: u32,
    /// The whole frame's length.
    pub frame_len: u32,
    /// Bytes of `frame` that were captured (`min(frame_len, DROP_EVENT_FRAME)`).
    pub captured: u32,
    pub _pad: u32,
    pub frame: [u8; DROP_EVENT_FRAME],
}
const _: () = assert!(core::mem::size_of::<DropEvent>() == 32 + DROP_EVENT_FRAME);

/// Value of [`crate::maps::MONITOR`] at index 0, written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorConfig {
    /// `MON_F_*`.
    pub flags: u32,
    /// Most drop events per second per CPU (0: none).
    pub rate: u32,
}
const _: () = assert!(core::mem::size_of::<MonitorConfig>() == 8);

/// [`MonitorConfig::flags`]: a monitor client listens for drop events. Without it the
/// datapath emits none (and spends nothing on them).
pub const MON_F_DROPS: u32 = 1;

/// Default of [`MonitorConfig::rate`] (the agent's `--monitor-rate`).
pub const MONITOR_RATE_DEFAULT: u32 = 1000;

/// Value of [`crate::maps::DROP_RATE`] (per CPU): the current one-second window of drop
/// events.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropRate {
    pub window_ns: u64,
    pub sent: u64,
}
const _: () = assert!(core::mem::size_of::<DropRate>() == 16);

/// Slots of a [`PortStats`] per direction: slot 0 counts passes, slot `r` drops of
/// `crate::verdict::DropReason` `r` (reasons are below 64).
pub const PORT_STATS_PER_DIR: usize = 64;
/// Directions of a [`PortStats`] (`crate::verdict::Direction` as index).
pub const PORT_STATS_DIRS: usize = 3;

/// Value of [`crate::maps::PORT_STATS`] (per CPU): one port's outcomes, at
/// `direction * PORT_STATS_PER_DIR + slot`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortStats {
    pub c: [u64; PORT_STATS_DIRS * PORT_STATS_PER_DIR],
}
const _: () = assert!(core::mem::size_of::<PortStats>() == 8 * 192);

impl Default for PortStats {
    fn default() -> Self {
        PortStats {
            c: [0; PORT_STATS_DIRS * PORT_STATS_PER_DIR],
        }
    }
}
