//! Workloads for `cargo xtask bench`: each is a tight loop of one kind of system call, timed
//! inside this process, so that process start-up, `guard run` and the harness itself are not
//! part of the figure. Every workload runs a short untimed warm-up first.
//!
//! ```text
//! guard-bench open-close ITERS FILE       open(O_RDONLY) + close
//! guard-bench stat ITERS FILE             stat
//! guard-bench tcp-connect ITERS           socket + connect + close to a loopback listener
//!                                         (its own accept thread; SO_LINGER 0, no TIME_WAIT)
//! guard-bench udp-sendto ITERS            sendto a bound loopback UDP socket
//! guard-bench fork-exit ITERS             fork, the child exits, waitpid
//! guard-bench fork-exec ITERS EXE         fork, the child execs EXE (no arguments), waitpid
//! guard-bench command ITERS -- CMD ARGS…  run CMD to completion ITERS times (stdout discarded)
//! guard-bench kill-latency ITERS IP:PORT  a child connects to IP:PORT (a `kill` rule target);
//!                                         time from just before connect() to the child reaped
//! guard-bench taint-window ITERS DIR      read a new file, then connect until allowed: how
//!                                         long the secrets rule holds a pending tree
//! ```
//!
//! Output, one line on stdout: `ns_per_op=F cpu_ns_per_op=F iters=N elapsed_ns=N` (kill-latency:
//! `killed=K outcome=WHAT samples_ns=a,b,…`). Anything unexpected (a failed system call, a
//! child that did not exit 0) ends the run with a non-zero status and a message: a workload
//! that silently stops doing its work would report fake numbers.

use std::{
    ffi::CString,
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    os::fd::AsRawFd as _,
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

#[path = "../bench_taint.rs"]
mod taint;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("guard-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn run(args: &[String]) -> Result<String> {
    let usage = "usage: guard-bench WORKLOAD ITERS [ARGS…] (see the source for the list)";
    let [workload, iters, rest @ ..] = args else {
        return Err(usage.into());
    };
    let iters: u64 = iters
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("ITERS must be a positive integer, got {iters:?}"))?;
    let arg = |i: usize| rest.get(i).ok_or_else(|| usage.to_string());
    match workload.as_str() {
        "open-close" => timed(iters, open_close(&cstring(arg(0)?)?)),
        "stat" => timed(iters, stat(&cstring(arg(0)?)?)),
        "pread" => timed(iters, pread(&cstring(arg(0)?)?)?),
        "tcp-connect" => timed(iters, tcp_connect()?),
        "udp-sendto" => timed(iters, udp_sendto()?),
        "denied-connect" => timed(iters, denied_connect(arg(0)?)?),
        "fork-exit" => timed(iters, fork_exit()),
        "fork-exec" => timed(iters, fork_exec(&cstring(arg(0)?)?)),
        "command" => {
            let cmd = match rest.first().map(String::as_str) {
                Some("--") => &rest[1..],
                _ => rest,
            };
            if cmd.is_empty() {
                return Err(usage.into());
            }
            timed(iters, command(cmd))
        }
        "kill-latency" => kill_latency(iters, arg(0)?),
        "taint-window" => taint::taint_window(iters, arg(0)?),
        other => Err(format!("unknown workload {other:?}\n{usage}")),
    }
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Warm up (a tenth of the iterations, at least one), then time `iters` calls of `op`: wall
/// clock, and CPU time of this process (every thread) plus the children it reaped, which
/// leaves out the time spent waiting for a CPU on a busy machine.
fn timed(iters: u64, mut op: impl FnMut() -> Result<()>) -> Result<String> {
    for _ in 0..(iters / 10).max(1) {
        op()?;
    }
    let cpu_start = cpu_ns();
    let start = Instant::now();
    for _ in 0..iters {
        op()?;
    }
    let elapsed = start.elapsed().as_nanos();
    let cpu = cpu_ns().saturating_sub(cpu_start);
    Ok(format!(
        "ns_per_op={:.1} cpu_ns_per_op={:.1} iters={iters} elapsed_ns={elapsed}",
        elapsed as f64 / iters as f64,
        cpu as f64 / iters as f64
    ))
}

/// CPU time of this process (all threads) plus its reaped children, in ns.
fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointers.
    let (own, children) = unsafe {
        libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts);
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        (ts, ru)
    };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    own.tv_sec as u64 * 1_000_000_000
        + own.tv_nsec as u64
        + tv(children.ru_utime)
        + tv(children.ru_stime)
}

