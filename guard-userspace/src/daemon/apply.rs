//! The apply step: put a compiled policy in force. Start-up applies the first policy, and
//! every reload (SIGHUP, a change of the policy file) applies the next one the same way.

use tracing::{error, info, warn};

use super::{DaemonError, Shared, agent_specs};
use crate::{
    net,
    policy::{CompiledPolicy, Policy},
    tags::{self, AgentNames},
};

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
    let agents = agent_specs(&compiled);
    let kills = needs_killer(&compiled);
    let generation = {
        let mut st = state.lock().expect("state lock");
        tags::install_agents(&mut st.kernel, &agents)?;
        st.names = AgentNames::new(&agents);
        st.agents = agents;
        st.policy_name = compiled.name.clone();
        st.generation += 1;
        st.rejected = None;
        st.path_rules = compiled.paths.clone();
        st.drop_caps = compiled
            .drop_capabilities
            .iter()
            .map(|c| c.number())
            .collect();
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

/// Read the policy file again and apply it; a policy that does not parse or install is
/// rejected, and the previous one stays in force (`guard status` says why).
pub fn reload(policy_path: Option<&std::path::Path>, state: &Shared, net: &net::NetHandle) {
    let Some(path) = policy_path else {
        info!("SIGHUP: running on the embedded default policy; nothing to reload");
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
            return; // a newer reload follows
        }
        match apply(&state, compiled, &net).await {
            Ok(generation) => info!(generation, "policy reloaded"),
            Err(e) => {
                error!(error = %e, "policy reload failed; the previous rules stay where it failed");
                state.lock().expect("state lock").rejected =
                    Some(format!("installing the policy failed: {e}"));
            }
        }
    });
}
