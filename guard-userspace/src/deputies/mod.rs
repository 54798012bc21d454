//! Deputies: untagged processes on this host that would act for an agent. The built-in
//! `guard:executors` rules name kinds of them (a tmux server, a local sshd, a bus); tunnels
//! are listeners that forward to a protected endpoint. Neither is known from the policy: the
//! daemon looks at the host every [`RESCAN`] and turns what it finds into endpoint targets
//! (see `net::controller`).
//!
//! What is found:
//! - terminal servers: a tmux or screen process that is not tagged and listens on a unix
//!   socket (any path: `-S`, `TMUX_TMPDIR`); an agent's own server, started in its tree, is
//!   tagged and keeps working;
//! - the user managers' private sockets and the session buses under `/run/user`, and every
//!   socket a bus daemon (`dbus-daemon`, `dbus-broker`) listens on;
//! - every TCP address a process named `sshd` listens on;
//! - the unix sockets of ssh clients that are not tagged (control sockets, unix forwards);
//! - every TCP address an HTTP or SOCKS proxy that is not tagged listens on (by its name);
//! - every TCP address this daemon listens on (its review page and metrics);
//! - forwarders: a listener whose arguments say where it forwards (`ssh -L`, `socat`), an ssh
//!   client listening where its arguments do not say (a forward from its configuration file,
//!   or one added at run time through its control socket or `~C`), or a process that holds a
//!   connection it accepted and, at the same time, one to a protected endpoint.

pub mod forwarders;
pub mod sockets;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

pub use forwarders::{Dest, Forward};

use crate::policy::Discover;
use forwarders::Leads;
use sockets::{Proc, Tables};

/// How often the host is looked at.
pub const RESCAN: Duration = Duration::from_secs(1);

/// A listener that forwards somewhere.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Forwarder {
    pub pid: u32,
    pub comm: String,
    /// Where it listens.
    pub listen: Vec<SocketAddr>,
    /// Where it leads.
    pub to: Dest,
    /// `arguments`, `connections`, or `arguments and connections`.
    pub evidence: &'static str,
}

/// A server found for an executor rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Server {
    pub pid: u32,
    pub comm: String,
    /// Socket path or `@name`; for sshd, the address.
    pub socket: String,
}

/// What the host has now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Servers by kind: unix sockets (terminals, buses, …) or TCP listeners (sshd, notebooks),
    /// sorted, each socket once.
    pub servers: BTreeMap<Discover, Vec<Server>>,
    pub forwarders: Vec<Forwarder>,
    /// This host's addresses: a wildcard listener is reached on each of them.
    pub local_addrs: BTreeSet<IpAddr>,
}

impl Found {
    /// What was found of `kind`.
    pub fn of(&self, kind: Discover) -> &[Server] {
        self.servers.get(&kind).map_or(&[], Vec::as_slice)
    }

    fn add(&mut self, kind: Discover, server: Server) {
        self.servers.entry(kind).or_default().push(server);
    }
}

/// What the scan needs to know from the daemon.
pub trait Context {
    /// Whether `pid` is in an agent's tree.
    fn tagged(&self, pid: u32) -> bool;
    /// Whether a TCP connection to `addr` meets an endpoint rule of the policy.
    fn protected(&self, addr: SocketAddr) -> bool;
}

fn is_terminal(comm: &str) -> bool {
    comm.starts_with("tmux") || comm.eq_ignore_ascii_case("screen")
}

fn is_bus(comm: &str) -> bool {
    comm.starts_with("dbus-daemon") || comm.starts_with("dbus-broker")
}

/// HTTP and SOCKS proxies, by name (`comm`, at most 15 bytes): each leads wherever its
/// client asks.
const PROXIES: &[&str] = &[
    "squid",
    "tinyproxy",
    "privoxy",
    "polipo",
    "microsocks",
    "3proxy",
    "danted",
    "sockd",
    "tor",
    "mitmproxy",
    "mitmdump",
    "mitmweb",
    "cntlm",
    "px",
    "gost",
    "glider",
    "v2ray",
    "xray",
    "sing-box",
    "clash",
    "mihomo",
    "ss-local",
    "sslocal",
    "redsocks",
    "proxy.py",
];

