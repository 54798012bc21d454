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
