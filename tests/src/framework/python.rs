//! The one way tests start the Python helpers of `tests/scripts/` (scapy senders and
//! sniffers, VM controllers): Debian's python3 inside a namespace, either run to
//! completion ([`python`]) or kept running with a line protocol on stdin/stdout
//! ([`JsonChild`]).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Mutex,
        mpsc::{self, Receiver},
    },
    thread,
    time::Duration,
};

use serde_json::Value;

use super::{netns::Netns, process::run};

/// Debian's python3 (it has python3-scapy); the PATH one may be a pyenv without scapy.
pub const PYTHON: &str = "/usr/bin/python3";

/// Path of a helper script in `tests/scripts/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// `python3 tests/scripts/<script_name>` in `ns`, not started yet (add arguments, pipes).
pub fn python_command(ns: &Netns, script_name: &str) -> Command {
    let mut c = ns.command(PYTHON);
    c.arg(script(script_name));
    c
}

/// Runs a python3 (scapy) helper script from `tests/scripts/` inside a namespace.
#[track_caller]
pub fn python(ns: &Netns, script_name: &str, args: &[&str]) -> String {
    let mut c = python_command(ns, script_name);
    c.args(args);
    String::from_utf8_lossy(&run(&mut c).stdout).into_owned()
}

/// A long-running helper speaking JSON, one object per line: requests written to its
/// stdin, replies read from its stdout by a thread (so a reply is awaited with a
/// deadline). The VM controllers (`vmctl.py`, `sgctl.py`) are such helpers. Killed on
/// Drop.
pub struct JsonChild {
    /// What it is, for failure messages ("vmctl in VM a").
    pub what: String,
    child: Child,
    io: Mutex<(ChildStdin, Receiver<String>)>,
}

impl JsonChild {
    /// Starts `c` (typically from [`python_command`]) with piped stdin/stdout; its stderr
    /// goes to the test's.
    pub fn spawn(what: &str, mut c: Command) -> JsonChild {
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        JsonChild {
            what: what.to_string(),
            child,
            io: Mutex::new((stdin, rx)),
        }
    }

    /// The next message, or a panic after `timeout` (or when the helper has exited, or
    /// wrote something that is not JSON).
    pub fn recv(&self, timeout: Duration) -> Value {
        let io = self.io.lock().expect("helper lock");
        let line =
            io.1.recv_timeout(timeout)
                .unwrap_or_else(|e| panic!("{}: no answer within {timeout:?} ({e})", self.what));
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: bad answer {line:?}: {e}", self.what))
    }

    /// One request/response round trip, the answer awaited for up to `timeout`.
    pub fn call(&self, req: &Value, timeout: Duration) -> Value {
        {
            let mut io = self.io.lock().expect("helper lock");
            writeln!(io.0, "{req}").unwrap_or_else(|e| panic!("write to {}: {e}", self.what));
            io.0.flush()
                .unwrap_or_else(|e| panic!("flush {}: {e}", self.what));
        }
        self.recv(timeout)
    }
}

impl Drop for JsonChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
