//! Keys for the anti-spoofing maps: which (MAC, IP) pairs a port may use.

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// The address is one of the port's fixed IPs.
pub const ADDR_F_FIXED: u32 = 1 << 0;
/// The address comes from an allowed address pair.
pub const ADDR_F_AAP: u32 = 1 << 1;
/// A GARP / ARP reply / unsolicited NA for this address raises a [`crate::event::GarpEvent`]
/// (single-IP AAPs only: they are the ones that can be shared and detected).
pub const ADDR_F_WATCH: u32 = 1 << 2;
/// IPv6 link-local address derived (EUI-64) from an allowed MAC.
pub const ADDR_F_LINK_LOCAL: u32 = 1 << 3;

/// Key of [`crate::maps::ADDRS`] (exact) and data part of the [`crate::maps::CIDRS`] LPM key.
/// Field order matters for the LPM trie: everything before `ip` is matched exactly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey {
    /// ifindex of the port's tap.
    pub ifindex: u32,
    /// The source MAC the IP may be used with.
    pub mac: [u8; 6],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: u8,
    /// IPv4 in the first 4 bytes (network order), rest zero; or the IPv6 address.
    pub ip: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<AddrKey>() == 28);

/// Bits of [`AddrKey`] before `ip`, matched exactly in the LPM trie:
/// LPM prefix length = `LPM_FIXED_BITS + ip prefix length`.
pub const LPM_FIXED_BITS: u32 = 96;
const _: () = assert!(core::mem::offset_of!(AddrKey, ip) * 8 == LPM_FIXED_BITS as usize);

impl AddrKey {
    #[inline(always)]
    pub const fn v4(ifindex: u32, mac: [u8; 6], ip: [u8; 4]) -> Self {
        let mut a = [0u8; 16];
        a[0] = ip[0];
        a[1] = ip[1];
        a[2] = ip[2];
        a[3] = ip[3];
        Self {
            ifindex,
            mac,
            family: FAMILY_V4,
            _pad: 0,
            ip: a,
        }
    }

    #[inline(always)]
    pub const fn v6(ifindex: u32, mac: [u8; 6], ip: [u8; 16]) -> Self {
        Self {
            ifindex,
            mac,
            family: FAMILY_V6,
            _pad: 0,
            ip,
        }
    }
}

/// Value of [`crate::maps::ADDRS`] and [`crate::maps::CIDRS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrValue {
    /// `ADDR_F_*` bits.
    pub flags: u32,
    /// The port's network key (VNI): an exact hit gives the forwarding stage its network
    /// without a `df_ports` lookup (the fast path).
    pub net_id: u32,
}
const _: () = assert!(core::mem::size_of::<AddrValue>() == 8);

/// Key of [`crate::maps::MACS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacKey {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<MacKey>() == 12);

impl MacKey {
    #[inline(always)]
    pub const fn new(ifindex: u32, mac: [u8; 6]) -> Self {
        Self {
            ifindex,
            mac,
            _pad: [0; 2],
        }
    }
}

/// The IPv6 link-local address a VM derives from `mac` (modified EUI-64, RFC 4291 App. A).
pub const fn link_local_from_mac(mac: [u8; 6]) -> [u8; 16] {
    [
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]
}
