//! The apply step: put a compiled policy in force. Start-up applies the first policy, and
//! every reload (SIGHUP, a change of the policy file) applies the next one the same way.

use tracing::{error, info, warn};

use super::{DaemonError, Shared, agent_specs};
use crate::{
    net,
    policy::{CompiledPolicy, Policy},
    tags::{self, AgentNames},
};

/// Resolve the agents' install paths and cgroups again and put what changed in force: a
/// version an auto-updater installed under a glob, a path that appeared or went away, a cgroup
/// created or removed (the processes already inside a new one are tagged).
pub(super) fn refresh_installs(state: &Shared) {
    let agents = {
        let st = state.lock().expect("state lock");
        if st
            .agents
            .iter()
            .all(|a| a.paths.is_empty() && a.cgroups.is_empty() && a.containers.is_empty())
        {
            return;
        }
        st.agents.clone()
    };
    let installs = tags::Installs::resolve(&agents);
    let mut st = state.lock().expect("state lock");
    if st.agents != agents {
        // A reload ran meanwhile and resolved its own.
        return;
    }
    if let Err(e) = put_installs(&mut st, installs) {
        warn!(error = %e, "agent install paths and cgroups not refreshed");
    }
}

/// Put resolved installs in force and keep what status shows of them.
fn put_installs(st: &mut super::State, installs: tags::Installs) -> Result<(), tags::TagError> {
    let tagged = installs.install(&mut st.kernel)?;
    if tagged > 0 {
        info!(tagged, "tagged the processes in agents' cgroups");
    }
    st.paths_missing = installs.paths.missing;
    st.agent_cgroups = installs.cgroups;
    Ok(())
}

/// Put `compiled` in force, in the order that never opens a gap: the agents (recognition at
/// exec), the kill programs before any rule that kills, the endpoint rules (new hosts resolved
/// first), the kill programs out once no rule kills, and the path rules (resolved on their own
/// thread once file protection runs). An error leaves the previous policy's rules of the
/// failing part in force.
pub async fn apply(
    state: &Shared,
    compiled: CompiledPolicy,
    net: &net::NetHandle,
) -> Result<u64, DaemonError> {
    // First: a webhook that cannot start (its key file) rejects the policy before any part
    // of it is in force.
    net.requests()
        .configure_webhook(compiled.notify.webhook.as_ref())
        .map_err(DaemonError::Notify)?;
    let agents = agent_specs(&compiled);
    let installs = tags::Installs::resolve(&agents);
    let kills = needs_killer(&compiled);
    let generation = {
        let mut st = state.lock().expect("state lock");
        tags::install_agents(&mut st.kernel, &agents)?;
        put_installs(&mut st, installs)?;
        st.names = AgentNames::new(&agents);
        net.requests().set_agent_names(st.names.clone());
        st.agents = agents;
        st.policy_name = compiled.name.clone();
        st.generation += 1;
        st.rejected = None;
        st.path_rules = compiled.paths.clone();
        st.builtin = compiled.builtin.clone();
        st.approvers = compiled.approvers.clone();
        st.net = Some(net.clone());
        st.drop_caps = compiled
            .drop_capabilities
            .iter()
            .map(|c| c.number())
            .collect();
        st.unix_masks = unix_masks(&compiled);
        let ceiling = st.drop_caps.clone();
        st.kernel.set_cap_ceiling(&ceiling)?;
        if kills {
            st.kernel.set_killer(true)?;
        }
        st.generation
    };
    net.apply(&compiled).await?;
    let mut st = state.lock().expect("state lock");
    if !kills && let Err(e) = st.kernel.set_killer(false) {
        warn!(error = %e, "cannot detach the kill programs");
    }
    reload_files(&mut st);
    Ok(generation)
}

