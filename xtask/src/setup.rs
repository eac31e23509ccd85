//! `cargo xtask setup`: bootstrap a fresh Debian 12 machine (as root), idempotently.
//!
//! Everything is checked first and only what is missing is installed, so a second run
//! takes a second or two. The recipe is the verified one in docs/TOOLCHAIN.md: Debian's
//! `rustc-web` + `rust-web-src` (the only compiler here with the library source that
//! `-Z build-std=core` needs for bpfel-unknown-none) and bpf-linker 0.13.0 built against
//! the same LLVM 22.

use std::{
    collections::BTreeMap,
    fs,
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::run::{self, have, probe};

/// The guest kernel's package and cache paths, shared with the tests that boot it.
#[path = "../../tests/src/guest_kernel.rs"]
#[expect(
    unreachable_pub,
    reason = "the tests crate exports this module (`tests::guest_kernel`), so its items are `pub`"
)]
mod guest_kernel;

/// The Neutron driver's venv, shared with the test that runs the driver's tests in it.
#[path = "../../tests/src/neutron_venv.rs"]
mod neutron_venv;

/// The validators of `deploy/` (a venv, promtool), shared with tests/tests/deploy.rs.
#[path = "../../tests/src/deploy_tools.rs"]
mod deploy_tools;

struct Pkg {
    name: &'static str,
    why: &'static str,
}

/// The Rust/LLVM toolchain, installed as docs/TOOLCHAIN.md describes it (with Recommends).
const TOOLCHAIN: &[Pkg] = &[
    Pkg {
        name: "rustc-web",
        why: "rustc 1.96 that builds the eBPF crate (`cargo +/usr`)",
    },
    Pkg {
        name: "cargo-web",
        why: "its cargo",
    },
    Pkg {
        name: "rust-web-src",
        why: "library source for `-Z build-std=core` on bpfel",
    },
    Pkg {
        name: "rust-web-clippy",
        why: "clippy for the bpfel target",
    },
    Pkg {
        name: "llvm-22-dev",
        why: "LLVM 22 for bpf-linker (the LLVM of rustc-web)",
    },
];

/// Tools the build, tests, demo and benches use (installed without Recommends: those pull
/// in services such as ntpsec and ipvsadm that nothing here needs).
const TOOLS: &[Pkg] = &[
    Pkg {
        name: "protobuf-compiler",
        why: "protoc, for etcd-client's build script",
    },
    Pkg {
        name: "libprotobuf-dev",
        why: "google/protobuf/*.proto that etcd-client's protos import",
    },
    Pkg {
        name: "etcd-server",
        why: "the northbound DB the tests and demo start",
    },
    Pkg {
        name: "etcd-client",
        why: "etcdctl: tests write and read NB keys with it",
    },
    Pkg {
        name: "iproute2",
        why: "ip netns/link/tc",
    },
    Pkg {
        name: "iputils-ping",
        why: "ping between VM namespaces",
    },
    Pkg {
        name: "iputils-arping",
        why: "arping, gratuitous ARP",
    },
    Pkg {
        name: "python3-scapy",
        why: "crafted attack frames",
    },
    Pkg {
        name: "bpftool",
        why: "inspect loaded programs and maps by hand (operators; no test needs it)",
    },
    Pkg {
        name: "tcpdump",
        why: "captures in the tests (what reached a VM) and the failover bench",
    },
    Pkg {
        name: "iperf3",
        why: "throughput benches",
    },
    Pkg {
        name: "nftables",
        why: "the bridge + nftables baseline",
    },
    Pkg {
        name: "keepalived",
        why: "VRRP over allowed address pairs",
    },
    Pkg {
        name: "netsniff-ng",
        why: "trafgen, packet-rate benches",
    },
    Pkg {
        name: "ethtool",
        why: "offload and driver queries in tests and benches",
    },
    Pkg {
        name: "qemu-system-x86",
        why: "boots the real guest (Debian cloud kernel, virtio-net on a tap) with TCG in tests",
    },
    Pkg {
        name: "python3-venv",
        why: "the venv Neutron and the Neutron driver's tests run in (`target/neutron-venv`)",
    },
    Pkg {
        name: "debootstrap",
        why: "the offline image build (deploy/build-image.sh): a Debian root filesystem from the apt mirror",
    },
    Pkg {
        name: "umoci",
        why: "the offline image build: the OCI image layout made from that root filesystem",
    },
    Pkg {
        name: "busybox-static",
        why: "the real guest's userland (sh, nc, md5sum) in the initramfs the tests build",
    },
];

