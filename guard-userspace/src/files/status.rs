//! Per-rule status of path rules for `guard status`: what each access is protected by, and
//! whether that layer is actually attached. Never claims a tier that is not attached.

use serde::{Deserialize, Serialize};

use guard_common::file::dev_parts;

use super::{
    access::names,
    engine::{RuleInfo, RuleState},
    kernel::Attached,
    resolve::Kind,
};
use guard_common::file::access;

/// Strength of a layer, weakest first.
pub const NOT_LOADED: &str = "not-loaded";
pub const KILL_ON_DETECT: &str = "kill-on-detect";
pub const ENFORCED: &str = "enforced";
pub const AUDIT_ONLY: &str = "audit-only";

/// One layer protecting part of a rule's access.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub covers: String,
    pub status: String,
    pub via: String,
}

/// A path rule as `guard status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRuleStatus {
    pub id: u32,
    pub name: String,
    /// The weakest layer of the rule's own accesses: `enforced`, `kill-on-detect`,
    /// `audit-only` or `not-loaded`.
    pub status: String,
    pub access: Vec<String>,
    pub action: String,
    pub mode: String,
    pub layers: Vec<Layer>,
    /// Protected objects (at most [`OBJECTS_SHOWN`]), `path (kind dev:ino)`.
    pub objects: Vec<String>,
    pub object_count: usize,
    /// Paths that do not exist yet (protected when they appear).
    pub missing: Vec<String>,
    /// Block devices `major:minor` behind the objects.
    pub devices: Vec<String>,
    /// Inodes marked for fanotify permission events.
    pub marked: usize,
    pub truncated: bool,
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

pub const OBJECTS_SHOWN: usize = 20;

fn rank(s: &str) -> u8 {
    match s {
        NOT_LOADED => 0,
        KILL_ON_DETECT => 1,
        _ => 2,
    }
}

fn layer(covers: &str, status: &str, via: &str) -> Layer {
    Layer {
        covers: covers.to_owned(),
        status: status.to_owned(),
        via: via.to_owned(),
    }
}

/// The bpf-lsm tier's layers for `access`: every one refused in the kernel.
fn lsm_layers(access: u32) -> Vec<Layer> {
    let via = |hooks: &str| {
        format!("BPF LSM {hooks} (in the kernel: EPERM before the operation, daemon or not)")
    };
    let mut own = Vec::new();
    if access & access::READ != 0 {
        own.push(layer("read", ENFORCED, &via("file_open")));
    }
    if access & access::EXEC != 0 {
        own.push(layer("exec", ENFORCED, &via("file_open")));
    }
    if access & access::WRITE != 0 {
        own.push(layer(
            "write: open for writing or O_TRUNC, truncate, chmod/chown, create, link",
            ENFORCED,
            &via("file_open, path_truncate/file_truncate, path_chmod, path_chown, path_mknod, path_mkdir, path_symlink, path_link, path_rename"),
        ));
    }
    if access & access::DELETE != 0 {
        own.push(layer(
            "delete: unlink, rmdir, rename away",
            ENFORCED,
            &via("path_unlink, path_rmdir, path_rename"),
        ));
    }
    own
}

/// How the fallback tier's `fmod_ret` programs are named in a layer.
fn refused_by(functions: &str) -> String {
    format!(
        "fmod_ret of {functions}, the functions that run the LSM hooks (in the kernel: EPERM \
         before the operation, daemon or not)"
    )
}

const DELETE_FUNCTIONS: &str = "security_path_unlink, security_path_rmdir, security_path_rename";

