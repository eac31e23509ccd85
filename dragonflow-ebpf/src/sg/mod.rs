//! The security-group stage: stateful Neutron security groups, egress at the sender
//! ([`Sg::egress`], from the forwarding stage once it knows this hook finishes the frame)
//! and ingress at the receiver ([`Sg::ingress`], from `policy::to_port`: local unicast,
//! routed, from the tunnel, every flood/group copy). Layouts and the agent's side:
//! `dragonflow_common::sg`.
//!
//! ## Layer
//! A stage: imports the ground layer only (`ctx`, `config`, `maps`, `stats`, `limits`,
//! `parse`), never port security or forwarding. Its parts: `flow` (the flow both sides
//! judge), `ct` (conntrack keys and states), `frag` (fragments), `policy` (the
//! destination-side policy). Its public face, which the forwarding stage and the entry
//! points use: [`Sg`], [`Hook`] and [`policy::to_port`]. Why `policy` lives here rather
//! than in `fwd`: every delivery into a tap ends in the receiver's ingress rules, so the
//! stage owns the one door into a port, and forwarding only decides which door.
//!
//! ## When it applies
//! Only with `CFG_F_SECURITY_GROUPS` in `df_config_v1` and for ports with port security
//! (egress: the sender passed port security as a secured port; ingress: the destination
//! port's `PORT_F_PORT_SECURITY` in `df_ports_v1`, looked up only when a packet is judged
//! by the rules, never on a conntrack hit — entries exist only for ports that were judged;
//! a destination tap without a port entry is dropped, `unknown_port`, fail closed).
//!
//! ## Lookup order for one side (the first that decides wins)
//! 1. **Flow** ([`flow`]), parsed once per program run for both sides; a frame
//!    that cannot be parsed is dropped with the parser's reason.
//! 2. **Exemptions** (no rule is consulted, `sg_exempt`): not IP (ARP), ICMPv6 130–136 and
//!    143 (MLD, RS, RA, NS, NA), DHCP 68→67 and DHCPv6 546→547 egress, 67→68 and 547→546
//!    ingress.
//! 3. **Later fragment**: the first fragment's record in `df_frag_v1` supplies the ports
//!    (`frag_no_first`, `frag_overlap` otherwise, see [`frag`]).
//! 4. **Conntrack** (unicast destinations only; a group destination is judged by the
//!    rules at every packet and never tracked): an ICMP error addressed to the source of
//!    the packet it quotes (`flow::to_quoted_source`; any other error is a new ICMP
//!    message) looks up the quoted flow on the judged port, oriented from that port (hit →
//!    `ct_related`; miss → judged as a new ICMP message); anything else looks up
//!    its own key. A fresh hit of the current `policy_gen` passes (`ct_established`) and
//!    advances the state; one of an older generation is first re-judged by the rules of
//!    its origin direction (`ct_revalidated`): kept and refreshed, or deleted and the
//!    packet judged as new (so a removed rule stops the flow at its next packet). An
//!    expired entry, or a closing/closed TCP entry hit by a new SYN, counts as absent.
//!    The established fast path is this one hash lookup: no rule is walked.
//! 5. **Rules**: identity of the remote address (`df_ident_v1` exact, then
//!    `df_ident_lpm_v1`, else `IDENT_WORLD`), then `df_policy_v1` LPM with
//!    (port, identity, direction, protocol, destination port or ICMP type/code) and
//!    again with the family's "any" identity. Every rule allows (Neutron has no deny), so
//!    there is no precedence between rules: any match allows; no match → `sg_denied`.
//!    Cost: at most one hash + two LPM lookups, whatever the number of rules.
//! 6. **Create**: an allowed TCP SYN (without ACK), UDP, ICMP echo request or other
//!    protocol packet creates its entry (`ct_new`, `BPF_NOEXIST`: a concurrent creation
//!    by another CPU is fine). Anything else allowed passes untracked (`ct_untracked`):
//!    a TCP packet without SYN, an echo reply without a request, other ICMP, a group
//!    destination — judged again at its next packet (docs/THREATS.md, "What a VM may try", row 14: nothing
//!    "established-looking" passes without its own rule).
//!
//! ## Full table (deliberate)
//! `df_ct_v1` is a preallocated hash, not an LRU: when it is full (`E2BIG`) a new flow the
//! rules allow is dropped as `ct_full` — fail closed, as Linux's nf_conntrack does —
//! instead of evicting another VM's established flow (with an LRU, one VM opening flows
//! could make every other VM's connections re-judged as new: their replies denied).
//! Established flows are unaffected; the agent's collector frees expired entries.
//!
//! ## Per-port quota
//! So that one VM cannot fill the table for every other, a new entry is first admitted by
//! its port's quota (`limits::ct_admit`, per origin direction): over it the new flow drops
//! as `ct_port_quota`, before the table is touched. Entries are counted at insert and at
//! deletion (`CT_F_COUNTED`, see `dragonflow_common::limits`).
//!
//! ## Where each side is judged
//! Egress: by the program that finishes the frame, before the receiver's ingress — in
//! `fwd::unicast` (local or tunnel), for the router's own replies, by the TC entry point
//! before a flood or a group delivery, and with forwarding off before handing the frame
//! to the stack. XDP judges only what it finishes (local deliveries, forwarding off);
//! what it hands to its TC companion is judged there, once. Ingress: in `policy::to_port`
//! for each destination tap. Routing changes neither addresses nor ports, so the flow
//! parsed for the egress serves the ingress too.
//!
//! A TCP entry is closed by a RST or a second FIN; with one state byte the entry cannot
//! tell whose FIN it saw, so a retransmitted FIN also closes it (its timeout drops from
//! 60 s to 10 s; packets still pass meanwhile). ICMP errors are related to an entry of the
//! same port only, whatever its policy generation (an error carries no data).
//!
//! ## Verifier and stack
//! The judge ([`df_sg_judge`]) and the parser (`df_sg_parse_xdp` / `df_sg_parse_tc`) are
//! global BPF functions: verified once each, not at every call site on every path of the
//! pipeline (the from-VM program is close to the verifier's budget). The verifier counts
//! a program's stack and that of the functions it calls together against 512 bytes, and
//! the pipeline's own frame uses ~440: the stage keeps its state, the flow and every map
//! key in a per-CPU map slot ([`Scratch`]) and its functions' frames small (the judge's
//! inputs are read from there rather than passed, so that LLVM has little to spill).
//!
//! ## Counting
//! Drops: egress in `from_vm` (returned to the caller); ingress in `to_vm`, counted here,
//! one per refused delivery (a flood or group copy too), and remembered
//! ([`Sg::counted`]) so that the delivering program, whose outcome that drop becomes for
//! a unicast frame, does not count it again in its own direction (`from_vm`,
//! `from_tunnel`). Side counters (`ct_*`, `sg_exempt`) in the judging direction.

