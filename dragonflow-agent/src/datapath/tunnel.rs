//! The chassis' VXLAN device (`--tunnel-dev`, default `df-vxlan`) in external
//! (collect-metadata) mode: one device for every network and every remote chassis; the TC
//! programs set the VNI and the remote address per packet (`bpf_skb_set_tunnel_key`), and
//! `df_from_tunnel` on its tcx ingress reads them from arriving frames.
//!
//! Created and checked over rtnetlink (the `rtnetlink` crate): what `ip link add NAME type
//! vxlan external dstport 4789` would send. The device's own MTU stays at the kernel's
//! default (1500 on a 1500 underlay minus nothing: the encapsulation overhead is the VMs'
//! business, hence their 1450).

use std::{future::Future, io};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle, LinkMessageBuilder, LinkUnspec, LinkVxlan,
    packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
};

/// IANA's VXLAN port.
pub const VXLAN_PORT: u16 = 4789;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot open an rtnetlink socket")]
    Socket(#[source] io::Error),
    #[error("cannot {what} {name}{}", hint(.source))]
    Netlink {
        what: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{name} vanished while it was being checked")]
    Missing { name: String },
    #[error(
        "{name} exists but is not a VXLAN device in external mode on port {VXLAN_PORT} \
         ({found}); delete it (`ip link del {name}`) or choose another --tunnel-dev"
    )]
    WrongKind { name: String, found: String },
}

/// What an operator can do about the usual failures.
fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => " (the agent needs CAP_NET_ADMIN)",
        Some(libc::EOPNOTSUPP) => " (is the kernel's vxlan module available?)",
        Some(libc::EEXIST) => {
            " (a device of that name, or another VXLAN device in external mode on the same \
             UDP port, already exists in this namespace)"
        }
        _ => "",
    }
}

/// The io::Error inside an rtnetlink error (the kernel's errno when it refused).
fn io_error(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// Runs `f` with an rtnetlink handle on a thread of its own. The callers (the controller,
/// at start and when the device disappears) are synchronous and may run on a runtime
/// thread, where a runtime cannot be entered again; these are a few calls per start.
fn with_handle<T, F, Fut>(f: F) -> Result<T, TunnelError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, TunnelError>>,
{
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(TunnelError::Socket)?;
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(TunnelError::Socket)?;
                let conn = tokio::spawn(conn);
                let r = f(handle).await;
                conn.abort();
                r
            })
        });
        worker
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Creates the device and brings it up.
pub fn create(name: &str) -> Result<(), TunnelError> {
    // No VNI: in external mode the programs set it per packet.
    let msg = LinkMessageBuilder::<LinkVxlan>::new(name)
        .collect_metadata(true)
        .port(VXLAN_PORT)
        .up()
        .build();
    with_handle(|h| async move {
        h.link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| TunnelError::Netlink {
                what: "create the VXLAN device",
                name: name.to_string(),
                source: io_error(e),
            })
    })
}

/// Checks that an existing device is usable (a VXLAN in external mode on our port) and
/// brings it up if it is down.
pub fn adopt(name: &str) -> Result<(), TunnelError> {
    with_handle(|h| async move {
        let link = h
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
            .map_err(|e| TunnelError::Netlink {
                what: "read",
                name: name.to_string(),
                source: io_error(e),
            })?
            .ok_or_else(|| TunnelError::Missing {
                name: name.to_string(),
            })?;
        let found = inspect(&link);
        if !found.usable() {
            return Err(TunnelError::WrongKind {
                name: name.to_string(),
                found: found.to_string(),
            });
        }
        if !found.up {
            h.link()
                .set(LinkUnspec::new_with_index(link.header.index).up().build())
                .execute()
                .await
                .map_err(|e| TunnelError::Netlink {
                    what: "bring up",
                    name: name.to_string(),
                    source: io_error(e),
                })?;
        }
        Ok(())
    })
}

/// What a link is, as far as the tunnel cares.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    kind: String,
    external: bool,
    port: u16,
    up: bool,
}

impl Found {
    fn usable(&self) -> bool {
        self.kind == "vxlan" && self.external && self.port == VXLAN_PORT
    }
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kind {}, external {}, port {}",
            self.kind, self.external, self.port
        )
    }
}

fn inspect(link: &LinkMessage) -> Found {
    let mut found = Found {
        kind: "unknown".into(),
        external: false,
        port: 0,
        up: link.header.flags.contains(LinkFlags::Up),
    };
    let infos = link.attributes.iter().flat_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.as_slice(),
        _ => &[],
    });
    for info in infos {
        match info {
            LinkInfo::Kind(k) => found.kind = k.to_string(),
            LinkInfo::Data(InfoData::Vxlan(data)) => {
                for d in data {
                    match d {
                        InfoVxlan::CollectMetadata(on) => found.external = *on,
                        InfoVxlan::Port(p) => found.port = *p,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::link::InfoKind;

    use super::*;

    fn link(kind: InfoKind, data: Option<Vec<InfoVxlan>>, up: bool) -> LinkMessage {
        let mut m = LinkMessage::default();
        if up {
            m.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        }
        let mut infos = vec![LinkInfo::Kind(kind)];
        if let Some(d) = data {
            infos.push(LinkInfo::Data(InfoData::Vxlan(d)));
        }
        m.attributes.push(LinkAttribute::LinkInfo(infos));
        m
    }

    #[test]
    fn inspects_links() {
        let ours = || {
            Some(vec![
                InfoVxlan::Id(0),
                InfoVxlan::CollectMetadata(true),
                InfoVxlan::Port(VXLAN_PORT),
            ])
        };
        let good = inspect(&link(InfoKind::Vxlan, ours(), true));
        assert!(good.usable() && good.up);
        let down = inspect(&link(InfoKind::Vxlan, ours(), false));
        assert!(down.usable() && !down.up);
        let vni = inspect(&link(
            InfoKind::Vxlan,
            Some(vec![InfoVxlan::Id(42), InfoVxlan::Port(VXLAN_PORT)]),
            true,
        ));
        assert!(!vni.usable());
        let bridge = inspect(&link(InfoKind::Bridge, None, true));
        assert!(!bridge.usable());
        assert_eq!(bridge.to_string(), "kind bridge, external false, port 0");
        assert!(!inspect(&LinkMessage::default()).usable());
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = TunnelError::Netlink {
            what: "create the VXLAN device",
            name: "df-vxlan".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert_eq!(
            e.to_string(),
            "cannot create the VXLAN device df-vxlan (the agent needs CAP_NET_ADMIN)"
        );
    }
}