/// Every apt package setup installs: the one list that setup, `setup --check`, the
/// fresh-machine audit (`cargo xtask audit`) and the README's table (`setup --list`) read.
pub(crate) fn apt_packages() -> Vec<&'static str> {
    TOOLCHAIN.iter().chain(TOOLS).map(|p| p.name).collect()
}

/// Crates setup `cargo install`s (the audit reads this too).
pub(crate) const CARGO_INSTALLS: &[&str] = &["bpf-linker"];
pub(crate) const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// What a check found missing.
#[derive(Default)]
pub(crate) struct Missing {
    packages: Vec<&'static str>,
    bpf_linker: Option<String>,
    rustup: Option<String>,
    nightly_rustfmt: Option<String>,
    guest_kernel: Option<String>,
}

impl Missing {
    fn is_empty(&self) -> bool {
        self.packages.is_empty()
            && self.bpf_linker.is_none()
            && self.rustup.is_none()
            && self.nightly_rustfmt.is_none()
            && self.guest_kernel.is_none()
    }
}

/// Read-only check, used by `cargo xtask build` and `cargo xtask setup --check` (for
/// people who cannot run apt as root): errors naming what is missing and how to get it.
pub(crate) fn check() -> Result<()> {
    let m = find_missing()?;
    if m.is_empty() {
        eprintln!(
            "setup --check: all {} apt packages, bpf-linker {BPF_LINKER_VERSION} and the guest \
             kernel ({}) are present",
            TOOLCHAIN.len() + TOOLS.len(),
            guest_kernel_present().unwrap_or_default()
        );
        return Ok(());
    }
    for p in TOOLCHAIN.iter().chain(TOOLS) {
        if m.packages.contains(&p.name) {
            eprintln!("missing: {:<18} {}", p.name, p.why);
        }
    }
    let mut lines = Vec::new();
    if !m.packages.is_empty() {
        lines.push(format!(
            "apt packages not installed: {}",
            m.packages.join(" ")
        ));
    }
    lines.extend(m.bpf_linker.clone());
    lines.extend(m.rustup.clone());
    lines.extend(m.nightly_rustfmt.clone());
    lines.extend(m.guest_kernel.clone());
    let toolchain: Vec<&str> = TOOLCHAIN
        .iter()
        .map(|p| p.name)
        .filter(|n| m.packages.contains(n))
        .collect();
    let tools: Vec<&str> = TOOLS
        .iter()
        .map(|p| p.name)
        .filter(|n| m.packages.contains(n))
        .collect();
    let mut fix = vec!["run `cargo xtask setup` as root, or by hand:".to_string()];
    if !toolchain.is_empty() {
        fix.push(format!("apt-get install {}", toolchain.join(" ")));
    }
    if !tools.is_empty() {
        fix.push(format!(
            "apt-get install --no-install-recommends {}",
            tools.join(" ")
        ));
    }
    if m.bpf_linker.is_some() {
        fix.push(format!(
            "LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --version \
             {BPF_LINKER_VERSION} --locked --no-default-features --features llvm-22"
        ));
    }
    if m.nightly_rustfmt.is_some() {
        fix.push(NIGHTLY_RUSTFMT_INSTALL.join(" "));
    }
    if m.guest_kernel.is_some() {
        fix.push(format!(
            "apt-get download \"$(apt-cache depends {} | sed -n 's/ *Depends: //p')\" && \
             dpkg-deb -x linux-image-*.deb {}/<package>_<version> && ln -sfn <that> {}/{}",
            guest_kernel::META_PACKAGE,
            guest_kernel::CACHE_DIR,
            guest_kernel::CACHE_DIR,
            guest_kernel::CURRENT
        ));
    }
    bail!(
        "the machine is not set up:\n  - {}\nfix: {}",
        lines.join("\n  - "),
        fix.join("\n       ")
    )
}

