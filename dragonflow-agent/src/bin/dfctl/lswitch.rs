//! `dfctl lswitch`: logical switches (Neutron networks).

use clap::Subcommand;
use dragonflow_agent::nb::{AapMode, Kind, LPort, LRouter, LSwitch, Subnet};

use crate::{
    ctx::Ctx,
    error::{CliError, Result},
    output::{Tabular, dash, mode},
};

#[derive(Subcommand, Debug)]
pub(crate) enum LswitchCmd {
    /// Create a logical switch.
    Create {
        /// The lswitch id (no '/').
        id: String,
        /// VXLAN VNI (segmentation_id), 1..=16777215.
        #[arg(long)]
        vni: u32,
        /// A human-readable name.
        #[arg(long, default_value = "")]
        name: String,
        /// MTU of the network's ports, 68..=9000.
        #[arg(long, default_value_t = dragonflow_agent::nb::default_mtu())]
        mtu: u16,
        /// Override the agents' aap_mode for this network.
        #[arg(long, value_enum)]
        aap_mode: Option<AapMode>,
    },
    /// Delete a logical switch and its subnets (refused while ports or router interfaces
    /// are on it).
    Delete {
        /// The lswitch id.
        id: String,
    },
    /// List the logical switches.
    List,
    /// Show one logical switch.
    Show {
        /// The lswitch id.
        id: String,
    },
}

impl Tabular for LSwitch {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "VNI", "MTU", "AAP_MODE"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            dash(self.name.clone()),
            self.segmentation_id.to_string(),
            self.mtu.to_string(),
            self.aap_mode.map_or_else(|| "-".into(), mode),
        ]
    }
}

impl Ctx {
    pub(crate) async fn lswitch(&self, c: LswitchCmd) -> Result<()> {
        match c {
            LswitchCmd::Create {
                id,
                vni,
                name,
                mtu,
                aap_mode,
            } => {
                let ls = LSwitch {
                    id,
                    name,
                    segmentation_id: vni,
                    mtu,
                    aap_mode,
                };
                self.check(&ls)?;
                self.store.create(&ls).await?;
                println!("created lswitch {}", ls.id);
                Ok(())
            }
            LswitchCmd::Delete { id } => self.lswitch_delete(&id).await,
            LswitchCmd::List => self.list::<LSwitch>().await,
            LswitchCmd::Show { id } => self.show::<LSwitch>(&id).await,
        }
    }

    async fn lswitch_delete(&self, id: &str) -> Result<()> {
        self.store.get_existing::<LSwitch>(id).await?;
        let ports = self.items::<LPort>().await?;
        let users: Vec<&str> = ports
            .iter()
            .filter(|p| p.lswitch == id)
            .map(|p| p.id.as_str())
            .collect();
        if !users.is_empty() {
            return Err(CliError::Refused(format!(
                "lswitch {id} still has ports ({}); delete them first",
                users.join(", ")
            )));
        }
        let routers = self.items::<LRouter>().await?;
        let users: Vec<&str> = routers
            .iter()
            .filter(|r| r.ports.iter().any(|p| p.lswitch == id))
            .map(|r| r.id.as_str())
            .collect();
        if !users.is_empty() {
            return Err(CliError::Refused(format!(
                "lswitch {id} still has router interfaces (lrouter {}); \
                 remove them first (dfctl lrouter remove-interface ROUTER --lswitch {id})",
                users.join(", ")
            )));
        }
        // Subnets go with their network, as in Neutron.
        let subnets = self.items::<Subnet>().await?;
        let mut objs = vec![(Kind::LSwitch, id)];
        objs.extend(
            subnets
                .iter()
                .filter(|s| s.lswitch == id)
                .map(|s| (Kind::Subnet, s.id.as_str())),
        );
        self.store.delete_all(&objs).await?;
        println!("deleted lswitch {id}");
        Ok(())
    }
}
