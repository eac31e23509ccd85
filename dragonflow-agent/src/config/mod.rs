//! Agent configuration: command-line flags, `DRAGONFLOW_*` environment variables and an
//! optional TOML file with the same keys in snake_case.
//!
//! Precedence: flag > environment > file > default. clap resolves the first two (every
//! field is an `Option` without a clap default, so "not given" stays visible); the file
//! and the defaults are merged here.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::ValueEnum;
use serde::Deserialize;

use crate::nb::{
    AapMode,
    etcd::{EtcdError, EtcdSettings},
};

/// The maps the agent fills from the NB state: the ones whose capacity is configurable
/// (`--map-capacity`) and checked against the need before every write. (The datapath's
/// own tables, conntrack, rate limits and counters, are sized by the constants.)
pub const FILLED: [&str; 15] = [
    dragonflow_common::maps::PORTS,
    dragonflow_common::maps::ADDRS,
    dragonflow_common::maps::CIDRS,
    dragonflow_common::maps::MACS,
    dragonflow_common::maps::DEVMAP,
    dragonflow_common::maps::NEIGH,
    dragonflow_common::maps::ROUTES,
    dragonflow_common::maps::L2,
    dragonflow_common::maps::FLOOD,
    dragonflow_common::maps::GROUPS,
    dragonflow_common::maps::TUN_PEERS,
    dragonflow_common::maps::TUN_SRCS,
    dragonflow_common::maps::IDENT,
    dragonflow_common::maps::IDENT_LPM,
    dragonflow_common::maps::POLICY,
];

mod cli;
mod file;
#[cfg(test)]
mod tests;

pub use cli::Cli;
pub use file::{EndpointList, FileConfig};

/// Where the from-VM pipeline runs on a tap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// XDP, with the TC pipeline as its companion: XDP drops early and finishes ARP/ICMP
    /// to tun taps; it hands TCP/UDP (a VM's offloaded checksum is invisible to XDP),
    /// frames over the MTU (GSO), tunnel, flood and routed frames to TC. Correct with real
    /// virtio guests (README, "XDP or TC"); slower than TC on veth taps.
    Xdp,
    /// tcx ingress classifier: keeps GSO and checksum state; the default.
    #[default]
    Tc,
}

impl Hook {
    pub const fn as_str(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }
}

/// XDP attach mode (only with `--hook xdp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Driver (native) XDP.
    #[default]
    Native,
    /// Generic XDP in the kernel stack (works on any device, slower).
    Skb,
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub chassis: String,
    /// Endpoints, TLS and credentials (files already read).
    pub etcd: EtcdSettings,
    pub prefix: String,
    pub tunnel_ip: IpAddr,
    pub hook: Hook,
    pub xdp_mode: XdpMode,
    pub tap_prefix: String,
    pub bpffs: PathBuf,
    /// Where the instance id is kept.
    pub state_dir: PathBuf,
    pub metrics_addr: SocketAddr,
    pub aap_mode: AapMode,
    pub garp_min_interval_ms: u64,
    /// Drop events per second per CPU for `dfctl monitor`.
    pub monitor_rate: u32,
    /// Ports in `dragonflow_port_drops_top`.
    pub port_drops_top_k: usize,
    /// Liveness probe interval of the detection way (0: off).
    pub probe_interval_ms: u64,
    /// Unanswered probes after which an active entry is removed.
    pub probe_misses: u32,
    /// The detection way's first claim back-off (flap dampening); doubles up to 10×.
    pub claim_backoff: Duration,
    pub max_allowed_address_pairs: usize,
    pub allow_any_aap: bool,
    pub datapath_log: bool,
    /// The log filter; `None` = RUST_LOG or "info".
    pub log: Option<String>,
    pub cleanup: bool,
    /// The VXLAN device's name; `None` with `--no-tunnel`.
    pub tunnel_dev: Option<String>,
    /// Lease TTL of the chassis record, in seconds.
    pub lease_ttl_s: i64,
    /// Set `CFG_F_FORWARDING` once the forwarding maps are complete.
    pub forwarding: bool,
    /// Set `CFG_F_SECURITY_GROUPS` (after the rules are written).
    pub security_groups: bool,
    /// Conntrack garbage collection period, in seconds.
    pub ct_gc_interval_s: u64,
    /// Per-port flood rate limit (frames/s after the burst; 0 = off) and burst.
    pub flood_rate: u32,
    pub flood_burst: u32,
    /// Conntrack entries per port and origin direction (0 = no quota).
    pub ct_port_quota: u32,
    /// Capacities configured for maps the agent fills (only those named; the others keep
    /// `dragonflow_common::maps`' constants). Applied when a map is created.
    pub map_capacity: BTreeMap<&'static str, u32>,
}