fn find_missing() -> Result<Missing> {
    let mut m = Missing::default();
    let installed = installed_packages()?;
    for p in TOOLCHAIN.iter().chain(TOOLS) {
        if !installed.contains_key(p.name) {
            m.packages.push(p.name);
        }
    }
    match bpf_linker_version() {
        Some(v) if v == BPF_LINKER_VERSION => {}
        Some(v) => m.bpf_linker = Some(format!("bpf-linker is {v}, need {BPF_LINKER_VERSION}")),
        None => m.bpf_linker = Some("bpf-linker is not on PATH".into()),
    }
    m.rustup = rustup_problem();
    if m.rustup.is_none() && !nightly_rustfmt_present() {
        m.nightly_rustfmt = Some("nightly rustfmt is missing (`cargo xtask fmt`)".into());
    }
    if guest_kernel_present().is_none() {
        m.guest_kernel = Some(format!(
            "no guest kernel unpacked in {}/{} (the real-VM tests boot it)",
            guest_kernel::CACHE_DIR,
            guest_kernel::CURRENT
        ));
    }
    Ok(m)
}

pub(crate) fn setup() -> Result<()> {
    run::step("setup: checking the machine");
    if !Path::new("/etc/debian_version").exists() {
        bail!("`cargo xtask setup` supports Debian 12 only (no /etc/debian_version here)");
    }
    let installed = installed_packages()?;
    let missing: Vec<&Pkg> = TOOLCHAIN
        .iter()
        .chain(TOOLS)
        .filter(|p| !installed.contains_key(p.name))
        .collect();
    let present: Vec<&str> = TOOLCHAIN
        .iter()
        .chain(TOOLS)
        .map(|p| p.name)
        .filter(|n| installed.contains_key(*n))
        .collect();
    eprintln!(
        "apt packages present: {}/{}{}",
        present.len(),
        TOOLCHAIN.len() + TOOLS.len(),
        if present.is_empty() {
            String::new()
        } else {
            format!(" ({})", present.join(" "))
        }
    );
    if !missing.is_empty() {
        install_packages(&missing)?;
    }

    // rustup: needed for `cargo +/usr` (aya-build and the bpfel clippy) — we cannot
    // install it (no network to static.rust-lang.org on these machines), only say so.
    if let Some(problem) = rustup_problem() {
        bail!("{problem}");
    }

    ensure_nightly_rustfmt()?;
    ensure_bpf_linker()?;
    ensure_guest_kernel()?;
    ensure_neutron_venv()?;
    ensure_deploy_venv()?;
    ensure_promtool()?;
    keep_etcd_service_off()?;
    eprintln!("setup: done");
    Ok(())
}

/// `dpkg-query` over all our packages at once: name → version of those installed.
fn installed_packages() -> Result<BTreeMap<String, String>> {
    let mut c = Command::new("dpkg-query");
    c.args(["-W", "-f=${Package} ${db:Status-Abbrev} ${Version}\\n"]);
    c.args(TOOLCHAIN.iter().chain(TOOLS).map(|p| p.name));
    if !have("dpkg-query") {
        bail!("dpkg-query not found: `cargo xtask setup` supports Debian 12 only");
    }
    // Exit status 1 only means some package is unknown to dpkg: that is what we look for.
    let (_, out) = probe(&mut c)?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (name, status, version) = (it.next()?, it.next()?, it.next()?);
            (status == "ii").then(|| (name.to_string(), version.to_string()))
        })
        .collect())
}

