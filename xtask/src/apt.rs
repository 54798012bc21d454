//! Every Debian package the tooling needs goes through here, in one of two ways:
//! - `install`: system-wide, only when apt's own simulation shows that nothing the machine has
//!   would be removed or downgraded (a machine image may carry newer backports, such as
//!   `qemu-utils` 10.x next to bookworm's qemu 7.2);
//! - `unpack_private`: `apt-get download` + `dpkg -x` into a directory of ours, for tools that
//!   would conflict with what is installed. Nothing on the host changes.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Once,
};

use anyhow::{Context as _, Result, bail};

use crate::util;

/// What `apt-get install -s` would do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Simulation {
    /// `(package, version)` that would be installed or upgraded.
    pub install: Vec<(String, String)>,
    /// Packages that would be removed.
    pub remove: Vec<String>,
    /// `(package, installed version, new version)` that would go to an older version.
    pub downgrade: Vec<(String, String, String)>,
}

impl Simulation {
    /// A sentence naming what would be taken away, if anything.
    pub fn harm(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.remove.is_empty() {
            parts.push(format!("remove {}", self.remove.join(", ")));
        }
        if !self.downgrade.is_empty() {
            let d: Vec<String> = self
                .downgrade
                .iter()
                .map(|(p, from, to)| format!("{p} {from} → {to}"))
                .collect();
            parts.push(format!("downgrade {}", d.join(", ")));
        }
        (!parts.is_empty()).then(|| parts.join(" and "))
    }
}

/// Parse the `Inst`/`Remv` lines of `apt-get install -s`.
/// `Inst pkg [old] (new suite [arch])` is an upgrade or downgrade; `Inst pkg (new …)` is new.
fn parse_simulation(text: &str) -> Simulation {
    let mut sim = Simulation::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Remv") => {
                if let Some(p) = words.next() {
                    sim.remove.push(p.to_owned());
                }
            }
            Some("Inst") => {
                let Some(p) = words.next() else { continue };
                let rest: Vec<&str> = words.collect();
                let old = rest
                    .first()
                    .and_then(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')));
                let new = rest
                    .iter()
                    .find_map(|w| w.strip_prefix('('))
                    .map(|w| w.trim_end_matches(')'));
                let Some(new) = new else { continue };
                if let Some(old) = old
                    && version_lt(new, old)
                {
                    sim.downgrade
                        .push((p.to_owned(), old.to_owned(), new.to_owned()));
                }
                sim.install.push((p.to_owned(), new.to_owned()));
            }
            _ => {}
        }
    }
    sim
}

/// Debian version order, by `dpkg --compare-versions` (the only correct comparison).
fn version_lt(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "lt", b])
        .status()
        .is_ok_and(|s| s.success())
}

/// `apt-get update`, at most once per run: when apt has no lists at all, or `force` (before
/// anything is fetched).
pub fn update(force: bool) -> Result<()> {
    static ONCE: Once = Once::new();
    if !util::is_root() {
        // Only root can refresh the lists; the ones there serve a look-up or a download.
        return Ok(());
    }
    let lists_empty = fs::read_dir("/var/lib/apt/lists")
        .map(|d| {
            !d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
        })
        .unwrap_or(true);
    if !(force || lists_empty) || ONCE.is_completed() {
        return Ok(());
    }
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = util::run(
            Command::new("apt-get")
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null()),
            "check access to the Debian mirror",
        );
    });
    result
}

