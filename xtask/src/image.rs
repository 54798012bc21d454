//! `cargo xtask image`: an OCI image holding the static (musl, release) guard binary, built
//! offline and loaded into the local container engine (podman; docker only when its daemon
//! answers).
//!
//! No registry is reachable from the machines this runs on, so nothing is pulled and there is
//! no base image: the image is one layer made from a directory (`target/image/rootfs`) with
//! `podman import`. It holds guard, the directories guard writes to, and minimal `/etc/passwd`
//! and `/etc/group`; no shell. The policy comes from a mount at `/etc/guard`.
//!
//! Each image carries the sha256 of the binary it was made from as a label, so a second run
//! (or `ensure_image` from the test tier) imports only when the binary changed.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, util, util::secs, vm::binaries};

/// The repository every default tag lives in (`localhost/` so no engine looks it up remotely).
const REPO: &str = "localhost/guard";
/// Where the binary sits in the image.
const GUARD_PATH: &str = "/usr/local/bin/guard";
/// The label holding the sha256 of the binary the image was made from.
const HASH_LABEL: &str = "guard.binary.sha256";
/// Podman's `RLIMIT_NOFILE` and `RLIMIT_NPROC` for rootful containers (see [`ulimit_flags`]).
const PODMAN_RLIMIT: u64 = 1_048_576;

/// Which container engine to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    /// podman when installed (installed with apt-get when missing, as root), else docker
    /// when `docker info` succeeds.
    Auto,
    Podman,
    Docker,
}

/// What `cargo xtask image` was asked for.
pub struct Options {
    pub engine: EngineChoice,
    /// The main tag; `<repo>:latest` is set too.
    pub tag: Option<String>,
    /// Import even when the loaded image already holds this binary.
    pub force: bool,
}

/// A container engine and the flags this machine needs for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    /// `podman` or `docker`.
    pub program: String,
    /// Flags before the subcommand (`--runtime runc` on a hybrid cgroup layout, …).
    pub global: Vec<String>,
    /// Flags every `run` needs here (`--ulimit nofile=…`).
    pub run: Vec<String>,
}

impl Engine {
    /// The engine with its global flags; add the subcommand.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.global);
        cmd
    }

    /// `ENGINE GLOBAL… run RUN…`; add the container's own flags, the image and its arguments.
    pub fn run_command(&self) -> Command {
        let mut cmd = self.command();
        cmd.arg("run").args(&self.run);
        cmd
    }
}

/// The engine `Auto` picks, with this machine's flags (see [`podman_global_flags`] and
/// [`ulimit_flags`]).
pub fn engine() -> Result<Engine> {
    engine_for(EngineChoice::Auto)
}

fn engine_for(choice: EngineChoice) -> Result<Engine> {
    let podman = which::which("podman").is_ok();
    match choice {
        EngineChoice::Podman | EngineChoice::Auto if podman => podman_engine(),
        EngineChoice::Docker => docker_engine(),
        EngineChoice::Auto if docker_answers() => docker_engine(),
        _ => bail!(
            "podman is not installed (and no docker daemon answers)\n  what to do: as root, \
             `cargo xtask image` or `cargo xtask test` installs it (apt-get install podman runc)"
        ),
    }
}

fn docker_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn docker_engine() -> Result<Engine> {
    if !docker_answers() {
        bail!("`docker info` fails: no docker daemon answers\n  what to do: use podman");
    }
    Ok(Engine {
        program: "docker".into(),
        global: Vec::new(),
        run: Vec::new(),
    })
}

fn podman_engine() -> Result<Engine> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let systemd = Path::new("/run/systemd/system").is_dir();
    let global = podman_global_flags(&mounts, systemd);
    if global.iter().any(|f| f == "runc") && which::which("runc").is_err() {
        bail!(
            "podman needs runc here (crun refuses a hybrid cgroup layout) and runc is not \
             installed\n  what to do: apt-get install runc (`cargo xtask test` installs it)"
        );
    }
    let limits = fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let pid_max = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap_or_default();
    Ok(Engine {
        program: "podman".into(),
        global,
        run: ulimit_flags(&limits, pid_max.trim().parse().ok()),
    })
}

