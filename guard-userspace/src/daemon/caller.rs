//! Who is calling the API. The kernel names the peer of a unix socket at connect time
//! (`SO_PEERCRED`); by the time a request is read that pid may belong to another process. With
//! `SO_PEERPIDFD` (Linux 6.5) the daemon holds a pidfd of the peer itself, which says whether
//! that very process still runs. Without it (6.1) the peer's start time, read when the
//! connection is accepted, must still match.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::tags::ProcInfo;

/// `SO_PEERPIDFD` (include/uapi/asm-generic/socket.h).
const SO_PEERPIDFD: libc::c_int = 77;

pub(super) struct Caller {
    /// From `SO_PEERCRED`: the pid at connect time.
    pid: Option<i32>,
    pidfd: Option<OwnedFd>,
    /// The peer's start time when the connection was accepted.
    start_ns: Option<u64>,
}

impl Caller {
    pub(super) fn of(stream: &tokio::net::UnixStream) -> Self {
        let pid = stream
            .peer_cred()
            .ok()
            .and_then(|c| c.pid())
            .filter(|p| *p > 0);
        Self {
            pid,
            pidfd: peer_pidfd(stream.as_raw_fd()),
            start_ns: pid.and_then(|p| ProcInfo::read(p).ok()).map(|i| i.start_ns),
        }
    }

    /// The pid at connect time, for records (it may be stale).
    pub(super) fn pid(&self) -> Option<i32> {
        self.pid
    }

    /// The caller's pid, if the process that connected still runs.
    pub(super) fn live_pid(&self) -> Result<i32, String> {
        let Some(pid) = self.pid else {
            return Err("cannot identify the calling process (no SO_PEERCRED pid)".into());
        };
        if let Some(fd) = &self.pidfd {
            return match pidfd_pid(fd) {
                Some(p) if p > 0 => Ok(p),
                _ => Err("the calling process has exited".into()),
            };
        }
        let now = ProcInfo::read(pid).ok().map(|i| i.start_ns);
        match (now, self.start_ns) {
            (Some(now), Some(then)) if now == then => Ok(pid),
            _ => Err(format!(
                "the calling process is gone (pid {pid} is not the process that connected)"
            )),
        }
    }
}

/// A pidfd of the socket's peer (`None` before Linux 6.5).
fn peer_pidfd(fd: RawFd) -> Option<OwnedFd> {
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one int into a buffer of that size.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut pidfd).cast(),
            &raw mut len,
        )
    };
    // SAFETY: on success the kernel returned a new pidfd that nothing else owns.
    (ret == 0 && pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) })
}

/// The pid a pidfd refers to, -1 once that process has exited (`/proc/self/fdinfo`).
fn pidfd_pid(fd: &OwnedFd) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_peer_is_pinned_by_pidfd_or_start_time() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let caller = Caller::of(&a);
        assert_eq!(caller.live_pid(), Ok(std::process::id() as i32));
        if let Some(fd) = &caller.pidfd {
            assert_eq!(pidfd_pid(fd), Some(std::process::id() as i32));
        }
    }
}
