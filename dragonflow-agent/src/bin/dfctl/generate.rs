//! Files generated from the clap definitions: shell completion (`dfctl completion SHELL`)
//! and man pages (`dfctl man --out DIR`, hidden; `cargo xtask man` runs it).

use std::{io::Write as _, path::Path};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::{
    Cli,
    error::{CliError, Result},
};

/// The completion script for `shell` on standard output.
pub(crate) fn completion(shell: Shell) -> Result<()> {
    // Into memory first: clap_complete panics on a failed write (e.g. `| head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "dfctl", &mut script);
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        // The reader went away (`dfctl completion bash | head`): nothing left to do.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(|e| CliError::Unavailable(format!("cannot write the script: {e}"))),
    }
}

/// One page per command (`dfctl.1`, `dfctl-lport-create.1`, …) in `out`.
pub(crate) fn man(out: &Path) -> Result<()> {
    let failed = |e: std::io::Error| {
        CliError::Unavailable(format!("cannot write man pages to {}: {e}", out.display()))
    };
    std::fs::create_dir_all(out).map_err(failed)?;
    clap_mangen::generate_to(Cli::command(), out).map_err(failed)?;
    println!("man pages written to {}", out.display());
    Ok(())
}
