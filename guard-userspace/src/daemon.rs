//! `guard daemon`: load and pin the programs, apply the policy, seed the tag map, serve the
//! API and write events. Start-up is race-free: attach trackers → install agents → seed from
//! `/proc` (to a fixpoint) → serve.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use guard_common::agent::trim_nul;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
};
use tracing::{error, info, warn};

use crate::{
    api::{self, DaemonStatus, PsReply, Reply, Request, SelfProtectionStatus, TagReply},
    btf,
    events::{
        EventLog, LogConfig, Responder,
        pipeline::{self, EventSink, Pipeline},
    },
    kernel::{Kernel, KernelError},
    metrics::{self, DaemonView, HookStatus, KernelSnapshot, Metrics},
    net,
    paths::Paths,
    policy::{CompiledPolicy, Policy, PolicyError},
    probe::{self, Probe},
    proctree::{ProcTree, ProcTreeHandle, Procfs, TreeConfig},
    tags::{self, AgentNames, AgentSpec, ProcInfo, TagError},
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

    let offsets = btf::kernel_offsets(std::path::Path::new(btf::VMLINUX_BTF))?;
    let mut kernel = Kernel::load(
        &cfg.paths.pin_dir,
        &offsets,
        std::process::id(),
        cfg.tier,
        probe.tier == probe::Tier::BpfLsm,
    )?;
    info!(pin_dir = %cfg.paths.pin_dir.display(), tier = %kernel.tier, "trackers and enforcement attached and pinned");
    if let Some(e) = &kernel.lsm_error {
        error!(error = %e, "the bpf-lsm tier is NOT enforcing; the fallback tier enforces instead");
    }
    match &kernel.self_attached.error {
        None => info!(hooks = ?kernel.self_attached.attached, "self-protection attached"),
        Some(e) => error!(error = %e, "self-protection is NOT fully attached"),
    }
    let agents = agent_specs(&compiled);
    tags::install_agents(&mut kernel, &agents)?;
    let kills = needs_killer(&compiled);
    if kills {
        kernel.set_killer(true)?;
    }
    let net = match kernel.net.take() {
        Some(maps) => {
            let config = net::NetConfig::from_env().map_err(net::NetError::from)?;
            Some(net::NetHandle::install(maps, &compiled, &config).await?)
        }
        None => None,
    };
    if !kills {
        kernel.set_killer(false)?;
    }
    if let Some(why) = &kernel.net_attached.unix_missing {
        warn!("unix socket rules are not enforced: {why}");
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
        kernel.files.take(),
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
        crate::selfprot::SignalSources::new(st.kernel.guard_self.as_ref())
    };
    let mut from_tagged = |sig: i32| {
        let st = state.lock().expect("state lock");
        let tagged = sources.from_tagged(st.kernel.guard_self.as_ref(), sig);
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

fn bind(paths: &Paths) -> Result<UnixListener, DaemonError> {
    let path = &paths.socket;
    let err = |source| DaemonError::Socket {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(err)?;
    // Anyone may connect: the only privileged-looking call (tag) tags the caller itself.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(listener)
}

async fn serve(listener: UnixListener, state: Shared) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream, state.clone()));
            }
            Err(e) => warn!(error = %e, "accept failed"),
        }
    }
}

async fn handle(stream: UnixStream, state: Shared) {
    let peer = stream.peer_cred().ok();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => {
                // Anything but the read-only calls and tagging oneself: from a tagged caller,
                // an attempt on guard itself.
                if let Some(cred) = &peer {
                    refused_tagged(&state, cred, &line).await;
                }
                serde_json::to_string(&Reply::<()>::err(format!("bad request: {e}")))
            }
            Ok(Request::Status) => serde_json::to_string(&status(&state)),
            Ok(Request::Ps) => serde_json::to_string(&ps(&state)),
            Ok(Request::Tag { agent }) => {
                let pid = peer.as_ref().and_then(|c| c.pid());
                serde_json::to_string(&tag(&state, pid, agent.as_deref()))
            }
        };
        let mut reply = reply.unwrap_or_else(|e| format!(r#"{{"ok":false,"error":"{e}"}}"#));
        reply.push('\n');
        if write.write_all(reply.as_bytes()).await.is_err() {
            break;
        }
    }
}

