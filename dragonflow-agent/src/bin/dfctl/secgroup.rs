//! `dfctl secgroup`: security groups with Neutron's semantics (allow rules; a port's groups
//! say what it may send and receive).

use clap::{Args, Subcommand};
use dragonflow_agent::{
    etcd::StoreError,
    nb::{
        EtherType, IpPrefix, LPort, NbRecord as _, RuleDirection, SecGroup, SecGroupRule,
        bulk::DEFAULT_GROUP, protocol, refs,
    },
};

use crate::{
    ctx::Ctx,
    error::{CliError, Result},
    output::{self, Output, dash, table},
};

#[derive(Subcommand, Debug)]
pub(crate) enum SecgroupCmd {
    /// Create a group with Neutron's default rules: egress to anywhere (IPv4 and IPv6);
    /// the group named `default` also admits ingress from its own members.
    Create {
        /// The secgroup id (no '/').
        id: String,
        /// A human-readable name.
        #[arg(long, default_value = "")]
        name: String,
        /// Create it without rules (nothing allowed until rules are added).
        #[arg(long)]
        no_default_rules: bool,
    },
    /// Delete a group (refused while ports use it or other groups' rules name it).
    Delete {
        /// The secgroup id.
        id: String,
    },
    /// List the groups with their rule counts and the ports using them.
    List,
    /// The group's rules (a table by default; the record with -o json or -o yaml).
    Show {
        /// The secgroup id.
        id: String,
    },
    /// Add a rule; prints its id.
    RuleAdd(RuleAdd),
    /// Delete a rule by id.
    RuleDelete {
        /// The secgroup id.
        group: String,
        /// The rule's id (as `rule-add` printed it).
        rule_id: String,
    },
}

#[derive(Args, Debug)]
pub(crate) struct RuleAdd {
    /// The secgroup id.
    group: String,
    /// ingress (to the VM) or egress (from the VM).
    #[arg(long)]
    direction: String,
    /// ipv4 or ipv6 [default: the remote prefix's family, else ipv4].
    #[arg(long)]
    ethertype: Option<String>,
    /// tcp, udp, icmp, icmpv6, sctp, …, any, or a protocol number 1-255 [default: any].
    #[arg(long)]
    protocol: Option<String>,
    /// First port (tcp/udp), or the ICMP type.
    #[arg(long)]
    port_min: Option<u32>,
    /// Last port (tcp/udp; default: --port-min), or the ICMP code.
    #[arg(long)]
    port_max: Option<u32>,
    /// The remote addresses (CIDR or IP) [default: any address of the ethertype].
    #[arg(long, value_name = "CIDR", conflicts_with = "remote_group")]
    remote_ip_prefix: Option<String>,
    /// The remote side is any member of this group (its ports' fixed IPs and allowed
    /// address pairs).
    #[arg(long, value_name = "GROUP")]
    remote_group: Option<String>,
    /// Rule id [default: a random UUID].
    #[arg(long = "id", value_name = "RULE_ID")]
    rule_id: Option<String>,
}

/// Neutron's rules of a new group: egress anywhere, both families; the `default` group
/// also admits ingress from its own members, both families.
pub(crate) fn default_rules(group: &str) -> Vec<SecGroupRule> {
    let rule = |id: &str, direction, ethertype, remote: Option<&str>| SecGroupRule {
        id: id.to_string(),
        direction,
        ethertype,
        protocol: None,
        port_range_min: None,
        port_range_max: None,
        remote_ip_prefix: None,
        remote_group_id: remote.map(str::to_string),
    };
    let mut rules = vec![
        rule("egress-ipv4", RuleDirection::Egress, EtherType::IPv4, None),
        rule("egress-ipv6", RuleDirection::Egress, EtherType::IPv6, None),
    ];
    if group == DEFAULT_GROUP {
        rules.push(rule(
            "ingress-ipv4-from-default",
            RuleDirection::Ingress,
            EtherType::IPv4,
            Some(DEFAULT_GROUP),
        ));
        rules.push(rule(
            "ingress-ipv6-from-default",
            RuleDirection::Ingress,
            EtherType::IPv6,
            Some(DEFAULT_GROUP),
        ));
    }
    rules
}

