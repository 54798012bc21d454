//! The network responder: what the daemon does after the kernel decided — the reason line on
//! the offender's stderr, kill-tree, a request for a human (`ask`), freezing the tree
//! (`hold`) — and the reason lines themselves.

use guard_common::{
    decision::{action, outcome},
    net::{SECRETS_PENDING_RULE_ID, SECRETS_RULE_ID},
};
use tracing::info;

use super::controller::NetHandle;
use crate::secrets::Cause;

impl NetHandle {
    /// Where decisions made here are logged.
    pub fn set_sink(&self, sink: crate::events::pipeline::EventSink) {
        self.holder.set_sink(sink.clone());
        let _ = self.sink.set(sink);
    }

    /// A `hold` rule denied a process of the tree: the holder freezes the tree. Returns
    /// what the timeout will do, for the reason line.
    fn hold(&self, ev: &guard_common::net::NetEvent) -> crate::policy::Hold {
        let d = crate::events::net::details(ev, self);
        let what = format!("a connection to {}", destination(&d.destination));
        self.holder
            .hold(ev.header.root, ev.header.agent_id, &d.rule, &what)
    }

    /// Open (or find) the request of a denial by an `ask` rule; its id (`None`: the tree
    /// asked too often, nobody was asked).
    fn ask(&self, ev: &guard_common::net::NetEvent) -> Option<u64> {
        let d = crate::events::net::details(ev, self);
        let addr = d
            .destination
            .address
            .as_deref()
            .and_then(|a| a.parse().ok());
        let unix = (ev.family == guard_common::net::AF_UNIX).then_some(());
        self.requests.open(crate::requests::Asked {
            root: ev.header.root,
            agent_id: ev.header.agent_id,
            proc: ev.header.proc,
            ppid: ev.header.ppid,
            comm: crate::events::c_str(&ev.comm),
            rule: d.rule.clone(),
            rule_id: ev.rule_id,
            family: ev.family,
            port: if unix.is_some() { 0 } else { ev.port },
            addr: if unix.is_some() { [0; 16] } else { ev.addr },
            destination: crate::requests::destination(
                addr,
                d.destination.port,
                d.destination.unix_path.as_deref(),
                d.destination.host.as_deref(),
            ),
        })
    }

    /// Act on a raw ring-buffer record if it is a network decision: the reason line on the
    /// offender's stderr (deny, kill), and kill-tree. Never blocks the caller.
    pub fn respond(&self, raw: &[u8]) {
        let Some(ev) = crate::events::net::raw_net_event(raw) else {
            return;
        };
        if ev.result == outcome::ALLOWED {
            return;
        }
        let h = ev.header;
        let request = (ev.action == action::ASK).then(|| self.ask(&ev));
        let hold = (ev.action == action::HOLD).then(|| self.hold(&ev));
        let due = self.reasons.lock().expect("reasons lock").due(
            h.proc,
            ev.rule_id,
            std::time::Instant::now(),
        );
        if due {
            let details = crate::events::net::details(&ev, self);
            let line = match ev.rule_id {
                SECRETS_RULE_ID | SECRETS_PENDING_RULE_ID => secrets_reason_line(
                    &details,
                    ev.rule_id == SECRETS_PENDING_RULE_ID,
                    self.taints.cause(h.root).as_ref(),
                ),
                _ => match (request, hold) {
                    (Some(id), _) => ask_reason_line(&details, id),
                    (_, Some(then)) => hold_reason_line(&details, h.root.tgid, then),
                    _ => reason_line(&details),
                },
            };
            let tags = self.tags.clone();
            tokio::task::spawn_blocking(move || {
                match crate::respond::tell_nearest(&tags, h.proc, h.ppid, h.root, &line) {
                    Ok(pid) => tracing::debug!(pid, "reason line written"),
                    Err(e) => {
                        tracing::debug!(pid = h.proc.tgid, error = %e, "reason line not written")
                    }
                }
            });
        }
        if ev.action == action::KILL_TREE {
            let tags = self.tags.clone();
            let root = ev.header.root;
            tokio::task::spawn_blocking(move || {
                let report = crate::respond::kill_tree(&tags, root);
                info!(
                    root = root.tgid,
                    killed = report.killed,
                    passes = report.passes,
                    survivors = report.survivors,
                    "kill-tree"
                );
            });
        }
    }
}

