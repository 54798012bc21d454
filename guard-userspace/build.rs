//! Builds guard-ebpf for bpfel-unknown-none with the nightly toolchain and a bpf-linker that
//! matches it, so that a plain `cargo build` on stable produces a complete `guard` binary.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};
use xtask::toolchain::{self, Nightly};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={}", toolchain::BPF_LINKER_ENV);
    println!("cargo:rerun-if-env-changed=GUARD_TOOLCHAIN_CACHE");
    let nightly = Nightly::detect().map_err(|e| anyhow!("eBPF build: {e}"))?;
    let linker = toolchain::find_bpf_linker(&nightly).ok_or_else(|| {
        anyhow!(
            "eBPF build: no bpf-linker for the {} toolchain (LLVM {}) at {} nor on PATH; \
             run `cargo xtask setup` once (it builds bpf-linker from crates.io), or point {} at one",
            toolchain::NIGHTLY,
            nightly.llvm_major,
            nightly.bpf_linker().display(),
            toolchain::BPF_LINKER_ENV
        )
    })?;
    println!("cargo:rerun-if-changed={}", linker.display());
    let linker_dir = linker.parent().context("bpf-linker path has no parent")?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![linker_dir.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    let joined = std::env::join_paths(dirs)?;
    // SAFETY: build scripts are single-threaded; the cargo child inherits PATH.
    unsafe {
        std::env::set_var("PATH", joined);
        std::env::remove_var("RUST_BACKTRACE");
    }
    let ebpf = Package {
        name: "guard-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../guard-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::Custom(toolchain::NIGHTLY))
        .context("building guard-ebpf (see the warnings above for the compiler output)")
}
