//! Product processes run by the tests outside a simulated cloud: an agent in the root
//! namespace against an [`Etcd`](super::etcd::Etcd) (no tunnel, no taps: what is tested is
//! its etcd session) and one-shot `dfctl` runs. Guards kill and remove what they made on
//! Drop.

use std::{
    path::PathBuf,
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use super::{free_port, temp_path};
use crate::framework::{
    http::{http_get, metric_sum},
    process::{agent_bin, dfctl_bin, wait_until},
};

/// (exit code, stdout, stderr) of one dfctl run against `endpoints`, with `extra` global
/// options (TLS, credentials) and no password in the environment.
pub fn dfctl(endpoints: &str, extra: &[String], args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(dfctl_bin())
        .args(["--etcd-endpoints", endpoints])
        .args(extra)
        .args(args)
        .env_remove("DRAGONFLOW_PREFIX")
        .env_remove("DRAGONFLOW_ETCD_PASSWORD")
        .output()
        .expect("spawn dfctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An agent process in the root namespace with its own bpffs mount, no tunnel and a tap
/// prefix that matches no interface: only its etcd session is exercised. Killed, its
/// bpffs unmounted and its log removed on Drop (the log is printed if the test panics).
pub struct Agent {
    child: Option<Child>,
    pub chassis: String,
    pub metrics_addr: String,
    bpffs: PathBuf,
    log: PathBuf,
    args: Vec<String>,
}

impl Agent {
    /// Starts an agent for `chassis` with `args` (endpoints, TLS, …) added.
    pub fn spawn(chassis: &str, args: &[String]) -> Agent {
        let bpffs = temp_path("bpffs");
        std::fs::create_dir_all(&bpffs).unwrap();
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&bpffs)
            .status()
            .expect("mount");
        assert!(st.success(), "mount bpffs at {}", bpffs.display());
        let mut a = Agent {
            child: None,
            chassis: chassis.to_string(),
            metrics_addr: format!("127.0.0.1:{}", free_port()),
            log: bpffs.with_extension("log"),
            bpffs,
            args: args.to_vec(),
        };
        a.start();
        a
    }

    /// (Re)starts the process with the same settings and pin directory.
    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "agent {} already running",
            self.chassis
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let prefix = format!("dfz{}", free_port());
        let child = Command::new(agent_bin())
            .args(["--chassis", &self.chassis, "--no-tunnel"])
            .args(["--tap-prefix", &prefix, "--probe-interval-ms", "0"])
            .arg("--bpffs")
            .arg(&self.bpffs)
            // Kept across restarts of this guard's agent: its instance id lives there.
            .arg("--state-dir")
            .arg(self.bpffs.with_extension("state"))
            .args(["--metrics-addr", &self.metrics_addr])
            .args(&self.args)
            .env("RUST_LOG", "info,dragonflow_agent=debug")
            .env_remove("DRAGONFLOW_ETCD_PASSWORD")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        self.child = Some(child);
    }

    /// SIGKILL (pins and the etcd lease stay).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The exit status once the process ended within `within`, else None.
    pub fn exited_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.as_mut()?.try_wait().ok().flatten() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn healthz(&self) -> Option<(u16, String)> {
        http_get(&self.metrics_addr, "/healthz")
    }

    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = http_get(&self.metrics_addr, "/metrics")?;
        Some(metric_sum(&text, name, &[]))
    }

    /// Waits for /healthz `ok` (synced and connected).
    pub fn wait_ok(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("agent {} exited ({st}):\n{}", self.chassis, self.log());
            }
            if self.healthz().is_some_and(|(s, b)| s == 200 && b == "ok\n") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent {} not ok within {within:?}:\n{}",
                self.chassis,
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        if thread::panicking() {
            eprintln!("---- agent {} log ----\n{}", self.chassis, self.log());
        }
        let _ = Command::new("umount").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir(&self.bpffs);
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_dir_all(self.bpffs.with_extension("state"));
    }
}

/// Polls `f` until it holds, returning how long that took (panics after `within`).
pub fn time_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    wait_until(what, within, &mut f);
    t.elapsed()
}
