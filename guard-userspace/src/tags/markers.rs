//! Environment markers: the kernel's trie of them, and the same rule applied to
//! `/proc/PID/environ` for processes found running.

use std::collections::BTreeMap;

use aya::maps::lpm_trie::Key as LpmKey;
use guard_common::agent::{self, EnvKey, NAME_LEN};

use super::{AgentSpec, TagError};
use crate::kernel::Kernel;

/// The environment markers of `agents` into the kernel's trie, then their number, which turns
/// the scan at exec on (or off at 0), then stale markers out.
pub(super) fn install_markers(kernel: &mut Kernel, agents: &[AgentSpec]) -> Result<(), TagError> {
    let mut want: BTreeMap<(Vec<u8>, u32), u32> = BTreeMap::new();
    for a in agents {
        for m in &a.env {
            let (name, value, prefix) =
                agent::split_marker(m.as_bytes()).ok_or_else(|| TagError::Marker(m.clone()))?;
            let (key, bits) =
                EnvKey::marker(name, value, prefix).ok_or_else(|| TagError::Marker(m.clone()))?;
            want.insert((key.bytes.to_vec(), bits), a.id);
        }
    }
    let key = |bytes: &[u8], bits: u32| {
        let mut k = EnvKey {
            bytes: [0; agent::ENV_KEY_LEN],
        };
        k.bytes.copy_from_slice(bytes);
        LpmKey::new(bits, k)
    };
    for ((bytes, bits), id) in &want {
        kernel.agent_env.insert(&key(bytes, *bits), id, 0)?;
    }
    let keys: Vec<(EnvKey, u32)> = want
        .keys()
        .map(|(bytes, bits)| (key(bytes, *bits).data(), *bits))
        .collect();
    super::update_recognition(kernel, |r| {
        r.set_markers(keys.iter().map(|(k, bits)| (k, *bits)));
    })?;
    let stale: Vec<LpmKey<EnvKey>> = kernel
        .agent_env
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains_key(&(k.data().bytes.to_vec(), k.prefix_len())))
        .collect();
    for k in stale {
        kernel.agent_env.remove(&k)?;
    }
    Ok(())
}

/// The agent whose environment marker `environ` (NUL-separated `NAME=VALUE`s, as in
/// `/proc/PID/environ`) carries, by the kernel's rule: the first variable within the scan's
/// bounds that carries a marker, and of that variable's markers the longest. Returns the
/// agent id and the variable's start, as the kernel reports it.
pub fn env_agent(environ: &[u8], agents: &[AgentSpec]) -> Option<(u32, String)> {
    let mut offset = 0usize;
    for (n, var) in environ.split(|c| *c == 0).enumerate() {
        if n >= agent::ENV_SCAN_MAX_VARS as usize
            || offset as u64 >= agent::ENV_SCAN_MAX_BYTES
            || offset >= environ.len()
        {
            return None;
        }
        offset += var.len() + 1;
        let best = agents
            .iter()
            .flat_map(|a| a.env.iter().map(move |m| (a.id, m)))
            .filter_map(|(id, m)| {
                let (name, value, prefix) = agent::split_marker(m.as_bytes())?;
                agent::env_matches(var, name, value, prefix)
                    .then_some((name.len() + value.len() + usize::from(!prefix), id))
            })
            .max();
        if let Some((_, id)) = best {
            let shown = &var[..var.len().min(NAME_LEN - 1)];
            return Some((id, String::from_utf8_lossy(shown).into_owned()));
        }
    }
    None
}

/// The marker process `pid`'s environment carries (see [`env_agent`]).
pub fn env_marker(pid: u32, agents: &[AgentSpec]) -> Option<(u32, String)> {
    if agents.iter().all(|a| a.env.is_empty()) {
        return None;
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env_agent(&environ, agents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_markers_follow_the_kernel_scan() {
        let mut a = super::super::tests::agents();
        a[0].env = vec!["CLAUDECODE=1".into(), "AGENT=*".into()];
        a[1].env = vec!["AGENT=aider".into()];
        let env = |vars: &[&str]| {
            let mut out = Vec::new();
            for v in vars {
                out.extend_from_slice(v.as_bytes());
                out.push(0);
            }
            out
        };
        let got = |vars: &[&str]| env_agent(&env(vars), &a);
        assert_eq!(got(&["PATH=/bin", "CLAUDECODE=1"]).unwrap().0, 1);
        assert_eq!(got(&["AGENT=aider"]).unwrap(), (2, "AGENT=aider".into()));
        assert_eq!(got(&["AGENT=goose"]).unwrap().0, 1);
        assert_eq!(got(&["AGENT_ID=1", "CLAUDECODE=10"]), None);
        // Past the scan's bounds nothing is seen.
        let mut many: Vec<String> = (0..agent::ENV_SCAN_MAX_VARS)
            .map(|i| format!("V{i}=x"))
            .collect();
        many.push("CLAUDECODE=1".into());
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(got(&many), None);
        assert_eq!(got(&many[1..]).unwrap().0, 1);
    }
}
