//! `guard status` for the rules against deputies: the built-in rule sets with their state and
//! mechanism on the running tier, what the host scan found, the forwarders, and what no rule
//! here covers.

use std::collections::BTreeMap;

use crate::deputies::{Forwarder, Found};

/// `guard status`: the built-in rules against deputies, what the host has of each kind, and
/// what no rule here covers.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DeputiesStatus {
    pub rules: Vec<BuiltinRuleStatus>,
    /// Servers and sockets found now, by kind (`terminals`, `systemd`, `dbus`, `sshd`).
    pub found: BTreeMap<String, Vec<String>>,
    /// Forwarders to a protected endpoint, denied as that endpoint.
    pub forwarders: Vec<String>,
    /// How the host is looked at, and the window that leaves.
    pub discovery: String,
    /// What an agent can still get an untagged process to do, by name.
    pub not_covered: Vec<String>,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct BuiltinRuleStatus {
    pub name: String,
    /// `deny enforce`, …, or `off`.
    pub state: String,
    /// The spec field that set it, or `default`.
    pub set_by: String,
    pub covers: String,
    /// How this tier enforces it (path rules: see their own status).
    pub mechanism: String,
}

/// The status of the built-in rules in `entries` and of what the last scan found.
pub fn status(
    entries: &[crate::policy::BuiltinEntry],
    found: &Found,
    tunnels: &[(String, Forwarder)],
    attached: &super::Attached,
    hooks: KernelHooks,
    ceiling: &[String],
) -> DeputiesStatus {
    let unix = if attached.lsm {
        "unix_stream_connect/unix_may_send on the socket file (bpf-lsm): enforced"
    } else if attached.unix_peer() {
        "fmod_ret of security_unix_stream_connect/security_unix_may_send on the socket file: \
         enforced"
    } else if attached.unix_missing.is_some() {
        "not-loaded: this kernel has no unix socket hooks without BPF LSM"
    } else {
        "cgroup connect_unix/sendmsg_unix on the socket's path: enforced for the paths found \
         and the paths they resolve to"
    };
    let tcp = if attached.lsm {
        "socket_connect (bpf-lsm): enforced"
    } else {
        "cgroup connect4/connect6: enforced"
    };
    let mut rules = kernel_rules(hooks, ceiling);
    rules.extend(entries.iter().map(|e| {
        BuiltinRuleStatus {
            name: e.name.clone(),
            state: e
                .action
                .map_or_else(|| "off".to_owned(), |a| format!("{a} {}", e.mode)),
            set_by: e.set_by.clone(),
            covers: e.covers.to_owned(),
            mechanism: match e.name.as_str() {
                "guard:executors/sshd"
                | "guard:executors/notebooks"
                | "guard:executors/proxies"
                | crate::policy::SELF_PORTS => tcp.to_owned(),
                n if n.starts_with("guard:executors/") && !n.ends_with("/scheduler") => {
                    unix.to_owned()
                }
                _ => "path rule (see path rules)".to_owned(),
            },
        }
    }));
    let servers = |list: &[crate::deputies::Server]| -> Vec<String> {
        list.iter()
            .map(|s| {
                if s.pid == 0 {
                    format!("{} {}", s.comm, s.socket)
                } else {
                    format!("{} (pid {}) {}", s.comm, s.pid, s.socket)
                }
            })
            .collect()
    };
    let found_by_kind: BTreeMap<String, Vec<String>> = crate::policy::Discover::ALL
        .into_iter()
        .map(|kind| (kind.name().to_owned(), servers(found.of(kind))))
        .collect();
    DeputiesStatus {
        rules,
        found: found_by_kind,
        forwarders: tunnels
            .iter()
            .map(|(rule, f)| {
                let listen: Vec<String> = f.listen.iter().map(ToString::to_string).collect();
                format!(
                    "{} (pid {}) on {} to {} (rule {rule}, found by its {})",
                    f.comm,
                    f.pid,
                    listen.join(", "),
                    f.to,
                    f.evidence
                )
            })
            .collect(),
        discovery: format!(
            "the host is looked at every {} s: a server or forwarder started since is not \
             covered until then",
            crate::deputies::RESCAN.as_secs()
        ),
        not_covered: not_covered(hooks),
    }
}

