//! The two bpf(2) calls aya 0.14 does not expose: the ifindex a pinned link is attached
//! to (`bpf_link_info.{xdp,tcx}.ifindex`), used to tell a live pin from one whose device
//! is gone or whose ifindex now belongs to another device.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

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
    use std::os::fd::AsRawFd;
    let fd = obj_get(path)?;
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
    #[allow(clippy::unnecessary_cast)]
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
