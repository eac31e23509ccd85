//! `cargo xtask …`: the project's commands. See README.md.
//!
//! - `setup`  bootstrap a fresh Debian 12 machine (root), idempotently; `--check` only says
//!   what is missing, `--list` prints what it installs
//! - `audit`  fail on packages installed by hand that setup does not install (CI, first)
//! - `build`  release build of the agent with the embedded eBPF object
//! - `fmt`    rustfmt over the workspace with nightly rustfmt (`--check`: only check)
//! - `clippy` fmt check, host clippy and bpfel clippy, all with `-D warnings`
//! - `test`   setup, then every test of the workspace (unit, BPF_PROG_TEST_RUN, netns)
//! - `demo`   setup, then the live demo (two hypervisors over VXLAN, a router, AAPs)
//! - `bench`  setup, then the benchmarks; output also saved to target/bench-<date>.md
//! - `sweep`  remove what killed test runs left behind (namespaces, bpffs mounts)
//! - `man`    dfctl's man pages, generated from its clap definitions (target/man)

mod audit;
mod layers;
mod run;
mod setup;
mod sweep;

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Dragonflow eBPF project commands")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (apt packages, bpf-linker); idempotent.
    Setup {
        /// Only say what is missing (and the commands that would install it); install
        /// nothing, need no root. Exits non-zero when something is missing.
        #[arg(long, conflicts_with = "list")]
        check: bool,
        /// Print the table of what setup installs (the README's, from the same list).
        #[arg(long)]
        list: bool,
    },
    /// The fresh-machine audit CI runs first: fails naming every apt package marked manual
    /// and every `cargo install`ed crate that neither a fresh machine of this kind, nor
    /// setup, nor the reviewed .ci/dev-packages accounts for.
    Audit {
        /// The fresh machine's package list (default: .ci/base-image.tsv).
        #[arg(long, value_name = "TSV")]
        base_image: Option<std::path::PathBuf>,
    },
    /// Check the setup, then `cargo build --release` of the agent (embeds the eBPF object).
    Build,
    /// Format the workspace: `cargo +nightly fmt --all` (rustfmt.toml groups and merges
    /// imports, which only nightly rustfmt does).
    Fmt {
        /// Only check: fail, showing the diff, when a file is not formatted.
        #[arg(long)]
        check: bool,
    },
    /// `cargo xtask fmt --check`, the layer check, clippy for the host crates and for the
    /// bpfel eBPF crate.
    Clippy,
    /// Only the layer check (the agent's and the eBPF crate's import rule).
    Layers,
    /// Setup, then `cargo test` over the workspace (needs root: namespaces, BPF).
    Test {
        /// Extra arguments for `cargo test` (e.g. `-p tests -- aap`). With `-p`, only
        /// that package is tested.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, then the live demo; Ctrl-C (or --duration) cleans everything up.
    Demo {
        /// Stop by itself after this many seconds.
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
        /// Hook the from-VM program attaches to.
        #[arg(long, value_enum)]
        hook: Option<Hook>,
    },
    /// Setup, then the benchmarks; the output is also written to target/bench-<date>.md.
    Bench,
    /// Remove namespaces (`dft…`) and bpffs mounts (/run/dragonflow-test*) left by killed
    /// test or demo runs whose process is gone (`test` does this before and after).
    Sweep,
    /// Write dfctl's man pages (one per command, from its clap definitions) into a
    /// directory: builds dfctl and runs its hidden `man` subcommand.
    Man {
        /// The directory (relative to the workspace root unless absolute).
        #[arg(long, value_name = "DIR", default_value = "target/man")]
        out: std::path::PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Hook {
    Xdp,
    Tc,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let start = Instant::now();
    let res = match cli.cmd {
        Cmd::Setup { check: true, .. } => setup::check(),
        Cmd::Setup { list: true, .. } => {
            print!("{}", setup::packages_table());
            Ok(())
        }
        Cmd::Setup { .. } => setup::setup(),
        Cmd::Audit { base_image } => audit::run(base_image.as_deref()),
        Cmd::Build => build(),
        Cmd::Fmt { check } => fmt(check),
        Cmd::Clippy => clippy(),
        Cmd::Test { args } => test(&args),
        Cmd::Demo { duration, hook } => demo(duration, hook),
        Cmd::Bench => bench(),
        Cmd::Layers => layers::check(run::root()),
        Cmd::Man { out } => man(&out),
        Cmd::Sweep => {
            require_root("removing namespaces and mounts").and_then(|()| sweep::sweep("sweep"))
        }
    };
    let secs = start.elapsed().as_secs_f64();
    match res {
        Ok(()) => {
            eprintln!("xtask: ok ({secs:.1} s)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{} {e:#}", run::paint(run::RED, "error:"));
            eprintln!("xtask: failed after {secs:.1} s");
            ExitCode::FAILURE
        }
    }
}

fn build() -> Result<()> {
    setup::check()?;
    run::step("build: agent and dfctl (release), eBPF object via build.rs");
    run::run(run::cargo().args(["build", "--release", "-p", "dragonflow-agent"]))
}

/// dfctl writes its own pages (clap_mangen in dfctl): xtask stays free of the agent crate.
/// (No setup check: only the build's toolchain is needed, and cargo names what is missing.)
fn man(out: &std::path::Path) -> Result<()> {
    let out = run::root().join(out);
    run::step(&format!("man: dfctl's pages into {}", out.display()));
    let mut c = run::cargo();
    c.args([
        "run",
        "-q",
        "-p",
        "dragonflow-agent",
        "--bin",
        "dfctl",
        "--",
        "man",
    ])
    .arg("--out")
    .arg(&out);
    run::run(&mut c)
}

/// rustfmt.toml uses two unstable options (`group_imports`, `imports_granularity`): stable
/// rustfmt ignores them with a warning per file and formats differently, so the project's
/// formatter is nightly rustfmt (setup makes sure rustup has it; docs/TOOLCHAIN.md). Nothing
/// is compiled with nightly.
fn fmt_command(check: bool) -> Command {
    let mut c = run::cargo();
    c.args(["+nightly", "fmt", "--all"]);
    if check {
        c.arg("--check");
    }
    c
}

fn fmt(check: bool) -> Result<()> {
    run::step(if check {
        "fmt: check (nightly rustfmt)"
    } else {
        "fmt: nightly rustfmt"
    });
    run::run(&mut fmt_command(check))
}

fn clippy() -> Result<()> {
    // `--workspace` minus the eBPF crate: it is a no_std binary for bpfel-unknown-none and
    // built for the host fails ("duplicate lang item panic_impl"); it gets its own run.
    let mut steps: Vec<(&str, Command)> = vec![("rustfmt (nightly, check)", fmt_command(true))];
    let mut host = run::cargo();
    host.args([
        "clippy",
        "--workspace",
        "--exclude",
        "dragonflow-ebpf",
        "--all-targets",
        // The bench binaries need it (`required-features`); without it clippy skips them.
        "--features",
        "tests/bench",
    ])
    .args(["--", "-D", "warnings"]);
    steps.push(("clippy (host crates)", host));
    // The eBPF crate as the agent ships it, and as the benchmark build has it (its extra
    // programs, feature `bench-progs`).
    for (name, features) in [
        ("clippy (eBPF crate, bpfel-unknown-none)", ""),
        (
            "clippy (eBPF crate, bpfel-unknown-none, bench-progs)",
            "bench-progs",
        ),
    ] {
        let mut bpf = run::cargo();
        // Debian's rustc-web (`+/usr`) has the library source `-Z build-std=core` needs.
        bpf.env("RUSTC_BOOTSTRAP", "1")
            .args([
                "+/usr",
                "clippy",
                "-p",
                "dragonflow-ebpf",
                "--target",
                "bpfel-unknown-none",
                "--features",
                features,
            ])
            .args(["-Z", "build-std=core", "--release", "--", "-D", "warnings"]);
        steps.push((name, bpf));
    }

    let mut failed = Vec::new();
    // The layer rule of the agent and the eBPF crate (docs/ARCHITECTURE.md).
    run::step("clippy: layer check");
    if let Err(e) = layers::check(run::root()) {
        eprintln!("{}", run::paint(run::RED, &format!("{e:#}")));
        failed.push("layer check");
    }
    for (name, mut c) in steps {
        run::step(&format!("clippy: {name}"));
        if !run::status(&mut c)?.success() {
            eprintln!("{}", run::paint(run::RED, &format!("{name}: failed")));
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    setup::setup()?;
    require_root("the tests create network namespaces and load BPF programs")?;
    sweep::sweep("before")?;
    run::step("test: cargo test");
    let mut c = run::cargo();
    c.arg("test");
    let picks_package = extra
        .iter()
        .any(|a| a == "-p" || a.starts_with("--package"));
    if !picks_package {
        // See clippy(): the eBPF crate only builds for bpfel, through the agent's build.rs.
        c.args(["--workspace", "--exclude", "dragonflow-ebpf"]);
    }
    c.arg("--no-fail-fast")
        .args(extra)
        .env("RUST_BACKTRACE", "1");
    let _sigint = ForwardSigint::install();
    let st = run::status(&mut c)?;
    sweep::sweep("after")?;
    if !st.success() {
        bail!("tests failed ({st}); see the `test result:` lines and failures above");
    }
    Ok(())
}

fn demo(duration: Option<u64>, hook: Option<Hook>) -> Result<()> {
    setup::setup()?;
    require_root("the demo creates network namespaces and loads BPF programs")?;
    run::step("demo");
    let mut c = run::cargo();
    c.args(["run", "--release", "-p", "tests", "--bin", "df-demo", "--"]);
    if let Some(d) = duration {
        c.arg("--duration").arg(d.to_string());
    }
    match hook {
        Some(Hook::Xdp) => c.args(["--hook", "xdp"]),
        Some(Hook::Tc) => c.args(["--hook", "tc"]),
        None => &mut c,
    };
    // Ctrl-C reaches the demo too (same process group); it cleans up, we wait for it.
    let _sigint = ForwardSigint::install();
    run::run(&mut c)
}

/// Benchmarks (binaries of the `tests` crate) run in this order; each prints markdown on
/// stdout. See docs/BENCHMARKS.md for the method.
const BENCHES: &[(&str, &str)] = &[
    (
        "df-bench-progs",
        "per-packet cost of each verdict path under BPF_PROG_TEST_RUN",
    ),
    (
        "df-bench-e2e",
        "two VMs end to end: 64-byte UDP pps and TCP throughput",
    ),
    (
        "df-bench-failover",
        "shared-VIP failover with keepalived: both ways vs a Linux bridge, 20 failovers each",
    ),
    (
        "df-bench-scale",
        "the control plane at 100,000 ports vs 100: initial sync, change latency, memory, idle CPU",
    ),
];

fn bench() -> Result<()> {
    setup::setup()?;
    require_root("the benchmarks load BPF programs")?;
    let date = capture(Command::new("date").args(["-u", "+%Y-%m-%d-%H%M%S"]))?;
    let path = run::root()
        .join("target")
        .join(format!("bench-{}.md", date.trim()));
    fs::create_dir_all(path.parent().expect("has a parent"))?;
    let mut out =
        fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    writeln!(out, "# Benchmark run {}\n", date.trim())?;
    let kernel = capture(Command::new("uname").arg("-r")).unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let rustc = capture(Command::new("rustc").arg("--version")).unwrap_or_default();
    let git = capture(Command::new("git").args(["-C"]).arg(run::root()).args([
        "rev-parse",
        "--short",
        "HEAD",
    ]))
    .unwrap_or_default();
    writeln!(
        out,
        "kernel {} · {cpus} CPUs · {} · commit {}\n",
        kernel.trim(),
        rustc.trim(),
        git.trim()
    )?;

    for (bin, what) in BENCHES {
        run::step(&format!("bench: {bin} ({what})"));
        let src = run::root().join("tests/src/bin").join(format!("{bin}.rs"));
        if !src.exists() {
            eprintln!(
                "warning: {} does not exist yet; skipping {bin}",
                src.display()
            );
            writeln!(out, "## {what}\n\n(skipped: `{bin}` not written yet)\n")?;
            continue;
        }
        let mut c = run::cargo();
        // `bench`: the agent's eBPF object with the benchmark's stub programs (the shipped
        // object has none); one feature set for every bench, so one build.
        c.args([
            "run",
            "--release",
            "-p",
            "tests",
            "--features",
            "bench",
            "--bin",
            bin,
        ])
        .stdout(Stdio::piped());
        writeln!(out, "## {what}\n\n`{}`\n", run::display(&c))?;
        run::show(&c);
        let _sigint = ForwardSigint::install();
        let mut child = c
            .spawn()
            .with_context(|| format!("could not run `{}`", run::display(&c)))?;
        // tee: to the terminal and to the file.
        let stdout = child.stdout.take().expect("piped");
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            writeln!(out, "{line}")?;
        }
        let st = child.wait()?;
        if !st.success() {
            bail!(
                "benchmark {bin} failed ({st}); partial output in {}",
                path.display()
            );
        }
        writeln!(out)?;
    }
    eprintln!("bench: results written to {}", path.display());
    Ok(())
}

fn capture(c: &mut Command) -> Result<String> {
    let (ok, out) = run::probe(c)?;
    if !ok {
        bail!("`{}` failed", run::display(c));
    }
    Ok(out)
}

fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root: {why}");
    }
    Ok(())
}

/// While a long child runs (tests, demo), Ctrl-C must not kill xtask before the child has
/// cleaned up: the child gets SIGINT from the terminal (same process group) and we wait
/// for it, then run our own cleanup. A handler (not SIG_IGN) so children, whose handlers
/// reset to the default at exec, still react to Ctrl-C.
struct ForwardSigint;

extern "C" fn on_sigint(_: libc::c_int) {}

impl ForwardSigint {
    fn install() -> Self {
        // SAFETY: installs an async-signal-safe handler that does nothing.
        unsafe {
            libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
        }
        ForwardSigint
    }
}

impl Drop for ForwardSigint {
    fn drop(&mut self) {
        // SAFETY: restores the default disposition.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::{Cli, Cmd};

    #[test]
    fn test_args_pass_through_to_cargo_test() {
        let cli = Cli::try_parse_from(["xtask", "test", "-p", "tests", "--", "aap", "--nocapture"])
            .expect("parses");
        let Cmd::Test { args } = cli.cmd else {
            panic!("not test")
        };
        assert_eq!(args, ["-p", "tests", "--", "aap", "--nocapture"]);
    }
}
