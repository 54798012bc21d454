//! The start-up steps before serving: preflight (refuse early, with the reason), the daemon's
//! state after loading, seeding from `/proc`, the event pipeline, file protection and the pin
//! keeper. `run` in the parent module puts them in order.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use tracing::{error, info, warn};

use super::{DaemonConfig, DaemonError, Shared, State, absolute, serve::View};
use crate::{
    api::{self, DaemonStatus, Request},
    events::{
        EventLog, Responder,
        pipeline::{self, EventSink, Pipeline},
    },
    kernel::Kernel,
    metrics::{self, DaemonView, Metrics},
    net,
    policy::{CompiledPolicy, Policy},
    probe::{self, Probe},
    proctree::{ProcTree, Procfs, TreeConfig},
    tags::{self, AgentNames},
};

/// What the preflight step found: the policy to apply and what the kernel offers.
pub(super) struct Preflight {
    pub compiled: CompiledPolicy,
    pub probe: Probe,
}

/// Root, the policy, no other daemon on the socket, bpffs, and every kernel feature guard
/// needs: each refused with the reason before anything is loaded.
pub(super) fn preflight(cfg: &DaemonConfig) -> Result<Preflight, DaemonError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    if let Err(e) = crate::selfprot::harden_process() {
        warn!(error = %e, "cannot make the daemon undumpable");
    }
    let policy = match &cfg.policy {
        Some(path) => Policy::load(path)?,
        None => Policy::embedded_default(),
    };
    let compiled = policy.compile();
    let origin = cfg
        .policy
        .as_ref()
        .map_or("embedded default".to_string(), |p| p.display().to_string());
    info!(policy = %compiled.name, %origin, "policy parsed");

    if let Ok(status) = api::call::<DaemonStatus>(&cfg.paths.socket, &Request::Status) {
        return Err(DaemonError::AlreadyRunning(
            status.daemon_pid,
            cfg.paths.socket.display().to_string(),
        ));
    }
    install_fingerprint_key(&cfg.paths.event_log)?;
    let bpffs_root = cfg
        .paths
        .pin_dir
        .parent()
        .map_or_else(|| PathBuf::from(crate::paths::BPFFS_ROOT), PathBuf::from);
    if probe::ensure_bpffs(&bpffs_root)? {
        info!(path = %bpffs_root.display(), "mounted bpffs");
    }
    let probe = probe::probe(&bpffs_root, true);
    let missing: Vec<String> = probe
        .missing_required()
        .iter()
        .map(|f| format!("{} ({})", f.name, f.detail))
        .collect();
    if !missing.is_empty() {
        return Err(DaemonError::MissingFeatures(missing.join(", ")));
    }
    info!(tier = ?probe.tier, kernel = %probe.kernel_release, "kernel probed");
    for dir in crate::pins::other_instances(&cfg.paths.pin_dir) {
        warn!(pins = %dir.display(), "another guard instance is loaded: its programs run too");
    }
    Ok(Preflight { compiled, probe })
}

/// The daemon's state after the load step, before any policy is applied (generation 0): what
/// the load step attached, less what it handed to the subsystems.
pub(super) fn new_state(
    cfg: &DaemonConfig,
    probe: Probe,
    kernel: Kernel,
    net_attached: net::Attached,
    guard_self: Option<crate::selfprot::SelfMaps>,
    self_attached: crate::selfprot::SelfAttached,
) -> Shared {
    // In the host's view, a policy and binary in the container have no host path to name.
    let here = !cfg.own_files_outside;
    let internal = crate::selfprot::internal_rules(&crate::selfprot::OwnFiles {
        policy: cfg.policy.as_ref().filter(|_| here).map(|p| absolute(p)),
        event_log: absolute(&cfg.paths.event_log),
        binary: std::env::current_exe().ok().filter(|_| here),
        pin_dir: absolute(&cfg.paths.pin_dir),
        ui_tokens: cfg.ui.then(|| absolute(&ui_token_dir(cfg))),
    });
    Arc::new(Mutex::new(State {
        kernel,
        net_attached,
        guard_self,
        self_attached,
        agents: Vec::new(),
        names: AgentNames::new(&[]),
        paths_missing: Vec::new(),
        agent_cgroups: Default::default(),
        policy_name: String::new(),
        generation: 0,
        probe,
        enforcing: true,
        rejected: None,
        drop_caps: Vec::new(),
        unix_masks: Vec::new(),
        files: None,
        builtin: Vec::new(),
        net: None,
        internal,
        path_rules: Vec::new(),
        files_seq: 0,
        apply_seq: 0,
        apply_turn: Arc::new(tokio::sync::Mutex::new(())),
        sink: None,
        integrity: cfg
            .policy
            .as_ref()
            .map(|p| super::integrity::Integrity::new(&absolute(p))),
        admin_apply: None,
        approvers: Default::default(),
        page: None,
        ui_viewers: None,
        view: cfg.view.clone(),
    }))
}

