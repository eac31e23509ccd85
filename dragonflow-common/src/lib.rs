//! Facts shared by the kernel programs (`dragonflow-ebpf`) and the agent: map names and
//! capacities, `#[repr(C)]` key/value layouts, drop reasons, counters and ring-buffer
//! events. Every layout carries a `const` size assertion: a change here that is not made
//! on both sides fails to compile instead of corrupting maps at run time.
//!
//! A layout change of a pinned map must also change its name (see [`maps`]): a restarted
//! agent adopts pinned maps by name, and must never reinterpret old bytes.
#![no_std]

pub mod addr;
pub mod event;
pub mod fwd;
pub mod limits;
pub mod maps;
pub mod port;
pub mod sg;
pub mod trace;
pub mod verdict;

#[cfg(feature = "user")]
mod pod {
    //! `aya::Pod` lets the agent read and write these types in maps.
    //! SAFETY: every type here is `#[repr(C)]`, `Copy`, made of integers and byte arrays,
    //! with explicit padding, so any bit pattern is valid.
    use crate::{addr, event, fwd, limits, port, sg, trace};
    unsafe impl aya::Pod for addr::AddrKey {}
    unsafe impl aya::Pod for addr::AddrValue {}
    unsafe impl aya::Pod for addr::MacKey {}
    unsafe impl aya::Pod for port::PortConfig {}
    unsafe impl aya::Pod for event::GarpEvent {}
    unsafe impl aya::Pod for event::GarpRateKey {}
    unsafe impl aya::Pod for event::DropEvent {}
    unsafe impl aya::Pod for event::MonitorConfig {}
    unsafe impl aya::Pod for event::DropRate {}
    unsafe impl aya::Pod for event::PortStats {}
    unsafe impl aya::Pod for fwd::L2Key {}
    unsafe impl aya::Pod for fwd::L2Dest {}
    unsafe impl aya::Pod for fwd::NeighKey {}
    unsafe impl aya::Pod for fwd::NeighValue {}
    unsafe impl aya::Pod for fwd::TunPeerKey {}
    unsafe impl aya::Pod for fwd::TunSrcKey {}
    unsafe impl aya::Pod for fwd::FloodList {}
    unsafe impl aya::Pod for fwd::RouteKey {}
    unsafe impl aya::Pod for fwd::RouteDest {}
    unsafe impl aya::Pod for fwd::ChassisConfig {}
    unsafe impl aya::Pod for sg::IdentKey {}
    unsafe impl aya::Pod for sg::PolicyKey {}
    unsafe impl aya::Pod for sg::PolicyValue {}
    unsafe impl aya::Pod for sg::CtKey {}
    unsafe impl aya::Pod for sg::CtValue {}
    unsafe impl aya::Pod for sg::FragKey {}
    unsafe impl aya::Pod for sg::FragValue {}
    unsafe impl aya::Pod for fwd::GroupKey {}
    unsafe impl aya::Pod for fwd::Group {}
    unsafe impl aya::Pod for limits::Limits {}
    unsafe impl aya::Pod for trace::TraceRecord {}
    unsafe impl aya::Pod for limits::CtCount {}
    unsafe impl aya::Pod for limits::CtFreed {}
}