/// `guard: connect to 10.20.0.5:5432 denied by rule prod-db (…)`.
pub fn reason_line(d: &crate::events::net::NetDetails) -> String {
    let dest = &d.destination;
    let (verb, target) = if d.hook.ends_with("sock_create") || d.hook.ends_with("socket_create") {
        let kind = if dest.protocol == "packet" {
            "packet socket".to_owned()
        } else {
            format!("raw {} socket", dest.family)
        };
        ("create a", kind)
    } else if d.hook.starts_with("sendmsg")
        || d.hook == "lsm_socket_sendmsg"
        || d.hook.ends_with("unix_may_send")
    {
        ("send to", destination(dest))
    } else {
        ("connect to", destination(dest))
    };
    let target = match &d.deputy {
        Some(deputy) => format!("{target} ({deputy})"),
        None => target,
    };
    let what = if d.result == "killed" {
        "denied and the process killed"
    } else {
        "denied"
    };
    format!(
        "guard: {verb} {target} {what} by rule {rule} (ask your security team for an \
         exception: guard events --rule {rule})",
        rule = d.rule
    )
}

/// `guard: connect to … denied by rule R: the agent is frozen until a human decides …`.
pub fn hold_reason_line(
    d: &crate::events::net::NetDetails,
    root: u32,
    then: crate::policy::Hold,
) -> String {
    format!(
        "guard: connect to {} denied by rule {}: this agent is frozen until a human decides \
         (guard thaw {root}, or guard kill {root}); after {} it is {}",
        destination(&d.destination),
        d.rule,
        humantime::format_duration(then.timeout),
        match then.then {
            crate::policy::HoldThen::Kill => "killed",
            crate::policy::HoldThen::Thaw => "thawed",
        }
    )
}

/// `guard: connect to … denied by rule R: a human was asked (request 17); retry after it is
/// approved`.
pub fn ask_reason_line(d: &crate::events::net::NetDetails, id: Option<u64>) -> String {
    let verb = if d.hook.contains("sendmsg") || d.hook.contains("may_send") {
        "send to"
    } else {
        "connect to"
    };
    let asked = match id {
        Some(id) => {
            format!("a human was asked (request {id}); retry after it is approved (guard requests)")
        }
        None => format!(
            "this tree opened {} requests in the last minute, so nobody was asked this time",
            crate::requests::PER_TREE_PER_MINUTE
        ),
    };
    format!(
        "guard: {verb} {} denied by rule {}: {asked}",
        destination(&d.destination),
        d.rule
    )
}

/// The secrets rule's reason line: what the tree read (or that a scan is pending), and what
/// a tainted tree may still reach.
pub fn secrets_reason_line(
    d: &crate::events::net::NetDetails,
    pending: bool,
    cause: Option<&Cause>,
) -> String {
    let verb = if d.hook.contains("sendmsg") {
        "send to"
    } else {
        "connect to"
    };
    let target = destination(&d.destination);
    let what = if d.result == "killed" {
        "denied and the process killed"
    } else {
        "denied"
    };
    let why = match (pending, cause) {
        (true, _) => "a file this agent read is still being scanned for secrets; retry in a \
                      moment"
            .to_owned(),
        (false, Some(c)) => format!(
            "this agent read a secret ({} {} in {}), and an agent that read a secret may \
             reach only the destinations of spec.secrets.allow",
            c.detector, c.fingerprint, c.path
        ),
        (false, None) => "this agent read a secret (see guard events --kind secret_read), and \
                          an agent that read a secret may reach only the destinations of \
                          spec.secrets.allow"
            .to_owned(),
    };
    format!(
        "guard: {verb} {target} {what} by rule {rule}: {why}",
        rule = d.rule
    )
}