// Map keys and values are passed by reference into the per-CPU scratch on purpose: by
// value (what clippy suggests) they would be copied onto the stack first, whose budget
// is spent (see "Verifier and stack").
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by value they would be copied onto the spent stack first"
)]

use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST, xdp_md},
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{PerCpuArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use dragonflow_common::{
    addr::FAMILY_V4,
    fwd::{CFG_F_SECURITY_GROUPS, ChassisConfig},
    limits::CtCount,
    port::PORT_F_PORT_SECURITY,
    sg::{
        CT_F_COUNTED, CT_REFRESH_NS, CtKey, CtValue, DIR_EGRESS, DIR_INGRESS, FragKey, FragValue,
        IDENT_FIXED_BITS, IDENT_WORLD, IdentKey, PolicyKey, ident_any,
    },
    trace::{SG_MATCH_ANY, SG_MATCH_IDENT, SG_MATCH_NONE, TraceSg},
    verdict::{Direction, DropReason, EventStat},
};

use crate::{
    config,
    ctx::{PacketCtx, Pkt},
    limits,
    maps::{CT, IDENT, IDENT_LPM, POLICY},
    parse::{
        ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6,
        l3::{self, FRAG_FIRST, FRAG_LATER, L3},
    },
    report,
    sg::flow::{
        F_CREATE, F_EXEMPT_EGRESS, F_EXEMPT_INGRESS, F_ICMP_ERROR, F_TRACK, Flow,
        ICMPV6_ECHO_REQUEST,
    },
    stats, trace,
};

mod ct;
mod flow;
mod frag;
pub(crate) mod policy;

/// Per-CPU working memory of the stage ([`Scratch`]): the parsed flow and the map keys,
/// off the nearly full stack. Private to one program run, so neither pinned nor shared
/// with the agent.
#[map(name = "df_sg_scratch")]
static SG_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// `Run::parsed`: not yet; parsed; anything else: `PARSE_ERR + DropReason` (unparseable).
const PARSE_NONE: u8 = 0;
const PARSE_OK: u8 = 1;
const PARSE_ERR: u8 = 2;

/// `EEXIST`: another CPU created the entry between our lookup and insert.
const EEXIST: i32 = 17;
/// Bits of a full `PolicyKey`.
const POLICY_KEY_BITS: u32 = 96;

/// The stage's state and working memory for one program run, in a per-CPU map slot
/// (`df_sg_scratch`) rather than on the stack: the verifier allows 512 bytes of stack for
/// a program and the functions it calls together, and the stages before use nearly all of
/// it. Reset by [`Sg::new`] at the start of every run (a program runs to completion on
/// one CPU without another of ours interleaving: softirq / BH-disabled context).
#[repr(C)]
pub(crate) struct Scratch {
    run: Run,
    /// Filled by port security for senders that have it (see [`Sg::l3`]).
    l3: L3,
    flow: Flow,
    /// The side being judged, kept here rather than in registers the calls would spill.
    job: Job,
    key: CtKey,
    related: CtKey,
    frag: FragKey,
    frag_value: FragValue,
    value: CtValue,
    /// A new port's conntrack counters before their insert (`limits::ct_admit`), off the
    /// stack.
    zero_count: CtCount,
    ident: Key<IdentKey>,
    policy: Key<PolicyKey>,
}

/// Per-run state (security groups on).
#[repr(C)]
struct Run {
    _pad: u8,
    /// The sender's egress rules apply (it passed port security as a secured port).
    egress: u8,
    /// `PARSE_*`: whether `flow` is this frame's.
    parsed: u8,
    /// The last ingress drop counted under `to_vm` (a `DropReason`, 0 = none): when the
    /// delivering program's outcome is that drop, it must not count it again.
    counted: u8,
    policy_gen: u32,
    /// The sending port (0 from the tunnel).
    sender: u32,
    /// The port whose ingress drop `counted` is (for the delivering program's drop
    /// event).
    counted_port: u32,
    /// The monotonic clock, read once per run by the first side that needs it (0: not
    /// yet): a local delivery judges two sides.
    now: u64,
}

/// One side's judgement in progress.
#[repr(C)]
struct Job {
    ifindex: u32,
    dir: u8,
    group: u8,
    /// `Flow::flags`, or a later fragment's from its first fragment.
    flags: u8,
    /// The rules [`allowed`] consults: direction and destination port (those of the
    /// packet, or of the entry's origin when revalidating).
    check_dir: u8,
    /// Conntrack ports and rule port (a later fragment's from its first fragment).
    sport: u16,
    dport: u16,
    rule_port: u16,
    check_port: u16,
    /// The hit entry being revalidated was counted in its port's quota (`CT_F_COUNTED`).
    counted: u8,
}

/// The stage's handle for one program run: a pointer to this CPU's [`Scratch`] (one
/// register or stack slot in the caller), null when security groups are off — then
/// nothing else is read or written (the allowed-IPv4 fast path measures this).
pub(crate) struct Sg {
    s: *mut Scratch,
}

impl Sg {
    /// Starts a run: with the chassis configuration `cfg` (`config::chassis`), and when
    /// security groups are on, resets this CPU's scratch slot. `sender`: the tap the frame came from (0 from the
    /// tunnel). `None` only if the per-CPU slot is missing, which cannot happen (an array
    /// of one entry); callers drop the frame.
    #[inline(always)]
    pub(crate) fn new(sender: u32, cfg: Option<&ChassisConfig>) -> Option<Self> {
        let policy_gen = match cfg {
            Some(c) if c.flags & CFG_F_SECURITY_GROUPS != 0 => c.policy_gen,
            _ => {
                return Some(Sg {
                    s: core::ptr::null_mut(),
                });
            }
        };
        let s = SG_SCRATCH.get_ptr_mut(0)?;
        // SAFETY: this CPU's slot, valid for this run; only this run uses it.
        unsafe {
            (*s).run = Run {
                _pad: 0,
                egress: 0,
                parsed: PARSE_NONE,
                counted: 0,
                policy_gen,
                sender,
                counted_port: 0,
                now: 0,
            };
            (*s).l3.family = 0;
        }
        Some(Sg { s })
    }

    /// The run state, when security groups are on.
    #[inline(always)]
    fn run(&self) -> Option<&Run> {
        // SAFETY: see `new`; null when off.
        unsafe { self.s.as_ref().map(|s| &s.run) }
    }

    #[inline(always)]
    fn run_mut(&mut self) -> Option<&mut Run> {
        // SAFETY: see `new`; null when off.
        unsafe { self.s.as_mut().map(|s| &mut s.run) }
    }

    /// Where port security writes what it learns of the IP header; `None` when security
    /// groups are off (nothing to write).
    #[inline(always)]
    pub(crate) fn l3(&mut self) -> Option<&mut L3> {
        // SAFETY: see `new`.
        unsafe { self.s.as_mut().map(|s| &mut s.l3) }
    }

    /// The sender passed port security as a secured port: its egress rules apply.
    #[inline(always)]
    pub(crate) fn sender_secured(&mut self) {
        if let Some(r) = self.run_mut() {
            r.egress = 1;
        }
    }

    /// `reason` is the ingress drop already counted under `to_vm` (the delivering
    /// program must not count it in its own direction too).
    #[inline(always)]
    pub(crate) fn counted(&self, reason: DropReason) -> bool {
        self.run()
            .is_some_and(|r| u32::from(r.counted) == reason as u32)
    }

    /// The port whose ingress drop is [`Sg::counted`] (0: none).
    #[inline(always)]
    pub(crate) fn counted_port(&self) -> u32 {
        self.run().map_or(0, |r| r.counted_port)
    }

    /// Parses the flow if security groups are on and it is not parsed yet. Callers of
    /// `policy::to_port` call this while the packet is as the sender sent it (before any
    /// clone or rewrite); `to_port` itself never reads the packet.
    #[inline(always)]
    pub(crate) fn prepare<C: Hook>(&mut self, ctx: &C, eth_proto: u16) {
        if self.run().is_some_and(|r| r.parsed == PARSE_NONE) {
            ctx.sg_parse(self.s, eth_proto);
        }
    }

    /// The sender's egress rules, for a frame this program finishes (`group`: to a
    /// broadcast/multicast MAC). Drops are counted by the caller (`from_vm`).
    #[inline(always)]
    pub(crate) fn egress<C: Hook>(
        &mut self,
        ctx: &C,
        eth_proto: u16,
        group: bool,
    ) -> Result<(), DropReason> {
        let Some(r) = self.run() else {
            return Ok(());
        };
        if r.egress == 0 {
            return Ok(());
        }
        let sender = r.sender;
        self.prepare(ctx, eth_proto);
        self.judge(DIR_EGRESS, sender, group)
    }

    /// The ingress rules of the local port `ifindex` (see `policy::to_port`); a drop is
    /// counted here under `to_vm`.
    #[inline(always)]
    pub(crate) fn ingress(&mut self, ifindex: u32, group: bool) -> Result<(), DropReason> {
        if self.s.is_null() {
            return Ok(());
        }
        let r = self.judge(DIR_INGRESS, ifindex, group);
        if let Err(reason) = r {
            report::port_drop(ifindex, Direction::ToVm, reason);
            if let Some(run) = self.run_mut() {
                run.counted = reason as u8;
                run.counted_port = ifindex;
            }
        }
        r
    }

    /// One side's verdict, through [`df_sg_judge`].
    #[inline(always)]
    fn judge(&mut self, dir: u8, ifindex: u32, group: bool) -> Result<(), DropReason> {
        let how = u32::from(dir) | if group { JUDGE_GROUP } else { 0 };
        match df_sg_judge(self.s, ifindex, how) {
            0 => Ok(()),
            r => Err(DropReason::from_u32(r).unwrap_or(DropReason::SgDenied)),
        }
    }
}

/// What the stage needs from a hook on top of [`PacketCtx`]: its global flow parser
/// (`df_sg_parse_xdp` / `df_sg_parse_tc`), called on the hook's own context. Part of the
/// stage's public face: the generic code that judges frames (`fwd`, `pipeline`) takes a
/// `C: sg::Hook`. A method on the context, as when the parsers were called from `ctx`:
/// calling them from `Sg::prepare` through `EbpfContext::as_ptr` instead changed the code
/// LLVM emits around them (measured: 3,357 fewer verified instructions in `df_aap_group`,
/// other programs moved too), and the layering must not change what the verifier sees.
pub(crate) trait Hook: PacketCtx {
    /// Parses the frame's flow into `s` through the hook's global parser.
    fn sg_parse(&self, s: *mut Scratch, eth_proto: u16);
}

impl Hook for XdpContext {
    #[inline(always)]
    fn sg_parse(&self, s: *mut Scratch, eth_proto: u16) {
        df_sg_parse_xdp(self.ctx, s, u32::from(eth_proto));
    }
}

impl Hook for TcContext {
    #[inline(always)]
    fn sg_parse(&self, s: *mut Scratch, eth_proto: u16) {
        df_sg_parse_tc(self.skb.skb, s, u32::from(eth_proto));
    }
}

/// The XDP hook's flow parser ([`parse`]) as a *global* BPF function: verified once
/// (from its BTF signature: the hook's context, a `Scratch`-sized memory, a scalar)
/// rather than at each of its call sites on each path reaching them, which made the
/// from-VM program exceed the verifier's budget. Reads the frame directly (no pull).
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn df_sg_parse_xdp(ctx: *mut xdp_md, s: *mut Scratch, eth_proto: u32) -> u32 {
    if s.is_null() {
        return 1;
    }
    let x = XdpContext::new(ctx);
    let (data, end) = (x.data(), x.data_end());
    let pkt = Pkt {
        data,
        end,
        len: end - data,
    };
    // SAFETY: non-null, valid for size_of::<Scratch>() bytes (BTF argument).
    parse(unsafe { &mut *s }, &pkt, eth_proto as u16);
    0
}

/// The TC hooks' flow parser, as [`df_sg_parse_xdp`]. The caller already pulled the
/// headers into the linear area (`PacketCtx::pkt`); `len` is the whole frame's.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn df_sg_parse_tc(
    skb: *mut __sk_buff,
    s: *mut Scratch,
    eth_proto: u32,
) -> u32 {
    if s.is_null() {
        return 1;
    }
    let t = TcContext::new(skb);
    let pkt = Pkt {
        data: t.data(),
        end: t.data_end(),
        len: t.len() as usize,
    };
    // SAFETY: non-null, valid for size_of::<Scratch>() bytes (BTF argument).
    parse(unsafe { &mut *s }, &pkt, eth_proto as u16);
    0
}

