//! Shared by the integration tests: a private etcd per test (free loopback ports, temp data
//! dir, killed on Drop) and helpers to run the real `dfctl` against it.
#![allow(dead_code)]

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

pub const DFCTL: &str = env!("CARGO_BIN_EXE_dfctl");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private etcd on loopback; killed and its data dir removed on Drop.
pub struct Etcd {
    child: Child,
    dir: PathBuf,
    pub endpoint: String,
}

impl Etcd {
    pub fn start() -> Etcd {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dfctl-test-etcd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd (is /usr/bin/etcd installed?)");
        let etcd = Etcd {
            child,
            dir,
            endpoint,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if etcd.dfctl(&["lswitch", "list"]).status.success() {
                return etcd;
            }
            assert!(
                Instant::now() < deadline,
                "etcd at {} did not become ready",
                etcd.endpoint
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn dfctl(&self, args: &[&str]) -> Output {
        dfctl_at(&self.endpoint, args)
    }

    /// Runs dfctl and panics unless it succeeds; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &str) -> String {
        let out = self.dfctl(&split(args));
        assert!(
            out.status.success(),
            "dfctl {args} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs dfctl, expects exit `code` and a one-line stderr containing `msg`.
    #[track_caller]
    pub fn fails(&self, args: &str, code: i32, msg: &str) {
        let out = self.dfctl(&split(args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "dfctl {args}: stderr {err}");
        assert!(err.starts_with("error: "), "dfctl {args}: stderr {err:?}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "dfctl {args}: stderr {err:?}"
        );
        assert!(
            err.contains(msg),
            "dfctl {args}: expected {msg:?} in {err:?}"
        );
    }

    pub fn etcdctl_put(&self, key: &str, value: &str) {
        let st = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint, "put", key, value])
            .stdout(Stdio::null())
            .status()
            .expect("spawn etcdctl");
        assert!(st.success());
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn split(args: &str) -> Vec<&str> {
    args.split_whitespace().collect()
}

pub fn dfctl_at(endpoint: &str, args: &[&str]) -> Output {
    Command::new(DFCTL)
        .args(["--etcd-endpoints", endpoint])
        .args(args)
        .env_remove("DRAGONFLOW_PREFIX")
        .output()
        .expect("spawn dfctl")
}

/// A test certificate authority, server and client certificates made with the `openssl`
/// CLI in a temp dir (removed on Drop). The server certificate is for 127.0.0.1; the
/// client certificate's CN is not an etcd user (with `--client-cert-auth`, etcd would
/// otherwise authenticate a request without a token as that user).
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "df-test-pki-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
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
        static N: AtomicU32 = AtomicU32::new(0);
        let token = format!(
            "df-test-cluster-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let root = std::env::temp_dir().join(&token);
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
        let running: Vec<&str> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.as_str())
            .collect();
        let deadline = Instant::now() + within;
        loop {
            if self
                .etcdctl(&running.join(","), &["endpoint", "health"])
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
