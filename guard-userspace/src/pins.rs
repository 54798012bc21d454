//! Keeps guard's pins in bpffs: the daemon holds a descriptor of every pinned map and link,
//! watches the pin directory (inotify works on bpffs), and pins an object again at once when
//! its pin is removed by anyone but the daemon itself. While the daemon holds the descriptor
//! a link stays attached, so removing its pin opens no gap. The offender, if tagged, is
//! killed by the change detector of the internal `guard:pins` rule (bpffs stamps ctimes like
//! any filesystem).

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use tracing::{error, info, warn};

use crate::loader::{obj_get, obj_pin};

/// Subdirectories of the pin directory that hold pins.
const DIRS: [&str; 2] = ["maps", "links"];

/// A pin put back, reported to the daemon.
#[derive(Clone, Debug)]
pub struct Restored {
    pub path: PathBuf,
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Default)]
struct Held {
    objects: HashMap<PathBuf, OwnedFd>,
    /// Pins the daemon removes on purpose (e.g. detaching the kill program).
    released: HashSet<PathBuf>,
}

/// The pin keeper.
pub struct PinKeeper {
    pin_dir: PathBuf,
    held: Mutex<Held>,
}

impl PinKeeper {
    /// Hold every pin under `pin_dir` and start watching it. `report` is called for every
    /// pin put back.
    pub fn start(
        pin_dir: &Path,
        report: impl Fn(Restored) + Send + 'static,
    ) -> std::io::Result<Arc<Self>> {
        let keeper = Arc::new(Self {
            pin_dir: pin_dir.to_path_buf(),
            held: Mutex::new(Held::default()),
        });
        let inotify = Inotify::new()?;
        let mut watches = HashMap::new();
        for dir in DIRS {
            let d = pin_dir.join(dir);
            watches.insert(inotify.watch(&d)?, d.clone());
            for entry in std::fs::read_dir(&d)?.filter_map(Result::ok) {
                keeper.hold(&entry.path());
            }
        }
        watches.insert(inotify.watch(pin_dir)?, pin_dir.to_path_buf());
        seal(pin_dir);
        let k = keeper.clone();
        std::thread::Builder::new()
            .name("guard-pin-keeper".into())
            .spawn(move || k.run(inotify, watches, report))?;
        Ok(keeper)
    }

    /// The daemon is about to remove `path` itself: do not put it back.
    pub fn release(&self, path: &Path) {
        let mut held = self.held.lock().expect("pins lock");
        held.objects.remove(path);
        held.released.insert(path.to_path_buf());
    }

    /// How many objects are held.
    pub fn held(&self) -> usize {
        self.held.lock().expect("pins lock").objects.len()
    }

    fn hold(&self, path: &Path) {
        if is_temporary(path) {
            return;
        }
        match obj_get(path) {
            Ok(fd) => {
                let mut held = self.held.lock().expect("pins lock");
                held.released.remove(path);
                held.objects.insert(path.to_path_buf(), fd);
            }
            Err(e) => warn!(path = %path.display(), error = %e, "cannot hold a pin"),
        }
    }

    /// Put back `path` if it is held and gone.
    fn restore(&self, path: &Path) -> Option<Restored> {
        if is_temporary(path) || path.exists() {
            return None;
        }
        let held = self.held.lock().expect("pins lock");
        let fd = held.objects.get(path)?;
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let result = obj_pin(fd.as_fd(), path);
        Some(Restored {
            path: path.to_path_buf(),
            ok: result.is_ok(),
            error: result.err().map(|e| e.to_string()),
        })
    }

    /// Put back everything held under `dir` (the directory itself was removed).
    fn restore_all(&self, dir: &Path) -> Vec<Restored> {
        let paths: Vec<PathBuf> = {
            let held = self.held.lock().expect("pins lock");
            held.objects
                .keys()
                .filter(|p| p.starts_with(dir))
                .cloned()
                .collect()
        };
        paths.iter().filter_map(|p| self.restore(p)).collect()
    }

