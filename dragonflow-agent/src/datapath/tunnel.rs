//! The chassis' VXLAN device (`--tunnel-dev`, default `df-vxlan`) in external
//! (collect-metadata) mode: one device for every network and every remote chassis; the TC
//! programs set the VNI and the remote address per packet (`bpf_skb_set_tunnel_key`), and
//! `df_from_tunnel` on its tcx ingress reads them from arriving frames.
//!
//! Managed with iproute2 (`ip link add NAME type vxlan external dstport 4789`): a few
//! calls at start or when the device disappears do not justify an rtnetlink encoder.
//! The device's own MTU stays at the kernel's default (1500 on a 1500 underlay minus
//! nothing: the encapsulation overhead is the VMs' business, hence their 1450).

use std::{io, process::Command};

/// IANA's VXLAN port.
pub const VXLAN_PORT: u16 = 4789;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot run `ip {args}` (is iproute2 installed and in PATH?)")]
    Spawn {
        args: String,
        #[source]
        source: io::Error,
    },
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error(
        "{name} exists but is not a VXLAN device in external mode on port {VXLAN_PORT} \
         ({found}); delete it (`ip link del {name}`) or choose another --tunnel-dev"
    )]
    WrongKind { name: String, found: String },
}

fn ip(args: &[&str]) -> Result<String, TunnelError> {
    let joined = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| TunnelError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(TunnelError::Failed {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates the device and brings it up.
pub fn create(name: &str) -> Result<(), TunnelError> {
    let port = VXLAN_PORT.to_string();
    ip(&[
        "link", "add", name, "type", "vxlan", "external", "dstport", &port,
    ])?;
    ip(&["link", "set", name, "up"])?;
    Ok(())
}

/// Checks that an existing device is usable (a VXLAN in external mode on our port) and
/// brings it up if it is down.
pub fn adopt(name: &str) -> Result<(), TunnelError> {
    let json = ip(&["-d", "-j", "link", "show", "dev", name])?;
    let (ok, up, found) = inspect(&json);
    if !ok {
        return Err(TunnelError::WrongKind {
            name: name.to_string(),
            found,
        });
    }
    if !up {
        ip(&["link", "set", name, "up"])?;
    }
    Ok(())
}

/// (usable, up, description) from `ip -d -j link show dev NAME`.
fn inspect(json: &str) -> (bool, bool, String) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let link = &v[0];
    let kind = link["linkinfo"]["info_kind"].as_str().unwrap_or("unknown");
    let data = &link["linkinfo"]["info_data"];
    let external = data["external"].as_bool().unwrap_or(false);
    let port = data["port"].as_u64().unwrap_or(0);
    let up = link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    let ok = kind == "vxlan" && external && port == u64::from(VXLAN_PORT);
    (
        ok,
        up,
        format!("kind {kind}, external {external}, port {port}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspects_ip_json() {
        let good = r#"[{"ifindex":2,"ifname":"df-vxlan","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"linkinfo":{"info_kind":"vxlan","info_data":{"external":true,"id":0,"port":4789}}}]"#;
        assert!(inspect(good).0);
        assert!(inspect(good).1);
        let down = good.replace("\"UP\",", "");
        assert_eq!(inspect(&down), (true, false, inspect(good).2));
        let vni =
            r#"[{"flags":[],"linkinfo":{"info_kind":"vxlan","info_data":{"id":42,"port":4789}}}]"#;
        assert!(!inspect(vni).0);
        let bridge = r#"[{"flags":["UP"],"linkinfo":{"info_kind":"bridge"}}]"#;
        assert_eq!(inspect(bridge).2, "kind bridge, external false, port 0");
        assert!(!inspect("garbage").0);
    }
}