fn install_packages(missing: &[&Pkg]) -> Result<()> {
    for p in missing {
        eprintln!("missing: {:<18} {}", p.name, p.why);
    }
    require_root("install apt packages")?;
    run::step("setup: installing apt packages");
    run::run(
        Command::new("apt-get")
            .args(["update", "-q"])
            .stdin(Stdio::null()),
    )
    .context("apt-get update failed (network or /etc/apt/sources.list?)")?;

    // Drop (with a warning) any name this mirror does not have, rather than fail the lot.
    let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
    let candidates = apt_candidates(&names)?;
    let (available, unavailable): (Vec<&str>, Vec<&str>) =
        names.iter().partition(|n| candidates.contains_key(**n));
    for n in &unavailable {
        eprintln!("warning: apt has no candidate for {n}; skipping it");
    }
    let toolchain: Vec<&str> = available
        .iter()
        .copied()
        .filter(|n| TOOLCHAIN.iter().any(|p| p.name == *n))
        .collect();
    let tools: Vec<&str> = available
        .iter()
        .copied()
        .filter(|n| TOOLS.iter().any(|p| p.name == *n))
        .collect();

    // Services (etcd, keepalived, iperf3) must not start from their postinst scripts: the
    // tests run their own etcd on their own addresses.
    let _guard = NoServiceStart::install()?;
    for (group, recommends) in [(toolchain, true), (tools, false)] {
        if group.is_empty() {
            continue;
        }
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "-q"]);
        if !recommends {
            c.arg("--no-install-recommends");
        }
        c.args(&group)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        run::run(&mut c).context("apt-get install failed")?;
    }
    Ok(())
}

/// `apt-cache policy`: name → candidate version, for names that have one.
fn apt_candidates(names: &[&str]) -> Result<BTreeMap<String, String>> {
    let (_, out) = probe(Command::new("apt-cache").arg("policy").args(names))?;
    Ok(parse_policy(&out))
}

/// Unknown names print nothing; known ones a block `name:` … `  Candidate: V` (or `(none)`).
fn parse_policy(out: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in out.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            current = Some(line.trim_end_matches(':').to_string());
        } else if let (Some(name), Some(v)) = (&current, line.trim().strip_prefix("Candidate: "))
            && v != "(none)"
        {
            map.insert(name.clone(), v.to_string());
        }
    }
    map
}

/// A temporary `/usr/sbin/policy-rc.d` that forbids starting services during apt-get
/// install (the Debian/Docker convention). Left alone if one already exists.
struct NoServiceStart(Option<PathBuf>);

