//! Issue 11 item 8, foreign pins: an agent killed with its programs pinned under one
//! `--bpffs` and restarted with another finds its old programs on the taps (their maps
//! frozen: nobody updates them any more) and replaces them, saying so. Afterwards each
//! hook of a tap carries exactly one program of this project, the new agent's, which
//! enforces changes made after the restart; a device the new agent would not otherwise
//! manage is taken over too (fail closed), never left running a frozen program.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{path::Path, time::Duration};

use aya::programs::{SchedClassifier, tc::TcAttachType};
use dragonflow_agent::datapath::sys;
use serde_json::json;
use tests::{
    fixtures::vmctl_topo::{A, B, Topo, probe},
    framework::{hook::Hook, http::metric_sum, netns::Netns, pin::Bpffs, process::wait_until},
};

/// This project's programs on `ifname`'s tcx ingress and XDP hook: (hook, name, id).
fn project_programs(ns: &Netns, ifname: &str) -> Vec<(&'static str, String, u32)> {
    let ifindex = ns.ifindex(ifname);
    let ifname = ifname.to_string();
    ns.within(move || {
        let mut out = Vec::new();
        let (_, tcx) = SchedClassifier::query_tcx(&ifname, TcAttachType::Ingress)
            .unwrap_or_else(|e| panic!("tcx query of {ifname}: {e}"));
        for p in tcx {
            let name = p.name_as_str().unwrap_or_default().to_string();
            if name.starts_with("df_") {
                out.push(("tcx", name, p.id()));
            }
        }
        let xdp = sys::xdp_prog_ids(ifindex).unwrap_or_else(|e| panic!("XDP of {ifname}: {e}"));
        for p in aya::programs::loaded_programs().flatten() {
            if xdp.contains(&p.id()) {
                let name = p.name_as_str().unwrap_or_default().to_string();
                if name.starts_with("df_") {
                    out.push(("xdp", name, p.id()));
                }
            }
        }
        out.sort();
        out
    })
}

/// The program id in the link pinned at `<bpffs>/dragonflow/hv1/links/<pin>`.
fn pinned_prog(bpffs: &Path, pin: &str) -> u32 {
    let path = bpffs.join("dragonflow/hv1/links").join(pin);
    sys::pinned_link_info(&path)
        .unwrap_or_else(|e| panic!("pinned link {}: {e}", path.display()))
        .prog_id
}

