//! The OCI bundle's `config.json`: written by the runtime before the container's first
//! process runs, with the Kubernetes names and the image as annotations (CRI-O: the
//! `io.kubernetes.*` labels themselves; containerd's CRI: `io.kubernetes.cri.*`).

use std::{collections::BTreeMap, fs, path::PathBuf};

use super::ContainerInfo;

/// Where runtimes keep bundles: `{}` is the container id.
const BUNDLES: &[&str] = &[
    // CRI-O and podman (rootful).
    "/run/containers/storage/overlay-containers/{}/userdata/config.json",
    "/var/lib/containers/storage/overlay-containers/{}/userdata/config.json",
];

/// containerd's task directories, one per containerd namespace (`k8s.io`, `moby`, …).
const CONTAINERD_TASKS: &str = "/run/containerd/io.containerd.runtime.v2.task";

/// Annotation → field, for each runtime's spelling.
const FIELDS: &[(&str, Field)] = &[
    ("io.kubernetes.pod.name", Field::Pod),
    ("io.kubernetes.pod.namespace", Field::Namespace),
    ("io.kubernetes.container.name", Field::Container),
    ("io.kubernetes.cri.sandbox-name", Field::Pod),
    ("io.kubernetes.cri.sandbox-namespace", Field::Namespace),
    ("io.kubernetes.cri.container-name", Field::Container),
    ("io.kubernetes.cri.image-name", Field::Image),
    ("io.kubernetes.cri-o.ImageName", Field::Image),
];

#[derive(Clone, Copy)]
enum Field {
    Pod,
    Namespace,
    Container,
    Image,
}

/// The bundle's `config.json` of container `id`, if a runtime here keeps one.
fn config_of(id: &str) -> Option<PathBuf> {
    let known = BUNDLES.iter().map(|b| PathBuf::from(b.replace("{}", id)));
    let containerd = fs::read_dir(CONTAINERD_TASKS)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|ns| ns.path().join(id).join("config.json"));
    known.chain(containerd).find(|p| p.is_file())
}

/// Add what the bundle of `info.id` says.
pub fn fill(info: &mut ContainerInfo) {
    let Some(path) = config_of(&info.id) else {
        return;
    };
    let Ok(text) = fs::read(&path) else { return };
    // A bundle without these annotations (podman's) says nothing the API will not.
    if fill_from(&text, info) {
        info.sources.push(format!("bundle:{}", path.display()));
    }
}

/// Add what a `config.json`'s annotations say; whether they said anything.
fn fill_from(config: &[u8], info: &mut ContainerInfo) -> bool {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        annotations: BTreeMap<String, String>,
    }
    let Ok(config) = serde_json::from_slice::<Config>(config) else {
        return false;
    };
    let mut found = false;
    for (key, field) in FIELDS {
        let Some(v) = config.annotations.get(*key).filter(|v| !v.is_empty()) else {
            continue;
        };
        let slot = match field {
            Field::Pod => &mut info.pod,
            Field::Namespace => &mut info.namespace,
            Field::Container => &mut info.container,
            Field::Image => &mut info.image,
        };
        slot.get_or_insert_with(|| v.clone());
        found = true;
    }
    found
}

/// The bundle locations present on this host, for status.
pub fn roots_present() -> Vec<String> {
    let roots = BUNDLES
        .iter()
        .map(|b| b.split("/{}").next().unwrap_or(b))
        .chain([CONTAINERD_TASKS]);
    roots
        .filter(|r| std::path::Path::new(r).is_dir())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_and_cri_o_annotations_name_the_pod() {
        let containerd = br#"{"ociVersion":"1.1.0","annotations":{
            "io.kubernetes.cri.container-type":"container",
            "io.kubernetes.cri.sandbox-name":"agent-7f9c",
            "io.kubernetes.cri.sandbox-namespace":"ai-agents",
            "io.kubernetes.cri.container-name":"worker",
            "io.kubernetes.cri.image-name":"registry.internal/agents/claude:2"}}"#;
        let mut i = ContainerInfo::default();
        assert!(fill_from(containerd, &mut i));
        assert_eq!(i.pod.as_deref(), Some("agent-7f9c"));
        assert_eq!(i.namespace.as_deref(), Some("ai-agents"));
        assert_eq!(i.container.as_deref(), Some("worker"));
        assert_eq!(
            i.image.as_deref(),
            Some("registry.internal/agents/claude:2")
        );

        let crio =
            br#"{"annotations":{"io.kubernetes.pod.name":"p","io.kubernetes.pod.namespace":"n",
            "io.kubernetes.container.name":"c","io.kubernetes.cri-o.ImageName":"img:1"}}"#;
        let mut i = ContainerInfo::default();
        assert!(fill_from(crio, &mut i));
        assert_eq!(
            (
                i.pod.as_deref(),
                i.namespace.as_deref(),
                i.container.as_deref(),
                i.image.as_deref()
            ),
            (Some("p"), Some("n"), Some("c"), Some("img:1"))
        );

        let podman = br#"{"annotations":{"io.container.manager":"libpod"}}"#;
        let mut i = ContainerInfo::default();
        assert!(!fill_from(podman, &mut i), "podman's bundle names nothing");
    }
}