/// Parses the flow into the scratch slot.
#[inline(always)]
fn parse(s: &mut Scratch, pkt: &Pkt, eth_proto: u16) {
    let r = if eth_proto != ETH_P_IP && eth_proto != ETH_P_IPV6 {
        s.flow.set_not_ip();
        Ok(())
    } else if s.l3.family != 0 {
        flow::build(pkt, &s.l3, &mut s.flow)
    } else {
        match l3::l3(pkt, eth_proto) {
            Ok(l3) => {
                s.l3 = l3;
                flow::build(pkt, &s.l3, &mut s.flow)
            }
            Err(e) => Err(e),
        }
    };
    s.run.parsed = match r {
        Ok(()) => PARSE_OK,
        Err(e) => PARSE_ERR + e as u8,
    };
}

/// `df_sg_judge`'s `how`: the destination is a broadcast/multicast MAC (above the
/// direction in the low byte).
const JUDGE_GROUP: u32 = 1 << 8;

/// One side of the stage (see the module docs), as a *global* BPF function: the verifier
/// checks it once, on its own (from its BTF signature: a `Scratch`-sized memory and
/// scalars), instead of once per call site and path of the calling program — the pipeline
/// judges up to two sides, and a flood up to `FLOOD_MAX` copies, each of whose paths
/// would otherwise be re-verified. A BPF-to-BPF call (~1 ns) per judged side. Returns 0
/// to pass, else a `DropReason`.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn df_sg_judge(s: *mut Scratch, ifindex: u32, how: u32) -> u32 {
    if s.is_null() {
        return DropReason::SgDenied as u32;
    }
    // SAFETY: non-null and valid for size_of::<Scratch>() bytes (the verifier checks the
    // caller's argument against the BTF type): this CPU's slot, owned by this run.
    let s = unsafe { &mut *s };
    match s.run.parsed {
        PARSE_OK => {}
        // `prepare` was not called: a caller bug; fail closed.
        PARSE_NONE => return DropReason::SgDenied as u32,
        e => return u32::from(e - PARSE_ERR),
    }
    s.job.ifindex = ifindex;
    s.job.dir = how as u8;
    s.job.group = (how & JUDGE_GROUP != 0) as u8;
    match decide(s) {
        Ok(()) => 0,
        Err(r) => r as u32,
    }
}

