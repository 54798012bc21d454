//! `guard`: kernel-enforced containment for AI coding agents.

use std::{
    io::IsTerminal,
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use guard::{
    api::{self, DaemonStatus, PsReply, Request, TagReply, TreeAction, TreeReply},
    daemon::{self, DaemonConfig},
    events::{
        LogConfig,
        query::{self, EventsArgs, Filter, Shown},
    },
    kernel, paths,
    paths::Paths,
    policy::Policy,
    probe,
};

/// Kernel-enforced containment for AI coding agents.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = paths::ENV_SOCKET, default_value = paths::SOCKET)]
    socket: PathBuf,
    /// Directory in bpffs where programs, links and maps are pinned.
    #[arg(long, global = true, env = paths::ENV_PIN_DIR, default_value = paths::PIN_DIR)]
    pin_dir: PathBuf,
    /// The JSON-lines event log.
    #[arg(long, global = true, env = paths::ENV_EVENT_LOG, default_value = paths::EVENT_LOG)]
    event_log: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the programs, apply the policy, serve the API and write events (root only).
    Daemon {
        /// Policy file; the embedded default policy when omitted.
        #[arg(long, env = paths::ENV_POLICY)]
        policy: Option<PathBuf>,
        /// Also write every event to stdout.
        #[arg(long)]
        log_stdout: bool,
        /// Rotate the event log when it would grow past this size (bytes, or with a K, M, G,
        /// KiB, MiB or GiB suffix).
        #[arg(long, default_value = "50MiB", value_parser = guard::events::parse_size)]
        log_max_bytes: u64,
        /// Event log files kept, the live one included (events.jsonl, events.jsonl.1, …).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
        log_files: u32,
        /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9469 (off by default).
        #[arg(long)]
        metrics_addr: Option<SocketAddr>,
        /// Serve the review page at http://ADDR/, e.g. 127.0.0.1:7682 (off by default). Its
        /// sign-in tokens are written beside the API socket, in ui/viewer.token and
        /// ui/approver.token.
        #[arg(long, env = "GUARD_UI_ADDR")]
        ui_addr: Option<SocketAddr>,
        /// Serve the review page on the API socket only (for root, spec.approvers and
        /// --ui-viewers, by their peer credentials: `ssh -L 7682:/run/guard/guard.sock`).
        /// --ui-addr implies it.
        #[arg(long, env = "GUARD_UI")]
        ui: bool,
        /// Set dev.tty.legacy_tiocsti to 0 and keep it there: the kernel then refuses TIOCSTI
        /// to every process without CAP_SYS_ADMIN (agents recognised at exec on the fallback
        /// tier have no other stop for it). Host-wide; Linux 6.2+.
        #[arg(long, env = "GUARD_DISABLE_LEGACY_TIOCSTI")]
        disable_legacy_tiocsti: bool,
        /// The group that may read the review page's viewer token (root only by default; the
        /// approver token goes to the first group of spec.approvers).
        #[arg(long, env = "GUARD_UI_VIEWERS")]
        ui_viewers: Option<String>,
        /// Remove every pinned program, link and map, which stops enforcement, and exit.
        #[arg(long)]
        uninstall: bool,
        /// Also write a line for every fork and exit of a tagged process (always kept in the
        /// process tree that gives decisions their ancestry; off by default: they are most of
        /// the volume and little of the evidence).
        #[arg(long, env = "GUARD_LIFECYCLE_EVENTS")]
        lifecycle_events: bool,
        /// Enforcement tier: `auto` uses BPF LSM where the kernel runs it (falling back, with
        /// the reason in `guard status`, if its programs cannot attach); `bpf-lsm` refuses to
        /// start without it; `fallback` never uses it.
        #[arg(long, value_enum, default_value_t = guard::kernel::TierChoice::Auto, env = "GUARD_TIER")]
        tier: guard::kernel::TierChoice,
        /// How the fallback tier kills: `auto` takes the cheapest way the kernel allows
        /// (`in-place` from the cgroup program, else `fexit`, else `sys-exit`, which slows
        /// every system call on the host while a policy kills).
        #[arg(long, value_enum, default_value_t = guard::killer::KillChoice::Auto, env = "GUARD_KILL_VIA")]
        kill_via: guard::killer::KillChoice,
        /// Entries of the tag map, when it is created (default: kernel.pid_max, so that it
        /// cannot fill). A tagged parent's child the map cannot take is killed, never left
        /// to run untagged.
        #[arg(long, env = "GUARD_TAG_MAP_SIZE", value_parser = guard::tagmap::parse_size)]
        tag_map_size: Option<u32>,
        /// Apply the policy file although tagged processes changed it while an earlier daemon
        /// ran (without it, such a start is refused, naming the change): say so once the file
        /// has been reviewed.
        #[arg(long)]
        policy_reviewed: bool,
        /// On the fallback tier, scan the files agents read for secrets too: attaches the
        /// page cache's read tracepoints, which run for every read on the host (the bpf-lsm
        /// tier scans them at no cost to untagged processes, always).
        #[arg(long, env = "GUARD_FALLBACK_READ_SCAN")]
        fallback_read_scan: bool,
        /// Where paths mean what they mean: `auto` enters the host's mount and cgroup
        /// namespaces (those of PID 1, seen through the host's PID namespace) when the daemon
        /// runs in a container, and refuses to start in one without the host's PID namespace;
        /// `host` always enters them; `own` resolves in the daemon's own.
        #[arg(long, value_enum, default_value_t = guard::hostview::ViewChoice::Auto, env = "GUARD_VIEW")]
        view: guard::hostview::ViewChoice,
    },
    /// Start CMD as a tagged agent root. Refuses to start it when the daemon is not enforcing.
    Run {
        /// Agent name from the policy's `agents:` list.
        #[arg(long)]
        agent: Option<String>,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Review the event log: filter, follow and summarise what agents did and what was decided.
    Events {
        /// Keep printing new events as they are written (survives log rotation).
        #[arg(short, long)]
        follow: bool,
        /// Only decisions with this action: deny, kill, kill-tree, audit.
        #[arg(long)]
        action: Option<String>,
        /// Only events of this agent (its name in the policy, or guard-run).
        #[arg(long)]
        agent: Option<String>,
        /// Only decisions of this rule.
        #[arg(long)]
        rule: Option<String>,
        /// Only events of this kind (agent_exec, tagged_exec, tagged_fork, tagged_exit,
        /// net_connect, file_change, secret_read, events_lost, …), or of a family of kinds
        /// (net, file, secret, tagged).
        #[arg(long)]
        kind: Option<String>,
        /// Only events newer than this, e.g. 90s, 10m, 2h, 1day.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// A table (colour on a terminal), or the log's JSON lines.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Counts by agent, rule and action over the window, and the secrets each agent read,
        /// instead of the events.
        #[arg(long, conflicts_with = "follow")]
        summary: bool,
        /// Also the commands agents ran (agent_exec, tagged_exec); without `--kind`, only
        /// decisions are shown.
        #[arg(long, conflicts_with = "all")]
        commands: bool,
        /// Every line: decisions, commands and process lifecycle.
        #[arg(long)]
        all: bool,
    },
    /// List the tagged process trees.
    Ps {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Incident response: stop every process of an agent tree, wherever it went (reparented,
    /// out of the session); it stays stopped until `guard thaw`, and no agent can continue
    /// it. ROOT is the root's pid as `guard ps` shows it, or PID:START_NS. Root only.
    Freeze { root: String },
    /// Continue a frozen agent tree.
    Thaw { root: String },
    /// Kill every process of an agent tree, wherever it went.
    Kill { root: String },
    /// The requests of `ask` rules: open ones wait for `guard approve` or `guard deny`.
    Requests {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Keep printing requests as they are opened and answered.
        #[arg(short, long)]
        follow: bool,
    },
    /// Approve a request: the agent tree's retry goes through until the approval expires.
    /// Root or spec.approvers only, never from a tagged process.
    Approve {
        id: u64,
        /// How long, e.g. 90s, 15m, 2h (1 s to 24 h).
        #[arg(long = "for", value_parser = humantime::parse_duration, default_value = "15m")]
        duration: Duration,
        /// process: the process that asked, while it runs; tree: the tree that asked; agent:
        /// every tree of that agent running now.
        #[arg(long, value_enum, default_value_t = ScopeArg::Tree)]
        scope: ScopeArg,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a request. Root or spec.approvers only, never from a tagged process.
    Deny {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Write an agent tree's record for forensics as JSON: its processes now, the commands it
    /// ran, every decision about it, the files and the secrets it touched, with timestamps.
    Export {
        root: String,
        /// Write here instead of standard output.
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
    },
    /// The container runtime's hook (OCI `createRuntime`, before the container's first
    /// process runs): reads the container's state on stdin and has the daemon classify it,
    /// so that a container `agents[].containers` selects is tagged from its start. Never
    /// fails the container: when the daemon does not answer it says so on stderr, and the
    /// daemon finds the container within 2 s of coming back.
    #[command(name = "oci-hook")]
    OciHook,
    /// Show the enforcement tier, kernel features, trackers, counters and rules. Exits 0 when
    /// everything meant to be enforced is loaded, 1 when the daemon is unreachable or not
    /// enforcing, 2 when something meant to be enforced is not loaded.
    Status {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Exit 0 whenever the daemon answers and enforces, with something not loaded too
        /// (a liveness check: a restart would not load it either).
        #[arg(long)]
        alive: bool,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// Credentials in files: what the detectors find (never the secret: its detector, place
    /// and fingerprint).
    Secrets {
        #[command(subcommand)]
        command: SecretsCmd,
    },
}

#[derive(Subcommand)]
enum SecretsCmd {
    /// Scan files and directories (symlinks not followed) and report each finding and the
    /// throughput.
    Scan {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// List the detectors.
    Detectors,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate FILE and print the compiled summary, or the errors with line and column.
    Check { file: PathBuf },
    /// Apply the daemon's policy file as it is now (root, untagged): how a change the daemon
    /// did not apply on its own (made by a tagged process, or with a directory on its path
    /// replaced) is put in force after review. FILE, if given, must be the daemon's file.
    Apply { file: Option<PathBuf> },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScopeArg {
    Process,
    Tree,
    Agent,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Cmd::Daemon { .. }) {
        // A CLI piped into `head` should end quietly, not panic on EPIPE. (The daemon keeps
        // SIGPIPE ignored: a client hanging up must not kill it.)
        // SAFETY: called before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("guard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let paths = Paths {
        socket: cli.socket,
        pin_dir: cli.pin_dir,
        event_log: cli.event_log,
    };
    match cli.command {
        Cmd::Daemon {
            policy,
            log_stdout,
            log_max_bytes,
            log_files,
            metrics_addr,
            ui_addr,
            ui,
            ui_viewers,
            disable_legacy_tiocsti,
            tier,
            uninstall,
            lifecycle_events,
            kill_via,
            tag_map_size,
            policy_reviewed,
            fallback_read_scan,
            view,
        } => {
            if uninstall {
                if !nix::unistd::geteuid().is_root() {
                    bail!("guard daemon --uninstall must run as root");
                }
                if let Ok(st) = api::call::<DaemonStatus>(&paths.socket, &Request::Status) {
                    bail!(
                        "the guard daemon (pid {}) is running and pins removed pins again; stop it first",
                        st.daemon_pid
                    );
                }
                let removed = kernel::uninstall(&paths.pin_dir)
                    .with_context(|| format!("removing {}", paths.pin_dir.display()))?;
                println!(
                    "{}: {}",
                    paths.pin_dir.display(),
                    if removed {
                        "removed; guard no longer enforces"
                    } else {
                        "nothing pinned"
                    }
                );
                return Ok(ExitCode::SUCCESS);
            }
            // Before the runtime starts any thread: entering a mount namespace needs a
            // single-threaded process.
            let entered = guard::hostview::enter(view, policy.as_deref())?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let ran = rt.block_on(daemon::run(DaemonConfig {
                policy: entered.policy,
                view: entered.view,
                own_files_outside: entered.own_files_outside,
                paths,
                log_stdout,
                log: LogConfig {
                    max_bytes: log_max_bytes,
                    files: log_files,
                },
                metrics_addr,
                ui: ui || ui_addr.is_some(),
                ui_addr,
                ui_viewers,
                disable_legacy_tiocsti,
                tier,
                lifecycle_events,
                kill_via,
                tag_map_size: tag_map_size.unwrap_or_else(guard::tagmap::default_size),
                policy_reviewed,
                fallback_read_scan,
            }));
            // A blocking task that does not end (a lookup waiting on a runtime's API) must
            // not keep a stopping daemon alive: its pins go on enforcing without it.
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
            ran?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { agent, cmd } => run_tagged(&paths, agent, cmd),
        Cmd::Events {
            follow,
            action,
            agent,
            rule,
            kind,
            since,
            output,
            summary,
            commands,
            all,
        } => {
            let args = EventsArgs {
                filter: Filter {
                    action,
                    agent,
                    rule,
                    kind,
                    since: since.map(EventsArgs::since),
                    view: match (all, commands) {
                        (true, _) => Shown::All,
                        (_, true) => Shown::Commands,
                        _ => Shown::Decisions,
                    },
                },
                follow,
                json: output == Output::Json,
                summary,
                color: std::io::stdout().is_terminal(),
            };
            query::run(&paths.event_log, &args, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ps { output } => {
            let reply: PsReply = api::call(&paths.socket, &Request::Ps)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&reply)?),
                Output::Table => print!("{}", guard::render::ps_tree(&reply.processes)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { output, alive } => status(&paths, output, alive),
        Cmd::OciHook => oci_hook(&paths),
        Cmd::Freeze { root } => tree(&paths, TreeAction::Freeze, root),
        Cmd::Thaw { root } => tree(&paths, TreeAction::Thaw, root),
        Cmd::Kill { root } => tree(&paths, TreeAction::Kill, root),
        Cmd::Export { root, out } => export(&paths, &root, out.as_deref()),
        Cmd::Requests { output, follow } => requests(&paths, output, follow),
        Cmd::Approve {
            id,
            duration,
            scope,
            reason,
        } => {
            let scope = match scope {
                ScopeArg::Process => guard::requests::Scope::Process,
                ScopeArg::Tree => guard::requests::Scope::Tree,
                ScopeArg::Agent => guard::requests::Scope::Agent,
            };
            let r: guard::requests::Request = api::call(
                &paths.socket,
                &Request::Approve {
                    id,
                    for_secs: Some(duration.as_secs()),
                    scope,
                    reason,
                },
            )?;
            print!("{}", guard::render::requests_table(&[r]));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Deny { id, reason } => {
            let r: guard::requests::Request =
                api::call(&paths.socket, &Request::Deny { id, reason })?;
            println!("request {} denied ({} {})", r.id, r.rule, r.destination);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Secrets { command } => secrets(&paths, command),
        Cmd::Policy {
            command: PolicyCmd::Check { file },
        } => match Policy::load(&file) {
            Ok(policy) => {
                for w in policy.warnings() {
                    eprintln!("warning: {w}");
                }
                print!("{}", policy.compile().summary());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Cmd::Policy {
            command: PolicyCmd::Apply { file },
        } => {
            if let Some(f) = &file {
                // Say what is wrong with the file before asking the daemon.
                if let Err(e) = Policy::load(f) {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            }
            let generation: u64 = api::call(&paths.socket, &Request::Apply { policy: file })?;
            println!("policy applied (generation {generation})");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `guard freeze|thaw|kill ROOT`.
fn tree(paths: &Paths, action: TreeAction, root: String) -> anyhow::Result<ExitCode> {
    let r: TreeReply = api::call(&paths.socket, &Request::Tree { action, root })?;
    let done = match action {
        TreeAction::Freeze => "stopped",
        TreeAction::Thaw => "continued",
        TreeAction::Kill => "killed",
    };
    println!(
        "{} tree of root {} ({}): {} processes, {} {done}{}",
        r.agent,
        r.root_pid,
        r.root_start_ns,
        r.report.processes,
        r.report.signalled,
        if r.report.left > 0 {
            format!(", {} not yet", r.report.left)
        } else {
            String::new()
        }
    );
    Ok(if r.report.left > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// `guard requests [--follow]`.
fn requests(paths: &Paths, output: Output, follow: bool) -> anyhow::Result<ExitCode> {
    let mut shown = String::new();
    loop {
        let list: Vec<guard::requests::Request> = api::call(&paths.socket, &Request::Requests)?;
        let text = match output {
            Output::Json => serde_json::to_string_pretty(&list)? + "\n",
            Output::Table => guard::render::requests_table(&list),
        };
        if text != shown {
            print!("{text}");
            shown = text;
        }
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `guard export ROOT`: from the event log, with the daemon's process list when it runs.
fn export(paths: &Paths, root: &str, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let running = match api::call::<PsReply>(&paths.socket, &Request::Ps) {
        Ok(ps) => ps.processes,
        Err(e) => {
            eprintln!("guard: {e}: exporting from the event log only");
            Vec::new()
        }
    };
    let bundle = guard::export::bundle(&paths.event_log, root, &running)?;
    let json = serde_json::to_string_pretty(&bundle)?;
    match out {
        Some(path) => {
            std::fs::write(path, json + "\n").with_context(|| format!("{}", path.display()))?
        }
        None => println!("{json}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Ask the daemon to tag this process, then exec CMD: it starts already tagged.
fn run_tagged(paths: &Paths, agent: Option<String>, cmd: Vec<String>) -> anyhow::Result<ExitCode> {
    let reply: TagReply = api::call(&paths.socket, &Request::Tag { agent })
        .context("refusing to start the command untagged")?;
    if !reply.enforcing {
        bail!("the guard daemon is not enforcing; refusing to start the command untagged");
    }
    if reply.already_tagged {
        eprintln!(
            "guard: already in the tree of agent root {} ({}); it stays the root",
            reply.root_pid, reply.agent
        );
    }
    // Before the capabilities go: setting up mounts needs them.
    if let Some(p) = reply.protections.as_ref().filter(|p| !p.is_empty()) {
        match guard::files::mountns::apply(p) {
            Ok(applied) => {
                for s in applied.skipped {
                    eprintln!("guard: not covered in the private mount namespace: {s}");
                }
            }
            Err(e) => eprintln!(
                "guard: no private mount namespace for protected paths ({e}); the daemon's layers still apply"
            ),
        }
    }
    guard::caps::confine(&reply.drop_capabilities)
        .context("refusing to start the command with capabilities the policy removes")?;
    // Last: installing the filter needs no_new_privs (set above for ordinary users) or
    // CAP_SYS_ADMIN (root keeps its effective capabilities until the exec).
    guard::seccomp::install(reply.daemon_pid)
        .context("refusing to start the command without its seccomp filter")?;
    let err = Command::new(&cmd[0]).args(&cmd[1..]).exec();
    eprintln!("guard: cannot run {}: {err}", cmd[0]);
    Ok(ExitCode::from(127))
}

fn oci_hook(paths: &Paths) -> anyhow::Result<ExitCode> {
    #[derive(serde::Deserialize)]
    struct State {
        id: String,
        pid: u32,
    }
    let state: State = serde_json::from_reader(std::io::stdin().lock())
        .context("reading the container's state (OCI runtime hook input) from stdin")?;
    let reply = api::call::<Option<String>>(
        &paths.socket,
        &Request::ContainerCreated {
            id: state.id.clone(),
            pid: state.pid,
        },
    );
    if let Err(e) = reply {
        eprintln!(
            "guard oci-hook: container {} not classified before it starts: {e:#}",
            state.id
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn status(paths: &Paths, output: Output, alive: bool) -> anyhow::Result<ExitCode> {
    match api::call::<DaemonStatus>(&paths.socket, &Request::Status) {
        Ok(st) => {
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&st)?),
                Output::Table => print!(
                    "{}",
                    guard::render::status(&st, std::io::stdout().is_terminal())
                ),
            }
            // 0: enforcing everything the policy asks for (a rejected policy change is not a
            // failure: the previous policy is in force, and the table says so); 1: not
            // enforcing or unreachable; 2: running, but something meant to be enforced is
            // not loaded (listed as problems).
            Ok(if !st.enforcing {
                ExitCode::FAILURE
            } else if !st.problems.is_empty() && !alive {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Err(api::ClientError::Connect { path, source }) => {
            if !nix::unistd::geteuid().is_root() {
                bail!(
                    "the guard daemon is not running ({path}: {source}); run `guard status` as root to probe the kernel"
                );
            }
            let bpffs = paths
                .pin_dir
                .parent()
                .map_or_else(|| PathBuf::from(paths::BPFFS_ROOT), PathBuf::from);
            let p = probe::probe(&bpffs, true);
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "daemon": null,
                        "enforcing": false,
                        "pinned_links": kernel::Kernel::pinned_links(&paths.pin_dir),
                        "probe": p,
                    }))?
                ),
                Output::Table => {
                    print!("{}", p.render_table(std::io::stdout().is_terminal()));
                    println!("daemon: not running ({path}: {source})");
                }
            }
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

fn secrets(paths: &Paths, command: SecretsCmd) -> anyhow::Result<ExitCode> {
    use guard::secrets::{DETECTORS, walk};
    match command {
        SecretsCmd::Detectors => {
            for d in DETECTORS {
                println!("{:<28} {}", d.name, d.what);
            }
        }
        SecretsCmd::Scan {
            paths: roots,
            output,
        } => {
            for p in &roots {
                std::fs::symlink_metadata(p).with_context(|| format!("{}", p.display()))?;
            }
            let (key, key_note) = walk::cli_key(&paths.event_log)?;
            let report = walk::scan(&roots, &key);
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => print!("{}", guard::render::secrets_report(&report, key_note)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
