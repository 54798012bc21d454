//! The tag map from userspace: which names make an agent, seeding from `/proc`, tagging a
//! `guard run` launcher, and listing the tagged trees.

use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet};

use aya::maps::MapError;
use guard_common::{
    ProcKey, Tag,
    agent::{self, COMM_LEN, NAME_LEN, NameKey},
    tag_flags,
};
use serde::Serialize;

use crate::kernel::Kernel;

pub mod cgroups;
pub mod deferred;
mod markers;
pub mod paths;
mod recognition;

pub use crate::agents::{AgentNames, AgentSpec, UNNAMED_AGENT, UNNAMED_AGENT_NAME};
pub use markers::{env_agent, env_marker};
pub use recognition::{RecognitionStatus, recognition, recognition_status};

/// Interpreters whose script argument names the agent.
const INTERPRETERS: &[&str] = &[
    "node",
    "nodejs",
    "bun",
    "deno",
    "python",
    "python2",
    "python3",
    "python3.6",
    "python3.7",
    "python3.8",
    "python3.9",
    "python3.10",
    "python3.11",
    "python3.12",
    "python3.13",
    "python3.14",
    "python3.15",
];

#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error("tag map: {0}")]
    Map(#[from] MapError),
    #[error(
        "the tag map is full ({0} entries): nothing more can be tagged until tagged processes \
         exit (see `guard status`; `guard daemon --tag-map-size`)"
    )]
    Full(u32),
    #[error("process {pid}: {source}")]
    Proc {
        pid: i32,
        #[source]
        source: procfs::ProcError,
    },
    #[error("reading /proc: {0}")]
    ProcList(#[source] procfs::ProcError),
    #[error("environment marker {0:?} does not fit the kernel's key")]
    Marker(String),
}

/// Install the recognition maps for `agents`: new keys first, then stale keys removed, so
/// recognition never has a gap during a reload.
pub fn install_agents(kernel: &mut Kernel, agents: &[AgentSpec]) -> Result<(), TagError> {
    let mut exes = BTreeMap::new();
    let mut scripts = BTreeMap::new();
    for a in agents {
        for e in &a.executables {
            exes.insert(NameKey::new(e.as_bytes(), COMM_LEN - 1).bytes, a.id);
        }
        for s in &a.scripts {
            scripts.insert(NameKey::new(s.as_bytes(), NAME_LEN - 1).bytes, a.id);
        }
    }
    let interpreters: BTreeMap<_, _> = INTERPRETERS
        .iter()
        .map(|i| (NameKey::new(i.as_bytes(), COMM_LEN - 1).bytes, 1u32))
        .collect();
    for (map, want) in [
        (&mut kernel.agent_exes, &exes),
        (&mut kernel.agent_scripts, &scripts),
        (&mut kernel.interpreters, &interpreters),
    ] {
        for (k, v) in want {
            map.insert(NameKey { bytes: *k }, v, 0)?;
        }
        let stale: Vec<NameKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want.contains_key(&k.bytes))
            .collect();
        for k in stale {
            map.remove(&k)?;
        }
    }
    markers::install_markers(kernel, agents)
}

/// Change the recognition settings the exec probe reads (written only when they change).
fn update_recognition(
    kernel: &mut Kernel,
    f: impl FnOnce(&mut guard_common::agent::Recognition),
) -> Result<(), MapError> {
    let old = kernel.recognition.get(&0, 0)?;
    let mut new = old;
    f(&mut new);
    if new != old {
        kernel.recognition.set(0, new, 0)?;
    }
    Ok(())
}

/// Where the agents are installed and which cgroups are theirs, resolved from the filesystem
/// (with no lock held), to be put in force with [`Installs::install`].
pub struct Installs {
    pub paths: paths::Resolved,
    cgroup_root: Option<std::path::PathBuf>,
    pub cgroups: cgroups::Resolved,
}