impl NoServiceStart {
    fn install() -> Result<Self> {
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(NoServiceStart(None));
        }
        eprintln!(
            "writing a temporary {} so no service starts during install",
            path.display()
        );
        fs::write(
            &path,
            "#!/bin/sh\n# temporary, from cargo xtask setup\nexit 101\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(NoServiceStart(Some(path)))
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

fn rustup_problem() -> Option<String> {
    if !have("rustup") {
        return Some(
            "rustup is not on PATH: the eBPF crate is built with `rustup run /usr cargo` \
             (Debian's rustc-web as a custom toolchain). Install rustup with a stable \
             toolchain and put ~/.cargo/bin on PATH (`. ~/.cargo/env`)"
                .into(),
        );
    }
    None
}

/// rustup installing nightly's rustfmt (only that component: `--profile minimal` brings
/// rustc, cargo and rust-std, which `cargo +nightly fmt` needs to run).
const NIGHTLY_RUSTFMT_INSTALL: &[&str] = &[
    "rustup",
    "toolchain",
    "install",
    "nightly",
    "--profile",
    "minimal",
    "--component",
    "rustfmt",
];

/// rustfmt.toml's import grouping is unstable: the project formats with nightly rustfmt
/// (`cargo xtask fmt`, docs/TOOLCHAIN.md). Nothing is compiled with nightly.
fn nightly_rustfmt_present() -> bool {
    probe(Command::new("rustup").args(["run", "nightly", "rustfmt", "--version"]))
        .is_ok_and(|(ok, _)| ok)
}

fn ensure_nightly_rustfmt() -> Result<()> {
    if nightly_rustfmt_present() {
        eprintln!("nightly rustfmt is installed");
        return Ok(());
    }
    eprintln!("nightly rustfmt missing: installing it with rustup");
    let (program, args) = NIGHTLY_RUSTFMT_INSTALL.split_first().expect("not empty");
    run::run(Command::new(program).args(args))
}

fn bpf_linker_version() -> Option<String> {
    let (ok, out) = probe(Command::new("bpf-linker").arg("--version")).ok()?;
    // "bpf-linker 0.13.0"
    ok.then(|| {
        out.split_whitespace()
            .nth(1)
            .unwrap_or("unknown")
            .to_string()
    })
}

fn ensure_bpf_linker() -> Result<()> {
    match bpf_linker_version() {
        Some(v) if v == BPF_LINKER_VERSION => {
            eprintln!("bpf-linker {v} is installed");
            return Ok(());
        }
        Some(v) => eprintln!("bpf-linker {v} found, need {BPF_LINKER_VERSION}: installing"),
        None => eprintln!("bpf-linker not on PATH: installing {BPF_LINKER_VERSION} (~30 s)"),
    }
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        bail!("{LLVM_PREFIX}/bin/llvm-config is missing: install llvm-22-dev (cargo xtask setup)");
    }
    run::step("setup: building bpf-linker against LLVM 22");
    let mut c = Command::new("cargo");
    // LLVM_PREFIX, not llvm-sys variables: bpf-linker's build script reads it, and without
    // it an older llvm-config on PATH wins (docs/TOOLCHAIN.md, "unable to find library -lLLVM").
    c.env("LLVM_PREFIX", LLVM_PREFIX)
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        // Outside the workspace, so its .cargo/config.toml does not apply.
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null());
    run::run(&mut c).context("building bpf-linker failed")?;
    match bpf_linker_version() {
        Some(v) if v == BPF_LINKER_VERSION => Ok(()),
        _ => bail!(
            "bpf-linker was installed but `bpf-linker --version` does not report \
             {BPF_LINKER_VERSION}: is $CARGO_HOME/bin (~/.cargo/bin) first on PATH?"
        ),
    }
}

/// The unpacked guest kernel's image (`<cache>/current/boot/vmlinuz-*`), if there is one:
/// the check that keeps a second setup run from touching apt at all.
fn guest_kernel_present() -> Option<String> {
    let boot = Path::new(guest_kernel::CACHE_DIR)
        .join(guest_kernel::CURRENT)
        .join("boot");
    fs::read_dir(&boot).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with("vmlinuz-").then_some(name)
    })
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// The venv the Neutron driver is tested in: Debian's Python, the pinned PyPI packages
/// and the driver itself in editable mode. Skipped when its stamp lists exactly the
/// pinned requirements (a second run takes no time); rebuilt from scratch otherwise, so a
/// half-made venv from an interrupted run never counts as done.
fn ensure_neutron_venv() -> Result<()> {
    let root = workspace_root();
    let venv = root.join(neutron_venv::DIR);
    let stamp = venv.join(neutron_venv::STAMP);
    let want = neutron_venv::REQUIREMENTS.join("\n") + "\n";
    if fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        eprintln!("neutron venv is ready in {}", venv.display());
        return Ok(());
    }
    run::step("setup: creating the Neutron venv (neutron, neutron-lib, the driver)");
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("remove {}", venv.display()))?;
    }
    run::run(
        Command::new(neutron_venv::BASE_PYTHON)
            .args(["-m", "venv"])
            .arg(&venv),
    )
    .context("python3 -m venv failed (is python3-venv installed?)")?;
    let pip = venv.join("bin/pip");
    // `wheel` first: without it pip cannot build the one sdist among Neutron's
    // dependencies (ovs) and falls back to ancient releases of other packages.
    run::run(Command::new(&pip).args(["install", "-q", "wheel"])).context("pip install wheel")?;
    run::run(
        Command::new(&pip)
            .args(["install", "-q"])
            .args(neutron_venv::REQUIREMENTS),
    )
    .context("pip install of Neutron and the test tools failed")?;
    run::run(
        Command::new(&pip)
            .args(["install", "-q", "--no-deps", "-e"])
            .arg(root.join(neutron_venv::PLUGIN_DIR)),
    )
    .context("pip install -e neutron-plugin failed")?;
    fs::write(&stamp, want).with_context(|| format!("write {}", stamp.display()))?;
    Ok(())
}