/// Which of the kernel hooks against process access, terminal input and capabilities run.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelHooks {
    /// bpf-lsm `ptrace_access_check` (process access).
    pub ptrace: bool,
    /// bpf-lsm `file_ioctl` (TIOCSTI, TIOCLINUX).
    pub ioctl: bool,
    /// fallback `fmod_ret` of `security_ptrace_access_check` (process access).
    pub fmod_ptrace: bool,
    /// fallback `fmod_ret` of `security_file_ioctl` (TIOCSTI, TIOCLINUX).
    pub fmod_ioctl: bool,
    /// bpf-lsm `capable` (the ceiling refused).
    pub capable: bool,
    /// fallback `tp_btf/cap_capable` (the ceiling's operations kill-on-detect).
    pub cap_capable: bool,
    /// bpf-lsm `bprm_check_security` and `file_open` (deferred execution: scripts, readers).
    pub bprm_check: bool,
    /// fallback ctime tracepoints (deferred execution: the writes of tagged processes).
    pub ctime: bool,
    /// fallback `fentry` of `security_file_open` and `security_bprm_check` (deferred
    /// execution: writes, scripts, readers).
    pub fentry_deferred: bool,
    /// fallback `cgroup_skb/egress` (destinations NAT rewrote are checked again).
    pub egress: bool,
    /// `dev.tty.legacy_tiocsti` is 0: the kernel refuses TIOCSTI without CAP_SYS_ADMIN.
    pub tiocsti_off: bool,
}

/// The built-in rules decided in the kernel for every tagged process, with how this tier
/// decides them; `ceiling` names the capabilities (`selfProtection.dropCapabilities`).
fn kernel_rules(hooks: KernelHooks, ceiling: &[String]) -> Vec<BuiltinRuleStatus> {
    let caps = if ceiling.is_empty() {
        "none (selfProtection.dropCapabilities is empty)".to_owned()
    } else {
        ceiling.join(", ")
    };
    let rule = |name: &str, state: &str, covers: &str, mechanism: String| BuiltinRuleStatus {
        name: name.to_owned(),
        state: state.to_owned(),
        set_by: "built in".to_owned(),
        covers: covers.to_owned(),
        mechanism,
    };
    vec![
        rule(
            "guard:deferred-execution",
            "tag enforce",
            "a file an agent wrote, run later by anyone: directly, through #!, or as an \
             interpreter's code; git reading an agent-written .git/config",
            deferred_mechanism(hooks),
        ),
        rule(
            crate::events::deputy::RULE_PROCESS_ACCESS,
            "deny enforce",
            "ptrace, /proc/PID/mem, environ, maps and fd, process_vm_*, pidfd_getfd on a \
             process outside the agent's tree",
            if hooks.ptrace {
                "enforced: lsm/ptrace_access_check (checks ps and top make without auditing \
                 are left alone)"
                    .to_owned()
            } else if hooks.fmod_ptrace {
                "enforced: fmod_ret/security_ptrace_access_check, the function that runs the \
                 LSM hook (checks ps and top make without auditing are left alone)"
                    .to_owned()
            } else {
                "not-covered for agents recognised at exec (no hook short of sys_enter); guard \
                 run trees lose CAP_SYS_PTRACE, so processes with more capabilities are out of \
                 their reach, same-user ones are not"
                    .to_owned()
            },
        ),
        rule(
            crate::events::deputy::RULE_TERMINAL_INPUT,
            "deny enforce",
            "TIOCSTI and TIOCLINUX keystrokes into any terminal",
            if hooks.ioctl {
                "enforced: lsm/file_ioctl and lsm/file_ioctl_compat".to_owned()
            } else if hooks.fmod_ioctl {
                "enforced: fmod_ret/security_file_ioctl (and security_file_ioctl_compat where \
                 the kernel has it), the functions that run the LSM hooks"
                    .to_owned()
            } else if hooks.tiocsti_off {
                "partly: dev.tty.legacy_tiocsti=0, so the kernel refuses TIOCSTI to every \
                 process without CAP_SYS_ADMIN; not covered for agents recognised at exec: \
                 TIOCSTI by a root agent, and TIOCLINUX; guard run trees: refused by seccomp"
                    .to_owned()
            } else {
                "not-covered for agents recognised at exec; guard run trees: refused by seccomp. \
                 dev.tty.legacy_tiocsti=0 takes TIOCSTI from every process without \
                 CAP_SYS_ADMIN"
                    .to_owned()
            },
        ),
        rule(
            crate::events::deputy::RULE_CAPABILITIES,
            if ceiling.is_empty() {
                "off"
            } else {
                "deny enforce"
            },
            &format!("{caps} in the initial user namespace (a sandbox's own namespace keeps them)"),
            if hooks.capable {
                "enforced: lsm/capable refuses them".to_owned()
            } else if hooks.cap_capable {
                "kill-on-detect: tp_btf/cap_capable kills a tagged process granted one in its \
                 own operation (mount, setns, unshare, netlink and iptables changes, module \
                 loads, ptrace, perf_event_open, bpf); the operation happens"
                    .to_owned()
            } else {
                "not-covered for agents recognised at exec (no cap_capable tracepoint before \
                 Linux 6.13); guard run trees drop them"
                    .to_owned()
            },
        ),
    ]
}

