//! `dfctl trace`: a frame run through the loaded programs with `BPF_PROG_TEST_RUN`
//! (docs/DESIGN.md, "Tracing a packet"). A run is a trace only when its context carries
//! the agent's secret token where only `BPF_PROG_TEST_RUN` can put it: TC in
//! `__sk_buff.cb[0..2]` (`ctx_in`), XDP in the first 8 bytes of the frame's metadata area
//! (`xdp_md.data` > 0 in `ctx_in`). A traced run changes no map, sends no copy and raises
//! no event; it writes what would have happened into [`TRACE`]'s one [`TraceRecord`].

/// Array[1] of `u64`: the token. Written by the agent only (the programs' view is
/// read-only, `BPF_F_RDONLY_PROG`). Not pinned: a new token with every load.
pub const TRACE_KEY: &str = "df_trace_key_v1";
/// Array[1] of [`TraceRecord`]: written by traced runs only, read by the agent after the
/// run (the agent serializes traces). Not pinned.
pub const TRACE: &str = "df_trace_v1";
/// Bytes of XDP metadata a trace passes (the token; a multiple of 4, at most 32).
pub const XDP_META_LEN: u32 = 8;

/// Counter slots a traced run can note (a frame moves at most a handful).
pub const TRACE_STATS_MAX: usize = 24;

/// `TraceRecord::fwd`: the forwarding decision of the from-VM program.
pub const FWD_NONE: u32 = 0;
pub const FWD_LOCAL: u32 = 1;
pub const FWD_BACK: u32 = 2;
pub const FWD_TUNNEL: u32 = 3;
pub const FWD_FLOOD: u32 = 4;
pub const FWD_GROUP: u32 = 5;
pub const FWD_KERNEL: u32 = 6;
/// XDP handed the frame to its TC companion (XDP_PASS): the trace goes on there.
pub const FWD_HANDOFF: u32 = 7;

/// `TraceSg::matched`: which rule lookup allowed the side (0: none did).
pub const SG_MATCH_NONE: u32 = 0;
/// A rule for the remote's identity (`TraceSg::ident`).
pub const SG_MATCH_IDENT: u32 = 1;
/// A rule for any remote of the family.
pub const SG_MATCH_ANY: u32 = 2;

/// The rules judged for one side of a frame (the last judgement of that side): the
/// `df_policy_v1` lookups the stage made.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceSg {
    /// The port judged (0: the side was not judged by its rules).
    pub ifindex: u32,
    /// The remote address's identity (`IDENT_WORLD` if none).
    pub ident: u32,
    /// `DIR_EGRESS` / `DIR_INGRESS` of the rules looked up.
    pub dir: u8,
    pub proto: u8,
    /// Destination port (or ICMP type/code) the rules were looked up with, host order.
    pub port: u16,
    /// `SG_MATCH_*`.
    pub matched: u32,
}

/// What a traced run did (all its programs: XDP, its TC companion, the group program).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceRecord {
    /// Traced program entries since the agent cleared the record.
    pub runs: u32,
    /// Slots of `df_stats_v2` the frame would have moved, in order (`stat_index`).
    pub n_stats: u32,
    pub stats: [u32; TRACE_STATS_MAX],
    /// `FWD_*` and its target: the tap's ifindex, the VNI and remote VTEP (IPv4, network
    /// order) of a tunnel.
    pub fwd: u32,
    pub out_ifindex: u32,
    pub vni: u32,
    pub remote_ip: u32,
    /// Egress (index 0) and ingress (index 1) rules.
    pub sg: [TraceSg; 2],
}

impl Default for TraceRecord {
    fn default() -> Self {
        TraceRecord {
            runs: 0,
            n_stats: 0,
            stats: [0; TRACE_STATS_MAX],
            fwd: FWD_NONE,
            out_ifindex: 0,
            vni: 0,
            remote_ip: 0,
            sg: [TraceSg::default(); 2],
        }
    }
}

const _: () = assert!(core::mem::size_of::<TraceSg>() == 16);
const _: () = assert!(core::mem::size_of::<TraceRecord>() == 8 + 4 * TRACE_STATS_MAX + 16 + 32);
