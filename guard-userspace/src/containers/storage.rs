//! containers/storage's list of containers (podman and CRI-O): the container's names and its
//! image's name, written when the container is created, before its runtime starts it. This is
//! what a hook may read while the runtime holds the container's lock (the API waits for it).

use std::fs;

use serde::Deserialize;

use super::ContainerInfo;

/// Where containers/storage keeps the list (rootful).
const LISTS: &[&str] = &[
    "/var/lib/containers/storage/overlay-containers/containers.json",
    "/run/containers/storage/overlay-containers/volatile-containers.json",
];

#[derive(Deserialize)]
struct Entry {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    /// A JSON document in a string: `{"image-name": …, "name": …, "pod-name": …}`.
    #[serde(default)]
    metadata: String,
}

#[derive(Default, Deserialize)]
struct Metadata {
    #[serde(default, rename = "image-name")]
    image: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "pod-name")]
    pod: Option<String>,
}

/// Add what containers/storage says of `info.id`; whether it knew the container.
pub fn fill(info: &mut ContainerInfo) -> bool {
    for list in LISTS {
        let Ok(text) = fs::read(list) else { continue };
        if fill_from(&text, info) {
            info.sources.push(format!("storage:{list}"));
            return true;
        }
    }
    false
}

/// Add what one list says of `info.id`; whether it holds the container.
fn fill_from(list: &[u8], info: &mut ContainerInfo) -> bool {
    let Ok(entries) = serde_json::from_slice::<Vec<Entry>>(list) else {
        return false;
    };
    let Some(e) = entries.into_iter().find(|e| e.id == info.id) else {
        return false;
    };
    let meta: Metadata = serde_json::from_str(&e.metadata).unwrap_or_default();
    if let Some(name) = meta.name.or_else(|| e.names.into_iter().next()) {
        info.name.get_or_insert(name);
    }
    if let Some(image) = meta.image.filter(|i| !i.is_empty()) {
        info.image.get_or_insert(image);
    }
    if let Some(pod) = meta.pod {
        info.pod.get_or_insert(pod);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podmans_list_names_the_container_and_its_image() {
        // As podman 4.3 writes it while the runtime runs the container's hooks.
        let list = br#"[{"id":"8a75","names":["hk-probe"],"image":"6afa","layer":"95c7",
            "metadata":"{\"image-name\":\"localhost/hk:1\",\"image-id\":\"6afa\",\"name\":\"hk-probe\",\"created-at\":1796625101}",
            "created":"2026-12-07T06:31:41Z"}]"#;
        let mut i = ContainerInfo {
            id: "8a75".into(),
            ..Default::default()
        };
        assert!(fill_from(list, &mut i));
        assert_eq!(i.name.as_deref(), Some("hk-probe"));
        assert_eq!(i.image.as_deref(), Some("localhost/hk:1"));
        let mut other = ContainerInfo {
            id: "ffff".into(),
            ..Default::default()
        };
        assert!(!fill_from(list, &mut other));
    }
}
