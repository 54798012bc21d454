//! Ways a process tree tries to leave its parent's tree, for the tagging tests. Each mode
//! ends with the final process writing its pid to FILE and sleeping, so the test can check
//! whether that process is still tagged.
//!
//! usage: guard-escape MODE FILE   (MODE: double-fork | daemonize | vfork | clone3 | thread-fork)

use std::{ffi::CString, time::Duration};

fn settle(file: &str) -> ! {
    std::fs::write(file, std::process::id().to_string()).expect("write pid file");
    std::thread::sleep(Duration::from_secs(120));
    std::process::exit(0)
}

fn fork() -> libc::pid_t {
    // SAFETY: the child only calls async-signal-safe functions or exits/execs quickly in these
    // single-threaded test paths.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    pid
}

fn exec_sleep_writer(file: &str) -> ! {
    // Exec ourselves in `settle` mode: the new program image must stay tagged too.
    let me = CString::new(std::env::current_exe().unwrap().to_str().unwrap()).unwrap();
    let mode = CString::new("settle").unwrap();
    let f = CString::new(file).unwrap();
    let argv = [me.as_ptr(), mode.as_ptr(), f.as_ptr(), std::ptr::null()];
    // SAFETY: NUL-terminated argv of valid C strings.
    unsafe { libc::execv(me.as_ptr(), argv.as_ptr()) };
    std::process::exit(127)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, file) = (args[1].as_str(), args[2].clone());
    match mode {
        "settle" => settle(&file),
        // fork, setsid, fork again; the intermediate exits so the grandchild is reparented.
        "double-fork" | "daemonize" => {
            if fork() == 0 {
                // SAFETY: plain syscall.
                unsafe { libc::setsid() };
                if fork() == 0 {
                    if mode == "daemonize" {
                        // SAFETY: plain syscalls on fds we own.
                        unsafe {
                            libc::chdir(c"/".as_ptr());
                            libc::close(0);
                            libc::close(1);
                        }
                    }
                    exec_sleep_writer(&file);
                }
                std::process::exit(0);
            }
        }
        "vfork" => {
            let me = CString::new(std::env::current_exe().unwrap().to_str().unwrap()).unwrap();
            let mode = CString::new("settle").unwrap();
            let f = CString::new(file).unwrap();
            let argv = [me.as_ptr(), mode.as_ptr(), f.as_ptr(), std::ptr::null()];
            // SAFETY: the vfork child only calls execv or _exit.
            #[expect(
                deprecated,
                reason = "the test exercises vfork on purpose; the child only execs"
            )]
            let pid = unsafe { libc::vfork() };
            if pid == 0 {
                // SAFETY: as above.
                unsafe {
                    libc::execv(me.as_ptr(), argv.as_ptr());
                    libc::_exit(127);
                }
            }
        }
        "clone3" => {
            #[repr(C)]
            #[derive(Default)]
            struct CloneArgs {
                flags: u64,
                pidfd: u64,
                child_tid: u64,
                parent_tid: u64,
                exit_signal: u64,
                stack: u64,
                stack_size: u64,
                tls: u64,
                set_tid: u64,
                set_tid_size: u64,
                cgroup: u64,
            }
            let args = CloneArgs {
                exit_signal: libc::SIGCHLD as u64,
                ..Default::default()
            };
            // SAFETY: clone3 without CLONE_VM behaves like fork.
            let pid = unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    &args as *const CloneArgs,
                    size_of::<CloneArgs>(),
                )
            };
            assert!(
                pid >= 0,
                "clone3 failed: {}",
                std::io::Error::last_os_error()
            );
            if pid == 0 {
                exec_sleep_writer(&file);
            }
        }
        // A second thread forks: the child must be tagged although the forking thread is
        // not the thread-group leader.
        "thread-fork" => {
            std::thread::spawn(move || {
                if fork() == 0 {
                    exec_sleep_writer(&file);
                }
            })
            .join()
            .unwrap();
        }
        other => panic!("unknown mode {other}"),
    }
    // The launcher waits a little so the test sees the tree, then exits (reparenting).
    std::thread::sleep(Duration::from_millis(200));
}
