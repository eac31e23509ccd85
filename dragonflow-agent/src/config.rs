//! Agent configuration: command-line flags, `DRAGONFLOW_*` environment variables and an
//! optional TOML file with the same keys in snake_case.
//!
//! Precedence: flag > environment > file > default. clap resolves the first two (every
//! field is an `Option` without a clap default, so "not given" stays visible); the file
//! and the defaults are merged here.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Parser, ValueEnum};
use serde::Deserialize;

use crate::{
    datapath::capacity::FILLED,
    nb::{
        AapMode, DEFAULT_PREFIX,
        etcd::{EtcdArgs, EtcdError, EtcdFile, EtcdSettings},
    },
};

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

/// Command line. Defaults are documented in the help texts and applied in
/// [`Cli::resolve`] so that a config file can sit between environment and default.
#[derive(Debug, Default, Parser)]
#[command(
    name = "dragonflow-agent",
    version,
    about = "Dragonflow eBPF hypervisor agent"
)]
pub struct Cli {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "DRAGONFLOW_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This hypervisor's chassis name (required; flag, env or file).
    #[arg(long, env = "DRAGONFLOW_CHASSIS", value_name = "NAME")]
    pub chassis: Option<String>,
    /// etcd endpoints, comma separated [default: http://127.0.0.1:2379].
    #[arg(
        long,
        env = "DRAGONFLOW_ETCD_ENDPOINTS",
        value_name = "URL[,URL…]",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Option<Vec<String>>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Key prefix of the northbound model [default: /dragonflow/].
    #[arg(long, env = "DRAGONFLOW_PREFIX")]
    pub prefix: Option<String>,
    /// Underlay address published in the chassis record [default: 127.0.0.1].
    #[arg(long, env = "DRAGONFLOW_TUNNEL_IP", value_name = "IP")]
    pub tunnel_ip: Option<IpAddr>,
    /// Hook of the from-VM pipeline [default: tc].
    #[arg(long, env = "DRAGONFLOW_HOOK", value_enum)]
    pub hook: Option<Hook>,
    /// XDP attach mode with `--hook xdp` [default: native].
    #[arg(long, env = "DRAGONFLOW_XDP_MODE", value_enum)]
    pub xdp_mode: Option<XdpMode>,
    /// Interfaces with this name prefix get the pipeline even with no known port, and are
    /// thus dropped until their port is known (fail closed) [default: tap].
    #[arg(long, env = "DRAGONFLOW_TAP_PREFIX")]
    pub tap_prefix: Option<String>,
    /// bpffs mount; pins go to <bpffs>/dragonflow/<chassis>/{maps,links} [default: /sys/fs/bpf].
    #[arg(long, env = "DRAGONFLOW_BPFFS", value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
    /// Directory of the agent's instance id (`<chassis>.instance`), which tells a restart
    /// of this agent from another agent using the same chassis name
    /// [default: /var/lib/dragonflow].
    #[arg(long, env = "DRAGONFLOW_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// HTTP address of /metrics, /healthz, /garp and /state [default: 127.0.0.1:9465].
    #[arg(long, env = "DRAGONFLOW_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// How traffic for shared AAP IPs is delivered, published in the chassis record
    /// [default: broadcast].
    #[arg(long, env = "DRAGONFLOW_AAP_MODE", value_enum)]
    pub aap_mode: Option<AapMode>,
    /// Minimum interval between two GARP events for one (port, IP), in ms [default: 200].
    #[arg(long, env = "DRAGONFLOW_GARP_MIN_INTERVAL_MS", value_name = "MS")]
    pub garp_min_interval_ms: Option<u64>,
    /// Detection way: interval between two ARP/ND liveness probes of each local active
    /// holder of a shared AAP IP, in ms; 0 turns probing off [default: 1000].
    #[arg(long, env = "DRAGONFLOW_PROBE_INTERVAL_MS", value_name = "MS")]
    pub probe_interval_ms: Option<u64>,
    /// Detection way: unanswered probes in a row after which the active entry is removed
    /// (forwarding falls back to the broadcast way) [default: 3].
    #[arg(long, env = "DRAGONFLOW_PROBE_MISSES", value_name = "N")]
    pub probe_misses: Option<u32>,
    /// Detection way: the first claim back-off after a move of a shared IP, in ms; a
    /// claim within it waits until it has run out, and moves in quick succession double
    /// it up to ten times this value [default: 1000].
    #[arg(long, env = "DRAGONFLOW_CLAIM_BACKOFF_MS", value_name = "MS")]
    pub claim_backoff_ms: Option<u64>,
    /// Ports with more allowed address pairs are rejected as invalid [default: 10].
    #[arg(long, env = "DRAGONFLOW_MAX_ALLOWED_ADDRESS_PAIRS", value_name = "N")]
    pub max_allowed_address_pairs: Option<usize>,
    /// Accept AAPs of 0.0.0.0/0 and ::/0 (a port may then claim any address) [default: false].
    #[arg(long, env = "DRAGONFLOW_ALLOW_ANY_AAP", num_args = 0..=1, default_missing_value = "true")]
    pub allow_any_aap: Option<bool>,
    /// Forward the datapath's aya-log messages to the agent's log [default: false].
    #[arg(long, env = "DRAGONFLOW_DATAPATH_LOG", num_args = 0..=1, default_missing_value = "true")]
    pub datapath_log: Option<bool>,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG also works [default: info].
    #[arg(long, env = "DRAGONFLOW_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Detach every program and remove this chassis's pins, then exit (uninstall).
    #[arg(long, env = "DRAGONFLOW_CLEANUP", num_args = 0..=1, default_missing_value = "true")]
    pub cleanup: Option<bool>,
    /// The VXLAN device (external/collect-metadata mode, UDP 4789) carrying traffic to and
    /// from other chassis; created if missing [default: df-vxlan].
    #[arg(long, env = "DRAGONFLOW_TUNNEL_DEV", value_name = "NAME")]
    pub tunnel_dev: Option<String>,
    /// Run without a VXLAN device (a single-chassis setup): frames to ports on other
    /// chassis are dropped and counted as `no_tunnel` [default: false].
    #[arg(long, env = "DRAGONFLOW_NO_TUNNEL", num_args = 0..=1, default_missing_value = "true")]
    pub no_tunnel: Option<bool>,
    /// TTL in seconds of the etcd lease holding this chassis' record: how long other
    /// chassis keep sending to this one after it dies [default: 6].
    #[arg(long, env = "DRAGONFLOW_LEASE_TTL", value_name = "SECONDS")]
    pub lease_ttl: Option<i64>,
    /// Switch and route in the datapath (sets CFG_F_FORWARDING once the forwarding maps
    /// are filled). `--forwarding=false` is the escape hatch: hand allowed frames to the
    /// kernel, as before (e.g. to a Linux bridge); the forwarding maps are still
    /// maintained [default: true].
    #[arg(long, env = "DRAGONFLOW_FORWARDING", num_args = 0..=1, default_missing_value = "true")]
    pub forwarding: Option<bool>,
    /// Enforce security groups (sets CFG_F_SECURITY_GROUPS, with the rules written first).
    /// `--security-groups=false` is Neutron's `firewall_driver = noop`: port security
    /// only, every port open to everything; the maps are still maintained [default: true].
    #[arg(long, env = "DRAGONFLOW_SECURITY_GROUPS", num_args = 0..=1, default_missing_value = "true")]
    pub security_groups: Option<bool>,
    /// Seconds between two conntrack garbage collections (expired entries and entries of
    /// taps without a port) [default: 10].
    #[arg(long, env = "DRAGONFLOW_CT_GC_INTERVAL", value_name = "SECONDS")]
    pub ct_gc_interval: Option<u64>,
    /// Flooded frames (broadcast, multicast, unanswered ARP/NS) each port may send per
    /// second after its burst; more are dropped as `flood_rate_limited`; 0 = no limit
    /// [default: 200].
    #[arg(long, env = "DRAGONFLOW_FLOOD_RATE", value_name = "PPS")]
    pub flood_rate: Option<u32>,
    /// Flooded frames a port may send at once before the rate applies [default: 400].
    #[arg(long, env = "DRAGONFLOW_FLOOD_BURST", value_name = "FRAMES")]
    pub flood_burst: Option<u32>,
    /// Conntrack entries each port may hold per origin direction (flows it opens, flows
    /// opened toward it); new flows over it are dropped as `ct_port_quota`; 0 = no quota
    /// [default: 16384, so that fewer than 8 ports cannot fill the 262144-entry table].
    #[arg(long, env = "DRAGONFLOW_CT_PORT_QUOTA", value_name = "ENTRIES")]
    pub ct_port_quota: Option<u32>,
    /// Capacity (max_entries) of a map the agent fills, as `MAP=ENTRIES`; repeat the flag
    /// or separate with commas (`df_policy_v1=524288,df_ident_v1=65536`). Maps not named
    /// keep the defaults of README "Map capacities"; a map pinned by a previous agent
    /// keeps the capacity it was created with (see there). In the file: a table
    /// `[map_capacity]` of `MAP = ENTRIES`; a map named by flag or environment overrides
    /// the file's value for that map.
    #[arg(
        long,
        env = "DRAGONFLOW_MAP_CAPACITY",
        value_name = "MAP=ENTRIES",
        value_delimiter = ','
    )]
    pub map_capacity: Option<Vec<String>>,
}

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
    fn into_vec(self) -> Vec<String> {
        match self {
            EndpointList::List(v) => v,
            EndpointList::One(s) => s.split(',').map(|s| s.trim().to_string()).collect(),
        }
    }
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

