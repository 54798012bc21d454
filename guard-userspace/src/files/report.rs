//! File decisions: the event record and the offender's one-line reason (written, with kills,
//! by [`crate::respond`]).

use guard_common::{
    ProcKey, Tag,
    event::{EventHeader, EventKind},
    file::dev_parts,
};

use super::access::names;
use crate::{
    events::{self, Decoded},
    policy::{Action, Mode},
};

/// Where a decision was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// fanotify `FAN_OPEN_PERM`: an open, refused before it happens.
    FanotifyOpen,
    /// fanotify `FAN_ACCESS_PERM`: a read through an already open descriptor.
    FanotifyAccess,
    /// fanotify `FAN_OPEN_EXEC_PERM`.
    FanotifyExec,
    /// The ctime tracepoints: a modification, detected while it happens.
    Change,
    /// The cgroup device program: a raw block device open.
    Device,
    /// A BPF LSM program (`guard_common::file::lsm_hook`): refused before it happened.
    Lsm(u32),
}

impl Hook {
    /// The `hook` field of the event.
    pub fn name(self) -> &'static str {
        match self {
            Self::FanotifyOpen => "fanotify_open_perm",
            Self::FanotifyAccess => "fanotify_access_perm",
            Self::FanotifyExec => "fanotify_open_exec_perm",
            Self::Change => "ctime_change",
            Self::Device => "cgroup_device",
            Self::Lsm(h) => guard_common::file::lsm_hook::name(h),
        }
    }
}

pub use guard_common::decision::Outcome;

/// One decision about a tagged process and a protected object.
#[derive(Clone, Debug)]
pub struct Decision {
    pub hook: Hook,
    /// Boot-time clock, ns.
    pub time_ns: u64,
    pub tgid: u32,
    pub tag: Tag,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    pub rule_id: u32,
    pub rule: String,
    pub action: Action,
    pub mode: Mode,
    pub outcome: Outcome,
    pub access: u32,
    pub path: String,
    /// Kernel encoding.
    pub dev: u32,
    pub ino: u64,
    pub syscall: Option<i64>,
    pub target: Option<String>,
    /// The request an `ask` rule opened (`None`: none, or the tree asked too often).
    pub request: Option<u64>,
}

impl Decision {
    /// The record the event pipeline enriches and logs.
    pub fn to_decoded(&self) -> Decoded {
        let kind = match self.hook {
            Hook::Change => EventKind::FileChange,
            Hook::Lsm(h) if h != guard_common::file::lsm_hook::FILE_OPEN => EventKind::FileChange,
            Hook::Device => EventKind::FileDevice,
            _ => EventKind::FileOpen,
        };
        let mut d = Decoded::new(
            kind,
            EventHeader {
                kind: kind as u32,
                agent_id: self.tag.agent_id,
                time_ns: self.time_ns,
                proc: ProcKey::new(self.tgid, self.tag.start_ns),
                root: self.tag.root,
                ppid: self.ppid,
                uid: self.uid,
            },
        );
        let (major, minor) = dev_parts(self.dev);
        d.comm = Some(self.comm.clone());
        d.decision = Some(events::Decision {
            rule: self.rule.clone(),
            rule_id: Some(self.rule_id),
            action: self.action.to_string(),
            mode: Some(self.mode.to_string()),
            result: self.outcome.name().to_owned(),
            hook: Some(self.hook.name().to_owned()),
        });
        d.object = Some(events::Object {
            path: Some(self.path.clone()),
            dev: Some(libc::makedev(major, minor)),
            ino: Some(self.ino),
            operation: Some(self.operation()),
        });
        d
    }

    /// `read`, `write`, `read,write`, `exec` for opens; `delete`, `rename`, `truncate`,
    /// `link`, `write` for changes.
    pub fn operation(&self) -> String {
        match self.hook {
            Hook::Change => operation(self.syscall).to_owned(),
            Hook::Lsm(h) => lsm_operation(h, self.access),
            _ => names(self.access).join(","),
        }
    }

    /// What was asked: `open of PATH for write`, `delete of PATH`.
    pub fn what(&self) -> String {
        let access = names(self.access).join("/");
        match self.hook {
            Hook::Change => format!(
                "{} of {}",
                operation(self.syscall),
                self.target.as_deref().unwrap_or(&self.path)
            ),
            Hook::Device => format!("open of block device {} for {access}", self.path),
            Hook::Lsm(h) if h != guard_common::file::lsm_hook::FILE_OPEN => format!(
                "{} of {}",
                lsm_operation(h, self.access),
                self.target.as_deref().unwrap_or(&self.path)
            ),
            _ => format!("open of {} for {access}", self.path),
        }
    }