/// The fallback tier's layers for `access`: opens answered by the daemon (`fan`), the rest
/// refused in the kernel (`refuse`: the `fmod_ret` programs attached) or killed on detection
/// (`detect`). Second, the layers beyond what the rule's status counts.
fn fallback_layers(access: u32, fan: &str, detect: &str, refuse: bool) -> (Vec<Layer>, Vec<Layer>) {
    let (mut own, mut beyond) = (Vec::new(), Vec::new());
    if access & access::READ != 0 {
        own.push(layer(
            "read",
            fan,
            "fanotify FAN_OPEN_PERM/FAN_ACCESS_PERM answered FAN_DENY (EPERM) by the daemon",
        ));
    }
    if access & access::EXEC != 0 {
        own.push(layer(
            "exec",
            fan,
            "fanotify FAN_OPEN_EXEC_PERM answered FAN_DENY (EPERM) by the daemon",
        ));
    }
    if access & access::WRITE != 0 {
        own.push(layer(
            "write: open for writing or with O_TRUNC",
            fan,
            "fanotify FAN_OPEN_PERM answered FAN_DENY (EPERM) by the daemon",
        ));
        if refuse {
            own.push(layer(
                "write: truncate(2), chmod/chown, create, link",
                ENFORCED,
                &refused_by(
                    "security_path_truncate/security_file_truncate, security_path_chmod, \
                     security_path_chown, security_path_mknod, security_path_mkdir, \
                     security_path_symlink, security_path_link, security_path_rename",
                ),
            ));
            // As on bpf-lsm, the refusals see operations, not writes through descriptors.
            beyond.push(layer(
                "write: writes through descriptors opened before the rule or the tag",
                detect,
                "ctime tracepoints (pinned; Linux >= 6.13); SIGKILL before the system call returns (that object is changed)",
            ));
        } else {
            own.push(layer(
                "write: truncate(2), chmod/chown, create, link, writes through descriptors opened earlier",
                detect,
                "ctime tracepoints (pinned); SIGKILL before the system call returns (that object is changed)",
            ));
        }
    }
    if access & access::DELETE != 0 {
        own.push(if refuse {
            layer(
                "delete: unlink, rmdir, rename away",
                ENFORCED,
                &refused_by(DELETE_FUNCTIONS),
            )
        } else {
            layer(
                "delete: unlink, rmdir, rename away",
                detect,
                "ctime tracepoints (pinned); SIGKILL before the system call returns (that object is lost)",
            )
        });
    }
    (own, beyond)
}

/// Renames and unlinks of an enforcing rule's objects, whatever its access.
fn protected_name_layer(attached: &Attached, detect: &str) -> Layer {
    const COVERS: &str = "protected name: unlink, rmdir, rename away, whatever the access";
    if attached.lsm() {
        layer(
            COVERS,
            ENFORCED,
            "BPF LSM path_unlink, path_rmdir, path_rename",
        )
    } else if attached.refuses() {
        layer(COVERS, ENFORCED, &refused_by(DELETE_FUNCTIONS))
    } else {
        layer(
            COVERS,
            detect,
            "ctime tracepoints (pinned); SIGKILL before the system call returns (the object moves, and stays protected where it is: the identity set finds it by file handle after refreshes, reloads and restarts, until the rule changes)",
        )
    }
}

/// The status of `rule`, given what it resolved to, whether its fanotify group exists and
/// what the kernel side attached.
pub fn rule_status(
    rule: &RuleInfo,
    st: &RuleState,
    group: bool,
    attached: &Attached,
) -> PathRuleStatus {
    let fan = if group { ENFORCED } else { NOT_LOADED };
    let detect = if attached.detects() {
        KILL_ON_DETECT
    } else {
        NOT_LOADED
    };
    let (own, beyond) = if attached.lsm() {
        (lsm_layers(rule.access), Vec::new())
    } else {
        fallback_layers(rule.access, fan, detect, attached.refuses())
    };
    let enforcing = rule.enforcing();
    let status = if !enforcing {
        AUDIT_ONLY.to_owned()
    } else {
        own.iter()
            .map(|l| l.status.as_str())
            .min_by_key(|s| rank(s))
            .unwrap_or(NOT_LOADED)
            .to_owned()
    };
    let mut layers = own;
    // Not part of the rule's status: beyond what the bpf-lsm tier covers.
    layers.extend(beyond);
    if enforcing && rule.access & access::DELETE == 0 {
        // Not part of the rule's status: its access does not ask for it.
        layers.push(protected_name_layer(attached, detect));
    }
    let devices: Vec<String> = st
        .targets
        .devices
        .iter()
        .map(|(a, b)| format!("{a}:{b}"))
        .collect();
    if !devices.is_empty() {
        layers.push(layer(
            &format!("raw block device {}", devices.join(", ")),
            if attached.device {
                ENFORCED
            } else {
                NOT_LOADED
            },
            "cgroup device program (pinned; EPERM), keyed by major:minor",
        ));
    }
    if enforcing && !st.targets.objects.is_empty() {
        let how = if rule.access & access::READ != 0 {
            "masked"
        } else {
            "read-only"
        };
        layers.push(layer(
            &format!("guard run trees: {how} in a private mount namespace"),
            ENFORCED,
            "mount namespace set up by guard run (holds without the daemon)",
        ));
    }
    let objects: Vec<String> = st
        .targets
        .objects
        .iter()
        .take(OBJECTS_SHOWN)
        .map(|o| {
            let (a, b) = dev_parts(o.dev);
            let kind = match o.kind {
                Kind::File => "file",
                Kind::Dir => "directory",
                Kind::Volume => "volume",
                Kind::Backing => "loop image",
            };
            format!("{} ({kind} {a}:{b}:{})", o.path.display(), o.ino)
        })
        .collect();
    let note = st
        .targets
        .objects
        .is_empty()
        .then(|| "resolves to nothing yet: protected as soon as a path appears".to_owned());
    PathRuleStatus {
        id: rule.id,
        name: rule.name.clone(),
        status,
        access: names(rule.access).into_iter().map(str::to_owned).collect(),
        action: rule.action.to_string(),
        mode: rule.mode.to_string(),
        layers,
        objects,
        object_count: st.targets.objects.len(),
        missing: st
            .targets
            .missing
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        devices,
        marked: st.marked,
        truncated: st.truncated,
        errors: st.errors.clone(),
        note,
    }
}

