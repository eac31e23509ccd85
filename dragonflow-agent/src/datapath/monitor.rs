//! The drop events of `dfctl monitor` as the kernel holds them: the ring buffer
//! (`df_drop_ev_v1`) and the switch the datapath reads before emitting one
//! (`df_monitor_v1[0]`: on while a client listens, and the per-CPU rate).

use aya::maps::{Array, MapData, RingBuf};
use dragonflow_common::{
    event::{MON_F_DROPS, MonitorConfig},
    maps as names,
};
use tracing::warn;

use crate::report::Chain;

pub struct MonitorMaps {
    pub ring: RingBuf<MapData>,
    pub switch: Array<MapData, MonitorConfig>,
}

impl MonitorMaps {
    /// Takes both maps out of the loaded object; `None` (drop events disabled, said once)
    /// if either is missing or of another layout.
    pub fn take(ebpf: &mut aya::Ebpf) -> Option<Self> {
        let ring = ebpf.take_map(names::DROP_EVENTS).map(RingBuf::try_from);
        let switch = ebpf.take_map(names::MONITOR).map(Array::try_from);
        match (ring, switch) {
            (Some(Ok(ring)), Some(Ok(switch))) => Some(MonitorMaps { ring, switch }),
            _ => {
                warn!(
                    "{} or {} missing or of another layout; drop events disabled",
                    names::DROP_EVENTS,
                    names::MONITOR
                );
                None
            }
        }
    }

    /// Turns drop events on (at most `rate` per second per CPU) or off.
    pub fn set(&mut self, on: bool, rate: u32) -> Result<(), String> {
        let v = MonitorConfig {
            flags: if on { MON_F_DROPS } else { 0 },
            rate,
        };
        self.switch
            .set(0, v, 0)
            .map_err(|e| format!("cannot set {}[0]: {}", names::MONITOR, Chain(&e)))
    }
}