fn is_proxy(comm: &str) -> bool {
    PROXIES.contains(&comm)
}

/// Processes that may be a Jupyter kernel or server (their arguments say).
fn may_be_notebook(comm: &str) -> bool {
    comm.starts_with("python") || comm.starts_with("jupyter") || comm.starts_with("ipykernel")
}

fn is_notebook(p: &Proc) -> bool {
    p.comm.starts_with("jupyter")
        || p.cmdline
            .iter()
            .any(|a| a.contains("ipykernel") || a.contains("jupyter"))
}

/// The kind of executor a running process is: by its name, and for terminal servers and
/// notebooks only when it is not tagged (an agent's own tmux or kernel serves the agent).
fn classify(ctx: &dyn Context, p: &Proc) -> Option<Discover> {
    if p.pid == std::process::id() {
        // This daemon: its review page and metrics listen on TCP, which has no peer
        // credentials to keep a tagged process out.
        Some(Discover::Guard)
    } else if is_terminal(&p.comm) {
        (!ctx.tagged(p.pid)).then_some(Discover::Terminals)
    } else if is_bus(&p.comm) {
        Some(Discover::Dbus)
    } else if p.comm == "sshd" {
        Some(Discover::Sshd)
    } else if may_be_notebook(&p.comm) && is_notebook(p) && !ctx.tagged(p.pid) {
        Some(Discover::Notebooks)
    } else if forwarders::is_ssh_client(&p.comm) && !p.sockets.is_empty() {
        // An ssh client: its unix listeners are control sockets and unix-socket forwards (its
        // TCP listeners are forwarders, below).
        (!ctx.tagged(p.pid)).then_some(Discover::SshClients)
    } else if is_proxy(&p.comm) {
        // An agent's own proxy is tagged: its connections meet the rules themselves.
        (!ctx.tagged(p.pid)).then_some(Discover::Proxies)
    } else {
        None
    }
}

/// Look at the host. `previous` is what the last scan found: a forwarder found by its
/// connections is remembered while it lives and keeps its listener (the connection that
/// showed where it leads may have closed since).
pub fn scan(ctx: &dyn Context, previous: &Found) -> Found {
    let tables = Tables::read();
    let protected_conns: BTreeSet<u64> = tables
        .tcp_established
        .iter()
        .filter(|(_, (_, remote))| ctx.protected(*remote))
        .map(|(inode, _)| *inode)
        .collect();
    // Every process only when some connection leads to a protected endpoint (a forwarder
    // found by its connections); else only the ones named like an executor or forwarder.
    let everyone = !protected_conns.is_empty();
    let me = std::process::id();
    let procs = sockets::processes(|pid, comm| {
        everyone
            || u32::try_from(pid) == Ok(me)
            || is_terminal(comm)
            || is_bus(comm)
            || comm == "sshd"
            || may_be_notebook(comm)
            || is_proxy(comm)
            || forwarders::reads_arguments(comm)
    });
    let mut found = Found {
        local_addrs: local_addrs(),
        ..Found::default()
    };
    socket_files(&mut found);
    for p in &procs {
        let unix = || {
            p.sockets
                .iter()
                .filter_map(|i| tables.unix_listeners.get(i))
        };
        let server = |socket: String| Server {
            pid: p.pid,
            comm: p.comm.clone(),
            socket,
        };
        let tcp = || {
            p.sockets
                .iter()
                .filter_map(|i| tables.tcp_listeners.get(i))
                .map(ToString::to_string)
        };
        if let Some(kind) = classify(ctx, p) {
            let sockets: Vec<String> = if kind.listeners() {
                tcp().collect()
            } else if kind == Discover::SshClients {
                unix().map(|path| control_path(path)).collect()
            } else {
                unix().cloned().collect()
            };
            for socket in sockets {
                found.add(kind, server(socket));
            }
        }
        if !ctx.tagged(p.pid) {
            found
                .forwarders
                .extend(forwarders_of(p, &tables, &protected_conns));
        }
    }
    for list in found.servers.values_mut() {
        list.sort_by(|a, b| a.socket.cmp(&b.socket).then(a.pid.cmp(&b.pid)));
        list.dedup_by(|a, b| a.socket == b.socket);
    }
    found
        .forwarders
        .extend(still_forwarding(previous, &found, &tables));
    found.forwarders.sort();
    found.forwarders.dedup();
    found
}

