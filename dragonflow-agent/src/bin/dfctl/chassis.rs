//! `dfctl chassis`: hypervisors registered by their agents (read-only: agents write them).

use clap::Subcommand;
use dragonflow_agent::nb::Chassis;

use crate::{
    ctx::Ctx,
    error::Result,
    output::{Tabular, dash, mode},
};

#[derive(Subcommand, Debug)]
pub(crate) enum ChassisCmd {
    /// List the registered hypervisors.
    List,
    /// Show one hypervisor.
    Show {
        /// The chassis name (as its agent registered it).
        name: String,
    },
}

impl Tabular for Chassis {
    const HEADERS: &'static [&'static str] = &["NAME", "TUNNEL_IP", "AAP_MODE", "VERSION"];
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.tunnel_ip.to_string(),
            mode(self.aap_mode),
            dash(self.version.clone()),
        ]
    }
}

impl Ctx {
    pub(crate) async fn chassis(&self, c: ChassisCmd) -> Result<()> {
        match c {
            ChassisCmd::List => self.list::<Chassis>().await,
            ChassisCmd::Show { name } => self.show::<Chassis>(&name).await,
        }
    }
}
