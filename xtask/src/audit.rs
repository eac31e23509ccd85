//! `cargo xtask audit`: the fresh-machine audit CI runs before anything is built.
//!
//! A package installed by hand on a developer's or CI's machine makes the build pass there
//! and fail on a fresh one (etcd-client's protos needed `libprotobuf-dev`, which only the
//! development machine had). So every apt package marked as manually installed, and every
//! `cargo install`ed crate, must be one of:
//! - on a fresh machine of this kind already (`.ci/base-image.tsv`, the image's package
//!   list: `kind<TAB>name<TAB>version`, `#` comments; only `apt` rows are packages);
//! - installed by `cargo xtask setup` ([`crate::setup::APT_PACKAGES`],
//!   [`crate::setup::CARGO_INSTALLS`]: the one list setup itself installs from);
//! - in `.ci/dev-packages`, the short reviewed list of tools a developer may install by
//!   hand that nothing in the build, tests, demo or benchmarks uses (`name  # reason`, or
//!   `cargo:name  # reason` for a `cargo install`ed crate; the reason is required).
//!
//! Anything else fails the audit, named. The verdict is a pure function of the four lists
//! ([`audit`]), so its logic is unit-tested without touching the machine.

use std::{collections::BTreeSet, fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{
    run::{self, probe},
    setup,
};

/// Where the lists live, relative to the workspace root.
pub(crate) const BASE_IMAGE: &str = ".ci/base-image.tsv";
pub(crate) const DEV_PACKAGES: &str = ".ci/dev-packages";

const HINT: &str = "add it to setup (xtask/src/setup.rs) if the build, tests, demo or \
                    benchmarks need it, or list it in .ci/dev-packages with the reason it \
                    is not needed";

/// The reviewed hand-installed tools, split by kind.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DevList {
    pub apt: BTreeSet<String>,
    pub cargo: BTreeSet<String>,
}

/// What the audit found: hand-installed packages nobody accounted for, and list entries
/// that contradict each other (a dev package that setup installs anyway).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub unlisted_apt: Vec<String>,
    pub unlisted_cargo: Vec<String>,
    pub dev_also_in_setup: Vec<String>,
}

impl Verdict {
    pub(crate) fn passed(&self) -> bool {
        self.unlisted_apt.is_empty()
            && self.unlisted_cargo.is_empty()
            && self.dev_also_in_setup.is_empty()
    }
}

/// The inputs, as text, exactly as the files and commands give them.
pub(crate) struct Inputs<'a> {
    /// The fresh machine's package list (TSV).
    pub base_image: &'a str,
    /// `apt-mark showmanual`.
    pub apt_manual: &'a str,
    /// `cargo install --list`.
    pub cargo_installed: &'a str,
    /// `.ci/dev-packages`.
    pub dev: &'a DevList,
    pub setup_apt: &'a [&'a str],
    pub setup_cargo: &'a [&'a str],
}

/// `binutils-common:amd64` and `binutils-common` are one package to us: dpkg prints the
/// architecture for some (multi-arch) packages and not for others.
fn package_name(s: &str) -> &str {
    s.split(':').next().unwrap_or(s)
}

/// The `apt` rows of the base image list.
pub(crate) fn parse_base_image(tsv: &str) -> BTreeSet<String> {
    tsv.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut cols = l.split('\t');
            match (cols.next(), cols.next()) {
                (Some("apt"), Some(name)) if !name.trim().is_empty() => {
                    Some(package_name(name.trim()).to_string())
                }
                _ => None,
            }
        })
        .collect()
}

/// `.ci/dev-packages`: one package a line with a `# reason`; `cargo:NAME` for crates.
pub(crate) fn parse_dev_list(text: &str) -> Result<DevList> {
    let mut dev = DevList::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, reason) = line.split_once('#').unwrap_or((line, ""));
        let name = name.trim();
        if reason.trim().is_empty() {
            bail!(
                "{DEV_PACKAGES}:{}: `{name}` has no reason: write `{name}  # why nothing \
                 in the build, tests, demo or benchmarks needs it`",
                n + 1
            );
        }
        if name.contains(char::is_whitespace) {
            bail!("{DEV_PACKAGES}:{}: one package a line, got `{name}`", n + 1);
        }
        match name.strip_prefix("cargo:") {
            Some(krate) => dev.cargo.insert(krate.to_string()),
            None => dev.apt.insert(package_name(name).to_string()),
        };
    }
    Ok(dev)
}

