//! What the pipeline decided for an allowed frame: the path that allowed it (counted) and
//! where it goes. Only [`Fwd::Kernel`] exists in this issue; the forwarding stage adds
//! redirects (to a local tap, to the tunnel) as new variants, mapped per hook in `main.rs`.

use dragonflow_common::verdict::PassPath;

/// Where an allowed frame goes.
#[derive(Clone, Copy)]
pub enum Fwd {
    /// Up the stack of the hypervisor (XDP_PASS / TC_ACT_OK): a Linux bridge delivers it.
    Kernel,
}

/// An allowed frame.
#[derive(Clone, Copy)]
pub struct Pass {
    pub path: PassPath,
    pub fwd: Fwd,
}

impl Pass {
    #[inline(always)]
    pub const fn kernel(path: PassPath) -> Self {
        Pass {
            path,
            fwd: Fwd::Kernel,
        }
    }
}