/// What a rule matches, without its id (to refuse duplicates, as Neutron does).
fn rule_match(r: &SecGroupRule) -> impl PartialEq + use<> {
    (
        r.direction,
        r.ethertype,
        protocol::rule_protocol(r),
        r.port_range_min,
        r.port_range_max,
        r.remote_ip_prefix,
        r.remote_group_id.clone(),
    )
}

/// `80`, `80-90`, `type 8`, `type 3 code 4`, or `any`.
fn port_range_text(r: &SecGroupRule) -> String {
    let icmp = matches!(
        protocol::rule_protocol(r),
        Some(protocol::PROTO_ICMP | protocol::PROTO_ICMPV6)
    );
    match (r.port_range_min, r.port_range_max) {
        (None, _) => "any".into(),
        (Some(t), None) if icmp => format!("type {t}"),
        (Some(t), Some(c)) if icmp => format!("type {t} code {c}"),
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}-{b}"),
        (Some(a), None) => a.to_string(),
    }
}

fn remote_text(r: &SecGroupRule) -> String {
    match (&r.remote_ip_prefix, &r.remote_group_id) {
        (Some(p), _) => format!("{}/{}", p.addr, p.len),
        (None, Some(g)) => format!("group {g}"),
        (None, None) => "any".into(),
    }
}

/// `secgroup show`'s table: a title line, then one row per rule.
fn rules_table(g: &SecGroup) -> String {
    let title = if g.name.is_empty() {
        format!("secgroup {}\n", g.id)
    } else {
        format!("secgroup {} ({})\n", g.id, g.name)
    };
    let rows = g
        .rules
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.direction.as_str().to_string(),
                r.ethertype.as_str().to_string(),
                r.protocol.clone().unwrap_or_else(|| "any".into()),
                port_range_text(r),
                remote_text(r),
            ]
        })
        .collect();
    title
        + &table(
            &[
                "ID",
                "DIRECTION",
                "ETHERTYPE",
                "PROTOCOL",
                "PORT_RANGE",
                "REMOTE",
            ],
            rows,
        )
}

impl Ctx {
    pub(crate) async fn secgroup(&self, c: SecgroupCmd) -> Result<()> {
        match c {
            SecgroupCmd::Create {
                id,
                name,
                no_default_rules,
            } => {
                let g = SecGroup {
                    rules: if no_default_rules {
                        Vec::new()
                    } else {
                        default_rules(&id)
                    },
                    id,
                    name,
                };
                self.check(&g)?;
                self.store.create(&g).await?;
                println!("created secgroup {}", g.id);
                Ok(())
            }
            SecgroupCmd::Delete { id } => self.secgroup_delete(&id).await,
            SecgroupCmd::List => {
                let groups = self.items::<SecGroup>().await?;
                let output = self.list_output();
                // The USED_BY column needs the ports; JSON and YAML are the records alone.
                let ports = if output == Output::Table {
                    self.items::<LPort>().await?
                } else {
                    Vec::new()
                };
                output::emit(output, &groups, || {
                    let rows = groups
                        .iter()
                        .map(|g| {
                            let users: Vec<&str> = ports
                                .iter()
                                .filter(|p| p.security_groups.contains(&g.id))
                                .map(|p| p.id.as_str())
                                .collect();
                            vec![
                                g.id.clone(),
                                dash(g.name.clone()),
                                g.rules.len().to_string(),
                                dash(users.join(";")),
                            ]
                        })
                        .collect();
                    table(&["ID", "NAME", "RULES", "USED_BY"], rows)
                })
            }
            SecgroupCmd::Show { id } => {
                let g = self.store.get_existing::<SecGroup>(&id).await?.value;
                // Unlike other shows, a table by default: the rules are what one reads.
                output::emit(self.list_output(), &g, || rules_table(&g))
            }
            SecgroupCmd::RuleAdd(a) => self.rule_add(a).await,
            SecgroupCmd::RuleDelete { group, rule_id } => {
                self.store
                    .update::<SecGroup, _>(&group, |g| {
                        let before = g.rules.len();
                        g.rules.retain(|r| r.id != rule_id);
                        if g.rules.len() == before {
                            return Err(StoreError::Refused {
                                kind: "secgroup",
                                id: group.clone(),
                                reason: format!("it has no rule {rule_id}"),
                            });
                        }
                        Ok(())
                    })
                    .await?;
                println!("deleted rule {rule_id} of secgroup {group}");
                Ok(())
            }
        }
    }

