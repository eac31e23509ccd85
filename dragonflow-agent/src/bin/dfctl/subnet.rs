//! `dfctl subnet`: subnets of a logical switch.

use clap::Subcommand;
use dragonflow_agent::nb::{
    Kind, LPort, LRouter, LSwitch, Subnet,
    parse::{parse_cidr, parse_gateway},
    refs::validate_subnet_refs,
};

use crate::{
    ctx::Ctx,
    error::{CliError, Result},
    output::Tabular,
};

#[derive(Subcommand, Debug)]
pub(crate) enum SubnetCmd {
    /// Create a subnet on a logical switch.
    Create {
        /// The subnet id (no '/').
        id: String,
        /// The lswitch the subnet belongs to.
        #[arg(long)]
        lswitch: String,
        /// e.g. 192.0.2.0/24 or 2001:db8::/64; ip_version is derived from it.
        #[arg(long)]
        cidr: String,
        /// Gateway address inside the cidr (none when omitted).
        #[arg(long)]
        gateway: Option<String>,
    },
    /// Delete a subnet (refused while ports or router interfaces use its addresses).
    Delete {
        /// The subnet id.
        id: String,
    },
    /// List the subnets.
    List,
    /// Show one subnet.
    Show {
        /// The subnet id.
        id: String,
    },
}

impl Tabular for Subnet {
    const HEADERS: &'static [&'static str] = &["ID", "LSWITCH", "CIDR", "GATEWAY", "IP_VERSION"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.lswitch.clone(),
            format!("{}/{}", self.cidr.addr, self.cidr.len),
            self.gateway_ip
                .map_or_else(|| "-".into(), |g| g.to_string()),
            self.ip_version.to_string(),
        ]
    }
}

impl Ctx {
    pub(crate) async fn subnet(&self, c: SubnetCmd) -> Result<()> {
        match c {
            SubnetCmd::Create {
                id,
                lswitch,
                cidr,
                gateway,
            } => {
                let inv = |e| CliError::invalid(Kind::Subnet, &id, e);
                let cidr = parse_cidr(&cidr).map_err(inv)?;
                let gateway_ip = gateway
                    .as_deref()
                    .map(parse_gateway)
                    .transpose()
                    .map_err(inv)?;
                let subnet = Subnet {
                    id: id.clone(),
                    lswitch,
                    ip_version: if cidr.addr.is_ipv4() { 4 } else { 6 },
                    cidr,
                    gateway_ip,
                };
                self.check(&subnet)?;
                let ls = self
                    .store
                    .get::<LSwitch>(&subnet.lswitch)
                    .await?
                    .map(|v| v.value);
                let others = self.items::<Subnet>().await?;
                validate_subnet_refs(&subnet, ls.as_ref(), &others).map_err(inv)?;
                self.store
                    .create_requiring(&subnet, &[(Kind::LSwitch, &subnet.lswitch)])
                    .await?;
                println!("created subnet {id}");
                Ok(())
            }
            SubnetCmd::Delete { id } => self.subnet_delete(&id).await,
            SubnetCmd::List => self.list::<Subnet>().await,
            SubnetCmd::Show { id } => self.show::<Subnet>(&id).await,
        }
    }

    async fn subnet_delete(&self, id: &str) -> Result<()> {
        let subnet = self.store.get_existing::<Subnet>(id).await?.value;
        // Neutron refuses to delete a subnet whose addresses are still in use.
        let ports = self.items::<LPort>().await?;
        let users: Vec<&str> = ports
            .iter()
            .filter(|p| {
                p.lswitch == subnet.lswitch && p.fixed_ips.iter().any(|ip| subnet.cidr.contains(ip))
            })
            .map(|p| p.id.as_str())
            .collect();
        if !users.is_empty() {
            return Err(CliError::Refused(format!(
                "subnet {id} still has ports with addresses in {} ({}); \
                 delete them or change their fixed IPs first",
                subnet.cidr,
                users.join(", ")
            )));
        }
        let routers = self.items::<LRouter>().await?;
        let users: Vec<&str> = routers
            .iter()
            .filter(|r| {
                r.ports.iter().any(|p| {
                    p.lswitch == subnet.lswitch
                        && p.addrs().any(|ip| subnet.cidr.contains(&ip.addr))
                })
            })
            .map(|r| r.id.as_str())
            .collect();
        if !users.is_empty() {
            return Err(CliError::Refused(format!(
                "subnet {id} still has router interfaces in {} (lrouter {}); \
                 remove them first",
                subnet.cidr,
                users.join(", ")
            )));
        }
        self.store.delete::<Subnet>(id).await?;
        println!("deleted subnet {id}");
        Ok(())
    }
}
