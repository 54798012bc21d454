//! Watching the policy file for changes.
//!
//! The parent directory is watched rather than the file, so that editors that replace the
//! file and Kubernetes ConfigMap updates (an atomic `..data` symlink swap) are both seen.
//! Bursts of events are coalesced into one reload request.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Keeps the watch alive; dropping it stops watching.
pub struct PolicyWatch {
    _watcher: RecommendedWatcher,
}

#[derive(Debug, thiserror::Error)]
#[error("watching {path} for changes: {source}")]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// Send `()` on the returned channel (coalesced, after `settle`) whenever the file at `path`
/// may have changed.
pub fn watch(
    path: &Path,
    settle: Duration,
) -> Result<(PolicyWatch, mpsc::Receiver<()>), WatchError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = path.file_name().map(|n| n.to_os_string());
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        let relevant = event.paths.iter().any(|p| {
            p.file_name().map(|n| n.to_os_string()) == name
                || p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("..data"))
        });
        if relevant && !event.kind.is_access() {
            let _ = raw_tx.send(());
        }
    })
    .map_err(|source| WatchError {
        path: dir.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError {
            path: dir.clone(),
            source,
        })?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            tokio::time::sleep(settle).await;
            while raw_rx.try_recv().is_ok() {}
            if tx.send(()).await.is_err() {
                break;
            }
        }
    });
    Ok((PolicyWatch { _watcher: watcher }, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rewrite_of_the_file_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, "a").unwrap();
        let (_w, mut rx) = watch(&file, Duration::from_millis(100)).unwrap();
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        std::fs::write(&file, "b").unwrap();
        std::fs::write(&file, "c").unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(400), rx.recv())
                .await
                .is_err(),
            "a burst of writes is one reload"
        );
    }
}
