//! Where the eBPF toolchain lives: the nightly toolchain that compiles guard-ebpf and a
//! bpf-linker built against that nightly's own libLLVM. Shared with guard-userspace's build.rs.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// The rustup toolchain that builds the eBPF crate.
pub const NIGHTLY: &str = "nightly";
/// bpf-linker version installed from crates.io.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// Environment variable naming a bpf-linker to use instead of the cached one.
pub const BPF_LINKER_ENV: &str = "GUARD_BPF_LINKER";

/// Facts about the nightly toolchain that decide which bpf-linker fits it.
#[derive(Debug, Clone)]
pub struct Nightly {
    pub sysroot: PathBuf,
    pub commit: String,
    pub llvm_major: String,
}

impl Nightly {
    /// Ask rustup/rustc about the nightly toolchain.
    pub fn detect() -> Result<Self, String> {
        Self::detect_named(NIGHTLY)
    }

    /// Ask rustup/rustc about the toolchain named `toolchain`.
    pub fn detect_named(toolchain: &str) -> Result<Self, String> {
        let out = Command::new("rustc")
            .args([&format!("+{toolchain}"), "-vV"])
            .env_remove("RUSTC")
            .output()
            .map_err(|e| format!("cannot run `rustc +{toolchain} -vV`: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "the {toolchain} toolchain is not installed (`rustc +{toolchain} -vV` failed: {}); \
                 install it with `rustup toolchain install {toolchain} --component rust-src`",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let commit = field("commit-hash:").unwrap_or_else(|| "unknown".into());
        let llvm = field("LLVM version:").ok_or("rustc -vV printed no LLVM version")?;
        let llvm_major = llvm.split('.').next().unwrap_or_default().to_string();
        let out = Command::new("rustc")
            .args([&format!("+{toolchain}"), "--print", "sysroot"])
            .env_remove("RUSTC")
            .output()
            .map_err(|e| format!("cannot run `rustc +{toolchain} --print sysroot`: {e}"))?;
        let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(Self {
            sysroot,
            commit: commit.chars().take(12).collect(),
            llvm_major,
        })
    }

    /// Directory that holds the bpf-linker built for this nightly.
    pub fn bpf_linker_root(&self) -> PathBuf {
        cache_dir().join(format!(
            "bpf-linker-{BPF_LINKER_VERSION}-llvm{}-{}",
            self.llvm_major, self.commit
        ))
    }

    pub fn bpf_linker(&self) -> PathBuf {
        self.bpf_linker_root().join("bin").join("bpf-linker")
    }

    /// The nightly's own libLLVM shared object.
    pub fn libllvm(&self) -> Result<PathBuf, String> {
        let lib = self.sysroot.join("lib");
        let entries = std::fs::read_dir(&lib).map_err(|e| format!("{}: {e}", lib.display()))?;
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libLLVM.so.") || n.starts_with("libLLVM-"))
            })
            .ok_or_else(|| format!("no libLLVM shared object in {}", lib.display()))
    }
}

/// `$GUARD_TOOLCHAIN_CACHE`, else `$XDG_CACHE_HOME/guard/toolchain`, else `~/.cache/guard/toolchain`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os("GUARD_TOOLCHAIN_CACHE") {
        return PathBuf::from(dir);
    }
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("guard").join("toolchain")
}

/// Where [`locate_bpf_linker`] found a bpf-linker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkerSource {
    /// Named by `$GUARD_BPF_LINKER`.
    Env,
    /// Built by `cargo xtask setup` for the current nightly.
    Cached,
    /// Found on PATH; its LLVM may not match the nightly's.
    Path,
}

/// The bpf-linker to use: `$GUARD_BPF_LINKER`, the one cached for the current nightly, or one
/// on PATH, in that order.
pub fn find_bpf_linker(nightly: &Nightly) -> Option<PathBuf> {
    locate_bpf_linker(nightly).map(|(path, _)| path)
}

/// Like [`find_bpf_linker`], and also says where the linker came from.
pub fn locate_bpf_linker(nightly: &Nightly) -> Option<(PathBuf, LinkerSource)> {
    if let Some(p) = env::var_os(BPF_LINKER_ENV) {
        return Some((PathBuf::from(p), LinkerSource::Env));
    }
    let cached = nightly.bpf_linker();
    if cached.is_file() {
        return Some((cached, LinkerSource::Cached));
    }
    which::which("bpf-linker")
        .ok()
        .map(|p| (p, LinkerSource::Path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_nightly_toolchain_is_named_with_the_fix() {
        let err = Nightly::detect_named("guard-no-such-toolchain").unwrap_err();
        assert!(err.contains("guard-no-such-toolchain"), "{err}");
        assert!(err.contains("rustup toolchain install"), "{err}");
    }

    #[test]
    fn the_installed_nightly_is_detected() {
        let n = Nightly::detect().expect("this machine has the nightly toolchain");
        assert!(!n.llvm_major.is_empty());
        assert!(n.bpf_linker_root().to_string_lossy().contains(&n.commit));
    }
}
