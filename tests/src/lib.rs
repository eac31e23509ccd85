//! Test harness: network namespaces, etcd and agent processes, packet tools, and
//! BPF_PROG_TEST_RUN. Shared by the integration tests, the demo and the benchmarks.
//!
//! - [`framework`]: guards and runners every suite builds on (namespaces, bpffs, the one
//!   [`framework::etcd::Etcd`], agent and Python helper processes, BPF_PROG_TEST_RUN).
//! - [`harness`]: the simulated cloud (underlay, hypervisors with agents, VMs, captures).
//! - [`fixtures`]: addresses, frame builders, map seeding and the vmctl topology the
//!   scenario files share; [`verdict`]: the one runner of the verdict tables.
//! - the rest: guests (a real kernel under qemu) and VRRP holders (keepalived).

pub mod fixtures;
pub mod framework;
pub mod guest;
pub mod guest_kernel;
pub mod harness;
pub mod verdict;
pub mod vrrp;

// `unused_crate_dependencies` checks one target at a time, but the package has one list of
// dependencies for the library, the binaries and the tests. The library is the target that
// checks that list: these are the dependencies only other targets use, named here so that
// the lint still flags one nothing uses. (The others expect the lint at their roots.)
use etcd_client as _; // df-bench-scale
use tokio as _; // df-bench-scale