/// Record a refused request from a tagged caller.
async fn refused_tagged(state: &Shared, cred: &tokio::net::unix::UCred, line: &str) {
    let Some(pid) = cred.pid().and_then(|p| u32::try_from(p).ok()) else {
        return;
    };
    let (sink, header) = {
        let st = state.lock().expect("state lock");
        let Ok(tag) = st.kernel.tags.get(&pid, 0) else {
            return;
        };
        let ppid = ProcInfo::read(pid as i32).map_or(0, |i| i.ppid);
        let header = guard_common::event::EventHeader {
            kind: guard_common::event::EventKind::SelfProtect as u32,
            agent_id: tag.agent_id,
            time_ns: crate::selfprot::boot_ns(),
            proc: guard_common::ProcKey::new(pid, tag.start_ns),
            root: tag.root,
            ppid,
            uid: cred.uid(),
        };
        (st.sink.clone(), header)
    };
    let what: String = line.chars().take(120).collect();
    warn!(pid, request = %what, "refused an API request from a tagged process");
    if let Some(sink) = sink {
        sink.submit(crate::selfprot::api_denied(
            header,
            &format!("api request {what}"),
        ))
        .await;
    }
}

fn status(state: &Shared) -> Reply<DaemonStatus> {
    let st = state.lock().expect("state lock");
    let path_rules = st.files.as_ref().map(|f| f.status()).unwrap_or_default();
    let self_protection = SelfProtectionStatus {
        hooks: st.kernel.self_attached.attached.clone(),
        error: st.kernel.self_attached.error.clone(),
        pins_held: st.kernel.keeper.as_ref().map_or(0, |k| k.held()),
        internal_rules: st.internal.iter().map(|r| r.name.clone()).collect(),
    };
    let problems = problems(&path_rules, &st.kernel, &self_protection);
    Reply::ok(DaemonStatus {
        daemon_pid: std::process::id(),
        enforcing: st.enforcing,
        // The tier that enforces, not the one the kernel could offer (the probe below says
        // what the kernel offers).
        tier: st.kernel.tier.to_string(),
        tier_error: st.kernel.lsm_error.clone(),
        network: network_status(&st.kernel),
        policy: st.policy_name.clone(),
        policy_generation: st.generation,
        policy_rejected: st.rejected.clone(),
        trackers: Kernel::pinned_links(st.kernel.pin_dir()),
        tagged_processes: st.kernel.tags.keys().filter_map(Result::ok).count(),
        counters: st
            .kernel
            .counters()
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .chain(st.files.as_ref().map(|f| f.counters()).unwrap_or_default())
            .collect(),
        probe: serde_json::to_value(&st.probe).unwrap_or_default(),
        path_rules,
        self_protection: Some(self_protection),
        problems,
    })
}

fn network_status(kernel: &Kernel) -> crate::api::NetworkStatus {
    let a = &kernel.net_attached;
    crate::api::NetworkStatus {
        tier: if a.lsm { "bpf-lsm" } else { "fallback" }.into(),
        programs: a.programs.iter().map(|p| (*p).to_owned()).collect(),
        unix: match &a.unix_missing {
            None => crate::files::status::ENFORCED.into(),
            Some(why) => format!("{}: {why}", crate::files::status::NOT_LOADED),
        },
        raw_sockets: a.raw.describe(),
        kill: if a.lsm {
            "SIGKILL from the LSM program, before the system call returns".into()
        } else if kernel.killer_attached() {
            "SIGKILL from tp_btf/sys_exit, before the system call returns".into()
        } else {
            "tp_btf/sys_exit attached when a policy has kill rules".into()
        },
    }
}

