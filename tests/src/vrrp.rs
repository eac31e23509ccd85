//! keepalived (VRRP) inside VM namespaces: the configuration two VMs sharing a VIP run, and
//! a guard for each keepalived process. Shared by the shared-VIP tests
//! (`tests/aap_keepalived.rs`) and the failover benchmark (`df-bench-failover`).

use std::{
    fs,
    path::PathBuf,
    process::{Child, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::harness::Netns;

/// One VRRP instance of one VM.
#[derive(Clone, Debug)]
pub struct VrrpConf {
    /// Names the instance in logs and pid files.
    pub name: String,
    pub iface: String,
    pub vrid: u8,
    pub priority: u8,
    /// Seconds between adverts (VRRPv3 allows centiseconds); the backup takes over after
    /// 3 × advert_int + skew without adverts.
    pub advert_int: f64,
    /// This VM's address (adverts are unicast from it to `peers`), or `None` for
    /// multicast adverts (224.0.0.18, flooded by the datapath).
    pub src: Option<String>,
    pub peers: Vec<String>,
    /// `IP/LEN` virtual addresses.
    pub vips: Vec<String>,
    /// The VRRP virtual MAC (00:00:5e:00:01:<vrid>) on a macvlan `vrrp.<vrid>`, which
    /// then carries the VIP; adverts still leave from the base interface with its own
    /// MAC (`vmac_xmit_base`), as port security requires.
    pub use_vmac: bool,
}

impl VrrpConf {
    /// The VRRP virtual MAC of `vrid`.
    pub fn vmac(vrid: u8) -> String {
        format!("00:00:5e:00:01:{vrid:02x}")
    }

    /// keepalived.conf text.
    pub fn render(&self) -> String {
        let mut s = format!(
            "global_defs {{\n  router_id {}\n  vrrp_version 3\n  \
             # one burst of gratuitous ARPs on becoming master (no second one 5 s later)\n  \
             vrrp_garp_master_delay 0\n  vrrp_garp_master_repeat 3\n}}\n\
             vrrp_instance VI_{} {{\n  state BACKUP\n  interface {}\n  virtual_router_id {}\n  \
             priority {}\n  advert_int {}\n",
            self.name, self.vrid, self.iface, self.vrid, self.priority, self.advert_int
        );
        if self.use_vmac {
            s.push_str("  use_vmac\n  vmac_xmit_base\n");
        }
        if let Some(src) = &self.src {
            s.push_str(&format!("  unicast_src_ip {src}\n  unicast_peer {{\n"));
            for p in &self.peers {
                s.push_str(&format!("    {p}\n"));
            }
            s.push_str("  }\n");
        }
        s.push_str("  virtual_ipaddress {\n");
        for v in &self.vips {
            s.push_str(&format!("    {v}\n"));
        }
        s.push_str("  }\n}\n");
        s
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A keepalived process (VRRP only) in a namespace, with its own configuration and pid
/// files in a temporary directory; killed and cleaned up on drop.
pub struct Keepalived {
    pub conf: VrrpConf,
    child: Option<Child>,
    dir: PathBuf,
}

impl Keepalived {
    /// `keepalived -n -l -D -P -f <conf> -p/-r/-c <pid files>` in `ns`.
    pub fn start(ns: &Netns, conf: &VrrpConf) -> Keepalived {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{}-keepalived{n}", ns.name));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("keepalived dir");
        let file = dir.join("keepalived.conf");
        fs::write(&file, conf.render()).expect("keepalived.conf");
        let log = fs::File::create(dir.join("log")).expect("keepalived log");
        let child = ns
            .command("keepalived")
            // no fork, log to the console (our log file), detailed, VRRP only
            .args(["-n", "-l", "-D", "-P", "-f"])
            .arg(&file)
            .arg("-p")
            .arg(dir.join("keepalived.pid"))
            .arg("-r")
            .arg(dir.join("vrrp.pid"))
            .arg("-c")
            .arg(dir.join("checkers.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn keepalived (is it installed? run `cargo xtask setup`)");
        Keepalived {
            conf: conf.clone(),
            child: Some(child),
            dir,
        }
    }

    /// Graceful stop (SIGTERM): a master sends a priority-0 advert and removes its VIPs,
    /// so the backup takes over at once.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(10) {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A crash (SIGKILL of the VRRP process and its parent): no priority-0 advert, the
    /// VIP stays configured; the backup takes over when adverts stop (advert-driven).
    pub fn crash(&mut self) {
        if let Ok(pid) = fs::read_to_string(self.dir.join("vrrp.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            // SAFETY: kill(2) of the VRRP child this guard started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.crash();
        if thread::panicking() {
            eprintln!(
                "---- keepalived {} log ----\n{}",
                self.conf.name,
                self.log()
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether `ip` (no prefix length) is configured on any interface of `ns`.
pub fn has_addr(ns: &Netns, ip: &str) -> bool {
    let out = ns.try_exec("ip -o addr show");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .any(|w| w.split('/').next() == Some(ip))
}
