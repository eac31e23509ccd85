//! Entry layer, benchmark build only (feature `bench-progs`, which `cargo xtask bench`
//! enables through the `tests` crate's `bench` feature; the agent's object never has
//! these): the stub programs that give each hook's cost floor, and the tunnel program with
//! its key from a map. See docs/BENCHMARKS.md for how they are used.

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, map, xdp},
    maps::Array,
    programs::{TcContext, XdpContext},
};

use crate::{ctx::PacketCtx, fwd::tunnel, maps::DEVMAP, pipeline};

/// The tunnel key (VNI, outer source as `tunnel::Received`) `df_bench_from_tunnel` judges
/// frames with, filled by the benchmark. Not pinned, not the agent's.
#[map(name = "df_bench_tun")]
static BENCH_TUN: Array<[u32; 2]> = Array::with_max_entries(1, 0);

/// Micro-benchmark only, never attached: `df_from_tunnel` with the tunnel key read from
/// `df_bench_tun` (which the benchmark fills) instead of the skb, because
/// BPF_PROG_TEST_RUN cannot give a frame tunnel metadata. Everything after the key is the
/// same code.
#[classifier]
pub(crate) fn df_bench_from_tunnel(ctx: TcContext) -> i32 {
    let rx = BENCH_TUN.get(0).map(|k| tunnel::Received {
        vni: k[0],
        remote_w: k[1],
    });
    pipeline::from_tunnel(&ctx, rx)
}

/// Stub for the micro-benchmark: the cost floor of the XDP hook.
#[xdp]
pub(crate) fn df_stub_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Stub for the micro-benchmark: the cost floor of the TC hook.
#[classifier]
pub(crate) fn df_stub_tc_ok(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// Stub for the micro-benchmark: the floor of an XDP local delivery, a devmap redirect to
/// the ingress ifindex (the benchmark puts it in `df_devmap_v1`).
#[xdp]
pub(crate) fn df_stub_xdp_redirect(ctx: XdpContext) -> u32 {
    DEVMAP
        .redirect(ctx.ifindex(), 0)
        .unwrap_or(xdp_action::XDP_DROP)
}

/// Stub for the micro-benchmark: the floor of a TC local delivery, bpf_redirect to the
/// ingress ifindex.
#[classifier]
pub(crate) fn df_stub_tc_redirect(ctx: TcContext) -> i32 {
    // SAFETY: plain helper call.
    unsafe { aya_ebpf::helpers::bpf_redirect(ctx.ifindex(), 0) as i32 }
}
