//! What the process tree learns from `/proc`: details of a live process, its cgroup and
//! container.

use guard_common::ProcKey;

use super::Details;

/// Longest argv kept per process (bytes, all arguments together); longer ones are cut.
pub const ARGV_MAX_BYTES: usize = 4096;

/// A live process as `/proc` shows it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub key: ProcKey,
    pub ppid: u32,
    pub details: Details,
}

/// Where the process tree reads processes it has not heard of from the kernel.
pub trait ProcSource: Send + 'static {
    /// The live process `pid`, if any.
    fn read(&self, pid: u32) -> Option<Snapshot>;
    /// Every live process.
    fn all(&self) -> Vec<Snapshot>;
    /// Whether the process `key` is still alive.
    fn alive(&self, key: ProcKey) -> bool {
        self.read(key.tgid).is_some_and(|s| s.key == key)
    }
}

/// The real `/proc`.
pub struct Procfs;

impl ProcSource for Procfs {
    fn read(&self, pid: u32) -> Option<Snapshot> {
        read_proc(pid)
    }

    fn all(&self) -> Vec<Snapshot> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(read_proc)
            .collect()
    }

    fn alive(&self, key: ProcKey) -> bool {
        stat(key.tgid).is_some_and(|(k, _, _)| k == key)
    }
}

/// `(key, ppid, comm)` from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(ProcKey, u32, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

/// Parse `/proc/PID/stat`: the comm is in parentheses and may contain anything, so fields are
/// counted from the last `)`.
pub fn parse_stat(pid: u32, text: &str) -> Option<(ProcKey, u32, String)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] = state (field 3), rest[1] = ppid (4), rest[19] = starttime (22).
    let ppid = rest.get(1)?.parse().ok()?;
    let start_ticks: u64 = rest.get(19)?.parse().ok()?;
    Some((
        ProcKey::new(pid, start_ticks * guard_common::NS_PER_TICK),
        ppid,
        comm,
    ))
}

