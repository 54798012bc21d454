//! Paths of path rules: how they are written, how `~` expands to every user's home, and the
//! patterns the loader resolves to inodes.
//!
//! A path is written in one of three forms:
//! - absolute: `/var/lib/postgresql` (a directory covers everything below it);
//! - in every home: `~` or `~/.kube/config`, expanded once per home directory (root's and each
//!   user's with uid >= 1000 in /etc/passwd); `~user/…` is not supported;
//! - a file name in any directory: `**/.env.production`. `**` is allowed only as this leading
//!   `**/`, followed by a single name.
//!
//! The last component may be a glob (`~/.ssh/id_*`): `*` (any run of characters, including a
//! leading dot), `?` (one character) and `[a-z]` / `[!a-z]` classes. Wildcards elsewhere are an
//! error: the loader resolves directories to inodes, so they must be plain.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer};

use super::{error::Problem, values::Scalar};

/// A path of a path rule, kept as written (with `~`); valid by construction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathSpec(String);

/// A path rule's target after `~` expansion.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathPattern {
    /// One object: a file, or a directory and everything below it.
    Exact(PathBuf),
    /// The entries of `dir` whose name matches the glob `name` (`~/.ssh/id_*`).
    Glob { dir: PathBuf, name: String },
    /// Any file whose name matches `name` (exact or glob), in any directory
    /// (`**/.env.production`).
    AnyDir { name: String },
}

const ANY_DIR: &str = "**/";

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl PathSpec {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A path guard adds itself (internal rules), checked like a policy's; `None` if it is
    /// not a valid absolute path or pattern.
    pub fn internal(text: &str) -> Option<Self> {
        <Self as Scalar>::parse(text).ok()
    }

    /// `~` or `~/…`: one path per home directory.
    pub fn is_home_relative(&self) -> bool {
        self.0 == "~" || self.0.starts_with("~/")
    }

    /// The patterns this path stands for, one per home for `~` forms (none when `homes` is
    /// empty), else exactly one.
    pub fn expand(&self, homes: &[(u32, PathBuf)]) -> Vec<PathPattern> {
        expand_home(&self.0, homes)
            .into_iter()
            .map(|p| PathPattern::from_expanded(&p))
            .collect()
    }

    /// The pattern with `~` left unexpanded: what the summary shows.
    pub fn pattern(&self) -> PathPattern {
        PathPattern::from_expanded(Path::new(&self.0))
    }
}

impl std::fmt::Display for PathSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PathPattern {
    /// Classify a path that is absolute, `**/name`, or (for display only) still `~`-relative.
    fn from_expanded(path: &Path) -> Self {
        let text = path.to_string_lossy();
        if let Some(name) = text.strip_prefix(ANY_DIR) {
            return Self::AnyDir {
                name: name.to_owned(),
            };
        }
        let clean: PathBuf = path.components().collect();
        match (clean.parent(), clean.file_name()) {
            (Some(dir), Some(name)) if is_glob(&name.to_string_lossy()) => Self::Glob {
                dir: dir.to_owned(),
                name: name.to_string_lossy().into_owned(),
            },
            _ => Self::Exact(clean),
        }
    }

    /// Is this a pattern (glob or any-directory) rather than one object?
    pub fn is_pattern(&self) -> bool {
        !matches!(self, Self::Exact(_))
    }
}

impl Scalar for PathSpec {
    const EXPECTING: &'static str = "a path";