/// Steps 2–6 of the module docs for the side in `s.job`.
#[inline(always)]
fn decide(s: &mut Scratch) -> Result<(), DropReason> {
    let dir = s.job.dir;
    let exempt = if dir == DIR_EGRESS {
        F_EXEMPT_EGRESS
    } else {
        F_EXEMPT_INGRESS
    };
    if s.flow.flags & exempt != 0 {
        record_first(s);
        event(dir, EventStat::SgExempt);
        return Ok(());
    }
    if s.run.now == 0 {
        // SAFETY: helper without arguments.
        s.run.now = unsafe { bpf_ktime_get_coarse_ns() };
    }
    s.job.sport = s.flow.sport;
    s.job.dport = s.flow.dport;
    s.job.rule_port = s.flow.rule_port;
    s.job.flags = s.flow.flags;
    if s.flow.frag == FRAG_LATER {
        let first = match frag::first(&mut s.frag, s.job.ifindex, dir, &s.flow, s.run.now) {
            Ok(first) => first,
            // A receiver without port security has no security groups: its first
            // fragments pass without being recorded (below), so neither are these judged.
            Err(_) if dir == DIR_INGRESS && !port_secured(s.job.ifindex)? => return Ok(()),
            Err(e) => return Err(e),
        };
        s.job.sport = first.sport;
        s.job.dport = first.dport;
        s.job.rule_port = first.rule_port;
        s.job.flags = flow::later_flags(&s.flow, first.sport, first.dport, first.rule_port);
        if s.job.flags & exempt != 0 {
            event(dir, EventStat::SgExempt);
            return Ok(());
        }
    }
    let f = &s.flow;
    ct::key(
        &mut s.key,
        s.job.ifindex,
        f.family,
        f.proto,
        dir,
        &f.src,
        &f.dst,
        s.job.sport,
        s.job.dport,
    );
    if s.job.group == 0 {
        if s.job.flags & F_ICMP_ERROR != 0 {
            if related(s) {
                event(dir, EventStat::CtRelated);
                return Ok(());
            }
        } else if s.job.flags & F_TRACK != 0
            && let Some(v) = CT.get_ptr_mut(&s.key)
            && hit(s, v)
        {
            record_first(s);
            return Ok(());
        }
    }
    // A new flow.
    if dir == DIR_INGRESS && !port_secured(s.job.ifindex)? {
        return Ok(());
    }
    s.job.check_dir = dir;
    s.job.check_port = s.job.rule_port;
    if !allowed(s) {
        return Err(DropReason::SgDenied);
    }
    if s.job.flags & F_CREATE != 0 && s.job.group == 0 {
        s.value = CtValue {
            last_seen_ns: s.run.now,
            policy_gen: s.run.policy_gen,
            state: ct::initial_state(s.flow.proto),
            origin: dir,
            flags: CT_F_COUNTED,
        };
        // A trace takes the same decisions (the quota included) but writes no entry.
        let traced = trace::on();
        // An expired or closed entry of the same key is replaced in place (looked up
        // again: carrying its pointer from step 4 would double the verifier's states).
        // A counted one stays counted (one entry either way); an uncounted one (older
        // than the quota) is counted from now on, within the port's quota.
        match CT.get_ptr_mut(&s.key) {
            // SAFETY: map value pointer, valid for this run.
            Some(v) if unsafe { (*v).flags } & CT_F_COUNTED != 0 => {
                if !traced {
                    // SAFETY: as above.
                    unsafe { *v = s.value }
                }
            }
            Some(v) => {
                let c = limits::ct_admit(s.job.ifindex, dir, &mut s.zero_count)?;
                if c.is_none() {
                    s.value.flags = 0;
                }
                if !traced {
                    // SAFETY: as above.
                    unsafe { *v = s.value };
                }
                if let Some(c) = c {
                    limits::ct_created(c, dir);
                }
            }
            None => {
                // The quota before the table: a port at its quota must not take the
                // table's last entries.
                let c = limits::ct_admit(s.job.ifindex, dir, &mut s.zero_count)?;
                if c.is_none() {
                    s.value.flags = 0;
                }
                match if traced {
                    Ok(())
                } else {
                    CT.insert(&s.key, &s.value, BPF_NOEXIST as u64)
                } {
                    Ok(()) => {
                        if let Some(c) = c {
                            limits::ct_created(c, dir);
                        }
                    }
                    Err(e) if e == -EEXIST => {}
                    // E2BIG: full (see the module docs). Any other failure: fail closed too.
                    Err(_) => return Err(DropReason::CtFull),
                }
            }
        }
        event(dir, EventStat::CtNew);
    } else {
        event(dir, EventStat::CtUntracked);
    }
    record_first(s);
    Ok(())
}

