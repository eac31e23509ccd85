//! keepalived (VRRP) inside VM namespaces: the configuration two VMs sharing a VIP run, a
//! guard for each keepalived process, and the shared-VIP topology. Shared by the
//! shared-VIP tests (`tests/aap_keepalived.rs`) and the failover benchmark
//! (`df-bench-failover`).
//!
//! ```text
//!   net1 VNI 100  192.0.2.0/24     r1 192.0.2.1     (fa:16:3e:0a:01:01)
//!   net2 VNI 200  198.51.100.0/24  r1 198.51.100.1  (fa:16:3e:0a:02:01)
//!   hv1: m1 (net1 .11, AAP 192.0.2.100)
//!   hv2: m2 (net1 .12, AAP 192.0.2.100)
//!   hv3: c1 (net1 .13), c2 (net2 198.51.100.13, routed through r1)
//! ```

use std::{
    fs,
    path::PathBuf,
    process::{Child, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::{
    framework::{hook::Hook, http::metric, netns::Netns, process::wait_until},
    harness::{Cloud, HvOpts, VmOpts, agent_has_flag},
};

/// The shared VIP.
pub const VIP: &str = "192.0.2.100";
/// Its VRRP router id (virtual MAC 00:00:5e:00:01:33).
pub const VRID: u8 = 51;

/// One VM of the topology: namespace `<prefix>-<name>`, port `p<name>`, tap `tap<name>`.
pub struct VmDef {
    pub name: &'static str,
    /// Hypervisor index (0 = hv1).
    pub hv: usize,
    pub lswitch: &'static str,
    pub mac: &'static str,
    pub ip: &'static str,
    pub gw: &'static str,
}

pub const M1: VmDef = VmDef {
    name: "m1",
    hv: 0,
    lswitch: "net1",
    mac: "fa:16:3e:0a:00:11",
    ip: "192.0.2.11",
    gw: "192.0.2.1",
};
pub const M2: VmDef = VmDef {
    name: "m2",
    hv: 1,
    lswitch: "net1",
    mac: "fa:16:3e:0a:00:12",
    ip: "192.0.2.12",
    gw: "192.0.2.1",
};
pub const C1: VmDef = VmDef {
    name: "c1",
    hv: 2,
    lswitch: "net1",
    mac: "fa:16:3e:0a:00:13",
    ip: "192.0.2.13",
    gw: "192.0.2.1",
};
pub const C2: VmDef = VmDef {
    name: "c2",
    hv: 2,
    lswitch: "net2",
    mac: "fa:16:3e:0b:00:13",
    ip: "198.51.100.13",
    gw: "198.51.100.1",
};
/// In `Cloud::vms` order.
pub const VMS: [&VmDef; 4] = [&M1, &M2, &C1, &C2];
pub const HOLDERS: [&VmDef; 2] = [&M1, &M2];
pub const CLIENTS: [&VmDef; 2] = [&C1, &C2];

/// The topology above on three hypervisors without a bridge (tc hook, forwarding in
/// eBPF), agents started with `--aap-mode <mode>` and `agent_args`, forwarding on
/// everywhere. With `vmac`, the VIP's AAP MAC is the VRRP virtual MAC on both holders,
/// else each holder's own MAC.
pub fn vip_cloud(mode: &str, vmac: bool, agent_args: &[&str]) -> Cloud {
    let mut cloud = Cloud::new();
    for i in 0..3 {
        let hv =
            cloud.add_hypervisor_opts(&format!("hv{}", i + 1), Hook::Tc, HvOpts { bridge: false });
        let mut args = vec!["--aap-mode".to_string(), mode.to_string()];
        // Security groups are issue 4's subject; the shared-VIP ways are judged alone.
        if agent_has_flag("--security-groups") {
            args.push("--security-groups=false".into());
        }
        args.extend(agent_args.iter().map(|s| s.to_string()));
        cloud.hvs[hv].extra_agent_args = args;
    }
    cloud.dfctl("lrouter create r1");
    for (ls, vni, cidr, gw, rmac) in [
        (
            "net1",
            100,
            "192.0.2.0/24",
            "192.0.2.1",
            "fa:16:3e:0a:01:01",
        ),
        (
            "net2",
            200,
            "198.51.100.0/24",
            "198.51.100.1",
            "fa:16:3e:0a:02:01",
        ),
    ] {
        cloud.dfctl(&format!("lswitch create {ls} --vni {vni}"));
        cloud.dfctl(&format!(
            "subnet create {ls}-v4 --lswitch {ls} --cidr {cidr} --gateway {gw}"
        ));
        cloud.dfctl(&format!(
            "lrouter add-interface r1 --lswitch {ls} --mac {rmac} --ip {gw}/24"
        ));
    }
    let aap = if vmac {
        format!("--aap {VIP},{}", VrrpConf::vmac(VRID))
    } else {
        format!("--aap {VIP}")
    };
    for d in VMS {
        let extra = if HOLDERS.iter().any(|h| h.name == d.name) {
            aap.as_str()
        } else {
            ""
        };
        cloud.dfctl(&format!(
            "lport create p{} --lswitch {} --mac {} --fixed-ip {} --chassis hv{} --ifname tap{} {extra}",
            d.name,
            d.lswitch,
            d.mac,
            d.ip,
            d.hv + 1,
            d.name
        ));
        let opts = VmOpts::with_gateways(&[d.gw]);
        cloud.add_vm_opts(
            d.hv,
            d.name,
            &format!("tap{}", d.name),
            d.mac,
            &[&format!("{}/24", d.ip)],
            &opts,
        );
    }
    for i in 0..3 {
        cloud.start_agent(i);
    }
    for hv in &cloud.hvs {
        wait_until(
            &format!("dragonflow_forwarding_enabled 1 on {}", hv.name),
            Duration::from_secs(30),
            || metric(&hv.metrics(), "dragonflow_forwarding_enabled", &[]) == Some(1.0),
        );
    }
    cloud
}

/// The namespace of VM `d` in a [`vip_cloud`].
pub fn vm<'a>(cloud: &'a Cloud, d: &VmDef) -> &'a Netns {
    let i = VMS
        .iter()
        .position(|v| v.name == d.name)
        .expect("a VM of the topology");
    &cloud.vms[i].ns
}

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
    /// A higher-priority backup does not take over from a live master.
    pub nopreempt: bool,
}

