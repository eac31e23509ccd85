//! Ports that cannot coexist: the uniqueness rules between lports, in one place for
//! `dfctl` (which refuses the second port) and the agent (which must pick one when etcd
//! holds both anyway, written by another tool or before the rule existed).
//!
//! Two ports conflict when, on the same lswitch,
//! - they have the same MAC or the same fixed IP (Neutron's MacAddressInUse and
//!   IpAddressAlreadyAllocated), or
//! - a single-IP allowed address pair of one is a fixed IP of the other: the network's
//!   neighbour table maps an address to one port, so the owner of the fixed IP and the
//!   holder of the pair would fight over it (a VIP must be an address no port owns;
//!   sharing it between ports as pairs is what pairs are for, and is not a conflict);
//!
//! or, on any lswitch, when both are bound to the same chassis under the same tap name
//! ([`LPort::tap_name`]: the binding's `ifname`, else derived from the id): one tap
//! carries one port.
//!
//! CIDR pairs are not compared: a CIDR routed through a VM (the reason for one) usually
//! covers other ports' addresses by design.
//!
//! Two users: `dfctl` checks a port against the others before writing it ([`check_port`],
//! [`PortIndex`] for a whole file), and the agent keeps, for the ports etcd already holds,
//! which port holds each address and tap ([`claims::ClaimIndex`]: the older one wins, and
//! MACs are not compared there, since the datapath tells ports apart by tap and address).

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use super::{LPort, LRouter, MacAddr};

pub mod claims;

/// Why a port cannot be written next to another one. `other` is the port already there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortConflict {
    #[error("MAC address {mac} is already used by lport {other} on lswitch {lswitch}")]
    Mac {
        mac: MacAddr,
        other: String,
        lswitch: String,
    },
    #[error("fixed IP {ip} is already used by lport {other} on lswitch {lswitch}")]
    FixedIp {
        ip: IpAddr,
        other: String,
        lswitch: String,
    },
    #[error(
        "allowed address pair {ip} is a fixed IP of lport {other} on lswitch {lswitch}; \
         a pair may share an address with other pairs, not with a port's fixed IP"
    )]
    AapIsFixedIp {
        ip: IpAddr,
        other: String,
        lswitch: String,
    },
    #[error(
        "fixed IP {ip} is an allowed address pair of lport {other} on lswitch {lswitch}; \
         remove the pair from {other} first"
    )]
    FixedIpIsAap {
        ip: IpAddr,
        other: String,
        lswitch: String,
    },
    #[error(
        "tap {tap} on chassis {chassis} is already bound to lport {other} \
         (the tap name is the binding's ifname, else tap + the first 11 characters of the id)"
    )]
    Tap {
        chassis: String,
        tap: String,
        other: String,
    },
    /// `what` is "MAC address" or "fixed IP".
    #[error(
        "{what} {value} is already used by lrouter {router} interface {iface} on lswitch {lswitch}"
    )]
    RouterAddress {
        what: &'static str,
        value: String,
        router: String,
        iface: String,
        lswitch: String,
    },
}

impl PortConflict {
    /// The port (or, for [`PortConflict::RouterAddress`], the router) already there.
    pub fn other(&self) -> &str {
        match self {
            PortConflict::Mac { other, .. }
            | PortConflict::FixedIp { other, .. }
            | PortConflict::AapIsFixedIp { other, .. }
            | PortConflict::FixedIpIsAap { other, .. }
            | PortConflict::Tap { other, .. } => other,
            PortConflict::RouterAddress { router, .. } => router,
        }
    }
}

/// What a set of ports occupies, to check further ports against in constant time per
/// address (a bulk write of 10,000 ports cannot afford a scan per port).
///
/// A port is checked against every indexed port of another id, so re-checking a port
/// against an index that already holds its own (older) record finds no conflict with
/// itself. Entries of a port are never removed: build the index from the ports that stay.
#[derive(Clone, Debug, Default)]
pub struct PortIndex {
    macs: HashMap<(String, MacAddr), String>,
    fixed: HashMap<(String, IpAddr), String>,
    /// Single-IP pairs: several ports may list one.
    aaps: HashMap<(String, IpAddr), BTreeSet<String>>,
    /// (chassis, tap name) of bound ports.
    taps: HashMap<(String, String), String>,
}