/// A first fragment that passed: record it for the later ones.
#[inline(always)]
fn record_first(s: &mut Scratch) {
    if s.flow.frag == FRAG_FIRST {
        frag::record(
            &mut s.frag,
            &mut s.frag_value,
            s.job.ifindex,
            s.job.dir,
            &s.flow,
        );
    }
}

/// An ICMP error about a tracked flow: the quoted packet, which travelled the other way
/// (egress: it reached this port, whose VM reports about it — as its destination or as a
/// router forwarding it; ingress: this port sent it). The error's destination is the
/// quoted source (checked by `flow`); its source is not checked here: see
/// `flow::to_quoted_source` for why.
#[inline(always)]
fn related(s: &mut Scratch) -> bool {
    let other = if s.job.dir == DIR_EGRESS {
        DIR_INGRESS
    } else {
        DIR_EGRESS
    };
    let f = &s.flow;
    ct::key(
        &mut s.related,
        s.job.ifindex,
        f.family,
        f.inner_proto,
        other,
        &f.inner_src,
        &f.inner_dst,
        f.inner_sport,
        f.inner_dport,
    );
    match CT.get_ptr(&s.related) {
        // SAFETY: map value pointer, valid for this run.
        Some(v) => !ct::expired(unsafe { &*v }, s.run.now),
        None => false,
    }
}

