//! The bpf(2) and rtnetlink calls aya 0.14 does not expose: the ifindex a link is
//! attached to (`bpf_link_info.{xdp,tcx}.ifindex`), used to tell a live pin from one whose
//! device is gone or whose ifindex now belongs to another device; opening, pinning and
//! detaching a link by id, and the XDP programs on a device (`IFLA_XDP`), used to take
//! over links another agent left (`links::Links::take_over`).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `BPF_LINK_TYPE_XDP` and `BPF_LINK_TYPE_TCX` (include/uapi/linux/bpf.h).
pub const LINK_TYPE_XDP: u32 = 6;
pub const LINK_TYPE_TCX: u32 = 11;

/// The part of `struct bpf_link_info` we read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawLinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// The device it is attached to; 0 once the device is gone (the link is defunct).
    pub ifindex: u32,
}

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info`: type, id, prog_id, then a union aligned to 8 bytes whose `xdp`
/// and `tcx` members both start with `__u32 ifindex`. The kernel accepts a buffer larger
/// than its struct as long as the tail is zero.
#[repr(C, align(8))]
struct LinkInfoBuf([u8; 256]);

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a properly sized, initialised bpf_attr prefix for `cmd`, and the
    // kernel only reads/writes within `size_of::<T>()` bytes (and the buffers it names).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `BPF_PROG_TEST_RUN`.
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `bpf_attr.test` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// What one `BPF_PROG_TEST_RUN` returned.
pub struct TestRun {
    /// The program's return value.
    pub retval: u32,
    /// The frame after the run (at most the `out_size` asked for).
    pub data_out: Vec<u8>,
    /// Mean duration of one run, in ns.
    pub duration_ns: u32,
}

/// One `BPF_PROG_TEST_RUN` of `prog` on `data`, starting from the context `ctx` when given,
/// `repeat` times (0 = once); keeps up to `out_size` bytes of the frame after it (0 = none).
/// The one home of the call: the agent's tracer and the tests' verdict runner use it.
pub fn prog_test_run(
    prog: BorrowedFd<'_>,
    data: &[u8],
    ctx: Option<&[u8]>,
    out_size: usize,
    repeat: u32,
) -> io::Result<TestRun> {
    let mut out = vec![0u8; out_size];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    if out_size > 0 {
        attr.data_size_out = out_size as u32;
        attr.data_out = out.as_mut_ptr() as u64;
    }
    if let Some(ctx) = ctx {
        attr.ctx_size_in = ctx.len() as u32;
        attr.ctx_in = ctx.as_ptr() as u64;
    }
    // The buffers `attr` names outlive the call; the kernel writes at most
    // `data_size_out` bytes into `out`.
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    out.truncate((attr.data_size_out as usize).min(out_size));
    Ok(TestRun {
        retval: attr.retval,
        data_out: out,
        duration_ns: attr.duration,
    })
}

/// Opens a pinned object; the fd is closed on drop.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        ..Default::default()
    };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Link info of the link pinned at `path`.
pub fn pinned_link_info(path: &Path) -> io::Result<RawLinkInfo> {
    link_info(&obj_get(path)?)
}

/// Opens the link of id `id` (CAP_SYS_ADMIN); the fd is closed on drop.
pub fn link_by_id(id: u32) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        link_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let fd = sys_bpf(
        BPF_LINK_GET_FD_BY_ID,
        &mut Attr {
            link_id: id,
            next_id: 0,
            open_flags: 0,
        },
    )?;
    // SAFETY: BPF_LINK_GET_FD_BY_ID returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the object `fd` at `path` (on a bpffs).
pub fn obj_pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    sys_bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Detaches a link from its hook whoever holds it (pins elsewhere stay, defunct).
pub fn link_detach(fd: &OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Attr {
        link_fd: u32,
    }
    sys_bpf(
        BPF_LINK_DETACH,
        &mut Attr {
            link_fd: fd.as_raw_fd() as u32,
        },
    )
    .map(drop)
}

/// Link info of an open link.
pub fn link_info(fd: &OwnedFd) -> io::Result<RawLinkInfo> {
    use std::os::fd::AsRawFd;
    let mut buf = LinkInfoBuf([0; 256]);
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: buf.0.len() as u32,
        info: buf.0.as_mut_ptr() as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let u32_at = |o: usize| u32::from_ne_bytes(buf.0[o..o + 4].try_into().expect("4 bytes"));
    Ok(RawLinkInfo {
        link_type: u32_at(0),
        id: u32_at(4),
        prog_id: u32_at(8),
        ifindex: u32_at(16),
    })
}

/// `statfs(2)` says `dir` is on a bpffs.
pub fn is_bpffs(dir: &Path) -> io::Result<bool> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: zeroed statfs is a valid out-parameter; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF memory to it (< 5.11).
pub fn raise_memlock() -> io::Result<()> {
    let rl = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether `ifname` is a tun/tap device (the kind qemu gives a VM), whose driver accepts
/// XDP frames redirected from any device (`tun_xdp_xmit`). A veth does only when its peer
/// runs NAPI, which the agent cannot see from here (the peer is in the VM's namespace).
pub fn is_tun(ifname: &str) -> bool {
    // Only tun devices have this attribute (drivers/net/tun.c, `tun_attr_group`).
    std::path::Path::new("/sys/class/net")
        .join(ifname)
        .join("tun_flags")
        .exists()
}

/// Every interface of this network namespace: (ifindex, name).
pub fn interfaces() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex returns a heap array terminated by a zero entry, freed below.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut p = head;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            out.push(((*p).if_index, name));
            p = p.add(1);
        }
        libc::if_freenameindex(head);
        Ok(out)
    }
}

/// The ids of the XDP programs attached to `ifindex` in this network namespace (native,
/// generic or offloaded), from an `RTM_GETLINK` request: `IFLA_XDP` → `IFLA_XDP_PROG_ID`,
/// or `IFLA_XDP_{DRV,SKB,HW}_PROG_ID` when several modes are in use.
pub fn xdp_prog_ids(ifindex: u32) -> io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    const IFLA_XDP: u16 = 43;
    const IFLA_XDP_PROG_ID: u16 = 4;
    const IFLA_XDP_DRV_PROG_ID: u16 = 5;
    const IFLA_XDP_SKB_PROG_ID: u16 = 6;
    const IFLA_XDP_HW_PROG_ID: u16 = 7;
    const NLA_TYPE_MASK: u16 = 0x3fff;
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // nlmsghdr (16 bytes) + ifinfomsg (16 bytes).
    let mut req = [0u8; 32];
    req[0..4].copy_from_slice(&32u32.to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_UNSPEC as u8;
    req[20..24].copy_from_slice(&ifindex.to_ne_bytes());
    // SAFETY: sending a buffer we own to a socket we own (the kernel is the peer).
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 65536];
    // SAFETY: receiving into a buffer we own, within its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let msg = &buf[..n as usize];
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed RTM_NEWLINK answer");
    let u16_at = |b: &[u8], o: usize| b.get(o..o + 2).map(|x| u16::from_ne_bytes([x[0], x[1]]));
    let u32_at = |b: &[u8], o: usize| {
        b.get(o..o + 4)
            .map(|x| u32::from_ne_bytes(x.try_into().expect("4 bytes")))
    };
    let len = u32_at(msg, 0).ok_or_else(bad)? as usize;
    let kind = u16_at(msg, 4).ok_or_else(bad)?;
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = u32_at(msg, 16).ok_or_else(bad)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    let msg = msg.get(..len).ok_or_else(bad)?;
    // Attributes (rtattr: u16 len, u16 type, payload padded to 4 bytes).
    let attrs = |b: &[u8]| -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut o = 0;
        while let (Some(l), Some(t)) = (u16_at(b, o), u16_at(b, o + 2)) {
            let l = l as usize;
            if l < 4 || o + l > b.len() {
                break;
            }
            out.push((t & NLA_TYPE_MASK, b[o + 4..o + l].to_vec()));
            o += (l + 3) & !3;
        }
        out
    };
    let mut ids = Vec::new();
    for (t, payload) in attrs(msg.get(32..).ok_or_else(bad)?) {
        if t != IFLA_XDP {
            continue;
        }
        for (t, v) in attrs(&payload) {
            if matches!(
                t,
                IFLA_XDP_PROG_ID
                    | IFLA_XDP_DRV_PROG_ID
                    | IFLA_XDP_SKB_PROG_ID
                    | IFLA_XDP_HW_PROG_ID
            ) && let Some(id) = u32_at(&v, 0)
                && id != 0
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

/// The kernel's count of frames `ifname` received (`rx_packets`: for a tap, what its VM
/// sent), from sysfs; `None` when unreadable.
pub fn rx_packets(ifname: &str) -> Option<u64> {
    if ifname.is_empty() || ifname.contains('/') {
        return None;
    }
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/statistics/rx_packets"))
        .ok()?
        .trim()
        .parse()
        .ok()
}
