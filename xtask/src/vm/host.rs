//! Debian's cloud kernels for `vm-test`, fetched with `apt-get download` + `dpkg -x` into the
//! cache (never installed on the host), and the cache's location. A kernel that is already
//! cached is not downloaded again. qemu and busybox come from `tools.rs`.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result};

use crate::util::{self, secs};

/// `$GUARD_VM_CACHE`, else `$XDG_CACHE_HOME/guard/vm`, else `~/.cache/guard/vm`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os("GUARD_VM_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("guard").join("vm")
}

/// Whether `path` is an ELF executable without a program interpreter (statically linked).
pub fn is_static_elf(path: &Path) -> bool {
    fs::read(path).is_ok_and(|b| elf_interp_absent(&b))
}

/// True for a 64-bit little-endian ELF whose program headers hold no PT_INTERP.
fn elf_interp_absent(b: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    };
    if b.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let at = usize::try_from(phoff).unwrap_or(usize::MAX) + i * usize::from(phentsize);
        u32_at(at).is_some_and(|t| t != PT_INTERP)
    })
}

/// A Debian kernel series `vm-test` boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    V6_1,
    V6_12,
}

impl Series {
    pub const ALL: [Self; 2] = [Self::V6_1, Self::V6_12];

    pub fn name(self) -> &'static str {
        match self {
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
        }
    }

    /// Whether `package` is a cloud kernel image of this series (not a meta or dbg package).
    fn matches(self, package: &str) -> bool {
        let Some(rest) = package
            .strip_prefix("linux-image-")
            .and_then(|r| r.strip_prefix(self.name()))
            .and_then(|r| r.strip_suffix("-cloud-amd64"))
        else {
            return false;
        };
        // "6.1" must not match "6.12…": the series is followed by a '.' and a version number.
        rest.strip_prefix('.')
            .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
    }
}

/// A kernel ready to boot.
pub struct Kernel {
    pub series: Series,
    pub package: String,
    pub vmlinuz: PathBuf,
    /// The package's `lib/modules/<release>` tree.
    pub modules: PathBuf,
    /// Whether this run downloaded it (false: it came from the cache).
    pub downloaded: bool,
}

/// The newest cloud kernel of `series` the apt lists know, from the cache or downloaded.
pub fn fetch_kernel(series: Series) -> Result<Kernel> {
    let cache = cache_dir().join("kernels");
    let package = match newest_package(series)? {
        Some(p) => p,
        None => {
            // No lists yet (a fresh container): update once and ask again.
            println!(
                "[vm kernel {}] apt knows no such kernel; running apt-get update",
                series.name()
            );
            if util::is_root() {
                crate::apt::update(true)?;
            }
            match newest_package(series)? {
                Some(p) => p,
                None => return cached_only(series, &cache),
            }
        }
    };
    let mut dir = cache.join(&package);
    if let Some(k) = cached(series, &package, &dir) {
        return Ok(k);
    }
    let mut package = package;
    if util::is_root() {
        // About to download: lists a machine image ships may be old, and the mirror keeps only
        // the current kernel of a series. Refresh them and ask again.
        crate::apt::update(true)?;
        if let Some(p) = newest_package(series)? {
            dir = cache.join(&p);
            if let Some(k) = cached(series, &p, &dir) {
                return Ok(k);
            }
            package = p;
        }
    }
    download(&package, &dir)?;
    let mut k = cached(series, &package, &dir)
        .with_context(|| format!("{} is incomplete right after the download", dir.display()))?;
    k.downloaded = true;
    Ok(k)
}

