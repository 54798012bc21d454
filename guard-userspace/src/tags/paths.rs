//! Agents installed by path (`agents[].paths`): the files and directories the policy's paths
//! and globs name, as identities (device, inode) the exec probe finds on its walk from the
//! executable up through its directories. Identities, not names, so any spelling, symlink or
//! working directory that reaches the file matches. Re-resolved at every apply and every
//! [`RECHECK`], so a version an auto-updater adds under a named directory is found at once
//! (the directory is the identity) and one a glob names within [`RECHECK`].

use std::{
    collections::BTreeMap,
    fs,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::{MapError, lpm_trie::Key as LpmKey};
use guard_common::{
    agent::{ANY_DEPTH, AgentPath, PATH_WALK_MAX, SCRIPT_PATH_LEN, ScriptPath},
    file::{FileKey, kernel_dev_of},
};

use super::AgentSpec;
use crate::{
    kernel::Kernel,
    policy::{PathPattern, PathSpec, glob_match},
};

/// Every home directory, for `~` (root's when `/etc/passwd` cannot be read).
pub fn homes() -> Vec<(u32, PathBuf)> {
    crate::policy::read_homes(&crate::paths::passwd())
        .unwrap_or_else(|_| vec![(0, PathBuf::from("/root"))])
}

/// How often the paths are resolved again.
pub const RECHECK: Duration = Duration::from_secs(2);

/// The identities of every agent's paths, the same paths as an interpreter's script may
/// spell them (as written and canonical: a directory's with its '/', a file's exactly), and
/// the paths that name nothing (yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub entries: BTreeMap<(u32, u64), AgentPath>,
    pub scripts: BTreeMap<(Vec<u8>, u32), u32>,
    pub missing: Vec<PathBuf>,
}

impl Resolved {
    fn add_script_path(&mut self, path: &Path, dir: bool, agent_id: u32) {
        let canonical = fs::canonicalize(path).ok();
        for p in std::iter::once(path).chain(canonical.as_deref()) {
            if let Some((key, bits)) = ScriptPath::new(p.as_os_str().as_bytes(), dir) {
                self.scripts
                    .entry((key.bytes.to_vec(), bits))
                    .or_insert(agent_id);
            }
        }
    }
}

/// Resolve `agents`' paths, `~` expanded for each of `homes`. The first agent to name an
/// identity keeps it.
pub fn resolve(agents: &[AgentSpec], homes: &[(u32, PathBuf)]) -> Resolved {
    let mut r = Resolved::default();
    for a in agents {
        for text in &a.paths {
            let Some(spec) = PathSpec::internal(text) else {
                continue;
            };
            for pattern in spec.expand(homes) {
                resolve_one(&pattern, a.id, &mut r);
            }
        }
    }
    r
}

fn resolve_one(pattern: &PathPattern, agent_id: u32, r: &mut Resolved) {
    let mut add = |path: &Path| match fs::metadata(path) {
        Ok(meta) => {
            // A directory: any executable below it; a file: that file.
            let max_depth = if meta.is_dir() { ANY_DEPTH } else { 0 };
            r.entries
                .entry((kernel_dev_of(meta.dev()), meta.ino()))
                .or_insert(AgentPath {
                    agent_id,
                    max_depth,
                });
            r.add_script_path(path, meta.is_dir(), agent_id);
            true
        }
        Err(_) => false,
    };
    match pattern {
        PathPattern::Exact(path) => {
            if !add(path) {
                r.missing.push(path.clone());
            }
        }
        PathPattern::Glob { dir, name } if name == "*" => {
            // Every entry, and every entry added later: the directory itself.
            if !add(dir) {
                r.missing.push(dir.join(name));
            }
        }
        PathPattern::Glob { dir, name } => {
            let found = fs::read_dir(dir)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter(|e| glob_match(name, &e.file_name().to_string_lossy()))
                .filter(|e| add(&e.path()))
                .count();
            if found == 0 {
                r.missing.push(dir.join(name));
            }
        }
        // Refused by the policy's validation: a name anywhere is what `executables` is for.
        PathPattern::AnyDir { .. } => {}
    }
}

