//! The Neutron driver (`neutron-plugin/`) tested against Neutron's own code: its Python
//! tests subclass Neutron's ML2 unit-test base (Neutron's real API and ML2 plugin on
//! sqlite) and run here, in the venv `cargo xtask setup` makes, against a real etcd this
//! test starts on free loopback ports. They also run the records the driver writes
//! through the agent's validation (`dfctl apply --dry-run`) and check them against
//! docs/nb-schema.json. A second test runs the OpenStack linter (flake8 + hacking) over
//! the package and tests/scripts/neutron_e2e.py.
//!
//! The outage test in Python stops and starts this etcd: it drops a file `stop` or
//! `start` into a control directory, and a thread here does it and removes the file.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

#[expect(
    dead_code,
    reason = "setup's constants (the pins, the stamp): this test needs fewer"
)]
#[path = "../src/neutron_venv.rs"]
mod neutron_venv;

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tests::framework::process::dfctl_bin;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn venv_bin(tool: &str) -> PathBuf {
    let bin = workspace().join(neutron_venv::DIR).join("bin").join(tool);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask setup` (it creates the Neutron venv)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member on loopback with a temp data dir kept across stop/start.
struct Etcd {
    dir: PathBuf,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

impl Etcd {
    fn new() -> Etcd {
        let dir = std::env::temp_dir().join(format!("df-neutron-etcd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut e = Etcd {
            dir,
            client: free_port(),
            peer: free_port(),
            child: None,
        };
        e.start();
        e
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        let mut body = String::new();
        s.write_all(req.as_bytes()).is_ok()
            && s.read_to_string(&mut body).is_ok()
            && body.contains("\"health\":\"true\"")
    }

    fn start(&mut self) {
        if self.child.is_some() {
            return;
        }
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::File::create(self.dir.join("etcd.log")).unwrap();
        self.child = Some(
            Command::new("etcd")
                .args(["--name", "neutron-test", "--data-dir"])
                .arg(self.dir.join("data"))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("neutron-test={peer}")])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn etcd (run `cargo xtask setup`)"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.healthy() {
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Serves the Python tests' stop/start requests until `done`.
fn serve_control(etcd: Arc<Mutex<Etcd>>, dir: PathBuf, done: Arc<AtomicBool>) {
    while !done.load(Ordering::Relaxed) {
        for what in ["stop", "start"] {
            let req = dir.join(what);
            if req.exists() {
                let mut e = etcd.lock().unwrap();
                if what == "stop" {
                    e.stop();
                } else {
                    e.start();
                }
                std::fs::remove_file(&req).unwrap();
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn neutron_driver_under_neutrons_test_base() {
    let python = venv_bin("python");
    let dfctl = dfctl_bin();
    let etcd = Arc::new(Mutex::new(Etcd::new()));
    let endpoint = etcd.lock().unwrap().endpoint();
    let control = etcd.lock().unwrap().dir.join("control");
    std::fs::create_dir_all(&control).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let server = {
        let (etcd, control, done) = (etcd.clone(), control.clone(), done.clone());
        thread::spawn(move || serve_control(etcd, control, done))
    };

    let plugin = workspace().join(neutron_venv::PLUGIN_DIR);
    let out = Command::new(&python)
        .args(["-m", "stestr", "run", "--serial"])
        .current_dir(&plugin)
        .env("DFE_ETCD_ENDPOINT", &endpoint)
        .env("DFE_ETCD_CONTROL", &control)
        .env("DFE_DFCTL", &dfctl)
        .output()
        .expect("spawn stestr");
    done.store(true, Ordering::Relaxed);
    server.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the driver's tests failed:\n{stdout}\n{stderr}"
    );
    // Not an empty run: stestr's summary counts what passed.
    let passed = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("- Passed: "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(passed >= 20, "only {passed} driver tests passed:\n{stdout}");
    println!("{passed} driver tests passed");
}

#[test]
fn neutron_driver_passes_the_openstack_linter() {
    let flake8 = venv_bin("flake8");
    let root = workspace();
    let plugin = root.join(neutron_venv::PLUGIN_DIR);
    let config = plugin.join("tox.ini");
    // The package, from its folder (hacking's license-header check applies where the
    // LICENSE it ships is); and the script that drives Neutron for the end-to-end test,
    // from the workspace, with the package's settings: it runs Neutron's code too.
    for (dir, target) in [
        (&plugin, "networking_dragonflow_ebpf"),
        (&root, "tests/scripts/neutron_e2e.py"),
    ] {
        let out = Command::new(&flake8)
            .arg("--config")
            .arg(&config)
            .arg(target)
            .current_dir(dir)
            .output()
            .expect("spawn flake8");
        assert!(
            out.status.success(),
            "flake8 (with OpenStack's hacking checks) found problems in {target}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
