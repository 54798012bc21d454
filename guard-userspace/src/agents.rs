//! The agents of the policy as the kernel maps and the event log know them: ids and names.
//! Below the subsystems, so that events and metrics can name agents without the tag map.

use std::collections::HashMap;

use serde::Serialize;

/// Agent id used for `guard run` without `--agent`.
pub const UNNAMED_AGENT: u32 = 0;
pub const UNNAMED_AGENT_NAME: &str = "guard-run";

/// One agent as the kernel knows it. Ids start at 1; 0 is `guard run` without a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentSpec {
    pub id: u32,
    pub name: String,
    pub executables: Vec<String>,
    pub scripts: Vec<String>,
    /// Environment markers (`NAME=VALUE`, `NAME=PREFIX*`).
    pub env: Vec<String>,
    /// Install paths (`agents[].paths`, as written).
    pub paths: Vec<String>,
    /// Cgroup patterns (`agents[].cgroups`).
    pub cgroups: Vec<String>,
    /// Container selectors (`agents[].containers`).
    pub containers: Vec<crate::policy::ContainerSelector>,
}

/// Names of agents by id, for display. Cheap to clone: every event reader holds the current
/// names, and a reload swaps them.
#[derive(Clone, Debug, Default)]
pub struct AgentNames(std::sync::Arc<HashMap<u32, String>>);

impl AgentNames {
    pub fn new(specs: &[AgentSpec]) -> Self {
        let mut names: HashMap<u32, String> =
            specs.iter().map(|a| (a.id, a.name.clone())).collect();
        names.insert(UNNAMED_AGENT, UNNAMED_AGENT_NAME.into());
        Self(std::sync::Arc::new(names))
    }
    pub fn name(&self, id: u32) -> String {
        self.0
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("agent-{id}"))
    }
    /// Every name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.values().map(String::as_str)
    }
    pub fn id(&self, name: &str) -> Option<u32> {
        self.0.iter().find(|(_, n)| *n == name).map(|(id, _)| *id)
    }
}