/// Crate names of `cargo install --list` (`name vX.Y.Z:` or `name vX (source):` lines; the
/// indented lines under them are the binaries).
pub(crate) fn parse_cargo_installed(list: &str) -> BTreeSet<String> {
    list.lines()
        .filter(|l| !l.starts_with(char::is_whitespace) && l.trim_end().ends_with(':'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The verdict: base + setup + dev lists against what the machine has by hand.
pub(crate) fn audit(i: &Inputs<'_>) -> Verdict {
    let base = parse_base_image(i.base_image);
    let setup_apt: BTreeSet<&str> = i.setup_apt.iter().copied().collect();
    let setup_cargo: BTreeSet<&str> = i.setup_cargo.iter().copied().collect();
    let unlisted_apt = i
        .apt_manual
        .lines()
        .map(|l| package_name(l.trim()))
        .filter(|p| !p.is_empty())
        .filter(|p| !base.contains(*p) && !setup_apt.contains(p) && !i.dev.apt.contains(*p))
        .map(str::to_string)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let unlisted_cargo = parse_cargo_installed(i.cargo_installed)
        .into_iter()
        .filter(|c| !setup_cargo.contains(c.as_str()) && !i.dev.cargo.contains(c))
        .collect();
    let dev_also_in_setup = i
        .dev
        .apt
        .iter()
        .filter(|p| setup_apt.contains(p.as_str()))
        .chain(
            i.dev
                .cargo
                .iter()
                .filter(|c| setup_cargo.contains(c.as_str())),
        )
        .cloned()
        .collect();
    Verdict {
        unlisted_apt,
        unlisted_cargo,
        dev_also_in_setup,
    }
}

/// Runs the audit on this machine; fails naming what nobody accounted for.
pub(crate) fn run(base_image: Option<&Path>) -> Result<()> {
    run::step("audit: packages installed by hand vs the fresh machine and setup");
    let root = run::root();
    let base_path = base_image
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join(BASE_IMAGE));
    let base_image = fs::read_to_string(&base_path).with_context(|| {
        format!(
            "reading the fresh machine's package list {}",
            base_path.display()
        )
    })?;
    let dev_path = root.join(DEV_PACKAGES);
    let dev_text = match fs::read_to_string(&dev_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dev_path.display())),
    };
    let dev = parse_dev_list(&dev_text)?;

    let (ok, apt_manual) = probe(Command::new("apt-mark").arg("showmanual"))
        .context("running apt-mark (is this Debian?)")?;
    if !ok {
        bail!("`apt-mark showmanual` failed:\n{apt_manual}");
    }
    // No `cargo install`ed crate at all is a valid answer; cargo itself missing is not.
    let (ok, cargo_installed) = probe(run::cargo().args(["install", "--list"]))?;
    if !ok {
        bail!("`cargo install --list` failed:\n{cargo_installed}");
    }

    let setup_apt = setup::apt_packages();
    let v = audit(&Inputs {
        base_image: &base_image,
        apt_manual: &apt_manual,
        cargo_installed: &cargo_installed,
        dev: &dev,
        setup_apt: &setup_apt,
        setup_cargo: setup::CARGO_INSTALLS,
    });
    eprintln!(
        "apt packages marked manual: {}; fresh machine lists {}; setup installs {} apt + {} \
         cargo; reviewed dev tools {} apt + {} cargo",
        apt_manual.lines().filter(|l| !l.trim().is_empty()).count(),
        parse_base_image(&base_image).len(),
        setup_apt.len(),
        setup::CARGO_INSTALLS.len(),
        dev.apt.len(),
        dev.cargo.len(),
    );
    if v.passed() {
        eprintln!("audit: no package installed by hand that the lists do not account for");
        return Ok(());
    }
    let mut lines = Vec::new();
    if !v.unlisted_apt.is_empty() {
        lines.push(format!(
            "apt packages installed by hand, not on a fresh machine, not installed by setup: {}",
            v.unlisted_apt.join(" ")
        ));
    }
    if !v.unlisted_cargo.is_empty() {
        lines.push(format!(
            "crates `cargo install`ed by hand, not installed by setup: {}",
            v.unlisted_cargo.join(" ")
        ));
    }
    if !v.dev_also_in_setup.is_empty() {
        lines.push(format!(
            "{DEV_PACKAGES} lists what setup installs anyway (remove it there): {}",
            v.dev_also_in_setup.join(" ")
        ));
    }
    bail!(
        "fresh-machine audit failed:\n  - {}\nhint: {HINT} (if the machine image itself \
         changed, refresh {BASE_IMAGE} from its package list)",
        lines.join("\n  - ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "# kinds: rust\napt\tadduser\t3.134\napt\tbinutils-common:amd64\t2.40\n\
                        pip 3.11\tsix\t1.16.0\nnote, no package\tsomething\t\napt\tgit\t1:2.39\n";

    fn dev(text: &str) -> DevList {
        parse_dev_list(text).unwrap()
    }

    fn verdict(manual: &str, cargo: &str, dev_text: &str) -> Verdict {
        audit(&Inputs {
            base_image: BASE,
            apt_manual: manual,
            cargo_installed: cargo,
            dev: &dev(dev_text),
            setup_apt: &["etcd-server", "libprotobuf-dev"],
            setup_cargo: &["bpf-linker"],
        })
    }

    #[test]
    fn base_image_keeps_apt_rows_without_arch() {
        let b = parse_base_image(BASE);
        assert_eq!(
            b.into_iter().collect::<Vec<_>>(),
            ["adduser", "binutils-common", "git"]
        );
    }

    #[test]
    fn a_fresh_machine_after_setup_passes() {
        let v = verdict(
            "adduser\nbinutils-common:amd64\netcd-server\nlibprotobuf-dev\n",
            "bpf-linker v0.13.0:\n    bpf-linker\n",
            "",
        );
        assert!(v.passed(), "{v:?}");
    }

    #[test]
    fn a_package_installed_by_hand_fails_named() {
        let v = verdict("adduser\nlibprotobuf-dev\nhtop\njq:amd64\n", "", "");
        assert_eq!(v.unlisted_apt, ["htop", "jq"]);
        assert!(!v.passed());
    }

    #[test]
    fn a_reviewed_dev_tool_passes() {
        let v = verdict(
            "htop\n",
            "",
            "# tools\nhtop  # interactive process viewer\n",
        );
        assert!(v.passed(), "{v:?}");
    }

    #[test]
    fn a_cargo_install_by_hand_fails_unless_setup_or_dev_lists_it() {
        let list = "bpf-linker v0.13.0:\n    bpf-linker\ncargo-expand v1.0.0:\n    cargo-expand\n\
                    ripgrep v14.1.0 (/src/rg):\n    rg\n";
        let v = verdict("", list, "");
        assert_eq!(v.unlisted_cargo, ["cargo-expand", "ripgrep"]);
        let v = verdict(
            "",
            list,
            "cargo:cargo-expand # read macro output\ncargo:ripgrep # search",
        );
        assert!(v.passed(), "{v:?}");
    }

    #[test]
    fn an_apt_dev_entry_does_not_excuse_a_crate_of_that_name() {
        let v = verdict("", "ripgrep v14.1.0:\n    rg\n", "ripgrep # search\n");
        assert_eq!(v.unlisted_cargo, ["ripgrep"]);
    }

    #[test]
    fn a_dev_entry_that_setup_installs_is_a_contradiction() {
        let v = verdict("etcd-server\n", "", "etcd-server # by hand\n");
        assert_eq!(v.dev_also_in_setup, ["etcd-server"]);
        assert!(!v.passed());
    }

    #[test]
    fn dev_entries_need_a_reason_and_one_name() {
        let e = parse_dev_list("htop\n").unwrap_err().to_string();
        assert!(e.contains("no reason"), "{e}");
        let e = parse_dev_list("htop jq # two\n").unwrap_err().to_string();
        assert!(e.contains("one package a line"), "{e}");
        let d = dev("  # a comment\n\nhtop # viewer\ncargo:bat # pager\n");
        assert_eq!(d.apt.into_iter().collect::<Vec<_>>(), ["htop"]);
        assert_eq!(d.cargo.into_iter().collect::<Vec<_>>(), ["bat"]);
    }

    #[test]
    fn the_committed_lists_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let base = fs::read_to_string(root.join(BASE_IMAGE)).unwrap();
        assert!(
            parse_base_image(&base).len() > 100,
            "{BASE_IMAGE} looks empty"
        );
        let dev_text = fs::read_to_string(root.join(DEV_PACKAGES)).unwrap();
        let dev = parse_dev_list(&dev_text).unwrap();
        let setup = setup::apt_packages();
        for p in &dev.apt {
            assert!(
                !setup.contains(&p.as_str()),
                "{p} is in setup and dev lists"
            );
        }
    }
}
