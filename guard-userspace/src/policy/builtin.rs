//! Built-in rule sets: what every policy gets unless it says otherwise. Each set is a spec
//! field (`executors`, `startupFiles`) with one action for the whole set and an override per
//! entry; an entry compiles into an ordinary endpoint or path rule named `guard:SET/ENTRY`,
//! so enforcement, events and status treat it like any rule.
//!
//! - `guard:executors`: the channels through which an untagged process runs code on an
//!   agent's behalf (a terminal multiplexer's server, the service manager, D-Bus, the job
//!   schedulers, a local sshd).
//! - `guard:startup-files`: files that untagged programs read and act on later (shell rc
//!   files, ssh and git configuration, autostart entries): a tagged process must not write them.

use serde::Deserialize;

use super::{
    compile::{CompiledEndpointRule, CompiledPathRule, DELETE, WRITE},
    model::{Action, BuiltinAction, Mode, Protocol},
    pattern::PathSpec,
};

/// The rule that keeps tagged processes off guard's own TCP ports.
pub const SELF_PORTS: &str = "guard:self/ports";

/// First rule id of the built-in rules (below guard's own internal rules).
pub const FIRST_BUILTIN_ID: u32 = 0xfffe_0000;

/// `spec.executors`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Executors {
    /// Every entry's action unless the entry sets its own.
    #[serde(default)]
    pub action: BuiltinAction,
    /// Overrides `spec.mode` for the whole set.
    #[serde(default)]
    pub mode: Option<Mode>,
    pub terminals: Option<BuiltinAction>,
    pub systemd: Option<BuiltinAction>,
    pub dbus: Option<BuiltinAction>,
    pub scheduler: Option<BuiltinAction>,
    pub sshd: Option<BuiltinAction>,
    pub desktop: Option<BuiltinAction>,
    pub ide: Option<BuiltinAction>,
    pub notebooks: Option<BuiltinAction>,
    pub proxies: Option<BuiltinAction>,
    pub ssh: Option<BuiltinAction>,
}

/// `spec.startupFiles`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StartupFiles {
    #[serde(default)]
    pub action: BuiltinAction,
    #[serde(default)]
    pub mode: Option<Mode>,
    pub shell: Option<BuiltinAction>,
    pub ssh: Option<BuiltinAction>,
    pub autostart: Option<BuiltinAction>,
    pub git: Option<BuiltinAction>,
}

/// Where the targets of a built-in endpoint rule come from besides its fixed ones: the daemon
/// looks at the host (the deputies scan) and adds what it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Discover {
    /// Sockets of tmux and screen servers that are not tagged.
    Terminals,
    /// The user managers' private sockets (`/run/user/UID/systemd/private`).
    SystemdUsers,
    /// Session buses (`/run/user/UID/bus`) and every socket a bus daemon listens on.
    Dbus,
    /// Every address and port a local sshd listens on.
    Sshd,
    /// X11 and Wayland display sockets (input injection: `xdotool type`).
    Desktop,
    /// The editors' CLI IPC sockets (`VSCODE_IPC_HOOK_CLI`: VS Code, Cursor, Windsurf).
    Ide,
    /// Every address and port a Jupyter kernel or server listens on.
    Notebooks,
    /// Every address and port an HTTP or SOCKS proxy on this host listens on.
    Proxies,
    /// The unix sockets of ssh clients that are not tagged: control sockets (`ControlMaster`)
    /// and unix-socket forwards.
    SshClients,
    /// Every address and port this daemon listens on (the review page, metrics).
    Guard,
}

impl Discover {
    pub const ALL: [Self; 10] = [
        Self::Terminals,
        Self::SystemdUsers,
        Self::Dbus,
        Self::Sshd,
        Self::Desktop,
        Self::Ide,
        Self::Notebooks,
        Self::Proxies,
        Self::SshClients,
        Self::Guard,
    ];

    /// How status names what was found of this kind.
    pub fn name(self) -> &'static str {
        match self {
            Self::Terminals => "terminals",
            Self::SystemdUsers => "systemd",
            Self::Dbus => "dbus",
            Self::Sshd => "sshd",
            Self::Desktop => "desktop",
            Self::Ide => "ide",
            Self::Notebooks => "notebooks",
            Self::Proxies => "proxies",
            Self::SshClients => "ssh",
            Self::Guard => "guard",
        }
    }

    /// Whether what is found is TCP listeners (else unix sockets).
    pub fn listeners(self) -> bool {
        matches!(
            self,
            Self::Sshd | Self::Notebooks | Self::Proxies | Self::Guard
        )
    }
}

