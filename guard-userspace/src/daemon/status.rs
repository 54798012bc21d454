//! `guard status`: what the daemon enforces, by what, and what it cannot.

use super::Shared;
use crate::{
    api::{DaemonStatus, Reply, SelfProtectionStatus},
    kernel::Kernel,
    net,
};

pub(super) fn status(state: &Shared) -> Reply<DaemonStatus> {
    let st = state.lock().expect("state lock");
    let path_rules = st.files.as_ref().map(|f| f.status()).unwrap_or_default();
    let counters: Vec<(String, u64)> = st
        .kernel
        .counters()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .chain(st.files.as_ref().map(|f| f.counters()).unwrap_or_default())
        .collect();
    let self_protection = SelfProtectionStatus {
        hooks: st.self_attached.attached.clone(),
        error: st.self_attached.error.clone(),
        bpf: st.self_attached.bpf_coverage(st.kernel.tier),
        policy_changes: if st.integrity.is_none() {
            "no policy file: the daemon runs on its embedded default policy".into()
        } else if super::apply::policy_watched(&st) {
            "applied on their own, unless a tagged process made them (refused or counted in the \
             kernel) or a directory on the file's path was replaced: those wait for `guard \
             policy apply`"
                .into()
        } else {
            super::integrity::UNWATCHED.into()
        },
        pins_held: st.kernel.keeper.as_ref().map_or(0, |k| k.held()),
        internal_rules: st.internal.iter().map(|r| r.name.clone()).collect(),
    };
    let problems = problems(&path_rules, &st.kernel, &st.net_attached, &self_protection);
    let tagged = st
        .kernel
        .tags
        .keys()
        .filter_map(Result::ok)
        .filter(|k| *k != guard_common::PROBE_TGID)
        .count();
    Reply::ok(DaemonStatus {
        daemon_pid: std::process::id(),
        enforcing: st.enforcing,
        // The tier that enforces, not the one the kernel could offer (the probe below says
        // what the kernel offers).
        tier: st.kernel.tier.to_string(),
        tier_error: st.kernel.lsm_error.clone(),
        view: st.view.clone(),
        network: network_status(&st.kernel, &st.net_attached),
        policy: st.policy_name.clone(),
        policy_generation: st.generation,
        policy_rejected: st.rejected.clone(),
        trackers: Kernel::pinned_links(st.kernel.pin_dir()),
        tagged_processes: tagged,
        tag_map: Some(crate::tagmap::status(&st.kernel, tagged)),
        secret_reads: st.kernel.secret_reads.clone(),
        held_trees: st.kernel.held.keys().filter_map(Result::ok).count(),
        notify: st.net.as_ref().and_then(|n| n.requests().notify_status()),
        secret_taint: st.net.as_ref().map_or_else(String::new, |net| {
            let (secrets, taints) = net.secrets();
            secret_taint(secrets.as_ref(), &taints, &st.kernel.secret_reads)
        }),
        deputies: st.net.as_ref().map(|net| {
            let (found, tunnels) = net.found();
            let lsm = |hook: &str| {
                st.kernel
                    .lsm
                    .as_ref()
                    .is_some_and(|l| l.hooks.iter().any(|h| h == hook))
            };
            let fmod = |function: &str| {
                let hook = format!("fmod_ret/{function}");
                st.kernel.deputy_fmod.contains(&hook)
            };
            let hooks = net::deputy_status::KernelHooks {
                ptrace: lsm("ptrace_access_check"),
                ioctl: lsm("file_ioctl"),
                fmod_ptrace: fmod("security_ptrace_access_check"),
                fmod_ioctl: fmod("security_file_ioctl"),
                capable: lsm("capable"),
                cap_capable: st.self_attached.attached.iter().any(|t| t == "cap_capable"),
                bprm_check: lsm("bprm_check_security") && lsm("file_open"),
                ctime: st.files.as_ref().is_some_and(|f| f.attached().detects()),
                fentry_deferred: st.kernel.deferred.len()
                    == guard_common::maps::programs::DEFERRED.len(),
                egress: !st.net_attached.lsm && st.net_attached.egress_missing.is_none(),
                tiocsti_off: crate::tiocsti::legacy_allowed() == Some(false),
            };
            let ceiling: Vec<String> = st
                .drop_caps
                .iter()
                .filter_map(|c| crate::policy::Capability::from_number(*c))
                .map(|c| c.to_string())
                .collect();
            net::deputy_status::status(
                &st.builtin,
                &found,
                &tunnels,
                &st.net_attached,
                hooks,
                &ceiling,
            )
        }),
        recognition: Some(crate::tags::recognition_status(
            &st.agents,
            counters
                .iter()
                .find(|(n, _)| n == "env_scan_truncated")
                .map_or(0, |(_, v)| *v),
            st.kernel.agent_paths.keys().filter_map(Result::ok).count(),
            &st.paths_missing,
            &st.agent_cgroups,
        )),
        internal_errors: internal_errors(&st.kernel, &counters),
        counters,
        probe: serde_json::to_value(&st.probe).unwrap_or_default(),
        path_rules,
        self_protection: Some(self_protection),
        problems,
        other_instances: crate::pins::other_instances(st.kernel.pin_dir())
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        programs: crate::loader::program_costs(&st.kernel.pin_dir().join("links")),
        bpf_stats: crate::loader::bpf_stats_enabled(),
    })
}

