//! `dfctl`: the operator CLI for the Dragonflow northbound database in etcd.
//!
//! Objects are validated with Neutron's rules (`nb::validate`) before they are written, and
//! checked against their neighbours (lswitch exists, fixed IPs inside its subnets, unique
//! MAC/fixed IPs per lswitch, no overlapping subnets, …). Referential checks read, then
//! write: two operators racing can still slip past them (as with Neutron's API without DB
//! constraints); the create itself is atomic and requires the lswitch to exist.
//!
//! Exit codes: 0 success; 2 usage, validation or state error (not found, already exists,
//! still in use); 1 etcd or the agent unreachable or failing. Errors are one line on stderr:
//! `error: lport p1: allowed address pair 192.0.2.300 is not an IP address or CIDR`.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use dragonflow_agent::activeport;
use dragonflow_agent::nb::etcd::{self, EtcdArgs};
use dragonflow_agent::nb::{
    AapMode, ActivePort, AllowedAddressPair, Chassis, DEFAULT_PREFIX, IpPrefix, Kind, LPort,
    LRouter, LRouterPort, LSwitch, NbRecord, NbStore, StoreError, Subnet, ValidationError,
    ValidationOptions, Versioned,
    store::{DEFAULT_CONNECT_TIMEOUT, Listing},
    validate::{
        self, parse_aap, parse_cidr, parse_fixed_ip, parse_gateway, parse_mac, validate_lport_refs,
        validate_lrouter_port_refs, validate_subnet_refs,
    },
};
use dragonflow_agent::nb::{EtherType, RuleDirection, SecGroup, SecGroupRule};
use dragonflow_agent::nb::{
    bulk::{self, DEFAULT_GROUP},
    conflicts, paged,
};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(
    name = "dfctl",
    version,
    about = "Manage the Dragonflow northbound database in etcd"
)]
struct Cli {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        global = true,
        env = "DRAGONFLOW_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    etcd_endpoints: Vec<String>,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Key prefix of the NB objects.
    #[arg(long, global = true, env = "DRAGONFLOW_PREFIX", default_value = DEFAULT_PREFIX)]
    prefix: String,
    /// Seconds to wait for etcd (or the agent) before giving up.
    #[arg(long, global = true, env = "DRAGONFLOW_TIMEOUT", default_value_t = 5.0)]
    timeout: f64,
    /// Most allowed address pairs per port (Neutron's max_allowed_address_pairs).
    #[arg(
        long,
        global = true,
        env = "DRAGONFLOW_MAX_ALLOWED_ADDRESS_PAIRS",
        default_value_t = validate::DEFAULT_MAX_ALLOWED_ADDRESS_PAIRS
    )]
    max_allowed_address_pairs: usize,
    /// Accept 0.0.0.0/0 or ::/0 as an allowed address pair. Such a pair lets the port use,
    /// and claim, every address on its network: anti-spoofing is off for it.
    #[arg(long, global = true, env = "DRAGONFLOW_ALLOW_ANY_AAP")]
    allow_any_aap: bool,
    /// Output format of list commands.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Logical switches (Neutron networks).
    #[command(subcommand)]
    Lswitch(LswitchCmd),
    /// Subnets of a logical switch.
    #[command(subcommand)]
    Subnet(SubnetCmd),
    /// Logical ports (Neutron ports) with their allowed address pairs.
    #[command(subcommand)]
    Lport(LportCmd),
    /// Distributed logical routers (one interface per lswitch).
    #[command(subcommand)]
    Lrouter(LrouterCmd),
    /// Security groups (Neutron semantics: allow rules; a port's groups say what it may
    /// send and receive).
    #[command(subcommand)]
    Secgroup(SecgroupCmd),
    /// The conntrack table of the agent on this host (read from its pinned map; root).
    #[command(subcommand)]
    Ct(CtCmd),
    /// Hypervisors registered by their agents.
    #[command(subcommand)]
    Chassis(ChassisCmd),
    /// Gratuitous ARPs / ARP replies for AAP IPs seen by an agent's datapath.
    #[command(subcommand)]
    Garp(GarpCmd),
    /// Shared allowed-address-pair IPs: holders, mode, the active port (detection way) and
    /// its history.
    #[command(subcommand)]
    Aap(AapCmd),
    /// Create or replace the records of a file (a JSON or YAML list of records, each with
    /// a `kind`), validated as a whole: one bad record and nothing is written.
    Apply(ApplyArgs),
}

