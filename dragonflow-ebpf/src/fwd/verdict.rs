//! What the pipeline decided for an allowed frame: the port-security path that allowed it
//! and where it goes ([`Fwd`], mapped to each hook's actions by the entry points in `main.rs`).

use dragonflow_common::verdict::PassPath;

/// Where an allowed frame goes.
#[derive(Clone, Copy)]
pub(crate) enum Fwd {
    /// Forwarding is off (`CFG_F_FORWARDING` unset): up the hypervisor's stack
    /// (XDP_PASS / TC_ACT_OK), as before the forwarding stage existed.
    Kernel,
    /// Into the local tap `ifindex` (the destination-side policy already passed):
    /// XDP: devmap redirect; TC: bpf_redirect to the tap's egress. `path`: L2Local/Routed.
    Local { ifindex: u32, path: PassPath },
    /// Through `df-vxlan` (`vxlan` = its ifindex) to the chassis `remote_ip` with VNI
    /// `vni`. TC only; XDP hands the frame off (see [`Fwd::Handoff`]). `path`:
    /// L2Tunnel/Routed.
    Tunnel {
        vni: u32,
        remote_ip: [u8; 4],
        vxlan: u32,
        path: PassPath,
    },
    /// Back out of the ingress tap to the VM that sent it (the frame was rewritten into a
    /// reply: ARP/ND responder, router echo). XDP: XDP_TX; TC: bpf_redirect to the tap.
    Back(PassPath),
    /// Broadcast/multicast to the network's flood list. TC only; XDP hands it off.
    Flood { net_id: u32, vxlan: u32 },
    /// To the holders of a shared allowed-address-pair address on `net_id`, found by
    /// `how` (`group::BY_*`, `group::REWRITE`, `group::ROUTED`): the group program is
    /// tail-called. TC only; XDP hands it off. (Two `u32`s, like `Flood`: a wider payload
    /// made LLVM load it speculatively on paths where its stack slot held a packet
    /// pointer, which the verifier refuses.)
    Group { net_id: u32, how: u32 },
    /// XDP only: a frame XDP cannot finish (tunnel metadata, clones) or must not rewrite
    /// (routed: a rewritten frame would fail port security in TC). XDP_PASS, UNCOUNTED
    /// and without events: with forwarding on, the agent attaches `df_from_vm_tc` on the
    /// same tap's tcx ingress as XDP's companion, which re-runs the pipeline on the
    /// untouched frame and decides (and counts) it.
    Handoff,
}

/// An allowed frame.
#[derive(Clone, Copy)]
pub(crate) struct Pass {
    /// The port-security path that allowed it.
    pub path: PassPath,
    pub fwd: Fwd,
}
