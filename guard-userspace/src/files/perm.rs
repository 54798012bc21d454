//! Answering permission events, on a dedicated OS thread per group (never on the async
//! runtime: every open of a marked file waits for this answer).
//!
//! Untagged processes are answered `FAN_ALLOW` after one lookup of their tgid in the kernel's
//! tag map: no `/proc` access, no allocation. For a tagged process the access it asks for is
//! read from its blocked system call (see `access.rs`); if the rule covers it, the process
//! gets its reason on stderr, is killed first when the rule says so, and the open is answered
//! `FAN_DENY` (EPERM) — or allowed and recorded under audit.
//!
//! This layer lives in the daemon: when the daemon dies its groups close and the kernel
//! allows every pending and later open. The pinned kernel programs (kill-on-detect, block
//! devices) and `guard run`'s mount namespace keep protecting without it.

use std::{
    os::fd::{AsRawFd as _, OwnedFd, RawFd},
    sync::Arc,
};

use guard_common::file::{FileKey, access};
use tracing::error;

use super::{
    Report,
    access::blocked_open_access,
    engine::{Engine, RuleInfo},
    fanotify::{self, Group},
    report::{Decision, Hook, Outcome},
    resolve::kernel_dev_of,
};
use crate::{policy::Action, respond, tags::ProcInfo};

/// Block until `group` has events or `timeout_ms` passed.
pub fn wait_readable(group: &Group, timeout_ms: i32) {
    let mut pfd = libc::pollfd {
        fd: group.fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&raw mut pfd, 1, timeout_ms) };
}

/// Answer the permission events of the engine's group until the engine stops.
pub fn serve(engine: &Arc<Engine>, group: &Group) {
    let mut buf = vec![0u8; 64 * 1024];
    while !engine.stopped() {
        wait_readable(group, 200);
        loop {
            let n = match group.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    error!(error = %e, "reading the fanotify permission group; opens are no longer answered here");
                    return;
                }
            };
            for ev in fanotify::events(&buf[..n]) {
                if let Some(fd) = ev.fd {
                    decide(engine, group, ev.mask, ev.pid, fd);
                }
            }
        }
    }
}

/// The thread group of `tid` and its tag, when it is tagged. A group leader's tid is its
/// tgid and is looked up at once; another thread's group is read from `/proc`.
fn tagged_group(engine: &Engine, tid: i32) -> Option<(u32, guard_common::Tag)> {
    let tags = &engine.shared.tags;
    if let Ok(tag) = tags.get(&(tid as u32), 0) {
        return Some((tid as u32, tag));
    }
    let tgid = super::access::tgid_of(tid)?;
    if tgid == tid as u32 {
        return None;
    }
    tags.get(&tgid, 0).ok().map(|tag| (tgid, tag))
}

/// Strength of a rule's action: the strongest matching rule decides.
fn strength(r: &RuleInfo) -> u8 {
    if r.enforcing() {
        r.action.strength()
    } else {
        0
    }
}

/// `dir` as the opener sees it. The kernel spells a file on a mount outside the daemon's
/// mount namespace (a bind mount into a container) from that namespace's root, so such a
/// path is looked up under the opener's root (`/proc/TID/root`), where it means the same.
fn opener_view(event_fd: RawFd, tid: i32, dir: &std::path::Path) -> std::path::PathBuf {
    let mnt_id = std::fs::read_to_string(format!("/proc/self/fdinfo/{event_fd}"))
        .ok()
        .and_then(|info| {
            let line = info.lines().find_map(|l| l.strip_prefix("mnt_id:"))?;
            Some(line.trim().to_owned())
        });
    let ours = |id: &str| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .is_ok_and(|m| m.lines().any(|l| l.split(' ').next() == Some(id)))
    };
    match mnt_id {
        Some(id) if !ours(&id) => std::path::Path::new(&format!("/proc/{tid}/root"))
            .join(dir.strip_prefix("/").unwrap_or(dir)),
        _ => dir.to_path_buf(),
    }
}

