//! Containers as their runtime knows them: the id in a process's cgroup path, and, where the
//! runtime says, its image, name, labels and Kubernetes pod, namespace and container.
//!
//! Three sources, read in the host's view (see `hostview`):
//! - the OCI bundle's `config.json` the runtime wrote before the container's first process
//!   ran (CRI-O and podman under `…/overlay-containers/ID/userdata`, containerd under
//!   `io.containerd.runtime.v2.task/NAMESPACE/ID`): the Kubernetes names and the image, as
//!   annotations, with no API and no start race;
//! - containers/storage's list (podman, CRI-O): the name and the image's name, also written
//!   before the container starts;
//! - the Docker-compatible API of docker or podman (`podman system service`): names, image
//!   and labels, once the runtime has started the container (podman's API waits for the
//!   container's lock, which the runtime holds while its hooks run).
//!
//! What a lookup finds is cached by id (a container's metadata does not change); a lookup
//! that found nothing is retried after [`RETRY`], since an API may answer later than the
//! container's first process runs.

mod api;
mod bundle;
mod storage;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::policy::{ContainerSelector, glob_match};

/// How long a lookup that found nothing stands before the sources are asked again.
pub const RETRY: Duration = Duration::from_secs(2);
/// How long what was known of a container that no longer runs is kept: the events of a
/// short-lived container (`podman run --rm`) may be written after it is gone, when no source
/// knows it any more.
const GONE_KEPT: Duration = Duration::from_secs(60);

/// The Docker-compatible API sockets asked, in order (colon-separated; `GUARD_CONTAINER_API`).
pub const ENV_API: &str = "GUARD_CONTAINER_API";
const DEFAULT_API: &str = "/run/podman/podman.sock:/var/run/docker.sock";

/// What is known of one container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerInfo {
    pub id: String,
    /// `docker`, `podman`, `containerd` or `cri-o`, from the cgroup path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Kubernetes pod, namespace and container name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Where the metadata came from (`bundle`, `api:SOCKET`); empty: ids only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
}

impl ContainerInfo {
    /// Fill the Kubernetes names from the labels CRI runtimes set, where still unknown.
    fn kubernetes_from_labels(&mut self) {
        let get = |k: &str| self.labels.get(k).cloned();
        self.pod = self.pod.take().or_else(|| get("io.kubernetes.pod.name"));
        self.namespace = self
            .namespace
            .take()
            .or_else(|| get("io.kubernetes.pod.namespace"));
        self.container = self
            .container
            .take()
            .or_else(|| get("io.kubernetes.container.name"));
    }
}

/// Whether `info` is what `sel` selects: every field given matches.
pub fn selects(sel: &ContainerSelector, info: &ContainerInfo) -> bool {
    let glob = |pattern: &Option<String>, value: Option<&String>| match pattern {
        None => true,
        Some(p) => value.is_some_and(|v| glob_match(p, v)),
    };
    let name = |pattern: &Option<String>| {
        glob(pattern, info.name.as_ref()) || glob(pattern, info.container.as_ref())
    };
    glob(&sel.image, info.image.as_ref())
        && name(&sel.name)
        && glob(&sel.namespace, info.namespace.as_ref())
        && glob(&sel.pod, info.pod.as_ref())
        && sel
            .labels
            .iter()
            .all(|(k, p)| info.labels.get(k).is_some_and(|v| glob_match(p, v)))
}

/// The runtime that names its cgroups as `path` does.
pub fn runtime_of(path: &str) -> Option<&'static str> {
    [
        ("libpod-", "podman"),
        ("docker", "docker"),
        ("cri-containerd", "containerd"),
        ("crio-", "cri-o"),
    ]
    .into_iter()
    .find_map(|(needle, rt)| path.contains(needle).then_some(rt))
}

struct Cached {
    info: ContainerInfo,
    at: Instant,
    /// When its cgroup was first seen gone.
    gone: Option<Instant>,
}

fn cache() -> &'static Mutex<HashMap<String, Cached>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Cached>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

fn starting() -> &'static Mutex<HashSet<String>> {
    static STARTING: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    STARTING.get_or_init(Mutex::default)
}

/// While the returned guard lives, lookups of container `id` do not ask the API: its runtime
/// is running our hook with the container locked, and the API would wait for that lock.
pub fn starting_up(id: &str) -> impl Drop + use<> {
    struct Starting(String);
    impl Drop for Starting {
        fn drop(&mut self) {
            starting().lock().expect("starting set").remove(&self.0);
        }
    }
    starting()
        .lock()
        .expect("starting set")
        .insert(id.to_owned());
    Starting(id.to_owned())
}

/// Whether container `id`'s runtime is running our hook (see [`starting_up`]).
pub fn is_starting(id: &str) -> bool {
    starting().lock().expect("starting set").contains(id)
}

