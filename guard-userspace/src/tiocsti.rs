//! `dev.tty.legacy_tiocsti` (Linux 6.2+): at 0 the kernel refuses `TIOCSTI` (pushing input
//! into a terminal) to every process without CAP_SYS_ADMIN. On the fallback tier there is no
//! hook for a recognised agent's ioctl; `guard daemon --disable-legacy-tiocsti` sets the
//! sysctl to 0 and keeps it there, which takes the keystroke channel from every agent that
//! is not root. It is host-wide: no program of the human's uses TIOCSTI on a modern desktop
//! (it was how some old tools faked typing).

use std::{io, path::Path};

pub const SYSCTL: &str = "/proc/sys/dev/tty/legacy_tiocsti";

/// The sysctl as it is now: `Some(true)` when TIOCSTI is allowed, `None` on a kernel that
/// does not have it.
pub fn legacy_allowed() -> Option<bool> {
    read_at(Path::new(SYSCTL))
}

fn read_at(path: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.trim() != "0")
}

/// Whether this kernel has the sysctl: an error naming it, and what to do, if not.
pub fn available() -> io::Result<()> {
    match legacy_allowed() {
        Some(_) => Ok(()),
        None => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{SYSCTL} does not exist: this kernel lacks dev.tty.legacy_tiocsti (Linux 6.2+); \
                 leave out --disable-legacy-tiocsti"
            ),
        )),
    }
}

/// Set the sysctl to 0. An error names the sysctl and what to do.
pub fn disable() -> io::Result<()> {
    available()?;
    std::fs::write(SYSCTL, "0\n")
        .map_err(|e| io::Error::new(e.kind(), format!("writing 0 to {SYSCTL}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sysctl_and_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("legacy_tiocsti");
        assert_eq!(read_at(&p), None);
        std::fs::write(&p, "0\n").unwrap();
        assert_eq!(read_at(&p), Some(false));
        std::fs::write(&p, "1\n").unwrap();
        assert_eq!(read_at(&p), Some(true));
    }
}