/// A conntrack hit `v` for `s.key` (see the module docs, step 4): true if it passes,
/// false to judge the packet as new (expired, reopened, or no longer allowed: deleted).
#[inline(always)]
fn hit(s: &mut Scratch, v: *mut CtValue) -> bool {
    // SAFETY: map value pointer, valid for this run. Concurrent updates from other CPUs
    // are benign: each field is written whole.
    let e = unsafe { &mut *v };
    let now = s.run.now;
    if ct::expired(e, now) || ct::reopens(e.state, &s.flow) {
        return false;
    }
    let mut e = e;
    if e.policy_gen != s.run.policy_gen {
        s.job.check_dir = e.origin;
        s.job.check_port = origin_rule_port(&s.key, e.origin);
        s.job.counted = (e.flags & CT_F_COUNTED != 0) as u8;
        // `e` is not kept across the rule lookups (it would take stack the verifier
        // counts, see `Scratch`): looked up again below.
        if !revalidate(s) {
            if trace::on() {
                return false;
            }
            // Only the deleter that succeeds counts the deletion (the agent's collector
            // may delete the same entry).
            if CT.remove(&s.key).is_ok() && s.job.counted != 0 {
                limits::ct_removed(s.job.ifindex, s.job.check_dir);
            }
            return false;
        }
        let Some(v) = CT.get_ptr_mut(&s.key) else {
            return false;
        };
        // SAFETY: as above.
        e = unsafe { &mut *v };
        if !trace::on() {
            e.policy_gen = s.run.policy_gen;
        }
    }
    let dir = s.job.dir;
    let state = ct::next_state(e.state, &s.flow, dir != e.origin);
    if (state != e.state || now.saturating_sub(e.last_seen_ns) >= CT_REFRESH_NS) && !trace::on() {
        e.state = state;
        e.last_seen_ns = now;
    }
    event(dir, EventStat::CtEstablished);
    true
}