/// How this tier makes the runner of an agent-written file a root of that agent.
fn deferred_mechanism(hooks: KernelHooks) -> String {
    if hooks.bprm_check {
        "enforced: writes recorded at lsm/file_open (device, inode, generation); \
         lsm/bprm_check_security sees every file an exec runs (binaries and #! scripts), \
         lsm/file_open an untagged interpreter opening agent-written code (executable, or named \
         .sh, .py, .js, …) and git opening an agent-written .git/config"
            .to_owned()
    } else if hooks.fentry_deferred {
        "enforced: writes recorded at fentry/security_file_open (device, inode, generation); \
         fentry/security_bprm_check sees every file an exec runs (binaries and #! scripts), \
         fentry/security_file_open an untagged interpreter opening agent-written code \
         (executable, or named .sh, .py, .js, …) and git opening an agent-written .git/config \
         — the functions that call the LSM hooks the bpf-lsm tier uses, whatever LSMs run"
            .to_owned()
    } else if hooks.ctime {
        "partly: writes recorded by the ctime tracepoints; an exec whose image an agent wrote \
         (a binary it built or copied) starts a root of that agent. Not covered: #! scripts \
         (the exec has let go of the script's file by the time the exec tracker runs) and \
         scripts given to an interpreter — they need BPF LSM, or fentry on \
         security_bprm_check and security_file_open, which this kernel refused (the daemon's \
         log says why)"
            .to_owned()
    } else {
        "not-covered: this kernel has neither BPF LSM, nor fentry on security_file_open and \
         security_bprm_check, nor the ctime tracepoints (Linux >= 6.13) that see a tagged \
         process's writes"
            .to_owned()
    }
}

/// Deputy channels no rule here stops for agents recognised at exec, on this tier.
fn not_covered(hooks: KernelHooks) -> Vec<String> {
    let mut out = Vec::new();
    if !hooks.ptrace && !hooks.fmod_ptrace {
        out.push(
            "ptrace, /proc/PID/mem and /proc/PID/environ, process_vm_readv/writev and \
             pidfd_getfd on untagged processes (guard:process-access needs BPF LSM)"
                .to_owned(),
        );
    }
    if !hooks.ioctl && !hooks.fmod_ioctl {
        out.push(if hooks.tiocsti_off {
            "TIOCSTI by a root agent and TIOCLINUX keystrokes into a terminal (the rest of \
             TIOCSTI: dev.tty.legacy_tiocsti=0; guard:terminal-input needs BPF LSM; guard run \
             trees: seccomp)"
                .to_owned()
        } else {
            "TIOCSTI and TIOCLINUX keystrokes into a terminal (guard:terminal-input needs BPF \
             LSM; guard run trees: seccomp; guard daemon --disable-legacy-tiocsti takes \
             TIOCSTI from agents that are not root)"
                .to_owned()
        });
    }
    if !hooks.capable {
        out.push(if hooks.egress {
            "a NAT or routing change by a root agent recognised at exec takes effect before \
             the agent is killed (kill-on-detect); destinations NAT rewrites are checked again \
             at egress, so the rule cannot lead a tagged process to a denied endpoint"
                .to_owned()
        } else {
            "a NAT or routing change by a root agent recognised at exec takes effect before \
             the agent is killed, and a destination it rewrites is not checked again"
                .to_owned()
        });
    }
    if !hooks.bprm_check && !hooks.fentry_deferred {
        out.push(
            "an agent-written script an untagged process runs later (a git hook, a generated \
             script, a script given to an interpreter) or a repository's .git/config git \
             reads: guard:deferred-execution needs BPF LSM or fentry on security_bprm_check \
             and security_file_open for them"
                .to_owned(),
        );
    }
    out.extend(
        [
            "relays that do not say where they lead and are not ssh clients, until a \
             connection through them to a protected endpoint is seen; kubectl port-forward and \
             kubectl proxy lead through the API server, so they are that server's endpoint \
             (denied where a rule protects the control plane), not the pod's",
            "proxies not named like one (guard:executors/proxies knows them by name) and \
             proxies on other hosts (a corporate proxy): deny one with an endpoint rule on its \
             address and port",
            "servers and listeners in other network namespaces (containers): the host's \
             loopback is looked at",
            "the ssh-agent socket: an agent can sign with the human's keys (it is how agents \
             push over ssh); deny it with an endpoint rule on SSH_AUTH_SOCK's path",
            "an editor's workspace tasks (.vscode/tasks.json with runOn: folderOpen) the \
             editor runs when the folder is opened again",
        ]
        .map(str::to_owned),
    );
    out
}