/// Where the API sockets are.
fn api_sockets() -> Vec<PathBuf> {
    let list = std::env::var(ENV_API).unwrap_or_else(|_| DEFAULT_API.into());
    list.split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// What the runtime says of container `id` (in cgroup `path`), from the cache when known.
pub fn lookup(id: &str, path: &str) -> ContainerInfo {
    let known = cache()
        .lock()
        .expect("container cache")
        .get(id)
        .map(|c| (c.info.clone(), c.at, c.gone));
    let mut info = match known {
        Some((info, at, gone))
            if gone.is_some()
                || info.sources.iter().any(|s| s.starts_with("api:"))
                || at.elapsed() < RETRY =>
        {
            return info;
        }
        // Asked again: what was found before stays (a container's metadata does not change;
        // a source may since have forgotten it).
        Some((info, ..)) => info,
        None => ContainerInfo {
            id: id.to_owned(),
            runtime: runtime_of(path).map(str::to_owned),
            ..Default::default()
        },
    };
    bundle::fill(&mut info);
    storage::fill(&mut info);
    let starting = is_starting(id);
    for socket in api_sockets().iter().filter(|_| !starting) {
        if api::fill(socket, &mut info) {
            break;
        }
    }
    info.kubernetes_from_labels();
    info.sources.sort();
    info.sources.dedup();
    cache().lock().expect("container cache").insert(
        id.to_owned(),
        Cached {
            info: info.clone(),
            at: Instant::now(),
            gone: None,
        },
    );
    info
}

/// Containers not in `live` (ids) are gone: what was known of them is kept for
/// [`GONE_KEPT`], for their late events, then forgotten, so that the cache holds what runs.
pub fn retain(live: &HashSet<String>) {
    let now = Instant::now();
    cache().lock().expect("container cache").retain(|id, c| {
        if live.contains(id) {
            c.gone = None;
            return true;
        }
        let gone = *c.gone.get_or_insert(now);
        now.duration_since(gone) < GONE_KEPT
    });
}

/// For `guard status`: where container metadata comes from on this host.
pub fn sources_status() -> String {
    let apis: Vec<String> = api_sockets()
        .iter()
        .map(|s| {
            let state = if api::answers(s) {
                "answers"
            } else {
                "not reachable"
            };
            format!("{} ({state})", s.display())
        })
        .collect();
    let bundles = bundle::roots_present();
    let mut out = format!(
        "OCI bundles: {}",
        if bundles.is_empty() {
            "none found".into()
        } else {
            bundles.join(", ")
        }
    );
    out.push_str(&format!("; API: {}", apis.join(", ")));
    if bundles.is_empty() && !apis.iter().any(|a| a.ends_with("(answers)")) {
        out.push_str("; containers are known by id only (names, images and labels unknown)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ContainerInfo {
        ContainerInfo {
            id: "ab".into(),
            name: Some("claude-1".into()),
            image: Some("localhost/agents/claude:2".into()),
            labels: [("team".to_owned(), "ml".to_owned())].into(),
            pod: Some("agent-7".into()),
            namespace: Some("ai".into()),
            container: Some("worker".into()),
            ..Default::default()
        }
    }

    #[test]
    fn what_was_known_outlives_the_container_for_its_late_events() {
        // Known from a source that has since forgotten it (a `--rm` container removed).
        let id = "gone-0123456789abcdef";
        let known = ContainerInfo {
            id: id.into(),
            ..info()
        };
        cache().lock().unwrap().insert(
            id.into(),
            Cached {
                info: known.clone(),
                at: Instant::now() - RETRY * 2,
                gone: None,
            },
        );
        // Asked again while it runs: no source knows it now, what was found stays.
        assert_eq!(
            lookup(id, "/machine.slice/libpod-x.scope").image,
            known.image
        );
        // Gone: kept, and answered without asking anyone.
        retain(&HashSet::new());
        assert_eq!(lookup(id, "").labels, known.labels);
        // Long gone: forgotten.
        cache().lock().unwrap().get_mut(id).unwrap().gone = Some(Instant::now() - GONE_KEPT);
        retain(&HashSet::new());
        assert!(!cache().lock().unwrap().contains_key(id));
    }

    #[test]
    fn every_field_given_must_match() {
        let sel = |yaml: &str| serde_yaml_ng::from_str::<ContainerSelector>(yaml).unwrap();
        assert!(selects(&sel("{ image: 'localhost/agents/*' }"), &info()));
        assert!(selects(&sel("{ name: worker, namespace: ai }"), &info()));
        assert!(selects(
            &sel("{ name: 'claude-*', labels: { team: m* } }"),
            &info()
        ));
        assert!(!selects(
            &sel("{ image: 'localhost/agents/*', pod: other }"),
            &info()
        ));
        assert!(!selects(
            &sel("{ labels: { team: ml, tier: '*' } }"),
            &info()
        ));
        assert!(!selects(
            &sel("{ namespace: ai }"),
            &ContainerInfo::default()
        ));
        assert!(serde_yaml_ng::from_str::<ContainerSelector>("{ imag: x }").is_err());
    }

    #[test]
    fn kubernetes_names_come_from_cri_labels() {
        let mut i = ContainerInfo::default();
        i.labels.insert("io.kubernetes.pod.name".into(), "p".into());
        i.labels
            .insert("io.kubernetes.pod.namespace".into(), "n".into());
        i.labels
            .insert("io.kubernetes.container.name".into(), "c".into());
        i.kubernetes_from_labels();
        assert_eq!(
            (
                i.pod.as_deref(),
                i.namespace.as_deref(),
                i.container.as_deref()
            ),
            (Some("p"), Some("n"), Some("c"))
        );
    }
}
