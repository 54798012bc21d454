//! Generates process events as fast as it can, for the event-loss tests: WORKERS forked
//! workers each fork and reap short-lived children until SECONDS have passed. Prints the total
//! number of children forked (each one is a fork and an exit event when the tree is tagged).
//!
//! usage: guard-flood SECONDS WORKERS

use std::time::{Duration, Instant};

fn fork() -> libc::pid_t {
    // SAFETY: this program is single-threaded; children only call _exit or the worker loop,
    // which uses fork, waitpid, write and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    pid
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINTR)
        );
    }
}

fn worker(deadline: Instant, out: libc::c_int) -> ! {
    let mut forks: u64 = 0;
    while Instant::now() < deadline {
        let pid = fork();
        if pid == 0 {
            // SAFETY: leaving the child at once, without running destructors or atexit handlers.
            unsafe { libc::_exit(0) };
        }
        forks += 1;
        reap(pid);
    }
    let bytes = forks.to_ne_bytes();
    // SAFETY: writing 8 bytes from a live buffer to our end of the pipe (atomic: < PIPE_BUF).
    let n = unsafe { libc::write(out, bytes.as_ptr().cast(), bytes.len()) };
    // SAFETY: ending the worker without unwinding into the parent's state.
    unsafe { libc::_exit(if n == 8 { 0 } else { 1 }) }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args[1].parse().expect("SECONDS");
    let workers: usize = args[2].parse().expect("WORKERS");
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut fds = [0; 2];
    // SAFETY: a valid two-element array for the pipe's ends.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let pids: Vec<libc::pid_t> = (0..workers)
        .map(|_| {
            let pid = fork();
            if pid == 0 {
                worker(deadline, fds[1]);
            }
            pid
        })
        .collect();
    for pid in pids {
        reap(pid);
    }
    let mut total = 0u64;
    for _ in 0..workers {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into a live buffer from our end of the pipe.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(n, 8, "a worker did not report");
        total += u64::from_ne_bytes(buf);
    }
    println!("{total}");
}
