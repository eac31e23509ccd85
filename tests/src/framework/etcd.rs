//! The one etcd guard of the tests ([`Etcd`]): real etcd members (Debian's etcd-server)
//! on free ports or in a namespace, with temp data dirs, optionally serving TLS with a test
//! PKI ([`Pki`], made with the `openssl` CLI). Every guard kills and removes what it made
//! on Drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::{free_port, netns::Netns, temp_path};

/// The underlay address a simulated cloud's etcd listens on inside the underlay namespace.
pub const ETCD_IP: &str = "198.18.0.1";
/// The client port there (the peer port is the next one).
pub const ETCD_PORT: u16 = 2379;

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

/// One member of an [`Etcd`]: its process (None while killed), ports and data dir.
pub struct Member {
    child: Option<Child>,
    name: String,
    dir: PathBuf,
    pub client_url: String,
    peer_url: String,
}

/// A real etcd (Debian's etcd-server): `n` members, each with its own temp data dir, run
/// either on loopback with free ports (optionally serving TLS with client certificates
/// required) or, for a simulated cloud, as one member inside the underlay namespace.
/// Members can be killed and restarted on their data dirs (leader loss, lost quorum, an
/// outage). Every member is killed and every data dir removed on Drop.
pub struct Etcd {
    pub members: Vec<Member>,
    initial_cluster: String,
    token: String,
    tls: Option<(String, String, String)>,
    root: PathBuf,
    /// The namespace the members run in (`None`: the caller's).
    netns: Option<String>,
}

impl Etcd {
    /// A cluster of `n` members on loopback, serving TLS with `pki`'s server certificate
    /// (and requiring client certificates) when given; returns once every member is
    /// healthy.
    pub fn cluster(n: usize, pki: Option<&Pki>) -> Etcd {
        let scheme = if pki.is_some() { "https" } else { "http" };
        let urls = (0..n)
            .map(|_| {
                (
                    format!("{scheme}://127.0.0.1:{}", free_port()),
                    format!("http://127.0.0.1:{}", free_port()),
                )
            })
            .collect();
        let tls = pki.map(|p| (p.path("ca.pem"), p.path("server.pem"), p.path("server.key")));
        let mut c = Etcd::new(urls, tls, None);
        for i in 0..n {
            c.start_member(i);
        }
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    /// One member inside `ns` on [`ETCD_IP`]:[`ETCD_PORT`] (the simulated cloud's
    /// underlay); returns once it is healthy. The namespace must outlive the guard.
    pub fn start_in(ns: &Netns) -> Etcd {
        let urls = vec![(
            format!("http://{ETCD_IP}:{ETCD_PORT}"),
            format!("http://{ETCD_IP}:{}", ETCD_PORT + 1),
        )];
        let mut e = Etcd::new(urls, None, Some(ns.name.clone()));
        e.start();
        e
    }

    fn new(
        urls: Vec<(String, String)>,
        tls: Option<(String, String, String)>,
        netns: Option<String>,
    ) -> Etcd {
        let root = temp_path("etcd");
        let token = root.file_name().unwrap().to_string_lossy().into_owned();
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let members: Vec<Member> = urls
            .into_iter()
            .enumerate()
            .map(|(i, (client_url, peer_url))| Member {
                child: None,
                name: format!("m{i}"),
                dir: root.join(format!("m{i}")),
                client_url,
                peer_url,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        Etcd {
            members,
            initial_cluster,
            token,
            tls,
            root,
            netns,
        }
    }

    /// `program` run where the members run (inside the namespace, if any).
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// (Re)starts every stopped member on its data dir and waits until all are healthy
    /// (the end of an outage, see [`Etcd::stop`]).
    pub fn start(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.start_member(i);
            }
        }
        self.wait_healthy(Duration::from_secs(20));
    }

    /// SIGKILLs every member, keeping the data dirs: an etcd outage.
    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
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
        let mut cmd = self.command("etcd");
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
            .expect("spawn etcd (is etcd-server installed? run `cargo xtask setup`)");
        self.members[i].child = Some(child);
    }

    /// SIGKILL member `i`.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `etcdctl` (where the members run) with these endpoints (and the PKI's client certificate).
    pub fn etcdctl(&self, endpoints: &str, args: &[&str]) -> Output {
        let mut cmd = self.command("etcdctl");
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

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
