//! What goes into the guest: the host's own programs that the integration tests drive (dash as
//! /bin/sh, coreutils, findutils, util-linux, bash, python3 with its standard library, node,
//! ip, tcpdump, mkfs.ext4, curl, openssl, nc, strace, git, tmux, openssh, socat, microsocks —
//! each with the shared libraries `ldd` names), busybox for
//! every other small command, `guard`, the test binaries and the guest's `/init`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{
    binaries::Binaries,
    init::{self, Plan},
    rootfs::Tree,
};

/// Host packages whose programs replace busybox's applets: the tests drive GNU tools (`find
/// -delete`, `cp /bin/true X` must copy a real program, `losetup -f --show`, …) and `sh -c`
/// scripts. `/bin/sh` is dash as on the host: Debian's static busybox sh runs its own applets
/// before anything on PATH, so `sh -c "find … -delete"` would get busybox's find.
const HOST_PACKAGES: &[&str] = &["dash", "coreutils", "findutils", "util-linux", "mount"];

/// Further host programs the tests run by name, with what they are for.
const HOST_TOOLS: &[(&str, &str)] = &[
    (
        "bash",
        "tests run `bash -c` scripts and copy /bin/bash to fake agents",
    ),
    (
        "python3",
        "interpreter-script agent recognition needs the real interpreter",
    ),
    (
        "node",
        "interpreter-script agent recognition (node …/claude-code/cli.js)",
    ),
    ("ip", "network namespaces (busybox ip has no netns)"),
    ("tcpdump", "the network tests watch the wire"),
    ("mkfs.ext4", "the file tests' volumes"),
    ("curl", "HTTP clients for the network tests"),
    (
        "openssl",
        "the secrets tests' HTTPS servers (s_server) and certificates",
    ),
    ("nc", "TCP/UDP/unix clients for the network tests"),
    ("strace", "the self-protection tests trace the daemon"),
    (
        "git",
        "deferred execution: git reading a .git/config an agent wrote",
    ),
    (
        "tmux",
        "the terminal-server executor: the human's tmux server and the agent's own",
    ),
    (
        "sshd",
        "the local-sshd executor and the ssh tunnels' server",
    ),
    (
        "ssh",
        "`ssh localhost CMD`, `ssh -L`/`-D` tunnels and their control socket",
    ),
    ("ssh-keygen", "host and user keys for the tests' sshd"),
    ("socat", "a forwarder found by its arguments"),
    ("microsocks", "a SOCKS proxy on the host, found by its name"),
];

/// Parts of the Python standard library no test imports (and the big ones).
const PYTHON_SKIP: &[&str] = &[
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "distutils",
    "site-packages",
    "dist-packages",
];

