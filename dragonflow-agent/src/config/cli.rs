//! The command line (and `DRAGONFLOW_*` environment): the flags, and their merge with the
//! file and the defaults into a [`Config`].

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::Parser;

use super::{
    Config, ConfigError, DEFAULT_BPFFS, DEFAULT_CLAIM_BACKOFF_MS, DEFAULT_CT_GC_INTERVAL_S,
    DEFAULT_CT_PORT_QUOTA, DEFAULT_ETCD, DEFAULT_FLOOD_BURST, DEFAULT_FLOOD_RATE,
    DEFAULT_GARP_MIN_INTERVAL_MS, DEFAULT_LEASE_TTL_S, DEFAULT_MAX_AAP, DEFAULT_METRICS,
    DEFAULT_PROBE_INTERVAL_MS, DEFAULT_PROBE_MISSES, DEFAULT_STATE_DIR, DEFAULT_TAP_PREFIX,
    DEFAULT_TUNNEL_DEV, Hook, MAX_MAP_CAPACITY, XdpMode,
    file::{EndpointList, FileConfig, read_file},
};
use crate::{
    config::FILLED,
    nb::{
        AapMode, DEFAULT_PREFIX,
        etcd::{EtcdArgs, EtcdFile},
    },
};

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

/// Checks one `--map-capacity` setting and returns the map's canonical name.
pub(super) fn map_capacity_entry(map: &str, n: u64) -> Result<(&'static str, u32), ConfigError> {
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
pub(super) fn map_capacities(
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
        if crate::nb::rules::check_ifname(&tunnel_dev).is_err() {
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