impl VrrpConf {
    /// The configuration of holder `me` of [`VIP`] in a [`vip_cloud`]: unicast adverts to
    /// `peer`, VRRP router id [`VRID`].
    pub fn for_vip(me: &VmDef, peer: &VmDef, priority: u8, advert_int: f64, vmac: bool) -> Self {
        VrrpConf {
            name: me.name.to_string(),
            iface: "eth0".into(),
            vrid: VRID,
            priority,
            advert_int,
            src: Some(me.ip.to_string()),
            peers: vec![peer.ip.to_string()],
            vips: vec![format!("{VIP}/24")],
            use_vmac: vmac,
            nopreempt: false,
        }
    }

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
        if self.nopreempt {
            s.push_str("  nopreempt\n");
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

/// With `use_vmac` the VIP sits on the macvlan `vrrp.<vrid>`, but Linux answers from the
/// base interface (its route comes first): replies and ARP requests from the VIP would
/// leave with the port's own MAC, which port security refuses when the VIP is listed
/// with the VRRP MAC only. Policy routing sends everything from the VIP out of the
/// macvlan, with the virtual MAC as RFC 5798 wants. Waits for keepalived to create it.
/// Idempotent: call it again after the link was down (the kernel drops a device's routes
/// when it goes down).
pub fn route_vip_via_vmac(ns: &Netns, d: &VmDef, vrid: u8) {
    let dev = format!("vrrp.{vrid}");
    wait_until(
        &format!("{dev} up in {}", ns.name),
        Duration::from_secs(30),
        || {
            let o = ns.try_exec(&format!("ip -o link show {dev} up"));
            o.status.success() && !o.stdout.is_empty()
        },
    );
    let net = format!("{}.0/24", d.ip.rsplit_once('.').expect("IPv4").0);
    let rules = ns.exec("ip rule show");
    if !String::from_utf8_lossy(&rules.stdout).contains(&format!("from {VIP} lookup 100")) {
        ns.exec(&format!("ip rule add from {VIP} lookup 100"));
    }
    ns.exec(&format!("ip route replace {net} dev {dev} table 100"));
    ns.exec(&format!(
        "ip route replace default via {} dev {dev} table 100",
        d.gw
    ));
}

/// Whether `ip` (no prefix length) is configured on any interface of `ns`.
pub fn has_addr(ns: &Netns, ip: &str) -> bool {
    let out = ns.try_exec("ip -o addr show");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .any(|w| w.split('/').next() == Some(ip))
}
