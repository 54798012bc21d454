//! What a forwarder was told to forward, from its arguments: `ssh -L`, `ssh -o LocalForward`,
//! `ssh -D` (SOCKS: anywhere), `socat TCP-LISTEN:… TCP:host:port`, `kubectl port-forward` and
//! `kubectl proxy` (through the API server they hold a connection to). `ssh -L` connects to a
//! bastion, not to the target, so its connections do not show where it leads; its arguments
//! do. An ssh client's listener its arguments do not explain leads where nothing here can
//! tell ([`Dest::Unsaid`]).

use std::fmt;

/// Where a forwarder's accepted connections go.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dest {
    /// Host name or address literal, as written, and a port.
    At { host: String, port: u16 },
    /// Wherever its client asks (a SOCKS proxy): every protected endpoint.
    Anywhere,
    /// Where its configuration says, not its arguments (an ssh client's `LocalForward` in a
    /// file, or a forward added at run time): every protected endpoint, as nothing tells
    /// which.
    Unsaid,
}

impl Dest {
    /// An address and port, as a destination.
    pub fn at(addr: std::net::SocketAddr) -> Self {
        Self::At {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::At { host, port } => write!(f, "{host}:{port}"),
            Self::Anywhere => f.write_str("any destination (SOCKS)"),
            Self::Unsaid => f.write_str("a destination its arguments do not say"),
        }
    }
}

/// What the arguments say a forwarder leads to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Leads {
    Dest(Dest),
    /// Through the server it holds a connection to (`kubectl port-forward` and `kubectl
    /// proxy` reach pods and services through the API server): that connection's endpoint.
    ItsServer,
}

/// A forward the arguments ask for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Forward {
    /// The local port it listens on; `None` when the arguments do not say (socat's and
    /// kubectl's listeners are then whatever they listen on).
    pub listen_port: Option<u16>,
    pub leads: Leads,
}

/// Comms whose arguments are read.
pub fn reads_arguments(comm: &str) -> bool {
    matches!(comm, "socat" | "kubectl") || listens_to_forward(comm)
}

/// Comms that listen on TCP only to forward: every listener is a forward, said in the
/// arguments or not. ssh's client (`LocalForward`, `DynamicForward`), and the clients that
/// open a local port into a cloud's or a bastion's network, whose arguments name an instance
/// or a target by id, not an address: Cloud SQL and AlloyDB's auth proxies, AWS Session
/// Manager's plugin (`aws ssm start-session … PortForwarding…`), Teleport's `tsh proxy`,
/// HashiCorp Boundary's `boundary connect` (`comm` holds 15 bytes of the name).
pub fn listens_to_forward(comm: &str) -> bool {
    is_ssh_client(comm)
        || matches!(
            comm,
            "cloud-sql-proxy"
                | "cloud_sql_proxy"
                | "alloydb-auth-pr"
                | "session-manager"
                | "tsh"
                | "boundary"
        )
}

/// ssh's client (and autossh, which runs it).
pub fn is_ssh_client(comm: &str) -> bool {
    matches!(comm, "ssh" | "autossh")
}

/// The forwards `cmdline` asks for.
pub fn from_arguments(comm: &str, cmdline: &[String]) -> Vec<Forward> {
    match comm {
        "ssh" | "autossh" => ssh(cmdline),
        "socat" => socat(cmdline),
        "kubectl" => kubectl(cmdline),
        _ => Vec::new(),
    }
}

fn ssh(args: &[String]) -> Vec<Forward> {
    let mut out = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if let Some(rest) = a.strip_prefix("-L") {
            out.extend(
                value(rest, &mut it)
                    .as_deref()
                    .and_then(local_forward_colons),
            );
        } else if let Some(rest) = a.strip_prefix("-D") {
            out.extend(value(rest, &mut it).as_deref().and_then(dynamic_forward));
        } else if let Some(rest) = a.strip_prefix("-o") {
            out.extend(value(rest, &mut it).as_deref().and_then(forward_option));
        } else if a.starts_with('-') && a.len() == 2 && takes_value(a) {
            it.next();
        }
    }
    out
}

