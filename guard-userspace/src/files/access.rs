//! What a process blocked in a permission event is asking for.
//!
//! The file descriptor fanotify hands over is opened with the group's own flags, so it says
//! nothing about the offender's open. The offender is blocked inside its `open` system call
//! until we answer, so `/proc/PID/task/TID/syscall` shows that call and its arguments: the
//! open flags are right there (`openat2` keeps them in user memory, read through
//! `process_vm_readv`). Only tagged processes get here.
//!
//! When no thread is in an open-family call (an io_uring worker opens on the ring's behalf,
//! and `io_uring_enter` names no flags), the access is unknown and taken as read and write:
//! such an open of a protected object by a tagged process is refused.

use std::{fs, io::IoSliceMut};

use guard_common::file::{access, nr, open_flags_access};

/// A parsed `/proc/PID/task/TID/syscall` line: the call and its six arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syscall {
    pub nr: i64,
    pub args: [u64; 6],
}

/// Parse a `syscall` file: `nr a0 … a5 sp pc`, or `-1 sp pc` / `running` (not in a call).
pub fn parse_syscall(text: &str) -> Option<Syscall> {
    let mut it = text.split_whitespace();
    let nr: i64 = it.next()?.parse().ok()?;
    if nr < 0 {
        return None;
    }
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = u64::from_str_radix(it.next()?.trim_start_matches("0x"), 16).ok()?;
    }
    Some(Syscall { nr, args })
}

/// Access bits of an open-family call, or `None` for another call. `read_u64` reads user
/// memory of the process (for `openat2`'s `struct open_how`).
pub fn open_access(call: &Syscall, read_u64: impl Fn(u64) -> Option<u64>) -> Option<u32> {
    Some(match call.nr {
        nr::OPEN => open_flags_access(call.args[1]),
        nr::OPENAT | nr::OPEN_BY_HANDLE_AT => open_flags_access(call.args[2]),
        nr::CREAT => access::WRITE,
        nr::OPENAT2 => match read_u64(call.args[2]) {
            Some(flags) => open_flags_access(flags),
            None => access::READ | access::WRITE,
        },
        nr::EXECVE | nr::EXECVEAT | nr::USELIB => access::EXEC,
        _ => return None,
    })
}

/// Access of the open that process `tgid` is blocked in: the union over its threads that are
/// in an open-family call; read and write when there is none (io_uring) or `/proc` is gone.
pub fn blocked_open_access(tgid: i32) -> u32 {
    // The event is queued just before the opener goes to sleep waiting for the answer: a
    // thread read in between says `running`. Look again for a moment before calling the
    // access unknown (which refuses the open).
    for _ in 0..RUNNING_RETRIES {
        match scan_open_access(tgid) {
            Scan::Found(a) => return a,
            Scan::Running => std::thread::sleep(std::time::Duration::from_millis(1)),
            Scan::Unknown => break,
        }
    }
    access::READ | access::WRITE
}

/// Looks at a thread that is still `running` before giving up (about 50 ms).
const RUNNING_RETRIES: u32 = 50;

enum Scan {
    Found(u32),
    /// No thread in an open-family call yet, and some thread still running.
    Running,
    Unknown,
}

fn scan_open_access(tgid: i32) -> Scan {
    let Ok(tasks) = fs::read_dir(format!("/proc/{tgid}/task")) else {
        return Scan::Unknown;
    };
    let mut found = 0;
    let mut running = false;
    for t in tasks.filter_map(Result::ok) {
        let Ok(text) = fs::read_to_string(t.path().join("syscall")) else {
            continue;
        };
        if text.trim() == "running" {
            running = true;
            continue;
        }
        let Some(call) = parse_syscall(&text) else {
            continue;
        };
        let tid: i32 = t.file_name().to_string_lossy().parse().unwrap_or(tgid);
        if let Some(a) = open_access(&call, |addr| read_user_u64(tid, addr)) {
            found |= a;
        }
    }
    match (found, running) {
        (0, true) => Scan::Running,
        (0, false) => Scan::Unknown,
        (a, _) => Scan::Found(a),
    }
}

/// Read 8 bytes at `addr` in process `pid`.
fn read_user_u64(pid: i32, addr: u64) -> Option<u64> {
    let mut buf = [0u8; 8];
    let remote = [nix::sys::uio::RemoteIoVec {
        base: usize::try_from(addr).ok()?,
        len: 8,
    }];
    let n = nix::sys::uio::process_vm_readv(
        nix::unistd::Pid::from_raw(pid),
        &mut [IoSliceMut::new(&mut buf)],
        &remote,
    )
    .ok()?;
    (n == 8).then(|| u64::from_ne_bytes(buf))
}

/// `read,write` for display.
pub fn names(bits: u32) -> Vec<&'static str> {
    [
        (access::READ, "read"),
        (access::WRITE, "write"),
        (access::DELETE, "delete"),
        (access::EXEC, "exec"),
    ]
    .into_iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, n)| n)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_lines() {
        let openat = parse_syscall(
            "257 0xffffff9c 0x564216688920 0x441 0x1b6 0x7fa1267ebc70 0x1 0x7ffd1ab8ac10 0x7fa1\n",
        )
        .unwrap();
        assert_eq!(openat.nr, 257);
        assert_eq!(openat.args[2], 0x441);
        assert_eq!(open_access(&openat, |_| None), Some(access::WRITE));
        assert_eq!(parse_syscall("-1 0x7ffd 0x7fa1\n"), None);
        assert_eq!(parse_syscall("running\n"), None);
        let read = parse_syscall("257 0xffffff9c 0x5642 0x0 0x0 0x0 0x0 0x1 0x2").unwrap();
        assert_eq!(open_access(&read, |_| None), Some(access::READ));
        let how = parse_syscall("437 0xffffff9c 0x5642 0x7000 0x18 0x0 0x0 0x1 0x2").unwrap();
        assert_eq!(
            open_access(&how, |a| (a == 0x7000).then_some(0o2)),
            Some(access::READ | access::WRITE)
        );
        assert_eq!(
            open_access(&how, |_| None),
            Some(access::READ | access::WRITE)
        );
        let exec = parse_syscall("59 0x1 0x2 0x3 0x0 0x0 0x0 0x1 0x2").unwrap();
        assert_eq!(open_access(&exec, |_| None), Some(access::EXEC));
        let other = parse_syscall("0 0x1 0x2 0x3 0x0 0x0 0x0 0x1 0x2").unwrap();
        assert_eq!(open_access(&other, |_| None), None);
        assert_eq!(names(access::READ | access::DELETE), ["read", "delete"]);
    }

    #[test]
    fn a_process_that_is_gone_is_unknown() {
        assert_eq!(blocked_open_access(i32::MAX), access::READ | access::WRITE);
    }
}
