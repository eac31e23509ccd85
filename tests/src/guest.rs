//! A real guest behind a real tap: Debian's cloud kernel (downloaded and unpacked by
//! `cargo xtask setup`, see [`crate::guest_kernel`]) booted by qemu with TCG (KVM is not
//! available on these machines) from a minimal initramfs this module writes: busybox,
//! the virtio-net modules and their dependencies, and an `/init` that configures eth0
//! from the kernel command line and then serves shell commands on a second serial port.
//!
//! The guest's NIC is `virtio-net-pci` with its default offloads (checksum offload, TSO,
//! GRO) on a tap device created in the hypervisor namespace: exactly the frames a
//! production VM sends (CHECKSUM_PARTIAL segments, GSO super-frames) reach the datapath.
//!
//! Everything is a guard: dropping a [`Guest`] kills qemu, deletes its tap and removes its
//! temporary directory (initramfs, sockets, logs), also when a test panics.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Cursor, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use crate::{guest_kernel, harness::Hypervisor};

/// Where Debian's busybox-static puts its binary (installed by `cargo xtask setup`).
const BUSYBOX: &str = "/bin/busybox";

/// The modules eth0 needs, loaded with their dependencies (the cloud kernel builds virtio,
/// virtio_pci and virtio_net as modules; PCI and the 8250 serial ports are built in).
const NIC_MODULES: &[&str] = &["virtio_pci", "virtio_net"];

/// What the guest prints on the command channel once eth0 is configured.
const READY: &str = "@@DF-READY";
/// Ends every command's output: `\n@@DF-END <id> <exit status>\n`.
const END: &str = "@@DF-END";

/// How long a boot may take. TCG boots the cloud kernel in 3–6 s on an idle machine; the
/// CI machine is shared, so the deadline is generous (it is a deadline, not a sleep).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// PID 1 of the guest. Kernel command line parameters `df.<key>=<value>` become shell
/// variables `df_<key>` (addresses, gateways, MTU). The command channel is /dev/ttyS1 in
/// raw mode: the host writes `<id> <shell command>\n`, the guest answers with the
/// command's output (stdout and stderr) and `\n@@DF-END <id> <status>\n`.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp
exec </dev/console >/dev/console 2>&1
for m in $(cat /modules); do
    insmod "/lib/modules/$m" || echo "DF-INIT: insmod $m failed"
done
for a in $(cat /proc/cmdline); do
    case "$a" in
        df.*=*) k="${a%%=*}"; eval "df_${k#df.}='${a#*=}'" ;;
    esac
done
# virtio_net probes asynchronously after insmod: poll for eth0 (bounded).
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 600 ]; do usleep 50000; i=$((i + 1)); done
ip link set lo up
ip link set eth0 mtu "$df_mtu"
ip link set eth0 up
ip addr add "$df_ip4" dev eth0
ip -6 addr add "$df_ip6" dev eth0
ip route add default via "$df_gw4"
ip -6 route add default via "$df_gw6"
exec 3<>/dev/ttyS1
stty raw -echo <&3
printf '@@DF-READY\n' >&3
while read -r id cmd <&3; do
    sh -c "$cmd" </dev/null >/tmp/df-out 2>&1 3>&-
    rc=$?
    cat /tmp/df-out >&3
    printf '\n@@DF-END %s %s\n' "$id" "$rc" >&3
done
echo "DF-INIT: command channel closed"
poweroff -f
"#;

/// The unpacked guest kernel.
pub struct Kernel {
    /// `boot/vmlinuz-<version>`.
    pub image: PathBuf,
    /// `lib/modules/<version>`.
    pub modules: PathBuf,
}

