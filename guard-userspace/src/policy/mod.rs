//! The guard policy: a Kubernetes-style `GuardPolicy` resource (see `default.yaml` for an
//! annotated example), parsed and validated into [`Policy`], compiled into [`CompiledPolicy`].
//!
//! Loading happens in two passes, both reporting `file:line:column: field: message`:
//! 1. serde_yaml_ng parses, first for syntax only, then into the typed model. Unknown fields
//!    (`deny_unknown_fields`), wrong types, unknown variants and bad scalars (each scalar type
//!    checks itself while it is read: port ranges, CIDRs, names, paths…) come from the parser
//!    with its own position.
//! 2. Cross-field checks (`validate.rs`) collect every error and warning with a field path; the
//!    path is mapped back to a line and column by walking the document again (see
//!    `error::locate`: serde_yaml_ng keeps no spans, so the locator makes the parser report
//!    the position of the value at that path).

mod builtin;
mod compile;
mod error;
pub mod hostlists;
mod model;
mod pattern;
mod validate;
mod values;

use std::path::Path;

pub use builtin::{
    BuiltinEntry, Builtins, Discover, Executors, FIRST_BUILTIN_ID, SELF_PORTS, StartupFiles,
};
pub use compile::{
    CompiledAgent, CompiledEndpointRule, CompiledPathRule, CompiledPolicy, CompiledRawRule,
    CompiledSecrets, DELETE, EXEC, FIRST_SECRETS_ALLOW_ID, RAW_RULE_NAME, READ,
    SECRETS_PENDING_RULE_NAME, SECRETS_RULE_NAME, WRITE, canonical_addr, nat64_local, normalise,
};
pub use error::{Diagnostic, Location, Note, PolicyError, Problem, Warning};
pub use model::{
    Access, Action, Agent, ApiVersion, Approvers, BuiltinAction, ContainerSelector, Destinations,
    EndpointRule, Hold, HoldThen, Kind, Metadata, Mode, Notify, PathRule, Policy, Protocol,
    Secrets, SelfProtection, Spec, Webhook, WebhookFormat, webhook_target,
};
pub use pattern::{PathPattern, PathSpec, expand_home, glob_match, homes_from_passwd, read_homes};
pub use values::{
    Capability, CgroupPattern, Hostname, Name, PortRange, Program, UnixSocket, cgroup_match,
};

/// The embedded default policy, used when the daemon is given none.
pub const DEFAULT_POLICY_YAML: &str = include_str!("default.yaml");

/// Origin named in messages about the embedded default policy.
pub const DEFAULT_POLICY_ORIGIN: &str = "<embedded default.yaml>";

impl Policy {
    /// Parse and validate a policy. `origin` names the source in messages (a file name).
    /// Warnings are kept in [`Policy::warnings`]; logging them is up to the caller.
    pub fn from_yaml(src: &str, origin: &str) -> Result<Self, PolicyError> {
        if src
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Err(PolicyError::Empty {
                origin: origin.to_owned(),
            });
        }
        // Syntax first: serde_yaml_ng deserializes the events read before a syntax error, so
        // a typed parse could report a schema error above the real mistake.
        serde_yaml_ng::from_str::<serde::de::IgnoredAny>(src)
            .map_err(|e| PolicyError::yaml(origin, e))?;
        let mut policy: Policy =
            serde_yaml_ng::from_str(src).map_err(|e| PolicyError::yaml(origin, e))?;
        let findings = validate::check(&policy);
        let at = |field: String| {
            let (line, column) = error::locate(src, &field).unwrap_or((0, 0));
            let at = Location {
                origin: origin.to_owned(),
                line,
                column,
            };
            (at, field)
        };
        if !findings.errors.is_empty() {
            let diags = findings
                .errors
                .into_iter()
                .map(|(field, kind)| {
                    let (at, field) = at(field);
                    Diagnostic { at, field, kind }
                })
                .collect();
            return Err(PolicyError::Invalid(diags));
        }
        policy.warnings = findings
            .warnings
            .into_iter()
            .map(|(field, kind)| {
                let (at, field) = at(field);
                Diagnostic { at, field, kind }
            })
            .collect();
        Ok(policy)
    }

    /// Read, parse and validate the policy file at `path`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let src = std::fs::read_to_string(path).map_err(|error| PolicyError::Io {
            path: path.to_owned(),
            error,
        })?;
        Self::from_yaml(&src, &path.display().to_string())
    }

    /// The embedded default policy (`default.yaml`); its validity is a unit test.
    pub fn embedded_default() -> Self {
        Self::from_yaml(DEFAULT_POLICY_YAML, DEFAULT_POLICY_ORIGIN)
            .expect("the embedded default policy is valid (unit-tested)")
    }
}

#[cfg(test)]
mod tests;
