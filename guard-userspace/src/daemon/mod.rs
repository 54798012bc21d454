//! `guard daemon`: load and pin the programs, apply the policy, seed the tag map, serve the
//! API and write events. Start-up is a sequence of steps (preflight → load → apply → seed →
//! serve), race-free because the trackers attach in the load step, before the agents are
//! installed and the running ones seeded from `/proc` (to a fixpoint).

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use guard_common::agent::trim_nul;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

mod apply;
mod caller;
mod decide;
mod incident;
mod integrity;
mod load;
mod serve;
mod start;
mod status;
mod ui;

use serve::{bind, serve};
use start::{Preflight, keep_pins, new_state, preflight, seed, start_files, start_pipeline};

use crate::{
    btf,
    events::{LogConfig, pipeline::EventSink},
    kernel::{Kernel, KernelError},
    metrics, net,
    paths::Paths,
    policy::{CompiledPolicy, PolicyError},
    probe::{self, Probe},
    tags::{AgentNames, AgentSpec, TagError},
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
    #[error("fingerprint key {path}: {reason}")]
    FingerprintKey { path: String, reason: String },
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
    #[error("signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("the policy file is not applied: {0}")]
    PolicyUntrusted(String),
    #[error("spec.notify.webhook: {0}")]
    Notify(String),
    #[error(transparent)]
    Ui(#[from] crate::ui::UiError),
    #[error("--disable-legacy-tiocsti: {0}")]
    Tiocsti(std::io::Error),
    #[error("review page tokens in {dir}: {why}")]
    UiTokens { dir: String, why: String },
}

pub struct DaemonConfig {
    pub policy: Option<PathBuf>,
    pub paths: Paths,
    pub log_stdout: bool,
    /// Rotation of the event log.
    pub log: LogConfig,
    /// Serve Prometheus metrics on this address (off when `None`).
    pub metrics_addr: Option<SocketAddr>,
    /// Set `dev.tty.legacy_tiocsti` to 0 and keep it there.
    pub disable_legacy_tiocsti: bool,
    /// Serve the review page on the API socket (to peers whose credentials allow it).
    pub ui: bool,
    /// Serve the review page on this address too (token sign-in; off when `None`).
    pub ui_addr: Option<SocketAddr>,
    /// The group that may read the review page's viewer token (root only when `None`).
    pub ui_viewers: Option<String>,
    /// The enforcement tier asked for.
    pub tier: crate::kernel::TierChoice,
    /// Write fork and exit lines of tagged processes too.
    pub lifecycle_events: bool,
    /// How the fallback tier carries out `kill` rules.
    pub kill_via: crate::killer::KillChoice,
    /// Entries of the tag map (see [`crate::tagmap::default_size`]).
    pub tag_map_size: u32,
    /// Apply the policy file even though tagged processes changed it (it was reviewed).
    pub policy_reviewed: bool,
    /// Scan the files agents read on the fallback tier too (read tracepoints).
    pub fallback_read_scan: bool,
    /// The mount namespace paths are resolved in.
    pub view: crate::hostview::HostView,
    /// The policy file and the binary are in a container, out of the host's view.
    pub own_files_outside: bool,
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
            env: a.env.clone(),
            paths: a.paths.clone(),
            cgroups: a.cgroups.clone(),
            containers: a.containers.clone(),
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
    /// The agents of the policy in force, and their names by id.
    agents: Vec<AgentSpec>,
    names: AgentNames,
    /// Install paths of the agents that name nothing yet.
    paths_missing: Vec<PathBuf>,
    /// The agents' cgroups found now.
    agent_cgroups: crate::tags::cgroups::Resolved,
    policy_name: String,
    generation: u64,
    probe: Probe,
    enforcing: bool,
    /// The last policy that was rejected (and why); the previous one stays in force.
    rejected: Option<String>,
    /// Capabilities `guard run` drops from its tree's bounding set.
    drop_caps: Vec<u8>,
    /// Socket files of the unix rules that deny, masked in `guard run` trees.
    unix_masks: Vec<PathBuf>,
    /// File protection (path rules), once started.
    files: Option<Arc<crate::files::FileGuard>>,
    /// The built-in rules of the policy in force, on or off.
    builtin: Vec<crate::policy::BuiltinEntry>,
    /// The network controller, once the first policy is applied (for status).
    net: Option<net::NetHandle>,
    /// Path rules guard adds for its own files (policy, event log, binary, pins).
    internal: Vec<crate::policy::CompiledPathRule>,
    /// The policy's path rules in force.
    path_rules: Vec<crate::policy::CompiledPathRule>,
    /// Orders the file guard's reloads (each runs on its own thread).
    files_seq: u64,
    /// Orders policy applies: one at a time, the newest reload wins.
    apply_seq: u64,
    apply_turn: Arc<tokio::sync::Mutex<()>>,
    /// Where decisions made here (API refusals, pins put back) are logged.
    sink: Option<EventSink>,
    /// What the policy file's last apply saw (when the daemon runs on a file).
    integrity: Option<integrity::Integrity>,
    /// `guard policy apply` requests, answered by the serve loop.
    admin_apply: Option<tokio::sync::mpsc::UnboundedSender<apply::Applied>>,
    /// Who may answer requests (`spec.approvers`).
    approvers: crate::policy::Approvers,
    /// The review page, when it is on, and the group of its viewers.
    page: Option<crate::ui::Page>,
    ui_viewers: Option<u32>,
    /// The mount namespace paths are resolved in.
    view: crate::hostview::HostView,
}

type Shared = Arc<Mutex<State>>;

/// Whether `pid` is a tagged process: such a caller may only read and tag itself.
fn is_tagged(state: &Shared, pid: i32) -> bool {
    let st = state.lock().expect("state lock");
    u32::try_from(pid).is_ok_and(|p| st.kernel.tags.get(&p, 0).is_ok())
}

/// How often the free heap goes back to the kernel.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// `guard daemon`: preflight → load → apply(policy) → seed → serve. A reload is the apply
/// step again.
pub async fn run(cfg: DaemonConfig) -> Result<(), DaemonError> {
    let Preflight { compiled, probe } = preflight(&cfg)?;
    if cfg.disable_legacy_tiocsti {
        crate::tiocsti::available().map_err(DaemonError::Tiocsti)?;
    }
    let loaded = load::load(
        &cfg.paths.pin_dir,
        cfg.tier,
        probe.tier == probe::Tier::BpfLsm,
        &crate::kernel::LoadOptions {
            kill: cfg.kill_via,
            cgroup_can_signal: probe.is_available("cgroup-send-signal"),
            tag_map_size: cfg.tag_map_size,
            fallback_read_scan: cfg.fallback_read_scan,
        },
    )?;
    info!(pin_dir = %cfg.paths.pin_dir.display(), tier = %loaded.kernel.tier, "trackers and enforcement attached and pinned");
    let load::Loaded {
        mut kernel,
        net: net_maps,
        net_attached,
        files: kernel_files,
        guard_self,
        self_attached,
    } = loaded;
    let ring = kernel
        .take_events()
        .expect("the event ring is taken once, here");
    let secret_maps = kernel.take_secret_maps();
    let taints = crate::secrets::Taints::default();
    let state = new_state(&cfg, probe, kernel, net_attached, guard_self, self_attached);
    start::check_policy_file(&cfg, &state)?;
    let config = net::NetConfig::from_env().map_err(net::NetError::from)?;
    let requests = crate::requests::Requests::default();
    let maps_dir = state.lock().expect("state lock").kernel.maps_dir();
    let holder = {
        let r = requests.clone();
        crate::respond::Holder::new(maps_dir.clone(), move |note| r.notify_tree(note))
    };
    let net = net::NetHandle::new(
        net_maps,
        &config,
        taints.clone(),
        requests.clone(),
        holder.clone(),
    )?;
    apply::apply(&state, compiled, &net).await?;
    seed(&state)?;
    let secrets = crate::events::secret::SecretReads::new(secret_maps, taints, Some(net.tag_map()));
    let sink = start_pipeline(&cfg, &state, ring, secrets, &net).await?;
    requests.set_sink(sink.clone());
    keep_requests(&cfg, &requests);
    start::start_ui(&cfg, &state, &net).await?;
    start::keep_tiocsti_off(&cfg, &state)?;
    net.set_sink(sink.clone());
    start_files(&cfg, &state, kernel_files, sink, (holder, requests.clone()))?;
    keep_pins(&cfg, &state);
    tokio::spawn(incident::keep_held(state.clone(), maps_dir));
    tokio::spawn(decide::expire_forever(state.clone()));
    start::release_free_memory();
    serve_until_stopped(&cfg, state, net).await
}

/// Keep requests beside the API socket, taking back those an earlier daemon left.
fn keep_requests(cfg: &DaemonConfig, requests: &crate::requests::Requests) {
    let dir = cfg
        .paths
        .socket
        .parent()
        .unwrap_or(std::path::Path::new("/run/guard"));
    // The socket's directory, made here before the API binds there.
    if let Err(e) = std::fs::create_dir_all(dir) {
        warn!(dir = %dir.display(), error = %e, "requests will not outlive this daemon");
    }
    let (kept, dropped) = requests.keep_in(dir.join("requests.json"));
    if kept + dropped > 0 {
        info!(
            kept,
            dropped,
            "requests of an earlier daemon: taken back, and dropped (their trees are gone or their approvals ended)"
        );
    }
}

/// Serve the API, and apply the policy again on SIGHUP or a change of its file, until
/// SIGTERM or SIGINT (from anyone but a tagged process).
async fn serve_until_stopped(
    cfg: &DaemonConfig,
    state: Shared,
    net: net::NetHandle,
) -> Result<(), DaemonError> {
    let listener = bind(&cfg.paths)?;
    info!(socket = %cfg.paths.socket.display(), "serving API");
    tokio::spawn(serve(listener, state.clone()));

    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let (apply_tx, mut apply_rx) = tokio::sync::mpsc::unbounded_channel();
    state.lock().expect("state lock").admin_apply = Some(apply_tx);
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
    let policy = cfg.policy.as_deref();
    let mut trim = tokio::time::interval(TRIM_EVERY);
    let mut installs = tokio::time::interval(crate::tags::paths::RECHECK);
    loop {
        tokio::select! {
            _ = trim.tick() => start::release_free_memory(),
            _ = installs.tick() => {
                // Off the loop: a container's lookup may wait for its runtime's API.
                let st = state.clone();
                tokio::task::spawn_blocking(move || apply::refresh_installs(&st));
            },
            _ = term.recv() => if !from_tagged(libc::SIGTERM) { break },
            _ = int.recv() => if !from_tagged(libc::SIGINT) { break },
            _ = hup.recv() => if !from_tagged(libc::SIGHUP) {
                apply::reload(policy, &state, &net, apply::Trigger::Admin(None));
            },
            Some(reply) = apply_rx.recv() => {
                apply::reload(policy, &state, &net, apply::Trigger::Admin(Some(reply)));
            },
            Some(()) = changed.recv() => apply::reload(policy, &state, &net, apply::Trigger::FileChanged),
        }
    }
    let _ = std::fs::remove_file(&cfg.paths.socket);
    info!(
        "daemon stopping; pinned programs keep enforcing (guard daemon --uninstall removes them)"
    );
    Ok(())
}

/// `path` made absolute against the working directory (rules need absolute paths).
fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
