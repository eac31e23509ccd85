use which::which;

/// Rebuild the eBPF object when bpf-linker changes: aya-build's cargo invocation does not
/// track the linker binary itself.
fn main() {
    let bpf_linker = which("bpf-linker").expect(
        "bpf-linker not found on PATH: run `cargo xtask setup` (cargo install bpf-linker --version 0.13.0)",
    );
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
