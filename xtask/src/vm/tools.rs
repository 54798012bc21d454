//! The host programs `vm-test` runs: qemu (with its firmware) and a static busybox for the guest.
//! A machine that already has them installed uses its own; otherwise they are unpacked from
//! Debian's packages into the cache (`apt.rs`) and run from there, because installing
//! bookworm's qemu-system-x86 7.2 would remove a newer `qemu-utils` the machine may carry.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use super::host::{cache_dir, is_static_elf};
use crate::{apt, util};

const QEMU: &str = "qemu-system-x86_64";
const QEMU_PACKAGE: &str = "qemu-system-x86";
const BUSYBOX_PACKAGE: &str = "busybox-static";

/// How to start qemu.
#[derive(Clone, Debug)]
pub struct Qemu {
    pub program: PathBuf,
    /// `LD_LIBRARY_PATH` for a private unpack (empty for an installed qemu).
    pub library_path: String,
    /// `-L` directories: qemu's data, SeaBIOS and iPXE (private unpack only).
    pub firmware: Vec<PathBuf>,
}

impl Qemu {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        if !self.library_path.is_empty() {
            cmd.env("LD_LIBRARY_PATH", &self.library_path);
        }
        for dir in &self.firmware {
            cmd.arg("-L").arg(dir);
        }
        cmd
    }
}

/// The tools a run uses and where they came from.
pub struct Tools {
    pub qemu: Qemu,
    pub busybox: PathBuf,
    /// One line for the log: which are installed, which unpacked, and how long it took.
    pub note: String,
}

/// Find or unpack qemu and busybox, then check that qemu starts.
pub fn ensure() -> Result<Tools> {
    let start = Instant::now();
    let installed_qemu = which::which(QEMU).ok();
    let installed_busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| is_static_elf(p));
    let mut wanted = Vec::new();
    if installed_qemu.is_none() {
        wanted.push(QEMU_PACKAGE);
    }
    if installed_busybox.is_none() {
        wanted.push(BUSYBOX_PACKAGE);
    }
    let private = if wanted.is_empty() {
        None
    } else {
        Some(
            apt::unpack_private(&wanted, &cache_dir().join("host-tools"))
                .with_context(|| format!("unpacking {} privately", wanted.join(" ")))?,
        )
    };
    let qemu = match (&installed_qemu, &private) {
        (Some(program), _) => Qemu {
            program: program.clone(),
            library_path: String::new(),
            firmware: Vec::new(),
        },
        (None, Some(p)) => Qemu {
            program: p.root.join("usr/bin").join(QEMU),
            library_path: p.library_path(),
            firmware: ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"]
                .iter()
                .map(|d| p.root.join(d))
                .filter(|d| d.is_dir())
                .collect(),
        },
        (None, None) => unreachable!("qemu is either installed or unpacked"),
    };
    let busybox = match (&installed_busybox, &private) {
        (Some(b), _) => b.clone(),
        (None, Some(p)) => p.root.join("bin/busybox"),
        (None, None) => unreachable!("busybox is either installed or unpacked"),
    };
    let version = check_qemu(&qemu)?;
    if !is_static_elf(&busybox) {
        bail!(
            "{} is not a static executable\n  what to do: remove {} and run again",
            busybox.display(),
            cache_dir().join("host-tools").display()
        );
    }
    let origin = |installed: bool| if installed { "installed" } else { "private" };
    let mut note = format!(
        "{version} ({}: {}), busybox ({}: {})",
        origin(installed_qemu.is_some()),
        qemu.program.display(),
        origin(installed_busybox.is_some()),
        busybox.display()
    );
    if let Some(p) = &private {
        let how = if p.downloaded {
            "downloaded and unpacked"
        } else {
            "cached"
        };
        note.push_str(&format!(
            "; {} packages {how}, none installed, in {}",
            p.packages.len(),
            util::secs(start.elapsed())
        ));
    }
    Ok(Tools {
        qemu,
        busybox,
        note,
    })
}

/// `qemu --version` must run: every shared library found, the program intact.
fn check_qemu(qemu: &Qemu) -> Result<String> {
    let out = qemu
        .command()
        .arg("--version")
        .output()
        .with_context(|| format!("cannot start {}", qemu.program.display()))?;
    if !out.status.success() {
        bail!(
            "`{} --version` failed ({}): {}\n  what to do: remove {} so that it is unpacked \
             again, or install qemu-system-x86 where that removes nothing",
            qemu.program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            cache_dir().join("host-tools").display()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .next()
        .map(|l| l.trim().replace("QEMU emulator version", "qemu"))
        .unwrap_or_else(|| "qemu".into()))
}

/// Where busybox's applets point in the guest: its canonical host path when installed, the
/// usual place otherwise.
pub fn guest_busybox_path(busybox: &Path) -> PathBuf {
    if busybox.starts_with(cache_dir()) {
        PathBuf::from("/usr/bin/busybox")
    } else {
        std::fs::canonicalize(busybox).unwrap_or_else(|_| busybox.to_path_buf())
    }
}
