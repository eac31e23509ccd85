//! The one hash the desired state derives ids from, shared by forwarding (router ids) and
//! security groups (rule tags) so neither reaches into the other.

/// 32-bit FNV-1a of `s`, with 0 mapped to 1: every chassis computes the same number with
/// no coordination, and 0 stays free to mean "none" in the datapath's values.
pub fn fnv1a(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    if h == 0 { 1 } else { h }
}