impl PortIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// An index of `ports` as they are (conflicts among them are not looked for: the
    /// first port to claim an address keeps it in the index).
    pub fn of<'a>(ports: impl IntoIterator<Item = &'a LPort>) -> Self {
        let mut idx = Self::new();
        for p in ports {
            idx.insert(p);
        }
        idx
    }

    /// The first conflict of `port` with an indexed port of another id, in the order
    /// MAC, fixed IPs, pairs against fixed IPs, fixed IPs against pairs, tap.
    pub fn check(&self, port: &LPort) -> Result<(), PortConflict> {
        let ls = &port.lswitch;
        let not_self = |id: &String| *id != port.id;
        if let Some(other) = self
            .macs
            .get(&(ls.clone(), port.mac))
            .filter(|o| not_self(o))
        {
            return Err(PortConflict::Mac {
                mac: port.mac,
                other: other.clone(),
                lswitch: ls.clone(),
            });
        }
        for ip in &port.fixed_ips {
            if let Some(other) = self.fixed.get(&(ls.clone(), *ip)).filter(|o| not_self(o)) {
                return Err(PortConflict::FixedIp {
                    ip: *ip,
                    other: other.clone(),
                    lswitch: ls.clone(),
                });
            }
        }
        for ip in single_ip_aaps(port) {
            if let Some(other) = self.fixed.get(&(ls.clone(), ip)).filter(|o| not_self(o)) {
                return Err(PortConflict::AapIsFixedIp {
                    ip,
                    other: other.clone(),
                    lswitch: ls.clone(),
                });
            }
        }
        for ip in &port.fixed_ips {
            if let Some(other) = self
                .aaps
                .get(&(ls.clone(), *ip))
                .and_then(|holders| holders.iter().find(|o| not_self(o)))
            {
                return Err(PortConflict::FixedIpIsAap {
                    ip: *ip,
                    other: other.clone(),
                    lswitch: ls.clone(),
                });
            }
        }
        if let Some(chassis) = &port.chassis {
            let tap = port.tap_name();
            if let Some(other) = self
                .taps
                .get(&(chassis.clone(), tap.clone()))
                .filter(|o| not_self(o))
            {
                return Err(PortConflict::Tap {
                    chassis: chassis.clone(),
                    tap,
                    other: other.clone(),
                });
            }
        }
        Ok(())
    }

    /// Records what `port` occupies; an address already held keeps its first holder.
    pub fn insert(&mut self, port: &LPort) {
        let ls = &port.lswitch;
        self.macs
            .entry((ls.clone(), port.mac))
            .or_insert_with(|| port.id.clone());
        for ip in &port.fixed_ips {
            self.fixed
                .entry((ls.clone(), *ip))
                .or_insert_with(|| port.id.clone());
        }
        for ip in single_ip_aaps(port) {
            self.aaps
                .entry((ls.clone(), ip))
                .or_default()
                .insert(port.id.clone());
        }
        if let Some(chassis) = &port.chassis {
            self.taps
                .entry((chassis.clone(), port.tap_name()))
                .or_insert_with(|| port.id.clone());
        }
    }

    /// [`check`](Self::check), then [`insert`](Self::insert) when there is no conflict:
    /// feeding ports in order keeps the first of each conflicting pair.
    pub fn admit(&mut self, port: &LPort) -> Result<(), PortConflict> {
        self.check(port)?;
        self.insert(port);
        Ok(())
    }
}

/// The first conflict of `port` with any of `others` (which may include `port` itself, an
/// older version of it, matched by id and skipped).
pub fn check_port<'a>(
    port: &LPort,
    others: impl IntoIterator<Item = &'a LPort>,
) -> Result<(), PortConflict> {
    PortIndex::of(others).check(port)
}

/// A port against the routers' interfaces on its lswitch: its MAC and fixed IPs are not
/// an interface's (the interface answers ARP/ND for them and owns the MAC in L2).
pub fn check_port_routers(port: &LPort, routers: &[LRouter]) -> Result<(), PortConflict> {
    for r in routers {
        for i in r.ports.iter().filter(|i| i.lswitch == port.lswitch) {
            let used = |what, value: String| PortConflict::RouterAddress {
                what,
                value,
                router: r.id.clone(),
                iface: i.id.clone(),
                lswitch: port.lswitch.clone(),
            };
            if i.mac == port.mac {
                return Err(used("MAC address", port.mac.to_string()));
            }
            if let Some(ip) = i.addrs().find(|ip| port.fixed_ips.contains(&ip.addr)) {
                return Err(used("fixed IP", ip.addr.to_string()));
            }
        }
    }
    Ok(())
}