    fn run(
        &self,
        mut inotify: Inotify,
        mut watches: HashMap<i32, PathBuf>,
        report: impl Fn(Restored),
    ) {
        loop {
            let events = match inotify.read() {
                Ok(e) => e,
                Err(e) => {
                    error!(error = %e, "pin keeper: inotify read failed; pins are no longer kept");
                    return;
                }
            };
            let mut rewatch = false;
            for (wd, mask, name) in events {
                let Some(dir) = watches.get(&wd).cloned() else {
                    continue;
                };
                if mask & (libc::IN_DELETE_SELF | libc::IN_IGNORED) != 0 {
                    rewatch = true;
                    continue;
                }
                let Some(name) = name else { continue };
                let path = dir.join(&name);
                if dir == self.pin_dir {
                    if mask & (libc::IN_DELETE | libc::IN_MOVED_FROM) != 0 {
                        rewatch = true;
                    }
                    continue;
                }
                if mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
                    self.hold(&path);
                } else if mask & (libc::IN_DELETE | libc::IN_MOVED_FROM) != 0 {
                    if self
                        .held
                        .lock()
                        .expect("pins lock")
                        .released
                        .contains(&path)
                    {
                        continue;
                    }
                    if let Some(r) = self.restore(&path) {
                        log(&r);
                        report(r);
                    }
                }
            }
            seal(&self.pin_dir);
            if rewatch {
                // A directory went: recreate it, put its pins back and watch it again.
                for r in self.restore_all(&self.pin_dir) {
                    log(&r);
                    report(r);
                }
                watches.clear();
                for d in DIRS
                    .iter()
                    .map(|d| self.pin_dir.join(d))
                    .chain([self.pin_dir.clone()])
                {
                    let _ = std::fs::create_dir_all(&d);
                    match inotify.watch(&d) {
                        Ok(wd) => {
                            watches.insert(wd, d);
                        }
                        Err(e) => {
                            error!(path = %d.display(), error = %e, "pin keeper: cannot watch")
                        }
                    }
                }
                seal(&self.pin_dir);
            }
        }
    }
}

/// Mode 000 on the pin directory, its subdirectories and every pin: only a process with
/// `CAP_DAC_READ_SEARCH`/`CAP_DAC_OVERRIDE` can open a pin, even as root (the owner), so that
/// a `bpf()` call reaching a pin goes through a capability check, which the self-protection
/// program turns into a kill for a tagged caller. Modes already 000 are left alone, so the
/// attribute events of these changes end here.
pub fn seal(pin_dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut paths = vec![pin_dir.to_path_buf()];
    for dir in DIRS {
        let d = pin_dir.join(dir);
        if let Ok(entries) = std::fs::read_dir(&d) {
            paths.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        }
        paths.push(d);
    }
    for p in paths {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.permissions().mode() & 0o7777 != 0
            && let Err(e) = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000))
        {
            warn!(path = %p.display(), error = %e, "cannot seal a pin");
        }
    }
}

fn log(r: &Restored) {
    if r.ok {
        info!(path = %r.path.display(), "a pin was removed; pinned it again");
    } else {
        error!(path = %r.path.display(), error = ?r.error, "a pin was removed and could not be pinned again");
    }
}

/// Pin directories of other guard instances on this host: any directory under the bpffs
/// mounts (three levels deep) holding a pinned process tracker, other than `own`. Their
/// programs run as well: they enforce their own policy and tax every system call they hook
/// (a stopped daemon's programs stay attached by design).
pub fn other_instances(own: &Path) -> Vec<PathBuf> {
    let own = std::fs::canonicalize(own).unwrap_or_else(|_| own.to_path_buf());
    let mut roots: Vec<PathBuf> = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .map(|m| {
            m.into_iter()
                .filter(|m| m.fs_type == "bpf")
                .map(|m| m.mount_point)
                .collect()
        })
        .unwrap_or_default();
    roots.sort();
    roots.dedup();
    let mut found = Vec::new();
    let mut stack: Vec<(PathBuf, usize)> = roots.into_iter().map(|r| (r, 0)).collect();
    while let Some((dir, depth)) = stack.pop() {
        if dir
            .join("links")
            .join(guard_common::maps::programs::FORK)
            .exists()
        {
            let real = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
            if real != own && !found.contains(&real) {
                found.push(real);
            }
            continue;
        }
        if depth >= 3 {
            continue;
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    found.sort();
    found
}

/// bpffs refuses names with a dot: guard's replacements are pinned as `NAME_new` first.
fn is_temporary(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.ends_with("_new"))
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// A minimal blocking inotify instance.
struct Inotify(OwnedFd);

impl Inotify {
    fn new() -> std::io::Result<Self> {
        // SAFETY: plain system call.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn watch(&self, dir: &Path) -> std::io::Result<i32> {
        let c = c_path(dir)?;
        let mask = libc::IN_CREATE
            | libc::IN_MOVED_TO
            | libc::IN_DELETE
            | libc::IN_MOVED_FROM
            | libc::IN_DELETE_SELF
            | libc::IN_ATTRIB
            | libc::IN_ONLYDIR;
        // SAFETY: valid descriptor and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.0.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(wd)
    }

    /// Block for events: (watch, mask, name).
    fn read(&mut self) -> std::io::Result<Vec<(i32, u32, Option<String>)>> {
        let mut buf = [0u8; 4096];
        let n = loop {
            // SAFETY: reading into a buffer we own, of the size given.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                break n as usize;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let header = size_of::<libc::inotify_event>();
        let mut out = Vec::new();
        let mut off = 0;
        while off + header <= n {
            // SAFETY: the kernel wrote a whole inotify_event at `off`; read unaligned.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf.as_ptr().add(off).cast()) };
            let len = ev.len as usize;
            let name_bytes = &buf[off + header..(off + header + len).min(n)];
            let name = guard_common::agent::trim_nul(name_bytes);
            let name = (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned());
            out.push((ev.wd, ev.mask, name));
            off += header + len;
        }
        Ok(out)
    }
}
