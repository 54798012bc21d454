//! Shared pieces of the network tests: the namespace, listeners and clients (python3
//! scripts), tcpdump captures, and assertions.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use guard_tests::{Daemon, Proc, netns::NetNs, output, wait_for};
use serde_json::Value;

/// A TCP/UDP listener that counts what reaches it, writing `{"tcp:5432": n, …}` to a file.
/// TCP connections get a minimal HTTP answer once they send something (or after 1 s).
pub const LISTENER: &str = r#"
import json, os, socket, sys, threading
out = sys.argv[1]
counts = {}
lock = threading.Lock()
def bump(key):
    with lock:
        counts[key] = counts.get(key, 0) + 1
        with open(out + ".tmp", "w") as f:
            json.dump(counts, f)
        os.replace(out + ".tmp", out)
def serve(c):
    c.settimeout(1)
    try:
        c.recv(4096)
    except OSError:
        pass
    try:
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
    except OSError:
        pass
    c.close()
def tcp(fam, host, port, key, s):
    while True:
        c, _ = s.accept()
        bump(key)
        threading.Thread(target=serve, args=(c,), daemon=True).start()
def udp(fam, host, port, key, s):
    while True:
        s.recvfrom(65536)
        bump(key)
threads = []
for spec in sys.argv[2:]:
    kind, port, host = spec.split(":", 2)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    if kind == "tcp":
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_TCP, 23, 16)  # TCP_FASTOPEN
        s.bind((host, int(port)))
        s.listen(64)
        target = tcp
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind((host, int(port)))
        target = udp
    t = threading.Thread(target=target, args=(fam, host, int(port), kind + ":" + port, s), daemon=True)
    t.start()
    threads.append(t)
print("ready", flush=True)
for t in threads:
    t.join()
"#;

/// `client MODE ADDR PORT [SLEEP]`: one attempt, prints `ok` or `err ERRNO`. Modes: `tcp`
/// (connect), `udp` (sendto without connect), `udpconn` (connect then send), `tfo`
/// (sendto with MSG_FASTOPEN), `unix` / `unixdgram` (ADDR is a path or @abstract; PORT is
/// ignored). SLEEP: seconds to stay alive afterwards.
pub const CLIENT: &str = r#"
import socket, sys, time
mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
try:
    if mode == "tcp":
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect((addr, port))
    elif mode == "udp":
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.sendto(b"x", (addr, port))
    elif mode == "udpconn":
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.connect((addr, port))
        s.send(b"x")
    elif mode == "tfo":
        # Blocking: a non-blocking TFO sendto without a cookie returns EINPROGRESS.
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.sendto(b"GET / HTTP/1.0\r\n\r\n", socket.MSG_FASTOPEN, (addr, port))
    elif mode in ("unix", "unixdgram"):
        kind = socket.SOCK_STREAM if mode == "unix" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_UNIX, kind)
        name = "\0" + addr[1:] if addr.startswith("@") else addr
        if mode == "unix":
            s.connect(name)
        else:
            s.sendto(b"x", name)
    print("ok", flush=True)
except OSError as e:
    print("err", e.errno, flush=True)
if len(sys.argv) > 4:
    time.sleep(float(sys.argv[4]))
print("after", flush=True)
"#;

/// `raw MODE ADDR PORT`: one raw-socket attempt, prints `ok` or `err ERRNO`. Modes: `udp4`
/// (a raw IPv4 socket sending a hand-made UDP datagram, checksum 0, to ADDR:PORT), `raw6`
/// (a raw IPv6 socket, created only) and `packet` (an `AF_PACKET` socket, created only).
pub const RAW: &str = r#"
import socket, struct, sys
mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if mode == "udp4":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        payload = b"raw"
        s.sendto(struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload, (addr, 0))
    elif mode == "raw6":
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP)
    elif mode == "packet":
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    print("ok", flush=True)
except OSError as e:
    print("err", e.errno, flush=True)
"#;

