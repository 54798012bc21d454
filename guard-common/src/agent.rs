//! Agent recognition: the keys the kernel looks up at exec, and the pure matching logic
//! that the kernel and the `/proc` seeder share.

/// Length of a name key. Executable names are matched on `comm`, which the kernel
/// truncates to 15 bytes, so executable keys hold at most 15 bytes.
pub const NAME_LEN: usize = 32;
pub const COMM_LEN: usize = 16;

/// A NUL-padded name, the key of the agent name maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NameKey {
    pub bytes: [u8; NAME_LEN],
}
const _: () = assert!(core::mem::size_of::<NameKey>() == NAME_LEN);

impl NameKey {
    /// Key of `name` truncated to `max` bytes (`COMM_LEN - 1` for executables).
    pub fn new(name: &[u8], max: usize) -> Self {
        let mut bytes = [0u8; NAME_LEN];
        let n = min(min(name.len(), max), NAME_LEN);
        let mut i = 0;
        while i < n {
            bytes[i] = name[i];
            i += 1;
        }
        Self { bytes }
    }
}

const fn min(a: usize, b: usize) -> usize {
    if a < b { a } else { b }
}

/// Bytes of an environment variable (`NAME=VALUE`, NUL included) compared with the markers:
/// a marker is at most `ENV_KEY_LEN - 2` bytes, so a variable cut at this length never
/// matches an exact marker by its forced NUL.
pub const ENV_KEY_LEN: usize = 64;
/// The environment scan at exec examines at most this many variables…
pub const ENV_SCAN_MAX_VARS: u32 = 512;
/// …and the variables that start within this many bytes of the environment block.
pub const ENV_SCAN_MAX_BYTES: u64 = 32 * 1024;

/// The data of an environment marker key in the kernel's LPM trie ([`crate::maps::AGENT_ENV`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnvKey {
    pub bytes: [u8; ENV_KEY_LEN],
}
const _: () = assert!(core::mem::size_of::<EnvKey>() == ENV_KEY_LEN);

impl EnvKey {
    /// The trie key of a marker and its prefix length in bits: `NAME=VALUE` matches exactly
    /// (the terminating NUL is part of the prefix), `NAME=VALUE*` any value that starts
    /// with `VALUE`, `NAME=*` any value. `None` when the marker is longer than a key holds.
    pub fn marker(name: &[u8], value: &[u8], prefix: bool) -> Option<(Self, u32)> {
        let len = name.len() + 1 + value.len() + usize::from(!prefix);
        if len > ENV_KEY_LEN - 1 {
            return None;
        }
        let mut bytes = [0u8; ENV_KEY_LEN];
        for (i, b) in name.iter().chain(b"=").chain(value).enumerate() {
            bytes[i] = *b;
        }
        Some((Self { bytes }, (len * 8) as u32))
    }
}

/// Bits of [`Recognition::env_first4`].
pub const ENV_FILTER_BITS: usize = 1 << 16;

/// What the exec probe reads before it scans an environment (the one value of
/// [`crate::maps::RECOGNITION`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recognition {
    /// How many markers [`crate::maps::AGENT_ENV`] holds; 0: no scan.
    pub env_markers: u32,
    /// 1 when a marker is shorter than 4 bytes up to its value's wildcard, so that the
    /// filter below cannot be used: every variable is looked up.
    pub env_unfiltered: u32,
    /// How many files and directories [`crate::maps::AGENT_PATHS`] holds; 0: no walk.
    pub paths: u32,
    /// How many cgroups [`crate::maps::AGENT_CGROUPS`] holds; 0: no walk.
    pub cgroups: u32,
    /// How many paths [`crate::maps::AGENT_SCRIPT_PATHS`] holds; 0: no lookup.
    pub script_paths: u32,
    pub _pad: u32,
    /// A filter in front of the trie: the bit [`env_filter_bit`] of each marker's first 4
    /// bytes is set. A variable whose first 4 bytes' bit is clear carries no marker, and
    /// costs no trie lookup.
    pub env_first4: [u64; ENV_FILTER_BITS / 64],
}

