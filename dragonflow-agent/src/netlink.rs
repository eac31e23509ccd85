//! Tap watcher: an rtnetlink socket (the `rtnetlink` crate) subscribed to link
//! notifications is only a trigger; on any link message (or a lost one: the kernel's
//! ENOBUFS reaches us as an overrun message) the controller rescans the interfaces with
//! `if_nameindex(3)`. Rescanning instead of parsing messages keeps this small and immune
//! to missed or reordered events.

use std::{collections::BTreeMap, io};

use futures_util::StreamExt as _;
use rtnetlink::MulticastGroup;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::datapath::sys;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open an rtnetlink socket subscribed to link changes")]
    Socket(#[source] io::Error),
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

/// Sends `()` on `tx` whenever links change. Returns once the socket is subscribed, so
/// that a scan made after this call misses nothing.
pub fn spawn(tx: mpsc::Sender<()>) -> Result<(), NetlinkError> {
    // The socket is bound to the group before this returns; the handle (for requests)
    // is not needed.
    let (conn, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
            .map_err(NetlinkError::Socket)?;
    tokio::spawn(conn);
    tokio::spawn(async move {
        while messages.next().await.is_some() {
            debug!("link change");
            // A full channel already holds a pending rescan.
            let _ = tx.try_send(());
        }
        warn!("rtnetlink socket closed; tap changes are now seen by the periodic rescan only");
    });
    Ok(())
}