/// What installing `packages` (without recommends) would do to this machine.
pub fn simulate(packages: &[&str]) -> Result<Simulation> {
    update(false)?;
    let run = || {
        Command::new("apt-get")
            .args(["install", "-s", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .context("cannot run apt-get")
    };
    let mut out = run()?;
    if !out.status.success() {
        // Stale or missing lists ("Unable to locate package"): refresh once and ask again.
        update(true)?;
        out = run()?;
    }
    if !out.status.success() {
        bail!(
            "apt-get cannot resolve {}: {}\n  what to do: check the apt sources and access to \
             the Debian mirror",
            packages.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_simulation(&String::from_utf8_lossy(&out.stdout)))
}

/// Install `packages` system-wide, refusing (before touching anything) when that would remove
/// or downgrade a package the machine has.
pub fn install(packages: &[&str], hint: &str) -> Result<()> {
    if !util::is_root() {
        bail!(
            "{} must be installed and this is not root\n  what to do: {hint}",
            packages.join(" ")
        );
    }
    // The lists a machine image ships may be old: refresh them before anything is fetched.
    update(true)?;
    let sim = simulate(packages)?;
    if let Some(harm) = sim.harm() {
        bail!(
            "installing {} would {harm}; not installing it\n  what to do: unpack it privately \
             (apt-get download + dpkg -x) or provide the tool another way",
            packages.join(" ")
        );
    }
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "--no-remove"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null()),
        hint,
    )
}

/// A private unpack of packages and of every dependency the machine lacks.
pub struct Private {
    pub root: PathBuf,
    /// `(package, version)` unpacked into `root`.
    pub packages: Vec<(String, String)>,
    /// Whether this call downloaded them (false: the cache was complete).
    pub downloaded: bool,
}

impl Private {
    /// The library directories in `root`, for `LD_LIBRARY_PATH` (Debian packages still put some
    /// libraries in `/lib/<triplet>` and others in `/usr/lib/<triplet>`).
    pub fn library_path(&self) -> String {
        let mut dirs = Vec::new();
        for base in ["usr/lib", "lib"] {
            let Ok(entries) = fs::read_dir(self.root.join(base)) else {
                continue;
            };
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir() && p.to_string_lossy().ends_with("-linux-gnu"))
                .collect();
            found.sort();
            dirs.extend(found);
        }
        dirs.iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Unpack `packages` with the dependencies this machine does not have into `dir/root`, never
/// installing anything. apt resolves the set (the `Inst` lines of a simulation, whatever it
/// says it would remove, since nothing is installed). A stamp naming the set makes a second
/// call with the same set free.
pub fn unpack_private(packages: &[&str], dir: &Path) -> Result<Private> {
    let root = dir.join("root");
    let stamp = dir.join("packages.txt");
    // The cache is complete when its stamp names the set apt resolves now.
    let cached = |sim: &Simulation| -> Option<String> {
        let listing: String = sim
            .install
            .iter()
            .map(|(p, v)| format!("{p}={v}\n"))
            .collect();
        let complete = root.is_dir() && fs::read_to_string(&stamp).is_ok_and(|s| s == listing);
        (!complete).then_some(listing)
    };
    let mut sim = simulate(packages)?;
    let mut missing = cached(&sim);
    if missing.is_some() {
        // About to download: the versions must be ones the mirror still serves.
        update(true)?;
        sim = simulate(packages)?;
        missing = cached(&sim);
    }
    let Some(listing) = missing else {
        return Ok(Private {
            root,
            packages: sim.install,
            downloaded: false,
        });
    };
    let debs = dir.join("debs.partial");
    let _ = fs::remove_dir_all(&debs);
    let _ = fs::remove_dir_all(&root);
    let _ = fs::remove_file(&stamp);
    fs::create_dir_all(&debs).with_context(|| format!("cannot create {}", debs.display()))?;
    let mut cmd = Command::new("apt-get");
    if util::is_root() {
        // The directory is root's; apt's `_apt` download user could not write there.
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    util::run(
        cmd.arg("download")
            .args(listing.lines())
            .current_dir(&debs)
            .stdout(Stdio::null()),
        "check access to the Debian mirror (apt-get download needs no root)",
    )?;
    let mut files: Vec<PathBuf> = fs::read_dir(&debs)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    files.sort();
    if files.len() != sim.install.len() {
        bail!(
            "apt-get download left {} .deb files for {} packages in {}",
            files.len(),
            sim.install.len(),
            debs.display()
        );
    }
    for deb in &files {
        util::run(
            Command::new("dpkg").arg("-x").arg(deb).arg(&root),
            "dpkg -x failed; is the download complete?",
        )?;
    }
    fs::remove_dir_all(&debs)?;
    fs::write(&stamp, listing)?;
    Ok(Private {
        root,
        packages: sim.install,
        downloaded: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_ON_A_BACKPORT_IMAGE: &str = "\
NOTE: This is only a simulation!
The following packages will be REMOVED:
  qemu-utils
Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]
Inst libfdt1 (1.6.1-4+b1 Debian:12.15/oldstable [amd64])
Inst seabios (1.16.2-1 Debian:12.15/oldstable [all])
Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b3 Debian:12.15/oldstable [amd64])
Conf libfdt1 (1.6.1-4+b1 Debian:12.15/oldstable [amd64])
";

    #[test]
    fn simulation_names_what_would_be_installed_and_removed() {
        let sim = parse_simulation(QEMU_ON_A_BACKPORT_IMAGE);
        assert_eq!(sim.remove, ["qemu-utils"]);
        assert_eq!(
            sim.install,
            [
                ("libfdt1".into(), "1.6.1-4+b1".into()),
                ("seabios".into(), "1.16.2-1".into()),
                ("qemu-system-x86".into(), "1:7.2+dfsg-7+deb12u18+b3".into()),
            ]
        );
        assert_eq!(sim.harm().as_deref(), Some("remove qemu-utils"));
    }

    #[test]
    fn an_older_version_over_a_newer_one_is_a_downgrade() {
        let sim = parse_simulation(
            "Inst qemu-utils [1:10.0.2+ds-2~bpo12+1] (1:7.2+dfsg-7 Debian:12 [amd64])\n\
             Inst curl [7.88.1-10] (7.88.1-10+deb12u5 Debian:12 [amd64])\n",
        );
        assert_eq!(sim.downgrade.len(), 1, "{sim:?}");
        assert_eq!(sim.downgrade[0].0, "qemu-utils");
        assert!(sim.harm().unwrap().contains("downgrade qemu-utils"));
    }
}
