//! `dfctl lport`: logical ports (Neutron ports) with their allowed address pairs.

use clap::{Args, Subcommand};
use dragonflow_agent::{
    etcd::StoreError,
    nb::{
        AllowedAddressPair, Kind, LPort, LRouter, LSwitch, MacAddr, NbRecord as _, SecGroup,
        Subnet,
        bulk::DEFAULT_GROUP,
        conflicts,
        parse::{parse_aap, parse_fixed_ip, parse_mac},
        refs::{self, validate_lport_refs},
    },
};

use crate::{
    ctx::Ctx,
    error::{CliError, Result},
    output::{Tabular, dash},
};

#[derive(Subcommand, Debug)]
pub(crate) enum LportCmd {
    /// Create a port; without --security-group (and with port security) it gets the
    /// group `default`, created if missing.
    Create(LportCreate),
    /// Change a port: its allowed address pairs, fixed IPs, port security, groups,
    /// binding.
    Update(LportUpdate),
    /// Delete a port.
    Delete {
        /// The lport id.
        id: String,
    },
    /// List the ports.
    List,
    /// Show one port.
    Show {
        /// The lport id.
        id: String,
    },
}

/// The two spellings of an allowed address pair.
const AAP_SYNTAX: &str = "IP[/LEN][,MAC] | ip-address=IP[/LEN][,mac-address=MAC]";

#[derive(Args, Debug)]
pub(crate) struct LportCreate {
    /// The lport id [default: a random UUID, as Neutron gives].
    id: Option<String>,
    /// The lswitch (network) of the port.
    #[arg(long)]
    lswitch: String,
    /// The port's MAC [default: Neutron's fa:16:3e prefix and three random bytes, unused
    /// by other ports and router interfaces].
    #[arg(long)]
    mac: Option<String>,
    /// A fixed IP (repeatable).
    #[arg(long = "fixed-ip", value_name = "IP")]
    fixed_ips: Vec<String>,
    /// An allowed address pair (repeatable); MAC defaults to the port's. Also spelt as
    /// the OpenStack client does: --allowed-address ip-address=IP,mac-address=MAC.
    #[arg(long = "aap", visible_alias = "allowed-address", value_name = AAP_SYNTAX)]
    aaps: Vec<String>,
    /// Disable port security (no anti-spoofing, no security groups, no AAPs).
    #[arg(long)]
    no_port_security: bool,
    /// A security group id (repeatable). Without any, a port with port security gets
    /// `default` (created if missing: egress anywhere, ingress from its members).
    #[arg(long = "security-group", value_name = "SG")]
    security_groups: Vec<String>,
    /// Bind the port to this chassis.
    #[arg(long)]
    chassis: Option<String>,
    /// Tap device name on the chassis (default: tap + first 11 chars of the id).
    #[arg(long)]
    ifname: Option<String>,
    /// Neutron's device_owner (e.g. compute:nova, network:router_interface).
    #[arg(long, default_value = "")]
    device_owner: String,
}

#[derive(Args, Debug)]
pub(crate) struct LportUpdate {
    /// The lport id.
    id: String,
    /// Add an allowed address pair (repeatable). Also spelt --allowed-address
    /// ip-address=IP,mac-address=MAC (the OpenStack client's `port set`).
    #[arg(long = "add-aap", visible_alias = "allowed-address", value_name = AAP_SYNTAX)]
    add_aaps: Vec<String>,
    /// Remove an allowed address pair (repeatable); without MAC every pair of that IP goes.
    #[arg(
        long = "remove-aap",
        visible_alias = "remove-allowed-address",
        value_name = AAP_SYNTAX,
        conflicts_with = "no_allowed_address"
    )]
    remove_aaps: Vec<String>,
    /// Remove every allowed address pair (before --add-aap adds its own).
    #[arg(long)]
    no_allowed_address: bool,
    /// Replace the fixed IPs with these (repeatable).
    #[arg(long = "fixed-ip", value_name = "IP")]
    fixed_ips: Vec<String>,
    /// Enable or disable port security.
    #[arg(long, value_name = "true|false")]
    port_security: Option<bool>,
    /// Replace the security groups with these (repeatable).
    #[arg(
        long = "security-group",
        value_name = "SG",
        conflicts_with = "no_security_groups"
    )]
    security_groups: Vec<String>,
    /// Remove every security group.
    #[arg(long)]
    no_security_groups: bool,
    /// Bind the port to this chassis.
    #[arg(long, conflicts_with = "unbind")]
    chassis: Option<String>,
    /// Unbind the port (clear chassis).
    #[arg(long)]
    unbind: bool,
    /// Tap device name on the chassis.
    #[arg(long)]
    ifname: Option<String>,
    /// Neutron's device_owner.
    #[arg(long)]
    device_owner: Option<String>,
}

