use std::path::PathBuf;

use aya_build::{Package, Toolchain};

/// Builds the eBPF crate for bpfel-unknown-none with Debian's rustc-web (the only compiler
/// here with rust-src for `-Z build-std=core`, see docs/TOOLCHAIN.md) and leaves the object in
/// OUT_DIR, where `src/datapath` embeds it with `include_bytes_aligned!`.
fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dragonflow-ebpf");
    let root = root.canonicalize()?;
    // aya-build watches the eBPF crate's directory; the object also embeds the shared
    // layouts, so a change there must rebuild it too.
    let common = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dragonflow-common");
    println!(
        "cargo:rerun-if-changed={}",
        common.canonicalize()?.display()
    );
    // The benchmark build (this crate's `bench-progs`, which only the tests crate's `bench`
    // enables) adds the eBPF crate's benchmark programs; the agent's own object has none.
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_BENCH_PROGS").is_some() {
        &["bench-progs"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [Package {
            name: "dragonflow-ebpf",
            root_dir: root.to_str().expect("utf-8 path"),
            features,
            ..Default::default()
        }],
        Toolchain::Custom("/usr"),
    )
}