/// A complete cache entry: `vmlinuz` (written last) and `modules/<release>/`.
fn cached(series: Series, package: &str, dir: &Path) -> Option<Kernel> {
    let vmlinuz = dir.join("vmlinuz");
    let modules = fs::read_dir(dir.join("modules"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_dir())?;
    vmlinuz.is_file().then(|| Kernel {
        series,
        package: package.to_owned(),
        vmlinuz,
        modules,
        downloaded: false,
    })
}

/// Without apt knowing the series, a kernel cached earlier still serves (offline runs).
fn cached_only(series: Series, cache: &Path) -> Result<Kernel> {
    let mut cached_kernels: Vec<Kernel> = fs::read_dir(cache)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| series.matches(n))
        .filter_map(|n| cached(series, &n, &cache.join(&n)))
        .collect();
    cached_kernels.sort_by_key(|k| version_key(&k.package));
    cached_kernels.pop().with_context(|| {
        format!(
            "apt knows no linux-image-{}.*-cloud-amd64 package and none is cached in {}\n  \
             what to do: on Debian 12 both series come from bookworm and bookworm-security \
             (6.12 as linux-image-6.12.*+deb12-cloud-amd64); make sure those suites are in the \
             apt sources and run apt-get update",
            series.name(),
            cache.display()
        )
    })
}

/// `apt-cache pkgnames linux-image-` filtered to the series, newest version first.
fn newest_package(series: Series) -> Result<Option<String>> {
    let out = Command::new("apt-cache")
        .args(["pkgnames", "linux-image-"])
        .output()
        .context("cannot run apt-cache (vm-test fetches Debian kernels with apt)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|p| series.matches(p))
        .max_by_key(|p| version_key(p))
        .map(str::to_owned))
}

/// The numbers in a package name, for ordering `6.1.0-9` before `6.1.0-56`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// `apt-get download` the package into a scratch dir, `dpkg -x` it, keep the kernel image and
/// its modules tree (the guest loads a few modules from it).
fn download(package: &str, dir: &Path) -> Result<()> {
    let start = Instant::now();
    let scratch = dir.with_file_name(format!("{package}.partial"));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
    println!("[vm kernel] downloading {package} (apt-get download, not installed)");
    let result = (|| {
        let mut cmd = Command::new("apt-get");
        if util::is_root() {
            // The scratch dir is root's; apt's `_apt` download user could not write there.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        util::run(
            cmd.args(["download", package]).current_dir(&scratch),
            "check access to the Debian mirror (apt-get download needs no root)",
        )?;
        let deb = fs::read_dir(&scratch)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb behind")?;
        let root = scratch.join("root");
        util::run(
            Command::new("dpkg").arg("-x").arg(&deb).arg(&root),
            "dpkg -x failed; is the download complete?",
        )?;
        let image = fs::read_dir(root.join("boot"))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
            .with_context(|| format!("{} holds no boot/vmlinuz-*", deb.display()))?;
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let modules = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|m| root.join(m))
            .find(|m| m.is_dir())
            .with_context(|| format!("{} holds no lib/modules", deb.display()))?;
        fs::rename(&modules, dir.join("modules"))?;
        fs::copy(&image, dir.join("vmlinuz.tmp"))?;
        fs::rename(dir.join("vmlinuz.tmp"), dir.join("vmlinuz"))?;
        anyhow::Ok(())
    })();
    let _ = fs::remove_dir_all(&scratch);
    result.with_context(|| format!("fetching kernel package {package}"))?;
    println!(
        "[vm kernel] {package} cached in {} ({})",
        dir.display(),
        secs(start.elapsed())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_match_their_own_packages_only() {
        assert!(Series::V6_1.matches("linux-image-6.1.0-56-cloud-amd64"));
        assert!(!Series::V6_1.matches("linux-image-6.12.117+deb12-cloud-amd64"));
        assert!(Series::V6_12.matches("linux-image-6.12.117+deb12-cloud-amd64"));
        assert!(!Series::V6_12.matches("linux-image-6.12-cloud-amd64"));
        assert!(!Series::V6_12.matches("linux-image-6.12.117+deb12-cloud-amd64-dbg"));
        assert!(!Series::V6_1.matches("linux-image-cloud-amd64"));
    }

    #[test]
    fn newer_kernels_sort_last() {
        let mut v = [
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.1.0-9-cloud-amd64",
        ];
        v.sort_by_key(|n| version_key(n));
        assert_eq!(v[1], "linux-image-6.1.0-56-cloud-amd64");
    }

    #[test]
    fn static_elf_is_recognised() {
        let me = env::current_exe().unwrap();
        assert!(
            !is_static_elf(&me),
            "the test binary links glibc dynamically"
        );
        assert!(!elf_interp_absent(b"not an elf"));
    }
}
