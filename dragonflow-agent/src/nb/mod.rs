//! The northbound model stored in etcd.
