//! The workloads: each runs inside `guard-bench` (tests/src/bin/guard-bench.rs), which times
//! its own loop, so process start-up and `guard run` are never part of a figure.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    OpenClose,
    Stat,
    Pread,
    TcpConnect,
    UdpSendto,
    ForkExit,
    ForkExec,
    Build,
}

pub const ALL: [Workload; 8] = [
    Workload::OpenClose,
    Workload::Stat,
    Workload::Pread,
    Workload::TcpConnect,
    Workload::UdpSendto,
    Workload::ForkExit,
    Workload::ForkExec,
    Workload::Build,
];

/// C files of the generated project (plus main.c).
const C_FILES: usize = 8;

impl Workload {
    /// Stable name (JSON key).
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenClose => "open-close",
            Self::Stat => "stat",
            Self::Pread => "pread",
            Self::TcpConnect => "tcp-connect",
            Self::UdpSendto => "udp-sendto",
            Self::ForkExit => "fork-exit",
            Self::ForkExec => "fork-exec",
            Self::Build => "c-build",
        }
    }

    /// Row label in the table.
    pub fn label(self) -> &'static str {
        match self {
            Self::OpenClose => "open+close",
            Self::Stat => "stat",
            Self::Pread => "pread 4 KiB",
            Self::TcpConnect => "TCP connect+close",
            Self::UdpSendto => "UDP sendto",
            Self::ForkExit => "fork+exit+wait",
            Self::ForkExec => "fork+exec true",
            Self::Build => "make (9 C files)",
        }
    }

    pub fn description(self) -> String {
        match self {
            Self::OpenClose => "open(O_RDONLY) + close of a regular file in a temp dir".into(),
            Self::Stat => "stat of a regular file in a temp dir".into(),
            Self::Pread => "pread of 4 KiB at offset 0 of a cached regular file in a temp dir \
                            (the page cache's read path)"
                .into(),
            Self::TcpConnect => "socket + SO_LINGER 0 + connect + close to a 127.0.0.1 listener \
                                 accepting on its own thread"
                .into(),
            Self::UdpSendto => "sendto of 16 bytes from an unconnected socket to a bound \
                                127.0.0.1 socket"
                .into(),
            Self::ForkExit => "fork, the child _exits, waitpid".into(),
            Self::ForkExec => "fork, the child execs /bin/true, waitpid".into(),
            Self::Build => format!(
                "`make -B -j1` of a generated C project ({} files, cc -O1, then link); one op = \
                 one full rebuild",
                C_FILES + 1
            ),
        }
    }

    /// Iterations of the calibration run (about 20–50 ms on a 2-core VM).
    fn calibration_iters(self) -> u64 {
        match self {
            Self::OpenClose | Self::Stat | Self::Pread | Self::UdpSendto => 20_000,
            Self::TcpConnect => 1_000,
            Self::ForkExit => 200,
            Self::ForkExec => 50,
            Self::Build => 1,
        }
    }

    /// Whether one op is a whole multi-second job rather than a system call loop.
    pub fn is_job(self) -> bool {
        self == Self::Build
    }

    fn args(self, fx: &Fixtures, iters: u64) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![self.mode().into(), iters.to_string().into()];
        match self {
            Self::OpenClose | Self::Stat => a.push(fx.file.clone().into()),
            Self::Pread => a.push(fx.read_file.clone().into()),
            Self::ForkExec => a.push("/bin/true".into()),
            Self::Build => {
                a.push("--".into());
                a.extend(["make", "-s", "-B", "-j1", "-C"].map(OsString::from));
                a.push(fx.c_project.clone().into());
            }
            Self::TcpConnect | Self::UdpSendto | Self::ForkExit => {}
        }
        a
    }

    fn mode(self) -> &'static str {
        match self {
            Self::Build => "command",
            other => other.name(),
        }
    }
}

/// Files the workloads touch, in the bench's work dir.
pub struct Fixtures {
    pub file: PathBuf,
    /// 4 KiB of text, for `pread`.
    pub read_file: PathBuf,
    pub c_project: PathBuf,
}

impl Fixtures {
    pub fn create(work: &Path) -> Result<Self> {
        let file = work.join("work").join("file.txt");
        fs::create_dir_all(file.parent().expect("has a parent"))?;
        fs::write(&file, "guard bench\n")?;
        let read_file = work.join("work").join("read.txt");
        fs::write(
            &read_file,
            "guard bench, a line of text\n".repeat(4096 / 28 + 1),
        )?;
        let c_project = work.join("cproj");
        write_c_project(&c_project).context("generating the C project")?;
        Ok(Self {
            file,
            read_file,
            c_project,
        })
    }
}