/// The families of programs attached under the pin directory, with what they do on an
/// internal error and the count so far.
fn internal_errors(kernel: &Kernel, counters: &[(String, u64)]) -> Vec<crate::api::InternalErrors> {
    let pinned = Kernel::pinned_links(kernel.pin_dir());
    let table = crate::loader::table::table();
    crate::loader::Family::ALL
        .iter()
        .filter(|f| {
            table
                .iter()
                .any(|r| r.family == **f && pinned.iter().any(|p| p == r.pin))
        })
        .map(|f| {
            let e = f.on_error();
            crate::api::InternalErrors {
                hooks: f.label().into(),
                on_error: e.verdict.into(),
                effect: e.effect.into(),
                counter: e.counter.into(),
                count: counters
                    .iter()
                    .find(|(n, _)| n == e.counter)
                    .map_or(0, |(_, v)| *v),
            }
        })
        .collect()
}

/// What unix socket rules stop on this tier, and by name what they do not.
fn unix_coverage(a: &net::Attached) -> String {
    use crate::files::status::{ENFORCED, NOT_LOADED};
    const BY_FILE: &str = "by the socket file the kernel resolves, whatever spelling, symlink, \
                           hard link, /proc/*/fd/N or bind mount leads to it";
    match (&a.unix_missing, &a.unix_peer_missing) {
        _ if a.lsm => format!(
            "{ENFORCED}: {BY_FILE} (BPF LSM unix_stream_connect, unix_may_send); abstract names \
             by name"
        ),
        (None, None) => format!(
            "{ENFORCED}: {BY_FILE} (fmod_ret of security_unix_stream_connect and \
             security_unix_may_send, the functions that run those LSM hooks); abstract names by \
             name (cgroup connect_unix/sendmsg_unix)"
        ),
        (Some(why), None) => format!(
            "{ENFORCED} for socket files: {BY_FILE} (fmod_ret of security_unix_stream_connect \
             and security_unix_may_send). Abstract names are not covered: {why}"
        ),
        (None, Some(peer_missing)) => format!(
            "{ENFORCED} for the configured path, the path it resolves to, and every spelling \
             the kernel resolves from the name (relative to the cwd, repeated slashes, `.` and \
             `..` components, /proc/*/root, /proc/*/cwd: cgroup connect_unix/sendmsg_unix see \
             only the name, so such a spelling meets the rules of protected sockets with the \
             same last component). Not covered for agents recognised at exec without BPF LSM \
             or fmod_ret programs ({peer_missing}): symlinks made to the socket under another \
             name, and hard links: the linker is killed where the change detectors load (rule \
             guard:socket-files, kill-on-detect), but the link it made stays for the rest of \
             its tree. guard run trees: the socket files are masked in their mount namespace, \
             so no spelling reaches them"
        ),
        (Some(why), Some(_)) => format!("{NOT_LOADED}: {why}"),
    }
}