/// Re-judges an entry of an older policy generation by the rules of its origin direction
/// (`s.job.check_*`); the entry's remote is the packet's (the key was built from it).
#[inline(always)]
fn revalidate(s: &mut Scratch) -> bool {
    event(s.job.dir, EventStat::CtRevalidated);
    (s.job.dir == DIR_EGRESS || port_secured(s.job.ifindex).unwrap_or(false)) && allowed(s)
}

/// The destination port has port security (its ingress rules apply); no port: dropped.
#[inline(always)]
fn port_secured(ifindex: u32) -> Result<bool, DropReason> {
    match config::port(ifindex) {
        Some(p) => Ok(p.has(PORT_F_PORT_SECURITY)),
        None => Err(DropReason::UnknownPort),
    }
}

/// What the rules matched when the entry's first packet was judged: its destination port
/// (the remote's port for an egress origin, the local one for an ingress origin), or the
/// echo request type for ICMP entries (only echo creates them).
#[inline(always)]
fn origin_rule_port(key: &CtKey, origin: u8) -> u16 {
    match key.proto {
        IPPROTO_ICMP => u16::from_ne_bytes([8, 0]),
        IPPROTO_ICMPV6 => u16::from_ne_bytes([ICMPV6_ECHO_REQUEST, 0]),
        _ if origin == DIR_EGRESS => key.rport,
        _ => key.lport,
    }
}