/// The global flags podman needs on a machine:
/// - `--runtime runc` unless `/sys/fs/cgroup` is a pure cgroup v2 mount: crun refuses the hybrid
///   layout (v1 controllers plus v2 at `/sys/fs/cgroup/unified`) with "cgroups in hybrid mode
///   not supported";
/// - without systemd as init, `--cgroup-manager cgroupfs` and `--events-backend file` (the
///   systemd manager and the journald backend need systemd; podman guesses so too, but a
///   containers.conf may say otherwise).
fn podman_global_flags(mounts: &str, systemd: bool) -> Vec<String> {
    let mut global = Vec::new();
    if !cgroup2_unified(mounts) {
        global.extend(["--runtime".into(), "runc".into()]);
    }
    if !systemd {
        global.extend(["--cgroup-manager".into(), "cgroupfs".into()]);
        global.extend(["--events-backend".into(), "file".into()]);
    }
    global
}

/// `--ulimit` flags for the limits podman would otherwise set too high. Rootful podman gives a
/// container `nofile` and `nproc` of 1048576; runc sets them with prlimit, which cannot raise a
/// hard limit without CAP_SYS_RESOURCE (root here lacks it) above what podman itself has: its
/// hard `nofile`, and for `nproc` the smaller of its hard limit and `kernel.pid_max` (podman
/// lowers its own `RLIMIT_NPROC` to pid_max at start). Anything above fails the start with
/// "error setting rlimit type 7 (or 6): operation not permitted".
fn ulimit_flags(limits: &str, pid_max: Option<u64>) -> Vec<String> {
    let nofile = hard_limit(limits, "Max open files");
    let nproc = [hard_limit(limits, "Max processes"), pid_max]
        .into_iter()
        .flatten()
        .min();
    [("nofile", nofile), ("nproc", nproc)]
        .into_iter()
        .filter_map(|(name, n)| n.filter(|n| *n < PODMAN_RLIMIT).map(|n| (name, n)))
        .flat_map(|(name, n)| ["--ulimit".into(), format!("{name}={n}:{n}")])
        .collect()
}

/// Whether the last mount on `/sys/fs/cgroup` in a mounts table is cgroup2 (unified layout).
fn cgroup2_unified(mounts: &str) -> bool {
    mounts
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip(1);
            Some((w.next()?, w.next()?))
        })
        .rfind(|(at, _)| *at == "/sys/fs/cgroup")
        .is_some_and(|(_, fs)| fs == "cgroup2")
}

