//! What the daemon does on a network decision: one reason line on the offender's stderr, and
//! for `kill-tree` SIGKILL to every process of the agent tree.
//!
//! Neither may block or fail the daemon: the stderr line is written with one non-blocking
//! `write(2)` (a full pipe or a closed stderr loses the line, nothing else), and both run on
//! the blocking pool.

use std::{
    fs::OpenOptions,
    io::{self, Write as _},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::{FileTypeExt, OpenOptionsExt},
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use guard_common::{NS_PER_TICK, ProcKey, Tag};

/// Longest a kill-tree keeps sweeping for new members of the tree.
const KILL_TREE_DEADLINE: Duration = Duration::from_secs(5);

/// Start time of `pid` on the clock of [`ProcKey::start_ns`], from `/proc`.
fn start_ns(pid: u32) -> io::Result<u64> {
    let p = procfs::process::Process::new(pid as i32).map_err(io::Error::other)?;
    let stat = p.stat().map_err(io::Error::other)?;
    Ok(stat.starttime * NS_PER_TICK)
}

/// Is `pid` still the process that started at `start`?
fn same_process(pid: u32, start: u64) -> bool {
    start_ns(pid).is_ok_and(|s| ProcKey::new(pid, s).start_ns == ProcKey::new(pid, start).start_ns)
}

/// Replace control characters so a line stays one line.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Write `line` (plus a newline) to the stderr of process `pid` (started at `start`), once.
///
/// Only when that stderr is a pipe, a terminal or a regular file that the process itself has
/// open for writing: the daemon must not become a way to write where the process could not
/// (its fd 2 opened read-only on someone else's file, a device with side effects on open).
/// The open is `O_NONBLOCK | O_NOCTTY | O_APPEND`, the write a single `write(2)`.
pub fn tell(pid: u32, start: u64, line: &str) -> io::Result<()> {
    if !same_process(pid, start) {
        return Err(io::Error::new(io::ErrorKind::NotFound, "process gone"));
    }
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/2"))?;
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .ok_or_else(|| io::Error::other("no flags in fdinfo"))?;
    let access = flags & libc::O_ACCMODE as u32;
    if access != libc::O_WRONLY as u32 && access != libc::O_RDWR as u32 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "stderr is not open for writing",
        ));
    }
    let path = format!("/proc/{pid}/fd/2");
    let kind = std::fs::metadata(&path)?.file_type();
    if !(kind.is_fifo() || kind.is_file() || kind.is_char_device()) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "stderr is not a pipe, terminal or file",
        ));
    }
    let file = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&path)?;
    // SAFETY: isatty on a descriptor we own.
    if kind.is_char_device() && unsafe { libc::isatty(file.as_raw_fd()) } != 1 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "stderr is a device other than a terminal",
        ));
    }
    let mut bytes = sanitize(line).into_bytes();
    bytes.push(b'\n');
    // One write: atomic on a pipe for fewer than PIPE_BUF bytes; EAGAIN on a full pipe.
    let n = (&file).write(&bytes)?;
    if n != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
    }
    Ok(())
}

/// [`tell`] the offender, or when it is already gone (a `curl` that got EPERM usually exits
/// before the daemon reads the event; a killed process is dead) the nearest live ancestor of
/// the same agent tree, whose stderr is in practice the same stream (the shell the agent ran
/// the command in). At most `MAX_ANCESTORS` levels up; never outside the tree.
pub fn tell_nearest(
    tags: &HashMap<MapData, u32, Tag>,
    offender: ProcKey,
    ppid: u32,
    root: ProcKey,
    line: &str,
) -> io::Result<u32> {
    const MAX_ANCESTORS: usize = 4;
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
            return Ok(pid);
        }
        let Ok(stat) = procfs::process::Process::new(pid as i32).and_then(|p| p.stat()) else {
            break;
        };
        pid = stat.ppid as u32;
    }
    first.map(|()| offender.tgid)
}

/// SIGKILL `pid` if it is still the process that started at `start`. The pidfd is opened
/// before the check, so the signal cannot reach a process that reused the pid afterwards.
pub fn kill_process(pid: u32, start: u64) -> io::Result<bool> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ESRCH) => Ok(false),
            _ => Err(err),
        };
    }
    // SAFETY: pidfd_open returned a descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if !same_process(pid, start) {
        return Ok(false);
    }
    // SAFETY: a live pidfd, a valid signal, no siginfo, no flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
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
    let mut signalled = std::collections::HashSet::new();
    loop {
        report.passes += 1;
        let members: Vec<(u32, Tag)> = tags
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, tag)| tag.root == root)
            .collect();
        // Members already signalled are dying; a member whose pid is gone is stale.
        let live: Vec<&(u32, Tag)> = members
            .iter()
            .filter(|(pid, tag)| same_process(*pid, tag.start_ns))
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
    use super::*;

    #[test]
    fn sanitize_keeps_one_line() {
        assert_eq!(sanitize("a\nb\tc\u{7}"), "a?b?c?");
        assert_eq!(sanitize("10.20.0.5:5432"), "10.20.0.5:5432");
    }

    #[test]
    fn tells_a_child_through_its_stderr_pipe() {
        let child = std::process::Command::new("sleep")
            .arg("5")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = start_ns(pid).unwrap();
        tell(pid, start, "guard: hello\nworld").unwrap();
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
    fn closed_or_read_only_stderr_is_left_alone() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = start_ns(pid).unwrap();
        // /dev/null is a character device but not a terminal.
        assert!(tell(pid, start, "x").is_err());
        kill_process(pid, start).unwrap();
        child.wait().unwrap();
    }
}
