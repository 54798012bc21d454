//! The daemon's API socket and what it answers: ps, tagging, applying the policy (status is
//! built in [`super::status`]), and the view metrics read.

use std::os::unix::fs::PermissionsExt;

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{info, warn};

use super::{DaemonError, Shared, caller::Caller, is_tagged};
use crate::{
    api::{PsReply, Reply, Request, TagReply},
    kernel::Kernel,
    metrics::{DaemonView, HookStatus, KernelSnapshot},
    paths::Paths,
    tags::{self, AgentNames, ProcInfo},
};

pub(super) fn bind(paths: &Paths) -> Result<UnixListener, DaemonError> {
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

/// Bytes of one request line; a longer one is refused and the connection closed.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Connections served at once; more are told so and closed.
pub const MAX_CONNECTIONS: usize = 128;
/// Review page connections on the API socket at once (a live timeline holds one open): they
/// have slots of their own, so that open pages never keep `guard run` from the API.
pub const MAX_PAGE_CONNECTIONS: usize = 32;
/// A connection that sends no complete request, or reads no reply, for this long is closed.
const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

pub(super) async fn serve(listener: UnixListener, state: Shared) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let state = state.clone();
                    tokio::spawn(handle(stream, state, slot));
                }
                Err(_) => {
                    tokio::spawn(refuse(
                        stream,
                        format!("too many connections to the guard API (limit {MAX_CONNECTIONS})"),
                    ));
                }
            },
            Err(e) => warn!(error = %e, "accept failed"),
        }
    }
}

/// What the client sent first, without taking it from the stream (up to 8 bytes; none if it
/// sent nothing for [`IDLE`]).
async fn first_bytes(stream: &UnixStream) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 8];
    let peek = async {
        loop {
            if stream.readable().await.is_err() {
                return Vec::new();
            }
            let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
                nix::sys::socket::recv(
                    stream.as_raw_fd(),
                    &mut buf,
                    nix::sys::socket::MsgFlags::MSG_PEEK,
                )
                .map_err(std::io::Error::from)
            });
            match peeked {
                Ok(n) => return buf[..n].to_vec(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return Vec::new(),
            }
        }
    };
    tokio::time::timeout(IDLE, peek).await.unwrap_or_default()
}

/// An HTTP client on the API socket: the review page, with the role the peer's credentials
/// give (root and `spec.approvers` approve, `--ui-viewers` view); never a tagged process.
async fn page(stream: UnixStream, state: &Shared, caller: &Caller, uid: u32) {
    static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_PAGE_CONNECTIONS);
    let Ok(_slot) = SLOTS.try_acquire() else {
        return http_text(
            stream,
            "503 Service Unavailable",
            &format!("too many review page connections (limit {MAX_PAGE_CONNECTIONS})\n"),
        )
        .await;
    };
    let (page, viewers) = {
        let st = state.lock().expect("state lock");
        (st.page.clone(), st.ui_viewers)
    };
    let role = match caller.pid() {
        Some(pid) if is_tagged(state, pid) => {
            refused_tagged(state, pid, uid, "the review page").await;
            Err("a tagged process may not see the review page".to_owned())
        }
        _ if uid == 0 => Ok(crate::ui::Role::Approver),
        _ if super::decide::approver(state, caller, uid).is_ok() => Ok(crate::ui::Role::Approver),
        Some(pid) if viewers.is_some_and(|g| super::decide::groups_of(pid).contains(&g)) => {
            Ok(crate::ui::Role::Viewer)
        }
        _ => Err(format!(
            "uid {uid} is neither an approver (spec.approvers) nor in the page's viewers group \
             (guard daemon --ui-viewers)"
        )),
    };
    match page {
        Some(page) => page.serve_unix(stream, role).await,
        None => {
            let why = "the review page is off (guard daemon --ui or --ui-addr)\n";
            http_text(stream, "404 Not Found", why).await;
        }
    }
}

/// One plain-text HTTP answer, then close, without waiting on a peer that does not read.
async fn http_text(mut stream: UnixStream, status: &str, body: &str) {
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let write = stream.write_all(reply.as_bytes());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
}

/// Answer `why` and close, without waiting on a peer that does not read.
async fn refuse(mut stream: UnixStream, why: String) {
    let mut reply = serde_json::to_string(&Reply::<()>::err(why)).unwrap_or_default();
    reply.push('\n');
    let write = stream.write_all(reply.as_bytes());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
}

