//! `guard-bench taint-window ITERS DIR`: how long a tagged tree is held by the secrets rule
//! after a first read. Each iteration writes a new file in DIR (plain text: no secret), reads
//! it, then connects to a loopback listener until the connect is allowed. Under a policy whose
//! secrets rule denies, the tree is pending from the read until the daemon has scanned the
//! file, and its connects meet EPERM meanwhile; under any other policy the first connect goes
//! through. Output: `first_open_ns=…` (the timed open of the new file, a first read's cost),
//! `window_ns=…` (read to allowed connect), `denied=N`.

use std::{
    io::{Read as _, Write as _},
    time::{Duration, Instant},
};

use super::{Result, SOCKADDR_IN_LEN, loopback_listener, os_error};

/// Pause between denied attempts: bounds the decisions logged while the tree is pending.
const RETRY: Duration = Duration::from_micros(50);
/// A window longer than this is a failure (a scan that never answers).
const GIVE_UP: Duration = Duration::from_secs(5);

pub fn taint_window(iters: u64, dir: &str) -> Result<String> {
    let addr = loopback_listener()?;
    let (mut opens, mut windows, mut denied) = (Vec::new(), Vec::new(), 0u64);
    let pid = std::process::id();
    for i in 0..iters {
        let path = std::path::Path::new(dir).join(format!("taint-window-{pid}-{i}.txt"));
        std::fs::File::create(&path)
            .and_then(|mut f| writeln!(f, "notes {i} of {pid}: nothing secret here"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let start = Instant::now();
        let mut f = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        opens.push(start.elapsed().as_nanos());
        let mut text = String::new();
        f.read_to_string(&mut text)
            .map_err(|e| format!("read: {e}"))?;
        let read_at = Instant::now();
        loop {
            // SAFETY: plain socket calls on an fd we own and close in every path.
            let (rc, errno) = unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    return Err(os_error("socket"));
                }
                let rc = libc::connect(fd, (&raw const addr).cast(), SOCKADDR_IN_LEN);
                let errno = *libc::__errno_location();
                libc::close(fd);
                (rc, errno)
            };
            match (rc, errno) {
                (0, _) => break,
                (_, libc::EPERM) if read_at.elapsed() < GIVE_UP => {
                    denied += 1;
                    std::thread::sleep(RETRY);
                }
                _ => return Err(format!("connect after a read: {rc} (errno {errno})")),
            }
        }
        windows.push(read_at.elapsed().as_nanos());
        let _ = std::fs::remove_file(&path);
    }
    let list = |v: &[u128]| v.iter().map(u128::to_string).collect::<Vec<_>>().join(",");
    Ok(format!(
        "first_open_ns={} window_ns={} denied={denied}",
        list(&opens),
        list(&windows)
    ))
}
