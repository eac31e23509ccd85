//! The monitor task: drains the datapath's drop events (`df_drop_ev_v1`) while at least
//! one `GET /monitor` client is connected, decodes each frame's headers and hands the
//! event to the clients (`obs::monitor::Hub`). The datapath emits drop events only while
//! this task has set its switch (`df_monitor_v1`): with no client, nothing is emitted, so
//! nothing is spent in the kernel (one array lookup on the drop path) nor here.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use dragonflow_common::{
    event::DropEvent,
    verdict::{DIRECTIONS, DropReason},
};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use crate::{
    datapath::{monitor::MonitorMaps, sys},
    obs::{
        monitor::{Event, decode},
        state::Shared,
    },
};

/// Runs until the process ends (or the ring buffer fails).
pub async fn run(maps: MonitorMaps, shared: Arc<Shared>, rate: u32) {
    let MonitorMaps { ring, mut switch } = maps;
    let mut set = |on: bool| {
        let v = dragonflow_common::event::MonitorConfig {
            flags: if on {
                dragonflow_common::event::MON_F_DROPS
            } else {
                0
            },
            rate,
        };
        if let Err(e) = switch.set(0, v, 0) {
            warn!(
                "cannot switch drop events {}: {e}",
                if on { "on" } else { "off" }
            );
        }
    };
    // A previous agent may have left them on.
    set(false);
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged for as long
    // as the AsyncFd owns the ring buffer.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("cannot poll the drop-event ring buffer: {e}; dfctl monitor shows no drops");
            return;
        }
    };
    let mut clients = shared.monitor.clients();
    loop {
        while *clients.borrow_and_update() == 0 {
            if clients.changed().await.is_err() {
                return;
            }
        }
        // What a previous session left unread is stale.
        {
            let ring = fd.get_mut();
            while let Some(item) = ring.next() {
                drop(item);
            }
        }
        set(true);
        info!(rate, "monitor client connected: drop events on");
        loop {
            tokio::select! {
                r = fd.readable_mut() => {
                    let mut guard = match r {
                        Ok(g) => g,
                        Err(e) => {
                            warn!("drop-event ring buffer: {e}; drop events off");
                            set(false);
                            return;
                        }
                    };
                    let ring = guard.get_inner_mut();
                    while let Some(item) = ring.next() {
                        if item.len() < size_of::<DropEvent>() {
                            continue;
                        }
                        // SAFETY: the length is checked; DropEvent is plain old data; read
                        // unaligned (the ring only guarantees 8 bytes).
                        let ev: DropEvent =
                            unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                        drop(item);
                        shared.monitor.publish(to_event(&ev, &shared));
                    }
                    guard.clear_ready();
                }
                c = clients.changed() => {
                    if c.is_err() || *clients.borrow_and_update() == 0 {
                        break;
                    }
                }
            }
        }
        set(false);
        info!("last monitor client gone: drop events off");
    }
}

fn to_event(ev: &DropEvent, shared: &Shared) -> Event {
    let (mut ifname, port) = shared.taps.port_of(ev.ifindex);
    if ifname.is_empty() {
        // Not a managed tap (the tunnel device): its name from the kernel.
        ifname = sys::interfaces()
            .ok()
            .and_then(|l| l.into_iter().find(|(i, _)| *i == ev.ifindex))
            .map(|(_, n)| n)
            .unwrap_or_default();
    }
    let n = (ev.captured as usize).min(ev.frame.len());
    Event {
        kind: "drop",
        time_unix_ms: wall_ms(ev.ts_ns, sys::monotonic_ns(), SystemTime::now()),
        ifindex: ev.ifindex,
        ifname,
        port,
        direction: DIRECTIONS
            .iter()
            .find(|d| **d as u32 == ev.direction)
            .map(|d| d.name()),
        reason: DropReason::from_u32(ev.reason).map(DropReason::name),
        frame_len: Some(ev.frame_len),
        headers: decode(&ev.frame[..n]),
    }
}

/// Wall-clock ms of a `bpf_ktime_get_ns` (CLOCK_MONOTONIC) timestamp.
fn wall_ms(ts_ns: u64, mono_now_ns: u64, wall_now: SystemTime) -> u64 {
    let now_ms = wall_now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now_ms.saturating_sub(mono_now_ns.saturating_sub(ts_ns) / 1_000_000)
}