/// Before the first apply: refuse a policy file that tagged processes changed while an
/// earlier daemon ran (the kernel's pinned count is ahead of what an administrator answered),
/// unless the start says it was reviewed.
pub(super) fn check_policy_file(cfg: &DaemonConfig, state: &Shared) -> Result<(), DaemonError> {
    let mut guard = state.lock().expect("state lock");
    let st = &mut *guard;
    let Some(integrity) = st.integrity.as_mut() else {
        return Ok(());
    };
    let seen = st
        .guard_self
        .as_ref()
        .map_or(0, |s| s.policy_changes_seen());
    // Only the pinned count speaks for changes made before this start.
    let Some(why) = integrity.check(&cfg.paths.pin_dir, seen, true) else {
        return Ok(());
    };
    if !cfg.policy_reviewed {
        return Err(DaemonError::PolicyUntrusted(format!(
            "{}: {why}. The pinned programs keep enforcing the policy in force before. Review \
             the file, then start with --policy-reviewed",
            cfg.policy.as_deref().unwrap_or(Path::new("-")).display()
        )));
    }
    warn!(%why, "starting on a policy file changed by tagged processes: --policy-reviewed");
    integrity.acknowledge(&cfg.paths.pin_dir, st.guard_self.as_mut());
    Ok(())
}

/// Tag the agents already running (from `/proc`, to a fixpoint). After the apply step, so
/// that the agents are known; before serving, so that `guard run` never races it.
pub(super) fn seed(state: &Shared) -> Result<(), DaemonError> {
    let mut st = state.lock().expect("state lock");
    let st = &mut *st;
    let report = tags::seed(&mut st.kernel, &st.agents)?;
    info!(
        roots = report.roots,
        tagged = report.tagged,
        stale_removed = report.stale_removed,
        passes = report.passes,
        "seeded tags from /proc"
    );
    Ok(())
}

