//! Program attachments on taps, pinned as `<pins>/links/<ifname>@<kind>` so that they
//! outlive the agent: a killed or upgraded agent leaves the datapath running, and its
//! successor adopts each pinned link by atomically replacing the program in it
//! (`bpf_link_update`), never by detach-then-attach.
//!
//! Links of this project's programs that these pins do not hold — left by an agent run
//! with another `--bpffs`, or by a crashed older layout — are foreign: their programs
//! read maps nobody updates any more. When this agent first handles a device it takes a
//! foreign link of the program it wants over (pins it here and replaces its program, as
//! for its own pins) and detaches every other foreign one ([`Links::detach_foreign`]);
//! the caller says so once per device ([`Links::take_replaced`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
    time::SystemTime,
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp,
        links::{FdLink, LinkError as AyaLinkError, PinnedLink},
        loaded_links, loaded_programs,
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::{XdpLink, XdpMode as AyaXdpMode},
    },
};
use dragonflow_common::maps::progs;
use tracing::{debug, info, warn};

use super::sys;
use crate::config::{Hook, XdpMode};

/// One kind of attachment on a tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkKind {
    /// The from-VM pipeline as XDP.
    Xdp,
    /// The from-VM pipeline on tcx ingress.
    Tc,
    /// The tcx companion of the XDP hook of issue 2 that dropped VLAN tags hidden in skb
    /// metadata. No longer attached (the XDP hook's companion is now the full TC
    /// pipeline); kept so that its pins, left by an older agent, are recognised and
    /// removed once the TC pipeline runs on the tap.
    VlanGuard,
    /// `df_from_tunnel` on the VXLAN device's tcx ingress.
    Tunnel,
}

impl LinkKind {
    pub const ALL: [LinkKind; 4] = [
        LinkKind::Xdp,
        LinkKind::Tc,
        LinkKind::VlanGuard,
        LinkKind::Tunnel,
    ];