    fn parse(text: &str) -> Result<Self, Problem> {
        let bad = |reason| {
            Err(Problem::BadPath {
                text: text.to_owned(),
                reason,
            })
        };
        if text.is_empty() {
            return bad("it is empty");
        }
        if text.contains('\0') {
            return bad("it contains a NUL byte");
        }
        let body = if text == "~" {
            ""
        } else if let Some(rest) = text.strip_prefix("~/") {
            rest
        } else if text.starts_with('~') {
            return bad("only ~ and ~/... are supported, not ~user");
        } else if let Some(name) = text.strip_prefix(ANY_DIR) {
            if name.is_empty() || name.contains('/') {
                return bad("**/ is followed by a single file name");
            }
            name
        } else if let Some(rest) = text.strip_prefix('/') {
            rest
        } else {
            return Err(Problem::RelativePath {
                text: text.to_owned(),
            });
        };
        let parts: Vec<&str> = body.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            if *part == "." || *part == ".." {
                return bad("it contains a . or .. component");
            }
            if part.contains("**") {
                return bad("** is allowed only as a leading **/");
            }
            if is_glob(part) && i + 1 != parts.len() {
                return bad("wildcards are allowed only in the last component");
            }
            if class_end(part).is_none() {
                return bad("a [ in the pattern is not closed");
            }
        }
        Ok(Self(text.to_owned()))
    }
}

impl<'de> Deserialize<'de> for PathSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::values::deserialize_one(d)
    }
}

/// `Some(())` when every `[` in `part` has a closing `]`.
fn class_end(part: &str) -> Option<()> {
    let chars: Vec<char> = part.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '[' {
            i = class(&chars, i, '\0')?.1;
        } else {
            i += 1;
        }
    }
    Some(())
}

/// Expand `~` and `~/x` to one path per home directory; any other path is returned as is.
pub fn expand_home(path: &str, homes: &[(u32, PathBuf)]) -> Vec<PathBuf> {
    if path == "~" {
        homes.iter().map(|(_, home)| home.clone()).collect()
    } else if let Some(rest) = path.strip_prefix("~/") {
        homes.iter().map(|(_, home)| home.join(rest)).collect()
    } else {
        vec![PathBuf::from(path)]
    }
}

/// Home directories that `~` stands for, from the text of /etc/passwd: root's (`/root` when
/// passwd has no uid 0), then each user's with uid >= 1000 (not `nobody`, 65534), in file
/// order, without duplicates. Accounts from NSS sources other than the file (LDAP, sssd) are
/// not seen.
pub fn homes_from_passwd(passwd: &str) -> Vec<(u32, PathBuf)> {
    let mut homes: Vec<(u32, PathBuf)> = Vec::new();
    for line in passwd.lines() {
        let fields: Vec<&str> = line.trim().split(':').collect();
        if fields.len() < 6 || fields[0].starts_with('#') {
            continue;
        }
        let Ok(uid) = fields[2].parse::<u32>() else {
            continue;
        };
        let home = Path::new(fields[5]);
        let wanted = uid == 0 || (uid >= 1000 && uid != 65534);
        let usable = home.is_absolute() && home != Path::new("/") && fields[5] != "/nonexistent";
        if wanted && usable && !homes.iter().any(|(_, h)| h == home) {
            homes.push((uid, home.to_owned()));
        }
    }
    if !homes.iter().any(|(uid, _)| *uid == 0) {
        homes.insert(0, (0, PathBuf::from("/root")));
    }
    homes.sort_by_key(|(uid, _)| *uid != 0);
    homes
}

/// [`homes_from_passwd`] of the file at `passwd` (normally `/etc/passwd`).
pub fn read_homes(passwd: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    std::fs::read_to_string(passwd).map(|text| homes_from_passwd(&text))
}

/// Does the file name `name` match the glob `pattern` (`*`, `?`, `[a-z]`, `[!a-z]`)?
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // Last `*` seen and the name position it currently swallows up to.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => match class(&p, pi, n[ni]) {
                Some((true, next)) => Some(next),
                Some((false, _)) => None,
                None => (n[ni] == '[').then_some(pi + 1),
            },
            Some(c) => (*c == n[ni]).then_some(pi + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ni += 1;
            }
            (None, Some((sp, sn))) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Match `c` against the class opening at `p[start] == '['`: `(matched, index after ']')`,
