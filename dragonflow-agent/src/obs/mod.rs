//! Observation: the state the tasks publish (`state`), the GARP table (`garp`), the
//! live event stream (`monitor`), its Prometheus exposition (`metrics`), the HTTP
//! endpoints that serve them (`http`) and the trace answer (`trace`).
//!
//! An adapter: it reads ground and pure types and never imports a task. Tasks publish
//! into [`state::Shared`] (or register their own collector in the metrics registry);
//! what obs needs from a task's internals it reads through a trait the task implements
//! ([`state::CtReport`]).

pub mod garp;
pub mod http;
pub mod metrics;
pub mod monitor;
pub mod state;
pub mod trace;
