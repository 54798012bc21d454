//! What `guard run` takes away from its tree before it execs the agent.
//!
//! - Capabilities the policy lists (`selfProtection.dropCapabilities`) leave the bounding set,
//!   so no process of the tree can hold them again, even as root or through a setuid binary;
//!   they also leave the ambient and inheritable sets.
//! - A caller that may not change its bounding set (no `CAP_SETPCAP`, i.e. an ordinary user)
//!   holds none of them; it gets `no_new_privs` instead, so setuid binaries (sudo, su) cannot
//!   raise the tree back to root.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("dropping capability {cap} from the bounding set: {source}")]
    Drop {
        cap: u8,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Prctl {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

const CAP_SETPCAP: u8 = 8;

fn prctl(what: &'static str, op: libc::c_int, arg: libc::c_ulong) -> Result<i32, CapsError> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            op,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(CapsError::Prctl {
            what,
            source: io::Error::last_os_error(),
        });
    }
    Ok(r)
}

/// Whether `cap` is in this process's effective set.
fn effective(cap: u8) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|eff| eff & (1u64 << cap) != 0)
}

/// Drop `caps` from the bounding set (or set `no_new_privs` when that is not allowed).
pub fn confine(caps: &[u8]) -> Result<(), CapsError> {
    if caps.is_empty() {
        return Ok(());
    }
    prctl(
        "clearing ambient capabilities",
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )
    .or_else(|e| match &e {
        // Kernels without ambient capabilities have nothing to clear.
        CapsError::Prctl { source, .. } if source.raw_os_error() == Some(libc::EINVAL) => Ok(0),
        _ => Err(e),
    })?;
    if !effective(CAP_SETPCAP) {
        prctl("setting no_new_privs", libc::PR_SET_NO_NEW_PRIVS, 1)?;
        return Ok(());
    }
    for &cap in caps {
        // Already gone (or unknown to this kernel): nothing to drop.
        if prctl(
            "reading the bounding set",
            libc::PR_CAPBSET_READ,
            cap.into(),
        )
        .unwrap_or(0)
            != 1
        {
            continue;
        }
        prctl("dropping a capability", libc::PR_CAPBSET_DROP, cap.into()).map_err(|e| match e {
            CapsError::Prctl { source, .. } => CapsError::Drop { cap, source },
            other => other,
        })?;
    }
    Ok(())
}