/// Put `want` into the kernel's map: new entries, then the count that turns the walk on, then
/// stale entries out, so that no installed agent goes unrecognised during a change.
pub fn install(kernel: &mut Kernel, want: &Resolved) -> Result<(), MapError> {
    let have = installed(kernel);
    for (&(dev, ino), v) in &want.entries {
        if have.get(&(dev, ino)) != Some(v) {
            kernel.agent_paths.insert(FileKey::new(dev, ino), v, 0)?;
        }
    }
    let count = u32::try_from(want.entries.len()).unwrap_or(u32::MAX);
    super::update_recognition(kernel, |r| r.paths = count)?;
    for (dev, ino) in have.keys().filter(|k| !want.entries.contains_key(k)) {
        kernel.agent_paths.remove(&FileKey::new(*dev, *ino))?;
    }
    install_script_paths(kernel, &want.scripts)
}

/// The same, for the script paths' trie.
fn install_script_paths(
    kernel: &mut Kernel,
    want: &BTreeMap<(Vec<u8>, u32), u32>,
) -> Result<(), MapError> {
    let key = |bytes: &[u8], bits: u32| {
        let mut k = ScriptPath {
            bytes: [0; SCRIPT_PATH_LEN],
        };
        k.bytes.copy_from_slice(bytes);
        LpmKey::new(bits, k)
    };
    for ((bytes, bits), id) in want {
        kernel
            .agent_script_paths
            .insert(&key(bytes, *bits), id, 0)?;
    }
    let count = u32::try_from(want.len()).unwrap_or(u32::MAX);
    super::update_recognition(kernel, |r| r.script_paths = count)?;
    let stale: Vec<LpmKey<ScriptPath>> = kernel
        .agent_script_paths
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains_key(&(k.data().bytes.to_vec(), k.prefix_len())))
        .collect();
    for k in stale {
        kernel.agent_script_paths.remove(&k)?;
    }
    Ok(())
}

/// The kernel's map of installed agents' identities, read once.
fn installed(kernel: &Kernel) -> BTreeMap<(u32, u64), AgentPath> {
    kernel
        .agent_paths
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| ((k.dev, k.ino), v))
        .collect()
}

/// The agent installed at `exe` or at a directory above it, by the kernel's rule, from the
/// kernel's map (for processes found running at start-up).
pub fn agent_of(kernel: &Kernel, exe: &Path) -> Option<u32> {
    let entries = installed(kernel);
    if entries.is_empty() {
        return None;
    }
    let mut path = Some(exe);
    let mut depth = 0;
    while let Some(p) = path
        && depth <= PATH_WALK_MAX
    {
        if let Ok(meta) = fs::metadata(p)
            && let Some(found) = entries.get(&(kernel_dev_of(meta.dev()), meta.ino()))
            && depth <= found.max_depth
        {
            return Some(found.agent_id);
        }
        path = p.parent();
        depth += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(paths: &[String]) -> AgentSpec {
        AgentSpec {
            id: 3,
            name: "claude-code".into(),
            executables: vec![],
            scripts: vec![],
            env: vec![],
            paths: paths.to_vec(),
            cgroups: vec![],
            containers: vec![],
        }
    }

    #[test]
    fn files_directories_and_globs_resolve_to_identities() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("versions")).unwrap();
        fs::write(d.join("versions/1.0.3"), "").unwrap();
        fs::write(d.join("agent-a"), "").unwrap();
        fs::write(d.join("agentx"), "").unwrap();
        let id = |p: &str| {
            let m = fs::metadata(d.join(p)).unwrap();
            (kernel_dev_of(m.dev()), m.ino())
        };
        let r = resolve(
            &[agent(&[
                format!("{}/versions/*", d.display()),
                format!("{}/agent-*", d.display()),
                format!("{}/versions/1.0.3", d.display()),
                format!("{}/nothing-here", d.display()),
            ])],
            &[],
        );
        assert_eq!(r.entries[&id("versions")].max_depth, ANY_DEPTH);
        assert_eq!(r.entries[&id("versions/1.0.3")].max_depth, 0);
        assert_eq!(r.entries[&id("agent-a")].agent_id, 3);
        assert!(!r.entries.contains_key(&id("agentx")));
        assert_eq!(r.missing, [d.join("nothing-here")]);
    }
}