fn destination(dest: &crate::events::net::Destination) -> String {
    match (&dest.unix_path, &dest.address, &dest.host) {
        (Some(path), _, _) => format!("unix socket {path}"),
        (None, Some(addr), host) => {
            let hostport = if addr.contains(':') {
                format!("[{addr}]:{}", dest.port)
            } else {
                format!("{addr}:{}", dest.port)
            };
            match host {
                Some(h) => format!("{h} ({hostport})"),
                None => hostport,
            }
        }
        (None, None, _) => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::net::{Destination, NetDetails},
        policy::{RAW_RULE_NAME, SECRETS_PENDING_RULE_NAME, SECRETS_RULE_NAME},
    };

    fn details(unix: Option<&str>, addr: Option<&str>, host: Option<&str>) -> NetDetails {
        NetDetails {
            destination: Destination {
                address: addr.map(str::to_owned),
                port: 5432,
                family: "ipv4",
                protocol: "tcp",
                unix_path: unix.map(str::to_owned),
                host: host.map(str::to_owned),
            },
            rule: "prod-db".into(),
            rule_id: 0,
            action: "deny",
            mode: "enforce",
            result: "denied",
            hook: "connect4",
            deputy: None,
        }
    }

    #[test]
    fn reason_lines() {
        assert_eq!(
            reason_line(&details(None, Some("10.20.0.5"), None)),
            "guard: connect to 10.20.0.5:5432 denied by rule prod-db (ask your security team \
             for an exception: guard events --rule prod-db)"
        );
        let mut d = details(None, Some("fd00:20::5"), Some("db.prod"));
        d.result = "killed";
        assert!(
            reason_line(&d)
                .starts_with("guard: connect to db.prod ([fd00:20::5]:5432) denied and the process killed by rule prod-db")
        );
        let mut d = details(Some("/run/docker.sock"), None, None);
        d.hook = "sendmsg_unix";
        assert!(reason_line(&d).starts_with("guard: send to unix socket /run/docker.sock denied"));
        let mut d = details(None, None, None);
        (d.hook, d.destination.family, d.destination.protocol) = ("sock_create", "ipv6", "raw");
        d.rule = RAW_RULE_NAME.into();
        assert!(
            reason_line(&d)
                .starts_with("guard: create a raw ipv6 socket denied by rule guard:raw-sockets"),
            "{}",
            reason_line(&d)
        );
        (d.hook, d.destination.family, d.destination.protocol) =
            ("lsm_socket_create", "packet", "packet");
        assert!(reason_line(&d).starts_with("guard: create a packet socket denied"));
        d.hook = "lsm_socket_sendmsg";
        assert!(reason_line(&d).starts_with("guard: send to "));
    }

    #[test]
    fn secrets_reason_lines_name_the_file_or_the_pending_scan() {
        let mut d = details(None, Some("10.20.0.5"), Some("api.vercel.com"));
        d.rule = SECRETS_RULE_NAME.into();
        let cause = Cause {
            path: "/src/app/notes.txt".into(),
            detector: "github-token".into(),
            fingerprint: "fp:0123456789abcdef".into(),
        };
        assert_eq!(
            secrets_reason_line(&d, false, Some(&cause)),
            "guard: connect to api.vercel.com (10.20.0.5:5432) denied by rule guard:secrets: \
             this agent read a secret (github-token fp:0123456789abcdef in /src/app/notes.txt), \
             and an agent that read a secret may reach only the destinations of \
             spec.secrets.allow"
        );
        d.rule = SECRETS_PENDING_RULE_NAME.into();
        assert!(
            secrets_reason_line(&d, true, None)
                .ends_with("still being scanned for secrets; retry in a moment")
        );
    }
}