/// The first agent runs `first`, the second `then` (a hook switch across the restart leaves
/// programs to detach rather than take over).
fn restart_with_another_bpffs(first: Hook, then: Hook) {
    let mut t = Topo::new(first, &[A, B]);
    let spoof = json!({"src_ip": "192.0.2.66"});
    assert!(
        !probe(&t.ctl[0], &t.ctl[1], "udp4", spoof.clone()),
        "spoof passes before the restart"
    );
    // A device outside the tap prefix, programmed because a port names it; the port goes
    // away before the restart (the old agent kept the device fail closed under its pin).
    let hv = &t.cloud.hvs[0];
    hv.ns.exec("ip link add vmz0 type veth peer name vmz0p");
    hv.ns.exec("ip link set vmz0 up");
    hv.ns.exec("ip link set vmz0p up");
    t.cloud.dfctl(
        "lport create pz --lswitch net1 --mac fa:16:3e:00:00:5a --no-port-security \
         --chassis hv1 --ifname vmz0",
    );
    let hooks_of = |hook: Hook| -> &'static [&'static str] {
        match hook {
            Hook::Tc => &["tcx"],
            Hook::Xdp => &["tcx", "xdp"],
        }
    };
    let (old_kinds, kinds) = (hooks_of(first), hooks_of(then));
    wait_until(
        "the first agent attaches to vmz0",
        Duration::from_secs(10),
        || project_programs(&t.hv().ns, "vmz0").len() == old_kinds.len(),
    );
    t.cloud.dfctl("lport delete pz");

    let old_bpffs = t.hv().bpffs.path.clone();
    let before: Vec<_> = ["tapa", "tapb", "vmz0"]
        .iter()
        .map(|tap| project_programs(&t.hv().ns, tap))
        .collect();
    t.cloud.hvs[0].kill_agent();
    // The old bpffs stays mounted (its pins keep the old programs attached) until the end
    // of the test, when this guard unmounts it.
    let new_bpffs = Bpffs::new(&format!("{}-hv1b", t.cloud.prefix));
    let _old = std::mem::replace(&mut t.cloud.hvs[0].bpffs, new_bpffs);
    t.cloud.hvs[0].hook = then;
    t.cloud.start_agent(0);
    let new_bpffs = t.hv().bpffs.path.clone();
    assert_ne!(old_bpffs, new_bpffs);

    // Each hook carries exactly one program of this project, the one the new pins hold.
    let suffix = |hook: &str| if hook == "xdp" { "xdp" } else { "tc" };
    for (i, tap) in ["tapa", "tapb", "vmz0"].iter().enumerate() {
        wait_until(
            &format!("{tap} carries only the new agent's programs"),
            Duration::from_secs(10),
            || {
                let now = project_programs(&t.hv().ns, tap);
                now.len() == kinds.len()
                    && now.iter().all(|(h, _, id)| {
                        !before[i].iter().any(|(_, _, old)| old == id)
                            && *id == pinned_prog(&new_bpffs, &format!("{tap}@{}", suffix(h)))
                    })
            },
        );
        let hooks: Vec<&str> = project_programs(&t.hv().ns, tap)
            .iter()
            .map(|(h, _, _)| *h)
            .collect();
        assert_eq!(hooks, kinds, "{tap}: one program per hook");
    }

    // The new program's maps are the ones the agent updates: a change made now is enforced.
    t.cloud.dfctl("lport update pa --add-aap 192.0.2.66");
    wait_until(
        "the AAP added after the restart lets 192.0.2.66 through",
        Duration::from_secs(10),
        || probe(&t.ctl[0], &t.ctl[1], "udp4", spoof.clone()),
    );
    t.cloud.dfctl("lport update pa --remove-aap 192.0.2.66");
    wait_until(
        "the AAP removed again: 192.0.2.66 is a spoof",
        Duration::from_secs(10),
        || !probe(&t.ctl[0], &t.ctl[1], "udp4", spoof.clone()),
    );

    // Said once per device (3 taps and the VXLAN device), naming each program, and
    // counted: 3 devices × the first hook's programs (taken over, or detached when the new
    // hook has no such program), and df_from_tunnel. (One log file for both agents; the
    // first found nothing foreign.)
    let log = t.hv().agent_log();
    let per_device = log
        .matches("program(s) of this project that this agent's pins")
        .count();
    assert_eq!(per_device, 4, "one line per device; log:\n{log}");
    let replaced = log.matches("took over df_").count() + log.matches("detached df_").count();
    let wanted = 3 * old_kinds.len() + 1;
    assert_eq!(replaced, wanted, "log:\n{log}");
    assert!(log.contains("took over df_from_tunnel"), "log:\n{log}");
    if old_kinds.len() > kinds.len() {
        assert_eq!(
            log.matches("detached df_from_vm_xdp").count(),
            3,
            "log:\n{log}"
        );
    }
    assert_eq!(
        metric_sum(
            &t.hv().metrics(),
            "dragonflow_foreign_programs_replaced_total",
            &[]
        ),
        wanted as f64
    );
}

#[test]
fn restart_with_another_bpffs_tc() {
    restart_with_another_bpffs(Hook::Tc, Hook::Tc);
}

#[test]
fn restart_with_another_bpffs_xdp() {
    restart_with_another_bpffs(Hook::Xdp, Hook::Xdp);
}

/// The old agent's XDP program has no counterpart in the new one's `--hook tc`: detached.
#[test]
fn restart_with_another_bpffs_and_hook() {
    restart_with_another_bpffs(Hook::Xdp, Hook::Tc);
}
