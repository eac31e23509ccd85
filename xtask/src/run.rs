//! Running external commands: every command that changes something is shown before it
//! runs, and a failure names the command and how to fix the usual cause.

use std::{
    ffi::OsStr,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask lives one level below it).
pub(crate) fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask has a parent")
            .to_path_buf()
    })
}

/// `cargo` as found on PATH: rustup's proxy when rustup is installed, so `cargo +/usr …`
/// works. (`$CARGO` is the toolchain's own cargo, which does not understand `+toolchain`.)
pub(crate) fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root());
    c
}

/// The command line as a shell would take it, with the environment it sets explicitly.
pub(crate) fn display(c: &Command) -> String {
    let mut s = String::new();
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), quote(v)));
        }
    }
    s.push_str(&quote(c.get_program()));
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&quote(a));
    }
    if let Some(dir) = c.get_current_dir()
        && dir != root()
    {
        s = format!("(cd {} && {s})", dir.display());
    }
    s
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

pub(crate) const BOLD: &str = "1";
pub(crate) const RED: &str = "31";
pub(crate) const CYAN: &str = "36";

/// `text` in an ANSI style when stderr is a terminal (and NO_COLOR is unset).
pub(crate) fn paint(style: &str, text: &str) -> String {
    static COLOR: OnceLock<bool> = OnceLock::new();
    let color = *COLOR.get_or_init(|| {
        // SAFETY: isatty only inspects the descriptor.
        std::env::var_os("NO_COLOR").is_none() && unsafe { libc::isatty(2) } == 1
    });
    if color {
        format!("\x1b[{style}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Prints a step heading.
pub(crate) fn step(what: &str) {
    eprintln!("{}", paint(BOLD, &format!("==> {what}")));
}

/// Prints the command about to run.
pub(crate) fn show(c: &Command) {
    eprintln!("{}", paint(CYAN, &format!("$ {}", display(c))));
}

/// Shows the command, runs it with inherited stdio and returns its status.
pub(crate) fn status(c: &mut Command) -> Result<ExitStatus> {
    show(c);
    let start = Instant::now();
    let st = c.status().map_err(|e| spawn_error(c, e))?;
    let secs = start.elapsed().as_secs_f64();
    if secs >= 2.0 {
        eprintln!("    ({secs:.1} s)");
    }
    Ok(st)
}

/// Shows the command and runs it; a non-zero exit is an error.
pub(crate) fn run(c: &mut Command) -> Result<()> {
    let st = status(c)?;
    if !st.success() {
        bail!("`{}` failed ({st})", display(c));
    }
    Ok(())
}

/// Runs a read-only probe silently and returns (success, stdout). Not shown: probes change
/// nothing. A missing program is `Ok((false, ""))`.
pub(crate) fn probe(c: &mut Command) -> Result<(bool, String)> {
    c.stdin(Stdio::null()).stderr(Stdio::null());
    match c.output() {
        Ok(o) => Ok((
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok((false, String::new())),
        Err(e) => Err(e).with_context(|| format!("could not run `{}`", display(c))),
    }
}

/// Whether a program is on PATH (or is an existing path).
pub(crate) fn have(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn spawn_error(c: &Command, e: std::io::Error) -> anyhow::Error {
    let prog = c.get_program().to_string_lossy().into_owned();
    let hint = if e.kind() != ErrorKind::NotFound {
        String::new()
    } else {
        match prog.as_str() {
            "cargo" | "rustup" => "; install rustup with a stable toolchain and put \
                                   ~/.cargo/bin on PATH (`. ~/.cargo/env`)"
                .into(),
            "apt-get" | "apt-cache" | "dpkg-query" => {
                "; `cargo xtask setup` supports Debian 12 only".into()
            }
            _ => "; run `cargo xtask setup` (as root) to install the tools".into(),
        }
    };
    anyhow::Error::new(e).context(format!("could not run `{}`{hint}", display(c)))
}
