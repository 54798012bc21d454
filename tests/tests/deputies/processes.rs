//! Process to process, terminals and the capability ceiling.

use super::*;

/// Reach into process `argv[1]` and push a keystroke into terminal `argv[2]`; one line per
/// attempt, `NAME denied` (EPERM or EACCES) or `NAME allowed` (anything else: a bogus address
/// is EFAULT after the permission check).
const REACH: &str = r#"
import ctypes, errno, fcntl, os, sys, termios
pid, tty = int(sys.argv[1]), sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def report(name, failed, err):
    refused = failed and err in (errno.EPERM, errno.EACCES)
    print(name, "denied" if refused else "allowed", flush=True)
r = libc.ptrace(0x4206, pid, 0, 0)  # PTRACE_SEIZE
report("ptrace", r != 0, ctypes.get_errno())
if r == 0:
    libc.ptrace(17, pid, 0, 0)  # PTRACE_DETACH
try:
    open("/proc/%d/environ" % pid, "rb").read()
    report("environ", False, 0)
except OSError as e:
    report("environ", True, e.errno)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(8)
local, remote = iovec(ctypes.cast(buf, ctypes.c_void_p), 8), iovec(4096, 8)
r = libc.syscall(310, pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
report("process_vm_readv", r < 0, ctypes.get_errno())
pidfd = libc.syscall(434, pid, 0)
r = libc.syscall(438, pidfd, 0, 0)
report("pidfd_getfd", r < 0, ctypes.get_errno())
fd = os.open(tty, os.O_RDWR | os.O_NOCTTY)
try:
    fcntl.ioctl(fd, termios.TIOCSTI, b"x")
    report("tiocsti", False, 0)
except OSError as e:
    report("tiocsti", True, e.errno)
"#;

/// A terminal the human has open: a pty pair held by an untagged process; its path.
fn human_terminal() -> (Proc, String) {
    python_ready(&[
        "import os, time\nm, s = os.openpty()\nprint(os.ttyname(s), flush=True)\ntime.sleep(600)",
    ])
}

fn reach_results(out: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect()
}

#[test]
fn processes_and_terminals_outside_the_tree_are_out_of_reach() {
    let daemon = Daemon::start_with_policy(&policy("    []\n"));
    let lsm = daemon.assert_tier() == "bpf-lsm";
    let target = Proc::spawn({
        let mut c = Command::new("sleep");
        c.arg("600").env("HUMANS_TOKEN", "s3cret");
        c
    });
    let (_terminal, tty) = human_terminal();
    let script = format!("python3 -c \"$REACH\" {} {tty}", target.pid());
    let access = rule_status(&daemon, "guard:process-access");
    let input = rule_status(&daemon, "guard:terminal-input");
    // bpf-lsm, or the fallback tier's fmod_ret programs where the kernel takes them.
    let mechanism = |r: &Value| r["mechanism"].as_str().unwrap().to_owned();
    let enforced =
        mechanism(&access).starts_with("enforced") && mechanism(&input).starts_with("enforced");
    if lsm || std::env::var_os("GUARD_VM").is_some() {
        // Every VM kernel takes trampoline programs.
        assert!(enforced, "{access}\n{input}");
    }
    let sides = Sides::new();
    for (side, out) in sides.run_with(&daemon, &script, &[("REACH", REACH)]) {
        let results = reach_results(&out);
        assert_eq!(results.len(), 5, "{side}: {}", text(&out));
        for (what, verdict) in &results {
            if enforced || side == "guard run" {
                // The hooks refuse every one; a guard run tree lost the capabilities a root
                // target has more of, and seccomp takes TIOCSTI.
                assert_eq!(verdict, "denied", "{side}: {what}\n{}", text(&out));
            }
        }
    }
    if enforced {
        let evs: Vec<Value> = wait_for("process-access events", Duration::from_secs(10), || {
            let evs: Vec<Value> = daemon
                .events()
                .into_iter()
                .filter(|e| e["kind"] == "deputy" && e["rule"] == "guard:process-access")
                .collect();
            (evs.len() >= 2).then_some(evs)
        });
        let me = format!("process {} (sleep)", target.pid());
        assert!(
            evs.iter().all(|e| e["object"]["path"] == me.as_str()
                && e["result"] == "denied"
                && !e["ancestry"].as_array().unwrap().is_empty()),
            "{evs:#?}"
        );
        assert!(
            daemon
                .events()
                .iter()
                .any(|e| e["rule"] == "guard:terminal-input" && e["agent"] == "claude-code"),
            "a TIOCSTI event"
        );
    } else {
        // The fallback tier says what it does not stop for recognised agents; a kernel
        // whose dev.tty.legacy_tiocsti is 0 (Debian's 6.12 default) stops part of TIOCSTI.
        let tiocsti_off = std::fs::read_to_string(LEGACY_TIOCSTI).is_ok_and(|v| v.trim() == "0");
        for (r, want) in [
            (&access, "not-covered"),
            (&input, if tiocsti_off { "partly" } else { "not-covered" }),
        ] {
            assert!(r["mechanism"].as_str().unwrap().starts_with(want), "{r}");
        }
        let st = daemon.status_json().unwrap();
        let nc = st["deputies"]["not_covered"].to_string();
        assert!(nc.contains("ptrace") && nc.contains("TIOCSTI"), "{nc}");
    }
    // Untagged, everything is allowed (root).
    let out = bash_with(Path::new("bash"), &script, &[("REACH", REACH)]);
    let results = reach_results(&out);
    assert_eq!(results.len(), 5, "untagged: {}", text(&out));
    assert!(
        results.iter().all(|(_, v)| v == "allowed"),
        "untagged: {}",
        text(&out)
    );
    // A process of the agent's own tree stays in reach.
    let own = format!("sleep 30 & child=$!; python3 -c \"$REACH\" $child {tty}; kill $child");
    let out = bash_with(&sides.claude, &own, &[("REACH", REACH)]);
    let results = reach_results(&out);
    assert_eq!(results.len(), 5, "own tree: {}", text(&out));
    // Keystrokes are refused into every terminal (bpf-lsm); the rest reaches the agent's
    // own child on every tier.
    assert!(
        results
            .iter()
            .all(|(what, v)| what == "tiocsti" || v == "allowed"),
        "own tree: {}",
        text(&out)
    );
}

#[test]
fn root_agents_stay_under_the_capability_ceiling() {
    let daemon = Daemon::start_with_policy(&policy("    []\n"));
    let tier = daemon.assert_tier();
    let ceiling = rule_status(&daemon, "guard:capability-ceiling");
    let mechanism = ceiling["mechanism"].as_str().unwrap().to_owned();
    let ns = guard_tests::netns::NetNs::new(&[], &[]);
    let sides = Sides::new();
    let link = |name: &str| {
        let out = output({
            let mut c = ns.command("ip");
            c.args(["link", "show", name]);
            c
        });
        out.status.success()
    };
    // A recognised root agent inside the namespace adds a link (CAP_NET_ADMIN).
    let mut c = ns.command(sides.claude.to_str().unwrap());
    c.args(["-c", "ip link add gva type veth peer name gvb"]);
    let out = output(c);
    if tier == "bpf-lsm" {
        assert!(mechanism.starts_with("enforced"), "{mechanism}");
        assert!(!out.status.success(), "{}", text(&out));
        assert!(!link("gva"), "the link was added");
        let evs: Vec<Value> = wait_for("capability events", Duration::from_secs(10), || {
            let evs: Vec<Value> = daemon
                .events()
                .into_iter()
                .filter(|e| e["rule"] == "guard:capability-ceiling")
                .collect();
            (!evs.is_empty()).then_some(evs)
        });
        assert!(evs.iter().all(|e| e["result"] == "denied"), "{evs:#?}");
        assert!(
            evs.iter().any(|e| e["object"]["operation"]
                .as_str()
                .unwrap()
                .contains("CAP_NET_ADMIN")),
            "{evs:#?}"
        );
    } else if mechanism.starts_with("kill-on-detect") {
        // The agent dies in the call; the link was added first.
        use std::os::unix::process::ExitStatusExt;
        assert!(
            out.status.signal() == Some(9) || out.status.code() == Some(137),
            "{}",
            text(&out)
        );
        let evs: Vec<Value> = wait_for("capability events", Duration::from_secs(10), || {
            let evs: Vec<Value> = daemon
                .events()
                .into_iter()
                .filter(|e| e["rule"] == "guard:capability-ceiling" && e["result"] == "killed")
                .collect();
            (!evs.is_empty()).then_some(evs)
        });
        assert!(
            !evs[0]["ancestry"].as_array().unwrap().is_empty(),
            "{evs:#?}"
        );
    } else {
        assert!(mechanism.starts_with("not-covered"), "{mechanism}");
    }
    // A guard run tree has no CAP_NET_ADMIN to use.
    let mut c = ns.command(guard_tests::guard_bin().to_str().unwrap());
    c.envs(daemon.env()).args([
        "run", "--", "ip", "link", "add", "gvc", "type", "veth", "peer", "name", "gvd",
    ]);
    let out = output(c);
    assert!(
        !out.status.success() && !link("gvc"),
        "guard run: {}",
        text(&out)
    );
    // Untagged root does it.
    let out = output({
        let mut c = ns.command("ip");
        c.args(["link", "add", "gve", "type", "veth", "peer", "name", "gvf"]);
        c
    });
    assert!(
        out.status.success() && link("gve"),
        "untagged: {}",
        text(&out)
    );
}

/// Push one keystroke into terminal `argv[1]`: `tiocsti allowed` or `tiocsti denied ERRNO`.
const PUSH: &str = r#"
import fcntl, os, sys, termios
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
try:
    fcntl.ioctl(fd, termios.TIOCSTI, b"x")
    print("tiocsti allowed", flush=True)
except OSError as e:
    print("tiocsti denied", e.errno, flush=True)
"#;

const LEGACY_TIOCSTI: &str = "/proc/sys/dev/tty/legacy_tiocsti";

/// The sysctl as the test found it, put back on drop.
struct SysctlBack(String);

impl Drop for SysctlBack {
    fn drop(&mut self) {
        let _ = std::fs::write(LEGACY_TIOCSTI, &self.0);
    }
}

/// `PUSH` into `tty` as uid/gid 65534, by `program` (a recognised agent's shell, or bash).
fn push_as_nobody(program: &Path, tty: &str) -> String {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(program);
    c.args(["-c", "/usr/bin/python3 -c \"$PUSH\" \"$TTY\""])
        .env("PUSH", PUSH)
        .env("TTY", tty)
        .current_dir("/")
        .uid(65534)
        .gid(65534);
    text(&output(c))
}

#[test]
fn legacy_tiocsti_off_takes_tiocsti_from_agents_that_are_not_root() {
    let Ok(before) = std::fs::read_to_string(LEGACY_TIOCSTI) else {
        // Every kernel from 6.2 on has it: only an older one may leave this out.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let release = release.trim();
        let mut v = release
            .split(['.', '-'])
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        assert!(
            (major, minor) < (6, 2),
            "kernel {release} should have {LEGACY_TIOCSTI}"
        );
        println!("NOT RUN: kernel {release} lacks dev.tty.legacy_tiocsti (Linux 6.2+)");
        return;
    };
    let _back = SysctlBack(before);
    let daemon = Daemon::start_with_args(Some(&policy("    []\n")), &["--disable-legacy-tiocsti"]);
    let lsm = daemon.assert_tier() == "bpf-lsm";
    assert_eq!(std::fs::read_to_string(LEGACY_TIOCSTI).unwrap().trim(), "0");
    let input = rule_status(&daemon, "guard:terminal-input");
    let mechanism = input["mechanism"].as_str().unwrap();
    // bpf-lsm, or the fallback tier's fmod_ret programs, refuse TIOCSTI in the kernel; the
    // sysctl alone stops only part of it.
    let hooked = lsm || mechanism.starts_with("enforced: fmod_ret/security_file_ioctl");
    assert!(
        mechanism.starts_with(if hooked { "enforced" } else { "partly" }),
        "{input}"
    );

    // The human's terminal, the human being the same user as the agent.
    let (_terminal, tty) = python_ready(&[
        "import os, time\nm, s = os.openpty()\nos.fchown(s, 65534, 65534)\n\
         print(os.ttyname(s), flush=True)\ntime.sleep(600)",
    ]);
    let sides = Sides::new();
    {
        // The agent runs as nobody: its directory must be reachable.
        use std::os::unix::fs::PermissionsExt;
        let dir = sides.claude.parent().unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = push_as_nobody(&sides.claude, &tty);
    assert!(
        out.contains("tiocsti denied"),
        "the agent's keystroke: {out}"
    );
    // Root keeps it (CAP_SYS_ADMIN), untagged.
    let out = bash_with(
        Path::new("bash"),
        "python3 -c \"$PUSH\" \"$TTY\"",
        &[("PUSH", PUSH), ("TTY", &tty)],
    );
    assert!(
        out.stdout.starts_with(b"tiocsti allowed"),
        "untagged root: {}",
        text(&out)
    );

    // Set back to 1 (as a root agent could), it is 0 again within seconds, and recorded.
    std::fs::write(LEGACY_TIOCSTI, "1\n").unwrap();
    wait_for("the sysctl set back to 0", Duration::from_secs(10), || {
        let now = std::fs::read_to_string(LEGACY_TIOCSTI).ok()?;
        (now.trim() == "0").then_some(())
    });
    wait_for("the restore event", Duration::from_secs(10), || {
        daemon
            .events()
            .into_iter()
            .find(|e| e["rule"] == "guard:terminal-input" && e["result"] == "restored")
    });
}