fn open_close(path: &CString) -> impl FnMut() -> Result<()> + '_ {
    move || {
        // SAFETY: a valid NUL-terminated path; the fd is closed right away.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(os_error("open"));
        }
        // SAFETY: closing the fd we just opened.
        unsafe { libc::close(fd) };
        Ok(())
    }
}

/// `pread` of 4 KiB at offset 0 of `path`, opened once.
fn pread(path: &CString) -> Result<impl FnMut() -> Result<()>> {
    // SAFETY: a valid NUL-terminated path; the fd lives as long as the closure (the process).
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(os_error("open"));
    }
    let mut buf = vec![0u8; 4096];
    Ok(move || {
        // SAFETY: a valid fd and a buffer of the length given.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(os_error("pread"));
        }
        Ok(())
    })
}

fn stat(path: &CString) -> impl FnMut() -> Result<()> + '_ {
    move || {
        // SAFETY: zeroed plain-data struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid path and a valid out-pointer.
        if unsafe { libc::stat(path.as_ptr(), &mut st) } != 0 {
            return Err(os_error("stat"));
        }
        Ok(())
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

const SOCKADDR_IN_LEN: libc::socklen_t = size_of::<libc::sockaddr_in>() as libc::socklen_t;

/// connect() to `dest`, a loopback address a deny rule covers, expecting EPERM every time:
/// each one is a decision the daemon logs (a decision flood). Loopback, so that a rule that
/// failed would reach nothing beyond this host.
fn denied_connect(dest: &str) -> Result<impl FnMut() -> Result<()>> {
    let dest: SocketAddrV4 = dest
        .parse()
        .map_err(|e| format!("destination {dest:?}: {e}"))?;
    if !dest.ip().is_loopback() {
        return Err(format!("{dest} is not a loopback address"));
    }
    let addr = sockaddr(dest);
    Ok(move || {
        // SAFETY: plain socket calls on an fd we own and close in every path.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(os_error("socket"));
            }
            let ret = libc::connect(fd, (&raw const addr).cast(), SOCKADDR_IN_LEN);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            match (ret, err.raw_os_error()) {
                (-1, Some(libc::EPERM)) => Ok(()),
                _ => Err(format!("connect to {dest} was not denied: {ret} ({err})")),
            }
        }
    })
}

/// connect+close to a [`loopback_listener`], whose backlog is large enough that connect()
/// never waits for a SYN retry.
fn tcp_connect() -> Result<impl FnMut() -> Result<()>> {
    let addr = loopback_listener()?;
    let overflows_before = listen_overflows();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let mut done = 0u64;
    Ok(move || {
        // SAFETY: plain socket calls on an fd we own and close in every path.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(os_error("socket"));
            }
            // RST on close: the client keeps no TIME_WAIT, so ports are never exhausted.
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            );
            let rc = libc::connect(
                fd,
                (&addr as *const libc::sockaddr_in).cast(),
                SOCKADDR_IN_LEN,
            );
            if rc != 0 {
                let e = os_error("connect to the loopback listener");
                libc::close(fd);
                return Err(e);
            }
            libc::close(fd);
        }
        done += 1;
        if done.is_multiple_of(4096) && listen_overflows() > overflows_before {
            eprintln!("guard-bench: warning: the listener's accept queue overflowed (SYN retries)");
        }
        Ok(())
    })
}

/// A loopback TCP listener whose own thread accepts and closes every connection, with the
/// largest backlog the kernel allows; its address.
fn loopback_listener() -> Result<libc::sockaddr_in> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("listen: {e}"))?;
    // SAFETY: re-listen on the socket we own, with a bigger backlog (capped by somaxconn).
    if unsafe { libc::listen(listener.as_raw_fd(), 65_535) } != 0 {
        return Err(os_error("listen"));
    }
    let addr = match listener.local_addr().map_err(|e| format!("{e}"))? {
        std::net::SocketAddr::V4(a) => sockaddr(a),
        std::net::SocketAddr::V6(_) => return Err("listener is not IPv4".into()),
    };
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    Ok(addr)
}

