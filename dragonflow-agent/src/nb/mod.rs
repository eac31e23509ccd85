//! The northbound model stored in etcd (README: "The northbound model"): JSON values under a prefix
//! (default `/dragonflow/`), shaped after Neutron/Dragonflow objects so operators
//! recognise them.

pub mod active;
pub mod addr;
pub mod bulk;
pub mod cache;
pub mod conflicts;
pub mod decode;
pub mod error;
pub mod etcd;
pub mod index;
pub mod lastgood;
pub mod model;
pub mod parse;
pub mod protocol;
pub mod refs;
pub mod rules;
pub mod schema;
pub mod snapshot;

#[cfg(test)]
mod fixtures;

pub use addr::{IpPrefix, MacAddr};
pub use decode::{NbObject, NbRecord, decode, decode_with};
pub use error::{DecodeError, ValidationError};
pub use model::*;
pub use rules::ValidationOptions;
pub use snapshot::NbSnapshot;