/// The kernel `cargo xtask setup` unpacked; panics with the fix when there is none.
pub fn kernel() -> Kernel {
    let root = Path::new(guest_kernel::CACHE_DIR).join(guest_kernel::CURRENT);
    let find = |dir: &Path, prefix: &str| -> Option<(PathBuf, String)> {
        fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix(prefix).map(|v| (e.path(), v.to_string()))
        })
    };
    let (image, version) = find(&root.join("boot"), "vmlinuz-").unwrap_or_else(|| {
        panic!(
            "no guest kernel in {}/boot: run `cargo xtask setup` (it downloads {}'s kernel \
             package into {})",
            root.display(),
            guest_kernel::META_PACKAGE,
            guest_kernel::CACHE_DIR
        )
    });
    let modules = root.join("lib/modules").join(&version);
    assert!(modules.is_dir(), "{} is missing", modules.display());
    Kernel { image, modules }
}

/// The modules named by `depends=` in a module's `.modinfo` section (NUL-separated
/// `key=value` strings; what `modinfo -F depends` prints). The package ships no
/// modules.dep (depmod runs at install time, which we skip), so this is read from the
/// files themselves.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Every module file of the kernel by module name (`-` and `_` are the same to the kernel).
fn module_files(dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            module_files(&p, out);
        } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
            // Debian 12's 6.1 kernels ship plain `.ko` files (no `.ko.xz`): insmod in the
            // guest loads them as they are.
            if let Some(stem) = name.strip_suffix(".ko") {
                out.insert(stem.replace('-', "_"), p);
            }
        }
    }
}