/// The filter bit of a variable or marker that starts with `first4`.
#[inline(always)]
pub const fn env_filter_bit(first4: u32) -> u32 {
    first4.wrapping_mul(0x9E37_79B1) >> 16
}

impl Recognition {
    /// Replace the environment settings with those of `markers` (their trie keys and prefix
    /// lengths in bits); the other counts stay as they are.
    pub fn set_markers<'a>(&mut self, markers: impl Iterator<Item = (&'a EnvKey, u32)>) {
        let r = self;
        r.env_markers = 0;
        r.env_unfiltered = 0;
        r.env_first4 = [0; ENV_FILTER_BITS / 64];
        for (key, bits) in markers {
            r.env_markers += 1;
            if bits < 32 {
                r.env_unfiltered = 1;
                continue;
            }
            let b = key.bytes;
            let bit = env_filter_bit(u32::from_le_bytes([b[0], b[1], b[2], b[3]])) as usize;
            r.env_first4[bit / 64] |= 1 << (bit % 64);
        }
    }
}

/// A file or directory an agent is installed at ([`crate::maps::AGENT_PATHS`], keyed by its
/// [`crate::file::FileKey`]): an executable whose file is it (depth 0), or below it at most
/// `max_depth` directories deep, is the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentPath {
    pub agent_id: u32,
    /// 0: the file itself; 1: a file in this directory; [`ANY_DEPTH`]: anywhere below it.
    pub max_depth: u32,
}

pub const ANY_DEPTH: u32 = u32::MAX;
/// Directories above an executable the exec probe looks up.
pub const PATH_WALK_MAX: u32 = 16;
/// Bytes of an interpreter's script argument compared with [`crate::maps::AGENT_SCRIPT_PATHS`].
pub const SCRIPT_PATH_LEN: usize = 256;

/// The data of a script path key: an absolute path, `dir/` (a prefix: every script below it)
/// or `file` followed by its NUL (that file).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScriptPath {
    pub bytes: [u8; SCRIPT_PATH_LEN],
}

impl ScriptPath {
    /// The key of a directory (`dir/…`) or of a file (`file` exactly), and its prefix length
    /// in bits; `None` when it does not fit.
    pub fn new(path: &[u8], dir: bool) -> Option<(Self, u32)> {
        let trimmed = match path.split_last() {
            Some((b'/', head)) => head,
            _ => path,
        };
        let len = trimmed.len() + 1;
        if len > SCRIPT_PATH_LEN {
            return None;
        }
        let mut bytes = [0u8; SCRIPT_PATH_LEN];
        for (i, b) in trimmed.iter().enumerate() {
            bytes[i] = *b;
        }
        // A directory's key ends with its '/', a file's with its NUL (already zero).
        if dir {
            bytes[trimmed.len()] = b'/';
        }
        Some((Self { bytes }, (len * 8) as u32))
    }
}

/// Cgroups above a process's own (on the default hierarchy) the trackers look up.
pub const CGROUP_WALK_MAX: u32 = 16;

/// A marker as written, `NAME=VALUE` or `NAME=PREFIX*`, as (name, value, prefix). `None`
/// without `=`. The policy checks names and values; this only splits.
pub fn split_marker(text: &[u8]) -> Option<(&[u8], &[u8], bool)> {
    let eq = text.iter().position(|c| *c == b'=')?;
    let (name, rest) = text.split_at(eq);
    let value = rest.split_at(1).1;
    match value.split_last() {
        Some((b'*', head)) => Some((name, head, true)),
        _ => Some((name, value, false)),
    }
}

/// Does the variable `var` (`NAME=VALUE`, no NUL) carry the marker, by the kernel's rule: the
/// first [`ENV_KEY_LEN`] bytes compared, exact markers including the end of the string.
pub fn env_matches(var: &[u8], name: &[u8], value: &[u8], prefix: bool) -> bool {
    let head = name.len() + 1 + value.len();
    if var.len() < head || var.split_at(name.len()).0 != name || var[name.len()] != b'=' {
        return false;
    }
    let rest = var.split_at(name.len() + 1).1;
    if prefix {
        rest.split_at(value.len()).0 == value
    } else {
        rest == value && var.len() < ENV_KEY_LEN - 1
    }
}

