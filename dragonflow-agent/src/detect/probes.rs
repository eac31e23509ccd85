//! Liveness probes: the ARP / neighbour-solicitation frames sent into a holder's tap and
//! the AF_PACKET socket that sends them.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use crate::nb::MacAddr;

/// Source MAC of the probes (locally administered; no port may use it, see the module
/// doc: the VM's answer is addressed to it and dropped after raising its event).
pub const PROBE_MAC: MacAddr = MacAddr([0x02, 0xdf, 0x00, 0x00, 0x00, 0x01]);

/// An ARP request for `ip`, unicast to `dst` from [`PROBE_MAC`] with sender IP 0.0.0.0
/// (RFC 5227 probe), padded to the Ethernet minimum.
pub fn arp_probe(dst: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&PROBE_MAC.0);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend_from_slice(&PROBE_MAC.0); // sha
    f.extend_from_slice(&[0, 0, 0, 0]); // spa: a probe
    f.extend_from_slice(&[0; 6]); // tha
    f.extend_from_slice(&ip.octets()); // tpa
    f.resize(60, 0);
    f
}

/// A DAD-style neighbour solicitation for `ip` (source `::`, no options, to the
/// solicited-node group), unicast to `dst` at the Ethernet layer. A node owning `ip`
/// defends it with an NA to all-nodes without the solicited flag: the datapath's
/// "unsolicited NA" event.
pub fn ns_probe(dst: MacAddr, ip: Ipv6Addr) -> Vec<u8> {
    let t = ip.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let mut icmp = vec![135u8, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&t);
    // Checksum over the pseudo-header (src ::, dst group, length, next header 58).
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&group.octets());
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(&icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&PROBE_MAC.0);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]); // ICMPv6, hop limit 255 (RFC 4861)
    f.extend_from_slice(&[0; 16]);
    f.extend_from_slice(&group.octets());
    f.extend_from_slice(&icmp);
    f
}

/// A send-only AF_PACKET socket: frames written with it leave a tap toward its VM.
pub struct Prober {
    fd: OwnedFd,
}

impl Prober {
    pub fn new() -> io::Result<Self> {
        // Protocol 0: the socket receives nothing.
        // SAFETY: plain syscall; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        Ok(Prober {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn send(&self, ifindex: u32, frame: &[u8]) -> io::Result<()> {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_ifindex = ifindex as i32;
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: buffer and address are valid for the given lengths.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