/// The forwarders `previous` found by their connections (a client's, or the server
/// `kubectl port-forward` reaches pods through, which it may reconnect to) that this scan did
/// not see again but that still run and still listen where they did.
fn still_forwarding(previous: &Found, now: &Found, tables: &Tables) -> Vec<Forwarder> {
    previous
        .forwarders
        .iter()
        .filter(|f| f.evidence != "arguments")
        .filter(|f| {
            !now.forwarders
                .iter()
                .any(|n| n.pid == f.pid && n.to == f.to)
        })
        .filter(|f| {
            std::fs::read_to_string(format!("/proc/{}/comm", f.pid))
                .is_ok_and(|c| c.trim_end() == f.comm)
        })
        .filter(|f| {
            f.listen
                .iter()
                .all(|l| tables.tcp_listeners.values().any(|t| t == l))
        })
        .cloned()
        .collect()
}

/// The forwards of one process: by its arguments, or by what it holds.
fn forwarders_of(p: &Proc, tables: &Tables, protected: &BTreeSet<u64>) -> Vec<Forwarder> {
    let listeners: Vec<SocketAddr> = p
        .sockets
        .iter()
        .filter_map(|i| tables.tcp_listeners.get(i).copied())
        .collect();
    if listeners.is_empty() {
        return Vec::new();
    }
    // Its connections: accepted ones (the local port is a listener's) and its own.
    let (accepted, own): (Vec<_>, Vec<_>) = p
        .sockets
        .iter()
        .filter_map(|i| tables.tcp_established.get(i).map(|c| (i, c)))
        .partition(|(_, (local, _))| listeners.iter().any(|l| l.port() == local.port()));
    let forwarder = |listen: Vec<SocketAddr>, to: Dest, evidence| Forwarder {
        pid: p.pid,
        comm: p.comm.clone(),
        listen,
        to,
        evidence,
    };
    let mut out = Vec::new();
    let mut said: BTreeSet<SocketAddr> = BTreeSet::new();
    for f in forwarders::from_arguments(&p.comm, &p.cmdline) {
        let listen: Vec<SocketAddr> = listeners
            .iter()
            .copied()
            .filter(|l| f.listen_port.is_none_or(|port| l.port() == port))
            .collect();
        if listen.is_empty() {
            continue;
        }
        said.extend(&listen);
        match f.leads {
            Leads::Dest(to) => out.push(forwarder(listen, to, "arguments")),
            Leads::ItsServer => out.extend(own.iter().map(|(_, (_, remote))| {
                forwarder(
                    listen.clone(),
                    Dest::at(*remote),
                    "arguments and connections",
                )
            })),
        }
    }
    // An ssh client listens only to forward (`LocalForward`, `DynamicForward`): a listener its
    // arguments do not account for leads where its configuration file, or a forward added
    // since (`ssh -O forward`, `~C`), says, through a server whose connections do not show it.
    // So do the cloud and bastion tunnel clients, whose arguments name no address.
    let unsaid: Vec<SocketAddr> = listeners
        .iter()
        .copied()
        .filter(|l| !said.contains(l))
        .collect();
    if forwarders::listens_to_forward(&p.comm) && !unsaid.is_empty() {
        out.push(forwarder(unsaid, Dest::Unsaid, "listeners"));
    }
    // An accepted connection held together with one to a protected endpoint.
    if !accepted.is_empty() {
        for (_, (_, remote)) in own.iter().filter(|(i, _)| protected.contains(i)) {
            out.push(forwarder(
                listeners.clone(),
                Dest::at(*remote),
                "connections",
            ));
        }
    }
    out
}

