//! Network namespace guards: [`Netns`] (a namespace, deleted with everything in it on
//! Drop) and [`EnterNetns`] (the calling thread moved into one until Drop), and sending a
//! raw frame out of a device.

use std::{
    fs,
    os::fd::AsRawFd as _,
    process::{Command, Output},
    thread,
};

use super::{
    http::http_get,
    process::{cmd, run},
};

/// A network namespace, deleted (with every process still in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        cmd(&format!("ip netns add {name}"));
        let ns = Netns {
            name: name.to_string(),
        };
        ns.exec("ip link set lo up");
        ns
    }

    /// `ip netns exec <ns> <argv>`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs a whitespace-separated command line in the namespace; panics on failure.
    #[track_caller]
    pub fn exec(&self, line: &str) -> Output {
        let mut it = line.split_whitespace();
        let mut c = self.command(it.next().expect("empty command"));
        c.args(it);
        run(&mut c)
    }

    /// Runs a command line in the namespace and returns its output whatever the status.
    pub fn try_exec(&self, line: &str) -> Output {
        let mut it = line.split_whitespace();
        let mut c = self.command(it.next().expect("empty command"));
        c.args(it);
        c.output()
            .unwrap_or_else(|e| panic!("spawn {line} in {}: {e}", self.name))
    }

    /// ifindex of a link in this namespace.
    pub fn ifindex(&self, ifname: &str) -> u32 {
        let out = self.exec(&format!("cat /sys/class/net/{ifname}/ifindex"));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("ifindex")
    }

    /// A veth pair `name` / `<name>p`, both ends in this namespace and up: what a program
    /// sends into `name` arrives on `<name>p` (and is counted in `name`'s `tx_packets`).
    /// Removed with the namespace.
    pub fn add_veth_pair(&self, name: &str) {
        self.exec(&format!("ip link add {name} type veth peer name {name}p"));
        self.exec(&format!("ip link set {name} up"));
        self.exec(&format!("ip link set {name}p up"));
    }

    /// Packets a link in this namespace has transmitted (its `tx_packets` statistic).
    pub fn tx_packets(&self, ifname: &str) -> u64 {
        let out = self.exec(&format!(
            "cat /sys/class/net/{ifname}/statistics/tx_packets"
        ));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("tx_packets of {ifname}: {e}"))
    }

    /// Runs `f` on a thread that has entered this namespace (setns only moves the calling
    /// thread), e.g. to open a TCP connection to a process listening inside it.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        thread::scope(|s| {
            s.spawn(|| {
                let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns on a valid netns fd affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }

    /// HTTP GET from inside the namespace; `None` when nothing answers.
    pub fn http_get(&self, addr: &str, path: &str) -> Option<(u16, String)> {
        self.within(|| http_get(addr, path))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill whatever still runs inside (agents, etcd, pings) before deleting it.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Moves the current thread into a network namespace until dropped (setns affects only
/// the calling thread).
pub struct EnterNetns {
    orig: fs::File,
}

impl EnterNetns {
    pub fn new(name: &str) -> Self {
        let orig = fs::File::open("/proc/thread-self/ns/net").expect("own netns");
        let target = fs::File::open(format!("/var/run/netns/{name}")).expect("netns");
        // SAFETY: setns on valid netns fds affects only this thread.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
        EnterNetns { orig }
    }
}

impl Drop for EnterNetns {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// Sends one Ethernet frame out of `dev` (in the current thread's namespace).
pub fn send_raw(dev: &str, frame: &[u8]) {
    let name = std::ffi::CString::new(dev).unwrap();
    // SAFETY: plain libc calls with valid arguments; the socket is closed below.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        assert!(ifindex > 0, "no device {dev}");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        let rc = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(rc, frame.len() as isize, "send on {dev}: {err}");
    }
}