fn write_c_project(dir: &Path) -> Result<()> {
    let src = dir.join("src");
    fs::create_dir_all(&src)?;
    let mut header = String::new();
    for i in 0..C_FILES {
        let mut c =
            String::from("#include \"common.h\"\n#include <stdio.h>\n#include <string.h>\n");
        for j in 0..8 {
            c.push_str(&format!(
                "int f{i}_{j}(int x) {{ int s = 0; for (int k = 0; k < x; k++) \
                 s += k * {j} ^ (s >> 3); return s + {i}; }}\n"
            ));
        }
        c.push_str(&format!(
            "int m{i}(int x) {{ return f{i}_0(x) + f{i}_7(x); }}\n"
        ));
        fs::write(src.join(format!("m{i}.c")), c)?;
        header.push_str(&format!("int m{i}(int);\n"));
    }
    fs::write(src.join("common.h"), header)?;
    let calls: Vec<String> = (0..C_FILES).map(|i| format!("m{i}(3)")).collect();
    fs::write(
        src.join("main.c"),
        format!(
            "#include \"common.h\"\nint main(void) {{ return ({}) < 0; }}\n",
            calls.join(" + ")
        ),
    )?;
    fs::write(
        dir.join("Makefile"),
        "CFLAGS = -O1\n\
         OBJS = $(patsubst %.c,%.o,$(wildcard src/*.c))\n\
         app: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n\
         %.o: %.c src/common.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n",
    )?;
    Ok(())
}

/// How a workload is launched: directly, or through `guard run --` (tagged).
pub struct Launcher<'a> {
    pub bench_bin: &'a Path,
    /// The `guard` binary and the daemon's environment, when the caller must be tagged.
    pub tagged: Option<(&'a Path, Vec<(&'static str, PathBuf)>)>,
}

/// One run's figure.
pub struct Sample {
    pub ns_per_op: f64,
    /// CPU time of the workload process and its children per op.
    pub cpu_ns_per_op: Option<f64>,
    /// Anything guard-bench printed on stderr (warnings).
    pub stderr: String,
}

impl Launcher<'_> {
    pub fn command(&self, args: Vec<OsString>) -> Command {
        match &self.tagged {
            Some((guard, env)) => {
                let mut cmd = Command::new(guard);
                cmd.envs(env.iter().cloned())
                    .arg("run")
                    .arg("--")
                    .arg(self.bench_bin)
                    .args(args);
                cmd
            }
            None => {
                let mut cmd = Command::new(self.bench_bin);
                cmd.args(args);
                cmd
            }
        }
    }

    pub fn run(&self, w: Workload, fx: &Fixtures, iters: u64) -> Result<Sample> {
        let cmd = self.command(w.args(fx, iters));
        let out = run_with_timeout(cmd, Duration::from_secs(120))?;
        let ns_per_op = field(&out.stdout, "ns_per_op")
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| {
                format!(
                    "{}: no ns_per_op in guard-bench's output {:?} (stderr: {})",
                    w.name(),
                    out.stdout.trim(),
                    out.stderr.trim()
                )
            })?;
        Ok(Sample {
            ns_per_op,
            cpu_ns_per_op: field(&out.stdout, "cpu_ns_per_op").and_then(|v| v.parse().ok()),
            stderr: out.stderr,
        })
    }

    /// Choose the iterations of `w` so that one run takes about `target`: a calibration run,
    /// then a scale (never fewer than one op).
    pub fn calibrate(&self, w: Workload, fx: &Fixtures, target: Duration) -> Result<u64> {
        let probe = self.run(w, fx, w.calibration_iters())?;
        let iters = (target.as_nanos() as f64 / probe.ns_per_op.max(1.0)).round() as u64;
        Ok(iters.max(1))
    }
}

pub struct Finished {
    pub stdout: String,
    pub stderr: String,
}

/// Run `cmd` to completion with piped output; fail on a non-zero exit or after `timeout`
/// (the child we started is then killed by its pid).
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Finished> {
    let shown = crate::util::show(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{shown}` did not finish within {timeout:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |r: Option<&mut dyn std::io::Read>| {
        let mut s = String::new();
        if let Some(r) = r {
            let _ = r.read_to_string(&mut s);
        }
        s
    };
    let stdout = read(child.stdout.as_mut().map(|r| r as &mut dyn std::io::Read));
    let stderr = read(child.stderr.as_mut().map(|r| r as &mut dyn std::io::Read));
    if !status.success() {
        bail!("`{shown}` failed ({status}): {}", stderr.trim());
    }
    Ok(Finished { stdout, stderr })
}

/// `key=value` from guard-bench's one-line output.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_guard_bench_output() {
        let line = "ns_per_op=812.5 iters=1000 elapsed_ns=812500\n";
        assert_eq!(field(line, "ns_per_op"), Some("812.5"));
        assert_eq!(field(line, "iters"), Some("1000"));
        assert_eq!(field(line, "ns"), None);
    }

    #[test]
    fn every_workload_has_a_distinct_name() {
        let mut names: Vec<_> = ALL.iter().map(|w| w.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }
}