/// `tid`: the thread that opens (the group reports threads).
fn decide(engine: &Engine, group: &Group, mask: u64, tid: i32, fd: OwnedFd) {
    let raw = fd.as_raw_fd();
    let Some((tgid, tag)) = tagged_group(engine, tid) else {
        let _ = group.respond(raw, true);
        return;
    };
    let pid = tgid as i32;
    let (hook, asked) = if mask & libc::FAN_ACCESS_PERM != 0 {
        (Hook::FanotifyAccess, access::READ)
    } else if mask & libc::FAN_OPEN_EXEC_PERM != 0 {
        (Hook::FanotifyExec, access::EXEC)
    } else {
        (Hook::FanotifyOpen, blocked_open_access(tgid, tid))
    };
    let path = std::fs::read_link(format!("/proc/self/fd/{raw}")).unwrap_or_default();
    let st = match nix::sys::stat::fstat(&fd) {
        Ok(st) => st,
        Err(e) => {
            // Cannot happen for a descriptor the kernel just opened; say so if it does.
            error!(error = %e, pid, "fstat of a fanotify event descriptor failed; allowed");
            let _ = group.respond(raw, true);
            return;
        }
    };
    let key = FileKey::new(kernel_dev_of(st.st_dev), st.st_ino);
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    // A file's rules may come from its directory: found by the path the kernel resolved.
    let parent = || {
        let dir = opener_view(raw, tid, path.parent()?);
        let m = nix::sys::stat::stat(&dir).ok()?;
        Some(FileKey::new(kernel_dev_of(m.st_dev), m.st_ino))
    };
    let rules = engine.rules_for(key, is_dir, parent);
    let Some(r) = rules
        .iter()
        .map(|i| &engine.rules[*i])
        .filter(|r| r.access & asked != 0)
        .max_by_key(|r| strength(r))
    else {
        let _ = group.respond(raw, true);
        return;
    };
    let mut outcome = match (r.enforcing(), r.action) {
        (false, _) => Outcome::Allowed,
        (true, Action::Kill | Action::KillTree) => Outcome::Killed,
        (true, _) => Outcome::Denied,
    };
    let info = ProcInfo::read(pid).ok();
    let mut d = Decision {
        hook,
        time_ns: crate::clock::boot_ns(),
        tgid,
        tag,
        ppid: info.as_ref().map_or(0, |i| i.ppid),
        uid: info.as_ref().and_then(|i| i.uid).unwrap_or(0),
        comm: info.map(|i| i.comm).unwrap_or_default(),
        rule_id: r.id,
        rule: r.name.clone(),
        action: r.action,
        mode: r.mode,
        outcome,
        access: asked,
        path: path.display().to_string(),
        dev: key.dev,
        ino: key.ino,
        syscall: None,
        target: None,
        request: None,
    };
    if r.action == Action::Ask && outcome == Outcome::Denied {
        if engine.shared.asking.approved(&d) {
            // An approved request: it goes through, recorded.
            (outcome, d.outcome) = (Outcome::Allowed, Outcome::Allowed);
        } else {
            d.request = engine.shared.asking.ask(&d);
        }
    }
    if outcome != Outcome::Allowed {
        let _ = respond::tell(tgid, tag.start_ns, &d.reason());
    }
    // Kill before answering: the offender never returns from its open, and with kill-tree
    // no other process of its tree runs another instruction after this decision.
    let killed = match r.action {
        _ if outcome != Outcome::Killed => true,
        Action::KillTree => {
            let report = respond::kill_tree(&engine.shared.tags, tag.root);
            tracing::info!(root = tag.root.tgid, killed = report.killed,
                passes = report.passes, rule = %r.name, "kill-tree");
            report.killed > 0
        }
        _ => respond::kill_process(tgid, tag.start_ns).unwrap_or(false),
    };
    if !killed {
        d.outcome = Outcome::KillFailed;
    }
    let _ = group.respond(raw, outcome == Outcome::Allowed);
    drop(fd);
    let _ = engine.shared.reports.send(Report::Decision(d));
}
