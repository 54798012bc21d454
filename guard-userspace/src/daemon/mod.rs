//! `guard daemon`: load and pin the programs, apply the policy, seed the tag map, serve the
//! API and write events. Start-up is race-free: attach trackers → install agents → seed from
//! `/proc` (to a fixpoint) → serve.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use guard_common::agent::trim_nul;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

mod load;
mod serve;

use serve::{View, bind, serve};

use crate::{
    api::{self, DaemonStatus, Request},
    btf,
    events::{
        EventLog, LogConfig, Responder,
        pipeline::{self, EventSink, Pipeline},
    },
    kernel::{Kernel, KernelError},
    metrics::{self, DaemonView, Metrics},
    net,
    paths::Paths,
    policy::{CompiledPolicy, Policy, PolicyError},
    probe::{self, Probe},
    proctree::{ProcTree, ProcTreeHandle, Procfs, TreeConfig},
    tags::{self, AgentNames, AgentSpec, TagError},
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "guard daemon must run as root (it loads eBPF programs and pins them in bpffs); run it with sudo"
    )]
    NotRoot,
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("bpffs: {0}")]
    Bpffs(#[from] probe::ProbeError),
    #[error("this kernel lacks features guard needs: {0}")]
    MissingFeatures(String),
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Tags(#[from] TagError),
    #[error("path rules: {0}")]
    Files(#[from] crate::files::FileError),
    #[error("endpoint rules: {0}")]
    Net(#[from] crate::net::NetError),
    #[error("another guard daemon (pid {0}) is serving {1}")]
    AlreadyRunning(u32, String),
    #[error("API socket {path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("event log {path}: {source}")]
    EventLog {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
    #[error("signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
}

pub struct DaemonConfig {
    pub policy: Option<PathBuf>,
    pub paths: Paths,
    pub log_stdout: bool,
    /// Rotation of the event log.
    pub log: LogConfig,
    /// Serve Prometheus metrics on this address (off when `None`).
    pub metrics_addr: Option<SocketAddr>,
    /// The enforcement tier asked for.
    pub tier: crate::kernel::TierChoice,
    /// Write fork and exit lines of tagged processes too.
    pub lifecycle_events: bool,
    /// How the fallback tier carries out `kill` rules.
    pub kill_via: crate::killer::KillChoice,
}

/// Agents as the kernel maps them: ids start at 1 (0 is `guard run` without `--agent`).
pub fn agent_specs(policy: &CompiledPolicy) -> Vec<AgentSpec> {
    let text =
        |k: &guard_common::agent::NameKey| String::from_utf8_lossy(trim_nul(&k.bytes)).into_owned();
    policy
        .agents
        .iter()
        .map(|a| AgentSpec {
            id: a.id + 1,
            name: a.name.clone(),
            executables: a.executables.iter().map(text).collect(),
            scripts: a.scripts.iter().map(text).collect(),
        })
        .collect()
}

struct State {
    kernel: Kernel,
    /// What the network programs attached.
    net_attached: net::Attached,
    /// Self-protection maps and what attached.
    guard_self: Option<crate::selfprot::SelfMaps>,
    self_attached: crate::selfprot::SelfAttached,
    names: AgentNames,
    policy_name: String,
    generation: u64,
    probe: Probe,
    enforcing: bool,
    /// The last policy that was rejected (and why); the previous one stays in force.
    rejected: Option<String>,
    /// Capabilities `guard run` drops from its tree's bounding set.
    drop_caps: Vec<u8>,
    /// Whether the policy has enforced kill rules (the kill program must be attached).
    kills: bool,
    /// File protection (path rules).
    files: Option<Arc<crate::files::FileGuard>>,
    /// Path rules guard adds for its own files (policy, event log, binary, pins).
    internal: Vec<crate::policy::CompiledPathRule>,
    /// The policy's path rules in force.
    path_rules: Vec<crate::policy::CompiledPathRule>,
    /// Orders the file guard's reloads (each runs on its own thread).
    files_seq: u64,
    /// Where decisions made here (API refusals, pins put back) are logged.
    sink: Option<EventSink>,
}

type Shared = Arc<Mutex<State>>;

pub async fn run(cfg: DaemonConfig) -> Result<(), DaemonError> {
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

    let load::Loaded {
        mut kernel,
        net: net_maps,
        net_attached,
        files: kernel_files,
        guard_self,
        self_attached,
    } = load::load(
        &cfg.paths.pin_dir,
        cfg.tier,
        probe.tier == probe::Tier::BpfLsm,
        cfg.kill_via,
        probe.is_available("cgroup-send-signal"),
    )?;
    info!(pin_dir = %cfg.paths.pin_dir.display(), tier = %kernel.tier, "trackers and enforcement attached and pinned");
    let agents = agent_specs(&compiled);
    tags::install_agents(&mut kernel, &agents)?;
    let kills = needs_killer(&compiled);
    if kills {
        kernel.set_killer(true)?;
    }
    let config = net::NetConfig::from_env().map_err(net::NetError::from)?;
    let net = Some(net::NetHandle::install(net_maps, &compiled, &config).await?);
    if !kills {
        kernel.set_killer(false)?;
    }
    let events = kernel.take_events();
    let report = tags::seed(&mut kernel, &agents)?;
    info!(
        roots = report.roots,
        tagged = report.tagged,
        stale_removed = report.stale_removed,
        passes = report.passes,
        "seeded tags from /proc"
    );

    let internal = crate::selfprot::internal_rules(&crate::selfprot::OwnFiles {
        policy: cfg.policy.as_ref().map(|p| absolute(p)),
        event_log: absolute(&cfg.paths.event_log),
        binary: std::env::current_exe().ok(),
        pin_dir: absolute(&cfg.paths.pin_dir),
    });
    let path_rules: Vec<_> = compiled.paths.iter().chain(&internal).cloned().collect();
    let files = crate::files::FileGuard::start(
        crate::files::FileConfig {
            pin_dir: cfg.paths.pin_dir.clone(),
            event_log: cfg.paths.event_log.clone(),
            log_stdout: cfg.log_stdout,
            passwd: "/etc/passwd".into(),
        },
        kernel_files,
        &path_rules,
        AgentNames::new(&agents),
    )?;
    let restored: Arc<Mutex<Option<EventSink>>> = Arc::new(Mutex::new(None));
    {
        let restored = restored.clone();
        match crate::pins::PinKeeper::start(&cfg.paths.pin_dir, move |r| {
            let sink = restored.lock().expect("sink lock").clone();
            if let Some(sink) = sink {
                sink.submit_blocking(crate::selfprot::pin_restored(&r));
            }
        }) {
            Ok(k) => {
                info!(
                    held = k.held(),
                    "holding every pin; removed pins are pinned again"
                );
                kernel.keeper = Some(k);
            }
            Err(e) => error!(error = %e, "cannot keep the pins: a removed pin stays removed"),
        }
    }
    let log = EventLog::open(&cfg.paths.event_log, cfg.log, cfg.log_stdout).map_err(|source| {
        DaemonError::EventLog {
            path: cfg.paths.event_log.display().to_string(),
            source,
        }
    })?;
    let state: Shared = Arc::new(Mutex::new(State {
        kernel,
        net_attached,
        guard_self,
        self_attached,
        names: AgentNames::new(&agents),
        policy_name: compiled.name.clone(),
        generation: 1,
        probe,
        enforcing: true,
        rejected: None,
        drop_caps: compiled
            .drop_capabilities
            .iter()
            .map(|c| c.number())
            .collect(),
        kills,
        files: Some(Arc::new(files)),
        internal,
        path_rules: compiled.paths.clone(),
        files_seq: 0,
        sink: None,
    }));

    let listener = bind(&cfg.paths)?;
    info!(socket = %cfg.paths.socket.display(), "serving API");
    let view: Arc<dyn DaemonView> = Arc::new(View(state.clone()));
    let metrics = Arc::new(Metrics::new(view.clone()));
    if let Some(addr) = cfg.metrics_addr {
        let bound = metrics::serve(addr, metrics.clone()).await?;
        info!(addr = %bound, "serving metrics");
    }
    if let Some(ring) = events {
        let tree = ProcTreeHandle::spawn(ProcTree::new(TreeConfig::default(), Box::new(Procfs)));
        let responders: Vec<Arc<dyn Responder>> = net
            .iter()
            .map(|n| Arc::new(n.clone()) as Arc<dyn Responder>)
            .collect();
        let labels: Arc<dyn crate::events::net::NetLabels + Send + Sync> = match &net {
            Some(n) => Arc::new(n.clone()),
            None => Arc::new(crate::events::net::NoLabels),
        };
        let sink = pipeline::spawn(
            ring,
            Pipeline {
                log,
                tree,
                view,
                metrics,
                node: pipeline::hostname(),
                responders,
                net: labels,
                lifecycle_lines: cfg.lifecycle_events,
            },
        );
        *restored.lock().expect("sink lock") = Some(sink.clone());
        let mut st = state.lock().expect("state lock");
        st.sink = Some(sink.clone());
        if let Some(files) = st.files.clone() {
            files.set_sink(sink);
        }
    }
    tokio::spawn(serve(listener, state.clone()));

    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let (_watch, mut changed) = match &cfg.policy {
        Some(path) => {
            let (w, rx) = crate::watch::watch(path, std::time::Duration::from_millis(200))?;
            (Some(w), rx)
        }
        None => (None, tokio::sync::mpsc::channel(1).1),
    };
    let mut sources = {
        let st = state.lock().expect("state lock");
        crate::selfprot::SignalSources::new(st.guard_self.as_ref())
    };
    let mut from_tagged = |sig: i32| {
        let st = state.lock().expect("state lock");
        let tagged = sources.from_tagged(st.guard_self.as_ref(), sig);
        if tagged {
            warn!(
                signal = sig,
                "ignoring a signal from a tagged process (it was killed)"
            );
        }
        tagged
    };
    loop {
        tokio::select! {
            _ = term.recv() => if !from_tagged(libc::SIGTERM) { break },
            _ = int.recv() => if !from_tagged(libc::SIGINT) { break },
            _ = hup.recv() => if !from_tagged(libc::SIGHUP) {
                reload(&cfg, &state, net.as_ref());
            },
            Some(()) = changed.recv() => reload(&cfg, &state, net.as_ref()),
        }
    }
    let _ = std::fs::remove_file(&cfg.paths.socket);
    info!(
        "daemon stopping; pinned programs keep enforcing (guard daemon --uninstall removes them)"
    );
    Ok(())
}

/// Whether `policy` has an enforced endpoint rule that kills.
fn needs_killer(policy: &CompiledPolicy) -> bool {
    use crate::policy::{Action, Mode};
    let kills =
        |action, mode| matches!(action, Action::Kill | Action::KillTree) && mode == Mode::Enforce;
    policy.endpoints.iter().any(|r| kills(r.action, r.mode))
        || policy.raw_sockets.is_some_and(|r| kills(r.action, r.mode))
}

fn reload(cfg: &DaemonConfig, state: &Shared, net: Option<&net::NetHandle>) {
    let Some(path) = &cfg.policy else {
        info!("SIGHUP: running on the embedded default policy; nothing to reload");
        return;
    };
    match Policy::load(path) {
        Ok(policy) => {
            let compiled = policy.compile();
            let compiled_net = compiled.clone();
            let internal = state.lock().expect("state lock").internal.clone();
            let path_rules: Vec<_> = compiled.paths.iter().cloned().chain(internal).collect();
            let agents = agent_specs(&compiled);
            let mut st = state.lock().expect("state lock");
            match tags::install_agents(&mut st.kernel, &agents) {
                Ok(()) => {
                    st.names = AgentNames::new(&agents);
                    st.policy_name = compiled.name;
                    st.generation += 1;
                    st.rejected = None;
                    st.path_rules = compiled_net.paths.clone();
                    st.drop_caps = compiled
                        .drop_capabilities
                        .iter()
                        .map(|c| c.number())
                        .collect();
                    info!(generation = st.generation, "policy reloaded");
                    // The kill program goes in before rules that kill, and out after them.
                    st.kills = needs_killer(&compiled_net);
                    if st.kills
                        && let Err(e) = st.kernel.set_killer(true)
                    {
                        error!(error = %e, "cannot attach the kill program; kill rules only deny");
                    }
                    if let Some(net) = net.cloned() {
                        let state = state.clone();
                        tokio::spawn(async move {
                            if let Err(e) = net.apply(&compiled_net).await {
                                error!(error = %e, "endpoint rules not reloaded; the previous ones stay");
                                return;
                            }
                            let mut st = state.lock().expect("state lock");
                            if !st.kills
                                && let Err(e) = st.kernel.set_killer(false)
                            {
                                warn!(error = %e, "cannot detach the kill program");
                            }
                        });
                    }
                    if let Some(files) = st.files.clone() {
                        let names = st.names.clone();
                        st.files_seq += 1;
                        let seq = st.files_seq;
                        std::thread::spawn(move || files.reload(seq, &path_rules, names));
                    }
                }
                Err(e) => {
                    error!(error = %e, "policy reload failed; the previous policy stays");
                    st.rejected = Some(format!("installing the policy failed: {e}"));
                }
            }
        }
        Err(e) => {
            error!(error = %e, "policy rejected; the previous policy stays in force");
            let mut st = state.lock().expect("state lock");
            st.rejected = Some(e.to_string());
            // The file may be a new inode (an editor's rename, a ConfigMap swap): resolve the
            // rules in force again, so that the internal rule covers it.
            if let Some(files) = st.files.clone() {
                let rules: Vec<_> = st.path_rules.iter().chain(&st.internal).cloned().collect();
                let names = st.names.clone();
                st.files_seq += 1;
                let seq = st.files_seq;
                std::thread::spawn(move || files.reload(seq, &rules, names));
            }
        }
    }
}

/// `path` made absolute against the working directory (rules need absolute paths).
fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
