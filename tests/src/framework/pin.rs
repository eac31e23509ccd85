//! bpffs guards: a mount for one hypervisor's pins, unmounted (releasing every pin in it)
//! on Drop.

use std::{fs, path::PathBuf, process::Command};

use super::process::cmd;

/// A bpffs instance mounted where `ip netns exec`'d agents can see it (netns exec remounts
/// /sys, hiding /sys/fs/bpf). Unmounting it releases everything pinned in it.
pub struct Bpffs {
    pub path: PathBuf,
}

impl Bpffs {
    pub fn new(tag: &str) -> Self {
        let path = PathBuf::from(format!("/run/dragonflow-test-{tag}"));
        fs::create_dir_all(&path).expect("mkdir bpffs");
        cmd(&format!("mount -t bpf bpf {}", path.display()));
        Bpffs { path }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = fs::remove_dir(&self.path);
    }
}