/// What is meant to be enforced but is not loaded: `guard status` exits non-zero when this
/// is not empty. A rejected policy is not a problem here (the previous one is in force).
fn problems(
    path_rules: &[crate::files::PathRuleStatus],
    kernel: &Kernel,
    guard_self: &SelfProtectionStatus,
) -> Vec<String> {
    let mut out: Vec<String> = path_rules
        .iter()
        .filter(|r| r.status == crate::files::status::NOT_LOADED)
        .map(|r| format!("path rule {} is not loaded", r.name))
        .collect();
    if let Some(why) = &kernel.net_attached.unix_missing {
        out.push(format!("unix socket rules are not enforced: {why}"));
    }
    if let crate::net::RawCoverage::Missing(why) = &kernel.net_attached.raw {
        out.push(format!("the raw-socket rule is not enforced: {why}"));
    }
    if let Some(e) = &kernel.lsm_error {
        out.push(format!("the bpf-lsm tier is not enforcing: {e}"));
    }
    if let Some(e) = &guard_self.error {
        out.push(format!("self-protection is not fully attached: {e}"));
    }
    if guard_self.pins_held == 0 {
        out.push("removed pins are not put back (the pin keeper is not running)".into());
    }
    out
}

fn ps(state: &Shared) -> Reply<PsReply> {
    let st = state.lock().expect("state lock");
    Reply::ok(PsReply {
        processes: tags::list(&st.kernel, &st.names),
    })
}

fn tag(state: &Shared, pid: Option<i32>, agent: Option<&str>) -> Reply<TagReply> {
    let Some(pid) = pid.filter(|p| *p > 0) else {
        return Reply::err("cannot identify the calling process (no SO_PEERCRED pid)");
    };
    let info = match ProcInfo::read(pid) {
        Ok(i) => i,
        Err(e) => return Reply::err(format!("cannot read the calling process: {e}")),
    };
    let mut st = state.lock().expect("state lock");
    let agent_id = match agent {
        None => tags::UNNAMED_AGENT,
        Some(name) => match st.names.id(name) {
            Some(id) => id,
            None => {
                let mut known: Vec<String> = st.names.0.values().cloned().collect();
                known.sort();
                return Reply::err(format!(
                    "unknown agent {name:?}; the policy defines: {}",
                    known.join(", ")
                ));
            }
        },
    };
    let before = st.kernel.tags.get(&(pid as u32), 0).ok();
    match tags::tag_root(&mut st.kernel, pid as u32, info.start_ns, agent_id) {
        Ok(tag) => {
            info!(pid, agent = %st.names.name(tag.agent_id), "tagged by guard run");
            Reply::ok(TagReply {
                enforcing: st.enforcing,
                agent: st.names.name(tag.agent_id),
                root_pid: tag.root.tgid,
                root_start_ns: tag.root.start_ns,
                already_tagged: before.is_some(),
                drop_capabilities: st.drop_caps.clone(),
                protections: st.files.as_ref().map(|f| f.protections()),
                daemon_pid: std::process::id(),
            })
        }
        Err(e) => Reply::err(format!("tagging failed: {e}")),
    }
}

/// The daemon's state as the event pipeline and the metrics see it.
struct View(Shared);

impl DaemonView for View {
    fn agent_names(&self) -> AgentNames {
        self.0.lock().expect("state lock").names.clone()
    }

    fn events_dropped(&self) -> u64 {
        let st = self.0.lock().expect("state lock");
        st.kernel
            .counters()
            .into_iter()
            .find(|(n, _)| *n == "events_dropped")
            .map_or(0, |(_, v)| v)
    }

    fn snapshot(&self) -> KernelSnapshot {
        let st = self.0.lock().expect("state lock");
        let tier = st.kernel.tier.to_string();
        // Every pinned link is an attached hook: the trackers, and each enforcement hook.
        let hooks = Kernel::pinned_links(st.kernel.pin_dir())
            .into_iter()
            .map(|hook| HookStatus {
                tier: if crate::kernel::TRACKERS.iter().any(|(_, p)| *p == hook) {
                    "tracking".into()
                } else {
                    tier.clone()
                },
                hook,
                status: "attached".into(),
            })
            .collect();
        KernelSnapshot {
            counters: st
                .kernel
                .counters()
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
            tagged_processes: st.kernel.tags.keys().filter_map(Result::ok).count() as u64,
            policy_generation: st.generation,
            enforcing: st.enforcing,
            tier,
            hooks,
        }
    }
}
