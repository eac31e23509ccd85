//! Ground layer, the lowest: the packet context, what the pipeline needs from its hook,
//! written once for XDP and TC (Cilium's `ctx_*` idea). Stages see only [`PacketCtx`] and
//! the bounds-checked [`Pkt`] view with its loads and stores, never
//! `XdpContext`/`TcContext` directly. Knows no stage; imports nothing of this crate.

use aya_ebpf::{
    EbpfContext,
    programs::{TcContext, XdpContext},
};

/// Bytes the TC hook makes directly accessible (linear) before parsing: enough for
/// Ethernet + IPv6 + a few extension headers + an ND message with options, or an IPv4
/// header with options + a DHCP header up to `chaddr`.
const TC_PULL_LEN: u32 = 256;

/// What every stage needs from the hook (and `EbpfContext`, for logging).
pub(crate) trait PacketCtx: EbpfContext {
    /// The XDP hook: it can redirect to a local tap (devmap) and bounce a frame back
    /// (XDP_TX), but cannot set tunnel metadata nor clone a frame, so it hands tunnel,
    /// flood and routed frames to its TC companion (see `fwd`).
    const IS_XDP: bool;
    /// TC: `skb->gso_size` of a GSO super-frame (0 otherwise); XDP: always 0.
    fn gso_size(&self) -> u32;
    /// ifindex of the tap the frame arrived on (the port key).
    fn ifindex(&self) -> u32;
    /// An 802.1Q/802.1ad tag was offloaded into skb metadata (TC only; XDP cannot see
    /// it, which is why the XDP hook on veth needs the `df_vlan_guard` companion).
    fn vlan_tag_in_meta(&self) -> bool;
    /// The packet view. TC first pulls the headers into the linear area (a no-op for the
    /// usual linear skb); that invalidates earlier packet pointers, so call it once.
    fn pkt(&self) -> Pkt;
}

impl PacketCtx for XdpContext {
    const IS_XDP: bool = true;

    #[inline(always)]
    fn gso_size(&self) -> u32 {
        0
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: ctx points at the kernel's xdp_md for this run.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn vlan_tag_in_meta(&self) -> bool {
        false
    }

    #[inline(always)]
    fn pkt(&self) -> Pkt {
        let (data, end) = (self.data(), self.data_end());
        Pkt {
            data,
            end,
            len: end - data,
        }
    }
}

impl PacketCtx for TcContext {
    const IS_XDP: bool = false;

    #[inline(always)]
    fn gso_size(&self) -> u32 {
        // SAFETY: skb points at the kernel's __sk_buff for this run.
        unsafe { (*self.skb.skb).gso_size }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: skb points at the kernel's __sk_buff for this run.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn vlan_tag_in_meta(&self) -> bool {
        // SAFETY: as above.
        unsafe { (*self.skb.skb).vlan_present != 0 }
    }

    #[inline(always)]
    fn pkt(&self) -> Pkt {
        let len = self.len();
        let want = if len < TC_PULL_LEN { len } else { TC_PULL_LEN };
        if ((self.data_end() - self.data()) as u32) < want {
            // Non-linear skb (e.g. a GSO super-frame): pull the headers. On failure the
            // bounds checks below simply see fewer bytes and drop as truncated.
            let _ = self.pull_data(want);
        }
        Pkt {
            data: self.data(),
            end: self.data_end(),
            len: len as usize,
        }
    }
}

/// Bounds-checked view of the frame: `data..end` is directly readable, `len` is the whole
/// frame's length (TC: `skb->len`, which may exceed the linear part).
#[derive(Clone, Copy)]
pub(crate) struct Pkt {
    pub data: usize,
    pub end: usize,
    pub len: usize,
}

impl Pkt {
    /// Pointer to `N` bytes at `off`, if they are all inside the readable part.
    /// The `p + N > end` comparison on packet pointers is what the verifier needs.
    #[inline(always)]
    pub(crate) fn bytes<const N: usize>(&self, off: usize) -> Option<*const [u8; N]> {
        let p = self.data + off;
        if p + N > self.end {
            None
        } else {
            Some(p as *const [u8; N])
        }
    }
}

/// Byte `i` of a bounds-checked header.
#[inline(always)]
pub(crate) fn u8_at<const N: usize>(h: *const [u8; N], i: usize) -> u8 {
    // SAFETY: callers only pass pointers returned by `Pkt::bytes`, `i < N`.
    unsafe { *(h as *const u8).add(i) }
}

