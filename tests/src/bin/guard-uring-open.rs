//! Open and read a file with io_uring (`IORING_OP_OPENAT`), which no syscall tracepoint of
//! `open(2)` sees, for the file tests.
//!
//! usage: guard-uring-open PATH [--async] [--unlink]
//! `--async` sets IOSQE_ASYNC, so the operation runs in an io-wq worker thread instead of the
//! submitting task. Prints `ok CONTENT` (exit 0) or `err ERRNO` (exit 1). With `--unlink` it
//! removes PATH with `IORING_OP_UNLINKAT` instead, and prints `ok` or `err ERRNO`.

use std::{ffi::CString, fs::File, io::Read, os::fd::FromRawFd, os::unix::ffi::OsStrExt};

use io_uring::{IoUring, opcode, squeue, types};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: guard-uring-open PATH [--async]");
    let force_async = args.iter().any(|a| a == "--async");
    let unlink = args.iter().any(|a| a == "--unlink");
    let c = CString::new(std::path::Path::new(path).as_os_str().as_bytes()).expect("path");
    let mut ring = IoUring::new(4).expect("io_uring_setup");
    let mut op = if unlink {
        opcode::UnlinkAt::new(types::Fd(libc::AT_FDCWD), c.as_ptr())
            .build()
            .user_data(1)
    } else {
        opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), c.as_ptr())
            .flags(libc::O_RDONLY | libc::O_CLOEXEC)
            .build()
            .user_data(1)
    };
    if force_async {
        op = op.flags(squeue::Flags::ASYNC);
    }
    // SAFETY: the path outlives the operation: we wait for its completion below.
    unsafe { ring.submission().push(&op).expect("submission queue full") };
    ring.submit_and_wait(1).expect("io_uring_enter");
    let cqe = ring.completion().next().expect("a completion");
    let res = cqe.result();
    if res < 0 {
        println!("err {}", -res);
        std::process::exit(1);
    }
    if unlink {
        println!("ok");
        return;
    }
    // SAFETY: a fresh fd returned by the completed open, owned by nobody else.
    let mut f = unsafe { File::from_raw_fd(res) };
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    println!("ok {text}");
}