    async fn secgroup_delete(&self, id: &str) -> Result<()> {
        self.store.get_existing::<SecGroup>(id).await?;
        let ports = self.items::<LPort>().await?;
        let users: Vec<&str> = ports
            .iter()
            .filter(|p| p.security_groups.iter().any(|g| g == id))
            .map(|p| p.id.as_str())
            .collect();
        if !users.is_empty() {
            return Err(CliError::Refused(format!(
                "secgroup {id} is used by lport {}; remove it from them first \
                 (dfctl lport update PORT --security-group OTHER | --no-security-groups)",
                users.join(", ")
            )));
        }
        let groups = self.items::<SecGroup>().await?;
        let refs: Vec<String> = groups
            .iter()
            .filter(|g| g.id != id)
            .flat_map(|g| {
                g.rules
                    .iter()
                    .filter(|r| r.remote_group_id.as_deref() == Some(id))
                    .map(move |r| format!("secgroup {} rule {}", g.id, r.id))
            })
            .collect();
        if !refs.is_empty() {
            return Err(CliError::Refused(format!(
                "secgroup {id} is the remote group of {}; delete those rules first",
                refs.join(", ")
            )));
        }
        self.store.delete::<SecGroup>(id).await?;
        println!("deleted secgroup {id}");
        Ok(())
    }

    async fn rule_add(&self, a: RuleAdd) -> Result<()> {
        let group = a.group.clone();
        let refused = |m: String| CliError::Refused(format!("secgroup {group}: {m}"));
        let direction = RuleDirection::try_from(a.direction.clone()).map_err(refused)?;
        let remote_ip_prefix = a
            .remote_ip_prefix
            .as_deref()
            .map(|s| {
                s.trim().parse::<IpPrefix>().map_err(|_| {
                    refused(format!(
                        "--remote-ip-prefix {s:?} is not a CIDR or an IP address"
                    ))
                })
            })
            .transpose()?;
        let ethertype = match &a.ethertype {
            Some(e) => EtherType::try_from(e.clone()).map_err(refused)?,
            None => remote_ip_prefix.map_or(EtherType::IPv4, |p| EtherType::of(&p.addr)),
        };
        let protocol = a
            .protocol
            .as_deref()
            .map(|p| p.trim().to_ascii_lowercase())
            .filter(|p| p != "any");
        // One port: --port-min alone (ICMP: a type alone means every code).
        let tcp_udp = matches!(
            protocol
                .as_deref()
                .map(|p| protocol::parse_protocol(p, ethertype)),
            Some(Ok(Some(protocol::PROTO_TCP | protocol::PROTO_UDP)))
        );
        let port_range_max = match (a.port_min, a.port_max) {
            (Some(min), None) if tcp_udp => Some(min),
            (_, max) => max,
        };
        let rule = SecGroupRule {
            id: a
                .rule_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            direction,
            ethertype,
            protocol,
            port_range_min: a.port_min,
            port_range_max,
            remote_ip_prefix,
            remote_group_id: a.remote_group.clone(),
        };
        let groups = self.items::<SecGroup>().await?;
        let store_refused = |source| StoreError::Invalid {
            kind: "secgroup",
            id: group.clone(),
            source,
        };
        self.store
            .update::<SecGroup, _>(&group, |g| {
                if let Some(same) = g
                    .rules
                    .iter()
                    .find(|r| r.id != rule.id && rule_match(r) == rule_match(&rule))
                {
                    return Err(StoreError::Refused {
                        kind: "secgroup",
                        id: group.clone(),
                        reason: format!("rule {} already allows exactly this", same.id),
                    });
                }
                g.rules.push(rule.clone());
                g.validate(&self.opts)
                    .map_err(|e| store_refused(Box::new(e)))?;
                refs::validate_secgroup_refs(g, &groups).map_err(|e| store_refused(Box::new(e)))
            })
            .await?;
        println!("{}", rule.id);
        Ok(())
    }

    /// Creates the `default` group with its rules unless it exists.
    pub(crate) async fn ensure_default_group(&self) -> Result<()> {
        let g = SecGroup {
            id: DEFAULT_GROUP.to_string(),
            name: DEFAULT_GROUP.to_string(),
            rules: default_rules(DEFAULT_GROUP),
        };
        match self.store.create(&g).await {
            Ok(_) => {
                println!(
                    "created secgroup {DEFAULT_GROUP} (egress anywhere, ingress from its members)"
                );
                Ok(())
            }
            Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
