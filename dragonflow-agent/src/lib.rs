//! The Dragonflow eBPF agent as a library: the binaries (`dragonflow-agent`, `dfctl`) and
//! the integration tests share it.
//!
//! # Layers
//!
//! Lowest first; a module imports only its own layer or below, two tasks never import each
//! other (they talk through the channels and handles `main.rs` creates), and no two
//! top-level modules import each other. `cargo xtask layers` (part of `cargo xtask
//! clippy`) checks this table against every `use` (docs/ARCHITECTURE.md):
//!
//! <!-- layers -->
//! - `lib`: ground
//! - `nb`: ground
//! - `config`: ground
//! - `report`: ground
//! - `desired`: pure
//! - `etcd`: adapter
//! - `datapath`: adapter
//! - `netlink`: adapter
//! - `obs`: adapter
//! - `controller`: task
//! - `conntrack`: task
//! - `detect`: task
//! - `portstatus`: task
//! - `main`: wiring
//! - `bin`: wiring
//! <!-- /layers -->
//!
//! - **ground**: the northbound model and its etcd schema (`nb`), the configuration, error
//!   reporting. Knows nothing above it.
//! - **pure**: `desired`, the NB snapshot and the local taps turned into the map entries
//!   the datapath should hold, and their difference from what it holds.
//! - **adapter**: the outside world — etcd (`etcd`, the only module that opens it), the
//!   kernel (`datapath`: aya and bpf(2); `netlink`: link changes), and what operators see
//!   (`obs`: the shared state, Prometheus, HTTP).
//! - **task**: the long-running loops — `controller` (desired → diff → maps), `conntrack`
//!   (garbage collection), `detect` (the detection way), `portstatus` (the port status records
//!   Neutron reads).
//! - **wiring**: `main.rs` and the `dfctl` binary.

pub mod config;
pub mod conntrack;
pub mod controller;
pub mod datapath;
pub mod desired;
pub mod detect;
pub mod etcd;
pub mod nb;
pub mod netlink;
pub mod obs;
pub mod portstatus;
pub mod report;

// `unused_crate_dependencies` checks one target at a time, but the package has one list of
// dependencies for the library and both binaries. The library is the target that checks
// that list: these are the dependencies only a binary uses, named here so that the lint
// still flags one nothing uses. (The binaries and the integration tests expect the lint at
// their roots: each uses a part of the list.)
use anyhow as _; // the agent (src/main.rs)
use clap_complete as _; // dfctl (src/bin/dfctl/)
use clap_mangen as _; // dfctl
use comfy_table as _; // dfctl
use getrandom as _; // dfctl
use mimalloc as _; // the agent
use tracing_subscriber as _; // the agent
use ureq as _; // dfctl
use uuid as _; // dfctl