impl Tabular for LPort {
    const HEADERS: &'static [&'static str] = &[
        "ID",
        "LSWITCH",
        "MAC",
        "FIXED_IPS",
        "ALLOWED_ADDRESS_PAIRS",
        "PORT_SECURITY",
        "SECURITY_GROUPS",
        "CHASSIS",
        "IFNAME",
    ];
    fn row(&self) -> Vec<String> {
        let joined = |v: Vec<String>| dash(v.join(";"));
        vec![
            self.id.clone(),
            self.lswitch.clone(),
            self.mac.to_string(),
            joined(self.fixed_ips.iter().map(|i| i.to_string()).collect()),
            joined(self.allowed_address_pairs.iter().map(aap_text).collect()),
            self.port_security_enabled.to_string(),
            dash(self.security_groups.join(";")),
            dash(self.chassis.clone().unwrap_or_default()),
            self.tap_name(),
        ]
    }
}

/// `IP[/LEN]` or `IP[/LEN],MAC` (the --aap syntax).
pub(crate) fn aap_text(a: &AllowedAddressPair) -> String {
    match a.mac_address {
        Some(m) => format!("{},{m}", a.ip_address),
        None => a.ip_address.to_string(),
    }
}

/// An AAP argument in the `IP[/LEN][,MAC]` form `parse_aap` reads: the OpenStack client's
/// `ip-address=IP[,mac-address=MAC]` is rewritten, anything without `=` passes as it is.
fn aap_arg(s: &str) -> Result<String, String> {
    if !s.contains('=') {
        return Ok(s.to_string());
    }
    let bad = |why: String| {
        Err(format!(
            "allowed address {s:?}: {why} (expected ip-address=IP[/LEN][,mac-address=MAC])"
        ))
    };
    let (mut ip, mut mac) = (None, None);
    for part in s.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            return bad(format!("{part:?} is not KEY=VALUE"));
        };
        let slot = match key.trim() {
            "ip-address" | "ip_address" => &mut ip,
            "mac-address" | "mac_address" => &mut mac,
            other => return bad(format!("unknown key {other:?}")),
        };
        if slot.replace(value.trim()).is_some() {
            return bad(format!("{} given twice", key.trim()));
        }
    }
    match (ip, mac) {
        (None, _) => bad("no ip-address".into()),
        (Some(ip), None) => Ok(ip.to_string()),
        (Some(ip), Some(mac)) => Ok(format!("{ip},{mac}")),
    }
}

/// Parses AAP arguments of either spelling.
fn parse_aaps(args: &[String], kind_id: &str) -> Result<Vec<AllowedAddressPair>> {
    args.iter()
        .map(|s| {
            let s = aap_arg(s).map_err(|m| CliError::Refused(format!("lport {kind_id}: {m}")))?;
            parse_aap(&s).map_err(|e| CliError::invalid(Kind::LPort, kind_id, e))
        })
        .collect()
}

/// Neutron's base MAC for ports (`base_mac = fa:16:3e:00:00:00`): locally administered,
/// unicast.
const NEUTRON_MAC_PREFIX: [u8; 3] = [0xfa, 0x16, 0x3e];

/// A MAC with Neutron's prefix and three random bytes that is not `taken`.
fn generate_mac(taken: impl Fn(&MacAddr) -> bool) -> Result<MacAddr> {
    // 2^24 values: with fewer than a million MACs on the prefix, 64 misses in a row is
    // astronomically unlikely; past that, ask for a MAC rather than loop.
    for _ in 0..64 {
        let mut low = [0u8; 3];
        getrandom::fill(&mut low).map_err(|e| {
            CliError::Unavailable(format!("cannot read random bytes for a MAC: {e}"))
        })?;
        let [a, b, c] = NEUTRON_MAC_PREFIX;
        let mac = MacAddr([a, b, c, low[0], low[1], low[2]]);
        if !taken(&mac) {
            return Ok(mac);
        }
    }
    Err(CliError::Refused(
        "no free MAC with the fa:16:3e prefix found; give one with --mac".into(),
    ))
}

