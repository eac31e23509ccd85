//! The northbound model stored in etcd (README: "The northbound model"): JSON values under a prefix
//! (default `/dragonflow/`), shaped after Neutron/Dragonflow objects so operators
//! recognise them.

pub mod active;
pub mod addr;
pub mod bulk;
pub mod claims;
pub mod conflicts;
pub mod etcd;
pub mod index;
pub mod model;
pub mod paged;
pub mod schema;
pub mod snapshot;
pub mod store;
pub mod validate;

pub use addr::{IpPrefix, MacAddr};
pub use model::*;
pub use snapshot::NbSnapshot;
pub use store::{NbStore, StoreError, Versioned};
pub use validate::{
    DecodeError, NbObject, NbRecord, ValidationError, ValidationOptions, decode, decode_with,
};
