//! `guard run`'s own layer: before exec, the launcher moves itself into a private mount
//! namespace where protected paths are read-only (write and delete rules) or masked by an
//! empty read-only file or directory (read rules). It is a synchronous deny (EROFS, or
//! nothing to read) that needs no daemon: it holds when the daemon is stopped or dead.
//!
//! - As root, `unshare(CLONE_NEWNS)` is enough. A root agent that keeps CAP_SYS_ADMIN could
//!   unmount the layer; the fanotify and kernel layers still apply to it.
//! - As an unprivileged user the launcher creates a user namespace that maps only its own
//!   uid and gid, sets the mounts up there, then enters a second user and mount namespace:
//!   mounts inherited from a more privileged namespace are locked, so the agent cannot
//!   unmount or remount them even though it holds capabilities in its namespace. Side effect:
//!   set-user-ID programs (sudo) do not gain privileges inside. If user namespaces are
//!   disabled the layer is skipped with a note on stderr.
//!
//! Bind mounts act on paths: other names of a protected object outside the covered path
//! (hard links elsewhere, `/proc/PID/root` of a process outside the namespace) are covered
//! by the fanotify and kernel layers, not by this one.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, unshare},
};
use serde::{Deserialize, Serialize};

/// What a `guard run` tree gets, from the daemon's resolved rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protections {
    /// Made read-only (recursively).
    pub readonly: Vec<PathBuf>,
    /// Hidden under an empty read-only file or directory: `(path, is_dir)`.
    pub masked: Vec<(PathBuf, bool)>,
}

impl Protections {
    pub fn is_empty(&self) -> bool {
        self.readonly.is_empty() && self.masked.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MountNsError {
    #[error("{step}: {source}")]
    Step {
        step: String,
        #[source]
        source: io::Error,
    },
}

fn step(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> MountNsError {
    let what = what.into();
    move |e| MountNsError::Step {
        step: what,
        source: io::Error::from(e),
    }
}

/// What [`apply`] did.
#[derive(Debug, Default)]
pub struct Applied {
    pub readonly: usize,
    pub masked: usize,
    /// Paths that could not be covered (vanished, or not mountable), with the reason.
    pub skipped: Vec<String>,
    /// A user namespace was used (unprivileged caller).
    pub user_namespace: bool,
}

/// Move the calling process (single-threaded, about to exec) into a private mount namespace
/// with `p` applied.
pub fn apply(p: &Protections) -> Result<Applied, MountNsError> {
    let mut applied = Applied::default();
    let root = nix::unistd::geteuid().is_root();
    if root {
        unshare(CloneFlags::CLONE_NEWNS).map_err(step("unshare(CLONE_NEWNS)"))?;
    } else {
        enter_user_ns()?;
        applied.user_namespace = true;
    }
    // Our mounts must not propagate back to the host; the host's still reach us.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(step("making / a slave mount"))?;
    let mut ro: Vec<&PathBuf> = p.readonly.iter().collect();
    ro.sort_by_key(|p| p.as_os_str().len());
    for path in ro {
        match readonly(path) {
            Ok(()) => applied.readonly += 1,
            // Out of the caller's reach already (e.g. guard's pin directory for an ordinary
            // user): nothing to make read-only.
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {}
            Err(e) => applied.skipped.push(format!("{}: {e}", path.display())),
        }
    }
    if !p.masked.is_empty() {
        mask_all(&p.masked, &mut applied)?;
    }
    if !root {
        // Lock: mounts inherited into a less privileged namespace cannot be undone there.
        enter_user_ns()?;
    }
    Ok(applied)
}

/// `unshare(CLONE_NEWUSER | CLONE_NEWNS)` mapping only our own uid and gid.
fn enter_user_ns() -> Result<(), MountNsError> {
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
        .map_err(step("unshare(CLONE_NEWUSER | CLONE_NEWNS)"))?;
    let write = |file: &str, text: String| {
        std::fs::write(file, text).map_err(|source| MountNsError::Step {
            step: format!("writing {file}"),
            source,
        })
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    Ok(())
}

/// Bind `path` onto itself and make the whole subtree read-only.
fn readonly(path: &Path) -> io::Result<()> {
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(io::Error::from)?;
    setattr_readonly(path)
}

/// `mount_setattr(path, AT_RECURSIVE, MOUNT_ATTR_RDONLY)`.
fn setattr_readonly(path: &Path) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `c` is NUL-terminated and `attr` is a valid mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            AT_RECURSIVE,
            &raw const attr,
            size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Cover each path with an empty read-only file or directory, from a private tmpfs that is
/// detached again once the binds are in place.
fn mask_all(masked: &[(PathBuf, bool)], applied: &mut Applied) -> Result<(), MountNsError> {
    let staging = tempdir_in_tmp().map_err(|source| MountNsError::Step {
        step: "creating a staging directory in /tmp".into(),
        source,
    })?;
    let result = (|| {
        mount(
            Some("tmpfs"),
            &staging,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=4k,mode=0755"),
        )
        .map_err(step("mounting the mask tmpfs"))?;
        let io_step = |what: &str| {
            let what = what.to_owned();
            move |source| MountNsError::Step { step: what, source }
        };
        let (file, dir) = (staging.join("f"), staging.join("d"));
        std::fs::write(&file, b"").map_err(io_step("creating the empty file"))?;
        std::fs::create_dir(&dir).map_err(io_step("creating the empty directory"))?;
        for (path, is_dir) in masked {
            let src = if *is_dir { &dir } else { &file };
            let r = mount(
                Some(src.as_path()),
                path.as_path(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(io::Error::from)
            .and_then(|()| setattr_readonly(path));
            match r {
                Ok(()) => applied.masked += 1,
                // Nothing there to mask (a service that is not installed); the kernel's rules
                // still cover the name should it appear.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => applied.skipped.push(format!("{}: {e}", path.display())),
            }
        }
        Ok(())
    })();
    let _ = umount2(&staging, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(&staging);
    result
}

fn tempdir_in_tmp() -> io::Result<PathBuf> {
    let mut template = *b"/tmp/.guard-mask-XXXXXX\0";
    // SAFETY: a writable NUL-terminated template, as mkdtemp requires.
    let p = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
    if p.is_null() {
        return Err(io::Error::last_os_error());
    }
    let len = template.len() - 1;
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&template[..len])))
}