impl Installs {
    pub fn resolve(agents: &[AgentSpec]) -> Self {
        let cgroup_root = cgroups::root();
        Self {
            paths: paths::resolve(agents, &paths::homes()),
            cgroups: cgroup_root
                .as_deref()
                .map(|root| cgroups::resolve(agents, root))
                .unwrap_or_default(),
            cgroup_root,
        }
    }

    /// Install paths, then cgroups; returns how many processes already inside a newly found
    /// cgroup were tagged.
    pub fn install(&self, kernel: &mut Kernel) -> Result<usize, MapError> {
        paths::install(kernel, &self.paths)?;
        match &self.cgroup_root {
            Some(root) => cgroups::install(kernel, &self.cgroups, root),
            None => Ok(0),
        }
    }
}

/// What userspace knows of a live process.
#[derive(Clone, Debug, Serialize)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub start_ns: u64,
    pub comm: String,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    pub uid: Option<u32>,
}

impl ProcInfo {
    pub fn read(pid: i32) -> Result<Self, TagError> {
        let err = |source| TagError::Proc { pid, source };
        let p = procfs::process::Process::new(pid).map_err(err)?;
        let stat = p.stat().map_err(err)?;
        Ok(Self {
            pid: pid as u32,
            ppid: stat.ppid as u32,
            start_ns: stat.starttime * guard_common::NS_PER_TICK,
            comm: stat.comm,
            exe: p.exe().ok().map(|e| e.display().to_string()),
            argv: {
                let mut argv = p.cmdline().unwrap_or_default();
                crate::secrets::redact_argv(&mut argv, crate::secrets::key());
                argv
            },
            uid: p.uid().ok(),
        })
    }

    pub fn key(&self) -> ProcKey {
        ProcKey::new(self.pid, self.start_ns)
    }

    /// The agent an environment marker of this process names (its environment as exec'd).
    pub fn recognise_env(&self, agents: &[AgentSpec]) -> Option<u32> {
        env_marker(self.pid, agents).map(|(id, _)| id)
    }

    /// The agent this process runs, by the same rules as the kernel's exec probe, and the
    /// tag flag that says how ([`tag_flags::BY_SCRIPT`], [`tag_flags::BY_ENV`], or 0 for
    /// the executable).
    pub fn recognise(&self, agents: &[AgentSpec]) -> Option<(u32, u32)> {
        self.recognise_program(agents)
            .or_else(|| self.recognise_env(agents).map(|id| (id, tag_flags::BY_ENV)))
    }

    fn recognise_program(&self, agents: &[AgentSpec]) -> Option<(u32, u32)> {
        let comm = NameKey::new(self.comm.as_bytes(), COMM_LEN - 1);
        let comm = agent::trim_nul(&comm.bytes);
        for a in agents {
            if a.executables
                .iter()
                .any(|e| agent::trim_nul(&NameKey::new(e.as_bytes(), COMM_LEN - 1).bytes) == comm)
            {
                return Some((a.id, 0));
            }
        }
        if !agent::is_interpreter(comm) {
            return None;
        }
        let script = agent::script_arg(self.argv.iter().skip(1).map(|a| a.as_bytes()))?;
        let mut found = None;
        agent::script_candidates(script, |cand| {
            let cand = NameKey::new(cand, NAME_LEN - 1);
            found = agents
                .iter()
                .find(|a| {
                    a.scripts
                        .iter()
                        .any(|s| NameKey::new(s.as_bytes(), NAME_LEN - 1) == cand)
                })
                .map(|a| a.id);
            found.is_some()
        });
        found.map(|id| (id, tag_flags::BY_SCRIPT))
    }
}

/// Outcome of seeding the tag map from `/proc`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SeedReport {
    pub roots: usize,
    pub tagged: usize,
    pub stale_removed: usize,
    pub passes: usize,
}