pub const DEFAULT_ETCD: &str = "http://127.0.0.1:2379";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/dragonflow";
pub const DEFAULT_METRICS: &str = "127.0.0.1:9465";
pub const DEFAULT_GARP_MIN_INTERVAL_MS: u64 = 200;
pub const DEFAULT_MAX_AAP: usize = 10;
/// One probe a second and three misses: a frozen holder loses its entry in about 3 s,
/// well under a VRRP master-down interval plus a client's patience.
pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 1000;
/// OVN's claim back-off starts at 1 s too.
pub const DEFAULT_CLAIM_BACKOFF_MS: u64 = 1000;
pub const DEFAULT_PROBE_MISSES: u32 = 3;
pub const DEFAULT_TAP_PREFIX: &str = "tap";
pub const DEFAULT_TUNNEL_DEV: &str = "df-vxlan";
/// Short enough that a dead chassis leaves every flood list within seconds, long enough
/// to ride out a keepalive lost to a busy etcd (keepalives go every TTL/3).
pub const DEFAULT_LEASE_TTL_S: i64 = 6;
/// The shortest conntrack timeout is 10 s (a closed TCP flow): collecting as often keeps
/// dead entries within a timeout of their end without rescanning a busy table constantly.
pub const DEFAULT_CT_GC_INTERVAL_S: u64 = 10;
/// A VM floods a few frames a second (DHCP, gratuitous ARP, DAD/RS/MLD at boot, mDNS, a
/// VRRP advert per instance and second): 200/s is far above that, while a storm reaches
/// each other port of the network (and each other chassis) at 200 copies/s, not at line
/// rate.
pub const DEFAULT_FLOOD_RATE: u32 = 200;
/// Covers a VM sending everything it floods at boot at once, or resolving a whole /24
/// behind a CIDR allowed address pair in one go (two seconds of the rate).
pub const DEFAULT_FLOOD_BURST: u32 = 400;
/// Ports that could fill the conntrack table together, at the default quota.
pub const CT_QUOTA_PORTS: u32 = 8;
/// `CT_MAX / (2 origins × CT_QUOTA_PORTS)`: 16384 flows a port opens plus 16384 opened
/// toward it, so the table cannot be exhausted by fewer than `CT_QUOTA_PORTS` ports; far
/// more than a VM keeps open (Linux's own default table is 65536 for a whole host).
pub const DEFAULT_CT_PORT_QUOTA: u32 = dragonflow_common::maps::CT_MAX / (2 * CT_QUOTA_PORTS);
// The documented guarantee: `CT_QUOTA_PORTS` ports fill the table, one fewer cannot.
const _: () =
    assert!(CT_QUOTA_PORTS * 2 * DEFAULT_CT_PORT_QUOTA == dragonflow_common::maps::CT_MAX);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("--chassis is required (or DRAGONFLOW_CHASSIS, or `chassis` in the config file)")]
    MissingChassis,
    #[error(
        "invalid chassis name {0:?}: use letters, digits, '-', '_' and '.' (it names pin directories and etcd keys)"
    )]
    BadChassis(String),
    #[error("--prefix must start and end with '/' (got {0:?})")]
    BadPrefix(String),
    #[error("--etcd-endpoints is empty")]
    NoEndpoints,
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("--tunnel-dev {0:?} is not a valid interface name")]
    BadTunnelDev(String),
    #[error("--lease-ttl must be between 2 and 3600 seconds (got {0})")]
    BadLeaseTtl(i64),
    #[error("--ct-gc-interval must be between 1 and 3600 seconds (got {0})")]
    BadCtGcInterval(u64),
    #[error("--probe-interval-ms must be 0 (off) or between 100 and 600000 (got {0})")]
    BadProbeInterval(u64),
    #[error("--probe-misses must be between 1 and 100 (got {0})")]
    BadProbeMisses(u32),
    #[error("--claim-backoff-ms must be between 100 and 60000 (got {0})")]
    BadClaimBackoff(u64),
    #[error("--flood-rate must be at most 1000000000 frames/s (got {0}; 0 = no limit)")]
    BadFloodRate(u32),
    #[error("--flood-burst must be at least 1 frame (got 0)")]
    BadFloodBurst,
    #[error("--map-capacity {0:?}: expected MAP=ENTRIES, e.g. df_policy_v1=524288")]
    BadMapCapacity(String),
    #[error("--map-capacity: {0:?} is not a map the agent fills; one of: {list}", list = FILLED.join(", "))]
    UnknownMap(String),
    #[error(
        "--map-capacity {map}={n}: the capacity must be between 1 and {MAX_MAP_CAPACITY} entries"
    )]
    MapCapacityRange { map: String, n: u64 },
}

/// The largest `--map-capacity` accepted: 16 Mi entries, far past any chassis (a map of
/// that size takes about a gigabyte of kernel memory); a typo such as an extra zero is
/// refused here instead of failing the load.
pub const MAX_MAP_CAPACITY: u32 = 1 << 24;

/// `<bpffs>/dragonflow/<chassis>`: where a chassis' agent pins its maps and links (`dfctl
/// ct list` reads the conntrack table there).
pub fn pin_root_of(bpffs: &Path, chassis: &str) -> PathBuf {
    bpffs.join("dragonflow").join(chassis)
}

impl Config {
    /// `<bpffs>/dragonflow/<chassis>`.
    pub fn pin_root(&self) -> PathBuf {
        pin_root_of(&self.bpffs, &self.chassis)
    }
    pub fn maps_dir(&self) -> PathBuf {
        self.pin_root().join("maps")
    }
    pub fn links_dir(&self) -> PathBuf {
        self.pin_root().join("links")
    }
}
