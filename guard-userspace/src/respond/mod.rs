//! The one response path of every hook family: a reason line on the offender's stderr, SIGKILL
//! for one process, and kill-tree for an agent tree.
//!
//! None of it may block or fail the daemon: the reason line is one write that never waits, on
//! the offender's own file description (a full pipe or a closed stderr loses the line, nothing
//! else). Every process is
//! reached through a pidfd opened before its start time is checked, so a reused pid is never
//! written to or signalled. `hold.rs`: freezing and thawing a whole tree; `holder.rs`: the
//! `hold` action of every hook family.

pub mod hold;
mod holder;
pub mod said;

pub use holder::{Holder, TreeNote};

use std::{
    collections::HashSet,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use guard_common::{NS_PER_TICK, ProcKey, Tag};

/// Longest a kill-tree keeps sweeping for new members of the tree.
const KILL_TREE_DEADLINE: Duration = Duration::from_secs(5);
/// Ancestors of the same tree tried when the offender is gone.
const MAX_ANCESTORS: usize = 4;

/// Start time of `pid` on the clock of [`ProcKey::start_ns`], from `/proc`.
fn start_ns(pid: u32) -> io::Result<u64> {
    let p = procfs::process::Process::new(pid as i32).map_err(io::Error::other)?;
    let stat = p.stat().map_err(io::Error::other)?;
    Ok(stat.starttime * NS_PER_TICK)
}

/// Is `pid` still the process that started at `start`?
pub(crate) fn same_process(pid: u32, start: u64) -> bool {
    start_ns(pid).is_ok_and(|s| ProcKey::new(pid, s).start_ns == ProcKey::new(pid, start).start_ns)
}

/// A pidfd for `pid` if it is still the process that started at `start` (checked after the
/// open, so the descriptor cannot refer to a later process with the same pid).
fn pidfd(pid: u32, start: u64) -> io::Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            _ => Err(err),
        };
    }
    // SAFETY: pidfd_open returned a descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    Ok(same_process(pid, start).then_some(fd))
}

/// Replace control characters so a line stays one line.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Write `line` (one newline added) to the stderr of process `pid` (started at `start`), once.
///
/// Only when that stderr is a pipe, a terminal or a regular file that the process itself has
/// open for writing: the daemon must not become a way to write where the process could not
/// (its fd 2 opened read-only on someone else's file, a device other than a terminal). The
/// descriptor is the process's own (`pidfd_getfd`), never reopened by `/proc/PID/fd/2`: that
/// open could itself be a permission event of a fanotify group whose reader is the caller (a
/// deadlock when fd 2 is a protected file), and could open something other than what the
/// process holds; a duplicate is neither.
pub fn tell(pid: u32, start: u64, line: &str) -> io::Result<()> {
    let Some(pidfd) = pidfd(pid, start)? else {
        return Err(io::Error::new(io::ErrorKind::NotFound, "process gone"));
    };
    // SAFETY: plain system call on our pidfd; the returned fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), 2, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd (a duplicate of the offender's stderr), owned by nobody else.
    let err = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    check_writable_stream(&err)?;
    let mut bytes = sanitize(line.trim_end_matches('\n')).into_bytes();
    bytes.push(b'\n');
    let n = write_nowait(&err, &bytes)?;
    if n != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
    }
    said::record(ProcKey::new(pid, start), line);
    Ok(())
}

/// [`tell`] process `pid` as it is now (a parent, named by the event that named its child).
pub fn tell_parent(pid: u32, line: &str) -> io::Result<()> {
    if pid <= 1 {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no parent to tell"));
    }
    tell(pid, start_ns(pid)?, line)
}

/// One write at the description's own offset that never waits: `pwritev2(…, -1, RWF_NOWAIT)`.
/// Setting `O_NONBLOCK` instead would change the description the offender shares. Where the
/// file type does not take `RWF_NOWAIT` (a terminal), a zero-time `poll` first; one write is
/// atomic on a pipe for fewer than `PIPE_BUF` bytes.
fn write_nowait(fd: &OwnedFd, bytes: &[u8]) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: one valid iovec over `bytes`; offset -1 writes at the description's offset.
    let n = unsafe { libc::pwritev2(fd.as_raw_fd(), &raw const iov, 1, -1, libc::RWF_NOWAIT) };
    if n >= 0 {
        return Ok(n as usize);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) => {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "stderr is full"));
        }
        Some(libc::EOPNOTSUPP) => {}
        _ => return Err(err),
    }
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let ready = unsafe { libc::poll(&raw mut pfd, 1, 0) };
    if ready != 1 || pfd.revents & libc::POLLOUT == 0 {
        return Err(io::Error::new(io::ErrorKind::WouldBlock, "stderr is full"));
    }
    // SAFETY: writing a valid buffer to an fd we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The access check of [`tell`]: open for writing, and a pipe, a regular file or a terminal.