/// Tag every running agent and all its descendants, then rescan until a pass finds nothing
/// new: a process that forked before its parent was tagged shows up as a child on the next
/// pass, and every fork after its parent was tagged is tagged by the kernel.
pub fn seed(kernel: &mut Kernel, agents: &[AgentSpec]) -> Result<SeedReport, TagError> {
    let mut report = SeedReport::default();
    // Drop entries whose process is gone or whose pid was reused.
    let existing: Vec<(u32, Tag)> = kernel
        .tags
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| *k != guard_common::PROBE_TGID)
        .collect();
    for (tgid, tag) in existing {
        let live = ProcInfo::read(tgid as i32).ok();
        if live.is_none_or(|p| p.key().start_ns != tag.start_ns) {
            let _ = kernel.tags.remove(&tgid);
            report.stale_removed += 1;
        }
    }
    let mut roots_seen = HashSet::new();
    loop {
        report.passes += 1;
        let procs = list_procs()?;
        let by_pid: StdHashMap<u32, &ProcInfo> = procs.iter().map(|p| (p.pid, p)).collect();
        let mut new = 0;
        // Parents before children: sort by start time.
        let mut order: Vec<&ProcInfo> = procs.iter().collect();
        order.sort_by_key(|p| (p.start_ns, p.pid));
        for p in order {
            if p.pid == std::process::id() {
                continue;
            }
            if kernel.tags.get(&p.pid, 0).is_ok() {
                continue;
            }
            let parent_tag = by_pid
                .get(&p.ppid)
                .and_then(|_| kernel.tags.get(&p.ppid, 0).ok());
            let tag = if let Some(pt) = parent_tag {
                Tag {
                    root: pt.root,
                    agent_id: pt.agent_id,
                    flags: pt.flags | tag_flags::INHERITED | tag_flags::FROM_SEED,
                    start_ns: p.key().start_ns,
                }
            } else if let Some((agent_id, by)) = p.recognise(agents).or_else(|| {
                let exe = p.exe.as_deref()?;
                paths::agent_of(kernel, std::path::Path::new(exe))
                    .map(|id| (id, tag_flags::BY_PATH))
            }) {
                roots_seen.insert(p.pid);
                Tag {
                    root: p.key(),
                    agent_id,
                    flags: tag_flags::FROM_SEED | by,
                    start_ns: p.key().start_ns,
                }
            } else {
                continue;
            };
            // BPF_NOEXIST: the kernel may have tagged it meanwhile (it wins).
            if kernel.tags.insert(p.pid, tag, 1).is_ok() {
                new += 1;
            }
        }
        report.tagged += new;
        if new == 0 && report.passes >= 2 {
            break;
        }
        if report.passes >= 64 {
            break;
        }
    }
    report.roots = roots_seen.len();
    Ok(report)
}

/// Every live process (skipping ones that exit while being read).
pub fn list_procs() -> Result<Vec<ProcInfo>, TagError> {
    let all = procfs::process::all_processes().map_err(TagError::ProcList)?;
    Ok(all
        .filter_map(Result::ok)
        .filter_map(|p| ProcInfo::read(p.pid).ok())
        .collect())
}

/// Tag `pid` (a `guard run` launcher) as a new agent root, unless it is already tagged:
/// a tagged process keeps its original root. Returns the tag in force.
pub fn tag_root(
    kernel: &mut Kernel,
    pid: u32,
    expected_start_ns: u64,
    agent_id: u32,
) -> Result<Tag, TagError> {
    if let Ok(existing) = kernel.tags.get(&pid, 0) {
        return Ok(existing);
    }
    let key = ProcKey::new(pid, expected_start_ns);
    let tag = Tag {
        root: key,
        agent_id,
        // Until it execs the command, guard run sets up the tree with its own capabilities.
        flags: tag_flags::FROM_RUN | tag_flags::SETUP,
        start_ns: key.start_ns,
    };
    match kernel.tags.insert(pid, tag, 1) {
        Ok(()) => Ok(tag),
        // Lost a race with the kernel (e.g. an exec recognised it): keep what is there.
        Err(e) => kernel.tags.get(&pid, 0).map_err(|_| match e {
            MapError::SyscallError(ref s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
                TagError::Full(kernel.tag_map.size)
            }
            e => TagError::Map(e),
        }),
    }
}