/// `wanted` and their dependencies, each after what it depends on.
pub fn module_load_order(k: &Kernel, wanted: &[&str]) -> Vec<PathBuf> {
    let mut files = BTreeMap::new();
    module_files(&k.modules.join("kernel"), &mut files);
    fn visit(
        name: &str,
        files: &BTreeMap<String, PathBuf>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<PathBuf>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        let path = files.get(name).unwrap_or_else(|| {
            panic!("module {name} is not in the guest kernel (compressed, or not built?)")
        });
        let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        for dep in module_depends(&bytes) {
            visit(&dep, files, seen, order);
        }
        order.push(path.clone());
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for w in wanted {
        visit(w, &files, &mut seen, &mut order);
    }
    order
}

/// The initramfs (newc cpio, uncompressed: the kernel unpacks it as it is, and skipping
/// compression saves TCG time at boot): `/init`, busybox, the NIC modules.
pub fn initramfs(k: &Kernel) -> Vec<u8> {
    use cpio::NewcBuilder;
    let dir = |name: &str| (NewcBuilder::new(name).mode(0o040755), Vec::new());
    let file = |name: &str, mode: u32, data: Vec<u8>| (NewcBuilder::new(name).mode(mode), data);
    let mut entries = vec![
        dir("bin"),
        dir("dev"),
        dir("lib"),
        dir("lib/modules"),
        dir("proc"),
        dir("sys"),
        dir("tmp"),
        // The kernel opens /dev/console for init before /init can mount devtmpfs.
        (
            NewcBuilder::new("dev/console")
                .mode(0o020600)
                .rdev_major(5)
                .rdev_minor(1),
            Vec::new(),
        ),
        file("init", 0o100755, INIT.as_bytes().to_vec()),
        file(
            "bin/busybox",
            0o100755,
            fs::read(BUSYBOX).unwrap_or_else(|e| {
                panic!("read {BUSYBOX} ({e}): run `cargo xtask setup` (busybox-static)")
            }),
        ),
    ];
    let mut names = Vec::new();
    for (i, ko) in module_load_order(k, NIC_MODULES).iter().enumerate() {
        // Numbered so that the load order is also visible in the archive.
        let name = format!("{i:02}-{}", ko.file_name().expect("file").to_string_lossy());
        let data = fs::read(ko).unwrap_or_else(|e| panic!("read {}: {e}", ko.display()));
        entries.push(file(&format!("lib/modules/{name}"), 0o100644, data));
        names.push(name);
    }
    entries.push(file("modules", 0o100644, names.join("\n").into_bytes()));
    let inputs = entries
        .into_iter()
        .map(|(b, data)| (b.nlink(1), Cursor::new(data)));
    cpio::write_cpio(inputs, Cursor::new(Vec::new()))
        .expect("write initramfs")
        .into_inner()
}

/// How a guest is addressed: what DHCP and the metadata service would give a VM of its
/// network (the datapath has neither, so the test passes them on the kernel command line).
#[derive(Clone, Debug)]
pub struct GuestSpec {
    /// Short name: temporary files and the qemu process are named after it.
    pub name: String,
    /// The tap qemu opens, created in the hypervisor namespace.
    pub tap: String,
    pub mac: String,
    /// `192.0.2.16/24`, `2001:db8:1::16/64`.
    pub ip4: String,
    pub ip6: String,
    pub gw4: String,
    pub gw6: String,
    /// The network's MTU, as Neutron's DHCP would advertise it.
    pub mtu: u32,
}

/// The command channel: a Unix socket qemu connects to the guest's second serial port.
struct Chan {
    stream: UnixStream,
    buf: Vec<u8>,
    seq: u64,
}

impl Chan {
    /// Reads until `marker` followed by a newline is in the buffer; returns what came
    /// before the marker and the rest of its line, and keeps what follows.
    fn read_until(&mut self, marker: &str, deadline: Instant) -> Result<(Vec<u8>, String), String> {
        let m = marker.as_bytes();
        loop {
            if let Some(at) = self.buf.windows(m.len()).position(|w| w == m)
                && let Some(nl) = self.buf[at..].iter().position(|&b| b == b'\n')
            {
                let line = String::from_utf8_lossy(&self.buf[at + m.len()..at + nl])
                    .trim()
                    .to_string();
                let before = self.buf[..at].to_vec();
                self.buf.drain(..at + nl + 1);
                return Ok((before, line));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no {marker} before the deadline; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
            self.stream
                .set_read_timeout(Some(left.min(Duration::from_millis(500))))
                .expect("set_read_timeout");
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(format!(
                        "command channel closed; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("command channel: {e}")),
            }
        }
    }
}

/// A booted guest. Dropping it kills qemu and deletes its tap and temporary files.
pub struct Guest {
    pub spec: GuestSpec,
    hv_ns: String,
    dir: PathBuf,
    child: Child,
    chan: Mutex<Chan>,
    /// From spawning qemu to `/init` reporting eth0 configured.
    pub boot_time: Duration,
}

impl Guest {
    /// Creates the tap `spec.tap` in `hv`'s namespace and boots a guest on it; returns once
    /// the guest's eth0 is configured and its command channel answers.
    pub fn boot(hv: &Hypervisor, spec: GuestSpec) -> Guest {
        let k = kernel();
        let dir = std::env::temp_dir().join(format!("{}-{}", hv.ns.name, spec.name));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("guest dir");
        let initrd = dir.join("initramfs.cpio");
        fs::write(&initrd, initramfs(&k)).expect("write initramfs");
        hv.ns
            .exec(&format!("ip tuntap add dev {} mode tap", spec.tap));
        hv.ns.exec(&format!("ip link set {} up", spec.tap));
        let sock = dir.join("cmd.sock");
        let console = dir.join("console.log");
        let append = format!(
            "console=ttyS0 quiet panic=-1 df.ip4={} df.ip6={} df.gw4={} df.gw6={} df.mtu={}",
            spec.ip4, spec.ip6, spec.gw4, spec.gw6, spec.mtu
        );
        let start = Instant::now();
        let child = hv
            .ns
            .command("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "256", "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-no-reboot")
            .arg("-kernel")
            .arg(&k.image)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &append])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            // wait=on: qemu starts the guest only once we are connected, so nothing the
            // guest writes on the channel is lost.
            .arg("-serial")
            .arg(format!("unix:{},server=on,wait=on", sock.display()))
            .args([
                "-netdev",
                &format!(
                    "tap,id=n0,ifname={},script=no,downscript=no,vhost=off",
                    spec.tap
                ),
            ])
            // Offloads at their defaults; no option ROM (no network boot here).
            .args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={},romfile=", spec.mac),
            ])
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("qemu.out")).expect("qemu.out"))
            .stderr(fs::File::create(dir.join("qemu.err")).expect("qemu.err"))
            .spawn()
            .expect("spawn qemu-system-x86_64 (run `cargo xtask setup`)");
        let mut g = Guest {
            spec,
            hv_ns: hv.ns.name.clone(),
            dir,
            child,
            chan: Mutex::new(Chan {
                // Replaced below once qemu listens.
                stream: UnixStream::pair().expect("socketpair").0,
                buf: Vec::new(),
                seq: 0,
            }),
            boot_time: Duration::ZERO,
        };
        let deadline = start + BOOT_TIMEOUT;
        let stream = loop {
            if let Ok(s) = UnixStream::connect(&sock) {
                break s;
            }
            if let Ok(Some(st)) = g.child.try_wait() {
                panic!("qemu exited ({st}) before listening:\n{}", g.diagnostics());
            }
            assert!(
                Instant::now() < deadline,
                "qemu never listened on {}:\n{}",
                sock.display(),
                g.diagnostics()
            );
            thread::sleep(Duration::from_millis(20));
        };
        g.chan.get_mut().expect("chan").stream = stream;
        let ready = g.chan.get_mut().expect("chan").read_until(READY, deadline);
        if let Err(e) = ready {
            panic!(
                "guest {} did not boot: {e}\n{}",
                g.spec.name,
                g.diagnostics()
            );
        }
        g.boot_time = start.elapsed();
        g
    }

    /// The console log and qemu's stderr, for failure messages.
    pub fn diagnostics(&self) -> String {
        let read = |n: &str| fs::read_to_string(self.dir.join(n)).unwrap_or_default();
        let console = read("console.log");
        let tail: Vec<&str> = console.lines().rev().take(60).collect();
        format!(
            "---- qemu stderr ----\n{}---- guest console (last lines) ----\n{}",
            read("qemu.err"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// Runs a shell command line (no newline) in the guest; its exit status and output.
    pub fn sh_status(&self, cmd: &str, timeout: Duration) -> (i32, String) {
        assert!(!cmd.contains('\n'), "one line per command: {cmd:?}");
        let mut chan = self.chan.lock().expect("chan");
        chan.seq += 1;
        let id = chan.seq;
        chan.stream
            .write_all(format!("{id} {cmd}\n").as_bytes())
            .expect("write to the guest's command channel");
        let marker = format!("{END} {id} ");
        match chan.read_until(&marker, Instant::now() + timeout) {
            Ok((out, status)) => {
                let mut out = String::from_utf8_lossy(&out).into_owned();
                // The newline the guest writes before the marker.
                if out.ends_with('\n') {
                    out.pop();
                }
                (status.parse().unwrap_or(-1), out)
            }
            Err(e) => {
                drop(chan);
                panic!(
                    "guest {}: `{cmd}`: {e}\n{}",
                    self.spec.name,
                    self.diagnostics()
                )
            }
        }
    }

    /// Runs a command in the guest, panicking with its output unless it exits 0.
    #[track_caller]
    pub fn sh(&self, cmd: &str) -> String {
        let (st, out) = self.sh_status(cmd, Duration::from_secs(120));
        assert_eq!(
            st, 0,
            "guest {}: `{cmd}` exited {st}:\n{out}",
            self.spec.name
        );
        out
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("---- guest {} ----\n{}", self.spec.name, self.diagnostics());
        }
        // `ip netns exec` execs qemu: this pid is qemu itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.hv_ns, "ip", "link", "del"])
            .arg(&self.spec.tap)
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::module_depends;

    #[test]
    fn modinfo_depends() {
        let ko = b"\x7fELF...\0license=GPL\0depends=virtio,virtio_ring,net_failover\0intree=Y\0";
        assert_eq!(
            module_depends(ko),
            ["virtio", "virtio_ring", "net_failover"]
        );
        assert!(module_depends(b"\0depends=\0name=x\0").is_empty());
        assert!(module_depends(b"no modinfo").is_empty());
    }
}