/// One entry of a built-in set, as `guard status` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltinEntry {
    pub name: String,
    /// `None`: turned off (`allow`).
    pub action: Option<Action>,
    pub mode: Mode,
    /// The spec field that set the action, or `default`.
    pub set_by: String,
    /// What the entry covers, in words.
    pub covers: &'static str,
}

/// Fixed unix sockets of the system service manager and the system bus.
const SYSTEMD_SOCKETS: &[&str] = &["/run/systemd/private"];
const DBUS_SOCKETS: &[&str] = &[
    "/run/dbus/system_bus_socket",
    "/var/run/dbus/system_bus_socket",
];

/// Job spools: writing a job, whoever's client does it (`at` and `crontab` write here). The
/// clients themselves are not protected: a rule protects a file by identity, and where they are
/// links to a multi-call binary (busybox) that would take every other command with them.
const SCHEDULER_PATHS: &[&str] = &[
    "/var/spool/cron",
    "/var/spool/at",
    "/var/spool/anacron",
    "/etc/crontab",
    "/etc/cron.d",
    "/etc/cron.hourly",
    "/etc/cron.daily",
    "/etc/cron.weekly",
    "/etc/cron.monthly",
    "/etc/anacrontab",
];

const SHELL_FILES: &[&str] = &[
    "~/.bashrc",
    "~/.bash_profile",
    "~/.bash_login",
    "~/.bash_logout",
    "~/.profile",
    "~/.zshrc",
    "~/.zshenv",
    "~/.zprofile",
    "~/.zlogin",
    "~/.config/fish",
    "~/.inputrc",
    "/etc/profile",
    "/etc/profile.d",
    "/etc/bash.bashrc",
    "/etc/environment",
    "/etc/zsh",
];
const SSH_FILES: &[&str] = &[
    "~/.ssh/authorized_keys",
    "~/.ssh/authorized_keys2",
    "~/.ssh/config",
    "~/.ssh/rc",
    "~/.ssh/environment",
    "/etc/ssh",
];
const AUTOSTART_FILES: &[&str] = &[
    "~/.config/systemd/user",
    "~/.config/autostart",
    "/etc/systemd/system",
    "/etc/xdg/autostart",
    "/etc/rc.local",
];
const GIT_FILES: &[&str] = &["~/.gitconfig", "~/.config/git", "/etc/gitconfig"];

/// The compiled built-in rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Builtins {
    pub endpoints: Vec<CompiledEndpointRule>,
    pub paths: Vec<CompiledPathRule>,
    /// Every entry, on or off.
    pub entries: Vec<BuiltinEntry>,
}

/// What an entry compiles into.
enum Target {
    /// An endpoint rule on these unix sockets, plus what the host scan finds.
    Sockets(&'static [&'static str], Discover),
    /// An endpoint rule on whatever the host scan finds listening (TCP).
    Listeners(Discover),
    /// A path rule.
    Paths(&'static [&'static str], u32),
}

/// One entry of a set: its name, what it covers (for status) and what it compiles into.
struct EntrySpec {
    name: &'static str,
    covers: &'static str,
    target: Target,
}

