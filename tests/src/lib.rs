//! Test harness: network namespaces, etcd and agent processes, packet tools, and
//! BPF_PROG_TEST_RUN. Shared by the integration tests, the demo and the benchmarks.

pub mod etcd_cluster;
pub mod frames;
pub mod guest;
pub mod guest_kernel;
pub mod harness;
pub mod rawbpf;
pub mod testrun;
pub mod vrrp;
