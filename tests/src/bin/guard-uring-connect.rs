//! Connect a TCP socket with io_uring (`IORING_OP_CONNECT`), which no syscall tracepoint of
//! `connect(2)` sees, for the network tests.
//!
//! usage: guard-uring-connect ADDR:PORT [--async]
//! `--async` sets IOSQE_ASYNC, so the connect runs in an io-wq worker thread instead of the
//! submitting task. Prints `ok` (exit 0) or `err ERRNO` (exit 1).

use std::{net::SocketAddr, os::fd::AsRawFd};

use io_uring::{IoUring, opcode, squeue, types};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrLike, SockaddrStorage, socket};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: guard-uring-connect ADDR:PORT [--async]");
    let force_async = args.iter().any(|a| a == "--async");
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let sock = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    let sa = SockaddrStorage::from(addr);
    let mut ring = IoUring::new(4).expect("io_uring_setup");
    let mut op = opcode::Connect::new(types::Fd(sock.as_raw_fd()), sa.as_ptr(), sa.len())
        .build()
        .user_data(1);
    if force_async {
        op = op.flags(squeue::Flags::ASYNC);
    }
    // SAFETY: the sockaddr and the socket outlive the operation: we wait for its completion
    // below before either is dropped.
    unsafe { ring.submission().push(&op).expect("submission queue full") };
    ring.submit_and_wait(1).expect("io_uring_enter");
    let cqe = ring.completion().next().expect("a completion");
    let res = cqe.result();
    if res < 0 {
        println!("err {}", -res);
        std::process::exit(1);
    }
    println!("ok");
}
