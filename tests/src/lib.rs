//! Test harness: network namespaces, etcd and agent processes, packet tools, and
//! BPF_PROG_TEST_RUN. Shared by the integration tests, the demo and the benchmarks.
//!
//! - [`framework`]: guards and runners every suite builds on (namespaces, bpffs, the one
//!   [`framework::etcd::Etcd`], agent and Python helper processes, BPF_PROG_TEST_RUN).
//! - [`harness`]: the simulated cloud (underlay, hypervisors with agents, VMs, captures).
//! - the rest: pieces several scenario files share (frames, guests, VRRP holders).

pub mod frames;
pub mod framework;
pub mod guest;
pub mod guest_kernel;
pub mod harness;
pub mod verdict;
pub mod vmctl_topo;
pub mod vrrp;
