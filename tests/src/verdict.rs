//! The verdict runner every `verdicts*` table uses: run one frame through a program with
//! BPF_PROG_TEST_RUN, take the counter slots that moved, compare action and slots with the
//! row's expectation (failures name the slots: `from_vm/drop sg_denied x1`), and record
//! which drop reasons and pass paths the rows reached so a table can prove its coverage.
//!
//! The rows (and the map seeding and devices a table needs) stay in the scenario files;
//! what is judged and how coverage is counted lives here, once.

use std::collections::BTreeSet;

use dragonflow_common::verdict::{Direction, DropReason, EventStat, PassPath, Stat, stat_index};

use crate::framework::{hook::Hook, test_run::Datapath};

/// Counter slots that moved, with their increments, by slot index (ascending).
pub type Moved = Vec<(usize, u64)>;

/// The slots that moved between two snapshots of [`Datapath::stats`].
pub fn moved(before: &[u64], after: &[u64]) -> Moved {
    before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (b, a))| a != b)
        .map(|(i, (b, a))| (i, a - b))
        .collect()
}

/// The index of `stat` in `dir`'s counters.
pub fn slot(dir: Direction, stat: Stat) -> usize {
    stat_index(dir, stat) as usize
}

/// The slots of `stats` in `dir`, each moved once, sorted: what a row expects.
pub fn once(dir: Direction, stats: &[Stat]) -> Moved {
    let mut v: Moved = stats.iter().map(|&s| (slot(dir, s), 1)).collect();
    v.sort();
    v
}

/// Names a slot index (`from_vm/drop sg_denied`), for readable failures.
pub fn slot_name(i: usize) -> String {
    for d in [Direction::FromVm, Direction::ToVm, Direction::FromTunnel] {
        for r in DropReason::ALL {
            if slot(d, Stat::Drop(*r)) == i {
                return format!("{}/drop {}", d.name(), r.name());
            }
        }
        for p in PassPath::ALL {
            if slot(d, Stat::Pass(*p)) == i {
                return format!("{}/pass {}", d.name(), p.name());
            }
        }
        for e in EventStat::ALL {
            if slot(d, Stat::Event(*e)) == i {
                return format!("{}/{}", d.name(), e.name());
            }
        }
    }
    format!("slot {i}")
}

/// `slot_name xN` of each moved slot.
pub fn names(m: &[(usize, u64)]) -> Vec<String> {
    m.iter()
        .map(|&(i, n)| format!("{} x{n}", slot_name(i)))
        .collect()
}

/// What one frame did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The program's return value (XDP or TC action).
    pub action: u32,
    /// The frame as the program left it.
    pub out: Vec<u8>,
    /// The counter slots that moved during the run.
    pub moved: Moved,
}

/// Runs `frame` through `hook`'s from-VM program on the loopback ifindex.
pub fn run(dp: &Datapath, hook: Hook, frame: &[u8]) -> Outcome {
    let before = dp.stats();
    let r = dp.run(hook, frame);
    Outcome {
        action: r.retval,
        out: r.data_out,
        moved: moved(&before, &dp.stats()),
    }
}

/// Runs `frame` through program `prog` (attached as `hook`) arriving on `ifindex`.
pub fn run_prog(dp: &Datapath, prog: &str, hook: Hook, frame: &[u8], ifindex: u32) -> Outcome {
    let before = dp.stats();
    let r = dp.run_prog(prog, hook, frame, ifindex);
    Outcome {
        action: r.retval,
        out: r.data_out,
        moved: moved(&before, &dp.stats()),
    }
}

/// Asserts the action and the exact set of slots that moved (compared by name, so a
/// failure reads as counters, not indices).
#[track_caller]
pub fn assert_outcome(ctx: &str, got: &Outcome, action: u32, want: &[(usize, u64)]) {
    assert_eq!(
        (got.action, names(&got.moved)),
        (action, names(want)),
        "{ctx}: action and counters"
    );
}

/// The drop reasons and pass paths a table's rows reached (on one hook).
#[derive(Debug, Default)]
pub struct Coverage {
    drops: BTreeSet<&'static str>,
    passes: BTreeSet<&'static str>,
}

impl Coverage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the outcome `stat` (events are not outcomes and are ignored).
    pub fn record(&mut self, stat: Stat) {
        match stat {
            Stat::Drop(r) => {
                self.drops.insert(r.name());
            }
            Stat::Pass(p) => {
                self.passes.insert(p.name());
            }
            Stat::Event(_) => {}
        }
    }

    pub fn has_drop(&self, r: DropReason) -> bool {
        self.drops.contains(r.name())
    }

    pub fn has_pass(&self, p: PassPath) -> bool {
        self.passes.contains(p.name())
    }

    /// Whether a drop reason or pass path of that name was reached.
    pub fn has(&self, name: &str) -> bool {
        self.drops.contains(name) || self.passes.contains(name)
    }

    /// The drop reasons reached, by name.
    pub fn drops(&self) -> &BTreeSet<&'static str> {
        &self.drops
    }

    /// Panics naming every outcome of `must` no row reached.
    #[track_caller]
    pub fn assert_covers<'a>(&self, hook: Hook, must: impl IntoIterator<Item = &'a str>) {
        let missing: Vec<&str> = must.into_iter().filter(|n| !self.has(n)).collect();
        assert!(
            missing.is_empty(),
            "[{}] no case for {}",
            hook.as_str(),
            missing.join(", ")
        );
    }
}

/// Outcomes the from-VM table (`verdicts.rs`) leaves to the other tables, with the test
/// file whose rows cover each: that table asserts it (see [`covered_by`]), `verdicts.rs`
/// skips it. One list, so an outcome cannot fall between two tables.
pub const COVERED_ELSEWHERE: &[(&str, &str)] = &[
    // Distributed routing and the ARP/ND responder, written with those stages.
    ("ttl_exceeded", "verdicts_l3"),
    ("no_route", "verdicts_l3"),
    ("no_neighbor", "verdicts_l3"),
    ("router_neigh_unanswered", "verdicts_l3"),
    ("routed", "verdicts_l3"),
    ("arp_responder", "verdicts_l3"),
    ("nd_responder", "verdicts_l3"),
    ("router_echo", "verdicts_l3"),
    // Security groups, conntrack, fragments.
    ("sg_denied", "verdicts_sg"),
    ("ct_full", "verdicts_sg"),
    ("frag_no_first", "verdicts_sg"),
    ("frag_tiny", "verdicts_sg"),
    ("frag_overlap", "verdicts_sg"),
    // Shared allowed-address-pair addresses (broadcast way; the detection way from a
    // real tunnel device).
    ("no_holder", "verdicts_aap"),
    ("inactive_holder", "verdicts_aap"),
    ("aap_group", "verdicts_aap"),
    // Tunnel admission: needs a real VXLAN device.
    ("tunnel_unknown_peer", "verdicts_tunnel"),
    ("tunnel_src_mac", "verdicts_tunnel"),
    // Per-port flood rate limit, conntrack quota.
    ("flood_rate_limited", "verdicts_limits"),
    ("ct_port_quota", "verdicts_limits"),
];

/// Whether the from-VM table leaves `name` to another table.
pub fn covered_elsewhere(name: &str) -> bool {
    COVERED_ELSEWHERE.iter().any(|(n, _)| *n == name)
}

/// The outcomes [`COVERED_ELSEWHERE`] assigns to `table` (a test file's stem).
pub fn covered_by(table: &str) -> Vec<&'static str> {
    COVERED_ELSEWHERE
        .iter()
        .filter(|(_, t)| *t == table)
        .map(|(n, _)| *n)
        .collect()
}