/// A hard limit from `/proc/self/limits` by its name (`None` when unlimited or unreadable).
fn hard_limit(limits: &str, name: &str) -> Option<u64> {
    let rest = limits.lines().find_map(|l| l.strip_prefix(name))?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The default tag: the workspace version.
pub fn default_tag() -> String {
    format!("{REPO}:{}", env!("CARGO_PKG_VERSION"))
}

/// The tags an image gets: `tag`, and `latest` in the same repository.
fn tags_for(tag: &str) -> Vec<String> {
    // `host:port/name` has a colon but no tag: the engines read it as `:latest`.
    let (repo, tagged) = match tag.rsplit_once(':') {
        Some((repo, t)) if !t.contains('/') => (repo, true),
        _ => (tag, false),
    };
    let latest = format!("{repo}:latest");
    if !tagged || latest == tag {
        vec![latest]
    } else {
        vec![tag.to_owned(), latest]
    }
}

/// `cargo xtask image`.
pub fn image(opts: &Options) -> Result<()> {
    setup::setup()?;
    println!("[image] {}", binaries::ensure_musl_target()?);
    if opts.engine != EngineChoice::Docker {
        ensure_podman(opts.engine == EngineChoice::Podman)?;
    }
    let engine = engine_for(opts.engine)?;
    let tag = opts.tag.clone().unwrap_or_else(default_tag);
    ensure(&engine, &tags_for(&tag), opts.force)?;
    Ok(())
}

/// For the test tier: the image of the current release musl binary, loaded into [`engine`];
/// built and imported only when missing or made from another binary. Returns the default tag.
/// Expects `setup` to have run (the test tier does it first).
///
/// A daemon in it needs, after `engine().run_command()`: `--privileged --pid=host`, bpffs
/// (`-v /sys/fs/bpf:/sys/fs/bpf`) and, on a hybrid cgroup layout, the v2 hierarchy
/// (`-v /sys/fs/cgroup/unified:/sys/fs/cgroup/unified`: podman mounts only the v1 ones there),
/// plus the policy at `/etc/guard` and `/run/guard` for the API socket.
pub fn ensure_image() -> Result<String> {
    binaries::ensure_musl_target()?;
    let tags = tags_for(&default_tag());
    ensure(&engine()?, &tags, false)?;
    Ok(tags[0].clone())
}

/// As root, install podman (and runc) when podman is missing and no docker daemon could do
/// instead (unless podman was asked for by name).
fn ensure_podman(named: bool) -> Result<()> {
    if which::which("podman").is_ok() || (!named && docker_answers()) {
        return Ok(());
    }
    if !util::is_root() {
        bail!("podman is not installed\n  what to do: as root, apt-get install podman runc");
    }
    println!("[image] podman is missing; installing podman and runc with apt-get");
    crate::apt::install(&["podman", "runc"], "apt-get install podman runc")
}

/// Build the binary and, unless the image under every tag already holds it, import it.
fn ensure(engine: &Engine, tags: &[String], force: bool) -> Result<()> {
    let start = Instant::now();
    let guard = binaries::build_guard(true)?;
    println!("[image] release musl build: {}", secs(start.elapsed()));
    let hash = sha256(&guard)?;
    let old: Vec<(String, String)> = tags.iter().filter_map(|t| inspect(engine, t)).collect();
    let current =
        old.len() == tags.len() && old.iter().all(|(id, h)| *id == old[0].0 && *h == hash);
    if current && !force {
        println!(
            "[image] {} is up to date (id {})",
            tags.join(", "),
            short(&old[0].0)
        );
        return Ok(());
    }
    let id = import(engine, &guard, &hash, tags)?;
    let mut replaced: Vec<&str> = old.iter().map(|(o, _)| o.as_str()).collect();
    replaced.sort_unstable();
    replaced.dedup();
    for old_id in replaced.into_iter().filter(|o| *o != id) {
        remove_untagged(engine, old_id);
    }
    smoke(engine, &tags[0])?;
    println!("[image] {} → id {}", tags.join(", "), short(&id));
    Ok(())
}

/// `sha256sum FILE`: the hex digest.
fn sha256(file: &Path) -> Result<String> {
    let out = util::output(
        Command::new("sha256sum").arg(file),
        "sha256sum comes with coreutils",
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// The image id and hash label under `tag`, or `None` when no such image is loaded.
fn inspect(engine: &Engine, tag: &str) -> Option<(String, String)> {
    let format = format!("{{{{.Id}}}} {{{{index .Config.Labels \"{HASH_LABEL}\"}}}}");
    let out = engine
        .command()
        .args(["image", "inspect", "--format", &format, tag])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let id = words.next()?.trim_start_matches("sha256:").to_owned();
    Some((id, words.next().unwrap_or_default().to_owned()))
}

/// Make the rootfs, import it under `tags[0]`, tag the rest; returns the new image id.
fn import(engine: &Engine, guard: &Path, hash: &str, tags: &[String]) -> Result<String> {
    let dir = util::target_dir().join("image");
    let rootfs = dir.join("rootfs");
    make_rootfs(guard, &rootfs)?;
    let tar = dir.join("rootfs.tar");
    util::run(
        Command::new("tar")
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-C",
            ])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        "GNU tar is needed to pack the image's root directory",
    )?;
    let start = Instant::now();
    let mut cmd = engine.command();
    cmd.arg("import");
    for change in changes(hash) {
        cmd.args(["--change", &change]);
    }
    util::output(cmd.arg(&tar).arg(&tags[0]), "see the engine's message")?;
    for tag in &tags[1..] {
        util::output(
            engine.command().args(["tag", &tags[0], tag]),
            "see the engine's message",
        )?;
    }
    println!("[image] import: {}", secs(start.elapsed()));
    inspect(engine, &tags[0])
        .map(|(id, _)| id)
        .with_context(|| format!("{} is not there after the import", tags[0]))
}

/// The image configuration `import` applies: guard as the entrypoint, `daemon` by default.
fn changes(hash: &str) -> Vec<String> {
    vec![
        format!("ENTRYPOINT [\"{GUARD_PATH}\"]"),
        "CMD [\"daemon\"]".into(),
        "LABEL org.opencontainers.image.title=guard".into(),
        format!(
            "LABEL org.opencontainers.image.version={}",
            env!("CARGO_PKG_VERSION")
        ),
        format!("LABEL {HASH_LABEL}={hash}"),
    ]
}

/// The image's root directory, made afresh: guard (debug info stripped, symbols kept for
/// backtraces), the directories it uses, `/tmp`, and root in `/etc/passwd` and `/etc/group`.
fn make_rootfs(guard: &Path, rootfs: &Path) -> Result<()> {
    if rootfs.exists() {
        fs::remove_dir_all(rootfs)
            .with_context(|| format!("cannot remove {}", rootfs.display()))?;
    }
    let dirs = [
        "",
        "etc",
        "etc/guard",
        "run",
        "run/guard",
        "tmp",
        "usr",
        "usr/local",
        "usr/local/bin",
        "var",
        "var/log",
        "var/log/guard",
    ];
    for d in dirs {
        let path = rootfs.join(d);
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mode = if d == "tmp" { 0o1777 } else { 0o755 };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    let bin = rootfs.join(GUARD_PATH.trim_start_matches('/'));
    util::run(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&bin)
            .arg(guard),
        "strip comes with binutils",
    )?;
    write(rootfs, "etc/passwd", "root:x:0:0:root:/:/nonexistent\n")?;
    write(rootfs, "etc/group", "root:x:0:\n")
}

fn write(rootfs: &Path, name: &str, text: &str) -> Result<()> {
    let path = rootfs.join(name);
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Remove an image a re-import left without tags, so re-runs leave nothing behind. Failing
/// (a container still uses it, or it has another tag) only leaves it.
fn remove_untagged(engine: &Engine, id: &str) {
    let out = engine.command().args(["rmi", id]).output();
    match out {
        Ok(o) if o.status.success() => println!("[image] removed the previous image {}", short(id)),
        Ok(o) => println!(
            "[image] note: the previous image {} stays: {}",
            short(id),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => println!("[image] note: the previous image {} stays: {e}", short(id)),
    }
}

/// `guard --version` inside the image: the entrypoint runs and the runtime flags work.
fn smoke(engine: &Engine, tag: &str) -> Result<()> {
    let name = format!("guard-image-smoke-{}", std::process::id());
    let out = util::output(
        engine.run_command().args([
            "--rm",
            "--network",
            "none",
            "--name",
            &name,
            tag,
            "--version",
        ]),
        "the image does not run; see the engine's message",
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains(env!("CARGO_PKG_VERSION")) {
        bail!("`guard --version` in {tag} printed {text:?}");
    }
    println!("[image] smoke: `guard --version` in {tag}: {}", text.trim());
    Ok(())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units
Max processes             96367                96367                processes
Max open files            20000                20000                files
";

    #[test]
    fn hybrid_cgroups_without_systemd_need_runc_and_cgroupfs() {
        assert_eq!(
            podman_global_flags(HYBRID, false).join(" "),
            "--runtime runc --cgroup-manager cgroupfs --events-backend file"
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        assert!(cgroup2_unified(unified) && !cgroup2_unified(HYBRID));
        assert!(podman_global_flags(unified, true).is_empty());
    }

    #[test]
    fn ulimits_stay_under_the_hard_limits_and_pid_max() {
        assert_eq!(hard_limit(LIMITS, "Max open files"), Some(20000));
        assert_eq!(hard_limit(LIMITS, "Max processes"), Some(96367));
        assert_eq!(
            ulimit_flags(LIMITS, Some(32768)).join(" "),
            "--ulimit nofile=20000:20000 --ulimit nproc=32768:32768"
        );
        assert_eq!(
            ulimit_flags(LIMITS, None).join(" "),
            "--ulimit nofile=20000:20000 --ulimit nproc=96367:96367"
        );
        let unlimited = "Max processes  unlimited  unlimited  processes\n\
                         Max open files  1048576  1048576  files\n";
        assert!(ulimit_flags(unlimited, Some(4_194_304)).is_empty());
    }

    #[test]
    fn every_tag_comes_with_latest() {
        assert_eq!(
            tags_for("localhost/guard:0.1.0"),
            ["localhost/guard:0.1.0", "localhost/guard:latest"]
        );
        assert_eq!(
            tags_for("localhost/guard:latest"),
            ["localhost/guard:latest"]
        );
        assert_eq!(
            tags_for("localhost:5000/guard"),
            ["localhost:5000/guard:latest"]
        );
        assert!(default_tag().starts_with("localhost/guard:"));
    }
}