const EXECUTORS: &[EntrySpec] = &[
    EntrySpec {
        name: "terminals",
        covers: "tmux and screen servers outside the agent's tree",
        target: Target::Sockets(&[], Discover::Terminals),
    },
    EntrySpec {
        name: "systemd",
        covers: "the system and user service managers' private sockets (systemd-run, systemctl)",
        target: Target::Sockets(SYSTEMD_SOCKETS, Discover::SystemdUsers),
    },
    EntrySpec {
        name: "dbus",
        covers: "the system and session buses (starting units, portals, session services)",
        target: Target::Sockets(DBUS_SOCKETS, Discover::Dbus),
    },
    EntrySpec {
        name: "sshd",
        covers: "a local sshd, on every address and port it listens on",
        target: Target::Listeners(Discover::Sshd),
    },
    EntrySpec {
        name: "desktop",
        covers: "X11 and Wayland display sockets: keystrokes typed into the human's windows \
                 (xdotool, ydotool)",
        target: Target::Sockets(&[], Discover::Desktop),
    },
    EntrySpec {
        name: "ide",
        covers: "the editors' CLI IPC sockets (VSCODE_IPC_HOOK_CLI of VS Code, Cursor, \
                 Windsurf): commands run by the editor",
        target: Target::Sockets(&[], Discover::Ide),
    },
    EntrySpec {
        name: "notebooks",
        covers: "Jupyter kernels and servers on this host: code they run for whoever connects",
        target: Target::Listeners(Discover::Notebooks),
    },
    EntrySpec {
        name: "proxies",
        covers: "HTTP and SOCKS proxies on this host (squid, tinyproxy, microsocks, dante, tor, \
                 mitmproxy, …): they lead anywhere, protected endpoints included",
        target: Target::Listeners(Discover::Proxies),
    },
    EntrySpec {
        name: "ssh",
        covers: "the human's open ssh connections: their control sockets (ControlMaster: `ssh \
                 -S SOCKET host CMD` runs commands on the remote host with no login) and their \
                 unix-socket forwards",
        target: Target::Sockets(&[], Discover::SshClients),
    },
    EntrySpec {
        name: "scheduler",
        covers: "at, batch, cron and anacron spools and /etc/cron*: the jobs at, batch and \
                 crontab write",
        target: Target::Paths(SCHEDULER_PATHS, WRITE | DELETE),
    },
];

const STARTUP_FILES: &[EntrySpec] = &[
    EntrySpec {
        name: "shell",
        covers: "shell rc and profile files, in every home and system-wide",
        target: Target::Paths(SHELL_FILES, WRITE | DELETE),
    },
    EntrySpec {
        name: "ssh",
        covers: "authorized_keys, ssh config and rc files, /etc/ssh",
        target: Target::Paths(SSH_FILES, WRITE | DELETE),
    },
    EntrySpec {
        name: "autostart",
        covers: "systemd user and system units, desktop autostart entries, rc.local",
        target: Target::Paths(AUTOSTART_FILES, WRITE | DELETE),
    },
    EntrySpec {
        name: "git",
        covers: "global git configuration (hooksPath, fsmonitor, aliases)",
        target: Target::Paths(GIT_FILES, WRITE | DELETE),
    },
];

/// One set as written: its field name, its rule-name prefix, the action and mode for every
/// entry, and each entry's override.
struct SetSpec {
    field: &'static str,
    prefix: &'static str,
    action: BuiltinAction,
    mode: Mode,
    entries: &'static [EntrySpec],
    overrides: [Option<BuiltinAction>; 10],
}

impl Builtins {
    /// Compile both sets; `spec_mode` applies where a set sets no mode of its own.
    pub fn compile(executors: &Executors, startup: &StartupFiles, spec_mode: Mode) -> Self {
        let ex = executors;
        let st = startup;
        let sets = [
            SetSpec {
                field: "executors",
                prefix: "guard:executors",
                action: ex.action,
                mode: ex.mode.unwrap_or(spec_mode),
                entries: EXECUTORS,
                overrides: [
                    ex.terminals,
                    ex.systemd,
                    ex.dbus,
                    ex.sshd,
                    ex.desktop,
                    ex.ide,
                    ex.notebooks,
                    ex.proxies,
                    ex.ssh,
                    ex.scheduler,
                ],
            },
            SetSpec {
                field: "startupFiles",
                prefix: "guard:startup-files",
                action: st.action,
                mode: st.mode.unwrap_or(spec_mode),
                entries: STARTUP_FILES,
                overrides: [
                    st.shell,
                    st.ssh,
                    st.autostart,
                    st.git,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                ],
            },
        ];
        let mut b = Self::default();
        let mut ids = FIRST_BUILTIN_ID..;
        for set in &sets {
            for (entry, own) in set.entries.iter().zip(set.overrides) {
                let (action, set_by) = match own {
                    Some(a) => (a, format!("spec.{}.{}", set.field, entry.name)),
                    None if set.action != BuiltinAction::Deny => {
                        (set.action, format!("spec.{}.action", set.field))
                    }
                    None => (set.action, "default".to_owned()),
                };
                let name = format!("{}/{}", set.prefix, entry.name);
                b.entries.push(BuiltinEntry {
                    name: name.clone(),
                    action: action.action(),
                    mode: set.mode,
                    set_by,
                    covers: entry.covers,
                });
                let Some(action) = action.action() else {
                    continue;
                };
                let id = ids.next().unwrap_or(u32::MAX);
                b.add(id, name, action, set.mode, &entry.target);
            }
        }
        // Not tunable: the review page's approver token is the only other thing between a
        // tagged process and approving its own requests.
        b.entries.push(BuiltinEntry {
            name: SELF_PORTS.into(),
            action: Some(Action::Deny),
            mode: Mode::Enforce,
            set_by: "built in".into(),
            covers: "this daemon's review page and metrics ports",
        });
        let id = ids.next().unwrap_or(u32::MAX);
        let target = Target::Listeners(Discover::Guard);
        b.add(id, SELF_PORTS.into(), Action::Deny, Mode::Enforce, &target);
        b
    }

