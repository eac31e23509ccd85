//! Safety net around `cargo xtask test`: remove what a killed test run left behind —
//! network namespaces named `dft…` and bpffs mounts under `/run/dragonflow-test*`. The
//! tests clean up after themselves (guards with `Drop`); this only catches SIGKILLs.
//!
//! Several runs may share a machine, so a leftover is only removed when the process that
//! made it is gone. The harness names its objects `dft<pid % 10000><seq>-…`
//! (`tests::harness::unique_prefix`); an object is "owned" while a live process whose
//! executable lives under a `target/` directory (a test binary, df-demo) has a pid that
//! matches some prefix of those digits.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::run::{self, probe};

const NETNS_DIR: &str = "/run/netns";
const NETNS_PREFIX: &str = "dft";
const BPFFS_PREFIX: &str = "/run/dragonflow-test";

pub(crate) fn sweep(when: &str) -> Result<()> {
    let live = live_test_pids();
    let mut removed = 0;

    // bpffs mounts first: unmounting releases the pinned programs and maps.
    for mnt in bpffs_mounts() {
        let tag = mnt
            .to_string_lossy()
            .trim_start_matches(BPFFS_PREFIX)
            .trim_start_matches('-')
            .to_string();
        let tag = tag.strip_prefix(NETNS_PREFIX).unwrap_or(&tag);
        if owned(tag, &live) {
            continue;
        }
        eprintln!(
            "sweep ({when}): unmounting leftover bpffs {}",
            mnt.display()
        );
        let _ = run::status(Command::new("umount").arg(&mnt))?;
        let _ = fs::remove_dir(&mnt);
        removed += 1;
    }

    let Ok(dir) = fs::read_dir(NETNS_DIR) else {
        return Ok(());
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        if owned(rest, &live) {
            continue;
        }
        // Processes left in it (agents, etcd) belong to the dead run.
        let (_, pids) = probe(Command::new("ip").args(["netns", "pids", &name]))?;
        let pids: Vec<&str> = pids.split_whitespace().collect();
        eprintln!(
            "sweep ({when}): removing leftover namespace {name}{}",
            if pids.is_empty() {
                String::new()
            } else {
                format!(" (killing pids {})", pids.join(" "))
            }
        );
        for pid in &pids {
            if let Ok(pid) = pid.parse::<libc::pid_t>() {
                // SAFETY: kill(2) with a pid read from `ip netns pids`; no memory involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = run::status(Command::new("ip").args(["netns", "delete", &name]))?;
        removed += 1;
    }
    if removed > 0 {
        eprintln!("sweep ({when}): removed {removed} leftover object(s)");
    }
    Ok(())
}

/// Mount points under /run/dragonflow-test*, from /proc/self/mountinfo.
fn bpffs_mounts() -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(BPFFS_PREFIX))
        .map(PathBuf::from)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Pids (mod 10000) of running processes whose executable is under a `target/` directory.
fn live_test_pids() -> Vec<u32> {
    let Ok(proc) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let exe = fs::read_link(Path::new("/proc").join(pid.to_string()).join("exe")).ok()?;
            exe.components()
                .any(|c| c.as_os_str() == "target")
                .then_some(pid % 10_000)
        })
        .collect()
}

/// Whether `digits…` (the part after `dft`) could belong to a live process.
fn owned(rest: &str, live: &[u32]) -> bool {
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() {
        // Not named by the harness: not ours to judge, keep it.
        return true;
    }
    (1..=digits.len().min(4))
        .filter_map(|k| digits[..k].parse::<u32>().ok())
        .any(|p| live.contains(&p))
}

#[cfg(test)]
mod tests {
    use super::owned;

    #[test]
    fn ownership_by_pid_prefix() {
        assert!(owned("12340-ul", &[1234]));
        assert!(owned("123-hv1", &[12]));
        assert!(!owned("5678-ul", &[1234, 99]));
        assert!(owned("-weird", &[]));
    }
}
