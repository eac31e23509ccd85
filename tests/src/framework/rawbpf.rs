//! Tiny hand-assembled BPF programs for the test topology (an XDP_PASS on a VM's veth, a
//! VLAN push on a VM's egress, redirect stubs in benches), loaded through bpf(2)
//! directly: they are not part of the product, so they do not belong in its object.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

pub const PROG_TYPE_SCHED_CLS: u32 = 3;
pub const PROG_TYPE_XDP: u32 = 6;
pub const ATTACH_XDP: u32 = 37;
pub const ATTACH_TCX_INGRESS: u32 = 46;
pub const ATTACH_TCX_EGRESS: u32 = 47;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;

/// One BPF instruction (opcode, registers, offset, immediate).
pub const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (code as u64)
        | (((dst & 0xf) as u64) << 8)
        | (((src & 0xf) as u64) << 12)
        | ((off as u16 as u64) << 16)
        | ((imm as u32 as u64) << 32)
}

/// `r0 = imm; exit`.
pub const fn ret(imm: i32) -> [u64; 2] {
    [insn(0xb7, 0, 0, 0, imm), insn(0x95, 0, 0, 0, 0)]
}

fn sys_bpf(cmd: libc::c_long, attr: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: attr is a bpf_attr-sized buffer we own; pointers inside it outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), attr.len() as u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// Loads `insns` as a GPL program of `prog_type` (with `expected_attach` for tcx);
/// panics with the verifier log on failure. `name` is cut to 15 bytes.
pub fn load(prog_type: u32, expected_attach: u32, insns: &[u64], name: &str) -> OwnedFd {
    let license = c"GPL";
    let mut log = vec![0u8; 8192];
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&prog_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&1u32.to_ne_bytes());
    attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
    attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
    let n = name.len().min(15);
    attr[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
    attr[68..72].copy_from_slice(&expected_attach.to_ne_bytes());
    sys_bpf(BPF_PROG_LOAD, &attr).unwrap_or_else(|e| {
        panic!(
            "BPF_PROG_LOAD {name}: {e}; verifier log: {}",
            String::from_utf8_lossy(&log).trim_end_matches('\0')
        )
    })
}

/// Attaches `prog` to `ifindex` (in the calling thread's network namespace) with a BPF
/// link of `attach_type` (XDP, tcx ingress/egress); the link lives as long as the fd or
/// a pin of it.
pub fn link(prog: &OwnedFd, ifindex: u32, attach_type: u32) -> OwnedFd {
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    attr[8..12].copy_from_slice(&attach_type.to_ne_bytes());
    sys_bpf(BPF_LINK_CREATE, &attr)
        .unwrap_or_else(|e| panic!("BPF_LINK_CREATE type {attach_type} on ifindex {ifindex}: {e}"))
}

/// Pins a BPF object (program, link) at `path` on a bpffs.
pub fn pin(fd: &OwnedFd, path: &Path) {
    let c = CString::new(path.to_str().expect("utf-8 pin path")).expect("pin path");
    let mut attr = [0u8; 16];
    attr[0..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    // BPF_OBJ_PIN returns 0, not an fd: map the result by hand.
    // SAFETY: as in sys_bpf.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), attr.len() as u32) };
    assert_eq!(
        rc,
        0,
        "pin at {}: {}",
        path.display(),
        io::Error::last_os_error()
    );
}