/// Step 5 of the module docs: does a rule of the judged port in direction
/// `s.job.check_dir` allow the packet's protocol with destination port `s.job.check_port`
/// from/to the packet's remote address? (Inputs in memory, not registers: see
/// `revalidate`.)
#[inline(always)]
fn allowed(s: &mut Scratch) -> bool {
    let ident = identity(s);
    let matched = if ident != IDENT_WORLD && policy(s, ident) {
        SG_MATCH_IDENT
    } else if policy(s, ident_any(s.flow.family)) {
        SG_MATCH_ANY
    } else {
        SG_MATCH_NONE
    };
    if trace::on() {
        trace_rules(s, ident, matched);
    }
    matched != SG_MATCH_NONE
}

/// A traced run: which rules judged this side (see `dragonflow_common::trace::TraceSg`).
#[inline(never)]
fn trace_rules(s: &Scratch, ident: u32, matched: u32) {
    let Some(r) = trace::record() else { return };
    let side = if s.job.check_dir == DIR_EGRESS { 0 } else { 1 };
    // SAFETY: map value pointer, valid for this run.
    unsafe {
        (*r).sg[side] = TraceSg {
            ifindex: s.job.ifindex,
            ident,
            dir: s.job.check_dir,
            proto: s.flow.proto,
            port: u16::from_be(s.job.check_port),
            matched,
        };
    }
}

/// The identity of the packet's remote address (the destination of an egress packet,
/// the source of an ingress one): exact member, else longest prefix, else `IDENT_WORLD`.
#[inline(always)]
fn identity(s: &mut Scratch) -> u32 {
    let family = s.flow.family;
    let ip = if s.job.dir == DIR_EGRESS {
        &s.flow.dst
    } else {
        &s.flow.src
    };
    let bits = if family == FAMILY_V4 { 32 } else { 128 };
    let words = [
        IDENT_FIXED_BITS + bits,
        u32::from_ne_bytes([family, 0, 0, 0]),
        ip[0],
        ip[1],
        ip[2],
        ip[3],
    ];
    // SAFETY: Key<IdentKey> is packed: a u32 prefix length and IdentKey, 20 bytes of byte
    // fields (family, pad, address); every bit pattern is valid, the layout is the words.
    s.ident = unsafe { core::mem::transmute::<[u32; 6], Key<IdentKey>>(words) };
    if let Some(v) = IDENT.get_ptr(&s.ident.data) {
        // SAFETY: map value pointer, valid for this run.
        return unsafe { *v };
    }
    match IDENT_LPM.get(&s.ident) {
        Some(v) => *v,
        None => IDENT_WORLD,
    }
}

/// One `df_policy_v1` lookup with the full key, for the judged port (see [`allowed`]).
#[inline(always)]
fn policy(s: &mut Scratch, ident: u32) -> bool {
    let [p0, p1] = s.job.check_port.to_ne_bytes();
    let words = [
        POLICY_KEY_BITS,
        s.job.ifindex,
        ident,
        u32::from_ne_bytes([s.job.check_dir, s.flow.proto, p0, p1]),
    ];
    // SAFETY: Key<PolicyKey> is packed: a u32 prefix length and PolicyKey (two u32, two
    // u8, a byte pair): the layout is the words above.
    s.policy = unsafe { core::mem::transmute::<[u32; 4], Key<PolicyKey>>(words) };
    POLICY.get(&s.policy).is_some()
}

#[inline(always)]
fn event(dir: u8, e: EventStat) {
    let d = if dir == DIR_EGRESS {
        Direction::FromVm
    } else {
        Direction::ToVm
    };
    stats::event_in(d, e);
}