/// Lines for the `guard status` table.
pub fn render(rules: &[PathRuleStatus]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if rules.is_empty() {
        return out;
    }
    out.push_str("path rules:\n");
    for r in rules {
        let _ = writeln!(
            out,
            "  #{:<3} {:<20} {:<15} {} {} ({}, {} objects, {} marks)",
            r.id,
            r.name,
            r.status,
            r.access.join(","),
            r.action,
            r.mode,
            r.object_count,
            r.marked
        );
        for l in &r.layers {
            let _ = writeln!(out, "         {:<15} {}  [{}]", l.status, l.covers, l.via);
        }
        for o in &r.objects {
            let _ = writeln!(out, "         object  {o}");
        }
        for m in &r.missing {
            let _ = writeln!(out, "         missing {m}");
        }
        if let Some(n) = &r.note {
            let _ = writeln!(out, "         note    {n}");
        }
        for e in &r.errors {
            let _ = writeln!(out, "         error   {e}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Action, Mode};

    fn rule(access: u32, mode: Mode) -> RuleInfo {
        RuleInfo {
            id: 1,
            name: "r".into(),
            access,
            action: Action::Deny,
            mode,
            fingerprint: 0,
        }
    }

    fn attached(detects: bool) -> Attached {
        Attached {
            detectors: if detects {
                guard_common::maps::file_programs::TRACEPOINTS
                    .iter()
                    .map(|(_, t)| t.to_string())
                    .collect()
            } else {
                Vec::new()
            },
            device: true,
            ..Default::default()
        }
    }

    #[test]
    fn status_is_the_weakest_layer_of_the_rules_own_accesses() {
        let st = RuleState::default();
        let s = |a, m, g, d| rule_status(&rule(a, m), &st, g, &attached(d)).status;
        assert_eq!(s(access::READ, Mode::Enforce, true, true), ENFORCED);
        assert_eq!(
            s(access::WRITE | access::DELETE, Mode::Enforce, true, true),
            KILL_ON_DETECT
        );
        assert_eq!(s(access::DELETE, Mode::Enforce, true, false), NOT_LOADED);
        assert_eq!(s(access::READ, Mode::Enforce, false, true), NOT_LOADED);
        assert_eq!(s(access::READ, Mode::Audit, true, true), AUDIT_ONLY);
        let r = rule_status(
            &rule(access::READ, Mode::Enforce),
            &st,
            true,
            &attached(true),
        );
        assert!(r.note.is_some(), "an empty rule says so");
    }

    #[test]
    fn fallback_refusals_enforce_what_the_detectors_would_kill() {
        let st = RuleState::default();
        let mut a = attached(false);
        a.refuse = vec!["security_path_unlink".into()];
        let r = rule_status(
            &rule(access::WRITE | access::DELETE, Mode::Enforce),
            &st,
            true,
            &a,
        );
        assert_eq!(r.status, ENFORCED, "{r:?}");
        let beyond = r.layers.iter().find(|l| l.covers.contains("opened before"));
        assert_eq!(beyond.map(|l| l.status.as_str()), Some(NOT_LOADED));
        let r = rule_status(&rule(access::READ, Mode::Enforce), &st, true, &a);
        let name = r
            .layers
            .iter()
            .find(|l| l.covers.starts_with("protected name"));
        assert!(name.is_some_and(|l| l.status == ENFORCED && l.via.contains("fmod_ret")));
        // One program refused by the kernel: nothing is claimed.
        a.refuse_error = Some("fmod_ret/security_path_rmdir: refused".into());
        let r = rule_status(&rule(access::DELETE, Mode::Enforce), &st, true, &a);
        assert_eq!(r.status, NOT_LOADED, "{r:?}");
    }
}