fn read_proc(pid: u32) -> Option<Snapshot> {
    let (key, ppid, comm) = stat(pid)?;
    let base = format!("/proc/{pid}");
    let link = |name: &str| {
        std::fs::read_link(format!("{base}/{name}"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    };
    let mut argv = std::fs::read(format!("{base}/cmdline"))
        .map(|b| split_argv(&b))
        .unwrap_or_default();
    crate::secrets::redact_argv(&mut argv, crate::secrets::key());
    let uid = std::fs::read_to_string(format!("{base}/status"))
        .ok()
        .and_then(|s| parse_uid(&s));
    let cgroup_text = std::fs::read_to_string(format!("{base}/cgroup")).unwrap_or_default();
    let (cgroup, container_id) = parse_cgroup(&cgroup_text);
    let details = Details {
        comm,
        exe: link("exe"),
        argv,
        cwd: link("cwd"),
        uid,
        cgroup,
        container_id,
    };
    // The pid may have been reused while reading: trust the details only if the key held.
    match stat(pid) {
        Some((again, _, _)) if again == key => Some(Snapshot { key, ppid, details }),
        _ => None,
    }
}

/// NUL-separated arguments, cut at [`ARGV_MAX_BYTES`].
pub fn split_argv(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut used = 0;
    for arg in bytes.split(|b| *b == 0) {
        if arg.is_empty() && used + 1 >= bytes.len() {
            break;
        }
        if used + arg.len() > ARGV_MAX_BYTES {
            let room = ARGV_MAX_BYTES.saturating_sub(used);
            out.push(format!("{}…", String::from_utf8_lossy(&arg[..room])));
            break;
        }
        used += arg.len() + 1;
        out.push(String::from_utf8_lossy(arg).into_owned());
    }
    out
}

/// Real uid from `/proc/PID/status`.
pub fn parse_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The cgroup path of a process (the v2 path when there is one, else the first v1
/// hierarchy's) and the container id found in any of its paths.
pub fn parse_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let mut v2 = None;
    let mut v1 = None;
    let mut container = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if container.is_none() {
            container = container_id(path);
        }
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if v1.is_none() {
            v1 = Some(path.to_string());
        }
    }
    (v2.or(v1), container)
}

/// The container id in a cgroup path: the innermost component that is, or wraps, 64 hex
/// digits, as docker (`/docker/ID`, `docker-ID.scope`), containerd (`cri-containerd-ID.scope`,
/// `/kubepods/…/ID`), CRI-O (`crio-ID.scope`) and podman (`libpod-ID.scope`) name them. The
/// CRI-O monitor (`crio-conmon-ID`) is not the container.
pub fn container_id(path: &str) -> Option<String> {
    path.split('/').rev().find_map(|comp| {
        if comp.starts_with("crio-conmon-") || comp.starts_with("libpod-conmon-") {
            return None;
        }
        let comp = comp.strip_suffix(".scope").unwrap_or(comp);
        let id = comp.rsplit(['-', ':']).next().unwrap_or(comp);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| id.to_ascii_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e2d1c0b9a8f7e6d5c4b3a29180716253443526170819a0b1c2d3e4f506172";

    #[test]
    fn finds_container_ids_of_every_runtime() {
        for path in [
            format!("/docker/{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
            format!("/kubepods/besteffort/pod1234-5678/{ID}"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12_34.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!(
                "/system.slice/containerd.service/kubepods-besteffort-pod1.slice:cri-containerd:{ID}"
            ),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(ID), "{path}");
        }
        for path in [
            "/",
            "/user.slice/user-1000.slice/session-3.scope",
            "/system.slice/docker.service",
            &format!("/kubepods.slice/crio-conmon-{ID}.scope"),
            &format!("/docker/{}", &ID[..63]),
            "/docker/zz4e2d1c0b9a8f7e6d5c4b3a29180716253443526170819a0b1c2d3e4f506172",
        ] {
            assert_eq!(container_id(path), None, "{path}");
        }
    }

    #[test]
    fn cgroup_prefers_v2_and_finds_the_container_in_any_hierarchy() {
        let hybrid = format!(
            "12:memory:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/system.slice/containerd.service\n"
        );
        let (path, id) = parse_cgroup(&hybrid);
        assert_eq!(path.as_deref(), Some("/system.slice/containerd.service"));
        assert_eq!(id.as_deref(), Some(ID));
        let (path, id) = parse_cgroup("0::/user.slice/user-0.slice/session-1.scope\n");
        assert_eq!(
            path.as_deref(),
            Some("/user.slice/user-0.slice/session-1.scope")
        );
        assert_eq!(id, None);
        let (path, _) = parse_cgroup("4:pids:/a\n3:cpu:/b\n");
        assert_eq!(path.as_deref(), Some("/a"));
        assert_eq!(parse_cgroup(""), (None, None));
    }

    #[test]
    fn parses_stat_with_hostile_comm() {
        let text = "4242 (a) b (c)) S 4200 4242 4200 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 8123 1000 100 184467\n";
        let (key, ppid, comm) = parse_stat(4242, text).unwrap();
        assert_eq!(comm, "a) b (c)");
        assert_eq!(ppid, 4200);
        assert_eq!(key, ProcKey::new(4242, 8123 * 10_000_000));
    }

    #[test]
    fn splits_and_bounds_argv() {
        assert_eq!(split_argv(b"ls\0-l\0/tmp\0"), ["ls", "-l", "/tmp"]);
        assert_eq!(split_argv(b"a\0\0b\0"), ["a", "", "b"]);
        assert!(split_argv(b"").is_empty());
        let long = vec![b'x'; ARGV_MAX_BYTES * 2];
        let argv = split_argv(&long);
        assert_eq!(argv.len(), 1);
        assert!(argv[0].len() <= ARGV_MAX_BYTES + 4);
        assert_eq!(
            parse_uid("Name:\tx\nUid:\t1000\t1000\t1000\t1000\n"),
            Some(1000)
        );
    }

    #[test]
    fn reads_this_process() {
        let me = Procfs.read(std::process::id()).unwrap();
        assert_eq!(me.key.tgid, std::process::id());
        assert!(me.details.exe.is_some());
        assert!(!me.details.argv.is_empty());
        assert!(Procfs.alive(me.key));
        assert!(!Procfs.alive(ProcKey::new(me.key.tgid, me.key.start_ns + 10_000_000)));
    }
}