/// A UDP DNS server answering `A NAME` with the address in FILE (read at every query),
/// TTL 1, and every other question with no records.
pub const DNS: &str = r#"
import socket, sys
host, name, answer_file = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(512)
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]])
        i += 1 + q[i]
    qtype = int.from_bytes(q[i + 1:i + 3], "big")
    question = q[12:i + 5]
    hit = qtype == 1 and b".".join(labels).lower() == name
    r = q[:2] + b"\x81\x80\x00\x01" + (b"\x00\x01" if hit else b"\x00\x00") + b"\x00\x00\x00\x00" + question
    if hit:
        ip = bytes(int(x) for x in open(answer_file).read().strip().split("."))
        r += b"\xc0\x0c\x00\x01\x00\x01" + (1).to_bytes(4, "big") + b"\x00\x04" + ip
    s.sendto(r, peer)
"#;

/// A unix socket server (stream or datagram) counting connections/datagrams into FILE.
pub const UNIX_SERVER: &str = r#"
import os, socket, sys, threading
out = sys.argv[1]
n = {"count": 0}
def bump():
    n["count"] += 1
    open(out + ".tmp", "w").write(str(n["count"]))
    os.replace(out + ".tmp", out)
socks = []
for spec in sys.argv[2:]:
    kind, name = spec.split("=", 1)
    addr = "\0" + name[1:] if name.startswith("@") else name
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM if kind == "stream" else socket.SOCK_DGRAM)
    s.bind(addr)
    if kind == "stream":
        s.listen(16)
    socks.append((kind, s))
def run(kind, s):
    while True:
        if kind == "stream":
            c, _ = s.accept()
            c.close()
        else:
            s.recv(100)
        bump()
for kind, s in socks:
    threading.Thread(target=run, args=(kind, s), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// [`UNIX_SERVER`] on `specs` (`stream=PATH`, `dgram=PATH`, `stream=@abstract`), ready to
/// accept; killed on drop.
pub struct UnixServer {
    _proc: Proc,
    counts: PathBuf,
}

impl UnixServer {
    pub fn start(counts: &Path, specs: &[String]) -> Self {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", UNIX_SERVER, counts.to_str().unwrap()])
            .args(specs)
            .stdout(Stdio::piped());
        let mut p = Proc::spawn(cmd);
        let mut line = String::new();
        let out = p.child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        Self {
            _proc: p,
            counts: counts.to_path_buf(),
        }
    }

    /// Connections and datagrams received so far.
    pub fn count(&self) -> u64 {
        std::fs::read_to_string(&self.counts)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0)
    }
}

/// The test's namespace: `10.20.K.0/24` and `fd00:20:K::/64`, K unique per test.
pub struct Net {
    pub ns: NetNs,
    /// Namespace addresses.
    pub a: String,
    pub b: String,
    pub a6: String,
}

impl Net {
    pub fn new() -> Self {
        let seq = SUBNET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let k = (std::process::id() + seq) % 200 + 20;
        let ns = NetNs::new(
            &[&format!("10.20.{k}.1/24"), &format!("fd00:20:{k}::1/64")],
            &[
                &format!("10.20.{k}.5/24"),
                &format!("10.20.{k}.6/24"),
                &format!("fd00:20:{k}::5/64"),
            ],
        );
        Self {
            ns,
            a: format!("10.20.{k}.5"),
            b: format!("10.20.{k}.6"),
            a6: format!("fd00:20:{k}::5"),
        }
    }

    /// Start a program inside the namespace and wait for its `ready` line.
    pub fn spawn_ready(&self, program: &str, args: &[&str]) -> Proc {
        let mut cmd = self.ns.command(program);
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut p = Proc::spawn(cmd);
        let stdout = p.child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("read ready line");
        assert_eq!(line.trim(), "ready", "{program} did not start");
        p
    }
}

static SUBNET: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A [`LISTENER`] in the namespace and its counts file.
pub struct Listener {
    _proc: Proc,
    counts: PathBuf,
    _dir: tempfile::TempDir,
}

