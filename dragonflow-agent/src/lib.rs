//! The Dragonflow eBPF agent as a library: the binaries (`dragonflow-agent`, `dfctl`) and
//! the integration tests share it.

pub mod datapath;
pub mod nb;