/// The venv `kubernetes-validate` runs in (tests/tests/deploy.rs checks deploy/*.yaml
/// with it). Same scheme as [`ensure_neutron_venv`]: a stamp of the pinned requirements
/// makes a second run free, and anything else is rebuilt from scratch.
fn ensure_deploy_venv() -> Result<()> {
    let venv = workspace_root().join(deploy_tools::VENV_DIR);
    let stamp = venv.join(deploy_tools::STAMP);
    let want = deploy_tools::REQUIREMENTS.join("\n") + "\n";
    if fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        eprintln!("deploy venv is ready in {}", venv.display());
        return Ok(());
    }
    run::step("setup: creating the deploy venv (kubernetes-validate)");
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("remove {}", venv.display()))?;
    }
    run::run(
        Command::new(deploy_tools::BASE_PYTHON)
            .args(["-m", "venv"])
            .arg(&venv),
    )
    .context("python3 -m venv failed (is python3-venv installed?)")?;
    run::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q"])
            .args(deploy_tools::REQUIREMENTS),
    )
    .context("pip install kubernetes-validate failed")?;
    fs::write(&stamp, want).with_context(|| format!("write {}", stamp.display()))?;
    Ok(())
}

/// promtool, unpacked from Debian's `prometheus` package without installing it: the
/// package would also install and enable a Prometheus server (and its user and web
/// assets), which no test wants running. promtool is a Go binary that needs only libc,
/// so the file alone works. Unpacked into a temporary directory and renamed into place only once it
/// runs, so an interrupted setup never leaves a broken binary where the tests look.
fn ensure_promtool() -> Result<()> {
    let bin = Path::new(deploy_tools::PROMTOOL);
    if probe(Command::new(bin).arg("--version")).is_ok_and(|(ok, _)| ok) {
        eprintln!("promtool is unpacked at {}", bin.display());
        return Ok(());
    }
    require_root("download promtool into a system cache directory")?;
    run::step("setup: unpacking promtool from Debian's prometheus package (not installed)");
    let dir = Path::new(deploy_tools::PROMTOOL_DIR);
    let work = dir.join(".download");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let download = || {
        run::run(
            Command::new("apt-get")
                .args(["download", "-q", deploy_tools::PROMTOOL_PACKAGE])
                .current_dir(&work)
                .stdin(Stdio::null()),
        )
    };
    if download().is_err() {
        // apt's lists may never have been fetched on this machine.
        run::run(
            Command::new("apt-get")
                .args(["update", "-q"])
                .stdin(Stdio::null()),
        )
        .context("apt-get update failed")?;
        download().context("apt-get download prometheus failed")?;
    }
    let deb = fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let tree = work.join("tree");
    run::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))
        .with_context(|| format!("dpkg-deb -x {} failed", deb.display()))?;
    let unpacked = tree.join("usr/bin/promtool");
    let (ok, out) = probe(Command::new(&unpacked).arg("--version"))?;
    if !ok {
        bail!("the unpacked {} does not run: {out}", unpacked.display());
    }
    fs::rename(&unpacked, bin).with_context(|| format!("moving promtool to {}", bin.display()))?;
    // The rest (the 50 MB server among it) is not needed.
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(())
}