/// The addresses a port claims through its allowed address pairs: only single-IP pairs
/// count (a CIDR pair is routed through the port, not owned by it).
pub(crate) fn single_ip_aaps(port: &LPort) -> impl Iterator<Item = IpAddr> + '_ {
    port.allowed_address_pairs
        .iter()
        .filter(|a| a.ip_address.is_host())
        .map(|a| a.ip_address.addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(id: &str, mac: &str, fixed: &[&str], aaps: &[&str]) -> LPort {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "lswitch": "ls1",
            "mac": mac,
            "fixed_ips": fixed,
            "allowed_address_pairs": aaps
                .iter()
                .map(|a| serde_json::json!({ "ip_address": a }))
                .collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn addresses_in_one_network() {
        let p1 = port("p1", "fa:16:3e:00:00:01", &["192.0.2.11"], &["192.0.2.100"]);
        let idx = PortIndex::of([&p1]);
        // Itself (an update) is no conflict.
        idx.check(&p1).unwrap();

        let same_mac = port("p2", "fa:16:3e:00:00:01", &["192.0.2.12"], &[]);
        assert_eq!(
            idx.check(&same_mac).unwrap_err().to_string(),
            "MAC address fa:16:3e:00:00:01 is already used by lport p1 on lswitch ls1"
        );
        let same_ip = port("p2", "fa:16:3e:00:00:02", &["192.0.2.11"], &[]);
        assert_eq!(
            idx.check(&same_ip).unwrap_err().to_string(),
            "fixed IP 192.0.2.11 is already used by lport p1 on lswitch ls1"
        );
        let aap_on_fixed = port("p2", "fa:16:3e:00:00:02", &["192.0.2.12"], &["192.0.2.11"]);
        let e = idx.check(&aap_on_fixed).unwrap_err();
        assert!(matches!(e, PortConflict::AapIsFixedIp { .. }), "{e}");
        assert_eq!(e.other(), "p1");
        let fixed_on_aap = port("p2", "fa:16:3e:00:00:02", &["192.0.2.100"], &[]);
        assert!(matches!(
            idx.check(&fixed_on_aap),
            Err(PortConflict::FixedIpIsAap { .. })
        ));
        // A shared pair (keepalived VIP) and a CIDR pair over p1's address are fine.
        let sharer = port(
            "p2",
            "fa:16:3e:00:00:02",
            &["192.0.2.12"],
            &["192.0.2.100", "192.0.2.0/24"],
        );
        idx.check(&sharer).unwrap();
        // Another network: nothing is shared.
        let mut elsewhere = same_ip.clone();
        elsewhere.lswitch = "ls2".into();
        idx.check(&elsewhere).unwrap();
    }

    #[test]
    fn taps_per_chassis() {
        let mut p1 = port("0123456789abcdef", "fa:16:3e:00:00:01", &[], &[]);
        p1.chassis = Some("hv1".into());
        let idx = PortIndex::of([&p1]);
        // Same first 11 characters, same chassis, another network: same derived tap.
        let mut p2 = port("0123456789a-other", "fa:16:3e:00:00:02", &[], &[]);
        p2.lswitch = "ls2".into();
        p2.chassis = Some("hv1".into());
        assert_eq!(
            idx.check(&p2).unwrap_err(),
            PortConflict::Tap {
                chassis: "hv1".into(),
                tap: "tap0123456789a".into(),
                other: "0123456789abcdef".into()
            }
        );
        p2.chassis = Some("hv2".into());
        idx.check(&p2).unwrap();
        p2.chassis = None;
        idx.check(&p2).unwrap();
        // An explicit ifname equal to p1's derived one.
        let mut p3 = port("p3", "fa:16:3e:00:00:03", &[], &[]);
        p3.chassis = Some("hv1".into());
        p3.ifname = Some("tap0123456789a".into());
        assert!(matches!(idx.check(&p3), Err(PortConflict::Tap { .. })));
    }

    #[test]
    fn admit_keeps_the_first() {
        let a = port("a", "fa:16:3e:00:00:01", &["192.0.2.11"], &[]);
        let b = port("b", "fa:16:3e:00:00:02", &["192.0.2.11"], &[]);
        let mut idx = PortIndex::new();
        idx.admit(&a).unwrap();
        assert_eq!(idx.admit(&b).unwrap_err().other(), "a");
        // b was not recorded: a third port with b's MAC is fine.
        let c = port("c", "fa:16:3e:00:00:02", &["192.0.2.13"], &[]);
        idx.admit(&c).unwrap();
        assert!(check_port(&b, [&a, &c]).is_err());
    }
}