/// The socket files of `policy`'s enforced unix rules that block: configured paths and the
/// paths they resolve to.
fn unix_masks(policy: &CompiledPolicy) -> Vec<std::path::PathBuf> {
    use crate::policy::Mode;
    let mut out: Vec<std::path::PathBuf> = policy
        .endpoints
        .iter()
        .filter(|r| r.mode == Mode::Enforce && r.action != crate::policy::Action::Audit)
        .flat_map(|r| r.unix.iter())
        .filter(|n| !n.starts_with('@'))
        .flat_map(|n| std::iter::once(n.clone()).chain(net::unix_files::aliases(n)))
        .map(std::path::PathBuf::from)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether `policy` has an enforced endpoint rule that kills.
fn needs_killer(policy: &CompiledPolicy) -> bool {
    use crate::policy::{Action, Mode};
    let kills =
        |action, mode| matches!(action, Action::Kill | Action::KillTree) && mode == Mode::Enforce;
    policy.endpoints.iter().any(|r| kills(r.action, r.mode))
        || policy.raw_sockets.is_some_and(|r| kills(r.action, r.mode))
}

/// Resolve the path rules in force again (the policy's and guard's own) on a thread of their
/// own; reloads started later win over earlier ones still running.
pub(super) fn reload_files(st: &mut super::State) {
    let Some(files) = st.files.clone() else {
        return;
    };
    let rules: Vec<_> = st.path_rules.iter().chain(&st.internal).cloned().collect();
    st.files_seq += 1;
    let seq = st.files_seq;
    std::thread::spawn(move || files.reload(seq, &rules));
}

/// Where `guard policy apply` gets its answer: the new generation, or why not.
pub type Applied = tokio::sync::oneshot::Sender<Result<u64, String>>;

/// What asks for the policy file to be applied again.
pub enum Trigger {
    /// The file (or its directory) changed: applied only when no tagged process changed it
    /// and no directory on its path was replaced ([`super::integrity`]).
    FileChanged,
    /// An administrator: SIGHUP or `guard policy apply` from an untagged process. What the
    /// file says now is what they want.
    Admin(Option<Applied>),
}

/// Read the policy file again and apply it; a policy that does not parse or install is
/// rejected, and the previous one stays in force (`guard status` says why).
pub fn reload(
    policy_path: Option<&std::path::Path>,
    state: &Shared,
    net: &net::NetHandle,
    trigger: Trigger,
) {
    let reply = match trigger {
        Trigger::FileChanged => {
            let as_applied = {
                let st = state.lock().expect("state lock");
                st.integrity.as_ref().is_some_and(|i| i.is_as_applied())
            };
            if as_applied {
                return;
            }
            if let Some(path) = policy_path
                && refused(state, path)
            {
                return;
            }
            None
        }
        Trigger::Admin(reply) => {
            let mut st = state.lock().expect("state lock");
            let st = &mut *st;
            if let Some(integrity) = st.integrity.as_mut() {
                integrity.acknowledge(st.kernel.pin_dir(), st.guard_self.as_mut());
            }
            reply
        }
    };
    let answer = |reply: Option<Applied>, result: Result<u64, String>| {
        if let Some(r) = reply {
            let _ = r.send(result);
        }
    };
    let Some(path) = policy_path else {
        info!("running on the embedded default policy; nothing to reload");
        answer(
            reply,
            Err("the daemon runs on its embedded default policy: there is no file to apply".into()),
        );
        return;
    };
    let compiled = match Policy::load(path) {
        Ok(policy) => policy.compile(),
        Err(e) => {
            error!(error = %e, "policy rejected; the previous policy stays in force");
            let mut st = state.lock().expect("state lock");
            st.rejected = Some(e.to_string());
            // The file may be a new inode (an editor's rename, a ConfigMap swap): resolve the
            // rules in force again, so that the internal rule covers it.
            reload_files(&mut st);
            answer(reply, Err(e.to_string()));
            return;
        }
    };
    let state = state.clone();
    let net = net.clone();
    let (seq, turn) = {
        let mut st = state.lock().expect("state lock");
        st.apply_seq += 1;
        (st.apply_seq, st.apply_turn.clone())
    };
    tokio::spawn(async move {
        // One apply at a time; a reload that a newer one follows is skipped.
        let _turn = turn.lock().await;
        if state.lock().expect("state lock").apply_seq != seq {
            answer(reply, Err("a newer apply followed this one".into()));
            return;
        }
        match apply(&state, compiled, &net).await {
            Ok(generation) => {
                info!(generation, "policy reloaded");
                answer(reply, Ok(generation));
            }
            Err(e) => {
                error!(error = %e, "policy reload failed; the previous rules stay where it failed");
                let why = format!("installing the policy failed: {e}");
                state.lock().expect("state lock").rejected = Some(why.clone());
                answer(reply, Err(why));
            }
        }
    });
}

/// Whether the kernel refuses (bpf-lsm file hooks, the fallback tier's `fmod_ret` programs,
/// with the fanotify layer for opens) or detects (change detectors) a tagged process's change
/// of the policy file.
pub(super) fn policy_watched(st: &super::State) -> bool {
    st.files.as_ref().is_some_and(|f| {
        let a = f.attached();
        a.refused_in_kernel() || a.detects()
    })
}

/// Whether a change of the file at `path` must wait for an administrator; if so, say why
/// (status, event, log) and keep the policy in force.
fn refused(state: &Shared, path: &std::path::Path) -> bool {
    let mut st = state.lock().expect("state lock");
    let seen = st
        .guard_self
        .as_ref()
        .map_or(0, |s| s.policy_changes_seen());
    let watched = policy_watched(&st);
    let Some(why) = st
        .integrity
        .as_ref()
        .and_then(|i| i.check(st.kernel.pin_dir(), seen, watched))
    else {
        return false;
    };
    let why = why.to_string();
    warn!(path = %path.display(), %why, "a changed policy file is not applied");
    st.rejected = Some(format!(
        "a change of {} was not applied: {why}; the policy in force stays. Review the file, \
         then `guard policy apply`",
        path.display()
    ));
    if let Some(sink) = st.sink.clone() {
        let event = crate::selfprot::policy_refused(path, &why);
        tokio::spawn(async move { sink.submit(event).await });
    }
    // The file may be a new inode: the internal rule must cover what is there now.
    reload_files(&mut st);
    true
}
