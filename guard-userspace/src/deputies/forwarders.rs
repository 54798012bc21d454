//! What a forwarder was told to forward, from its arguments: `ssh -L`, `ssh -o LocalForward`,
//! `socat TCP-LISTEN:… TCP:host:port`. `ssh -L` connects to a bastion, not to the target, so
//! its connections do not show where it leads; its arguments do.

/// Where a forwarder's accepted connections go.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Forward {
    /// The local port it listens on; `None` when the arguments do not say (socat's listener
    /// is then whatever it listens on).
    pub listen_port: Option<u16>,
    /// Host name or address literal, as written.
    pub host: String,
    pub port: u16,
}

/// Comms whose arguments are read.
pub fn reads_arguments(comm: &str) -> bool {
    matches!(comm, "ssh" | "socat" | "autossh")
}

/// The forwards `cmdline` asks for.
pub fn from_arguments(comm: &str, cmdline: &[String]) -> Vec<Forward> {
    match comm {
        "ssh" | "autossh" => ssh(cmdline),
        "socat" => socat(cmdline),
        _ => Vec::new(),
    }
}

fn ssh(args: &[String]) -> Vec<Forward> {
    let mut out = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if let Some(rest) = a.strip_prefix("-L") {
            let spec = if rest.is_empty() {
                it.next().cloned()
            } else {
                Some(rest.to_owned())
            };
            out.extend(spec.as_deref().and_then(local_forward_colons));
        } else if let Some(rest) = a.strip_prefix("-o") {
            let opt = if rest.is_empty() {
                it.next().cloned()
            } else {
                Some(rest.to_owned())
            };
            out.extend(opt.as_deref().and_then(local_forward_option));
        } else if a.starts_with('-') && a.len() == 2 && takes_value(a) {
            it.next();
        }
    }
    out
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
        host: host.trim_matches(['[', ']']).to_owned(),
        port: hostport.parse().ok()?,
    })
}

/// `LocalForward=[bind:]port host:hostport` (also with a space after the name).
fn local_forward_option(opt: &str) -> Option<Forward> {
    let (name, value) = opt.split_once(['=', ' '])?;
    if !name.eq_ignore_ascii_case("LocalForward") {
        return None;
    }
    let mut words = value.split_whitespace();
    let listen = words.next()?;
    let target = words.next()?;
    let port = listen.rsplit(':').next()?;
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
                host: host.trim_matches(['[', ']']).to_owned(),
                port: port.parse().ok()?,
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
            host: host.to_owned(),
            port,
        }
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
