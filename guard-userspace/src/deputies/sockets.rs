//! The host's socket tables (this network namespace's `/proc/net/{unix,tcp,tcp6}`) and which
//! process holds which socket (`/proc/PID/fd`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use procfs::{
    net::TcpState,
    process::{FDTarget, Process},
};

/// `__SO_ACCEPTCON` in `/proc/net/unix`'s flags: the socket listens.
const UNIX_LISTENING: u32 = 0x0001_0000;

/// Listening and connected sockets by inode.
#[derive(Debug, Default)]
pub struct Tables {
    /// Listening unix sockets: inode → path, or `@name` for an abstract one.
    pub unix_listeners: BTreeMap<u64, String>,
    /// Listening TCP sockets: inode → local address.
    pub tcp_listeners: BTreeMap<u64, SocketAddr>,
    /// Established TCP sockets: inode → (local, remote).
    pub tcp_established: BTreeMap<u64, (SocketAddr, SocketAddr)>,
}

impl Tables {
    /// Read the tables of the daemon's network namespace; a table that cannot be read is empty.
    pub fn read() -> Self {
        let mut t = Self {
            unix_listeners: std::fs::read_to_string("/proc/net/unix")
                .map(|s| parse_unix(&s))
                .unwrap_or_default(),
            ..Self::default()
        };
        let tcp = procfs::net::tcp().unwrap_or_default();
        let tcp6 = procfs::net::tcp6().unwrap_or_default();
        for e in tcp.into_iter().chain(tcp6) {
            match e.state {
                TcpState::Listen => {
                    t.tcp_listeners.insert(e.inode, e.local_address);
                }
                TcpState::Established => {
                    t.tcp_established
                        .insert(e.inode, (e.local_address, e.remote_address));
                }
                _ => {}
            }
        }
        t
    }
}

/// Listening sockets of `/proc/net/unix` (`Num RefCount Protocol Flags Type St Inode Path`);
/// procfs's parser drops the flags, which are what says a socket listens.
pub fn parse_unix(text: &str) -> BTreeMap<u64, String> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let inode = f.get(6)?.parse().ok()?;
            let path = f.get(7)?;
            (flags & UNIX_LISTENING != 0).then(|| (inode, (*path).to_owned()))
        })
        .collect()
}

/// A process of interest on the host.
#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Vec<String>,
    /// Socket inodes it holds.
    pub sockets: BTreeSet<u64>,
}

/// Every process whose `comm` `wanted` accepts, with its sockets; processes that exit meanwhile
/// are left out.
pub fn processes(mut wanted: impl FnMut(i32, &str) -> bool) -> Vec<Proc> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(Result::ok)
        .filter_map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", p.pid)).ok()?;
            let comm = comm.trim_end().to_owned();
            wanted(p.pid, &comm).then(|| describe(&p, comm))?
        })
        .collect()
}

fn describe(p: &Process, comm: String) -> Option<Proc> {
    let sockets = p
        .fd()
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|fd| match fd.target {
            FDTarget::Socket(inode) => Some(inode),
            _ => None,
        })
        .collect();
    Some(Proc {
        pid: u32::try_from(p.pid).ok()?,
        comm,
        cmdline: p.cmdline().unwrap_or_default(),
        sockets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listening_unix_sockets_with_a_name() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1234 /tmp/tmux-0/default\n\
            0000000000000000: 00000002 00000000 00000000 0001 03 1235 /tmp/tmux-0/default\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1236 @/tmp/dbus-abc\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1237\n";
        let l = parse_unix(text);
        assert_eq!(
            l.into_iter().collect::<Vec<_>>(),
            [
                (1234, "/tmp/tmux-0/default".to_owned()),
                (1236, "@/tmp/dbus-abc".to_owned())
            ]
        );
    }

    #[test]
    fn a_listener_of_this_process_is_found_with_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let t = Tables::read();
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        let me = me.trim_end();
        let procs = processes(|_, c| c == me);
        let mine = procs
            .iter()
            .find(|p| p.pid == std::process::id())
            .expect("this process");
        assert!(
            mine.sockets
                .iter()
                .any(|i| t.unix_listeners.get(i).map(String::as_str) == path.to_str()),
            "{:?}",
            mine.sockets
        );
    }
}
