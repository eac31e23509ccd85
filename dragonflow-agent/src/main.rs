//! `dragonflow-agent`: the per-hypervisor daemon. See `controller.rs` for the order of
//! things (adopt, sync, prune) and `config.rs` for the flags.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::Parser as _;
use dragonflow_agent::{
    config::{Cli, Config},
    conntrack,
    controller::Controller,
    datapath::{self, ct::CtShared, sys},
    detect,
    etcd::{instance, session},
    monitor, netlink,
    obs::{http, metrics, state::Shared},
    portstatus,
    report::Chain,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{debug, error, info, warn};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cfg = match Cli::parse().resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dragonflow-agent: {}", Chain(&e));
            return ExitCode::from(2);
        }
    };
    // --log or DRAGONFLOW_LOG, else RUST_LOG, else the file's `log`, else info.
    let explicit = cli_has_log() || std::env::var_os("DRAGONFLOW_LOG").is_some();
    let filter = match (explicit, std::env::var("RUST_LOG")) {
        (false, Ok(rust_log)) => rust_log,
        _ => cfg.log.clone().unwrap_or_else(|| "info".into()),
    };
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("dragonflow-agent: invalid log filter {filter:?} ({e}); using info");
        EnvFilter::new("info")
    });
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the tokio runtime: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `--log` was on the command line (it then beats RUST_LOG).
fn cli_has_log() -> bool {
    std::env::args().any(|a| a == "--log" || a.starts_with("--log="))
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    if let Err(e) = sys::raise_memlock() {
        // Kernels >= 5.11 account BPF memory to the cgroup; the limit does not matter there.
        debug!("setrlimit(RLIMIT_MEMLOCK): {e}");
    }
    if cfg.cleanup {
        let r = datapath::cleanup(&cfg).context("cleanup")?;
        info!(
            chassis = %cfg.chassis,
            links = r.links,
            maps = r.maps,
            "removed every pinned link and map of this chassis under {}",
            cfg.pin_root().display()
        );
        return Ok(());
    }
    let cfg = Arc::new(cfg);
    info!(
        chassis = %cfg.chassis,
        hook = cfg.hook.as_str(),
        etcd = %cfg.etcd.endpoints_str(),
        pins = %cfg.pin_root().display(),
        "starting dragonflow-agent {}",
        env!("CARGO_PKG_VERSION")
    );

    if cfg.tunnel_dev.is_some() && (cfg.tunnel_ip.is_loopback() || cfg.tunnel_ip.is_unspecified()) {
        // Other chassis ignore a loopback/unspecified tunnel_ip: VMs here would be
        // unreachable from VMs elsewhere. Fine for a single-hypervisor demo only.
        warn!(
            tunnel_ip = %cfg.tunnel_ip,
            "--tunnel-ip is not an underlay address: other chassis cannot reach this one \
             over VXLAN; set --tunnel-ip (DRAGONFLOW_TUNNEL_IP) to this host's underlay IPv4"
        );
    }
    let instance = instance::load_or_create(&cfg.state_dir, &cfg.chassis)?;
    info!(
        instance,
        "agent instance id (from {})",
        cfg.state_dir.display()
    );
    // Refuse before attaching anything when another live agent has this chassis name.
    session::check_owner(&cfg, &instance)
        .await
        .context("refusing to run")?;
    datapath::prepare_pin_dirs(&cfg)?;
    let mut loaded = datapath::load(&cfg)?;
    let logger = if cfg.datapath_log {
        match aya_log::EbpfLogger::init(&mut loaded.ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!("datapath logging unavailable: {}", Chain(&e));
                None
            }
        }
    } else {
        None
    };

    // Before the controller takes the object: the trace maps and program handles.
    let tracer = match datapath::trace::Tracer::new(&mut loaded.ebpf, cfg.hook) {
        Ok(t) => Some(Arc::new(t)),
        Err(e) => {
            warn!("POST /trace unavailable: {}", Chain(&e));
            None
        }
    };
    let listener = http::bind(cfg.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--metrics-addr)", cfg.metrics_addr))?;
    // Between the controller and the conntrack collector; /state and the metrics read it.
    let ct = Arc::new(CtShared::default());
    let shared = Arc::new(Shared::new(
        cfg.chassis.clone(),
        cfg.hook,
        loaded.stats,
        ct.clone(),
    ));
    shared
        .port_drops_top_k
        .store(cfg.port_drops_top_k, std::sync::atomic::Ordering::Relaxed);
    if let Some(m) = loaded.monitor.take() {
        tokio::spawn(monitor::run(m, shared.clone(), cfg.monitor_rate));
    }
    if let Some(t) = tracer {
        let _ = shared.tracer.set(t);
    }
    // The detection way's counters, kept by its task and the GARP reader.
    let detect_stats = Arc::new(detect::metrics::Stats::default());
    let mut registry = metrics::registry(shared.clone());
    registry.register_collector(Box::new(detect_stats.clone()));
    tokio::spawn(http::serve(listener, shared.clone(), registry));
    info!(
        "serving /metrics, /healthz, /garp, /state, /monitor and POST /trace on http://{}",
        cfg.metrics_addr
    );

    // Datapath events feed the detection way (claims, probe answers).
    let (sighting_tx, sighting_rx) = mpsc::channel(detect::task::SIGHTINGS_QUEUE);
    if let Some(ring) = loaded.garp_events {
        tokio::spawn(detect::reader::run(
            ring,
            cfg.chassis.clone(),
            shared.clone(),
            Some(sighting_tx),
            detect_stats.clone(),
        ));
    }
    if let Some(logger) = logger {
        tokio::spawn(async move {
            // SAFETY: the logger owns its ring buffer fd for its whole life.
            let Ok(mut fd) = (unsafe { AsyncFd::register(logger) }) else {
                return;
            };
            loop {
                let Ok(mut guard) = fd.readable_mut().await else {
                    return;
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
    }

    // Subscribe to link changes before the controller's first scan, so none is missed.
    let (link_tx, link_rx) = mpsc::channel(1);
    netlink::spawn(link_tx).context("tap watcher")?;
    let (nb_tx, nb_rx) = mpsc::channel(64);
    // The conntrack collector is its own task; the controller tells it which taps hold
    // ports through `ct`.
    if let Some(map) = loaded.maps.ct.take() {
        tokio::spawn(conntrack::run(
            map,
            std::time::Duration::from_secs(cfg.ct_gc_interval_s),
            ct.clone(),
        ));
    }
    let mut controller = Controller::new(cfg.clone(), shared.clone(), ct, loaded.ebpf, loaded.maps);
    let (snapshot_tx, snapshot_rx) = watch::channel(None);
    controller.publish_snapshots(snapshot_tx);
    let (port_state_tx, port_state_rx) = watch::channel(Default::default());
    controller.publish_port_states(port_state_tx);
    let (session_tx, session_rx) = watch::channel(None);
    // A fatal etcd finding (the chassis name is another live agent's) ends the session
    // task, whose end closes `nb_rx` and so ends the controller; its error is the agent's.
    let etcd = tokio::spawn(session::run(
        cfg.clone(),
        instance,
        shared.clone(),
        nb_tx,
        session_tx,
    ));
    // The port status records go under the same session's lease.
    tokio::spawn(portstatus::run(
        cfg.clone(),
        port_state_rx,
        session_rx.clone(),
    ));
    tokio::spawn(detect::task::run(
        cfg.clone(),
        shared.clone(),
        detect::task::Inputs {
            sightings: sighting_rx,
            snapshots: snapshot_rx,
            sessions: session_rx,
            stats: detect_stats,
        },
    ));

    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM"),
            _ = int.recv() => info!("SIGINT"),
        }
    };
    controller.run(nb_rx, link_rx, shutdown).await;
    // A no-op when the session task has already returned (its result is kept): that is
    // how a refusal ends the controller, by closing `nb_rx`.
    etcd.abort();
    match etcd.await {
        Ok(Err(e)) => Err(e).context("refusing to run"),
        _ => Ok(()),
    }
}