/// Why a root was recognised (`ProcessEvent::reason` of an agent exec).
pub mod recognised {
    /// Its executable's name (`comm`).
    pub const EXECUTABLE: u32 = 1;
    /// The script or module an interpreter runs.
    pub const SCRIPT: u32 = 2;
    /// An environment marker (`ProcessEvent::script` holds the matched variable's start).
    pub const ENV: u32 = 3;
    /// The executable's file, or a directory above it (`ProcessEvent::script` holds the
    /// file's name).
    pub const PATH: u32 = 4;
    /// The process's cgroup, or one above it (the root is the cgroup: `ProcKey { tgid: 0,
    /// start_ns: cgroup id }`).
    pub const CGROUP: u32 = 5;
    /// A file an agent wrote: the process runs it, or an interpreter reads it
    /// (`ProcessEvent::script` holds the file's name).
    pub const DEFERRED: u32 = 6;

    pub const fn name(reason: u32) -> &'static str {
        match reason {
            EXECUTABLE => "executable",
            SCRIPT => "script",
            ENV => "env",
            PATH => "path",
            CGROUP => "cgroup",
            DEFERRED => "deferred",
            _ => "unknown",
        }
    }
}

/// Strip a script's extension: `cli.js` → `cli`, `aider.py` → `aider`, `.bashrc` stays.
pub fn stem(name: &[u8]) -> &[u8] {
    let mut i = name.len();
    while i > 1 {
        i -= 1;
        if name[i] == b'.' {
            return name.split_at(i).0;
        }
    }
    name
}

/// Is `comm` an interpreter whose script argument names the program it runs?
/// `python`, `python3`, `python3.12`, `node`, `nodejs`, `bun`, `deno`.
pub fn is_interpreter(comm: &[u8]) -> bool {
    let comm = trim_nul(comm);
    comm == b"node"
        || comm == b"nodejs"
        || comm == b"bun"
        || comm == b"deno"
        || (comm.len() >= 6
            && comm.split_at(6).0 == b"python"
            && comm
                .split_at(6)
                .1
                .iter()
                .all(|c| c.is_ascii_digit() || *c == b'.'))
}

/// Bytes up to the first NUL.
pub fn trim_nul(s: &[u8]) -> &[u8] {
    let mut i = 0;
    while i < s.len() && s[i] != 0 {
        i += 1;
    }
    s.split_at(i).0
}

/// Which argument of an interpreter's argv names the script: the first argument that is not
/// an option, or the one after `-m`. Returns `None` for `-c`/`-e` (inline code) or when
/// there is none.
pub fn script_arg<'a, I: Iterator<Item = &'a [u8]>>(args_after_argv0: I) -> Option<&'a [u8]> {
    let mut next_is_module = false;
    for arg in args_after_argv0 {
        if next_is_module {
            return Some(arg);
        }
        if arg == b"-m" {
            next_is_module = true;
        } else if arg == b"-c" || arg == b"-e" || arg == b"--eval" || arg == b"-" {
            return None;
        } else if arg.first() != Some(&b'-') {
            return Some(arg);
        }
    }
    None
}