/// The secrets rule as it works here: its action, what it covers, and the trees it holds.
fn secret_taint(
    secrets: Option<&crate::policy::CompiledSecrets>,
    taints: &crate::secrets::Taints,
    reads: &str,
) -> String {
    use crate::files::status::{ENFORCED, NOT_LOADED};
    let Some(s) = secrets else {
        return String::new();
    };
    let Some(action) = s.action else {
        return "off (spec.secrets.taint: allow): reads are inventoried, nothing is denied".into();
    };
    if reads.starts_with("off") || reads.starts_with("not") {
        return format!(
            "{NOT_LOADED}: no read path is scanned on this tier ({reads}), so no tree is tainted"
        );
    }
    let allow = if s.allow.is_empty() {
        "no destination".to_owned()
    } else {
        s.allow.join(", ")
    };
    let what = if s.mode == crate::policy::Mode::Audit || action == crate::policy::Action::Audit {
        "audit: a tainted tree's connects and sends to IP destinations are recorded (rule \
         guard:secrets), not blocked"
            .to_owned()
    } else {
        format!(
            "{ENFORCED} ({action}): a tainted tree may connect and send only to spec.secrets.allow \
             ({allow}) and what no endpoint rule denies there; while a scan of what it read is \
             pending it is denied the same (rule guard:secrets-pending), until the daemon's \
             answer ({})",
            match taints.answer_times() {
                Some(a) => format!(
                    "the last {} reads were answered in {:.2} ms (median), {:.2} ms at most",
                    a.samples,
                    a.median_ns as f64 / 1e6,
                    a.max_ns as f64 / 1e6
                ),
                None => "no read answered yet".to_owned(),
            }
        )
    };
    format!(
        "{what}. A tree is tainted from its root, for its whole life, at the first read of a \
         file holding a secret; unix sockets are left to endpoint rules. {} trees \
         tainted now",
        taints.len()
    )
}

fn network_status(kernel: &Kernel, a: &net::Attached) -> crate::api::NetworkStatus {
    crate::api::NetworkStatus {
        tier: if a.lsm { "bpf-lsm" } else { "fallback" }.into(),
        programs: a.programs.iter().map(|p| (*p).to_owned()).collect(),
        unix: unix_coverage(a),
        raw_sockets: a.raw.describe(),
        after_nat: if a.lsm {
            "not checked: on bpf-lsm a root agent is refused CAP_NET_ADMIN, so it cannot add NAT \
             rules; rules an untagged administrator adds apply to every destination as written"
                .into()
        } else {
            match &a.egress_missing {
                None => "enforced: cgroup_skb/egress checks a tagged socket's packets again when \
                         NAT rewrote their destination, and drops them where a rule denies the \
                         new one (a connect then times out; no kill from packet context)"
                    .into(),
                Some(why) => format!("not-loaded: {why}"),
            }
        },
        kill: if a.lsm {
            "SIGKILL from the LSM program, before the system call returns".into()
        } else if kernel.kill_via.programs().is_empty() {
            kernel.kill_via.describe().into()
        } else {
            let now = if kernel.killer_attached() {
                "attached now"
            } else {
                "none attached now"
            };
            format!(
                "{}; attached while a policy kills ({now})",
                kernel.kill_via.describe()
            )
        },
    }
}

/// What is meant to be enforced but is not loaded: `guard status` exits non-zero when this
/// is not empty. A rejected policy is not a problem here (the previous one is in force).
fn problems(
    path_rules: &[crate::files::PathRuleStatus],
    kernel: &Kernel,
    net_attached: &net::Attached,
    guard_self: &SelfProtectionStatus,
) -> Vec<String> {
    let mut out: Vec<String> = path_rules
        .iter()
        .filter(|r| r.status == crate::files::status::NOT_LOADED)
        .map(|r| format!("path rule {} is not loaded", r.name))
        .collect();
    if let (Some(why), false) = (&net_attached.unix_missing, net_attached.unix_peer()) {
        out.push(format!("unix socket rules are not enforced: {why}"));
    }
    if let crate::net::RawCoverage::Missing(why) = &net_attached.raw {
        out.push(format!("the raw-socket rule is not enforced: {why}"));
    }
    if let Some(e) = &kernel.lsm_error {
        out.push(format!("the bpf-lsm tier is not enforcing: {e}"));
    }
    if let Some(e) = &guard_self.error {
        out.push(format!("self-protection is not fully attached: {e}"));
    }
    if guard_self.pins_held == 0 {
        out.push("removed pins are not put back (the pin keeper is not running)".into());
    }
    out
}
