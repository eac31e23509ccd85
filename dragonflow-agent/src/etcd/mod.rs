//! The adapter that talks to etcd: the agent's session (chassis lease, paged reads, watch,
//! resync), dfctl's typed store, and the instance id that owns the chassis record. The
//! connection settings they use are ground ([`crate::nb::etcd`]), shared with the config.

pub mod call;
pub mod instance;
pub mod paged;
pub mod session;
pub mod store;

pub use store::{NbStore, StoreError, Versioned};