    fn add(&mut self, id: u32, name: String, action: Action, mode: Mode, target: &Target) {
        let endpoint = |protocol, unix: &[&str], discover| CompiledEndpointRule {
            id,
            name: name.clone(),
            action,
            mode,
            protocol,
            ports: Vec::new(),
            networks: Vec::new(),
            hosts: Vec::new(),
            unix: unix.iter().map(|s| (*s).to_owned()).collect(),
            discover: Some(discover),
        };
        match *target {
            Target::Sockets(unix, discover) => {
                self.endpoints.push(endpoint(Protocol::Any, unix, discover));
            }
            Target::Listeners(discover) => {
                self.endpoints.push(endpoint(Protocol::Tcp, &[], discover));
            }
            Target::Paths(paths, access) => self.paths.push(CompiledPathRule {
                id,
                name,
                access,
                action,
                mode,
                paths: paths.iter().filter_map(|p| PathSpec::internal(p)).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_on_by_default_and_each_can_be_turned_off() {
        let b = Builtins::compile(
            &Executors::default(),
            &StartupFiles::default(),
            Mode::Enforce,
        );
        let names: Vec<&str> = b.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "guard:executors/terminals",
                "guard:executors/systemd",
                "guard:executors/dbus",
                "guard:executors/sshd",
                "guard:executors/desktop",
                "guard:executors/ide",
                "guard:executors/notebooks",
                "guard:executors/proxies",
                "guard:executors/ssh",
                "guard:executors/scheduler",
                "guard:startup-files/shell",
                "guard:startup-files/ssh",
                "guard:startup-files/autostart",
                "guard:startup-files/git",
                SELF_PORTS,
            ]
        );
        assert!(b.entries.iter().all(|e| e.action == Some(Action::Deny)
            && (e.set_by == "default" || e.name == SELF_PORTS)
            && e.mode == Mode::Enforce));
        assert_eq!((b.endpoints.len(), b.paths.len()), (10, 5));
        // Every fixed path is a valid rule path.
        assert_eq!(b.paths[0].paths.len(), SCHEDULER_PATHS.len());
        assert_eq!(b.paths[1].paths.len(), SHELL_FILES.len());
        let mut ids: Vec<u32> = b
            .endpoints
            .iter()
            .map(|r| r.id)
            .chain(b.paths.iter().map(|r| r.id))
            .collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            (FIRST_BUILTIN_ID..FIRST_BUILTIN_ID + 15).collect::<Vec<_>>()
        );

        let off = Executors {
            action: BuiltinAction::Audit,
            terminals: Some(BuiltinAction::Allow),
            sshd: Some(BuiltinAction::Kill),
            ..Executors::default()
        };
        let b = Builtins::compile(&off, &StartupFiles::default(), Mode::Enforce);
        let e = |n: &str| b.entries.iter().find(|e| e.name.ends_with(n)).unwrap();
        assert_eq!(e("terminals").action, None);
        assert_eq!(e("terminals").set_by, "spec.executors.terminals");
        assert_eq!(e("sshd").action, Some(Action::Kill));
        assert_eq!(e("dbus").action, Some(Action::Audit));
        assert_eq!(e("dbus").set_by, "spec.executors.action");
        assert_eq!(e("self/ports").action, Some(Action::Deny), "not tunable");
        assert_eq!(b.endpoints.len(), 9);
    }
}
