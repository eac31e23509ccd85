//! Running commands and waiting for conditions: every helper panics with the command's
//! output on failure, and readiness is polled with a deadline, never slept for.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short unique prefix for one test's objects: `dft<pid%10000><seq>`.
pub fn unique_prefix() -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("dft{}{}", std::process::id() % 10_000, n)
}

/// Runs a command, panicking with its output when it fails.
#[track_caller]
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs `sh`-free argv given as one string split on whitespace (no quoting needed here).
#[track_caller]
pub fn cmd(line: &str) -> Output {
    let mut it = line.split_whitespace();
    let mut c = Command::new(it.next().expect("empty command"));
    c.args(it);
    run(&mut c)
}

/// Like [`cmd`] but returns the output whatever the exit status.
pub fn try_cmd(line: &str) -> Output {
    let mut it = line.split_whitespace();
    let mut c = Command::new(it.next().expect("empty command"));
    c.args(it);
    c.output().unwrap_or_else(|e| panic!("spawn {line}: {e}"))
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what` and the last
/// value seen. Readiness is always polled, never slept for.
#[track_caller]
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Same as [`wait_for`] for a condition.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    wait_for(what, timeout, || f().then_some(()))
}

/// Polls `f` until it holds (true) or `timeout` passed (false): for conditions a test
/// asserts itself, with its own message.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The directory holding the workspace's binaries for the profile the tests run under
/// (`target/debug` for `cargo test`), built once per test process.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Tests run as target/<profile>/deps/<test>-<hash>, binaries (demo, benches) as
        // target/<profile>/<bin>.
        let exe = std::env::current_exe().expect("current_exe");
        let mut dir = exe.parent().expect("exe dir").to_path_buf();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        let release = dir.file_name().is_some_and(|n| n == "release");
        // `cargo test -p tests` does not build the agent's binaries; make sure they are
        // current (a no-op when they are).
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.args(["build", "--quiet", "-p", "dragonflow-agent", "--bins"]);
        if release {
            c.arg("--release");
        }
        c.current_dir(env!("CARGO_MANIFEST_DIR"));
        run(&mut c);
        dir
    })
}

pub fn agent_bin() -> PathBuf {
    bin_dir().join("dragonflow-agent")
}

pub fn dfctl_bin() -> PathBuf {
    bin_dir().join("dfctl")
}
