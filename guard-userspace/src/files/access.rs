//! What a thread blocked in a permission event is asking for, from what the kernel holds.
//!
//! The file descriptor fanotify hands over is opened with the group's own flags, so it says
//! nothing about the offender's open. The event names the thread (`FAN_REPORT_TID`), which
//! is blocked inside its `open` system call until we answer: `/proc/TGID/task/TID/syscall`
//! shows that call and its register arguments, saved by the kernel at entry, which no other
//! thread can change. Only tagged processes get here.
//!
//! What stays unknown is taken as read and write, so that a tagged open of a protected
//! object is refused rather than guessed: `openat2` keeps its flags in user memory, which
//! another thread may rewrite after the kernel copied them; an io_uring worker opens on the
//! ring's behalf, and `io_uring_enter` names no flags.

use std::fs;

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

/// Access bits of an open-family call, or `None` for another call.
pub fn open_access(call: &Syscall) -> Option<u32> {
    Some(match call.nr {
        nr::OPEN => open_flags_access(call.args[1]),
        nr::OPENAT | nr::OPEN_BY_HANDLE_AT => open_flags_access(call.args[2]),
        nr::CREAT => access::WRITE,
        // `struct open_how` is in memory the offender can rewrite: unknown.
        nr::OPENAT2 => UNKNOWN,
        nr::EXECVE | nr::EXECVEAT | nr::USELIB => access::EXEC,
        _ => return None,
    })
}

/// What an open whose access cannot be established is taken to ask for.
pub const UNKNOWN: u32 = access::READ | access::WRITE;

/// Access of the open that thread `tid` of process `tgid` is blocked in; [`UNKNOWN`] when it
/// is in no open-family call (io_uring) or `/proc` is gone.
pub fn blocked_open_access(tgid: u32, tid: i32) -> u32 {
    let path = format!("/proc/{tgid}/task/{tid}/syscall");
    // The event is queued just before the opener goes to sleep waiting for the answer: read
    // in between, the thread says `running`. Look again for a moment first.
    for _ in 0..RUNNING_RETRIES {
        let Ok(text) = fs::read_to_string(&path) else {
            break;
        };
        if text.trim() == "running" {
            std::thread::sleep(std::time::Duration::from_millis(1));
            continue;
        }
        return parse_syscall(&text)
            .and_then(|call| open_access(&call))
            .unwrap_or(UNKNOWN);
    }
    UNKNOWN
}

/// Looks at a thread that is still `running` before giving up (about 50 ms).
const RUNNING_RETRIES: u32 = 50;

/// The thread group of thread `tid` (from `/proc/TID/status`).
pub fn tgid_of(tid: i32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
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
        assert_eq!(open_access(&openat), Some(access::WRITE));
        assert_eq!(parse_syscall("-1 0x7ffd 0x7fa1\n"), None);
        assert_eq!(parse_syscall("running\n"), None);
        let read = parse_syscall("257 0xffffff9c 0x5642 0x0 0x0 0x0 0x0 0x1 0x2").unwrap();
        assert_eq!(open_access(&read), Some(access::READ));
        // openat2's flags are in the offender's memory: never read, always unknown.
        let how = parse_syscall("437 0xffffff9c 0x5642 0x7000 0x18 0x0 0x0 0x1 0x2").unwrap();
        assert_eq!(open_access(&how), Some(UNKNOWN));
        let exec = parse_syscall("59 0x1 0x2 0x3 0x0 0x0 0x0 0x1 0x2").unwrap();
        assert_eq!(open_access(&exec), Some(access::EXEC));
        let other = parse_syscall("0 0x1 0x2 0x3 0x0 0x0 0x0 0x1 0x2").unwrap();
        assert_eq!(open_access(&other), None);
        assert_eq!(names(access::READ | access::DELETE), ["read", "delete"]);
    }

    #[test]
    fn a_process_that_is_gone_is_unknown() {
        assert_eq!(blocked_open_access(u32::MAX, i32::MAX), UNKNOWN);
        let me = std::process::id();
        assert_eq!(tgid_of(me as i32), Some(me));
    }
}
