//! What goes into the guest: busybox for the shell and the small commands, the real host
//! programs the integration tests drive (bash, coreutils sleep, python3 with its standard
//! library, ip, curl, nc), `guard`, the test binaries and the guest's `/init`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{
    binaries::Binaries,
    host::BUSYBOX,
    init::{self, Plan},
    rootfs::Tree,
};

/// Host programs the tests run by name, with the reason a busybox applet does not do.
const HOST_TOOLS: &[(&str, &str)] = &[
    (
        "bash",
        "tests run `bash -c` scripts and copy /bin/bash to fake agents",
    ),
    (
        "sleep",
        "tests copy /bin/sleep to another name: it must be a real program, not an applet",
    ),
    (
        "python3",
        "interpreter-script agent recognition needs the real interpreter",
    ),
    (
        "node",
        "interpreter-script agent recognition (node …/claude-code/cli.js)",
    ),
    ("nohup", "busybox-static has no nohup applet"),
    ("setsid", "the tests' escapes use util-linux setsid"),
    ("env", "the tests' escapes use coreutils env -i"),
    ("ip", "network namespaces (busybox ip has no netns)"),
    ("tcpdump", "the network tests watch the wire"),
    ("losetup", "the file tests' volumes (losetup -f --show)"),
    ("mkfs.ext4", "the file tests' volumes"),
    ("curl", "HTTP clients for the network tests"),
    ("nc", "TCP/UDP/unix clients for the network tests"),
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
pub fn tree(bins: &Binaries, plan: &Plan) -> Result<(Tree, Vec<String>)> {
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
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    );
    t.data(
        "/etc/group",
        "root:x:0:\ntcpdump:x:100:\nnogroup:x:65534:\n",
        0o644,
    );
    t.data("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644);
    // The guest has no network; queries fail fast, as on an offline node.
    t.data("/etc/resolv.conf", "nameserver 127.0.0.1\n", 0o644);
    // Merged /usr as on the host, so that library paths from ldd resolve the same way.
    for top in ["/bin", "/sbin", "/lib", "/lib64"] {
        if let Ok(target) = fs::read_link(top) {
            t.symlink(top, &target.to_string_lossy());
        }
    }

    let mut notes = Vec::new();
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
    busybox(&mut t)?;

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
fn busybox(t: &mut Tree) -> Result<()> {
    let real = fs::canonicalize(BUSYBOX)?;
    t.host_path(&real)?;
    let out = Command::new(&real)
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
