//! Reading back what the maps hold (the agent's `actual` after a restart).

use dragonflow_common::{fwd::ChassisConfig, maps};
use tracing::warn;

use super::{Maps, write::log_err};
use crate::{
    desired::{
        reconcile::{CidrKey, MapEntries, RouteLpmKey},
        secgroups::{IdentLpmKey, PolicyLpmKey},
    },
    report::Chain,
};

impl Maps {
    /// Everything the maps hold now (adopted from a previous agent, or written by us).
    /// Entries that cannot be read are skipped with a warning.
    pub fn read_all(&self) -> MapEntries {
        let mut out = MapEntries::default();
        if let Some(m) = &self.ports {
            out.ports = m.iter().filter_map(log_err(maps::PORTS)).collect();
        }
        if let Some(m) = &self.addrs {
            out.addrs = m.iter().filter_map(log_err(maps::ADDRS)).collect();
        }
        if let Some(m) = &self.cidrs {
            out.cidrs = m
                .iter()
                .filter_map(log_err(maps::CIDRS))
                .map(|(k, v)| {
                    (
                        CidrKey {
                            prefix_len: k.prefix_len(),
                            key: k.data(),
                        },
                        v,
                    )
                })
                .collect();
        }
        if let Some(m) = &self.macs {
            out.macs = m.iter().filter_map(log_err(maps::MACS)).collect();
        }
        if let Some(m) = &self.devmap {
            out.devmap = m
                .iter()
                .filter_map(log_err(maps::DEVMAP))
                .map(|(k, v)| (k, v.if_index))
                .collect();
        }
        if let Some(m) = &self.neigh {
            out.neigh = m.iter().filter_map(log_err(maps::NEIGH)).collect();
        }
        if let Some(m) = &self.routes {
            out.routes = m
                .iter()
                .filter_map(log_err(maps::ROUTES))
                .map(|(k, v)| {
                    (
                        RouteLpmKey {
                            prefix_len: k.prefix_len(),
                            key: k.data(),
                        },
                        v,
                    )
                })
                .collect();
        }
        if let Some(m) = &self.l2 {
            out.l2 = m.iter().filter_map(log_err(maps::L2)).collect();
        }
        if let Some(m) = &self.flood {
            out.flood = m.iter().filter_map(log_err(maps::FLOOD)).collect();
        }
        if let Some(m) = &self.groups {
            out.groups = m.iter().filter_map(log_err(maps::GROUPS)).collect();
        }
        if let Some(m) = &self.tun_peers {
            out.tun_peers = m.iter().filter_map(log_err(maps::TUN_PEERS)).collect();
        }
        if let Some(m) = &self.tun_srcs {
            out.tun_srcs = m.iter().filter_map(log_err(maps::TUN_SRCS)).collect();
        }
        if let Some(m) = &self.ident {
            out.ident = m.iter().filter_map(log_err(maps::IDENT)).collect();
        }
        if let Some(m) = &self.ident_lpm {
            out.ident_lpm = m
                .iter()
                .filter_map(log_err(maps::IDENT_LPM))
                .map(|(k, v)| {
                    (
                        IdentLpmKey {
                            prefix_len: k.prefix_len(),
                            key: k.data(),
                        },
                        v,
                    )
                })
                .collect();
        }
        if let Some(m) = &self.policy {
            out.policy = m
                .iter()
                .filter_map(log_err(maps::POLICY))
                .map(|(k, v)| {
                    (
                        PolicyLpmKey {
                            prefix_len: k.prefix_len(),
                            key: k.data(),
                        },
                        v,
                    )
                })
                .collect();
        }
        if let Some(m) = &self.config {
            // An all-zero slot is what a fresh array holds: nothing written yet.
            match m.get(&0, 0) {
                Ok(c) if c != ChassisConfig::default() => {
                    out.config.insert(0, c);
                }
                Ok(_) => {}
                Err(e) => warn!(map = maps::CONFIG, "cannot read entry: {}", Chain(&e)),
            }
        }
        out
    }
}
