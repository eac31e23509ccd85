//! Test harness: network namespaces, etcd and agent processes, packet tools.
