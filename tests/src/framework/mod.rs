//! The test framework: guards that undo what they made on Drop (namespaces, bpffs mounts,
//! etcd members, agent and helper processes, even when a test panics), command running
//! with deadlines, the agent's HTTP endpoints, and BPF_PROG_TEST_RUN ([`test_run`]).

pub mod agent;
pub mod etcd;
pub mod hook;
pub mod http;
pub mod netns;
pub mod pin;
pub mod process;
pub mod python;
pub mod rawbpf;
pub mod test_run;

use std::{
    net::TcpListener,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

/// A TCP port free on loopback right now (the caller binds it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A unique temp path for one guard.
fn temp_path(what: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "df-test-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}
