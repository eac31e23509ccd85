//! `dfctl trace` on this chassis: a frame run through the loaded programs with
//! `BPF_PROG_TEST_RUN`, on the live maps, in trace mode (docs/DESIGN.md, "Tracing a
//! packet"; the kernel side is `dragonflow_common::trace`).
//!
//! The programs recognise a trace by a random 64-bit token this agent draws at start and
//! writes into `df_trace_key_v1` (read-only to the programs): the token travels in the
//! run's context where only `BPF_PROG_TEST_RUN` can put it (TC: `__sk_buff.cb[0..2]`;
//! XDP: the first 8 bytes of the metadata area). A traced run writes what would have
//! happened into `df_trace_v1`, which this module clears before and reads after a trace;
//! traces are serialized by a mutex (one record).

use std::{io, os::fd::AsFd as _, sync::Mutex};

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::ProgramFd,
};
use dragonflow_common::{
    maps::progs,
    trace::{FWD_HANDOFF, FWD_NONE, TRACE, TRACE_KEY, TraceRecord, XDP_META_LEN},
};

use super::sys;
use crate::config::Hook;

/// XDP_PASS: the frame goes up to the skb path (and the TC companion).
const XDP_PASS: u32 = 2;
/// Room for a rewritten frame (the responder and L3 never grow one; a tunnel's
/// encapsulation is done by the device, not the program).
const FRAME_OUT_MAX: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("map {0} is not in the eBPF object")]
    NoMap(&'static str),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("cannot draw the trace token")]
    Token(#[source] getrandom::Error),
    #[error("program {0} is not loaded on this agent")]
    NoProgram(&'static str),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("BPF_PROG_TEST_RUN of {name} failed")]
    Run {
        name: &'static str,
        #[source]
        source: io::Error,
    },
}

/// One program run of a trace.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProgRun {
    pub program: &'static str,
    /// The XDP or TC action the program returned.
    pub retval: u32,
    /// The frame after the program (rewritten by the responder or L3, as it would leave).
    #[serde(skip)]
    pub frame: Vec<u8>,
}

/// What a trace did: the program runs in order and what the programs noted.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub runs: Vec<ProgRun>,
    pub record: TraceRecord,
}

/// The programs of this agent's hook and the trace maps (see the module docs).
pub struct Tracer {
    token: u64,
    hook: Hook,
    xdp: Option<ProgramFd>,
    tc: Option<ProgramFd>,
    out: Mutex<Array<MapData, TraceRecord>>,
}

