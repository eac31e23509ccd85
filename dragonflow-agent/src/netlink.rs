//! Tap watcher: an rtnetlink socket subscribed to RTMGRP_LINK is only a trigger; on any
//! link message (or a lost one: ENOBUFS) the controller rescans the interfaces with
//! `if_nameindex(3)`. Rescanning instead of parsing messages keeps this small and immune
//! to missed or reordered events.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::{debug, warn};

use crate::datapath::sys;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open an rtnetlink socket")]
    Socket(#[source] io::Error),
    #[error("cannot bind the rtnetlink socket to RTMGRP_LINK")]
    Bind(#[source] io::Error),
    #[error("cannot list interfaces")]
    Scan(#[source] io::Error),
}

/// name → ifindex of every interface in this namespace.
pub fn scan() -> Result<BTreeMap<String, u32>, NetlinkError> {
    Ok(sys::interfaces()
        .map_err(NetlinkError::Scan)?
        .into_iter()
        .map(|(i, n)| (n, i))
        .collect())
}

fn open() -> Result<OwnedFd, NetlinkError> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(NetlinkError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_nl is valid; we set family and groups.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa.nl_groups = libc::RTMGRP_LINK as u32;
    // SAFETY: sa is a valid sockaddr_nl of the given length.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(NetlinkError::Bind(io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Sends `()` on `tx` whenever links change. Returns once the socket is subscribed, so
/// that a scan made after this call misses nothing.
pub fn spawn(tx: mpsc::Sender<()>) -> Result<(), NetlinkError> {
    // SAFETY: the OwnedFd is moved into the AsyncFd and stays open as long as it lives.
    let fd = unsafe { AsyncFd::register(open()?) }
        .map_err(|e| NetlinkError::Socket(e.into_parts().1))?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut guard = match fd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    warn!(
                        "rtnetlink socket: {e}; tap changes are now seen by the periodic rescan only"
                    );
                    return;
                }
            };
            let mut changed = false;
            loop {
                // SAFETY: buf is valid for buf.len() bytes.
                let n = unsafe {
                    libc::recv(
                        fd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                    )
                };
                if n >= 0 {
                    changed = true;
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    // The kernel dropped messages: rescanning recovers everything.
                    Some(libc::ENOBUFS) => changed = true,
                    Some(libc::EINTR) => {}
                    _ => {
                        warn!("rtnetlink recv: {e}");
                        break;
                    }
                }
            }
            guard.clear_ready();
            if changed {
                debug!("link change");
                // A full channel already holds a pending rescan.
                let _ = tx.try_send(());
            }
        }
    });
    Ok(())
}