/// An option's value: the rest of its word, or the next word.
fn value<'a>(rest: &str, it: &mut impl Iterator<Item = &'a String>) -> Option<String> {
    if rest.is_empty() {
        it.next().cloned()
    } else {
        Some(rest.to_owned())
    }
}

/// `kubectl [flags] port-forward … [LOCAL:]REMOTE …` and `kubectl proxy`: listeners that
/// lead through the API server.
fn kubectl(args: &[String]) -> Vec<Forward> {
    let forwards = args
        .iter()
        .skip(1)
        .any(|a| a == "port-forward" || a == "proxy");
    if !forwards {
        return Vec::new();
    }
    vec![Forward {
        listen_port: None,
        leads: Leads::ItsServer,
    }]
}

/// ssh options that take a value (so the value is not read as an option).
fn takes_value(flag: &str) -> bool {
    "BbcDEeFIiJlmOopQRSWw".contains(&flag[1..])
}

/// `[bind:]port:host:hostport`, IPv6 literals in brackets.
fn local_forward_colons(spec: &str) -> Option<Forward> {
    let parts = split_colons(spec);
    let (port, host, hostport) = match parts.as_slice() {
        [p, h, hp] => (p, h, hp),
        [_bind, p, h, hp] => (p, h, hp),
        _ => return None,
    };
    Some(Forward {
        listen_port: Some(port.parse().ok()?),
        leads: Leads::Dest(Dest::At {
            host: host.trim_matches(['[', ']']).to_owned(),
            port: hostport.parse().ok()?,
        }),
    })
}

/// `[bind:]port` of a dynamic (SOCKS) forward.
fn dynamic_forward(spec: &str) -> Option<Forward> {
    let port = split_colons(spec).pop()?;
    Some(Forward {
        listen_port: Some(port.parse().ok()?),
        leads: Leads::Dest(Dest::Anywhere),
    })
}

/// `LocalForward=[bind:]port host:hostport` or `DynamicForward=[bind:]port` (also with a
/// space after the name).
fn forward_option(opt: &str) -> Option<Forward> {
    let (name, value) = opt.split_once(['=', ' '])?;
    let mut words = value.split_whitespace();
    let listen = words.next()?;
    let port = listen.rsplit(':').next()?;
    if name.eq_ignore_ascii_case("DynamicForward") {
        return dynamic_forward(port);
    }
    if !name.eq_ignore_ascii_case("LocalForward") {
        return None;
    }
    let target = words.next()?;
    local_forward_colons(&format!("{port}:{target}"))
}