impl Ctx {
    pub(crate) async fn lport(&self, c: LportCmd) -> Result<()> {
        match c {
            LportCmd::Create(a) => self.lport_create(a).await,
            LportCmd::Update(a) => self.lport_update(a).await,
            LportCmd::Delete { id } => {
                if !self.store.delete::<LPort>(&id).await? {
                    return Err(StoreError::NotFound { kind: "lport", id }.into());
                }
                println!("deleted lport {id}");
                Ok(())
            }
            LportCmd::List => self.list::<LPort>().await,
            LportCmd::Show { id } => self.show::<LPort>(&id).await,
        }
    }

    async fn lport_create(&self, a: LportCreate) -> Result<()> {
        let id = a.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let inv = |e| CliError::invalid(Kind::LPort, &id, e);
        let fixed_ips = a
            .fixed_ips
            .iter()
            .map(|s| parse_fixed_ip(s))
            .collect::<Result<_, _>>()
            .map_err(inv)?;
        let allowed_address_pairs = parse_aaps(&a.aaps, &id)?;
        let given_mac = a.mac.as_deref().map(parse_mac).transpose().map_err(inv)?;
        let ports = self.items::<LPort>().await?;
        let routers = self.items::<LRouter>().await?;
        let mac = match given_mac {
            Some(m) => m,
            None => {
                let taken: Vec<MacAddr> = ports
                    .iter()
                    .map(|p| p.mac)
                    .chain(routers.iter().flat_map(|r| r.ports.iter().map(|p| p.mac)))
                    .collect();
                generate_mac(|m| taken.contains(m))?
            }
        };
        let mut port = LPort {
            id: id.clone(),
            lswitch: a.lswitch,
            mac,
            fixed_ips,
            allowed_address_pairs,
            port_security_enabled: !a.no_port_security,
            security_groups: a.security_groups,
            chassis: a.chassis,
            ifname: a.ifname,
            device_owner: a.device_owner,
            admin_state_up: true,
        };
        self.check(&port)?;
        // Neutron: a port with port security and no group gets the project's `default`
        // (created below, once everything else about the port is known to be fine).
        let needs_default = port.port_security_enabled && port.security_groups.is_empty();
        if needs_default {
            port.security_groups = vec![DEFAULT_GROUP.to_string()];
        } else {
            let groups = self.items::<SecGroup>().await?;
            refs::validate_lport_secgroups(&port, &groups).map_err(inv)?;
        }
        let ls = self
            .store
            .get::<LSwitch>(&port.lswitch)
            .await?
            .map(|v| v.value);
        let subnets = self.items::<Subnet>().await?;
        validate_lport_refs(&port, ls.as_ref(), &subnets, &ports).map_err(inv)?;
        conflicts::check_port_routers(&port, &routers)
            .map_err(|e| CliError::invalid(Kind::LPort, &id, e.into()))?;
        if needs_default {
            self.ensure_default_group().await?;
        }
        self.store
            .create_requiring(&port, &[(Kind::LSwitch, &port.lswitch)])
            .await?;
        println!("created lport {id}");
        Ok(())
    }