/// The real-VM tests boot Debian's cloud kernel. It is downloaded (`apt-get download`) and
/// unpacked (`dpkg-deb -x`) into a cache directory, never installed: installing it would
/// make it a boot candidate of the host. Unpacked into a temporary directory and published
/// by an atomic symlink swap, so an interrupted run leaves nothing half-done in use.
fn ensure_guest_kernel() -> Result<()> {
    if let Some(image) = guest_kernel_present() {
        eprintln!(
            "guest kernel {image} is unpacked in {}",
            guest_kernel::CACHE_DIR
        );
        return Ok(());
    }
    require_root("download the guest kernel into a system cache directory")?;
    run::step("setup: downloading the guest kernel (not installed on the host)");
    let mut package = kernel_package()?;
    if package.is_none() {
        // apt's lists may never have been fetched on this machine.
        run::run(
            Command::new("apt-get")
                .args(["update", "-q"])
                .stdin(Stdio::null()),
        )
        .context("apt-get update failed")?;
        package = kernel_package()?;
    }
    let Some(package) = package else {
        bail!(
            "apt knows no dependency of {}: is Debian's main archive in sources.list?",
            guest_kernel::META_PACKAGE
        );
    };
    let cache = Path::new(guest_kernel::CACHE_DIR);
    let download = cache.join(".download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    // `apt-get download` writes into the current directory; as root it warns that the
    // download is not sandboxed (the _apt user cannot write there), which is harmless.
    run::run(
        Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(&download)
            .stdin(Stdio::null()),
    )
    .with_context(|| format!("apt-get download {package} failed"))?;
    let deb = fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", download.display()))?;
    let stem = deb
        .file_stem()
        .expect("a .deb file has a stem")
        .to_string_lossy()
        .into_owned();
    let unpacked = cache.join(&stem);
    let tmp = download.join("tree");
    run::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))
        .with_context(|| format!("dpkg-deb -x {} failed", deb.display()))?;
    let _ = fs::remove_dir_all(&unpacked);
    fs::rename(&tmp, &unpacked)?;
    let link_tmp = cache.join(".current.tmp");
    let _ = fs::remove_file(&link_tmp);
    std::os::unix::fs::symlink(&stem, &link_tmp)?;
    fs::rename(&link_tmp, cache.join(guest_kernel::CURRENT))?;
    fs::remove_dir_all(&download)?;
    match guest_kernel_present() {
        Some(image) => {
            eprintln!("guest kernel {image} unpacked into {}", unpacked.display());
            Ok(())
        }
        None => bail!("{} has no boot/vmlinuz-*", unpacked.display()),
    }
}

/// The kernel image package the metapackage depends on (`apt-cache depends`), e.g.
/// `linux-image-6.1.0-57-cloud-amd64`; `None` when apt does not know the metapackage.
fn kernel_package() -> Result<Option<String>> {
    let (_, out) = probe(Command::new("apt-cache").args(["depends", guest_kernel::META_PACKAGE]))?;
    Ok(parse_depends(&out))
}

fn parse_depends(out: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(String::from)
}

/// Debian's etcd-server enables and starts a system etcd on 127.0.0.1:2379. The tests
/// and the demo start their own etcd; a system one only holds ports and memory.
fn keep_etcd_service_off() -> Result<()> {
    if Path::new("/run/systemd/system").exists() {
        let active = probe(Command::new("systemctl").args(["is-active", "etcd.service"]))?.0;
        let enabled = probe(Command::new("systemctl").args(["is-enabled", "etcd.service"]))?.0;
        if active || enabled {
            require_root("stop the etcd system service")?;
            eprintln!("stopping and disabling the etcd system service (tests run their own)");
            run::run(Command::new("systemctl").args(["disable", "--now", "etcd.service"]))?;
        }
    } else if Path::new("/etc/init.d/etcd").exists() {
        // No systemd (containers): the SysV script may have started it.
        if probe(Command::new("/etc/init.d/etcd").arg("status"))?.0 {
            require_root("stop the etcd system service")?;
            eprintln!("stopping the etcd system service (tests run their own)");
            run::run(Command::new("/etc/init.d/etcd").arg("stop"))?;
        }
        let start_links = fs::read_dir("/etc/rc2.d")
            .map(|d| {
                d.flatten().any(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with('S') && n.ends_with("etcd")
                })
            })
            .unwrap_or(false);
        if start_links && have("update-rc.d") {
            require_root("disable the etcd system service")?;
            run::run(Command::new("update-rc.d").args(["etcd", "disable"]))?;
        }
    }
    let addr: SocketAddr = ([127, 0, 0, 1], 2379).into();
    if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        eprintln!(
            "warning: something listens on 127.0.0.1:2379 (a system etcd?). The tests start \
             their own etcd inside namespaces, but consider stopping it."
        );
    } else {
        eprintln!("no system etcd is running");
    }
    Ok(())
}