/// Split on colons outside brackets.
fn split_colons(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut depth = 0;
    for c in s.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ':' if depth == 0 => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

/// socat's second address, when the first listens: `TCP:host:port`, `TCP4:`, `TCP6:`,
/// `TCP-CONNECT:`, `OPENSSL:`.
fn socat(args: &[String]) -> Vec<Forward> {
    let addrs: Vec<&String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let listens = addrs.iter().any(|a| {
        let kind = a.split(':').next().unwrap_or("").to_ascii_uppercase();
        kind.contains("LISTEN") || kind.ends_with("-L")
    });
    if !listens {
        return Vec::new();
    }
    addrs
        .iter()
        .filter_map(|a| {
            let (kind, rest) = a.split_once(':')?;
            let connects = matches!(
                kind.to_ascii_uppercase().as_str(),
                "TCP"
                    | "TCP4"
                    | "TCP6"
                    | "TCP-CONNECT"
                    | "TCP4-CONNECT"
                    | "TCP6-CONNECT"
                    | "OPENSSL"
                    | "SSL"
            );
            if !connects {
                return None;
            }
            let target = rest.split(',').next()?;
            let (host, port) = target.rsplit_once(':')?;
            Some(Forward {
                listen_port: None,
                leads: Leads::Dest(Dest::At {
                    host: host.trim_matches(['[', ']']).to_owned(),
                    port: port.parse().ok()?,
                }),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    fn fwd(listen: Option<u16>, host: &str, port: u16) -> Forward {
        Forward {
            listen_port: listen,
            leads: Leads::Dest(Dest::At {
                host: host.to_owned(),
                port,
            }),
        }
    }

    #[test]
    fn ssh_dynamic_forwards_lead_anywhere() {
        let socks = |port| Forward {
            listen_port: Some(port),
            leads: Leads::Dest(Dest::Anywhere),
        };
        assert_eq!(
            from_arguments("ssh", &args("ssh -N -D 1080 -D127.0.0.1:1081 host")),
            [socks(1080), socks(1081)]
        );
        let mut a = args("ssh -o");
        a.push("DynamicForward [::1]:1082".into());
        a.push("host".into());
        assert_eq!(from_arguments("ssh", &a), [socks(1082)]);
        assert_eq!(
            from_arguments("ssh", &args("ssh -oDynamicForward=1083 host")),
            [socks(1083)]
        );
    }

    #[test]
    fn kubectl_forwards_through_its_server() {
        let through = [Forward {
            listen_port: None,
            leads: Leads::ItsServer,
        }];
        assert_eq!(
            from_arguments(
                "kubectl",
                &args("kubectl -n prod port-forward svc/db 15432:5432")
            ),
            through
        );
        assert_eq!(
            from_arguments("kubectl", &args("kubectl proxy --port 8001")),
            through
        );
        assert_eq!(from_arguments("kubectl", &args("kubectl get pods")), []);
    }

    #[test]
    fn ssh_local_forwards_in_every_spelling() {
        assert_eq!(
            from_arguments(
                "ssh",
                &args(
                    "ssh -N -p 22 -L 15432:10.20.0.5:5432 -L127.0.0.1:8080:db.internal:80 bastion"
                )
            ),
            [
                fwd(Some(15432), "10.20.0.5", 5432),
                fwd(Some(8080), "db.internal", 80)
            ]
        );
        assert_eq!(
            from_arguments(
                "ssh",
                &args("ssh -o LocalForward=9000 [fd00::5]:5432 -i k host")
            ),
            []
        );
        let mut a = args("ssh -o");
        a.push("LocalForward=9000 [fd00::5]:5432".into());
        a.push("host".into());
        assert_eq!(
            from_arguments("ssh", &a),
            [fwd(Some(9000), "fd00::5", 5432)]
        );
        assert_eq!(
            from_arguments("ssh", &args("ssh -L [::1]:7000:[fd00::7]:22 h")),
            [fwd(Some(7000), "fd00::7", 22)]
        );
        // -p's value is not an option; a plain ssh forwards nothing.
        assert_eq!(from_arguments("ssh", &args("ssh -p -L host")), []);
        assert_eq!(
            from_arguments("ssh", &args("ssh host ls -L")),
            Vec::<Forward>::new()
        );
    }

    #[test]
    fn socat_listen_then_connect() {
        assert_eq!(
            from_arguments(
                "socat",
                &args("socat -d TCP-LISTEN:15432,fork,reuseaddr,bind=127.0.0.1 TCP:10.20.0.5:5432")
            ),
            [fwd(None, "10.20.0.5", 5432)]
        );
        assert_eq!(
            from_arguments(
                "socat",
                &args("socat TCP6-LISTEN:80,fork TCP6:[fd00::1]:8080,nodelay")
            ),
            [fwd(None, "fd00::1", 8080)]
        );
        // Not listening: a client, not a forwarder.
        assert_eq!(
            from_arguments("socat", &args("socat - TCP:10.0.0.1:80")),
            []
        );
    }
}
