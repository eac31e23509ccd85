//! Shared by the integration tests: a private etcd per test (free loopback ports, temp data
//! dir, killed on Drop) and helpers to run the real `dfctl` against it.
#![expect(
    dead_code,
    reason = "each test file includes this module and uses only some of its helpers"
)]

use std::{
    io::{Read, Write},
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

/// A network (VNI 100, MTU 1450) for store tests.
pub(crate) fn ls(id: &str) -> dragonflow_agent::nb::LSwitch {
    dragonflow_agent::nb::LSwitch {
        id: id.into(),
        name: String::new(),
        segmentation_id: 100,
        mtu: 1450,
        aap_mode: None,
    }
}

pub(crate) const DFCTL: &str = env!("CARGO_BIN_EXE_dfctl");

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private etcd on loopback; killed and its data dir removed on Drop.
pub(crate) struct Etcd {
    child: Child,
    dir: PathBuf,
    pub(crate) endpoint: String,
}

impl Etcd {
    pub(crate) fn start() -> Etcd {
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

    pub(crate) fn dfctl(&self, args: &[&str]) -> Output {
        dfctl_at(&self.endpoint, args)
    }

    /// Runs dfctl and panics unless it succeeds; returns stdout.
    #[track_caller]
    pub(crate) fn ok(&self, args: &str) -> String {
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
    pub(crate) fn fails(&self, args: &str, code: i32, msg: &str) {
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

    pub(crate) fn etcdctl_put(&self, key: &str, value: &str) {
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

pub(crate) fn split(args: &str) -> Vec<&str> {
    args.split_whitespace().collect()
}

pub(crate) fn dfctl_at(endpoint: &str, args: &[&str]) -> Output {
    Command::new(DFCTL)
        .args(["--etcd-endpoints", endpoint])
        .args(args)
        .env_remove("DRAGONFLOW_PREFIX")
        .output()
        .expect("spawn dfctl")
}

/// Serves `body` once per connection, as the agent's /garp endpoint would.
pub(crate) fn stub_agent(chunked: bool, body: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let req = String::from_utf8_lossy(&req);
            let resp = if !req.starts_with("GET /garp ") {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
            } else if chunked {
                let (a, b) = body.split_at(body.len() / 2);
                format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                    a.len(),
                    b.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            };
            let _ = c.write_all(resp.as_bytes());
        }
    });
    url
}