/// A tagged process with what `/proc` says about it.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct TaggedProc {
    pub pid: u32,
    pub ppid: u32,
    pub start_ns: u64,
    pub agent: String,
    pub root_pid: u32,
    pub root_start_ns: u64,
    pub flags: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    /// For a root: why it was recognised (`executable`, `script`, `env marker NAME=…`,
    /// `guard run`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub recognised: String,
    /// Its tree is frozen (`guard freeze`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

/// Every tagged process, with `/proc` details where the process is still readable.
pub fn list(kernel: &Kernel, names: &AgentNames, agents: &[AgentSpec]) -> Vec<TaggedProc> {
    let mut out: Vec<TaggedProc> = kernel
        .tags
        .iter()
        .filter_map(Result::ok)
        .filter(|(tgid, _)| *tgid != guard_common::PROBE_TGID)
        .map(|(tgid, tag)| {
            let info = ProcInfo::read(tgid as i32).ok();
            TaggedProc {
                pid: tgid,
                ppid: info.as_ref().map_or(0, |i| i.ppid),
                start_ns: tag.start_ns,
                agent: names.name(tag.agent_id),
                root_pid: tag.root.tgid,
                root_start_ns: tag.root.start_ns,
                flags: tag.flags,
                comm: info.as_ref().map(|i| i.comm.clone()).unwrap_or_default(),
                exe: info.as_ref().and_then(|i| i.exe.clone()),
                argv: info.map(|i| i.argv).unwrap_or_default(),
                recognised: if (tag.root.tgid == tgid || tag.flags & tag_flags::BY_CGROUP != 0)
                    && tag.flags & tag_flags::INHERITED == 0
                {
                    recognition(tgid, tag.flags, agents)
                } else {
                    String::new()
                },
                held: kernel.held.get(&tag.root, 0).is_ok(),
            }
        })
        .collect();
    out.sort_by_key(|p| (p.root_start_ns, p.root_pid, p.start_ns, p.pid));
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(super) fn agents() -> Vec<AgentSpec> {
        vec![
            AgentSpec {
                id: 1,
                name: "claude-code".into(),
                executables: vec!["claude".into()],
                scripts: vec!["claude".into(), "claude-code".into()],
                env: vec![],
                paths: vec![],
                cgroups: vec![],
                containers: vec![],
            },
            AgentSpec {
                id: 2,
                name: "aider".into(),
                executables: vec!["aider".into()],
                scripts: vec!["aider".into()],
                env: vec![],
                paths: vec![],
                cgroups: vec![],
                containers: vec![],
            },
        ]
    }

    fn proc(comm: &str, argv: &[&str]) -> ProcInfo {
        ProcInfo {
            pid: 10,
            ppid: 1,
            start_ns: 0,
            comm: comm.into(),
            exe: None,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            uid: None,
        }
    }

    #[test]
    fn recognises_executables_and_scripts() {
        let a = agents();
        assert_eq!(proc("claude", &["claude"]).recognise(&a), Some((1, 0)));
        let node = [
            "node",
            "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js",
        ];
        let script = tag_flags::BY_SCRIPT;
        assert_eq!(proc("node", &node).recognise(&a), Some((1, script)));
        assert_eq!(
            proc("python3", &["python3", "-m", "aider"]).recognise(&a),
            Some((2, script))
        );
        assert_eq!(
            proc("python3.11", &["python3.11", "/opt/x/aider.py"]).recognise(&a),
            Some((2, script))
        );
        assert_eq!(
            proc("node", &["node", "/srv/app/server.js"]).recognise(&a),
            None
        );
        assert_eq!(
            proc("python3", &["python3", "-c", "aider"]).recognise(&a),
            None
        );
        assert_eq!(proc("bash", &["bash", "claude"]).recognise(&a), None);
    }
}