fn check_writable_stream(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_GETFL on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let access = flags & libc::O_ACCMODE;
    if access != libc::O_WRONLY && access != libc::O_RDWR {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "stderr is not open for writing",
        ));
    }
    // SAFETY: fstat fills the struct for a descriptor we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let kind = st.st_mode & libc::S_IFMT;
    // SAFETY: isatty on a descriptor we own.
    let tty = kind == libc::S_IFCHR && unsafe { libc::isatty(fd.as_raw_fd()) } == 1;
    if !(kind == libc::S_IFIFO || kind == libc::S_IFREG || tty) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "stderr is not a pipe, terminal or file",
        ));
    }
    Ok(())
}

/// [`tell`] the offender, or when it is already gone (a `curl` that got EPERM usually exits
/// before the daemon reads the event; a killed process is dead) the nearest live ancestor of
/// the same agent tree, whose stderr is in practice the same stream (the shell the agent ran
/// the command in). At most [`MAX_ANCESTORS`] levels up; never outside the tree.
pub fn tell_nearest(
    tags: &HashMap<MapData, u32, Tag>,
    offender: ProcKey,
    ppid: u32,
    root: ProcKey,
    line: &str,
) -> io::Result<u32> {
    let first = tell(offender.tgid, offender.start_ns, line);
    if first.is_ok() {
        return Ok(offender.tgid);
    }
    let mut pid = ppid;
    for _ in 0..MAX_ANCESTORS {
        let Ok(tag) = tags.get(&pid, 0) else { break };
        if tag.root != root {
            break;
        }
        if tell(pid, tag.start_ns, line).is_ok() {
            // What the offender's stream showed, though its shell was the one written to.
            said::record(offender, line);
            return Ok(pid);
        }
        let Ok(stat) = procfs::process::Process::new(pid as i32).and_then(|p| p.stat()) else {
            break;
        };
        pid = stat.ppid as u32;
    }
    first.map(|()| offender.tgid)
}

/// At most one reason line per process and rule every [`Throttle::EVERY`]: a process denied
/// in a loop gets one line, not one per attempt (each line costs a walk of `/proc` and a
/// write into the offender's terminal). Every decision is still an event.
pub struct Throttle {
    last: std::collections::HashMap<(ProcKey, u32), std::time::Instant>,
}

impl Throttle {
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(1);
    /// Entries kept before the old ones are dropped.
    const MAX: usize = 4096;

    pub fn new() -> Self {
        Self {
            last: std::collections::HashMap::new(),
        }
    }

    /// Whether a reason line for `proc` denied by rule `rule` is due now.
    pub fn due(&mut self, proc: ProcKey, rule: u32, now: std::time::Instant) -> bool {
        if self.last.len() >= Self::MAX {
            self.last
                .retain(|_, at| now.duration_since(*at) < Self::EVERY);
        }
        match self.last.get(&(proc, rule)) {
            Some(at) if now.duration_since(*at) < Self::EVERY => false,
            _ => {
                self.last.insert((proc, rule), now);
                true
            }
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

/// SIGKILL `pid` if it is still the process that started at `start`; `Ok(false)` when it is
/// gone.
pub fn kill_process(pid: u32, start: u64) -> io::Result<bool> {
    signal_process(pid, start, libc::SIGKILL)
}

/// Send `sig` to `pid` through a pidfd if it is still the process that started at `start`;
/// `Ok(false)` when it is gone.
pub fn signal_process(pid: u32, start: u64, sig: i32) -> io::Result<bool> {
    let Some(pidfd) = pidfd(pid, start)? else {
        return Ok(false);
    };
    // SAFETY: a live pidfd, a valid signal, no siginfo, no flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ESRCH) => Ok(false),
            _ => Err(err),
        };
    }
    Ok(true)
}

/// What a kill-tree did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KillTreeReport {
    pub killed: usize,
    pub passes: usize,
    /// Processes of the tree still in the tag map at the deadline.
    pub survivors: usize,
}