#[derive(Args, Debug)]
struct ApplyArgs {
    /// The file (`.json`, `.yaml`/`.yml`, else by content), or `-` for standard input.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: String,
    /// Most records per etcd transaction: the server's `--max-txn-ops` (etcd's default).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    max_txn_ops: u32,
    /// Validate and say what would be written, without writing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand, Debug)]
enum AapCmd {
    /// Per network: every IP listed as a single-IP AAP by two or more ports (or with an
    /// active entry), its holders, the mode, and the active port with its chassis and since
    /// when.
    List {
        /// Only this lswitch.
        #[arg(long)]
        lswitch: Option<String>,
    },
    /// Who held the IP, when, and why it changed (claims and removals, oldest first).
    History { lswitch: String, ip: String },
}

#[derive(Subcommand, Debug)]
enum LswitchCmd {
    Create {
        id: String,
        /// VXLAN VNI (segmentation_id), 1..=16777215.
        #[arg(long)]
        vni: u32,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value_t = dragonflow_agent::nb::default_mtu())]
        mtu: u16,
        /// Override the agents' aap_mode for this network.
        #[arg(long, value_enum)]
        aap_mode: Option<AapMode>,
    },
    Delete {
        id: String,
    },
    List,
    Show {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum SubnetCmd {
    Create {
        id: String,
        #[arg(long)]
        lswitch: String,
        /// e.g. 192.0.2.0/24 or 2001:db8::/64; ip_version is derived from it.
        #[arg(long)]
        cidr: String,
        /// Gateway address inside the cidr (none when omitted).
        #[arg(long)]
        gateway: Option<String>,
    },
    Delete {
        id: String,
    },
    List,
    Show {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum CtCmd {
    /// Tracked flows, as seen from each port (local = the VM's side).
    List {
        /// The chassis whose agent runs here (its pins are under <bpffs>/dragonflow/<chassis>).
        #[arg(long, env = "DRAGONFLOW_CHASSIS")]
        chassis: String,
        #[arg(long, env = "DRAGONFLOW_BPFFS", default_value = dragonflow_agent::config::DEFAULT_BPFFS)]
        bpffs: std::path::PathBuf,
        /// Only the flows of this tap.
        #[arg(long)]
        ifindex: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
enum SecgroupCmd {
    /// Create a group with Neutron's default rules: egress to anywhere (IPv4 and IPv6);
    /// the group named `default` also admits ingress from its own members.
    Create {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
        /// Create it without rules (nothing allowed until rules are added).
        #[arg(long)]
        no_default_rules: bool,
    },
    /// Delete a group (refused while ports use it or other groups' rules name it).
    Delete {
        id: String,
    },
    List,
    /// The group's rules (a table; the record with -o json).
    Show {
        id: String,
    },
    /// Add a rule; prints its id.
    RuleAdd(RuleAdd),
    /// Delete a rule by id.
    RuleDelete {
        group: String,
        rule_id: String,
    },
}

#[derive(Args, Debug)]
struct RuleAdd {
    group: String,
    /// ingress (to the VM) or egress (from the VM).
    #[arg(long)]
    direction: String,
    /// ipv4 or ipv6 [default: the remote prefix's family, else ipv4].
    #[arg(long)]
    ethertype: Option<String>,
    /// tcp, udp, icmp, icmpv6, sctp, …, any, or a protocol number 1-255 [default: any].
    #[arg(long)]
    protocol: Option<String>,
    /// First port (tcp/udp), or the ICMP type.
    #[arg(long)]
    port_min: Option<u32>,
    /// Last port (tcp/udp; default: --port-min), or the ICMP code.
    #[arg(long)]
    port_max: Option<u32>,
    /// The remote addresses (CIDR or IP) [default: any address of the ethertype].
    #[arg(long, value_name = "CIDR", conflicts_with = "remote_group")]
    remote_ip_prefix: Option<String>,
    /// The remote side is any member of this group (its ports' fixed IPs and allowed
    /// address pairs).
    #[arg(long, value_name = "GROUP")]
    remote_group: Option<String>,
    /// Rule id [default: a random UUID].
    #[arg(long = "id", value_name = "RULE_ID")]
    rule_id: Option<String>,
}

#[derive(Subcommand, Debug)]
enum LportCmd {
    Create(LportCreate),
    Update(LportUpdate),
    Delete { id: String },
    List,
    Show { id: String },
}

#[derive(Args, Debug)]
struct LportCreate {
    id: String,
    #[arg(long)]
    lswitch: String,
    #[arg(long)]
    mac: String,
    /// A fixed IP (repeatable).
    #[arg(long = "fixed-ip", value_name = "IP")]
    fixed_ips: Vec<String>,
    /// An allowed address pair IP[/LEN][,MAC] (repeatable); MAC defaults to the port's.
    #[arg(long = "aap", value_name = "IP[/LEN][,MAC]")]
    aaps: Vec<String>,
    /// Disable port security (no anti-spoofing, no security groups, no AAPs).
    #[arg(long)]
    no_port_security: bool,
    /// A security group id (repeatable). Without any, a port with port security gets
    /// `default` (created if missing: egress anywhere, ingress from its members).
    #[arg(long = "security-group", value_name = "SG")]
    security_groups: Vec<String>,
    /// Bind the port to this chassis.
    #[arg(long)]
    chassis: Option<String>,
    /// Tap device name on the chassis (default: tap + first 11 chars of the id).
    #[arg(long)]
    ifname: Option<String>,
    #[arg(long, default_value = "")]
    device_owner: String,
}

#[derive(Args, Debug)]
struct LportUpdate {
    id: String,
    /// Add an allowed address pair IP[/LEN][,MAC] (repeatable).
    #[arg(long = "add-aap", value_name = "IP[/LEN][,MAC]")]
    add_aaps: Vec<String>,
    /// Remove an allowed address pair (repeatable); without MAC every pair of that IP goes.
    #[arg(long = "remove-aap", value_name = "IP[/LEN][,MAC]")]
    remove_aaps: Vec<String>,
    /// Replace the fixed IPs with these (repeatable).
    #[arg(long = "fixed-ip", value_name = "IP")]
    fixed_ips: Vec<String>,
    /// Enable or disable port security.
    #[arg(long, value_name = "true|false")]
    port_security: Option<bool>,
    /// Replace the security groups with these (repeatable).
    #[arg(
        long = "security-group",
        value_name = "SG",
        conflicts_with = "no_security_groups"
    )]
    security_groups: Vec<String>,
    /// Remove every security group.
    #[arg(long)]
    no_security_groups: bool,
    /// Bind the port to this chassis.
    #[arg(long, conflicts_with = "unbind")]
    chassis: Option<String>,
    /// Unbind the port (clear chassis).
    #[arg(long)]
    unbind: bool,
    /// Tap device name on the chassis.
    #[arg(long)]
    ifname: Option<String>,
    #[arg(long)]
    device_owner: Option<String>,
}

#[derive(Subcommand, Debug)]
enum LrouterCmd {
    Create {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Connect the router to an lswitch (its address there is usually the subnet's gateway;
    /// on a dual-stack network give --ip twice, one IPv4 and one IPv6 address).
    AddInterface {
        router: String,
        #[arg(long)]
        lswitch: String,
        #[arg(long)]
        mac: String,
        /// The interface address with its subnet's prefix length, e.g. 192.0.2.1/24 or
        /// 2001:db8:1::1/64; repeatable, at most one per family (IPv4 and IPv6 on one
        /// interface).
        #[arg(long, value_name = "IP/LEN", required = true)]
        ip: Vec<String>,
        /// Interface id [default: <router>-<lswitch>].
        #[arg(long = "id", value_name = "IFACE_ID")]
        iface_id: Option<String>,
    },
    /// Disconnect the router from an lswitch.
    RemoveInterface {
        router: String,
        #[arg(long)]
        lswitch: String,
    },
    Delete {
        id: String,
    },
    List,
    Show {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum ChassisCmd {
    List,
    Show { name: String },
}

#[derive(Subcommand, Debug)]
enum GarpCmd {
    /// The last GARP seen per IP (HTTP GET <agent>/garp).
    List {
        /// The agent's HTTP address (its metrics listener).
        #[arg(
            long,
            env = "DRAGONFLOW_AGENT_URL",
            default_value = "http://127.0.0.1:9465"
        )]
        agent: String,
    },
}

/// A failure, with the exit code it maps to.
#[derive(Debug)]
enum CliError {
    /// Bad input or a refused request: exit 2.
    Refused(String),
    /// etcd / the agent unreachable or failing: exit 1.
    Unavailable(String),
}

impl CliError {
    fn invalid(kind: Kind, id: &str, e: ValidationError) -> Self {
        CliError::Refused(format!("{} {id}: {e}", kind.segment()))
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        let msg = error_chain(&e);
        match e {
            StoreError::Connect { .. }
            | StoreError::Unreachable { .. }
            | StoreError::Etcd { .. }
            | StoreError::Decode(_) => CliError::Unavailable(msg),
            _ => CliError::Refused(msg),
        }
    }
}

/// `e: cause: cause`, on one line, without repeating a cause already in the message.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        src = s.source();
    }
    msg.replace('\n', " ")
}

type Result<T, E = CliError> = std::result::Result<T, E>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Refused(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(CliError::Unavailable(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let timeout = Duration::from_secs_f64(cli.timeout.clamp(0.1, 3600.0));
    if let Cmd::Garp(GarpCmd::List { agent }) = &cli.cmd {
        return garp_list(agent, timeout, cli.output);
    }
    if let Cmd::Ct(CtCmd::List {
        chassis,
        bpffs,
        ifindex,
    }) = &cli.cmd
    {
        return ct_list(chassis, bpffs, *ifindex, cli.output);
    }
    let mut prefix = cli.prefix.clone();
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let endpoints: Vec<String> = cli
        .etcd_endpoints
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .map(|e| {
            if e.contains("://") {
                e.to_string()
            } else {
                format!("http://{e}")
            }
        })
        .collect();
    if endpoints.is_empty() {
        return Err(CliError::Refused("--etcd-endpoints is empty".into()));
    }
    let opts = ValidationOptions {
        max_allowed_address_pairs: cli.max_allowed_address_pairs,
        allow_any_aap: cli.allow_any_aap,
    };
    let etcd = cli
        .etcd
        .clone()
        .merge(Default::default())
        .resolve(endpoints)
        .map_err(|e| CliError::Refused(error_chain(&e)))?;
    let store = NbStore::connect_with(
        &etcd,
        &prefix,
        DEFAULT_CONNECT_TIMEOUT.min(timeout),
        timeout,
    )
    .await?
    .with_validation(opts.clone())
    // Records written under other options (e.g. --allow-any-aap) stay listable; an update
    // re-checks them under this invocation's options.
    .with_read_validation(ValidationOptions::permissive());
    let ctx = Ctx {
        store,
        opts,
        output: cli.output,
    };
    match cli.cmd {
        Cmd::Lswitch(c) => ctx.lswitch(c).await,
        Cmd::Subnet(c) => ctx.subnet(c).await,
        Cmd::Lport(c) => ctx.lport(c).await,
        Cmd::Lrouter(c) => ctx.lrouter(c).await,
        Cmd::Secgroup(c) => ctx.secgroup(c).await,
        Cmd::Ct(_) => unreachable!("handled above"),
        Cmd::Chassis(ChassisCmd::List) => ctx.list::<Chassis>(chassis_row).await,
        Cmd::Chassis(ChassisCmd::Show { name }) => ctx.show::<Chassis>(&name).await,
        Cmd::Garp(_) => unreachable!("handled above"),
        Cmd::Aap(c) => ctx.aap(c, timeout).await,
        Cmd::Apply(a) => ctx.apply(a).await,
    }
}

struct Ctx {
    store: NbStore,
    opts: ValidationOptions,
    output: Output,
}

impl Ctx {
    async fn lswitch(&self, c: LswitchCmd) -> Result<()> {
        match c {
            LswitchCmd::Create {
                id,
                vni,
                name,
                mtu,
                aap_mode,
            } => {
                let ls = LSwitch {
                    id,
                    name,
                    segmentation_id: vni,
                    mtu,
                    aap_mode,
                };
                self.check(&ls)?;
                self.store.create(&ls).await?;
                println!("created lswitch {}", ls.id);
                Ok(())
            }
            LswitchCmd::Delete { id } => {
                self.store.get_existing::<LSwitch>(&id).await?;
                let ports = self.items::<LPort>().await?;
                let users: Vec<&str> = ports
                    .iter()
                    .filter(|p| p.lswitch == id)
                    .map(|p| p.id.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(CliError::Refused(format!(
                        "lswitch {id} still has ports ({}); delete them first",
                        users.join(", ")
                    )));
                }
                let routers = self.items::<LRouter>().await?;
                let users: Vec<&str> = routers
                    .iter()
                    .filter(|r| r.ports.iter().any(|p| p.lswitch == id))
                    .map(|r| r.id.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(CliError::Refused(format!(
                        "lswitch {id} still has router interfaces (lrouter {}); \
                         remove them first (dfctl lrouter remove-interface ROUTER --lswitch {id})",
                        users.join(", ")
                    )));
                }
                // Subnets go with their network, as in Neutron.
                let subnets = self.items::<Subnet>().await?;
                let mut objs = vec![(Kind::LSwitch, id.as_str())];
                objs.extend(
                    subnets
                        .iter()
                        .filter(|s| s.lswitch == id)
                        .map(|s| (Kind::Subnet, s.id.as_str())),
                );
                self.store.delete_all(&objs).await?;
                println!("deleted lswitch {id}");
                Ok(())
            }
            LswitchCmd::List => self.list::<LSwitch>(lswitch_row).await,
            LswitchCmd::Show { id } => self.show::<LSwitch>(&id).await,
        }
    }

    async fn subnet(&self, c: SubnetCmd) -> Result<()> {
        match c {
            SubnetCmd::Create {
                id,
                lswitch,
                cidr,
                gateway,
            } => {
                let inv = |e| CliError::invalid(Kind::Subnet, &id, e);
                let cidr = parse_cidr(&cidr).map_err(inv)?;
                let gateway_ip = gateway
                    .as_deref()
                    .map(parse_gateway)
                    .transpose()
                    .map_err(inv)?;
                let subnet = Subnet {
                    id: id.clone(),
                    lswitch,
                    ip_version: if cidr.addr.is_ipv4() { 4 } else { 6 },
                    cidr,
                    gateway_ip,
                };
                self.check(&subnet)?;
                let ls = self
                    .store
                    .get::<LSwitch>(&subnet.lswitch)
                    .await?
                    .map(|v| v.value);
                let others = self.items::<Subnet>().await?;
                validate_subnet_refs(&subnet, ls.as_ref(), &others).map_err(inv)?;
                self.store
                    .create_requiring(&subnet, &[(Kind::LSwitch, &subnet.lswitch)])
                    .await?;
                println!("created subnet {id}");
                Ok(())
            }
            SubnetCmd::Delete { id } => {
                let subnet = self.store.get_existing::<Subnet>(&id).await?.value;
                // Neutron refuses to delete a subnet whose addresses are still in use.
                let ports = self.items::<LPort>().await?;
                let users: Vec<&str> = ports
                    .iter()
                    .filter(|p| {
                        p.lswitch == subnet.lswitch
                            && p.fixed_ips.iter().any(|ip| subnet.cidr.contains(ip))
                    })
                    .map(|p| p.id.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(CliError::Refused(format!(
                        "subnet {id} still has ports with addresses in {} ({}); \
                         delete them or change their fixed IPs first",
                        subnet.cidr,
                        users.join(", ")
                    )));
                }
                let routers = self.items::<LRouter>().await?;
                let users: Vec<&str> = routers
                    .iter()
                    .filter(|r| {
                        r.ports.iter().any(|p| {
                            p.lswitch == subnet.lswitch
                                && p.addrs().any(|ip| subnet.cidr.contains(&ip.addr))
                        })
                    })
                    .map(|r| r.id.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(CliError::Refused(format!(
                        "subnet {id} still has router interfaces in {} (lrouter {}); \
                         remove them first",
                        subnet.cidr,
                        users.join(", ")
                    )));
                }
                self.store.delete::<Subnet>(&id).await?;
                println!("deleted subnet {id}");
                Ok(())
            }
            SubnetCmd::List => self.list::<Subnet>(subnet_row).await,
            SubnetCmd::Show { id } => self.show::<Subnet>(&id).await,
        }
    }

    async fn lport(&self, c: LportCmd) -> Result<()> {
        match c {
            LportCmd::Create(a) => self.lport_create(a).await,
            LportCmd::Update(a) => self.lport_update(a).await,
            LportCmd::Delete { id } => {
                if !self.store.delete::<LPort>(&id).await? {
                    return Err(StoreError::NotFound { kind: "lport", id }.into());
                }
                println!("deleted lport {id}");
                Ok(())
            }
            LportCmd::List => self.list::<LPort>(lport_row).await,
            LportCmd::Show { id } => self.show::<LPort>(&id).await,
        }
    }

    async fn lport_create(&self, a: LportCreate) -> Result<()> {
        let id = a.id;
        let inv = |e| CliError::invalid(Kind::LPort, &id, e);
        let port = LPort {
            id: id.clone(),
            lswitch: a.lswitch,
            mac: parse_mac(&a.mac).map_err(inv)?,
            fixed_ips: a
                .fixed_ips
                .iter()
                .map(|s| parse_fixed_ip(s))
                .collect::<Result<_, _>>()
                .map_err(inv)?,
            allowed_address_pairs: a
                .aaps
                .iter()
                .map(|s| parse_aap(s))
                .collect::<Result<_, _>>()
                .map_err(inv)?,
            port_security_enabled: !a.no_port_security,
            security_groups: a.security_groups,
            chassis: a.chassis,
            ifname: a.ifname,
            device_owner: a.device_owner,
            admin_state_up: true,
        };
        let mut port = port;
        self.check(&port)?;
        // Neutron: a port with port security and no group gets the project's `default`
        // (created below, once everything else about the port is known to be fine).
        let needs_default = port.port_security_enabled && port.security_groups.is_empty();
        if needs_default {
            port.security_groups = vec![DEFAULT_GROUP.to_string()];
        } else {
            let groups = self.items::<SecGroup>().await?;
            validate::validate_lport_secgroups(&port, &groups).map_err(inv)?;
        }
        let ls = self
            .store
            .get::<LSwitch>(&port.lswitch)
            .await?
            .map(|v| v.value);
        let subnets = self.items::<Subnet>().await?;
        let ports = self.items::<LPort>().await?;
        validate_lport_refs(&port, ls.as_ref(), &subnets, &ports).map_err(inv)?;
        let routers = self.items::<LRouter>().await?;
        conflicts::check_port_routers(&port, &routers)
            .map_err(|e| CliError::invalid(Kind::LPort, &id, e.into()))?;
        if needs_default {
            self.ensure_default_group().await?;
        }
        self.store
            .create_requiring(&port, &[(Kind::LSwitch, &port.lswitch)])
            .await?;
        println!("created lport {id}");
        Ok(())
    }

    async fn lport_update(&self, a: LportUpdate) -> Result<()> {
        let id = a.id.clone();
        let inv = |e| CliError::invalid(Kind::LPort, &id, e);
        let secgroups = if a.security_groups.is_empty() {
            Vec::new()
        } else {
            self.items::<SecGroup>().await?
        };
        let add: Vec<AllowedAddressPair> = a
            .add_aaps
            .iter()
            .map(|s| parse_aap(s))
            .collect::<Result<_, _>>()
            .map_err(inv)?;
        let remove: Vec<AllowedAddressPair> = a
            .remove_aaps
            .iter()
            .map(|s| parse_aap(s))
            .collect::<Result<_, _>>()
            .map_err(inv)?;
        let fixed: Vec<_> = a
            .fixed_ips
            .iter()
            .map(|s| parse_fixed_ip(s))
            .collect::<Result<_, _>>()
            .map_err(inv)?;

        let cur = self.store.get_existing::<LPort>(&id).await?.value;
        let ls = self
            .store
            .get::<LSwitch>(&cur.lswitch)
            .await?
            .map(|v| v.value);
        let subnets = self.items::<Subnet>().await?;
        let ports = self.items::<LPort>().await?;
        let routers = self.items::<LRouter>().await?;

        let refused = |source| StoreError::Invalid {
            kind: "lport",
            id: id.clone(),
            source,
        };
        self.store
            .update::<LPort, _>(&id, |p| {
                for r in &remove {
                    let before = p.allowed_address_pairs.len();
                    let port_mac = p.mac;
                    p.allowed_address_pairs.retain(|x| {
                        x.ip_address != r.ip_address
                            || r.mac_address
                                .is_some_and(|m| m != x.mac_address.unwrap_or(port_mac))
                    });
                    if p.allowed_address_pairs.len() == before {
                        return Err(StoreError::Refused {
                            kind: "lport",
                            id: id.clone(),
                            reason: format!(
                                "allowed address pair {} is not on the port",
                                aap_text(r)
                            ),
                        });
                    }
                }
                p.allowed_address_pairs.extend(add.iter().cloned());
                if !a.fixed_ips.is_empty() {
                    p.fixed_ips = fixed.clone();
                }
                if let Some(ps) = a.port_security {
                    p.port_security_enabled = ps;
                }
                if a.no_security_groups {
                    p.security_groups.clear();
                } else if !a.security_groups.is_empty() {
                    p.security_groups = a.security_groups.clone();
                }
                if a.unbind {
                    p.chassis = None;
                } else if let Some(c) = &a.chassis {
                    p.chassis = Some(c.clone());
                }
                if let Some(n) = &a.ifname {
                    p.ifname = Some(n.clone());
                }
                if let Some(d) = &a.device_owner {
                    p.device_owner = d.clone();
                }
                p.validate(&self.opts).map_err(|e| refused(Box::new(e)))?;
                validate_lport_refs(p, ls.as_ref(), &subnets, &ports)
                    .map_err(|e| refused(Box::new(e)))?;
                if !a.security_groups.is_empty() {
                    validate::validate_lport_secgroups(p, &secgroups)
                        .map_err(|e| refused(Box::new(e)))?;
                }
                conflicts::check_port_routers(p, &routers).map_err(|e| refused(Box::new(e.into())))
            })
            .await?;
        println!("updated lport {id}");
        Ok(())
    }

    async fn lrouter(&self, c: LrouterCmd) -> Result<()> {
        match c {
            LrouterCmd::Create { id, name } => {
                let r = LRouter {
                    id,
                    name,
                    ports: Vec::new(),
                };
                self.check(&r)?;
                self.store.create(&r).await?;
                println!("created lrouter {}", r.id);
                Ok(())
            }
            LrouterCmd::AddInterface {
                router,
                lswitch,
                mac,
                ip,
                iface_id,
            } => {
                let inv = |e| CliError::invalid(Kind::LRouter, &router, e);
                let mut ips = ip
                    .iter()
                    .map(|ip| {
                        ip.trim().parse::<IpPrefix>().map_err(|_| {
                            CliError::Refused(format!(
                                "lrouter {router}: --ip {ip:?} is not IP/LEN (e.g. \
                                 192.0.2.1/24 or 2001:db8:1::1/64)"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
                    .into_iter();
                let port = LRouterPort {
                    id: iface_id.unwrap_or_else(|| format!("{router}-{lswitch}")),
                    lswitch,
                    mac: parse_mac(&mac).map_err(inv)?,
                    ip: ips.next().expect("clap requires --ip"),
                    extra_ips: ips.collect(),
                };
                validate::validate_lrouter_port(&port).map_err(inv)?;
                self.store.get_existing::<LRouter>(&router).await?;
                let ls = self
                    .store
                    .get::<LSwitch>(&port.lswitch)
                    .await?
                    .map(|v| v.value);
                let subnets = self.items::<Subnet>().await?;
                let ports = self.items::<LPort>().await?;
                let routers = self.items::<LRouter>().await?;
                validate_lrouter_port_refs(&router, &port, ls.as_ref(), &subnets, &ports, &routers)
                    .map_err(inv)?;
                let refused = |source| StoreError::Invalid {
                    kind: "lrouter",
                    id: router.clone(),
                    source,
                };
                self.store
                    .update::<LRouter, _>(&router, |r| {
                        r.ports.push(port.clone());
                        r.validate(&self.opts).map_err(|e| refused(Box::new(e)))
                    })
                    .await?;
                println!(
                    "added interface {} ({} {}) on lswitch {} to lrouter {router}",
                    port.id,
                    addrs_text(&port),
                    port.mac,
                    port.lswitch
                );
                Ok(())
            }
            LrouterCmd::RemoveInterface { router, lswitch } => {
                self.store
                    .update::<LRouter, _>(&router, |r| {
                        let before = r.ports.len();
                        r.ports.retain(|p| p.lswitch != lswitch);
                        if r.ports.len() == before {
                            return Err(StoreError::Refused {
                                kind: "lrouter",
                                id: router.clone(),
                                reason: format!("it has no interface on lswitch {lswitch}"),
                            });
                        }
                        Ok(())
                    })
                    .await?;
                println!("removed the interface on lswitch {lswitch} from lrouter {router}");
                Ok(())
            }
            LrouterCmd::Delete { id } => {
                if !self.store.delete::<LRouter>(&id).await? {
                    return Err(StoreError::NotFound {
                        kind: "lrouter",
                        id,
                    }
                    .into());
                }
                println!("deleted lrouter {id}");
                Ok(())
            }
            LrouterCmd::List => self.list::<LRouter>(lrouter_row).await,
            LrouterCmd::Show { id } => self.show::<LRouter>(&id).await,
        }
    }

    fn check<T: NbRecord>(&self, obj: &T) -> Result<()> {
        obj.validate(&self.opts)
            .map_err(|e| CliError::invalid(T::KIND, obj.id(), e))
    }

    /// Valid objects of a kind; malformed records are reported on stderr and skipped.
    async fn items<T: NbRecord>(&self) -> Result<Vec<T>> {
        Ok(self
            .listing::<T>()
            .await?
            .items
            .into_iter()
            .map(|v| v.value)
            .collect())
    }

    async fn listing<T: NbRecord>(&self) -> Result<Listing<T>> {
        let l = self.store.list::<T>().await?;
        for e in &l.malformed {
            eprintln!("warning: skipping malformed record: {}", error_chain(e));
        }
        Ok(l)
    }

    async fn list<T: NbRecord>(&self, row: fn(&T) -> Vec<String>) -> Result<()> {
        let l = self.listing::<T>().await?;
        let items: Vec<&T> = l.items.iter().map(|v: &Versioned<T>| &v.value).collect();
        match self.output {
            Output::Json => print_json(&items),
            Output::Table => {
                print!(
                    "{}",
                    table(headers(T::KIND), items.into_iter().map(row).collect())
                );
                Ok(())
            }
        }
    }

    async fn show<T: NbRecord>(&self, id: &str) -> Result<()> {
        let v = self.store.get_existing::<T>(id).await?;
        print_json(&v.value)
    }
}

// ---------------------------------------------------------------------------------------
// apply: bulk create-or-replace (the rules and the plan are `nb::bulk`'s).

/// Bad records listed before `apply` gives up listing them.
const APPLY_MAX_LISTED: usize = 100;

impl Ctx {
    async fn apply(&self, a: ApplyArgs) -> Result<()> {
        let started = std::time::Instant::now();
        let name = if a.file == "-" {
            "stdin"
        } else {
            a.file.as_str()
        };
        let text = if a.file == "-" {
            let mut t = String::new();
            std::io::stdin()
                .read_to_string(&mut t)
                .map_err(|e| CliError::Refused(format!("cannot read standard input: {e}")))?;
            t
        } else {
            std::fs::read_to_string(&a.file)
                .map_err(|e| CliError::Refused(format!("cannot read {}: {e}", a.file)))?
        };
        let format = bulk::Format::detect(if a.file == "-" { "" } else { name }, &text);
        let refuse = |errors: Vec<bulk::RecordError>, total: usize| {
            for e in errors.iter().take(APPLY_MAX_LISTED) {
                eprintln!("error: {name}: {e}");
            }
            let more = errors.len().saturating_sub(APPLY_MAX_LISTED);
            CliError::Refused(format!(
                "{name}: {} of {total} records are invalid{}; nothing was written",
                errors.len(),
                if more > 0 {
                    format!(" ({more} more not listed)")
                } else {
                    String::new()
                }
            ))
        };
        let parsed = bulk::parse(&text, format, &self.opts)
            .map_err(|e| CliError::Refused(format!("{name}: {}", error_chain(&e))))?;
        let total = parsed.total();
        if !parsed.errors.is_empty() {
            return Err(refuse(parsed.errors, total));
        }
        let existing = bulk::Existing {
            lswitches: self.items().await?,
            subnets: self.items().await?,
            secgroups: self.items().await?,
            lrouters: self.items().await?,
            lports: self.items().await?,
        };
        let default_group = SecGroup {
            id: DEFAULT_GROUP.to_string(),
            name: DEFAULT_GROUP.to_string(),
            rules: default_rules(DEFAULT_GROUP),
        };
        let plan =
            bulk::plan(parsed.records, &existing, default_group).map_err(|e| refuse(e, total))?;
        let created = plan.writes.len() - plan.replaced;
        let summary = format!(
            "{} created, {} replaced, {} unchanged{}",
            created,
            plan.replaced,
            plan.unchanged,
            if plan.default_group_added {
                " (with secgroup default: egress anywhere, ingress from its members)"
            } else {
                ""
            }
        );
        if a.dry_run {
            println!("{name}: valid; would write {summary}");
            return Ok(());
        }
        let chunks: Vec<&[dragonflow_agent::nb::NbObject]> =
            plan.writes.chunks(a.max_txn_ops as usize).collect();
        let mut written = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            if let Err(e) = self.store.put_all(chunk).await {
                let what = |o: &dragonflow_agent::nb::NbObject| {
                    format!("{} {}", o.kind().segment(), o.id())
                };
                let done = if written == 0 {
                    "nothing was written".to_string()
                } else {
                    format!(
                        "written: the first {written} of {} records to write ({} .. {})",
                        plan.writes.len(),
                        what(&plan.writes[0]),
                        what(&plan.writes[written - 1])
                    )
                };
                return Err(CliError::Unavailable(format!(
                    "{name}: transaction {} of {} failed: {}; {done}; the rest was not \
                     written (apply creates or replaces: run it again to finish)",
                    i + 1,
                    chunks.len(),
                    error_chain(&e)
                )));
            }
            written += chunk.len();
        }
        println!(
            "applied {name}: {summary} in {} transactions, {:.2}s",
            chunks.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// One conntrack entry, for `ct list`.
#[derive(Serialize)]
struct CtRow {
    ifindex: u32,
    proto: u8,
    local: String,
    lport: u16,
    remote: String,
    rport: u16,
    state: &'static str,
    origin: &'static str,
    idle_s: f64,
    policy_gen: u32,
}

fn ct_list(
    chassis: &str,
    bpffs: &std::path::Path,
    ifindex: Option<u32>,
    output: Output,
) -> Result<()> {
    use aya::maps::{HashMap, Map, MapData};
    use dragonflow_common::{addr::FAMILY_V4, maps, sg};
    let path = dragonflow_agent::config::pin_root_of(bpffs, chassis)
        .join("maps")
        .join(maps::CT);
    let unavailable = |e: &dyn std::error::Error| {
        CliError::Unavailable(format!(
            "cannot open {} (is the agent of chassis {chassis} running here, and are you root?): {}",
            path.display(),
            error_chain(e)
        ))
    };
    let data = MapData::from_pin(&path).map_err(|e| unavailable(&e))?;
    let map = Map::from_map_data(data).map_err(|e| unavailable(&e))?;
    let ct: HashMap<MapData, sg::CtKey, sg::CtValue> =
        HashMap::try_from(map).map_err(|e| unavailable(&e))?;
    let now = dragonflow_agent::conntrack::monotonic_ns();
    let addr = |family: u8, b: &[u8; 16]| -> String {
        if family == FAMILY_V4 {
            std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()
        } else {
            std::net::Ipv6Addr::from(*b).to_string()
        }
    };
    let mut rows: Vec<CtRow> = ct
        .iter()
        .filter_map(|r| r.ok())
        .filter(|(k, _)| ifindex.is_none_or(|i| i == k.ifindex))
        .map(|(k, v)| CtRow {
            ifindex: k.ifindex,
            proto: k.proto,
            local: addr(k.family, &k.local),
            lport: u16::from_be(k.lport),
            remote: addr(k.family, &k.remote),
            rport: u16::from_be(k.rport),
            state: match v.state {
                sg::CT_TCP_SYN_SENT => "syn_sent",
                sg::CT_TCP_ESTABLISHED => "established",
                sg::CT_TCP_CLOSING => "closing",
                sg::CT_TCP_CLOSED => "closed",
                sg::CT_UNREPLIED => "unreplied",
                sg::CT_REPLIED => "replied",
                _ => "?",
            },
            origin: match v.origin {
                sg::CT_ORIGIN_EGRESS => "egress",
                sg::CT_ORIGIN_INGRESS => "ingress",
                _ => "?",
            },
            idle_s: now.saturating_sub(v.last_seen_ns) as f64 / 1e9,
            policy_gen: v.policy_gen,
        })
        .collect();
    rows.sort_by(|a, b| {
        (a.ifindex, a.proto, &a.local, a.lport, &a.remote, a.rport)
            .cmp(&(b.ifindex, b.proto, &b.local, b.lport, &b.remote, b.rport))
    });
    if output == Output::Json {
        return print_json(&rows);
    }
    let rows = rows
        .iter()
        .map(|r| {
            vec![
                r.ifindex.to_string(),
                r.proto.to_string(),
                format!("{} {}", r.local, r.lport),
                format!("{} {}", r.remote, r.rport),
                r.state.to_string(),
                r.origin.to_string(),
                format!("{:.1}s", r.idle_s),
                r.policy_gen.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "IFINDEX", "PROTO", "LOCAL", "REMOTE", "STATE", "ORIGIN", "IDLE", "GEN"
            ],
            rows
        )
    );
    Ok(())
}

/// Neutron's rules of a new group: egress anywhere, both families; the `default` group
/// also admits ingress from its own members, both families.
fn default_rules(group: &str) -> Vec<SecGroupRule> {
    let rule = |id: &str, direction, ethertype, remote: Option<&str>| SecGroupRule {
        id: id.to_string(),
        direction,
        ethertype,
        protocol: None,
        port_range_min: None,
        port_range_max: None,
        remote_ip_prefix: None,
        remote_group_id: remote.map(str::to_string),
    };
    let mut rules = vec![
        rule("egress-ipv4", RuleDirection::Egress, EtherType::IPv4, None),
        rule("egress-ipv6", RuleDirection::Egress, EtherType::IPv6, None),
    ];
    if group == DEFAULT_GROUP {
        rules.push(rule(
            "ingress-ipv4-from-default",
            RuleDirection::Ingress,
            EtherType::IPv4,
            Some(DEFAULT_GROUP),
        ));
        rules.push(rule(
            "ingress-ipv6-from-default",
            RuleDirection::Ingress,
            EtherType::IPv6,
            Some(DEFAULT_GROUP),
        ));
    }
    rules
}

/// A random (version 4) UUID, Neutron's form of ids.
fn new_uuid() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most `b.len()` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // No entropy source: time and pid are unique enough for a rule id.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = (t ^ (u128::from(std::process::id()) << 96)).to_be_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// What a rule matches, without its id (to refuse duplicates, as Neutron does).
fn rule_match(r: &SecGroupRule) -> impl PartialEq + use<> {
    (
        r.direction,
        r.ethertype,
        validate::rule_protocol(r),
        r.port_range_min,
        r.port_range_max,
        r.remote_ip_prefix,
        r.remote_group_id.clone(),
    )
}

/// `80`, `80-90`, `type 8`, `type 3 code 4`, or `any`.
fn port_range_text(r: &SecGroupRule) -> String {
    let icmp = matches!(
        validate::rule_protocol(r),
        Some(validate::PROTO_ICMP | validate::PROTO_ICMPV6)
    );
    match (r.port_range_min, r.port_range_max) {
        (None, _) => "any".into(),
        (Some(t), None) if icmp => format!("type {t}"),
        (Some(t), Some(c)) if icmp => format!("type {t} code {c}"),
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}-{b}"),
        (Some(a), None) => a.to_string(),
    }
}

fn remote_text(r: &SecGroupRule) -> String {
    match (&r.remote_ip_prefix, &r.remote_group_id) {
        (Some(p), _) => format!("{}/{}", p.addr, p.len),
        (None, Some(g)) => format!("group {g}"),
        (None, None) => "any".into(),
    }
}

impl Ctx {
    async fn secgroup(&self, c: SecgroupCmd) -> Result<()> {
        match c {
            SecgroupCmd::Create {
                id,
                name,
                no_default_rules,
            } => {
                let g = SecGroup {
                    rules: if no_default_rules {
                        Vec::new()
                    } else {
                        default_rules(&id)
                    },
                    id,
                    name,
                };
                self.check(&g)?;
                self.store.create(&g).await?;
                println!("created secgroup {}", g.id);
                Ok(())
            }
            SecgroupCmd::Delete { id } => {
                self.store.get_existing::<SecGroup>(&id).await?;
                let ports = self.items::<LPort>().await?;
                let users: Vec<&str> = ports
                    .iter()
                    .filter(|p| p.security_groups.contains(&id))
                    .map(|p| p.id.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(CliError::Refused(format!(
                        "secgroup {id} is used by lport {}; remove it from them first \
                         (dfctl lport update PORT --security-group OTHER | --no-security-groups)",
                        users.join(", ")
                    )));
                }
                let groups = self.items::<SecGroup>().await?;
                let refs: Vec<String> = groups
                    .iter()
                    .filter(|g| g.id != id)
                    .flat_map(|g| {
                        g.rules
                            .iter()
                            .filter(|r| r.remote_group_id.as_deref() == Some(id.as_str()))
                            .map(move |r| format!("secgroup {} rule {}", g.id, r.id))
                    })
                    .collect();
                if !refs.is_empty() {
                    return Err(CliError::Refused(format!(
                        "secgroup {id} is the remote group of {}; delete those rules first",
                        refs.join(", ")
                    )));
                }
                self.store.delete::<SecGroup>(&id).await?;
                println!("deleted secgroup {id}");
                Ok(())
            }
            SecgroupCmd::List => {
                let groups = self.items::<SecGroup>().await?;
                if self.output == Output::Json {
                    return print_json(&groups);
                }
                let ports = self.items::<LPort>().await?;
                let rows = groups
                    .iter()
                    .map(|g| {
                        let users: Vec<&str> = ports
                            .iter()
                            .filter(|p| p.security_groups.contains(&g.id))
                            .map(|p| p.id.as_str())
                            .collect();
                        vec![
                            g.id.clone(),
                            dash(g.name.clone()),
                            g.rules.len().to_string(),
                            dash(users.join(";")),
                        ]
                    })
                    .collect();
                print!("{}", table(headers(Kind::SecGroup), rows));
                Ok(())
            }
            SecgroupCmd::Show { id } => {
                let g = self.store.get_existing::<SecGroup>(&id).await?.value;
                if self.output == Output::Json {
                    return print_json(&g);
                }
                println!(
                    "secgroup {}{}",
                    g.id,
                    if g.name.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", g.name)
                    }
                );
                let rows = g
                    .rules
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.clone(),
                            r.direction.as_str().to_string(),
                            r.ethertype.as_str().to_string(),
                            r.protocol.clone().unwrap_or_else(|| "any".into()),
                            port_range_text(r),
                            remote_text(r),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "ID",
                            "DIRECTION",
                            "ETHERTYPE",
                            "PROTOCOL",
                            "PORT_RANGE",
                            "REMOTE"
                        ],
                        rows
                    )
                );
                Ok(())
            }
            SecgroupCmd::RuleAdd(a) => self.rule_add(a).await,
            SecgroupCmd::RuleDelete { group, rule_id } => {
                self.store
                    .update::<SecGroup, _>(&group, |g| {
                        let before = g.rules.len();
                        g.rules.retain(|r| r.id != rule_id);
                        if g.rules.len() == before {
                            return Err(StoreError::Refused {
                                kind: "secgroup",
                                id: group.clone(),
                                reason: format!("it has no rule {rule_id}"),
                            });
                        }
                        Ok(())
                    })
                    .await?;
                println!("deleted rule {rule_id} of secgroup {group}");
                Ok(())
            }
        }
    }

    async fn rule_add(&self, a: RuleAdd) -> Result<()> {
        let group = a.group.clone();
        let refused = |m: String| CliError::Refused(format!("secgroup {group}: {m}"));
        let direction = RuleDirection::try_from(a.direction.clone()).map_err(refused)?;
        let remote_ip_prefix = a
            .remote_ip_prefix
            .as_deref()
            .map(|s| {
                s.trim().parse::<IpPrefix>().map_err(|_| {
                    refused(format!(
                        "--remote-ip-prefix {s:?} is not a CIDR or an IP address"
                    ))
                })
            })
            .transpose()?;
        let ethertype = match &a.ethertype {
            Some(e) => EtherType::try_from(e.clone()).map_err(refused)?,
            None => remote_ip_prefix.map_or(EtherType::IPv4, |p| EtherType::of(&p.addr)),
        };
        let protocol = a
            .protocol
            .as_deref()
            .map(|p| p.trim().to_ascii_lowercase())
            .filter(|p| p != "any");
        // One port: --port-min alone (ICMP: a type alone means every code).
        let tcp_udp = matches!(
            protocol
                .as_deref()
                .map(|p| validate::parse_protocol(p, ethertype)),
            Some(Ok(Some(validate::PROTO_TCP | validate::PROTO_UDP)))
        );
        let port_range_max = match (a.port_min, a.port_max) {
            (Some(min), None) if tcp_udp => Some(min),
            (_, max) => max,
        };
        let rule = SecGroupRule {
            id: a.rule_id.clone().unwrap_or_else(new_uuid),
            direction,
            ethertype,
            protocol,
            port_range_min: a.port_min,
            port_range_max,
            remote_ip_prefix,
            remote_group_id: a.remote_group.clone(),
        };
        let groups = self.items::<SecGroup>().await?;
        let store_refused = |source| StoreError::Invalid {
            kind: "secgroup",
            id: group.clone(),
            source,
        };
        self.store
            .update::<SecGroup, _>(&group, |g| {
                if let Some(same) = g
                    .rules
                    .iter()
                    .find(|r| r.id != rule.id && rule_match(r) == rule_match(&rule))
                {
                    return Err(StoreError::Refused {
                        kind: "secgroup",
                        id: group.clone(),
                        reason: format!("rule {} already allows exactly this", same.id),
                    });
                }
                g.rules.push(rule.clone());
                g.validate(&self.opts)
                    .map_err(|e| store_refused(Box::new(e)))?;
                validate::validate_secgroup_refs(g, &groups).map_err(|e| store_refused(Box::new(e)))
            })
            .await?;
        println!("{}", rule.id);
        Ok(())
    }

    /// Creates the `default` group with its rules unless it exists.
    async fn ensure_default_group(&self) -> Result<()> {
        let g = SecGroup {
            id: DEFAULT_GROUP.to_string(),
            name: DEFAULT_GROUP.to_string(),
            rules: default_rules(DEFAULT_GROUP),
        };
        match self.store.create(&g).await {
            Ok(_) => {
                println!(
                    "created secgroup {DEFAULT_GROUP} (egress anywhere, ingress from its members)"
                );
                Ok(())
            }
            Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn print_json<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::Unavailable(format!("cannot format JSON: {e}")))?;
    println!("{s}");
    Ok(())
}

fn headers(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::LSwitch => &["ID", "NAME", "VNI", "MTU", "AAP_MODE"],
        Kind::Subnet => &["ID", "LSWITCH", "CIDR", "GATEWAY", "IP_VERSION"],
        Kind::LPort => &[
            "ID",
            "LSWITCH",
            "MAC",
            "FIXED_IPS",
            "ALLOWED_ADDRESS_PAIRS",
            "PORT_SECURITY",
            "SECURITY_GROUPS",
            "CHASSIS",
            "IFNAME",
        ],
        Kind::Chassis => &["NAME", "TUNNEL_IP", "AAP_MODE", "VERSION"],
        Kind::LRouter => &["ID", "NAME", "INTERFACES"],
        Kind::SecGroup => &["ID", "NAME", "RULES", "USED_BY"],
    }
}

/// Interfaces as `ID LSWITCH IP/LEN[,IP/LEN] MAC`, joined with `; `.
fn lrouter_row(r: &LRouter) -> Vec<String> {
    vec![
        r.id.clone(),
        dash(r.name.clone()),
        dash(
            r.ports
                .iter()
                .map(|p| format!("{} {} {} {}", p.id, p.lswitch, addrs_text(p), p.mac))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    ]
}

/// An interface's addresses as `IP/LEN[,IP/LEN]`.
fn addrs_text(p: &LRouterPort) -> String {
    p.addrs()
        .map(|a| format!("{}/{}", a.addr, a.len))
        .collect::<Vec<_>>()
        .join(",")
}

fn dash(s: impl Into<String>) -> String {
    let s = s.into();
    if s.is_empty() { "-".into() } else { s }
}

fn mode(m: AapMode) -> String {
    match m {
        AapMode::Broadcast => "broadcast".into(),
        AapMode::Detection => "detection".into(),
    }
}

fn lswitch_row(s: &LSwitch) -> Vec<String> {
    vec![
        s.id.clone(),
        dash(s.name.clone()),
        s.segmentation_id.to_string(),
        s.mtu.to_string(),
        s.aap_mode.map_or_else(|| "-".into(), mode),
    ]
}

fn subnet_row(s: &Subnet) -> Vec<String> {
    vec![
        s.id.clone(),
        s.lswitch.clone(),
        format!("{}/{}", s.cidr.addr, s.cidr.len),
        s.gateway_ip.map_or_else(|| "-".into(), |g| g.to_string()),
        s.ip_version.to_string(),
    ]
}

/// `IP[/LEN]` or `IP[/LEN],MAC` (the --aap syntax).
fn aap_text(a: &AllowedAddressPair) -> String {
    match a.mac_address {
        Some(m) => format!("{},{m}", a.ip_address),
        None => a.ip_address.to_string(),
    }
}

fn lport_row(p: &LPort) -> Vec<String> {
    // Lists are joined with ';' because an AAP itself may contain a ','.
    vec![
        p.id.clone(),
        p.lswitch.clone(),
        p.mac.to_string(),
        dash(
            p.fixed_ips
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(";"),
        ),
        dash(
            p.allowed_address_pairs
                .iter()
                .map(aap_text)
                .collect::<Vec<_>>()
                .join(";"),
        ),
        p.port_security_enabled.to_string(),
        dash(p.security_groups.join(";")),
        dash(p.chassis.clone().unwrap_or_default()),
        p.tap_name(),
    ]
}

fn chassis_row(c: &Chassis) -> Vec<String> {
    vec![
        c.name.clone(),
        c.tunnel_ip.to_string(),
        mode(c.aap_mode),
        dash(c.version.clone()),
    ]
}

/// Left-aligned columns separated by two spaces.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&header_row).chain(&rows) {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(c);
            if i + 1 < r.len() {
                line.push_str(&" ".repeat(w - c.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------
// aap list / history: shared VIPs and the detection way's records (activeport.rs).

/// One row of `dfctl aap list` (also its JSON shape).
#[derive(Debug, Serialize)]
struct AapRow {
    lswitch: String,
    ip: std::net::IpAddr,
    /// Ports listing the IP as a single-IP AAP, as `port@chassis` (`-` when unbound).
    holders: Vec<String>,
    /// The network's mode: its override, else the modes published by the chassis of
    /// its holders.
    mode: String,
    active: Option<ActivePort>,
}

impl Ctx {
    async fn aap(&self, c: AapCmd, timeout: Duration) -> Result<()> {
        match c {
            AapCmd::List { lswitch } => self.aap_list(lswitch.as_deref(), timeout).await,
            AapCmd::History { lswitch, ip } => {
                let ip: std::net::IpAddr = ip
                    .parse()
                    .map_err(|_| CliError::Refused(format!("{ip:?} is not an IP address")))?;
                self.aap_history(&lswitch, ip, timeout).await
            }
        }
    }

    /// Raw key-values under `key` (a prefix when `prefix`), bounded by `timeout`.
    async fn raw_get(
        &self,
        key: &str,
        prefix: bool,
        timeout: Duration,
    ) -> Result<Vec<etcd_client::KeyValue>> {
        let got = etcd::call(timeout, || {
            let mut kv = paged::kv(self.store.client());
            async move {
                if prefix {
                    paged::get_prefix(&mut kv, key).await.map(|r| r.kvs)
                } else {
                    kv.get(key, None).await.map(|mut r| r.take_kvs())
                }
            }
        })
        .await;
        got.map_err(|e| CliError::Unavailable(format!("etcd: get {key}: {}", error_chain(&e))))
    }

    async fn aap_list(&self, only: Option<&str>, timeout: Duration) -> Result<()> {
        let prefix = self.store.prefix().to_string();
        let ports = self.items::<LPort>().await?;
        let switches = self.items::<LSwitch>().await?;
        let chassis = self.items::<Chassis>().await?;
        let mut active: std::collections::BTreeMap<(String, std::net::IpAddr), ActivePort> =
            Default::default();
        for kv in self
            .raw_get(&activeport::active_prefix(&prefix), true, timeout)
            .await?
        {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match activeport::parse_active_key(&prefix, &key)
                .unwrap_or_else(|| Err(format!("{key}: not an activeport key")))
                .and_then(|(ls, ip)| activeport::decode_active(&ls, ip, kv.value()))
            {
                Ok(a) => {
                    active.insert((a.lswitch.clone(), a.ip), a);
                }
                Err(e) => eprintln!("warning: skipping malformed record {key}: {e}"),
            }
        }
        // (lswitch, ip) → holders, from single-IP AAPs.
        let mut vips: std::collections::BTreeMap<(String, std::net::IpAddr), Vec<String>> =
            Default::default();
        for p in &ports {
            for a in p
                .allowed_address_pairs
                .iter()
                .filter(|a| a.ip_address.is_host())
            {
                let who = format!("{}@{}", p.id, p.chassis.as_deref().unwrap_or("-"));
                let h = vips
                    .entry((p.lswitch.clone(), a.ip_address.addr))
                    .or_default();
                if !h.contains(&who) {
                    h.push(who);
                }
            }
        }
        let mut rows = Vec::new();
        for (key, holders) in &vips {
            if holders.len() < 2 && !active.contains_key(key) {
                continue;
            }
            if only.is_some_and(|o| o != key.0) {
                continue;
            }
            rows.push(AapRow {
                lswitch: key.0.clone(),
                ip: key.1,
                holders: holders.clone(),
                mode: network_mode(&key.0, &switches, &ports, &chassis),
                active: active.get(key).cloned(),
            });
        }
        // Entries whose IP no port lists any more (removed by their agent shortly).
        for (key, a) in &active {
            if !vips.contains_key(key) && only.is_none_or(|o| o == key.0) {
                rows.push(AapRow {
                    lswitch: key.0.clone(),
                    ip: key.1,
                    holders: Vec::new(),
                    mode: network_mode(&key.0, &switches, &ports, &chassis),
                    active: Some(a.clone()),
                });
            }
        }
        if self.output == Output::Json {
            return print_json(&rows);
        }
        let now = now_ms();
        let table_rows = rows
            .iter()
            .map(|r| {
                let a = r.active.as_ref();
                vec![
                    r.lswitch.clone(),
                    r.ip.to_string(),
                    dash(r.holders.join(";")),
                    r.mode.clone(),
                    a.map_or("-".into(), |a| a.port.clone()),
                    a.map_or("-".into(), |a| a.mac.to_string()),
                    a.map_or("-".into(), |a| a.chassis.clone()),
                    a.map_or("-".into(), |a| ago(now, a.since_ms)),
                    a.map_or("-".into(), |a| a.reason.clone()),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "LSWITCH",
                    "IP",
                    "HOLDERS",
                    "MODE",
                    "ACTIVE_PORT",
                    "MAC",
                    "CHASSIS",
                    "SINCE",
                    "REASON"
                ],
                table_rows
            )
        );
        Ok(())
    }

    async fn aap_history(
        &self,
        lswitch: &str,
        ip: std::net::IpAddr,
        timeout: Duration,
    ) -> Result<()> {
        let key = activeport::history_key(self.store.prefix(), lswitch, ip);
        let kvs = self.raw_get(&key, false, timeout).await?;
        let Some(kv) = kvs.first() else {
            return Err(CliError::Refused(format!(
                "no active-port history for {ip} on lswitch {lswitch} (never claimed)"
            )));
        };
        let records: Vec<activeport::HistoryRecord> = serde_json::from_slice(kv.value())
            .map_err(|e| CliError::Unavailable(format!("{key}: malformed history: {e}")))?;
        if self.output == Output::Json {
            return print_json(&records);
        }
        let now = now_ms();
        let rows = records
            .iter()
            .map(|r| {
                vec![
                    utc(r.at_ms),
                    ago(now, r.at_ms),
                    match r.event {
                        activeport::Event::Claimed => "claimed".into(),
                        activeport::Event::Released => "released".into(),
                    },
                    r.port.clone(),
                    r.mac.to_string(),
                    r.chassis.clone(),
                    r.why.name().into(),
                    r.by.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "WHEN", "AGO", "EVENT", "PORT", "MAC", "CHASSIS", "WHY", "BY"
                ],
                rows
            )
        );
        Ok(())
    }
}

/// `detection (lswitch)` for an override; else the modes the chassis of the network's
/// ports publish: one mode, or `mixed (hv1=…, hv2=…)` when they disagree.
fn network_mode(ls: &str, switches: &[LSwitch], ports: &[LPort], chassis: &[Chassis]) -> String {
    if let Some(m) = switches
        .iter()
        .find(|s| s.id == ls)
        .and_then(|s| s.aap_mode)
    {
        return format!("{} (lswitch)", mode(m));
    }
    let hosts: std::collections::BTreeSet<&str> = ports
        .iter()
        .filter(|p| p.lswitch == ls)
        .filter_map(|p| p.chassis.as_deref())
        .collect();
    let modes: Vec<(&str, AapMode)> = chassis
        .iter()
        .filter(|c| hosts.contains(c.name.as_str()))
        .map(|c| (c.name.as_str(), c.aap_mode))
        .collect();
    match modes.first() {
        None => "-".into(),
        Some((_, m)) if modes.iter().all(|(_, x)| x == m) => mode(*m),
        Some(_) => format!(
            "mixed ({})",
            modes
                .iter()
                .map(|(c, m)| format!("{c}={}", mode(*m)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `12.3s ago`.
fn ago(now_ms: u64, at_ms: u64) -> String {
    format!("{:.1}s ago", now_ms.saturating_sub(at_ms) as f64 / 1000.0)
}

/// Unix ms as `YYYY-MM-DDTHH:MM:SS.mmmZ` (proleptic Gregorian, UTC).
fn utc(ms: u64) -> String {
    let (secs, milli) = (ms / 1000, ms % 1000);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------
// garp list: a tiny HTTP/1.0 GET over std::net (no HTTP client dependency for one request).

fn garp_list(agent: &str, timeout: Duration, output: Output) -> Result<()> {
    let body = http_get(agent, "/garp", timeout)?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| CliError::Unavailable(format!("agent at {agent}: /garp is not JSON: {e}")))?;
    let Some(entries) = v.as_array() else {
        return Err(CliError::Unavailable(format!(
            "agent at {agent}: /garp is not a JSON array"
        )));
    };
    if output == Output::Json {
        return print_json(entries);
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let field = |e: &serde_json::Value, k: &str| match e.get(k) {
        None | Some(serde_json::Value::Null) => "-".to_string(),
        Some(serde_json::Value::String(s)) => dash(s.clone()),
        Some(other) => other.to_string(),
    };
    let mut rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let seen = match e.get("last_seen_unix_ms").and_then(|x| x.as_u64()) {
                Some(ms) => format!("{:.1}s ago", now_ms.saturating_sub(ms) as f64 / 1000.0),
                None => field(e, "last_seen_unix_ms"),
            };
            vec![
                field(e, "ip"),
                field(e, "mac"),
                field(e, "ifname"),
                field(e, "lport"),
                field(e, "net_id"),
                field(e, "op"),
                seen,
                field(e, "count"),
            ]
        })
        .collect();
    rows.sort();
    print!(
        "{}",
        table(
            &[
                "IP",
                "MAC",
                "IFNAME",
                "LPORT",
                "NET_ID",
                "OP",
                "LAST_SEEN",
                "COUNT"
            ],
            rows
        )
    );
    Ok(())
}

/// GET `<base><path>`; `base` is `http://host[:port][/prefix]`. Returns the body of a 200.
fn http_get(base: &str, path: &str, timeout: Duration) -> Result<String> {
    let unavailable = |why: String| CliError::Unavailable(format!("agent at {base}: {why}"));
    let rest = base.strip_prefix("http://").ok_or_else(|| {
        CliError::Refused(format!(
            "--agent {base:?}: only http://host:port URLs are supported"
        ))
    })?;
    let (hostport, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if hostport.is_empty() {
        return Err(CliError::Refused(format!("--agent {base:?} has no host")));
    }
    let target = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !hostport.ends_with(']')
    {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addrs: Vec<_> = target
        .to_socket_addrs()
        .map_err(|e| unavailable(format!("cannot resolve {target}: {e}")))?
        .collect();
    let mut last_err = None;
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let Some(mut stream) = stream else {
        return Err(unavailable(format!(
            "cannot connect: {}",
            last_err.map_or_else(|| "no address".into(), |e| e.to_string())
        )));
    };
    let io = |e: std::io::Error| unavailable(e.to_string());
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    // One write: a request split over several segments confuses minimal servers.
    let request = format!(
        "GET {prefix}{path} HTTP/1.0\r\nHost: {hostport}\r\nAccept: application/json\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| unavailable("malformed HTTP response (no header end)".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        return Err(unavailable(format!(
            "GET {prefix}{path} answered {status:?}"
        )));
    }
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if chunked {
        body = dechunk(&body).ok_or_else(|| unavailable("malformed chunked body".into()))?;
    }
    String::from_utf8(body).map_err(|_| unavailable("body is not UTF-8".into()))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_795_000_000_000), "2026-11-18T11:06:40.000Z");
        assert_eq!(ago(10_500, 9_000), "1.5s ago");
    }
}
