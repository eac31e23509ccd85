//! `dfctl`: the operator CLI for the Dragonflow northbound database in etcd.
//!
//! Objects are validated with Neutron's rules (`nb::rules`, `nb::refs`) before they are written, and
//! checked against their neighbours (lswitch exists, fixed IPs inside its subnets, unique
//! MAC/fixed IPs per lswitch, no overlapping subnets, …). Referential checks read, then
//! write: two operators racing can still slip past them (as with Neutron's API without DB
//! constraints); the create itself is atomic and requires the lswitch to exist.
//!
//! Exit codes: 0 success; 2 usage, validation or state error (not found, already exists,
//! still in use); 1 etcd or the agent unreachable or failing. Errors are one line on stderr:
//! `error: lport p1: allowed address pair 192.0.2.300 is not an IP address or CIDR`.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

//!
//! This file wires clap to the commands: one module per subcommand, `output` for tables,
//! JSON and YAML, `client` for the agent's HTTP endpoints, `ctx` for what the etcd-backed
//! commands share.

mod aap;
mod apply;
mod chassis;
mod client;
mod ct;
mod ctx;
mod error;
mod garp;
mod generate;
mod lport;
mod lrouter;
mod lswitch;
mod monitor;
mod output;
mod port;
mod secgroup;
mod subnet;
mod trace;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use clap_complete::Shell;
use dragonflow_agent::{
    etcd::{NbStore, store::DEFAULT_CONNECT_TIMEOUT},
    nb::{DEFAULT_PREFIX, ValidationOptions, etcd::EtcdArgs, rules},
};

use crate::{
    aap::AapCmd,
    apply::ApplyArgs,
    chassis::ChassisCmd,
    ct::CtCmd,
    ctx::Ctx,
    error::{CliError, Result, error_chain},
    garp::GarpCmd,
    lport::LportCmd,
    lrouter::LrouterCmd,
    lswitch::LswitchCmd,
    output::Output,
    secgroup::SecgroupCmd,
    subnet::SubnetCmd,
};

#[derive(Parser, Debug)]
#[command(
    name = "dfctl",
    version,
    about = "Manage the Dragonflow northbound database in etcd",
    after_help = "Exit codes: 0 success; 2 usage, validation or state error; 1 etcd or the \
                  agent unreachable or failing."
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
        default_value_t = rules::DEFAULT_MAX_ALLOWED_ADDRESS_PAIRS
    )]
    max_allowed_address_pairs: usize,
    /// Accept 0.0.0.0/0 or ::/0 as an allowed address pair. Such a pair lets the port use,
    /// and claim, every address on its network: anti-spoofing is off for it.
    #[arg(long, global = true, env = "DRAGONFLOW_ALLOW_ANY_AAP")]
    allow_any_aap: bool,
    /// Output format of every list and show [default: table for lists and `secgroup
    /// show`, json for the other shows].
    #[arg(short, long, global = true, value_enum)]
    output: Option<Output>,
    #[command(subcommand)]
    cmd: Cmd,
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
    /// Watch the datapath's drops (with the headers of each dropped frame) and GARPs live,
    /// from the agent on this host (HTTP GET <agent>/monitor); Ctrl-C to stop.
    Monitor(monitor::MonitorArgs),
    /// A port's datapath counters on this host (passes, drops by reason, conntrack use,
    /// tap state).
    #[command(subcommand)]
    Port(port::PortCmd),
    /// Shared allowed-address-pair IPs: holders, mode, the active port (detection way) and
    /// its history.
    #[command(subcommand)]
    Aap(AapCmd),
    /// Run a frame through the real programs and live maps of the agent of a port's
    /// chassis, changing nothing: the stages it passed, the verdict and drop reason, the
    /// security-group rule, the frame as it would leave (the agent's POST /trace).
    Trace(trace::TraceArgs),
    /// Create or replace the records of a file (a JSON or YAML list of records, each with
    /// a `kind`), validated as a whole: one bad record and nothing is written.
    Apply(ApplyArgs),
    /// Print a shell completion script (e.g. `dfctl completion bash >
    /// /etc/bash_completion.d/dfctl`).
    Completion {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write the man pages (one per command) into a directory (`cargo xtask man`).
    #[command(hide = true)]
    Man {
        /// The directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message());
            ExitCode::from(e.exit_code())
        }
    }
}

/// Commands that need neither etcd nor tokio run here; the rest get a runtime and a store.
fn dispatch(cli: Cli) -> Result<()> {
    let timeout = Duration::from_secs_f64(cli.timeout.clamp(0.1, 3600.0));
    match &cli.cmd {
        Cmd::Garp(c) => return garp::run(c, timeout, cli.output),
        Cmd::Monitor(a) => return monitor::run(a, cli.output),
        Cmd::Port(c) => return port::run(c, timeout, cli.output),
        Cmd::Ct(c) => return ct::run(c, cli.output),
        Cmd::Completion { shell } => return generate::completion(*shell),
        Cmd::Man { out } => return generate::man(out),
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Unavailable(format!("cannot start the tokio runtime: {e}")))?;
    rt.block_on(run(cli, timeout))
}

async fn run(cli: Cli, timeout: Duration) -> Result<()> {
    let ctx = connect(&cli, timeout).await?;
    match cli.cmd {
        Cmd::Lswitch(c) => ctx.lswitch(c).await,
        Cmd::Subnet(c) => ctx.subnet(c).await,
        Cmd::Lport(c) => ctx.lport(c).await,
        Cmd::Lrouter(c) => ctx.lrouter(c).await,
        Cmd::Secgroup(c) => ctx.secgroup(c).await,
        Cmd::Chassis(c) => ctx.chassis(c).await,
        Cmd::Aap(c) => ctx.aap(c, timeout).await,
        Cmd::Apply(a) => ctx.apply(a).await,
        Cmd::Trace(a) => ctx.trace(a, timeout).await,
        Cmd::Garp(_)
        | Cmd::Ct(_)
        | Cmd::Monitor(_)
        | Cmd::Port(_)
        | Cmd::Completion { .. }
        | Cmd::Man { .. } => {
            unreachable!("dispatched without etcd")
        }
    }
}

/// The NB store the global options describe.
async fn connect(cli: &Cli, timeout: Duration) -> Result<Ctx> {
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
    Ok(Ctx {
        store,
        opts,
        output: cli.output,
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Issue 14 item 7: every subcommand and every flag says what it is for (the help
    /// text, completion descriptions and man pages all come from these).
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if ["help", "version"].contains(&id) {
                    continue;
                }
                if arg
                    .get_help()
                    .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_name() != "help"
                    && sub
                        .get_about()
                        .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "dfctl", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