    async fn lport_update(&self, a: LportUpdate) -> Result<()> {
        let id = a.id.clone();
        let inv = |e| CliError::invalid(Kind::LPort, &id, e);
        let secgroups = if a.security_groups.is_empty() {
            Vec::new()
        } else {
            self.items::<SecGroup>().await?
        };
        let add = parse_aaps(&a.add_aaps, &id)?;
        let remove = parse_aaps(&a.remove_aaps, &id)?;
        let fixed: Vec<_> = a
            .fixed_ips
            .iter()
            .map(|s| parse_fixed_ip(s))
            .collect::<Result<_, _>>()
            .map_err(inv)?;

        let cur = self.store.get_existing::<LPort>(&id).await?.value;
        let ls = self
            .store
            .get::<LSwitch>(&cur.lswitch)
            .await?
            .map(|v| v.value);
        let subnets = self.items::<Subnet>().await?;
        let ports = self.items::<LPort>().await?;
        let routers = self.items::<LRouter>().await?;

        let refused = |source| StoreError::Invalid {
            kind: "lport",
            id: id.clone(),
            source,
        };
        self.store
            .update::<LPort, _>(&id, |p| {
                if a.no_allowed_address {
                    p.allowed_address_pairs.clear();
                }
                for r in &remove {
                    let before = p.allowed_address_pairs.len();
                    let port_mac = p.mac;
                    p.allowed_address_pairs.retain(|x| {
                        x.ip_address != r.ip_address
                            || r.mac_address
                                .is_some_and(|m| m != x.mac_address.unwrap_or(port_mac))
                    });
                    if p.allowed_address_pairs.len() == before {
                        return Err(StoreError::Refused {
                            kind: "lport",
                            id: id.clone(),
                            reason: format!(
                                "allowed address pair {} is not on the port",
                                aap_text(r)
                            ),
                        });
                    }
                }
                p.allowed_address_pairs.extend(add.iter().cloned());
                if !a.fixed_ips.is_empty() {
                    p.fixed_ips = fixed.clone();
                }
                if let Some(ps) = a.port_security {
                    p.port_security_enabled = ps;
                }
                if a.no_security_groups {
                    p.security_groups.clear();
                } else if !a.security_groups.is_empty() {
                    p.security_groups = a.security_groups.clone();
                }
                if a.unbind {
                    p.chassis = None;
                } else if let Some(c) = &a.chassis {
                    p.chassis = Some(c.clone());
                }
                if let Some(n) = &a.ifname {
                    p.ifname = Some(n.clone());
                }
                if let Some(d) = &a.device_owner {
                    p.device_owner = d.clone();
                }
                p.validate(&self.opts).map_err(|e| refused(Box::new(e)))?;
                validate_lport_refs(p, ls.as_ref(), &subnets, &ports)
                    .map_err(|e| refused(Box::new(e)))?;
                if !a.security_groups.is_empty() {
                    refs::validate_lport_secgroups(p, &secgroups)
                        .map_err(|e| refused(Box::new(e)))?;
                }
                conflicts::check_port_routers(p, &routers).map_err(|e| refused(Box::new(e.into())))
            })
            .await?;
        println!("updated lport {id}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openstack_aap_syntax() {
        for (arg, want) in [
            ("192.0.2.5", "192.0.2.5"),
            (
                "192.0.2.0/24,fa:16:3e:00:00:01",
                "192.0.2.0/24,fa:16:3e:00:00:01",
            ),
            ("ip-address=192.0.2.5", "192.0.2.5"),
            (
                "ip-address=192.0.2.5,mac-address=fa:16:3e:00:00:01",
                "192.0.2.5,fa:16:3e:00:00:01",
            ),
            (
                "mac-address=fa:16:3e:00:00:01,ip-address=2001:db8::/64",
                "2001:db8::/64,fa:16:3e:00:00:01",
            ),
            ("ip_address=192.0.2.5", "192.0.2.5"),
        ] {
            assert_eq!(aap_arg(arg).as_deref(), Ok(want), "{arg}");
        }
        for (arg, why) in [
            ("mac-address=fa:16:3e:00:00:01", "no ip-address"),
            ("ip-address=192.0.2.5,color=red", "unknown key \"color\""),
            (
                "ip-address=192.0.2.5,ip-address=192.0.2.6",
                "ip-address given twice",
            ),
            ("ip-address=192.0.2.5,fa:16:3e:00:00:01", "is not KEY=VALUE"),
        ] {
            let e = aap_arg(arg).unwrap_err();
            assert!(e.contains(why), "{arg}: {e}");
        }
    }

    #[test]
    fn generated_macs_have_neutrons_prefix_and_avoid_taken_ones() {
        let mac = generate_mac(|_| false).unwrap();
        assert_eq!(mac.0[..3], NEUTRON_MAC_PREFIX);
        assert!(!mac.is_multicast());
        // Half the values taken: it draws again until it finds a free one.
        for _ in 0..20 {
            assert_eq!(generate_mac(|m| m.0[5] % 2 == 0).unwrap().0[5] % 2, 1);
        }
        // All taken: a clear refusal after its bounded tries, not an endless loop.
        let Err(CliError::Refused(e)) = generate_mac(|_| true) else {
            panic!("expected a refusal");
        };
        assert!(e.contains("give one with --mac"), "{e}");
    }
}
