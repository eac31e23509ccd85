//! The kernel side as seen from the agent: the embedded eBPF object.

/// The eBPF object built by build.rs (aya-build) from `dragonflow-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dragonflow"));
