//! The one decision vocabulary of every hook family (network, files, self-protection, and the
//! hooks to come): what a rule asks for ([`Action`]) and what happened to the operation
//! ([`Outcome`]). Kernel records carry them as `u32` ids ([`action`], [`outcome`]); userspace
//! turns an id back into the enum with `from_id` and names it with `name`, the spelling of the
//! policy and of the event schema.

/// What a rule does to a matching operation of a tagged process. Ids are stable and gapped
/// for none: `Ask`, `Hold` and `Allow` are reserved for approvals and exceptions.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Fail the operation with EPERM.
    Deny = 1,
    /// Deny, then SIGKILL the offending process.
    Kill = 2,
    /// Deny, then kill every process of the agent tree.
    KillTree = 3,
    /// Allow and record.
    Audit = 4,
    /// Deny now and open a request for a human.
    Ask = 5,
    /// Deny and freeze the tree until a human decides.
    Hold = 6,
    /// Allow (an approved exception).
    Allow = 7,
}

/// What happened to the operation.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Allowed and recorded (audit action or audit mode).
    Allowed = 0,
    /// Refused with EPERM before it happened.
    Denied = 1,
    /// Refused or detected, and SIGKILL sent before the process returned to user space.
    Killed = 2,
    /// The kill could not be sent or scheduled.
    KillFailed = 3,
    /// The kill is scheduled for the offender's next wait (a tracer of the daemon).
    KillScheduled = 4,
}

/// `u32` ids of [`Action`], for kernel records and rule maps.
pub mod action {
    use super::Action;
    pub const DENY: u32 = Action::Deny as u32;
    pub const KILL: u32 = Action::Kill as u32;
    pub const KILL_TREE: u32 = Action::KillTree as u32;
    pub const AUDIT: u32 = Action::Audit as u32;
    pub const ASK: u32 = Action::Ask as u32;
    pub const HOLD: u32 = Action::Hold as u32;
    pub const ALLOW: u32 = Action::Allow as u32;
}

/// `u32` ids of [`Outcome`], for kernel records.
pub mod outcome {
    use super::Outcome;
    pub const ALLOWED: u32 = Outcome::Allowed as u32;
    pub const DENIED: u32 = Outcome::Denied as u32;
    pub const KILLED: u32 = Outcome::Killed as u32;
    pub const KILL_FAILED: u32 = Outcome::KillFailed as u32;
    pub const KILL_SCHEDULED: u32 = Outcome::KillScheduled as u32;
}

impl Action {
    pub const ALL: [Self; 7] = [
        Self::Deny,
        Self::Kill,
        Self::KillTree,
        Self::Audit,
        Self::Ask,
        Self::Hold,
        Self::Allow,
    ];

    pub const fn id(self) -> u32 {
        self as u32
    }

    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.id() == id)
    }

    /// The policy's and the event schema's spelling.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Kill => "kill",
            Self::KillTree => "kill-tree",
            Self::Audit => "audit",
            Self::Ask => "ask",
            Self::Hold => "hold",
            Self::Allow => "allow",
        }
    }

    /// Whether the operation fails (everything but `audit` and `allow`).
    pub const fn blocks(self) -> bool {
        !matches!(self, Self::Audit | Self::Allow)
    }

    /// Whether the offender is killed.
    pub const fn kills(self) -> bool {
        matches!(self, Self::Kill | Self::KillTree)
    }

    /// Precedence when several rules match one operation: the strongest response wins.
    pub const fn strength(self) -> u32 {
        match self {
            Self::KillTree => 6,
            Self::Kill => 5,
            Self::Hold => 4,
            Self::Ask => 3,
            Self::Deny => 2,
            Self::Audit => 1,
            Self::Allow => 0,
        }
    }
}

impl Outcome {
    pub const ALL: [Self; 5] = [
        Self::Allowed,
        Self::Denied,
        Self::Killed,
        Self::KillFailed,
        Self::KillScheduled,
    ];

    pub const fn id(self) -> u32 {
        self as u32
    }

    /// Unknown ids read as `KillFailed`: a record the decoder cannot place never reads as a
    /// success.
    pub fn from_id(id: u32) -> Self {
        Self::ALL
            .into_iter()
            .find(|o| o.id() == id)
            .unwrap_or(Self::KillFailed)
    }

    /// The event schema's `result`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Killed => "killed",
            Self::KillFailed => "kill-failed",
            Self::KillScheduled => "kill-scheduled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_names_are_distinct() {
        for a in Action::ALL {
            assert_eq!(Action::from_id(a.id()), Some(a));
            assert_eq!(
                Action::ALL.iter().filter(|b| b.name() == a.name()).count(),
                1
            );
        }
        assert_eq!(Action::from_id(0), None);
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_id(o.id()), o);
        }
        assert_eq!(Outcome::from_id(99), Outcome::KillFailed);
    }

    #[test]
    fn ids_are_the_ones_recorded_in_old_logs() {
        // Rule maps pinned by an older daemon hold these numbers.
        assert_eq!(
            (action::DENY, action::KILL, action::KILL_TREE, action::AUDIT),
            (1, 2, 3, 4)
        );
        assert_eq!(
            (
                outcome::ALLOWED,
                outcome::DENIED,
                outcome::KILLED,
                outcome::KILL_FAILED
            ),
            (0, 1, 2, 3)
        );
    }

    #[test]
    fn stronger_responses_win() {
        assert!(Action::KillTree.strength() > Action::Kill.strength());
        assert!(Action::Kill.strength() > Action::Deny.strength());
        assert!(Action::Deny.strength() > Action::Audit.strength());
        assert!(Action::Kill.kills() && !Action::Ask.kills() && Action::Ask.blocks());
    }
}
