//! Why a root was recognised, and what recognition covers, for `guard ps` and `guard status`.

use guard_common::{agent, tag_flags};
use serde::Serialize;

use super::{AgentSpec, markers::env_marker};

/// How a root came to be tagged, for `guard ps`: from its tag's flags, and for an
/// environment marker the variable that carries it.
pub fn recognition(pid: u32, flags: u32, agents: &[AgentSpec]) -> String {
    let how = if flags & tag_flags::BY_CGROUP != 0 {
        let path = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
            })
            .unwrap_or_default();
        format!("cgroup {path}")
    } else if flags & tag_flags::BY_ENV != 0 {
        let marker = env_marker(pid, agents).map(|(_, m)| format!(" {m}"));
        format!("env marker{}", marker.unwrap_or_default())
    } else if flags & tag_flags::BY_SCRIPT != 0 {
        "script".to_owned()
    } else if flags & tag_flags::BY_PATH != 0 {
        "install path".to_owned()
    } else if flags & tag_flags::DEFERRED != 0 {
        "deferred (it runs a file the agent wrote)".to_owned()
    } else if flags & tag_flags::FROM_RUN != 0 {
        "guard run".to_owned()
    } else {
        "executable".to_owned()
    };
    if flags & tag_flags::FROM_SEED != 0 && flags & tag_flags::FROM_RUN == 0 {
        format!("{how} (found running at start)")
    } else {
        how
    }
}

/// `guard status`: what makes a root, and what recognition does not see.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct RecognitionStatus {
    pub agents: usize,
    pub executables: usize,
    pub scripts: usize,
    pub env_markers: usize,
    /// Install paths (`agents[].paths`), the files and directories they name now, and those
    /// that name nothing yet.
    pub paths: usize,
    pub paths_resolved: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths_missing: Vec<String>,
    /// Cgroup patterns (`agents[].cgroups`) and the cgroups they match now.
    pub cgroups: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups_matched: Vec<String>,
    /// Container selectors (`agents[].containers`) and where container metadata comes from.
    #[serde(default)]
    pub containers: usize,
    #[serde(default)]
    pub container_metadata: String,
    /// The bounds of the environment scan at exec and how many execs went past them.
    pub env_scan: String,
    /// What recognition of an IDE agent by its shells' markers contains, and what not.
    pub ide_agents: String,
    /// What no recognition here sees, by name.
    pub not_covered: Vec<String>,
}

/// The status of recognition for `agents`, with the kernel's count of truncated scans.
pub fn recognition_status(
    agents: &[AgentSpec],
    truncated: u64,
    paths_resolved: usize,
    paths_missing: &[std::path::PathBuf],
    cgroups: &super::cgroups::Resolved,
) -> RecognitionStatus {
    let count = |f: fn(&AgentSpec) -> usize| agents.iter().map(f).sum();
    let env_markers = count(|a| a.env.len());
    RecognitionStatus {
        agents: agents.len(),
        executables: count(|a| a.executables.len()),
        scripts: count(|a| a.scripts.len()),
        env_markers,
        paths: count(|a| a.paths.len()),
        cgroups: count(|a| a.cgroups.len()),
        cgroups_matched: cgroups.values().map(|(_, p)| p.clone()).collect(),
        containers: count(|a| a.containers.len()),
        container_metadata: if agents.iter().all(|a| a.containers.is_empty()) {
            "off: no agents[].containers".into()
        } else {
            crate::containers::sources_status()
        },
        paths_resolved,
        paths_missing: paths_missing
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        env_scan: if env_markers == 0 {
            "off: the policy has no environment markers".into()
        } else {
            format!(
                "the first {} variables that start within the first {} KiB of the environment \
                 at exec; {truncated} execs had more, and a marker past that was not seen",
                agent::ENV_SCAN_MAX_VARS,
                agent::ENV_SCAN_MAX_BYTES / 1024
            )
        },
        ide_agents: "the shells an IDE agent runs its commands in (they carry its marker) and \
                     everything they start are tagged and contained; the editor, its extension \
                     host and the human's terminals are not"
            .into(),
        not_covered: vec![
            "an IDE agent's own tools (read, edit, search, fetch, MCP), which run inside the \
             untagged editor process"
                .into(),
            "an agent that sets no marker and runs under a name or script the policy does not \
             list (markers are vendors' conventions, not a boundary)"
                .into(),
            "a marker past the environment scan's bounds".into(),
            "a hard link or copy of an agent's file outside its install paths, and an \
             executable more than 16 directories below one"
                .into(),
            "what a process in a matching cgroup does before the daemon finds the cgroup, and \
             one in a matching container started without guard's runtime hook or selected by \
             labels only the runtime's API reports (up to 2 s after it starts)"
                .into(),
        ],
    }
}
