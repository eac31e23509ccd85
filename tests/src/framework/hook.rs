//! The two places the programs attach to a tap.

/// Which program hook the agent attaches to taps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    pub const BOTH: [Hook; 2] = [Hook::Xdp, Hook::Tc];
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }
}