/// The name a client connects to for an ssh control socket: OpenSSH binds `PATH.` and 16
/// random characters, then links the socket to `PATH` and removes the bound name, so the
/// kernel's table shows a name that no longer exists. Other sockets as they are.
fn control_path(bound: &str) -> String {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = |p: &str| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket());
    match bound.rsplit_once('.') {
        Some((path, random)) if random.len() == 16 && !is_socket(bound) && is_socket(path) => {
            path.to_owned()
        }
        _ => bound.to_owned(),
    }
}

/// The sockets found by their file names, no process looked at: the user managers' private
/// sockets and session buses, X11 and Wayland displays, editors' IPC sockets.
fn socket_files(found: &mut Found) {
    for path in run_user_sockets("systemd/private") {
        found.add(Discover::SystemdUsers, file_server("user manager", &path));
    }
    for path in run_user_sockets("bus") {
        found.add(Discover::Dbus, file_server("session bus", &path));
    }
    for path in sockets_in("/tmp/.X11-unix", "X", "") {
        // X clients try the abstract name first.
        found.add(
            Discover::Desktop,
            file_server("display", &format!("@{path}")),
        );
        found.add(Discover::Desktop, file_server("display", &path));
    }
    for run_user in run_user_dirs() {
        for path in sockets_in(&run_user, "wayland-", "") {
            found.add(Discover::Desktop, file_server("display", &path));
        }
        for path in sockets_in(&run_user, "vscode-ipc-", ".sock") {
            found.add(Discover::Ide, file_server("editor IPC", &path));
        }
    }
    for path in sockets_in("/tmp", "vscode-ipc-", ".sock") {
        found.add(Discover::Ide, file_server("editor IPC", &path));
    }
}

/// `/run/user/*/NAME` that exist as sockets.
fn run_user_sockets(name: &str) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    let mut out: Vec<String> = run_user_dirs()
        .into_iter()
        .map(|d| std::path::Path::new(&d).join(name))
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket()))
        .filter_map(|p| p.to_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

/// Every `/run/user/UID`.
fn run_user_dirs() -> Vec<String> {
    std::fs::read_dir("/run/user")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.path().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Sockets in `dir` named `PREFIX…SUFFIX`.
fn sockets_in(dir: &str, prefix: &str, suffix: &str) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(prefix)
                && name.ends_with(suffix)
                && e.file_type().is_ok_and(|t| t.is_socket())
        })
        .filter_map(|e| e.path().to_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

/// A socket file found by its name (no process looked at).
fn file_server(what: &str, socket: &str) -> Server {
    Server {
        pid: 0,
        comm: what.to_owned(),
        socket: socket.to_owned(),
    }
}

/// The addresses of this host's interfaces (loopback included).
fn local_addrs() -> BTreeSet<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return BTreeSet::new();
    };
    addrs
        .filter_map(|a| {
            let addr = a.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

/// The networks a listener on `addr` is reached at: all of loopback and every local address
/// for a wildcard listener, else its own address.
pub fn reached_at(addr: SocketAddr, local: &BTreeSet<IpAddr>) -> Vec<ipnet::IpNet> {
    use ipnet::IpNet;
    let ip = crate::policy::canonical_addr(addr.ip());
    if !ip.is_unspecified() {
        return vec![IpNet::from(ip)];
    }
    let mut out: Vec<IpNet> = vec![
        "127.0.0.0/8".parse().expect("loopback v4"),
        "::1/128".parse().expect("loopback v6"),
    ];
    out.extend(
        local
            .iter()
            .filter(|a| !a.is_loopback())
            .filter(|a| ip.is_ipv6() || a.is_ipv4())
            .map(|a| IpNet::from(*a)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_is_every_local_address() {
        let local: BTreeSet<IpAddr> = ["127.0.0.1", "10.9.0.2", "fd00::2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let nets = |a: &str| -> Vec<String> {
            reached_at(a.parse().unwrap(), &local)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(nets("127.0.0.1:22"), ["127.0.0.1/32"]);
        assert_eq!(
            nets("0.0.0.0:22"),
            ["127.0.0.0/8", "::1/128", "10.9.0.2/32"]
        );
        assert_eq!(
            nets("[::]:22"),
            ["127.0.0.0/8", "::1/128", "10.9.0.2/32", "fd00::2/128"]
        );
    }
}
