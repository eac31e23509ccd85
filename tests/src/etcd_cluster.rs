//! Production-shaped etcd for the tests: a real multi-member cluster on loopback (free
//! ports, temp data dirs), optionally serving TLS with client certificates, a test PKI made
//! with the `openssl` CLI, and an agent process running in the root namespace against it
//! (no tunnel, no taps: what is tested is its etcd session). Every guard kills and removes
//! what it made on Drop.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::harness::{agent_bin, dfctl_bin, http_get, metric_sum, wait_until};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A unique temp path for one guard.
fn temp_path(what: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "df-test-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// A test certificate authority, server and client certificates made with the `openssl`
/// CLI in a temp dir (removed on Drop). The server certificate is for 127.0.0.1; the
/// client certificate's CN is not an etcd user (with `--client-cert-auth`, etcd would
/// otherwise authenticate a request without a token as that user).
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = temp_path("pki");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.leaf(
            "server",
            "etcd",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        );
        pki.leaf(
            "client",
            "dragonflow-client",
            "extendedKeyUsage=clientAuth\n",
        );
        pki
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(&self.dir)
            .args(args)
            .output()
            .expect("spawn openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    fn leaf(&self, name: &str, cn: &str, ext: &str) {
        std::fs::write(self.dir.join(format!("{name}.ext")), ext).unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One member of an [`EtcdCluster`]: its process (None while killed), ports and data dir.
pub struct Member {
    child: Option<Child>,
    name: String,
    dir: PathBuf,
    pub client_url: String,
    peer_url: String,
}

/// A real etcd cluster of `n` members on loopback (free ports, temp data dirs), optionally
/// serving TLS with client certificates required. Every member is killed and every data
/// dir removed on Drop.
pub struct EtcdCluster {
    pub members: Vec<Member>,
    initial_cluster: String,
    token: String,
    tls: Option<(String, String, String)>,
    root: PathBuf,
}

impl EtcdCluster {
    pub fn start(n: usize, pki: Option<&Pki>) -> EtcdCluster {
        let root = temp_path("etcd-cluster");
        let token = root.file_name().unwrap().to_string_lossy().into_owned();
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let scheme = if pki.is_some() { "https" } else { "http" };
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                child: None,
                name: format!("m{i}"),
                dir: root.join(format!("m{i}")),
                client_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            members,
            initial_cluster,
            token,
            tls: pki.map(|p| (p.path("ca.pem"), p.path("server.pem"), p.path("server.key"))),
            root,
        };
        for i in 0..n {
            c.start_member(i);
        }
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The endpoints of the members that run.
    pub fn live_endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The value and mod_revision of `key`, read from the live members (None if absent).
    pub fn get(&self, key: &str) -> Option<(String, i64)> {
        let eps = self.live_endpoints();
        let run = |args: &[&str]| {
            let out = self.etcdctl(&eps, args);
            assert!(
                out.status.success(),
                "etcdctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        // JSON for the revision (its values are base64), plain output for the value.
        let v: serde_json::Value = serde_json::from_str(&run(&["get", key, "-w", "json"])).unwrap();
        let rev = v["kvs"].as_array()?.first()?["mod_revision"].as_i64()?;
        let value = run(&["get", key, "--print-value-only"]);
        Some((value.trim_end().to_string(), rev))
    }

    /// (Re)starts member `i` on its data dir.
    pub fn start_member(&mut self, i: usize) {
        let m = &self.members[i];
        assert!(m.child.is_none(), "{} already running", m.name);
        let log = std::fs::File::create(self.root.join(format!("{}.log", m.name))).unwrap();
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--listen-client-urls", &m.client_url])
            .args(["--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"]);
        if let Some((ca, cert, key)) = &self.tls {
            cmd.args(["--client-cert-auth", "--trusted-ca-file", ca])
                .args(["--cert-file", cert, "--key-file", key]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd (is /usr/bin/etcd installed?)");
        self.members[i].child = Some(child);
    }

    /// SIGKILL member `i`.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `etcdctl` with this cluster's endpoints (and the PKI's client certificate).
    pub fn etcdctl(&self, endpoints: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoints, "--command-timeout=3s"]);
        if let Some((ca, _, _)) = &self.tls {
            let dir = std::path::Path::new(ca).parent().unwrap();
            cmd.arg(format!("--cacert={ca}"))
                .arg(format!("--cert={}", dir.join("client.pem").display()))
                .arg(format!("--key={}", dir.join("client.key").display()));
        }
        cmd.args(args).output().expect("spawn etcdctl")
    }

    /// Waits until every running member answers its health check.
    pub fn wait_healthy(&self, within: Duration) {
        let running = self.live_endpoints();
        let deadline = Instant::now() + within;
        loop {
            if self
                .etcdctl(&running, &["endpoint", "health"])
                .status
                .success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd cluster not healthy within {within:?}: {}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the current leader (polls until a running member reports one).
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.etcdctl(&self.endpoints(), &["endpoint", "status", "-w", "json"]);
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            let leader = v.as_array().and_then(|a| {
                a.iter().find_map(|s| {
                    let st = &s["Status"];
                    (st["header"]["member_id"] == st["leader"])
                        .then(|| s["Endpoint"].as_str().map(str::to_string))
                        .flatten()
                })
            });
            if let Some(ep) = leader
                && let Some(i) = self.members.iter().position(|m| m.client_url == ep)
            {
                return i;
            }
            assert!(Instant::now() < deadline, "no etcd leader: {v}");
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every member's log, for a failure message.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(self.root.join(format!("{}.log", m.name)))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- {} ---\n{}",
                    m.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

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
