//! The Python venv the Neutron driver (`neutron-plugin/`) is tested in: `cargo xtask
//! setup` creates it, `tests/tests/neutron_plugin.rs` runs the driver's tests and its
//! linter in it. This file is the one home of these facts: xtask includes it with
//! `#[path]` (it cannot depend on the tests crate), so it holds constants only.

/// The venv, relative to the workspace root: per checkout, because the driver is
/// installed into it in editable mode (`pip install -e`), pointing at this checkout.
pub(crate) const DIR: &str = "target/neutron-venv";

/// Debian's Python 3.11 (the PATH one may be a pyenv build).
pub(crate) const BASE_PYTHON: &str = "/usr/bin/python3";

/// The driver's package, relative to the workspace root.
pub(crate) const PLUGIN_DIR: &str = "neutron-plugin";

/// What is installed from PyPI, pinned: Neutron and neutron-lib as the driver requires
/// them, the etcd client, and the test and lint tools (Neutron's unit-test bases need
/// oslotest, WebTest and ddt, which its wheel does not pull in).
pub(crate) const REQUIREMENTS: &[&str] = &[
    "neutron==29.0.0",
    "neutron-lib==5.0.1",
    "etcd3gw==2.7.0",
    "jsonschema==4.26.0",
    "stestr==4.2.1",
    "oslotest==6.1.1",
    "WebTest==3.0.7",
    "ddt==1.7.2",
    "hacking==8.1.0",
];

/// Written into the venv once everything is installed, holding [`REQUIREMENTS`]: setup
/// skips the venv when it matches, and rebuilds it when the list changed.
pub(crate) const STAMP: &str = "dragonflow-requirements.txt";