    /// Suffix of the pin file name.
    pub const fn suffix(self) -> &'static str {
        match self {
            LinkKind::Xdp => "xdp",
            LinkKind::Tc => "tc",
            LinkKind::VlanGuard => "vlan",
            LinkKind::Tunnel => "tunnel",
        }
    }

    pub const fn program(self) -> &'static str {
        match self {
            LinkKind::Xdp => progs::FROM_VM_XDP,
            LinkKind::Tc => progs::FROM_VM_TC,
            LinkKind::VlanGuard => progs::VLAN_GUARD_TC,
            LinkKind::Tunnel => progs::FROM_TUNNEL_TC,
        }
    }

    const fn link_type(self) -> u32 {
        match self {
            LinkKind::Xdp => sys::LINK_TYPE_XDP,
            LinkKind::Tc | LinkKind::VlanGuard | LinkKind::Tunnel => sys::LINK_TYPE_TCX,
        }
    }

    fn from_suffix(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.suffix() == s)
    }

    /// What a tap carries with `hook`. With XDP the full TC pipeline also runs on tcx
    /// ingress: the XDP program hands it what XDP cannot finish (frames for other chassis,
    /// which need the tunnel key set from TC, and flooded frames, which need clones), and
    /// it drops VLAN tags hidden in skb metadata, which XDP cannot see (the job of issue
    /// 2's `df_vlan_guard`). It goes on every tap, not only veth.
    ///
    /// Order matters on a hook switch or an upgrade: the kinds listed here are attached
    /// first, and only then are the others (an older agent's `@vlan` pin, the previous
    /// hook) removed, so a tap is never without a program.
    pub const fn for_hook(hook: Hook) -> &'static [LinkKind] {
        match hook {
            Hook::Xdp => &[LinkKind::Xdp, LinkKind::Tc],
            Hook::Tc => &[LinkKind::Tc],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("program {0} is not in the eBPF object")]
    ProgramMissing(&'static str),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "cannot attach {name} to {ifname} (with --hook xdp, try --xdp-mode skb if the driver lacks native XDP)"
    )]
    Attach {
        name: &'static str,
        ifname: String,
        #[source]
        source: ProgramError,
    },
    #[error("link of {name} on {ifname}")]
    Link {
        name: &'static str,
        ifname: String,
        #[source]
        source: AyaLinkError,
    },
    #[error("cannot pin the link at {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("cannot list {path}")]
    ListPins {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What [`Links::ensure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Already attached by this process.
    Unchanged,
    /// A pinned link from a previous agent now runs the freshly loaded program.
    Adopted,
    /// A new link was created and pinned.
    Attached,
}

/// A pin file in the links directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub ifname: String,
    pub kind: LinkKind,
    pub path: PathBuf,
}

/// A program of this project on a device, not held by this agent's pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Foreign {
    pub ifname: String,
    /// Its name, one of [`LinkKind::program`].
    pub program: String,
    pub prog_id: u32,
    /// `xdp` or `tcx`.
    pub hook: &'static str,
    /// The link attaching it (`None`: attached without a link, e.g. by netlink; such an
    /// attachment is not this project's and is left alone).
    pub link_id: Option<u32>,
    /// When it was loaded: the age of the agent that left it.
    pub loaded_at: Option<SystemTime>,
    /// What this agent did with it: `took over` or `detached` (empty: nothing yet).
    pub action: &'static str,
}

impl Foreign {
    /// `took over df_from_vm_tc (prog 41, tcx link 12, loaded 310 s ago)`.
    pub fn describe(&self) -> String {
        let age = self
            .loaded_at
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map_or_else(String::new, |d| format!(", loaded {} s ago", d.as_secs()));
        let link = self.link_id.map_or_else(
            || "no link".to_string(),
            |l| format!("{} link {l}", self.hook),
        );
        let action = if self.action.is_empty() {
            String::new()
        } else {
            format!("{} ", self.action)
        };
        format!(
            "{action}{} (prog {}, {link}{age})",
            self.program, self.prog_id
        )
    }
}

/// The pinned links of this chassis.
pub struct Links {
    dir: PathBuf,
    xdp_mode: XdpMode,
    /// What this process attached or adopted: (ifname, kind) → ifindex.
    done: BTreeMap<(String, LinkKind), u32>,
    /// Foreign programs taken over or detached, not yet reported (`take_replaced`).
    replaced: Vec<Foreign>,
}

impl Links {
    pub fn new(dir: PathBuf, xdp_mode: XdpMode) -> Self {
        Links {
            dir,
            xdp_mode,
            done: BTreeMap::new(),
            replaced: Vec::new(),
        }
    }

    pub fn path(&self, ifname: &str, kind: LinkKind) -> PathBuf {
        self.dir.join(pin_name(ifname, kind))
    }

    /// Every pin file (unknown files are ignored).
    pub fn pins(&self) -> Result<Vec<Pin>, LinkError> {
        list_pins(&self.dir)
    }

    /// Makes sure `kind` runs on `ifname` (ifindex `ifindex`) from a pinned link.
    pub fn ensure(
        &mut self,
        ebpf: &mut Ebpf,
        ifname: &str,
        ifindex: u32,
        kind: LinkKind,
    ) -> Result<Outcome, LinkError> {
        let path = self.path(ifname, kind);
        let key = (ifname.to_string(), kind);
        if self.done.get(&key) == Some(&ifindex) && path.exists() {
            return Ok(Outcome::Unchanged);
        }
        if ebpf.program(kind.program()).is_none() {
            return Err(LinkError::ProgramMissing(kind.program()));
        }
        let outcome = if path.exists() {
            match sys::pinned_link_info(&path) {
                Ok(i) if i.ifindex == ifindex && i.link_type == kind.link_type() => {
                    self.adopt(ebpf, ifname, kind, &path)?;
                    Outcome::Adopted
                }
                Ok(i) => {
                    info!(
                        ifname,
                        pin = %path.display(),
                        "pinned link is stale (attached to ifindex {} of type {}, tap now has ifindex {ifindex}); replacing it",
                        i.ifindex,
                        i.link_type
                    );
                    remove_pin(&path);
                    if self.take_over(ebpf, ifname, ifindex, kind, &path)? {
                        Outcome::Adopted
                    } else {
                        self.attach(ebpf, ifname, ifindex, kind, &path)?;
                        Outcome::Attached
                    }
                }
                Err(e) => {
                    warn!(pin = %path.display(), "unreadable pinned link ({e}); replacing it");
                    remove_pin(&path);
                    if self.take_over(ebpf, ifname, ifindex, kind, &path)? {
                        Outcome::Adopted
                    } else {
                        self.attach(ebpf, ifname, ifindex, kind, &path)?;
                        Outcome::Attached
                    }
                }
            }
        } else if self.take_over(ebpf, ifname, ifindex, kind, &path)? {
            Outcome::Adopted
        } else {
            self.attach(ebpf, ifname, ifindex, kind, &path)?;
            Outcome::Attached
        };
        self.done.insert(key, ifindex);
        Ok(outcome)
    }

    /// Pins here a foreign link of `kind`'s program on the device, if there is one, and
    /// replaces its program with ours (atomically, as for our own pins): the device never
    /// goes without the pipeline, and no second link runs before or after ours.
    fn take_over(
        &mut self,
        ebpf: &mut Ebpf,
        ifname: &str,
        ifindex: u32,
        kind: LinkKind,
        path: &Path,
    ) -> Result<bool, LinkError> {
        let foreign = match foreign_on(ebpf, ifname, ifindex) {
            Ok(f) => f,
            Err(e) => {
                warn!(ifname, "cannot look for foreign programs: {e}");
                return Ok(false);
            }
        };
        let wanted = if kind == LinkKind::Xdp { "xdp" } else { "tcx" };
        let Some(f) = foreign
            .into_iter()
            .find(|f| f.program == kind.program() && f.hook == wanted && f.link_id.is_some())
        else {
            return Ok(false);
        };
        let pinned = f
            .link_id
            .map(sys::link_by_id)
            .transpose()
            .and_then(|fd| fd.map(|fd| sys::obj_pin(&fd, path)).transpose());
        if let Err(e) = pinned {
            warn!(ifname, "cannot take over foreign {}: {e}", f.describe());
            return Ok(false);
        }
        self.adopt(ebpf, ifname, kind, path)?;
        debug!(ifname, ifindex, pin = %path.display(), "took over foreign {}", f.describe());
        let f = Foreign {
            action: "took over",
            ..f
        };
        self.replaced.push(f);
        Ok(true)
    }

    /// Detaches every program of this project on the device that our pins do not hold,
    /// on both hooks (e.g. the XDP program of an agent that ran with `--hook xdp`, when
    /// this one runs `--hook tc`). Call once the device carries our pipeline. Returns how
    /// many were detached; they are reported by [`Links::take_replaced`].
    pub fn detach_foreign(&mut self, ebpf: &Ebpf, ifname: &str, ifindex: u32) -> usize {
        let foreign = match foreign_on(ebpf, ifname, ifindex) {
            Ok(f) => f,
            Err(e) => {
                warn!(ifname, "cannot look for foreign programs: {e}");
                return 0;
            }
        };
        let mut n = 0;
        for f in foreign {
            let Some(link) = f.link_id else {
                warn!(
                    ifname,
                    "foreign {} is attached without a link; left in place (detach it by hand)",
                    f.describe()
                );
                continue;
            };
            match sys::link_by_id(link).and_then(|fd| sys::link_detach(&fd)) {
                Ok(()) => {
                    debug!(ifname, ifindex, "detached foreign {}", f.describe());
                    let f = Foreign {
                        action: "detached",
                        ..f
                    };
                    self.replaced.push(f);
                    n += 1;
                }
                Err(e) => warn!(ifname, "cannot detach foreign {}: {e}", f.describe()),
            }
        }
        n
    }

    /// Foreign programs taken over or detached since the last call (the caller logs them,
    /// one line per device).
    pub fn take_replaced(&mut self) -> Vec<Foreign> {
        std::mem::take(&mut self.replaced)
    }

    fn adopt(
        &mut self,
        ebpf: &mut Ebpf,
        ifname: &str,
        kind: LinkKind,
        path: &Path,
    ) -> Result<(), LinkError> {
        let name = kind.program();
        let link_err = |source| LinkError::Link {
            name,
            ifname: ifname.to_string(),
            source,
        };
        let prog_err = |source| LinkError::Program { name, source };
        let fd: FdLink = PinnedLink::from_pin(path).map_err(link_err)?.into();
        let prog = ebpf
            .program_mut(name)
            .ok_or(LinkError::ProgramMissing(name))?;
        // The pin keeps the link (and the new program in it) alive; the fds taken here are
        // closed when the returned links drop.
        match kind {
            LinkKind::Xdp => {
                let prog: &mut Xdp = prog.try_into().map_err(prog_err)?;
                let link = XdpLink::try_from(fd).map_err(link_err)?;
                let id = prog.attach_to_link(link).map_err(prog_err)?;
                drop(prog.take_link(id).map_err(prog_err)?);
            }
            LinkKind::Tc | LinkKind::VlanGuard | LinkKind::Tunnel => {
                let prog: &mut SchedClassifier = prog.try_into().map_err(prog_err)?;
                let link = SchedClassifierLink::try_from(fd).map_err(link_err)?;
                let id = prog.attach_to_link(link).map_err(prog_err)?;
                drop(prog.take_link(id).map_err(prog_err)?);
            }
        }
        Ok(())
    }

    fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        ifname: &str,
        ifindex: u32,
        kind: LinkKind,
        path: &Path,
    ) -> Result<(), LinkError> {
        let name = kind.program();
        let prog_err = |source| LinkError::Program { name, source };
        let attach_err = |source| LinkError::Attach {
            name,
            ifname: ifname.to_string(),
            source,
        };
        let link_err = |source| LinkError::Link {
            name,
            ifname: ifname.to_string(),
            source,
        };
        let prog = ebpf
            .program_mut(name)
            .ok_or(LinkError::ProgramMissing(name))?;
        let fd: FdLink = match kind {
            LinkKind::Xdp => {
                let prog: &mut Xdp = prog.try_into().map_err(prog_err)?;
                let mode = match self.xdp_mode {
                    XdpMode::Native => AyaXdpMode::Driver,
                    XdpMode::Skb => AyaXdpMode::Skb,
                };
                let id = prog.attach_to_if_index(ifindex, mode).map_err(attach_err)?;
                prog.take_link(id)
                    .map_err(prog_err)?
                    .try_into()
                    .map_err(link_err)?
            }
            LinkKind::Tc | LinkKind::VlanGuard | LinkKind::Tunnel => {
                let prog: &mut SchedClassifier = prog.try_into().map_err(prog_err)?;
                let id = prog
                    .attach_with_options(
                        ifname,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(attach_err)?;
                prog.take_link(id)
                    .map_err(prog_err)?
                    .try_into()
                    .map_err(link_err)?
            }
        };
        // If pinning fails, `fd` is dropped and the link detaches: nothing half-done stays.
        fd.pin(path).map_err(|source| LinkError::Pin {
            path: path.to_path_buf(),
            source,
        })?;
        debug!(ifname, ifindex, pin = %path.display(), "attached {name}");
        Ok(())
    }

    /// Removes the pins of `kinds` on `ifname` (detaching them).
    pub fn remove(&mut self, ifname: &str, kinds: &[LinkKind]) -> usize {
        let mut n = 0;
        for &kind in kinds {
            let path = self.path(ifname, kind);
            if path.exists() {
                remove_pin(&path);
                n += 1;
            }
            self.done.remove(&(ifname.to_string(), kind));
        }
        n
    }

    /// Forgets that `ifname` was handled (its device is gone).
    pub fn forget(&mut self, ifname: &str) {
        self.done.retain(|(n, _), _| n != ifname);
    }

    /// The links this process attached or adopted.
    pub fn done(&self) -> impl Iterator<Item = (&str, LinkKind, u32)> {
        self.done.iter().map(|((n, k), i)| (n.as_str(), *k, *i))
    }
}

/// Programs of this project (by name) on `ifname`'s tcx ingress and XDP hook that are not
/// programs of `ebpf`, with the link attaching each. The device is looked up in this
/// network namespace (`BPF_PROG_QUERY`, `RTM_GETLINK`); a link is matched by its program
/// and ifindex (a program of another agent is attached only in that agent's namespace).
pub fn foreign_on(ebpf: &Ebpf, ifname: &str, ifindex: u32) -> Result<Vec<Foreign>, String> {
    let ours: BTreeSet<u32> = ebpf
        .programs()
        .filter_map(|(_, p)| p.info().ok().map(|i| i.id()))
        .collect();
    let project: BTreeSet<&str> = LinkKind::ALL.iter().map(|k| k.program()).collect();
    let mut found: Vec<(u32, String, &'static str, Option<SystemTime>)> = Vec::new();
    let (_, tcx) = SchedClassifier::query_tcx(ifname, TcAttachType::Ingress)
        .map_err(|e| format!("tcx query of {ifname}: {e}"))?;
    for p in tcx {
        if let Some(name) = p.name_as_str()
            && project.contains(name)
            && !ours.contains(&p.id())
        {
            found.push((p.id(), name.to_string(), "tcx", p.loaded_at()));
        }
    }
    let xdp: Vec<u32> = sys::xdp_prog_ids(ifindex)
        .map_err(|e| format!("XDP query of {ifname}: {e}"))?
        .into_iter()
        .filter(|id| !ours.contains(id))
        .collect();
    if !xdp.is_empty() {
        for p in loaded_programs().flatten() {
            if xdp.contains(&p.id())
                && let Some(name) = p.name_as_str()
                && project.contains(name)
            {
                found.push((p.id(), name.to_string(), "xdp", p.loaded_at()));
            }
        }
    }
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let mut links: BTreeMap<u32, u32> = BTreeMap::new();
    for l in loaded_links().flatten() {
        if found.iter().any(|f| f.0 == l.program_id())
            && let Ok(info) = sys::link_by_id(l.id()).and_then(|fd| sys::link_info(&fd))
            && info.ifindex == ifindex
        {
            links.insert(l.program_id(), l.id());
        }
    }
    Ok(found
        .into_iter()
        .map(|(prog_id, program, hook, loaded_at)| Foreign {
            ifname: ifname.to_string(),
            program,
            prog_id,
            hook,
            link_id: links.get(&prog_id).copied(),
            loaded_at,
            action: "",
        })
        .collect())
}

/// The pin file name of `kind` on `ifname`: `<ifname>@<kind>`, with `.` written `%2e`.
///
/// bpffs refuses names containing a dot (EPERM: "reserved for future extensions",
/// `bpf_lookup()` in kernel/bpf/inode.c), and interface names may contain dots (VLAN
/// devices such as `eth0.100`). `%` never appears in an interface name (the kernel treats
/// it as a `%d` template), so the escape is unambiguous.
pub fn pin_name(ifname: &str, kind: LinkKind) -> String {
    format!("{}@{}", ifname.replace('.', "%2e"), kind.suffix())
}

/// The inverse of [`pin_name`].
pub fn parse_pin_name(file: &str) -> Option<(String, LinkKind)> {
    let (ifname, suffix) = file.rsplit_once('@')?;
    Some((ifname.replace("%2e", "."), LinkKind::from_suffix(suffix)?))
}

pub fn list_pins(dir: &Path) -> Result<Vec<Pin>, LinkError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LinkError::ListPins {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        let Some((ifname, kind)) = parse_pin_name(file) else {
            continue;
        };
        out.push(Pin {
            ifname,
            kind,
            path: entry.path(),
        });
    }
    out.sort_by(|a, b| (&a.ifname, a.kind).cmp(&(&b.ifname, b.kind)));
    Ok(out)
}

/// Unpins (and thereby detaches, unless someone else holds the link) a pinned link.
pub fn remove_pin(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => debug!(pin = %path.display(), "removed pin"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!(pin = %path.display(), "cannot remove pin: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_have_no_dots_and_round_trip() {
        for (ifname, kind) in [
            ("tapvm1", LinkKind::Tc),
            ("eth0.100", LinkKind::Xdp),
            ("a@b", LinkKind::VlanGuard),
        ] {
            let n = pin_name(ifname, kind);
            assert!(!n.contains('.'), "{n}");
            assert_eq!(parse_pin_name(&n), Some((ifname.to_string(), kind)));
        }
        assert_eq!(pin_name("tapvm1", LinkKind::Tc), "tapvm1@tc");
        assert_eq!(parse_pin_name("junk"), None);
        assert_eq!(parse_pin_name("x@nope"), None);
    }

    #[test]
    fn list_pins_parses_names() {
        let dir = std::env::temp_dir().join(format!("df-pins-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for f in ["tap1@tc", "eth0%2e5@xdp", "junk", "x@y"] {
            fs::write(dir.join(f), b"").unwrap();
        }
        let pins = list_pins(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let got: Vec<(&str, LinkKind)> = pins.iter().map(|p| (p.ifname.as_str(), p.kind)).collect();
        assert_eq!(got, vec![("eth0.5", LinkKind::Xdp), ("tap1", LinkKind::Tc)]);
    }
}
