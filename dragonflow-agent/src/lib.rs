//! The Dragonflow eBPF agent as a library: the binaries (`dragonflow-agent`, `dfctl`) and
//! the integration tests share it.

pub mod config;
pub mod conntrack;
pub mod controller;
pub mod datapath;
pub mod desired;
pub mod detect;
pub mod instance;
pub mod lastgood;
pub mod nb;
pub mod netlink;
pub mod obs;
pub mod report;
pub mod sync;
