//! The optional TOML file: the same keys as the flags, in snake_case.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{ConfigError, Hook, XdpMode};
use crate::nb::AapMode;

/// The same settings as read from the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub chassis: Option<String>,
    pub etcd_endpoints: Option<EndpointList>,
    // The keys of `EtcdArgs` (serde cannot flatten into a struct that denies unknown keys).
    pub etcd_cacert: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    pub etcd_user: Option<String>,
    pub etcd_password_file: Option<PathBuf>,
    pub prefix: Option<String>,
    pub tunnel_ip: Option<IpAddr>,
    pub hook: Option<Hook>,
    pub xdp_mode: Option<XdpMode>,
    pub tap_prefix: Option<String>,
    pub bpffs: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
    pub aap_mode: Option<AapMode>,
    pub garp_min_interval_ms: Option<u64>,
    pub probe_interval_ms: Option<u64>,
    pub probe_misses: Option<u32>,
    pub claim_backoff_ms: Option<u64>,
    pub max_allowed_address_pairs: Option<usize>,
    pub allow_any_aap: Option<bool>,
    pub datapath_log: Option<bool>,
    pub log: Option<String>,
    pub tunnel_dev: Option<String>,
    pub no_tunnel: Option<bool>,
    pub lease_ttl: Option<i64>,
    pub forwarding: Option<bool>,
    pub security_groups: Option<bool>,
    pub ct_gc_interval: Option<u64>,
    pub flood_rate: Option<u32>,
    pub flood_burst: Option<u32>,
    pub ct_port_quota: Option<u32>,
    pub map_capacity: Option<BTreeMap<String, u32>>,
}

/// `etcd_endpoints` in the file: a list, or one comma-separated string like the flag.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EndpointList {
    List(Vec<String>),
    One(String),
}

impl EndpointList {
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            EndpointList::List(v) => v,
            EndpointList::One(s) => s.split(',').map(|s| s.trim().to_string()).collect(),
        }
    }
}

pub(super) fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}