/// The guest tree; returns it and one line per host tool saying where it came from.
pub fn tree(bins: &Binaries, plan: &Plan, busybox_bin: &Path) -> Result<(Tree, Vec<String>)> {
    let mut t = Tree::default();
    for dir in [
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/root",
        "/var/log",
        "/etc/guard-vm",
    ] {
        t.dir(dir, 0o755);
    }
    // Not a mount: the rootfs is already in memory, and the test binaries may live below
    // /tmp (a target dir there), at the same path as on the host.
    t.dir("/tmp", 0o1777);
    // The kernel opens /dev/console for init before anything is mounted.
    t.char_dev("/dev/console", 5, 1);
    t.char_dev("/dev/null", 1, 3);
    t.data(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\ntcpdump:x:100:100::/nonexistent:/bin/false\n\
         sshd:x:101:65534::/run/sshd:/usr/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    );
    t.data(
        "/etc/group",
        "root:x:0:\ntcpdump:x:100:\nnogroup:x:65534:\n",
        0o644,
    );
    t.data("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644);
    t.data("/etc/hostname", "guard-vm\n", 0o644);
    // The guest has no network; queries fail fast, as on an offline node.
    t.data("/etc/resolv.conf", "nameserver 127.0.0.1\n", 0o644);
    // Merged /usr as on the host, so that library paths from ldd resolve the same way.
    for top in ["/bin", "/sbin", "/lib", "/lib64"] {
        if let Ok(target) = fs::read_link(top) {
            t.symlink(top, &target.to_string_lossy());
        }
    }

    let mut notes = Vec::new();
    for package in HOST_PACKAGES {
        let n = host_package(&mut t, package)?;
        notes.push(format!("{package}: {n} programs"));
    }
    // A static `true`: the tests exec it by the thousand, and under emulation a dynamically
    // linked program costs ~26 ms an exec against ~6 ms (measured on 6.12); it stays a real
    // program that can be copied under another name, unlike a busybox applet link.
    let true_path = fs::canonicalize("/bin/true").unwrap_or_else(|_| "/bin/true".into());
    t.stripped(true_path, &bins.static_true);
    notes.push("true: a static musl build of `fn main() {}` (exec speed)".into());
    for (tool, why) in HOST_TOOLS {
        match host_tool(tool) {
            Some(path) => {
                t.host_program(&path)
                    .with_context(|| format!("copying {} into the guest", path.display()))?;
                if *tool == "python3" {
                    python_stdlib(&mut t, &path)?;
                }
                notes.push(format!("{tool}: {}", path.display()));
            }
            None => notes.push(format!(
                "{tool}: NOT on the host, so not in the guest ({why})"
            )),
        }
    }
    // tmux refuses to start without a UTF-8 locale; it falls back to C.UTF-8 when it finds one.
    let c_utf8 = Path::new("/usr/lib/locale/C.utf8");
    if c_utf8.is_dir() {
        t.host_dir(c_utf8, &|_| false)?;
        notes.push("C.UTF-8 locale: for tmux".into());
    }
    busybox(&mut t, busybox_bin)?;

    t.stripped(init::GUARD, &bins.guard);
    for (_, path) in &bins.tests {
        t.stripped(path, path);
    }
    for path in &bins.helpers {
        t.stripped(path, path);
    }
    t.data(init::CHECK, init::CHECK_SCRIPT, 0o755);
    t.data(init::DENY_NOTHING_GUARD, init::DENY_NOTHING_SCRIPT, 0o755);
    t.data(init::DENY_NOTHING_POLICY, init::DENY_NOTHING_YAML, 0o644);
    t.data("/init", init::script(plan), 0o755);
    Ok((t, notes))
}

/// Every program a Debian package installs in a bin or sbin directory, with its libraries;
/// returns how many.
fn host_package(t: &mut Tree, package: &str) -> Result<usize> {
    let out = Command::new("dpkg")
        .args(["-L", package])
        .output()
        .context("cannot run dpkg -L")?;
    if !out.status.success() {
        bail!(
            "package {package} is not installed on the host (the guest copies its programs)\n  \
             what to do: apt-get install {package}"
        );
    }
    let mut programs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = Path::new(line);
        let in_bin = path
            .parent()
            .and_then(Path::to_str)
            .is_some_and(|d| ["/bin", "/sbin", "/usr/bin", "/usr/sbin"].contains(&d));
        if in_bin && fs::metadata(path).is_ok_and(|m| m.is_file()) {
            t.host_path(path)?;
            programs.push(fs::canonicalize(path)?);
        }
    }
    programs.sort();
    programs.dedup();
    t.shared_libraries(&programs)?;
    Ok(programs.len())
}

/// The distribution's program (never a version-manager shim earlier on PATH).
fn host_tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The standard library next to the interpreter (`/usr/bin/python3.11` → `/usr/lib/python3.11`),
/// with the shared libraries of its extension modules.
fn python_stdlib(t: &mut Tree, python: &Path) -> Result<()> {
    let exe = fs::canonicalize(python)?;
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let prefix = exe
        .parent()
        .and_then(Path::parent)
        .context("python has no prefix")?;
    let lib = prefix.join("lib").join(name);
    if !lib.is_dir() {
        bail!(
            "no standard library for {} at {}",
            exe.display(),
            lib.display()
        );
    }
    let skip = |p: &Path| {
        let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        PYTHON_SKIP.contains(&n) || n.starts_with("config-") || n.contains(".opt-")
    };
    let modules = t.host_dir(&lib, &skip)?;
    t.shared_libraries(&modules)
}

/// Static busybox, with a link for each applet that no real program already provides.
fn busybox(t: &mut Tree, host: &Path) -> Result<()> {
    let real = super::tools::guest_busybox_path(host);
    t.file(&real, host, 0o755);
    let out = Command::new(host)
        .arg("--list-full")
        .output()
        .context("cannot run busybox --list-full")?;
    let target = real.to_string_lossy().into_owned();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = Path::new("/").join(applet.trim());
        let (Some(dir), Some(name)) = (applet.parent(), applet.file_name()) else {
            continue;
        };
        let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let at = dir.join(name);
        if !t.contains(&at) {
            t.symlink(&at, &target);
        }
    }
    Ok(())
}
