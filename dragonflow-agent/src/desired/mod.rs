//! The pure computation of what the datapath should hold: from an NB snapshot and the
//! local taps to the entries of every map (each part returns its own entries), and the
//! diff against what is programmed. No I/O: imports only ground (`nb`, `config`) and
//! `dragonflow-common`.

pub mod forwarding;
pub mod hash;
pub mod incremental;
pub mod reconcile;
pub mod scope;
pub mod secgroups;