/// A `u16`/`u32` at byte `i` of a bounds-checked header, in memory (network) order, read
/// with one load instruction.
///
/// Why not `read_unaligned`: LLVM's BPF backend splits unaligned loads into single bytes,
/// which made the allowed-IPv4 fast path ~40% longer. The BPF machine has no alignment
/// requirement on packet loads on the JITs we run on (x86-64, arm64; the verifier checks
/// alignment only under `BPF_F_STRICT_ALIGNMENT`, which is never set), and every offset
/// read this way is naturally aligned relative to the frame start; only the frame start
/// itself is unaligned by 2 on some drivers. (rustc knows the BPF target feature
/// `allows-misaligned-mem-access`, but aya-build owns RUSTFLAGS, so it cannot be set.)
#[inline(always)]
pub(crate) fn load<T: Copy, const N: usize>(h: *const [u8; N], i: usize) -> T {
    // SAFETY: `h` comes from `Pkt::bytes`, `i + size_of::<T>() <= N` at every call site;
    // alignment: see above.
    unsafe { core::ptr::read((h as *const u8).add(i) as *const T) }
}

/// Big-endian u16 at byte `i` (an even offset) of a bounds-checked header.
#[inline(always)]
pub(crate) fn be16_at<const N: usize>(h: *const [u8; N], i: usize) -> u16 {
    u16::from_be(load::<u16, N>(h, i))
}

/// `M` bytes at byte `i` of a bounds-checked header.
#[inline(always)]
pub(crate) fn arr_at<const N: usize, const M: usize>(h: *const [u8; N], i: usize) -> [u8; M] {
    // SAFETY: as above, `i + M <= N`.
    unsafe { ((h as *const u8).add(i) as *const [u8; M]).read_unaligned() }
}

/// Stores `v` at byte `i` of a bounds-checked header, in memory (network) order, with one
/// store instruction (the write twin of [`load`]; same alignment argument). Stages that
/// rewrite a frame (the ARP/ND responder, L3) write only through pointers from
/// `Pkt::bytes`; TC programs that write packet data get the verifier's unclone prologue.
#[inline(always)]
pub(crate) fn store<T: Copy, const N: usize>(h: *const [u8; N], i: usize, v: T) {
    // SAFETY: `h` comes from `Pkt::bytes` (the packet is writable in XDP and TC),
    // `i + size_of::<T>() <= N` at every call site.
    unsafe { core::ptr::write((h as *mut u8).add(i) as *mut T, v) }
}

/// Stores a MAC at an even byte `i` of a bounds-checked header, as three 16-bit stores
/// (every MAC field we write sits at an even offset from the frame start).
#[inline(always)]
pub(crate) fn store_mac<const N: usize>(h: *const [u8; N], i: usize, m: &[u8; 6]) {
    store(h, i, u16::from_ne_bytes([m[0], m[1]]));
    store(h, i + 2, u16::from_ne_bytes([m[2], m[3]]));
    store(h, i + 4, u16::from_ne_bytes([m[4], m[5]]));
}

/// An IPv6 address at byte `i` of a bounds-checked header, as four 32-bit words in memory
/// order (four loads instead of sixteen; alignment: see [`load`], as `ipv6` already does).
#[inline(always)]
pub(crate) fn load_ip6<const N: usize>(h: *const [u8; N], i: usize) -> [u32; 4] {
    [load(h, i), load(h, i + 4), load(h, i + 8), load(h, i + 12)]
}

/// The write twin of [`load_ip6`].
#[inline(always)]
pub(crate) fn store_ip6<const N: usize>(h: *const [u8; N], i: usize, a: [u32; 4]) {
    store(h, i, a[0]);
    store(h, i + 4, a[1]);
    store(h, i + 8, a[2]);
    store(h, i + 12, a[3]);
}

/// The bytes of an address held as memory-order words.
#[inline(always)]
pub(crate) fn ip6_bytes(a: [u32; 4]) -> [u8; 16] {
    let [b0, b1, b2, b3] = a[0].to_ne_bytes();
    let [b4, b5, b6, b7] = a[1].to_ne_bytes();
    let [b8, b9, b10, b11] = a[2].to_ne_bytes();
    let [b12, b13, b14, b15] = a[3].to_ne_bytes();
    [
        b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15,
    ]
}

/// The words of an address held as bytes (the inverse of [`ip6_bytes`]).
#[inline(always)]
pub(crate) fn ip6_words(a: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
