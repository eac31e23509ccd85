//! `dfctl lrouter`: distributed logical routers, one interface per lswitch.

use clap::Subcommand;
use dragonflow_agent::{
    etcd::StoreError,
    nb::{
        IpPrefix, Kind, LPort, LRouter, LRouterPort, LSwitch, NbRecord as _, Subnet,
        parse::parse_mac, refs::validate_lrouter_port_refs, rules,
    },
};

use crate::{
    ctx::Ctx,
    error::{CliError, Result},
    output::{Tabular, dash},
};

#[derive(Subcommand, Debug)]
pub(crate) enum LrouterCmd {
    /// Create a router (without interfaces).
    Create {
        /// The lrouter id (no '/').
        id: String,
        /// A human-readable name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Connect the router to an lswitch (its address there is usually the subnet's gateway;
    /// on a dual-stack network give --ip twice, one IPv4 and one IPv6 address).
    AddInterface {
        /// The lrouter id.
        router: String,
        /// The lswitch to connect.
        #[arg(long)]
        lswitch: String,
        /// The interface's MAC (unique among the lswitch's ports and interfaces).
        #[arg(long)]
        mac: String,
        /// The interface address with its subnet's prefix length, e.g. 192.0.2.1/24 or
        /// 2001:db8:1::1/64; repeatable, at most one per family (IPv4 and IPv6 on one
        /// interface).
        #[arg(long, value_name = "IP/LEN", required = true)]
        ip: Vec<String>,
        /// Interface id [default: <router>-<lswitch>].
        #[arg(long = "id", value_name = "IFACE_ID")]
        iface_id: Option<String>,
    },
    /// Disconnect the router from an lswitch.
    RemoveInterface {
        /// The lrouter id.
        router: String,
        /// The lswitch whose interface goes.
        #[arg(long)]
        lswitch: String,
    },
    /// Delete a router with its interfaces.
    Delete {
        /// The lrouter id.
        id: String,
    },
    /// List the routers with their interfaces.
    List,
    /// Show one router.
    Show {
        /// The lrouter id.
        id: String,
    },
}

/// Interfaces as `ID LSWITCH IP/LEN[,IP/LEN] MAC`, joined with `; `.
impl Tabular for LRouter {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "INTERFACES"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            dash(self.name.clone()),
            dash(
                self.ports
                    .iter()
                    .map(|p| format!("{} {} {} {}", p.id, p.lswitch, addrs_text(p), p.mac))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        ]
    }
}

/// An interface's addresses as `IP/LEN[,IP/LEN]`.
fn addrs_text(p: &LRouterPort) -> String {
    p.addrs()
        .map(|a| format!("{}/{}", a.addr, a.len))
        .collect::<Vec<_>>()
        .join(",")
}

impl Ctx {
    pub(crate) async fn lrouter(&self, c: LrouterCmd) -> Result<()> {
        match c {
            LrouterCmd::Create { id, name } => {
                let r = LRouter {
                    id,
                    name,
                    ports: Vec::new(),
                };
                self.check(&r)?;
                self.store.create(&r).await?;
                println!("created lrouter {}", r.id);
                Ok(())
            }
            LrouterCmd::AddInterface {
                router,
                lswitch,
                mac,
                ip,
                iface_id,
            } => {
                self.add_interface(router, lswitch, &mac, &ip, iface_id)
                    .await
            }
            LrouterCmd::RemoveInterface { router, lswitch } => {
                self.store
                    .update::<LRouter, _>(&router, |r| {
                        let before = r.ports.len();
                        r.ports.retain(|p| p.lswitch != lswitch);
                        if r.ports.len() == before {
                            return Err(StoreError::Refused {
                                kind: "lrouter",
                                id: router.clone(),
                                reason: format!("it has no interface on lswitch {lswitch}"),
                            });
                        }
                        Ok(())
                    })
                    .await?;
                println!("removed the interface on lswitch {lswitch} from lrouter {router}");
                Ok(())
            }
            LrouterCmd::Delete { id } => {
                if !self.store.delete::<LRouter>(&id).await? {
                    return Err(StoreError::NotFound {
                        kind: "lrouter",
                        id,
                    }
                    .into());
                }
                println!("deleted lrouter {id}");
                Ok(())
            }
            LrouterCmd::List => self.list::<LRouter>().await,
            LrouterCmd::Show { id } => self.show::<LRouter>(&id).await,
        }
    }

    async fn add_interface(
        &self,
        router: String,
        lswitch: String,
        mac: &str,
        ip: &[String],
        iface_id: Option<String>,
    ) -> Result<()> {
        let inv = |e| CliError::invalid(Kind::LRouter, &router, e);
        let mut ips = ip
            .iter()
            .map(|ip| {
                ip.trim().parse::<IpPrefix>().map_err(|_| {
                    CliError::Refused(format!(
                        "lrouter {router}: --ip {ip:?} is not IP/LEN (e.g. \
                         192.0.2.1/24 or 2001:db8:1::1/64)"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter();
        let port = LRouterPort {
            id: iface_id.unwrap_or_else(|| format!("{router}-{lswitch}")),
            lswitch,
            mac: parse_mac(mac).map_err(inv)?,
            ip: ips.next().expect("clap requires --ip"),
            extra_ips: ips.collect(),
        };
        rules::validate_lrouter_port(&port).map_err(inv)?;
        self.store.get_existing::<LRouter>(&router).await?;
        let ls = self
            .store
            .get::<LSwitch>(&port.lswitch)
            .await?
            .map(|v| v.value);
        let subnets = self.items::<Subnet>().await?;
        let ports = self.items::<LPort>().await?;
        let routers = self.items::<LRouter>().await?;
        validate_lrouter_port_refs(&router, &port, ls.as_ref(), &subnets, &ports, &routers)
            .map_err(inv)?;
        let refused = |source| StoreError::Invalid {
            kind: "lrouter",
            id: router.clone(),
            source,
        };
        self.store
            .update::<LRouter, _>(&router, |r| {
                r.ports.push(port.clone());
                r.validate(&self.opts).map_err(|e| refused(Box::new(e)))
            })
            .await?;
        println!(
            "added interface {} ({} {}) on lswitch {} to lrouter {router}",
            port.id,
            addrs_text(&port),
            port.mac,
            port.lswitch
        );
        Ok(())
    }
}