impl Tracer {
    /// Draws the token and writes it into the loaded object's `df_trace_key_v1`; takes the
    /// trace maps and a handle on the from-VM programs of `hook`. Call before the programs
    /// are attached (the object is handed to the controller afterwards).
    pub fn new(ebpf: &mut Ebpf, hook: Hook) -> Result<Self, TraceError> {
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).map_err(TraceError::Token)?;
        // Never 0: the programs read 0 as "no token" (a context with nothing set).
        let token = u64::from_ne_bytes(raw) | 1;
        let map_err = |name| {
            move |e: aya::maps::MapError| TraceError::Map {
                name,
                source: Box::new(e),
            }
        };
        let mut key: Array<MapData, u64> = Array::try_from(
            ebpf.take_map(TRACE_KEY)
                .ok_or(TraceError::NoMap(TRACE_KEY))?,
        )
        .map_err(map_err(TRACE_KEY))?;
        key.set(0, token, 0).map_err(map_err(TRACE_KEY))?;
        let out: Array<MapData, TraceRecord> =
            Array::try_from(ebpf.take_map(TRACE).ok_or(TraceError::NoMap(TRACE))?)
                .map_err(map_err(TRACE))?;
        let fd = |name: &'static str| -> Result<Option<ProgramFd>, TraceError> {
            let Some(p) = ebpf.program(name) else {
                return Ok(None);
            };
            let Ok(fd) = p.fd() else {
                // Not loaded: not this agent's hook.
                return Ok(None);
            };
            fd.try_clone()
                .map(Some)
                .map_err(|source| TraceError::Program { name, source })
        };
        Ok(Tracer {
            token,
            hook,
            xdp: fd(progs::FROM_VM_XDP)?,
            tc: fd(progs::FROM_VM_TC)?,
            out: Mutex::new(out),
        })
    }

    /// The hook the from-VM frames of this chassis go through.
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// Runs `frame` as if the tap `ifindex` had received it from its VM: through the
    /// program attached on the agent's hook, and when XDP hands the frame to its TC
    /// companion (as the real path does with XDP_PASS), through that too.
    pub fn run(&self, ifindex: u32, frame: &[u8]) -> Result<Outcome, TraceError> {
        // One record: one trace at a time. A poisoned lock only means a trace panicked;
        // the record is cleared below anyway.
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.set(0, TraceRecord::default(), 0)
            .map_err(|e| TraceError::Map {
                name: TRACE,
                source: Box::new(e),
            })?;
        let mut runs = Vec::new();
        let mut tc_frame = Some(frame.to_vec());
        if self.hook == Hook::Xdp {
            let prog = self
                .xdp
                .as_ref()
                .ok_or(TraceError::NoProgram(progs::FROM_VM_XDP))?;
            let run = self.run_xdp(prog, ifindex, frame)?;
            let mut record = read(&out)?;
            let handoff = run.retval == XDP_PASS && record.fwd == FWD_HANDOFF;
            if handoff {
                // The TC companion decides where the frame goes (or drops it): the
                // record's decision is its, not the hand-off (the program list shows it).
                record.fwd = FWD_NONE;
                out.set(0, record, 0).map_err(|e| TraceError::Map {
                    name: TRACE,
                    source: Box::new(e),
                })?;
            }
            tc_frame = handoff.then(|| run.frame.clone());
            runs.push(run);
        }
        if let Some(f) = tc_frame {
            let prog = self
                .tc
                .as_ref()
                .ok_or(TraceError::NoProgram(progs::FROM_VM_TC))?;
            runs.push(self.run_tc(prog, ifindex, &f)?);
        }
        Ok(Outcome {
            runs,
            record: read(&out)?,
        })
    }

    fn run_xdp(&self, prog: &ProgramFd, ifindex: u32, frame: &[u8]) -> Result<ProgRun, TraceError> {
        let name = progs::FROM_VM_XDP;
        let mut data = self.token.to_ne_bytes().to_vec();
        data.extend_from_slice(frame);
        // xdp_md: data (= the metadata's length), data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let mut ctx = [0u8; 24];
        ctx[0..4].copy_from_slice(&XDP_META_LEN.to_ne_bytes());
        ctx[4..8].copy_from_slice(&(data.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let (retval, mut out) =
            test_run(prog, &data, &ctx).map_err(|source| TraceError::Run { name, source })?;
        // data_out starts at the metadata.
        let meta = (XDP_META_LEN as usize).min(out.len());
        out.drain(..meta);
        Ok(ProgRun {
            program: name,
            retval,
            frame: out,
        })
    }

    fn run_tc(&self, prog: &ProgramFd, ifindex: u32, frame: &[u8]) -> Result<ProgRun, TraceError> {
        let name = progs::FROM_VM_TC;
        // __sk_buff up to cb[4]: ifindex at 40 (the skb's device: the tap), cb[0..2] at 48.
        // The kernel takes a shorter context than its struct, with only the fields it
        // lets a test set non-zero.
        let mut ctx = [0u8; 68];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        ctx[48..52].copy_from_slice(&(self.token as u32).to_ne_bytes());
        ctx[52..56].copy_from_slice(&((self.token >> 32) as u32).to_ne_bytes());
        let (retval, frame) =
            test_run(prog, frame, &ctx).map_err(|source| TraceError::Run { name, source })?;
        Ok(ProgRun {
            program: name,
            retval,
            frame,
        })
    }
}

fn read(out: &Array<MapData, TraceRecord>) -> Result<TraceRecord, TraceError> {
    out.get(&0, 0).map_err(|e| TraceError::Map {
        name: TRACE,
        source: Box::new(e),
    })
}

/// One `BPF_PROG_TEST_RUN` of `prog` on `data` with the context `ctx`: the program's
/// return value and the frame after it.
fn test_run(prog: &ProgramFd, data: &[u8], ctx: &[u8]) -> io::Result<(u32, Vec<u8>)> {
    let run = sys::prog_test_run(
        prog.as_fd(),
        data,
        Some(ctx),
        FRAME_OUT_MAX.max(data.len()),
        0,
    )?;
    Ok((run.retval, run.data_out))
}
