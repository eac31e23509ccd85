//! The kernel side as seen from the agent: the embedded eBPF object, loading it with its
//! maps pinned (and adopted when a previous agent left them), program attachments, and
//! typed map access.
//!
//! Pins live under `<bpffs>/dragonflow/<chassis>/`: `maps/<map name>` and
//! `links/<ifname>@<xdp|tc|vlan|tunnel>` (bpffs forbids dots in names).

pub mod capacity;
pub mod ct;
pub mod links;
pub mod maps;
pub mod monitor;
pub mod sys;
pub mod trace;
pub mod tunnel;

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{ProgramError, SchedClassifier, Xdp},
};
use dragonflow_common::maps::{self as names, globals};
use tracing::{info, warn};

pub use self::{
    links::{LinkKind, Links, Outcome},
    maps::{Maps, StatsMaps},
};
use crate::{
    config::{Config, Hook},
    report::Chain,
};

/// The eBPF object built by build.rs (aya-build) from `dragonflow-ebpf`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dragonflow"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "{dir} is not a bpffs: is bpffs mounted at {dir}? try `mount -t bpf bpf {dir}` (or pass --bpffs)"
    )]
    NotBpffs { dir: PathBuf },
    #[error("cannot use {dir}: is bpffs mounted there? try `mount -t bpf bpf {dir}`")]
    Bpffs {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create pin directory {dir}")]
    PinDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot load the eBPF object (maps pinned in {maps_dir})")]
    Load {
        maps_dir: PathBuf,
        #[source]
        source: Box<EbpfError>,
    },
    #[error("cannot load program {name} (verifier rejected it?)")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error(transparent)]
    Maps(#[from] maps::MapsError),
    #[error(transparent)]
    Links(#[from] links::LinkError),
}

/// Checks that `dir` is a bpffs and creates `maps/` and `links/` under the pin root.
pub fn prepare_pin_dirs(cfg: &Config) -> Result<(), DatapathError> {
    let dir = &cfg.bpffs;
    match sys::is_bpffs(dir) {
        Ok(true) => {}
        Ok(false) => return Err(DatapathError::NotBpffs { dir: dir.clone() }),
        Err(source) => {
            return Err(DatapathError::Bpffs {
                dir: dir.clone(),
                source,
            });
        }
    }
    for d in [cfg.maps_dir(), cfg.links_dir()] {
        fs::create_dir_all(&d).map_err(|source| DatapathError::PinDir {
            dir: d.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The loaded object with its programs ready to attach.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps: Maps,
    pub stats: StatsMaps,
    pub garp_events: Option<RingBuf<MapData>>,
    /// The drop events of `dfctl monitor` and their switch.
    pub monitor: Option<monitor::MonitorMaps>,
}

/// Loads [`EBPF_OBJECT`]: every shared map is pinned by name in `<pins>/maps`, so maps
/// pinned by a previous agent are reused as they are (entries and counters included);
/// the GARP rate limit is set as a load-time global; the programs for `cfg.hook` are
/// loaded (verified) but not attached.
pub fn load(cfg: &Config) -> Result<Loaded, DatapathError> {
    let maps_dir = cfg.maps_dir();
    let garp_ns: u64 = cfg.garp_min_interval_ms.saturating_mul(1_000_000);
    let aya_log_level: u8 = if cfg.datapath_log { 0xff } else { 0 };
    let pin_paths: Vec<(&str, PathBuf)> =
        names::ALL.iter().map(|n| (*n, maps_dir.join(n))).collect();

    let mut loader = EbpfLoader::new();
    loader
        .default_map_pin_directory(&maps_dir)
        .override_global(globals::GARP_MIN_INTERVAL_NS, &garp_ns, false)
        .override_global(aya_log::LEVEL, &aya_log_level, false);
    for (name, path) in &pin_paths {
        loader.map_pin_path(name, path.as_path());
    }
    // Applies to maps created now; a map already pinned is adopted as it is (see
    // `effective_capacities`).
    for (&name, &n) in &cfg.map_capacity {
        loader.map_max_entries(name, n);
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .map_err(|source| DatapathError::Load {
            maps_dir: maps_dir.clone(),
            source: Box::new(source),
        })?;

    for &kind in LinkKind::for_hook(cfg.hook) {
        load_program(&mut ebpf, kind)?;
    }
    if cfg.tunnel_dev.is_some() {
        load_program(&mut ebpf, LinkKind::Tunnel)?;
    }
    remove_stale_maps(&maps_dir);
    let mut maps = Maps::take(&mut ebpf)?;
    maps.capacity = effective_capacities(&maps_dir, cfg);
    let stats = StatsMaps::take(&mut ebpf, &maps_dir)?;
    let monitor = monitor::MonitorMaps::take(&mut ebpf);
    let garp_events = match ebpf.take_map(names::GARP_EVENTS) {
        Some(m) => match RingBuf::try_from(m) {
            Ok(rb) => Some(rb),
            Err(e) => {
                warn!(
                    "{} is not a ring buffer: {}; GARP events disabled",
                    names::GARP_EVENTS,
                    Chain(&e)
                );
                None
            }
        },
        None => {
            warn!(
                "{} not in the eBPF object; GARP events disabled",
                names::GARP_EVENTS
            );
            None
        }
    };
    Ok(Loaded {
        ebpf,
        maps,
        stats,
        garp_events,
        monitor,
    })
}

/// The capacity each map the agent fills really has, read from the kernel.
///
/// A map pinned by a previous agent is adopted with its entries (live traffic depends on
/// them), whatever capacity it was created with: aya reuses a pinned map without
/// comparing its definition. Re-creating it here would drop every frame that needs it
/// until the first sync has refilled it, so a changed `--map-capacity` is not applied to
/// a pinned map: it is said once at start, and `dragonflow_map_capacity` shows the real
/// size. To resize one, stop the agent, remove its pin (`<bpffs>/dragonflow/<chassis>/
/// maps/<map>`) and start it again (README, "Map capacities").
fn effective_capacities(maps_dir: &Path, cfg: &Config) -> capacity::Capacities {
    let mut out = capacity::Capacities::new();
    for &name in &capacity::FILLED {
        let Some(default) = names::capacity(name) else {
            continue;
        };
        let want = cfg.map_capacity.get(name).copied().unwrap_or(default);
        let have = match aya::maps::MapInfo::from_pin(maps_dir.join(name)) {
            Ok(info) => info.max_entries(),
            Err(e) => {
                warn!(map = name, "cannot read the map's capacity: {}", Chain(&e));
                want
            }
        };
        if have != want {
            warn!(
                map = name,
                capacity = have,
                configured = want,
                "map adopted from a previous agent keeps its capacity {have} (configured \
                 {want}); to resize it, stop the agent, remove {} and start it again (its \
                 entries are rewritten at the first sync)",
                maps_dir.join(name).display()
            );
        }
        out.insert(name, have);
    }
    out
}

fn load_program(ebpf: &mut Ebpf, kind: LinkKind) -> Result<(), DatapathError> {
    let name = kind.program();
    let Some(prog) = ebpf.program_mut(name) else {
        // Tolerated so that a partial object still runs; every tap then stays unattached
        // and is reported as such.
        warn!("program {name} is not in the eBPF object");
        return Ok(());
    };
    let err = |source| DatapathError::Program {
        name,
        source: Box::new(source),
    };
    match kind {
        LinkKind::Xdp => {
            let p: &mut Xdp = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
        }
        LinkKind::Tc | LinkKind::VlanGuard | LinkKind::Tunnel => {
            let p: &mut SchedClassifier = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
        }
    }
    Ok(())
}

/// Removes pinned maps of older layouts (`df_*` names not in [`names::ALL`], e.g.
/// `df_addrs_v1`): the loaded object uses the current names, so nothing reads them any
/// more. Called after loading, when the current maps are pinned and in use.
pub fn remove_stale_maps(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_stale_map(name) {
            continue;
        }
        match fs::remove_file(e.path()) {
            Ok(()) => {
                info!(map = name, "removed pinned map of an older layout");
                n += 1;
            }
            Err(err) => warn!(map = name, "cannot remove stale pinned map: {err}"),
        }
    }
    n
}

fn is_stale_map(name: &str) -> bool {
    name.starts_with("df_") && !names::ALL.contains(&name)
}

/// What `--cleanup` removed.
#[derive(Debug, Default)]
pub struct CleanupReport {
    pub links: usize,
    pub maps: usize,
}

/// Detaches every pinned link of this chassis and removes its pinned maps and directories.
/// Unpinning is what detaches: no agent runs, so the pins are the last references.
pub fn cleanup(cfg: &Config) -> Result<CleanupReport, DatapathError> {
    let mut report = CleanupReport::default();
    for pin in links::list_pins(&cfg.links_dir())? {
        links::remove_pin(&pin.path);
        info!(ifname = %pin.ifname, kind = pin.kind.suffix(), "detached");
        report.links += 1;
    }
    report.maps += remove_files(&cfg.maps_dir());
    remove_files(&cfg.links_dir());
    for d in [cfg.maps_dir(), cfg.links_dir(), cfg.pin_root()] {
        let _ = fs::remove_dir(&d);
    }
    // The shared `dragonflow/` directory goes only when no other chassis uses it.
    let _ = fs::remove_dir(cfg.bpffs.join("dragonflow"));
    Ok(report)
}

fn remove_files(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for e in rd.flatten() {
        match fs::remove_file(e.path()) {
            Ok(()) => n += 1,
            Err(err) => warn!(path = %e.path().display(), "cannot remove: {err}"),
        }
    }
    n
}

/// The other hook's link kinds (detached after the configured hook is attached).
pub fn other_kinds(hook: Hook) -> Vec<LinkKind> {
    LinkKind::ALL
        .into_iter()
        .filter(|k| !LinkKind::for_hook(hook).contains(k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_maps() {
        assert!(is_stale_map("df_addrs_v1"));
        assert!(is_stale_map("df_stats_v1"));
        assert!(!is_stale_map(names::ADDRS));
        assert!(!is_stale_map(names::L2));
        assert!(!is_stale_map("AYA_LOGS"), "only our own names are touched");
    }
}