/// Checks one `--map-capacity` setting and returns the map's canonical name.
fn map_capacity_entry(map: &str, n: u64) -> Result<(&'static str, u32), ConfigError> {
    let name = FILLED
        .iter()
        .find(|f| **f == map)
        .ok_or_else(|| ConfigError::UnknownMap(map.to_string()))?;
    match u32::try_from(n) {
        Ok(n) if (1..=MAX_MAP_CAPACITY).contains(&n) => Ok((name, n)),
        _ => Err(ConfigError::MapCapacityRange {
            map: map.to_string(),
            n,
        }),
    }
}

/// The file's `[map_capacity]` table, then each `MAP=ENTRIES` of the flag (or environment)
/// over it.
fn map_capacities(
    cli: Option<Vec<String>>,
    file: Option<BTreeMap<String, u32>>,
) -> Result<BTreeMap<&'static str, u32>, ConfigError> {
    let mut out = BTreeMap::new();
    for (map, n) in file.unwrap_or_default() {
        let (name, n) = map_capacity_entry(&map, u64::from(n))?;
        out.insert(name, n);
    }
    for item in cli.unwrap_or_default() {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (map, n) = item
            .split_once('=')
            .and_then(|(m, n)| Some((m.trim(), n.trim().parse::<u64>().ok()?)))
            .ok_or_else(|| ConfigError::BadMapCapacity(item.to_string()))?;
        let (name, n) = map_capacity_entry(map, n)?;
        out.insert(name, n);
    }
    Ok(out)
}

