//! The tools that check `deploy/` offline (tests/tests/deploy.rs): `cargo xtask setup`
//! installs them, the tests run them. This file is the one home of these facts: xtask
//! includes it with `#[path]` (it cannot depend on the tests crate), so it holds
//! constants only.

/// The venv with the Kubernetes manifest validator, relative to the workspace root.
pub(crate) const VENV_DIR: &str = "target/deploy-venv";

/// Debian's Python 3.11 (the PATH one may be a pyenv build).
pub(crate) const BASE_PYTHON: &str = "/usr/bin/python3";

/// From PyPI, pinned: the validator carries the Kubernetes API schemas, so it needs no
/// network when it runs.
pub(crate) const REQUIREMENTS: &[&str] = &["kubernetes-validate==1.37.0"];

/// Written into the venv once everything is installed, holding [`REQUIREMENTS`]: setup
/// skips the venv when it matches, and rebuilds it when the list changed.
pub(crate) const STAMP: &str = "dragonflow-requirements.txt";

/// promtool comes in Debian's `prometheus` package, which also installs and enables a
/// Prometheus server. Setup downloads the package (`apt-get download`) and unpacks only
/// this binary, never installing it: no server, no service, no `prometheus` user.
pub(crate) const PROMTOOL_PACKAGE: &str = "prometheus";

/// Where setup puts promtool: a system cache shared by checkouts, like the guest kernel's.
pub(crate) const PROMTOOL_DIR: &str = "/var/cache/dragonflow/promtool";

/// The binary in [`PROMTOOL_DIR`]; published by an atomic rename once it runs.
pub(crate) const PROMTOOL: &str = "/var/cache/dragonflow/promtool/promtool";
