//! Cgroups that are agents as a whole (`agents[].cgroups`): a CI runner's unit, an agent pod;
//! and the cgroups of containers `agents[].containers` select by what their runtime says.
//! The daemon finds the cgroups the patterns match on the default (v2) hierarchy and puts their
//! ids in the kernel's map; the trackers tag a process that joins one or that forks or execs
//! in one (or below one), and the daemon tags what was already inside when a cgroup's id
//! arrives (its `cgroup.procs`, and those of the cgroups below it). Re-resolved at every apply
//! and every [`super::paths::RECHECK`], so a cgroup created later is found within that.

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::maps::MapError;
use guard_common::{ProcKey, Tag, tag_flags};

use super::{AgentSpec, ProcInfo};
use crate::{kernel::Kernel, policy::cgroup_match};

/// How deep below the cgroup2 root the daemon looks for matching cgroups.
const MAX_DEPTH: usize = 32;

/// Matching cgroups by id: the agent and the cgroup's path.
pub type Resolved = BTreeMap<u64, (u32, String)>;

/// The cgroups under the cgroup2 mount `root` that `agents`' patterns match (the first agent
/// whose pattern matches a cgroup has it).
pub fn resolve(agents: &[AgentSpec], root: &Path) -> Resolved {
    let mut out = Resolved::new();
    let by_container = agents.iter().any(|a| !a.containers.is_empty());
    if agents.iter().all(|a| a.cgroups.is_empty()) && !by_container {
        return out;
    }
    let mut live = HashSet::new();
    walk(root, "", 0, &mut |path, id| {
        let agent = agents
            .iter()
            .find(|a| a.cgroups.iter().any(|p| cgroup_match(p, path)))
            .or_else(|| {
                by_container
                    .then(|| container_agent(agents, path, &mut live))
                    .flatten()
            });
        if let Some(a) = agent {
            out.insert(id, (a.id, path.to_owned()));
        }
    });
    if by_container {
        crate::containers::retain(&live);
    }
    out
}

/// The agent whose `containers` select the container of the cgroup at `path`, if it is one.
fn container_agent<'a>(
    agents: &'a [AgentSpec],
    path: &str,
    live: &mut HashSet<String>,
) -> Option<&'a AgentSpec> {
    let id = crate::proctree::container_id(path)?;
    let info = crate::containers::lookup(&id, path);
    live.insert(id);
    agents.iter().find(|a| {
        a.containers
            .iter()
            .any(|s| crate::containers::selects(s, &info))
    })
}

fn walk(dir: &Path, rel: &str, depth: usize, f: &mut impl FnMut(&str, u64)) {
    let Ok(meta) = fs::metadata(dir) else {
        return;
    };
    // A cgroup's id is its directory's inode number on cgroup2.
    f(if rel.is_empty() { "/" } else { rel }, meta.ino());
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let name = e.file_name().to_string_lossy().into_owned();
            walk(&e.path(), &format!("{rel}/{name}"), depth + 1, f);
        }
    }
}

/// Put `want` into the kernel's map (new ids first, then the count that turns the walk on,
/// then stale ids out), then tag every process already inside a cgroup that is new to the map
/// or below one. Returns how many processes were tagged.
pub fn install(kernel: &mut Kernel, want: &Resolved, root: &Path) -> Result<usize, MapError> {
    let have: BTreeMap<u64, u32> = kernel.agent_cgroups.iter().filter_map(Result::ok).collect();
    for (id, (agent, _)) in want {
        if have.get(id) != Some(agent) {
            kernel.agent_cgroups.insert(id, agent, 0)?;
        }
    }
    let count = u32::try_from(want.len()).unwrap_or(u32::MAX);
    super::update_recognition(kernel, |r| r.cgroups = count)?;
    for id in have.keys().filter(|id| !want.contains_key(id)) {
        kernel.agent_cgroups.remove(id)?;
    }
    // Only after the id is in the map: whatever starts there from now on the kernel tags,
    // and whatever was there before is in cgroup.procs now. A container its runtime is still
    // setting up holds only the runtime's own init, which must finish unhindered: the kernel
    // tags the container's first process when that init execs it.
    let mut tagged = 0;
    let setting_up = |path: &str| {
        crate::proctree::container_id(path).is_some_and(|c| crate::containers::is_starting(&c))
    };
    for (id, (agent, path)) in want
        .iter()
        .filter(|(id, (_, path))| !have.contains_key(id) && !setting_up(path))
    {
        let dir = root.join(path.trim_start_matches('/'));
        tagged += tag_members(kernel, &dir, *id, *agent, 0);
    }
    Ok(tagged)
}

/// Tag the processes of the cgroup at `dir` and of every cgroup below it.
fn tag_members(kernel: &mut Kernel, dir: &Path, cgroup: u64, agent_id: u32, depth: usize) -> usize {
    let mut tagged = 0;
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        if pid == std::process::id() || kernel.tags.get(&pid, 0).is_ok() {
            continue;
        }
        let Ok(info) = ProcInfo::read(pid as i32) else {
            continue;
        };
        let tag = Tag {
            root: ProcKey::cgroup(cgroup),
            agent_id,
            flags: tag_flags::FROM_SEED | tag_flags::BY_CGROUP,
            start_ns: info.start_ns,
        };
        // BPF_NOEXIST: the kernel may have tagged it meanwhile (it wins).
        if kernel.tags.insert(pid, tag, 1).is_ok() {
            tagged += 1;
        }
    }
    if depth < MAX_DEPTH
        && let Ok(entries) = fs::read_dir(dir)
    {
        for e in entries.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                tagged += tag_members(kernel, &e.path(), cgroup, agent_id, depth + 1);
            }
        }
    }
    tagged
}

/// The cgroup2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid layout).
pub fn root() -> Option<PathBuf> {
    crate::paths::find_cgroup2()
}