impl Cli {
    /// Merges flags/env (already in `self`) with the file named by `--config` and the defaults.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        self.merge(file)
    }

    pub fn merge(self, file: FileConfig) -> Result<Config, ConfigError> {
        let chassis = self
            .chassis
            .or(file.chassis)
            .ok_or(ConfigError::MissingChassis)?;
        if chassis.is_empty()
            || !chassis
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || chassis.starts_with('.')
        {
            return Err(ConfigError::BadChassis(chassis));
        }
        let prefix = self
            .prefix
            .or(file.prefix)
            .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        if !prefix.starts_with('/') || !prefix.ends_with('/') {
            return Err(ConfigError::BadPrefix(prefix));
        }
        let etcd_endpoints: Vec<String> = self
            .etcd_endpoints
            .or(file.etcd_endpoints.map(EndpointList::into_vec))
            .unwrap_or_else(|| vec![DEFAULT_ETCD.to_string()])
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if etcd_endpoints.is_empty() {
            return Err(ConfigError::NoEndpoints);
        }
        let etcd = self
            .etcd
            .merge(EtcdFile {
                etcd_cacert: file.etcd_cacert,
                etcd_cert: file.etcd_cert,
                etcd_key: file.etcd_key,
                etcd_user: file.etcd_user,
                etcd_password_file: file.etcd_password_file,
            })
            .resolve(etcd_endpoints)?;
        let no_tunnel = self.no_tunnel.or(file.no_tunnel).unwrap_or(false);
        let tunnel_dev = self
            .tunnel_dev
            .or(file.tunnel_dev)
            .unwrap_or_else(|| DEFAULT_TUNNEL_DEV.to_string());
        if crate::nb::validate::check_ifname(&tunnel_dev).is_err() {
            return Err(ConfigError::BadTunnelDev(tunnel_dev));
        }
        let lease_ttl_s = self
            .lease_ttl
            .or(file.lease_ttl)
            .unwrap_or(DEFAULT_LEASE_TTL_S);
        if !(2..=3600).contains(&lease_ttl_s) {
            return Err(ConfigError::BadLeaseTtl(lease_ttl_s));
        }
        let probe_interval_ms = self
            .probe_interval_ms
            .or(file.probe_interval_ms)
            .unwrap_or(DEFAULT_PROBE_INTERVAL_MS);
        if probe_interval_ms != 0 && !(100..=600_000).contains(&probe_interval_ms) {
            return Err(ConfigError::BadProbeInterval(probe_interval_ms));
        }
        let claim_backoff_ms = self
            .claim_backoff_ms
            .or(file.claim_backoff_ms)
            .unwrap_or(DEFAULT_CLAIM_BACKOFF_MS);
        if !(100..=60_000).contains(&claim_backoff_ms) {
            return Err(ConfigError::BadClaimBackoff(claim_backoff_ms));
        }
        let probe_misses = self
            .probe_misses
            .or(file.probe_misses)
            .unwrap_or(DEFAULT_PROBE_MISSES);
        if !(1..=100).contains(&probe_misses) {
            return Err(ConfigError::BadProbeMisses(probe_misses));
        }
        let ct_gc_interval_s = self
            .ct_gc_interval
            .or(file.ct_gc_interval)
            .unwrap_or(DEFAULT_CT_GC_INTERVAL_S);
        if !(1..=3600).contains(&ct_gc_interval_s) {
            return Err(ConfigError::BadCtGcInterval(ct_gc_interval_s));
        }
        let flood_rate = self
            .flood_rate
            .or(file.flood_rate)
            .unwrap_or(DEFAULT_FLOOD_RATE);
        if flood_rate > 1_000_000_000 {
            return Err(ConfigError::BadFloodRate(flood_rate));
        }
        let flood_burst = self
            .flood_burst
            .or(file.flood_burst)
            .unwrap_or(DEFAULT_FLOOD_BURST);
        if flood_burst == 0 {
            return Err(ConfigError::BadFloodBurst);
        }
        let map_capacity = map_capacities(self.map_capacity, file.map_capacity)?;
        Ok(Config {
            map_capacity,
            flood_rate,
            flood_burst,
            ct_port_quota: self
                .ct_port_quota
                .or(file.ct_port_quota)
                .unwrap_or(DEFAULT_CT_PORT_QUOTA),
            security_groups: self
                .security_groups
                .or(file.security_groups)
                .unwrap_or(true),
            ct_gc_interval_s,
            probe_interval_ms,
            probe_misses,
            claim_backoff: Duration::from_millis(claim_backoff_ms),
            tunnel_dev: (!no_tunnel).then_some(tunnel_dev),
            forwarding: self.forwarding.or(file.forwarding).unwrap_or(true),
            lease_ttl_s,
            chassis,
            etcd,
            prefix,
            tunnel_ip: self
                .tunnel_ip
                .or(file.tunnel_ip)
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            hook: self.hook.or(file.hook).unwrap_or_default(),
            xdp_mode: self.xdp_mode.or(file.xdp_mode).unwrap_or_default(),
            tap_prefix: self
                .tap_prefix
                .or(file.tap_prefix)
                .unwrap_or_else(|| DEFAULT_TAP_PREFIX.to_string()),
            bpffs: self
                .bpffs
                .or(file.bpffs)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS)),
            state_dir: self
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            metrics_addr: self
                .metrics_addr
                .or(file.metrics_addr)
                .unwrap_or_else(|| DEFAULT_METRICS.parse().expect("valid default")),
            aap_mode: self.aap_mode.or(file.aap_mode).unwrap_or_default(),
            garp_min_interval_ms: self
                .garp_min_interval_ms
                .or(file.garp_min_interval_ms)
                .unwrap_or(DEFAULT_GARP_MIN_INTERVAL_MS),
            max_allowed_address_pairs: self
                .max_allowed_address_pairs
                .or(file.max_allowed_address_pairs)
                .unwrap_or(DEFAULT_MAX_AAP),
            allow_any_aap: self.allow_any_aap.or(file.allow_any_aap).unwrap_or(false),
            datapath_log: self.datapath_log.or(file.datapath_log).unwrap_or(false),
            log: self.log.or(file.log),
            cleanup: self.cleanup.unwrap_or(false),
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut v = vec!["dragonflow-agent"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("parse")
    }

    #[test]
    fn defaults() {
        let c = parse(&["--chassis", "hv1"])
            .merge(FileConfig::default())
            .unwrap();
        assert_eq!(c.etcd.endpoints, vec![DEFAULT_ETCD]);
        assert_eq!(c.prefix, "/dragonflow/");
        assert_eq!(c.hook, Hook::Tc);
        assert_eq!(c.xdp_mode, XdpMode::Native);
        assert_eq!(c.tap_prefix, "tap");
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:9465");
        assert_eq!(c.aap_mode, AapMode::Broadcast);
        assert_eq!(c.garp_min_interval_ms, 200);
        assert_eq!((c.probe_interval_ms, c.probe_misses), (1000, 3));
        assert_eq!(c.max_allowed_address_pairs, 10);
        assert!(!c.allow_any_aap && !c.datapath_log && !c.cleanup);
        assert_eq!(c.tunnel_dev.as_deref(), Some("df-vxlan"));
        assert_eq!(c.lease_ttl_s, 6);
        assert!(c.forwarding);
        assert!(c.security_groups);
        assert_eq!(c.ct_gc_interval_s, 10);
        assert_eq!(
            (c.flood_rate, c.flood_burst, c.ct_port_quota),
            (200, 400, 16384)
        );
        assert_eq!(c.pin_root(), PathBuf::from("/sys/fs/bpf/dragonflow/hv1"));
    }

    #[test]
    fn security_group_flags() {
        let file: FileConfig =
            toml::from_str("security_groups = false\nct_gc_interval = 30\n").unwrap();
        let c = parse(&["--chassis", "x"]).merge(file).unwrap();
        assert!(!c.security_groups);
        assert_eq!(c.ct_gc_interval_s, 30);
        let c = parse(&["--chassis", "x", "--security-groups=false"])
            .merge(FileConfig::default())
            .unwrap();
        assert!(!c.security_groups);
        assert!(matches!(
            parse(&["--chassis", "x", "--ct-gc-interval", "0"]).merge(FileConfig::default()),
            Err(ConfigError::BadCtGcInterval(0))
        ));
    }

    #[test]
    fn limit_flags() {
        let file: FileConfig =
            toml::from_str("flood_rate = 0\nflood_burst = 8\nct_port_quota = 100\n").unwrap();
        let c = parse(&["--chassis", "x", "--flood-burst", "3"])
            .merge(file)
            .unwrap();
        assert_eq!((c.flood_rate, c.flood_burst, c.ct_port_quota), (0, 3, 100));
        assert!(matches!(
            parse(&["--chassis", "x", "--flood-burst", "0"]).merge(FileConfig::default()),
            Err(ConfigError::BadFloodBurst)
        ));
        assert!(matches!(
            parse(&["--chassis", "x", "--flood-rate", "2000000000"]).merge(FileConfig::default()),
            Err(ConfigError::BadFloodRate(_))
        ));
    }

    #[test]
    fn map_capacities_from_file_and_flags() {
        let file: FileConfig =
            toml::from_str("[map_capacity]\ndf_policy_v1 = 1000\ndf_ident_v1 = 50\n").unwrap();
        let c = parse(&[
            "--chassis",
            "x",
            "--map-capacity",
            "df_policy_v1=2000,df_l2_v1=300",
            "--map-capacity",
            "df_ports_v1=64",
        ])
        .merge(file)
        .unwrap();
        assert_eq!(
            c.map_capacity,
            BTreeMap::from([
                ("df_policy_v1", 2000),
                ("df_ident_v1", 50),
                ("df_l2_v1", 300),
                ("df_ports_v1", 64)
            ]),
            "the flag overrides the file per map; the file's other maps stay"
        );
        assert!(
            parse(&["--chassis", "x"])
                .merge(FileConfig::default())
                .unwrap()
                .map_capacity
                .is_empty(),
            "default: the compiled-in capacities"
        );
        let err = |arg: &str| {
            parse(&["--chassis", "x", "--map-capacity", arg])
                .merge(FileConfig::default())
                .unwrap_err()
                .to_string()
        };
        assert!(err("df_policy_v1").contains("expected MAP=ENTRIES"));
        assert!(err("df_policy_v1=lots").contains("expected MAP=ENTRIES"));
        assert!(err("df_ct_v1=5").contains("not a map the agent fills"));
        assert!(err("df_policy_v1=0").contains("between 1 and"));
        assert!(err("df_policy_v1=99999999999").contains("between 1 and"));
        let file: FileConfig = toml::from_str("[map_capacity]\ndf_nope = 5\n").unwrap();
        assert!(parse(&["--chassis", "x"]).merge(file).is_err());
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let file: FileConfig = toml::from_str(
            "chassis = \"from-file\"\nhook = \"xdp\"\netcd_endpoints = \"http://a:1,http://b:2\"\n\
             allow_any_aap = true\n",
        )
        .unwrap();
        let c = parse(&["--chassis", "hv2", "--allow-any-aap=false"])
            .merge(file)
            .unwrap();
        let probes: FileConfig =
            toml::from_str("probe_interval_ms = 0\nprobe_misses = 5\naap_mode = \"detection\"\n")
                .unwrap();
        let p = parse(&["--chassis", "x", "--probe-misses", "2"])
            .merge(probes)
            .unwrap();
        assert_eq!(
            (p.probe_interval_ms, p.probe_misses),
            (0, 2),
            "0 = off; flag wins"
        );
        assert_eq!(p.aap_mode, AapMode::Detection);
        assert_eq!(c.chassis, "hv2");
        assert_eq!(c.hook, Hook::Xdp);
        assert_eq!(c.etcd.endpoints, vec!["http://a:1", "http://b:2"]);
        assert!(!c.allow_any_aap);
    }

    #[test]
    fn etcd_tls_and_auth_from_the_file_and_flags() {
        let dir = std::env::temp_dir().join(format!("df-config-etcd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "from-file\n").unwrap();
        // The file's keys apply; a missing CA file is named.
        let file: FileConfig = toml::from_str(&format!(
            "etcd_endpoints = [\"https://a:1\"]\netcd_cacert = \"{}\"\netcd_user = \"u\"\n\
             etcd_password_file = {:?}\nstate_dir = \"/tmp/st\"\n",
            dir.join("missing-ca.pem").display(),
            pw.display()
        ))
        .unwrap();
        let e = parse(&["--chassis", "x"]).merge(file).unwrap_err();
        assert!(e.to_string().contains("missing-ca.pem"), "{e}");
        // Flags beat the file; the password comes from the file named.
        let file: FileConfig = toml::from_str(&format!(
            "etcd_cacert = \"/nonexistent\"\netcd_user = \"u\"\netcd_password_file = {:?}\n",
            pw.display()
        ))
        .unwrap();
        let e = parse(&["--chassis", "x", "--etcd-endpoints", "https://a:1"])
            .merge(file)
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent"), "{e}");
        let c = parse(&[
            "--chassis",
            "x",
            "--etcd-user",
            "u",
            &format!("--etcd-password-file={}", pw.display()),
        ])
        .merge(FileConfig::default())
        .unwrap();
        assert!(
            !format!("{c:?}").contains("from-file"),
            "password in Debug output"
        );
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn comma_separated_endpoints_and_bool_flags() {
        let c = parse(&[
            "--chassis",
            "x",
            "--etcd-endpoints",
            "http://a:1,http://b:2",
            "--cleanup",
        ])
        .merge(FileConfig::default())
        .unwrap();
        assert_eq!(c.etcd.endpoints.len(), 2);
        assert!(c.cleanup);
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse(&[]).merge(FileConfig::default()),
            Err(ConfigError::MissingChassis)
        ));
        assert!(matches!(
            parse(&["--chassis", "../x"]).merge(FileConfig::default()),
            Err(ConfigError::BadChassis(_))
        ));
        assert!(toml::from_str::<FileConfig>("nope = 1").is_err());
        assert!(matches!(
            parse(&["--chassis", "x", "--lease-ttl", "1"]).merge(FileConfig::default()),
            Err(ConfigError::BadLeaseTtl(1))
        ));
        assert!(matches!(
            parse(&["--chassis", "x", "--tunnel-dev", "a/b"]).merge(FileConfig::default()),
            Err(ConfigError::BadTunnelDev(_))
        ));
        assert!(matches!(
            parse(&["--chassis", "x", "--probe-interval-ms", "50"]).merge(FileConfig::default()),
            Err(ConfigError::BadProbeInterval(50))
        ));
        assert!(matches!(
            parse(&["--chassis", "x", "--probe-misses", "0"]).merge(FileConfig::default()),
            Err(ConfigError::BadProbeMisses(0))
        ));
    }

    #[test]
    fn tunnel_flags() {
        let c = parse(&[
            "--chassis",
            "x",
            "--no-tunnel",
            "--lease-ttl",
            "3",
            "--forwarding",
        ])
        .merge(FileConfig::default())
        .unwrap();
        assert_eq!(c.tunnel_dev, None);
        assert_eq!(c.lease_ttl_s, 3);
        assert!(c.forwarding);
        let c = parse(&["--chassis", "x", "--tunnel-dev", "vx0"])
            .merge(FileConfig::default())
            .unwrap();
        assert_eq!(c.tunnel_dev.as_deref(), Some("vx0"));
        // The escape hatch: allowed frames to the kernel, as in issue 2.
        let c = parse(&["--chassis", "x", "--forwarding=false"])
            .merge(FileConfig::default())
            .unwrap();
        assert!(!c.forwarding);
    }
}