/// The names under which a script argument is looked up, in order: the basename, the
/// basename without its extension, then every directory component, and for a dotted
/// module (`aider.main`) its first part.
///
/// `/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js` yields `cli.js`, `cli`,
/// `claude-code`, `@anthropic-ai`, `node_modules`, `lib`, `usr`.
pub fn script_candidates(script: &[u8], mut f: impl FnMut(&[u8]) -> bool) -> bool {
    let mut end = script.len();
    while end > 0 && script[end - 1] == b'/' {
        end -= 1;
    }
    let script = script.split_at(end).0;
    let mut first = true;
    let mut end = script.len();
    loop {
        let mut start = end;
        while start > 0 && script[start - 1] != b'/' {
            start -= 1;
        }
        let part = script.split_at(end).0.split_at(start).1;
        if !part.is_empty() {
            if f(part) {
                return true;
            }
            if first {
                let s = stem(part);
                if s.len() != part.len() && f(s) {
                    return true;
                }
                if let Some(dot) = part.iter().position(|c| *c == b'.') {
                    let head = part.split_at(dot).0;
                    if !head.is_empty() && head.len() != s.len() && f(head) {
                        return true;
                    }
                }
            }
        }
        first = false;
        if start == 0 {
            return false;
        }
        end = start - 1;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn candidates(s: &str) -> Vec<std::string::String> {
        let mut out = Vec::new();
        script_candidates(s.as_bytes(), |p| {
            out.push(std::string::String::from_utf8(p.to_vec()).unwrap());
            false
        });
        out
    }

    #[test]
    fn candidates_cover_basename_stem_and_components() {
        assert_eq!(
            candidates("/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js"),
            [
                "cli.js",
                "cli",
                "claude-code",
                "@anthropic-ai",
                "node_modules",
                "lib",
                "usr"
            ]
        );
        assert_eq!(candidates("aider"), ["aider"]);
        assert_eq!(candidates("aider.main"), ["aider.main", "aider"]);
        assert_eq!(candidates("./bin/claude"), ["claude", "bin", "."]);
    }

    #[test]
    fn markers_match_like_the_kernel_trie() {
        let m = |text: &str, var: &str| {
            let (n, v, p) = split_marker(text.as_bytes()).unwrap();
            env_matches(var.as_bytes(), n, v, p)
        };
        assert!(m("CURSOR_AGENT=1", "CURSOR_AGENT=1"));
        assert!(!m("CURSOR_AGENT=1", "CURSOR_AGENT=10"));
        assert!(!m("CURSOR_AGENT=1", "CURSOR_AGENT="));
        assert!(m("AGENT=*", "AGENT=goose"));
        assert!(m("AGENT=*", "AGENT="));
        assert!(!m("AGENT=*", "AGENT_ID=7"));
        assert!(!m("AGENT=*", "XAGENT=1"));
        assert!(m("ROLE=agent-*", "ROLE=agent-exec"));
        assert!(!m("ROLE=agent-*", "ROLE=agen"));
        let long = std::format!("A={}", "x".repeat(70));
        assert!(m("A=xx*", &long));
        assert!(
            !m(&long, &long),
            "an exact marker longer than a key never matches"
        );
        let (key, bits) = EnvKey::marker(b"AGENT", b"goose", false).unwrap();
        assert_eq!(bits, 12 * 8);
        assert_eq!(&key.bytes[..12], b"AGENT=goose\0");
        assert_eq!(EnvKey::marker(b"AGENT", b"", true).unwrap().1, 6 * 8);
        assert!(EnvKey::marker(b"A", &[b'x'; 61], false).is_none());
        assert!(EnvKey::marker(b"A", &[b'x'; 61], true).is_some());
    }

    #[test]
    fn interpreters() {
        for yes in [
            "node",
            "python",
            "python3",
            "python3.11",
            "bun",
            "deno",
            "nodejs",
        ] {
            assert!(is_interpreter(yes.as_bytes()), "{yes}");
        }
        for no in ["nodes", "pythonx", "bash", "claude", "py"] {
            assert!(!is_interpreter(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn script_argument() {
        let args = |v: &[&'static str]| v.iter().map(|s| s.as_bytes()).collect::<Vec<_>>();
        assert_eq!(
            script_arg(args(&["-m", "aider"]).into_iter()),
            Some(&b"aider"[..])
        );
        assert_eq!(
            script_arg(args(&["-u", "x.py"]).into_iter()),
            Some(&b"x.py"[..])
        );
        assert_eq!(script_arg(args(&["-c", "print(1)"]).into_iter()), None);
        assert_eq!(script_arg(args(&[]).into_iter()), None);
    }

    #[test]
    fn name_keys_truncate() {
        let k = NameKey::new(b"a-very-long-executable-name", COMM_LEN - 1);
        assert_eq!(trim_nul(&k.bytes), b"a-very-long-exe");
    }
}