/// SIGKILL every tagged process whose root is `root`, sweeping the tag map until no member
/// is left (members forked meanwhile are found by the next pass) or the deadline passes.
/// A killed process leaves the tag map when its thread group dies.
pub fn kill_tree(tags: &HashMap<MapData, u32, Tag>, root: ProcKey) -> KillTreeReport {
    let mut report = KillTreeReport::default();
    let deadline = Instant::now() + KILL_TREE_DEADLINE;
    let mut signalled = HashSet::new();
    loop {
        report.passes += 1;
        // Members whose pid is gone are stale entries, not survivors.
        let live: Vec<(u32, Tag)> = tags
            .iter()
            .filter_map(Result::ok)
            .filter(|(pid, tag)| tag.root == root && same_process(*pid, tag.start_ns))
            .collect();
        if live.is_empty() {
            break;
        }
        for (pid, tag) in &live {
            if signalled.insert((*pid, tag.start_ns)) {
                match kill_process(*pid, tag.start_ns) {
                    Ok(true) => report.killed += 1,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(pid, error = %e, "kill-tree: cannot signal"),
                }
            }
        }
        if Instant::now() >= deadline {
            report.survivors = live.len();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    report
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn one_reason_line_per_process_and_rule_a_second() {
        let mut t = Throttle::new();
        let now = std::time::Instant::now();
        let p = ProcKey::new(42, 7);
        assert!(t.due(p, 3, now));
        assert!(!t.due(p, 3, now + std::time::Duration::from_millis(500)));
        assert!(t.due(p, 4, now), "another rule");
        assert!(t.due(ProcKey::new(43, 7), 3, now), "another process");
        assert!(t.due(p, 3, now + Throttle::EVERY));
    }

    #[test]
    fn sanitize_keeps_one_line() {
        assert_eq!(sanitize("a\nb\tc\u{7}"), "a?b?c?");
        assert_eq!(sanitize("10.20.0.5:5432"), "10.20.0.5:5432");
    }

    #[test]
    fn tells_a_child_through_its_stderr_pipe() {
        let child = Command::new("sleep")
            .arg("5")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = start_ns(pid).unwrap();
        tell(pid, start, "guard: hello\nworld\n").unwrap();
        // A wrong start time (a reused pid) is refused.
        assert!(tell(pid, start + 10 * NS_PER_TICK, "no").is_err());
        assert!(kill_process(pid, start + 10 * NS_PER_TICK).is_ok_and(|k| !k));
        assert!(kill_process(pid, start).unwrap());
        let out = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stderr), "guard: hello?world\n");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(libc::SIGKILL)
        );
    }

    #[test]
    fn a_regular_file_gets_the_line_where_the_process_writes_next() {
        // The line goes through the offender's own description, at its offset: the process's
        // next write follows it instead of overwriting it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stderr");
        let child = Command::new("sh")
            .args(["-c", "echo before >&2; read _; echo after >&2"])
            .stdin(Stdio::piped())
            .stderr(std::fs::File::create(&path).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = start_ns(pid).unwrap();
        let t = std::time::Instant::now();
        while std::fs::read_to_string(&path).unwrap().is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the child never wrote"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        tell(pid, start, "guard: the reason").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "before\nguard: the reason\nafter\n"
        );
    }

    #[test]
    fn a_device_or_read_only_stderr_is_left_alone() {
        // /dev/null is a character device but not a terminal.
        let mut child = Command::new("sleep")
            .arg("5")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = start_ns(pid).unwrap();
        assert!(tell(pid, start, "x").is_err());
        kill_process(pid, start).unwrap();
        child.wait().unwrap();

        // A regular file the process holds open read-only.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owned-by-someone-else");
        std::fs::write(&path, "untouched").unwrap();
        let mut child = Command::new("sleep")
            .arg("5")
            .stderr(std::fs::File::open(&path).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = start_ns(pid).unwrap();
        let err = tell(pid, start, "x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "untouched");
        kill_process(pid, start).unwrap();
        child.wait().unwrap();
    }
}
