//! Prints the verifier's work for each program of the agent's eBPF object (or of the
//! object named by `DF_EBPF_OBJECT`): the instructions it verified and the program's
//! translated size, as the commit messages of eBPF changes report them. Needs root.
//!
//! `cargo run -p tests --bin df-verified` (add `--features bench` for the stubs).
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use aya::programs::SchedClassifier;
use dragonflow_common::maps::progs;
use tests::framework::test_run::Datapath;

fn main() {
    let mut dp = Datapath::load();
    // Loaded by the agent, not by the test harness: load it here too.
    if let Some(p) = dp.ebpf.program_mut(progs::AAP_GROUP_TC) {
        let p: &mut SchedClassifier = p.try_into().expect("classifier");
        p.load().expect("load df_aap_group");
    }
    println!("| program | verified | xlated bytes |");
    println!("|---|---:|---:|");
    let mut rows: Vec<(String, u32, u32)> = dp
        .ebpf
        .programs()
        .filter_map(|(name, p)| {
            let info = p.info().ok()?;
            Some((
                name.to_string(),
                info.verified_instruction_count().unwrap_or(0),
                info.size_translated().unwrap_or(0),
            ))
        })
        .collect();
    rows.sort();
    for (name, verified, xlated) in rows {
        println!("| {name} | {verified} | {xlated} |");
    }
}