/// The key that fingerprints secrets in events, beside the event log (created the first
/// time): set before anything reads a command line, so every redaction uses it.
fn install_fingerprint_key(event_log: &Path) -> Result<(), DaemonError> {
    let path = crate::secrets::Key::path_for(event_log);
    let err = |reason: String| DaemonError::FingerprintKey {
        path: path.display().to_string(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let key = crate::secrets::Key::load_or_create(&path).map_err(|e| err(format!("{e:#}")))?;
    crate::secrets::install_key(key);
    Ok(())
}

/// The event pipeline: the kernel's records and every decision made in userspace go through
/// it to the one event log.
pub(super) async fn start_pipeline(
    cfg: &DaemonConfig,
    state: &Shared,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    secrets: crate::events::secret::SecretReads,
    net: &net::NetHandle,
) -> Result<EventSink, DaemonError> {
    let log = EventLog::open(&cfg.paths.event_log, cfg.log, cfg.log_stdout).map_err(|source| {
        DaemonError::EventLog {
            path: cfg.paths.event_log.display().to_string(),
            source,
        }
    })?;
    let view: Arc<dyn DaemonView> = Arc::new(View(state.clone()));
    let metrics = Arc::new(Metrics::new(view.clone()));
    if let Some(addr) = cfg.metrics_addr {
        let bound = metrics::serve(addr, metrics.clone()).await?;
        info!(addr = %bound, "serving metrics");
    }
    let tree = ProcTree::new(TreeConfig::default(), Box::new(Procfs));
    let sink = pipeline::spawn(
        ring,
        Pipeline {
            log,
            tree,
            secrets,
            view,
            metrics,
            node: pipeline::hostname(),
            responders: vec![
                Arc::new(net.clone()) as Arc<dyn Responder>,
                Arc::new(crate::tagmap::ChildKiller),
                Arc::new(crate::tags::deferred::DeferredNotice),
            ],
            net: Arc::new(net.clone()),
            lifecycle_lines: cfg.lifecycle_events,
        },
    );
    state.lock().expect("state lock").sink = Some(sink.clone());
    Ok(sink)
}

/// File protection for the path rules in force and guard's own files.
pub(super) fn start_files(
    cfg: &DaemonConfig,
    state: &Shared,
    kernel_files: Option<crate::files::Loaded>,
    sink: EventSink,
    responders: (crate::respond::Holder, crate::requests::Requests),
) -> Result<(), DaemonError> {
    let mut st = state.lock().expect("state lock");
    let rules: Vec<_> = st.path_rules.iter().chain(&st.internal).cloned().collect();
    let files = crate::files::FileGuard::start(
        crate::files::FileConfig {
            pin_dir: cfg.paths.pin_dir.clone(),
            passwd: crate::paths::passwd(),
        },
        kernel_files,
        &rules,
        sink,
        responders,
    )?;
    st.files = Some(Arc::new(files));
    Ok(())
}

/// Pin every pin again when it is removed, and log each time it happens.
pub(super) fn keep_pins(cfg: &DaemonConfig, state: &Shared) {
    let sink = state.lock().expect("state lock").sink.clone();
    let keeper = crate::pins::PinKeeper::start(&cfg.paths.pin_dir, move |r| {
        if let Some(sink) = &sink {
            sink.submit_blocking(crate::selfprot::pin_restored(&r));
        }
    });
    match keeper {
        Ok(k) => {
            info!(
                held = k.held(),
                "holding every pin; removed pins are pinned again"
            );
            state.lock().expect("state lock").kernel.keeper = Some(k);
        }
        Err(e) => error!(error = %e, "cannot keep the pins: a removed pin stays removed"),
    }
}

/// Give the allocator's free heap back to the kernel, so that the resident size is what the
/// daemon uses: after start-up, which parsed the kernel's BTF and the eBPF object (tens of
/// MiB, all freed by then), and from time to time after bursts of events.
pub(super) fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory of the allocator to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Where the review page's tokens are written: beside the API socket.
pub(super) fn ui_token_dir(cfg: &DaemonConfig) -> PathBuf {
    cfg.paths
        .socket
        .parent()
        .unwrap_or(std::path::Path::new("/run/guard"))
        .join("ui")
}

/// The review page, when `--ui` or `--ui-addr` asks for it: new tokens, the page's store,
/// then the listener. The approver token is readable by the first group of
/// `spec.approvers`, the viewer token by `--ui-viewers`; by root alone where none is named.
pub(super) async fn start_ui(
    cfg: &DaemonConfig,
    state: &Shared,
    net: &net::NetHandle,
) -> Result<(), DaemonError> {
    if !cfg.ui {
        return Ok(());
    }
    let dir = ui_token_dir(cfg);
    let fail = |why: String| DaemonError::UiTokens {
        dir: dir.display().to_string(),
        why,
    };
    let gid = |name: &str| -> Result<u32, DaemonError> {
        if let Ok(id) = name.parse::<u32>() {
            return Ok(id);
        }
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(g.gid.as_raw()),
            _ => Err(fail(format!("no group named {name:?}"))),
        }
    };
    let viewers = cfg.ui_viewers.as_deref().map(gid).transpose()?;
    let approvers = {
        let st = state.lock().expect("state lock");
        st.approvers.groups.first().cloned()
    };
    let approvers = approvers.as_deref().map(gid).transpose()?;
    let (tokens, files) =
        crate::ui::Tokens::create(&dir, viewers, approvers).map_err(|e| fail(e.to_string()))?;
    let backend = Arc::new(super::ui::UiView {
        state: state.clone(),
        event_log: cfg.paths.event_log.clone(),
    });
    let listener = match cfg.ui_addr {
        Some(addr) => Some(crate::ui::bind(addr).await?),
        None => None,
    };
    let port = listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map_or(0, |a| a.port());
    let page = crate::ui::Page::new(tokens, backend, port);
    if let Some(listener) = listener {
        // Tagged processes are kept off the daemon's ports (`guard:self/ports`) from the
        // first connection on: the rule covers what the daemon listens on once the host was
        // looked at.
        net.discover_now().await;
        page.serve_tcp(listener);
        info!(port, "serving the review page on TCP");
    }
    {
        let mut st = state.lock().expect("state lock");
        st.page = Some(page);
        st.ui_viewers = viewers;
    }
    info!(
        socket = %cfg.paths.socket.display(),
        viewer_token = %files.viewer.display(),
        approver_token = %files.approver.display(),
        "serving the review page on the API socket"
    );
    Ok(())
}

/// `--disable-legacy-tiocsti`: the sysctl to 0 now, and back to 0 within a second whenever
/// something sets it to 1 (a root agent could), each time an event.
pub(super) fn keep_tiocsti_off(cfg: &DaemonConfig, state: &Shared) -> Result<(), DaemonError> {
    if !cfg.disable_legacy_tiocsti {
        return Ok(());
    }
    crate::tiocsti::disable().map_err(DaemonError::Tiocsti)?;
    info!(
        sysctl = crate::tiocsti::SYSCTL,
        "TIOCSTI is refused to processes without CAP_SYS_ADMIN"
    );
    let sink = state.lock().expect("state lock").sink.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            if crate::tiocsti::legacy_allowed() != Some(true) {
                continue;
            }
            let done = crate::tiocsti::disable();
            warn!(
                ok = done.is_ok(),
                "dev.tty.legacy_tiocsti was set to 1; set back to 0"
            );
            if let Some(sink) = &sink {
                sink.submit(crate::selfprot::tiocsti_restored(done.is_ok()))
                    .await;
            }
        }
    });
    Ok(())
}