/// or `None` when the class is not closed.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|hi| *hi != ']') {
            matched |= (lo..=p[i + 2]).contains(&c);
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> PathSpec {
        PathSpec::parse(s).unwrap()
    }

    #[test]
    fn forms_and_patterns() {
        assert_eq!(
            spec("/var/lib/postgresql/").pattern(),
            PathPattern::Exact("/var/lib/postgresql".into())
        );
        assert_eq!(
            spec("~/.ssh/id_*").pattern(),
            PathPattern::Glob {
                dir: "~/.ssh".into(),
                name: "id_*".into()
            }
        );
        assert_eq!(
            spec("**/.env.production").pattern(),
            PathPattern::AnyDir {
                name: ".env.production".into()
            }
        );
        assert!(spec("~").is_home_relative());
        assert!(!spec("/root").is_home_relative());
    }

    #[test]
    fn rejected_forms() {
        assert!(matches!(
            PathSpec::parse(".env.production"),
            Err(Problem::RelativePath { .. })
        ));
        assert!(matches!(
            PathSpec::parse("etc/passwd"),
            Err(Problem::RelativePath { .. })
        ));
        for bad in [
            "",
            "~alice/.ssh",
            "/a/*/b",
            "/a/**/b",
            "**/a/b",
            "**/",
            "/a/../b",
            "/a/[x",
        ] {
            assert!(
                matches!(PathSpec::parse(bad), Err(Problem::BadPath { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn tilde_expands_per_home() {
        let homes = [
            (0, PathBuf::from("/root")),
            (1000, PathBuf::from("/home/a")),
        ];
        assert_eq!(
            expand_home("~/.kube/config", &homes),
            [
                PathBuf::from("/root/.kube/config"),
                PathBuf::from("/home/a/.kube/config")
            ]
        );
        assert_eq!(
            expand_home("~", &homes),
            [PathBuf::from("/root"), PathBuf::from("/home/a")]
        );
        assert_eq!(expand_home("/etc/x", &homes), [PathBuf::from("/etc/x")]);
        assert_eq!(expand_home("~/.netrc", &[]), Vec::<PathBuf>::new());
        assert_eq!(
            spec("~/.ssh/id_*").expand(&homes),
            [
                PathPattern::Glob {
                    dir: "/root/.ssh".into(),
                    name: "id_*".into()
                },
                PathPattern::Glob {
                    dir: "/home/a/.ssh".into(),
                    name: "id_*".into()
                }
            ]
        );
    }

    #[test]
    fn homes_from_a_passwd_file() {
        let passwd = "\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# comment
alice:x:1000:1000:Alice:/home/alice:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
bob:x:1001:1001::/home/bob:/bin/zsh
bob2:x:1002:1002::/home/bob:/bin/zsh
broken line
svc:x:1003:1003::/:/bin/false
";
        assert_eq!(
            homes_from_passwd(passwd),
            [
                (0, PathBuf::from("/root")),
                (1000, PathBuf::from("/home/alice")),
                (1001, PathBuf::from("/home/bob"))
            ]
        );
        assert_eq!(
            homes_from_passwd("alice:x:1000:1000::/home/alice:/bin/sh\n"),
            [
                (0, PathBuf::from("/root")),
                (1000, PathBuf::from("/home/alice"))
            ]
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("id_*", "id_ed25519"));
        assert!(glob_match("id_*", "id_"));
        assert!(!glob_match("id_*", "known_hosts"));
        assert!(glob_match("*.pem", "server.pem"));
        assert!(!glob_match("*.pem", "server.pem.bak"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("[a-c]x", "bx"));
        assert!(!glob_match("[!a-c]x", "bx"));
        assert!(glob_match(".env.production", ".env.production"));
        assert!(!glob_match(".env.production", ".env.productionx"));
        assert!(glob_match("*a*b", "xxaxxb"));
    }
}