async fn handle(stream: UnixStream, state: Shared, slot: tokio::sync::OwnedSemaphorePermit) {
    let caller = Caller::of(&stream);
    let uid = stream.peer_cred().map_or(u32::MAX, |c| c.uid());
    if crate::ui::is_http(&first_bytes(&stream).await) {
        drop(slot);
        return page(stream, &state, &caller, uid).await;
    }
    let _slot = slot;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let bounded = (&mut reader).take(MAX_REQUEST as u64 + 1);
        let read = tokio::time::timeout(IDLE, read_line(bounded, &mut line)).await;
        let Ok(Ok(n)) = read else { break };
        if n == 0 {
            break;
        }
        if line.len() > MAX_REQUEST {
            let why = format!("request too large: more than {MAX_REQUEST} bytes in one line");
            if let Some(pid) = caller.pid() {
                refused_tagged(&state, pid, uid, "an oversized request").await;
            }
            let mut reply = serde_json::to_string(&Reply::<()>::err(why)).unwrap_or_default();
            reply.push('\n');
            let _ = write.write_all(reply.as_bytes()).await;
            break;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        let reply = match serde_json::from_str::<Request>(text) {
            Err(e) => {
                // Anything but the read-only calls and tagging oneself: from a tagged caller,
                // an attempt on guard itself.
                if let Some(pid) = caller.pid() {
                    refused_tagged(&state, pid, uid, text).await;
                }
                serde_json::to_string(&Reply::<()>::err(format!("bad request: {e}")))
            }
            Ok(Request::Status) => serde_json::to_string(&super::status::status(&state)),
            Ok(Request::Ps) => serde_json::to_string(&ps(&state)),
            Ok(Request::Tag { agent }) => {
                serde_json::to_string(&tag(&state, &caller, agent.as_deref()))
            }
            Ok(Request::Requests) => serde_json::to_string(&super::decide::list(&state)),
            Ok(Request::Approve {
                id,
                for_secs,
                scope,
                reason,
            }) => {
                let reply = super::decide::approve(
                    &state,
                    &caller,
                    uid,
                    id,
                    for_secs,
                    scope,
                    reason.as_deref(),
                );
                refused_if_tagged(&state, &caller, uid, text, reply.ok).await;
                serde_json::to_string(&reply)
            }
            Ok(Request::Deny { id, reason }) => {
                let reply = super::decide::deny(&state, &caller, uid, id, reason.as_deref());
                refused_if_tagged(&state, &caller, uid, text, reply.ok).await;
                serde_json::to_string(&reply)
            }
            Ok(Request::Tree { action, root }) => {
                let reply = super::incident::tree(&state, &caller, uid, action, &root).await;
                refused_if_tagged(&state, &caller, uid, text, reply.ok).await;
                serde_json::to_string(&reply)
            }
            Ok(Request::ContainerCreated { id, pid: _ }) => {
                let reply = container_created(&state, &caller, id).await;
                refused_if_tagged(&state, &caller, uid, text, reply.ok).await;
                serde_json::to_string(&reply)
            }
            Ok(Request::Apply { policy }) => {
                if let Some(pid) = caller.pid().filter(|p| is_tagged(&state, *p)) {
                    refused_tagged(&state, pid, uid, text).await;
                    serde_json::to_string(&Reply::<u64>::err(
                        "a tagged process may not apply a policy",
                    ))
                } else {
                    serde_json::to_string(&admin_apply(&state, uid, policy.as_deref()).await)
                }
            }
        };
        let mut reply = reply.unwrap_or_else(|e| format!(r#"{{"ok":false,"error":"{e}"}}"#));
        reply.push('\n');
        // A peer that stops reading is dropped rather than allowed to hold a slot.
        let sent = tokio::time::timeout(IDLE, write.write_all(reply.as_bytes())).await;
        if !matches!(sent, Ok(Ok(()))) {
            break;
        }
    }
}

/// `guard oci-hook`: find the agents' containers again now (the new one among them), without
/// asking the runtime's API about the container it is creating; the agent it is, if any.
/// (The runtime's init in the container is left alone: the kernel tags what it execs.)
async fn container_created(state: &Shared, caller: &Caller, id: String) -> Reply<Option<String>> {
    if caller.pid().is_some_and(|p| is_tagged(state, p)) {
        return Reply::err("a tagged process may not classify containers");
    }
    let st = state.clone();
    let starting = id.clone();
    let refreshed = tokio::task::spawn_blocking(move || {
        let _starting = crate::containers::starting_up(&starting);
        super::apply::refresh_installs(&st);
    })
    .await;
    if let Err(e) = refreshed {
        return Reply::err(format!("classifying the container: {e}"));
    }
    let st = state.lock().expect("state lock");
    let agent = st
        .agent_cgroups
        .values()
        .find(|(_, path)| crate::proctree::container_id(path).as_deref() == Some(id.as_str()))
        .map(|(agent, _)| st.names.name(*agent));
    Reply::ok(agent)
}

/// `guard policy apply` from an untagged caller: root only; answered once the apply is done.
async fn admin_apply(state: &Shared, uid: u32, file: Option<&std::path::Path>) -> Reply<u64> {
    if uid != 0 {
        return Reply::err("only root may apply the policy (guard policy apply)");
    }
    let (tx, own) = {
        let st = state.lock().expect("state lock");
        (
            st.admin_apply.clone(),
            st.integrity.as_ref().map(|i| i.path().to_path_buf()),
        )
    };
    let Some(tx) = tx else {
        return Reply::err("the daemon is not serving applies yet");
    };
    if let Some(file) = file {
        let canonical = |p: &std::path::Path| std::fs::canonicalize(p).ok();
        match &own {
            Some(own) if canonical(own).is_some_and(|o| Some(o) == canonical(file)) => {}
            Some(own) => {
                return Reply::err(format!(
                    "the daemon runs on {}, not {}: edit that file and apply it",
                    own.display(),
                    file.display()
                ));
            }
            None => {
                return Reply::err(
                    "the daemon runs on its embedded default policy: there is no file to apply",
                );
            }
        }
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    if tx.send(reply).is_err() {
        return Reply::err("the daemon is stopping");
    }
    match answer.await {
        Ok(Ok(generation)) => Reply::ok(generation),
        Ok(Err(why)) => Reply::err(why),
        Err(_) => Reply::err("the apply was dropped"),
    }
}

/// One line (up to the reader's limit) into `line`; the byte count, 0 at the end.
async fn read_line(
    mut reader: impl tokio::io::AsyncBufRead + Unpin,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    reader.read_until(b'\n', line).await
}

/// A request for something only root and approvers may do: when it was refused and the
/// caller is tagged, record the attempt.
async fn refused_if_tagged(state: &Shared, caller: &Caller, uid: u32, line: &str, ok: bool) {
    if !ok && let Some(pid) = caller.pid().filter(|p| is_tagged(state, *p)) {
        refused_tagged(state, pid, uid, line).await;
    }
}

/// Record a refused request from a tagged caller.
async fn refused_tagged(state: &Shared, pid: i32, uid: u32, line: &str) {
    let Ok(pid) = u32::try_from(pid) else {
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
            time_ns: crate::clock::boot_ns(),
            proc: guard_common::ProcKey::new(pid, tag.start_ns),
            root: tag.root,
            ppid,
            uid,
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

fn ps(state: &Shared) -> Reply<PsReply> {
    let st = state.lock().expect("state lock");
    Reply::ok(PsReply {
        processes: tags::list(&st.kernel, &st.names, &st.agents),
    })
}

fn tag(state: &Shared, caller: &Caller, agent: Option<&str>) -> Reply<TagReply> {
    let pid = match caller.live_pid() {
        Ok(pid) => pid,
        Err(why) => return Reply::err(why),
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
                let mut known: Vec<String> = st.names.names().map(str::to_owned).collect();
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
            // The pid held by another process by now: take back what was tagged for it.
            if let Err(why) = caller.live_pid() {
                if before.is_none() {
                    let _ = st.kernel.tags.remove(&(pid as u32));
                }
                return Reply::err(why);
            }
            info!(pid, agent = %st.names.name(tag.agent_id), "tagged by guard run");
            Reply::ok(TagReply {
                enforcing: st.enforcing,
                agent: st.names.name(tag.agent_id),
                root_pid: tag.root.tgid,
                root_start_ns: tag.root.start_ns,
                already_tagged: before.is_some(),
                drop_capabilities: st.drop_caps.clone(),
                protections: Some(protections(&st)),
                daemon_pid: std::process::id(),
            })
        }
        Err(e) => Reply::err(format!("tagging failed: {e}")),
    }
}

/// What `guard run` takes out of its tree's mount namespace: the path rules' objects, and the
/// socket files of unix rules that deny (masked, so that no spelling in the tree reaches
/// them).
fn protections(st: &super::State) -> crate::files::Protections {
    let mut p = st
        .files
        .as_ref()
        .map(|f| f.protections())
        .unwrap_or_default();
    for sock in &st.unix_masks {
        if !p.masked.iter().any(|(m, _)| m == sock) {
            p.masked.push((sock.clone(), false));
        }
    }
    p
}

/// The daemon's state as the event pipeline and the metrics see it.
pub(super) struct View(pub(super) Shared);

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
                tier: if crate::loader::table::family(crate::loader::table::Family::Tracker)
                    .iter()
                    .any(|r| r.pin == hook)
                {
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
            tagged_processes: st
                .kernel
                .tags
                .keys()
                .filter_map(Result::ok)
                .filter(|k| *k != guard_common::PROBE_TGID)
                .count() as u64,
            tag_map_size: u64::from(st.kernel.tag_map.size),
            policy_generation: st.generation,
            enforcing: st.enforcing,
            tier,
            hooks,
        }
    }
}