impl Listener {
    pub fn start(net: &Net, specs: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let counts = dir.path().join("counts.json");
        let mut args = vec!["-c", LISTENER, counts.to_str().unwrap()];
        args.extend(specs.iter().map(String::as_str));
        Self {
            _proc: net.spawn_ready("python3", &args),
            counts,
            _dir: dir,
        }
    }

    pub fn count(&self, key: &str) -> u64 {
        std::fs::read_to_string(&self.counts)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v[key].as_u64())
            .unwrap_or(0)
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `args` tagged (through `guard run`) or untagged.
pub fn run(daemon: Option<&Daemon>, args: &[&str]) -> Output {
    let cmd = match daemon {
        Some(d) => {
            let mut c = d.guard();
            c.arg("run").arg("--").args(args);
            c
        }
        None => {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        }
    };
    output(cmd)
}

pub fn client(daemon: Option<&Daemon>, mode: &str, addr: &str, port: u16) -> Output {
    run(
        daemon,
        &["python3", "-c", CLIENT, mode, addr, &port.to_string()],
    )
}

/// Assert a python client attempt was refused with EPERM.
pub fn assert_eperm(out: &Output, what: &str) {
    assert!(
        stdout(out).starts_with("err 1\n"),
        "{what}: expected EPERM\n{}",
        text(out)
    );
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        stdout(out).starts_with("ok\n"),
        "{what}: expected success\n{}",
        text(out)
    );
}

/// Network decisions in the event log, waiting until at least `n` match `f`.
pub fn net_events(daemon: &Daemon, n: usize, f: impl Fn(&Value) -> bool) -> Vec<Value> {
    wait_for(
        &format!("{n} matching net_connect events"),
        Duration::from_secs(10),
        || {
            let evs: Vec<Value> = daemon
                .events()
                .into_iter()
                .filter(|e| e["kind"] == "net_connect" && f(e))
                .collect();
            (evs.len() >= n).then_some(evs)
        },
    )
}

pub fn counter(daemon: &Daemon, name: &str) -> u64 {
    let st = daemon.status_json().expect("status");
    st["counters"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c[0] == name).and_then(|c| c[1].as_u64()))
        .or_else(|| st["counters"][name].as_u64())
        .unwrap_or_else(|| panic!("no counter {name} in {st}"))
}

pub fn policy(endpoints: &str) -> String {
    format!(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: net-test }}\nspec:\n  endpoints:\n{endpoints}"
    )
}

/// tcpdump inside the namespace, writing to a file; stopped and counted with [`Capture::packets`].
pub struct Capture {
    proc: Option<Proc>,
    stderr: Option<std::io::BufReader<std::process::ChildStderr>>,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Capture {
    pub fn start(net: &Net, filter: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cap.pcap");
        let mut cmd = net.ns.command("tcpdump");
        // --immediate-mode: deliver each packet at once (else TPACKET_V3 holds them for up
        // to a second and a capture stopped sooner counts nothing).
        cmd.args(["-i", &net.ns.ns_if, "-n", "-U", "--immediate-mode", "-w"])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut p = Proc::spawn(cmd);
        let mut stderr = std::io::BufReader::new(p.child.stderr.take().expect("stderr"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stderr, &mut line).expect("tcpdump stderr");
        assert!(line.contains("listening on"), "tcpdump: {line}");
        Self {
            proc: Some(p),
            stderr: Some(stderr),
            file,
            _dir: dir,
        }
    }

    /// Stop the capture and count the packets it saw.
    pub fn packets(mut self) -> usize {
        std::thread::sleep(Duration::from_millis(300));
        if let Some(mut p) = self.proc.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let status = p.wait_timeout(Duration::from_secs(5));
            let mut rest = String::new();
            if let Some(mut e) = self.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut rest);
            }
            assert!(status.success(), "tcpdump failed: {rest}");
        }
        let out = output({
            let mut c = Command::new("tcpdump");
            c.args(["-n", "-r"]).arg(&self.file);
            c
        });
        assert!(out.status.success(), "tcpdump -r: {}", text(&out));
        stdout(&out).lines().count()
    }
}
