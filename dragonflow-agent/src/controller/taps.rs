//! Taps and the tunnel device: attaching the programs, adopting pins, reporting foreign
//! taps.

use std::{collections::BTreeSet, sync::atomic::Ordering, time::Instant};

use tracing::{debug, error, info, warn};

use super::{ATTACH_RETRY, Controller};
use crate::{
    datapath::{self, LinkKind, Outcome, tunnel},
    netlink,
    report::Chain,
};

impl Controller {
    /// Makes sure the VXLAN device exists (created if missing, e.g. deleted by hand) in
    /// external mode and carries `df_from_tunnel`, adopting a pinned link from a previous
    /// agent. Failures are retried every ATTACH_RETRY and shown in /state.
    pub(super) fn ensure_tunnel(&mut self, pins: &[datapath::links::Pin]) {
        let Some(name) = self.cfg.tunnel_dev.clone() else {
            // --no-tunnel after a run with a tunnel: detach what the old run attached.
            for pin in pins.iter().filter(|p| p.kind == LinkKind::Tunnel) {
                info!(ifname = %pin.ifname, "--no-tunnel: detaching df_from_tunnel");
                datapath::links::remove_pin(&pin.path);
            }
            return;
        };
        if let Some((at, _)) = &self.tunnel_error
            && at.elapsed() < ATTACH_RETRY
        {
            return;
        }
        match self.try_tunnel(&name) {
            Ok(()) => {
                if self.tunnel_error.take().is_some() {
                    info!(dev = %name, ifindex = self.tunnel_ifindex, "tunnel device ready");
                }
            }
            Err(msg) => {
                if self.tunnel_error.as_ref().map(|(_, m)| m) != Some(&msg) {
                    error!(dev = %name, "tunnel NOT working (ports on other chassis unreachable): {msg}");
                }
                self.tunnel_error = Some((Instant::now(), msg));
            }
        }
    }

    pub(super) fn try_tunnel(&mut self, name: &str) -> Result<(), String> {
        let ifindex = match self.ifaces.get(name) {
            Some(&i) => i,
            None => {
                self.tunnel_ifindex = 0;
                tunnel::create(name).map_err(|e| Chain(&e).to_string())?;
                self.ifaces = netlink::scan().map_err(|e| Chain(&e).to_string())?;
                let i = *self
                    .ifaces
                    .get(name)
                    .ok_or_else(|| format!("{name} vanished right after it was created"))?;
                info!(
                    dev = name,
                    ifindex = i,
                    "created the VXLAN device (external mode, port 4789)"
                );
                self.tunnel_checked = Some(i);
                i
            }
        };
        if self.tunnel_checked != Some(ifindex) {
            tunnel::adopt(name).map_err(|e| Chain(&e).to_string())?;
            self.tunnel_checked = Some(ifindex);
        }
        // The device works for sending even if the receive program cannot be attached.
        self.tunnel_ifindex = ifindex;
        let outcome = self
            .links
            .ensure(&mut self.ebpf, name, ifindex, LinkKind::Tunnel);
        if matches!(outcome, Ok(Outcome::Adopted | Outcome::Attached)) {
            self.links.detach_foreign(&self.ebpf, name, ifindex);
        }
        self.report_foreign(name);
        match outcome {
            Ok(Outcome::Unchanged) => Ok(()),
            Ok(Outcome::Adopted) => {
                info!(
                    dev = name,
                    ifindex, "adopted pinned df_from_tunnel link (program replaced atomically)"
                );
                Ok(())
            }
            Ok(Outcome::Attached) => {
                info!(dev = name, ifindex, "attached df_from_tunnel");
                Ok(())
            }
            Err(e) => Err(format!(
                "frames from other chassis are not delivered: {}",
                Chain(&e)
            )),
        }
    }

    /// Devices (but the tunnel device) carrying a program of this project that our pins do
    /// not hold: looked for once, at start.
    pub(super) fn find_foreign_taps(&self) -> BTreeSet<String> {
        let tunnel = self.cfg.tunnel_dev.as_deref();
        let mut found = BTreeSet::new();
        for (name, &ifindex) in &self.ifaces {
            if Some(name.as_str()) == tunnel {
                continue;
            }
            match datapath::links::foreign_on(&self.ebpf, name, ifindex) {
                // Logged once taken over or detached (`Links`), not here.
                Ok(f) if !f.is_empty() => {
                    found.insert(name.clone());
                }
                Ok(_) => {}
                Err(e) => debug!(ifname = %name, "cannot look for foreign programs: {e}"),
            }
        }
        found
    }

    /// Says once what `Links` took over or detached on `ifname`, and counts it.
    pub(super) fn report_foreign(&mut self, ifname: &str) {
        let replaced = self.links.take_replaced();
        if replaced.is_empty() {
            return;
        }
        let what: Vec<String> = replaced.iter().map(|f| f.describe()).collect();
        warn!(
            ifname,
            "replaced {} program(s) of this project that this agent's pins did not hold \
             (another --bpffs, or an older agent's layout; their maps were frozen): {}",
            replaced.len(),
            what.join(", ")
        );
        self.shared
            .foreign_programs_replaced_total
            .fetch_add(replaced.len() as u64, Ordering::Relaxed);
    }

    pub(super) fn ensure_tap(&mut self, ifname: &str, ifindex: u32) {
        if let Some((i, at, _)) = self.attach_errors.get(ifname)
            && *i == ifindex
            && at.elapsed() < ATTACH_RETRY
        {
            return;
        }
        let hook = self.cfg.hook;
        let mut errors = Vec::new();
        let mut touched = false;
        for &kind in LinkKind::for_hook(hook) {
            let outcome = self.links.ensure(&mut self.ebpf, ifname, ifindex, kind);
            touched |= !matches!(outcome, Ok(Outcome::Unchanged));
            match outcome {
                Ok(Outcome::Unchanged) => {}
                Ok(Outcome::Adopted) => info!(
                    ifname,
                    ifindex,
                    "adopted pinned {} link (program replaced atomically)",
                    kind.suffix()
                ),
                Ok(Outcome::Attached) => {
                    info!(ifname, ifindex, "attached {} pipeline", kind.suffix())
                }
                Err(e) => errors.push(Chain(&e).to_string()),
            }
        }
        if !errors.is_empty() {
            let msg = errors.join("; ");
            if self.attach_errors.get(ifname).map(|(_, _, m)| m) != Some(&msg) {
                error!(ifname, ifindex, "tap NOT fully protected: {msg}");
            }
            self.attach_errors
                .insert(ifname.to_string(), (ifindex, Instant::now(), msg));
        } else {
            self.attach_errors.remove(ifname);
            // First time this process handles the tap (or it was re-attached): the old
            // hook's links go once the new one runs (switching hooks across restarts), and
            // nothing else of ours may run on it.
            if touched {
                let n = self.links.remove(ifname, &datapath::other_kinds(hook));
                if n > 0 {
                    info!(ifname, "detached {n} link(s) of the previous hook");
                }
                self.links.detach_foreign(&self.ebpf, ifname, ifindex);
            }
        }
        self.report_foreign(ifname);
    }
}