    /// The one line the offender reads on its stderr.
    pub fn reason(&self) -> String {
        let what = self.what();
        let verdict = match (self.outcome, self.hook) {
            (Outcome::Allowed, _) => "recorded (audit)",
            (Outcome::Killed, Hook::Change) => "detected; process killed",
            (Outcome::Killed, _) => "denied; process killed",
            (Outcome::KillFailed, _) => "detected; the kill failed",
            (Outcome::KillScheduled, _) => "denied; process to be killed",
            (Outcome::Denied, _) => "denied",
        };
        let blocked = self.outcome != Outcome::Allowed;
        let tree = if self.action == Action::KillTree && blocked {
            " (and its agent tree)"
        } else {
            ""
        };
        let after = match self.action {
            _ if !blocked => String::new(),
            Action::Hold => format!(
                "; its agent tree is frozen until a human decides (guard thaw {root} or guard \
                 kill {root})",
                root = self.tag.root.tgid
            ),
            Action::Ask => match self.request {
                Some(id) => format!(
                    ": a human was asked (request {id}); retry after it is approved (guard \
                     requests)"
                ),
                None => format!(
                    ": this tree opened {} requests in the last minute, so nobody was asked \
                     this time",
                    crate::requests::PER_TREE_PER_MINUTE
                ),
            },
            _ => String::new(),
        };
        format!(
            "guard: {what} {verdict}{tree} by rule {}{after}\n",
            self.rule
        )
    }
}

/// The operation an LSM hook refused or recorded.
fn lsm_operation(hook: u32, access: u32) -> String {
    use guard_common::file::lsm_hook as h;
    match hook & !h::FMOD {
        h::PATH_UNLINK | h::PATH_RMDIR => "delete".into(),
        h::PATH_RENAME => "rename".into(),
        h::PATH_TRUNCATE | h::FILE_TRUNCATE => "truncate".into(),
        h::PATH_LINK => "link".into(),
        h::PATH_MKNOD | h::PATH_MKDIR | h::PATH_SYMLINK => "create".into(),
        h::PATH_CHMOD => "chmod".into(),
        h::PATH_CHOWN => "chown".into(),
        _ => names(access).join(","),
    }
}

fn operation(syscall: Option<i64>) -> &'static str {
    use guard_common::file::nr;
    match syscall {
        Some(nr::UNLINK | nr::UNLINKAT | nr::RMDIR) => "delete",
        Some(nr::RENAME | nr::RENAMEAT | nr::RENAMEAT2) => "rename",
        Some(nr::TRUNCATE | nr::FTRUNCATE) => "truncate",
        Some(nr::LINK | nr::LINKAT) => "link",
        _ => "write",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_by_the_fallback_tiers_fmod_ret_program_is_named_for_its_function() {
        use guard_common::file::lsm_hook as h;
        let fmod = h::PATH_RENAME | h::FMOD;
        assert_eq!(Hook::Lsm(fmod).name(), "security_path_rename");
        assert_eq!(Hook::Lsm(h::PATH_RENAME).name(), "lsm_path_rename");
        assert_eq!(lsm_operation(fmod, 0), "rename");
        assert_eq!(
            lsm_operation(h::FILE_TRUNCATE | h::FMOD, 0),
            lsm_operation(h::FILE_TRUNCATE, 0)
        );
    }

    fn decision(hook: Hook, outcome: Outcome) -> Decision {
        Decision {
            hook,
            time_ns: 1_000_000_000,
            tgid: 42,
            tag: Tag::default(),
            ppid: 1,
            uid: 0,
            comm: "rm".into(),
            rule_id: 3,
            rule: "prod-volume".into(),
            action: Action::Deny,
            mode: Mode::Enforce,
            outcome,
            access: guard_common::file::access::DELETE,
            path: "/srv/db/base/1".into(),
            dev: guard_common::file::kernel_dev(7, 0),
            ino: 12,
            syscall: Some(guard_common::file::nr::UNLINKAT),
            target: Some("base/1".into()),
            request: None,
        }
    }

    #[test]
    fn reasons_name_the_operation_and_the_rule() {
        assert_eq!(
            decision(Hook::Change, Outcome::Killed).reason(),
            "guard: delete of base/1 detected; process killed by rule prod-volume\n"
        );
        let mut open = decision(Hook::FanotifyOpen, Outcome::Denied);
        open.access = guard_common::file::access::WRITE;
        assert_eq!(
            open.reason(),
            "guard: open of /srv/db/base/1 for write denied by rule prod-volume\n"
        );
        open.action = Action::Hold;
        open.tag.root = guard_common::ProcKey::new(40, 1);
        assert_eq!(
            open.reason(),
            "guard: open of /srv/db/base/1 for write denied by rule prod-volume; its agent tree \
             is frozen until a human decides (guard thaw 40 or guard kill 40)\n"
        );
    }

    #[test]
    fn the_event_line_has_the_stable_fields() {
        let d = decision(Hook::Change, Outcome::Killed).to_decoded();
        let ev = events::pipeline::build(
            &d,
            None,
            &crate::tags::AgentNames::default(),
            "node",
            &events::Clock::now(),
            None,
        );
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["kind"], "file_change");
        assert_eq!(v["hook"], "ctime_change");
        assert_eq!(v["result"], "killed");
        assert_eq!(v["rule"], "prod-volume");
        assert_eq!(v["object"]["path"], "/srv/db/base/1");
        assert_eq!(v["object"]["operation"], "delete");
        assert_eq!(v["object"]["dev"], libc::makedev(7, 0));
        assert_eq!(v["process"]["comm"], "rm");
        assert_eq!(v["schema"], events::SCHEMA);
        let open = decision(Hook::FanotifyOpen, Outcome::Denied).to_decoded();
        assert_eq!(open.kind, EventKind::FileOpen);
    }
}