/// `TcpExt: ListenOverflows` from /proc/net/netstat (0 when unreadable).
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// An unconnected UDP socket sending 16 bytes to a bound loopback socket nobody reads (once
/// its receive buffer is full the kernel drops the datagrams; sendto still succeeds).
fn udp_sendto() -> Result<impl FnMut() -> Result<()>> {
    let sink = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("{e}"))?;
    let addr = match sink.local_addr().map_err(|e| format!("{e}"))? {
        std::net::SocketAddr::V4(a) => sockaddr(a),
        std::net::SocketAddr::V6(_) => return Err("sink is not IPv4".into()),
    };
    // SAFETY: a new socket we own for the rest of the process.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_error("socket"));
    }
    let payload = [0u8; 16];
    Ok(move || {
        let _keep = &sink;
        // SAFETY: valid buffer, address and fd.
        let n = unsafe {
            libc::sendto(
                fd,
                payload.as_ptr().cast(),
                payload.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                SOCKADDR_IN_LEN,
            )
        };
        if n < 0 {
            return Err(os_error("sendto"));
        }
        Ok(())
    })
}

fn wait_ok(pid: libc::pid_t, what: &str) -> Result<()> {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(os_error("waitpid"));
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(format!("{what}: child ended with wait status {status:#x}"))
    }
}

fn fork() -> Result<libc::pid_t> {
    // SAFETY: the children below only call async-signal-safe functions (_exit, execv).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_error("fork"));
    }
    Ok(pid)
}

fn fork_exit() -> impl FnMut() -> Result<()> {
    || {
        let pid = fork()?;
        if pid == 0 {
            // SAFETY: leave the child at once.
            unsafe { libc::_exit(0) };
        }
        wait_ok(pid, "fork-exit")
    }
}

fn fork_exec(exe: &CString) -> impl FnMut() -> Result<()> + '_ {
    let argv = [exe.as_ptr(), std::ptr::null()];
    move || {
        let pid = fork()?;
        if pid == 0 {
            // SAFETY: NUL-terminated argv of valid C strings; _exit if exec fails.
            unsafe {
                libc::execv(exe.as_ptr(), argv.as_ptr());
                libc::_exit(127);
            }
        }
        wait_ok(pid, "fork-exec")
    }
}

fn command(cmd: &[String]) -> impl FnMut() -> Result<()> + '_ {
    move || {
        let status = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", cmd[0]))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`{}` failed: {status}", cmd.join(" ")))
        }
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Exit codes of a kill-latency child whose connect() returned (it was not killed).
const RETURNED_EPERM: i32 = 2;
const RETURNED_REFUSED: i32 = 3;
const RETURNED_CONNECTED: i32 = 4;
const RETURNED_OTHER: i32 = 5;

/// Each child stores the monotonic clock in a shared page just before connect() to a `kill`
/// rule's destination; the latency is from there to waitpid() returning for it. A child whose
/// connect() returns exits with a code saying how it returned: kills are then not carried out.
fn kill_latency(iters: u64, target: &str) -> Result<String> {
    let target: SocketAddrV4 = target
        .parse()
        .map_err(|e| format!("bad IP:PORT {target:?}: {e}"))?;
    let addr = sockaddr(target);
    // SAFETY: an anonymous shared mapping of one page, never unmapped.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(os_error("mmap"));
    }
    let slot = page.cast::<u64>();
    let mut samples = Vec::new();
    let mut outcome = "killed";
    for _ in 0..iters {
        let pid = fork()?;
        if pid == 0 {
            // SAFETY: plain syscalls and a write to the shared page; the child only leaves
            // through _exit (or SIGKILL).
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                std::ptr::write_volatile(slot, monotonic_ns());
                let rc = libc::connect(
                    fd,
                    (&addr as *const libc::sockaddr_in).cast(),
                    SOCKADDR_IN_LEN,
                );
                let errno = *libc::__errno_location();
                libc::_exit(match (rc, errno) {
                    (0, _) => RETURNED_CONNECTED,
                    (_, libc::EPERM) => RETURNED_EPERM,
                    (_, libc::ECONNREFUSED) => RETURNED_REFUSED,
                    _ => RETURNED_OTHER,
                });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            return Err(os_error("waitpid"));
        }
        let reaped = monotonic_ns();
        // SAFETY: the child wrote the slot before its connect(); it is dead now.
        let before = unsafe { std::ptr::read_volatile(slot) };
        if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL {
            samples.push(reaped.saturating_sub(before));
            continue;
        }
        outcome = match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
            Some(RETURNED_EPERM) => "returned-eperm",
            Some(RETURNED_REFUSED) => "returned-econnrefused",
            Some(RETURNED_CONNECTED) => "returned-connected",
            Some(RETURNED_OTHER) => "returned-other-error",
            _ => "died-otherwise",
        };
        break;
    }
    let list: Vec<String> = samples.iter().map(u64::to_string).collect();
    Ok(format!(
        "killed={} outcome={outcome} samples_ns={}",
        samples.len(),
        list.join(",")
    ))
}
