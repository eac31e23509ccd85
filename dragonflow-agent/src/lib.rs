//! The Dragonflow eBPF agent as a library: the binaries (`dragonflow-agent`, `dfctl`) and
//! the integration tests share it.

pub mod activeport;
pub mod config;
pub mod conntrack;
pub mod controller;
pub mod datapath;
pub mod forwarding;
pub mod garp;
pub mod incremental;
pub mod instance;
pub mod lastgood;
pub mod nb;
pub mod netlink;
pub mod obs;
pub mod portstatus;
pub mod reconcile;
pub mod report;
pub mod scope;
pub mod secgroups;
pub mod sync;