fn require_root(to: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("setup needs root to {to}: run `sudo -E cargo xtask setup` (or as root)");
    }
    Ok(())
}

/// The README's table of what setup installs, generated from the lists above
/// (`cargo xtask setup --list`); a unit test keeps the README equal to it.
pub(crate) fn packages_table() -> String {
    let mut t = String::from("| package | installed for |\n|---|---|\n");
    for p in TOOLCHAIN.iter().chain(TOOLS) {
        t.push_str(&format!("| `{}` | {} |\n", p.name, p.why));
    }
    for c in CARGO_INSTALLS {
        t.push_str(&format!(
            "| `{c}` {BPF_LINKER_VERSION} (`cargo install`, built against `{LLVM_PREFIX}`) | \
             links the eBPF object |\n"
        ));
    }
    t.push_str(&format!(
        "| the package `{}` depends on (`apt-get download`, `dpkg-deb -x` into `{}`; not \
         installed) | the real guest's kernel and virtio-net modules |\n",
        guest_kernel::META_PACKAGE,
        guest_kernel::CACHE_DIR
    ));
    t.push_str(&format!(
        "| `promtool` from the package `{}` (`apt-get download`, only the binary unpacked \
         to `{}`; not installed: no Prometheus server) | checks the alert rules and a live \
         agent's `/metrics` (deploy/) |\n",
        deploy_tools::PROMTOOL_PACKAGE,
        deploy_tools::PROMTOOL
    ));
    t.push_str(&format!(
        "| {} from PyPI in a venv (`{}`) | validates the Kubernetes manifests in deploy/ |\n",
        deploy_tools::REQUIREMENTS
            .iter()
            .map(|r| format!("`{r}`"))
            .collect::<Vec<_>>()
            .join(", "),
        deploy_tools::VENV_DIR
    ));
    t
}

#[cfg(test)]
mod tests {
    use super::{packages_table, parse_depends, parse_policy};

    #[test]
    fn kernel_package_from_apt_cache_depends() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-57-cloud-amd64\n";
        assert_eq!(
            parse_depends(out).as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        assert_eq!(parse_depends(""), None);
    }

    /// The README shows what setup installs between these markers, exactly as
    /// `cargo xtask setup --list` prints it: one list, no second copy to drift.
    #[test]
    fn readme_lists_what_setup_installs() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
        )
        .unwrap();
        let (_, rest) = readme
            .split_once("<!-- setup-packages: cargo xtask setup --list -->\n")
            .expect("README.md has no setup-packages marker");
        let (table, _) = rest
            .split_once("<!-- /setup-packages -->")
            .expect("README.md: setup-packages table not closed");
        assert_eq!(
            table,
            packages_table(),
            "README.md's table of what setup installs is stale: paste `cargo xtask setup --list`"
        );
    }

    #[test]
    fn apt_policy_candidates() {
        let out = "iproute2:\n  Installed: 6.1.0-3\n  Candidate: 6.1.0-3\n  Version table:\n \
                   *** 6.1.0-3 500\n        500 http://deb.debian.org/debian bookworm/main \
                   amd64 Packages\ngone:\n  Installed: (none)\n  Candidate: (none)\n";
        let m = parse_policy(out);
        assert_eq!(m.get("iproute2").map(String::as_str), Some("6.1.0-3"));
        assert!(!m.contains_key("gone"));
        assert_eq!(m.len(), 1);
    }
}
