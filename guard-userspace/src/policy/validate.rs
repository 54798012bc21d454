//! Checks that span more than one value: unique names, rules that match nothing, agents that
//! claim the same program. Scalars were already checked while parsing.

use std::collections::HashMap;

use guard_common::agent::{COMM_LEN, NAME_LEN};

use super::{
    error::{Note, Problem},
    model::Policy,
    values::Program,
};

/// Errors and warnings, each with the field it is about.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub errors: Vec<(String, Problem)>,
    pub warnings: Vec<(String, Note)>,
}

pub(crate) fn check(policy: &Policy) -> Findings {
    let mut f = Findings::default();
    if let Err(reason) = resource_name(&policy.metadata.name) {
        f.errors.push((
            "metadata.name".into(),
            Problem::BadResourceName {
                name: policy.metadata.name.clone(),
                reason,
            },
        ));
    }
    agents(policy, &mut f);
    rules(policy, &mut f);
    notify(policy, &mut f);
    f
}

/// `spec.notify.webhook`: a URL this build can deliver to, and bounds.
fn notify(policy: &Policy, f: &mut Findings) {
    let Some(w) = &policy.spec.notify.webhook else {
        return;
    };
    if let Err(reason) = crate::policy::webhook_target(&w.url) {
        f.errors.push((
            "spec.notify.webhook.url".into(),
            Problem::BadWebhook {
                url: w.url.clone(),
                reason,
            },
        ));
    }
    for (field, value, range) in [
        ("retries", u32::from(w.retries), 0..=10),
        ("queue", u32::from(w.queue), 1..=10_000),
    ] {
        if !range.contains(&value) {
            f.errors.push((
                format!("spec.notify.webhook.{field}"),
                Problem::OutOfRange {
                    value: value.to_string(),
                    range: format!("{} to {}", range.start(), range.end()),
                },
            ));
        }
    }
}

/// RFC 1123 subdomain, as Kubernetes requires of `metadata.name`.
fn resource_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("it is empty")
    } else if name.len() > 253 {
        Err("it is longer than 253 bytes")
    } else if !name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
    {
        Err("it contains a character other than a-z, 0-9, '-' or '.'")
    } else if name
        .split('.')
        .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-'))
    {
        Err("a label is empty or starts or ends with '-'")
    } else {
        Ok(())
    }
}

fn agents(policy: &Policy, f: &mut Findings) {
    let mut names: HashMap<&str, String> = HashMap::new();
    // Truncated key → owning agent, separately for executables and scripts.
    let mut executables: HashMap<Vec<u8>, &str> = HashMap::new();
    let mut scripts: HashMap<Vec<u8>, &str> = HashMap::new();
    let mut markers: HashMap<&str, &str> = HashMap::new();
    for (i, agent) in policy.spec.agents.iter().enumerate() {
        let at = format!("spec.agents[{i}]");
        let name = agent.name.as_str();
        if let Some(first) = names.get(name) {
            f.errors.push((
                format!("{at}.name"),
                Problem::DuplicateAgent {
                    name: name.to_owned(),
                    first: first.clone(),
                },
            ));
        } else {
            names.insert(name, format!("{at}.name"));
        }
        if agent.executables.is_empty()
            && agent.scripts.is_empty()
            && agent.env.is_empty()
            && agent.paths.is_empty()
            && agent.cgroups.is_empty()
            && agent.containers.is_empty()
        {
            f.errors.push((at.clone(), Problem::AgentMatchesNothing));
        }
        for (j, c) in agent.containers.iter().enumerate() {
            if c.is_empty() {
                f.errors.push((
                    format!("{at}.containers[{j}]"),
                    Problem::ContainerSelectsAll,
                ));
            }
        }
        let lists = [
            (
                "executables",
                "executable",
                &agent.executables,
                COMM_LEN - 1,
            ),
            ("scripts", "script", &agent.scripts, NAME_LEN),
        ];
        for (field, what, programs, max) in lists {
            let owners = if field == "executables" {
                &mut executables
            } else {
                &mut scripts
            };
            for (j, program) in programs.iter().enumerate() {
                let field = format!("{at}.{field}[{j}]");
                if let Some(note) = truncation(what, program, max) {
                    f.warnings.push((field.clone(), note));
                }
                let key = key(program, max);
                match owners.get(&key) {
                    Some(owner) if *owner != name => f.errors.push((
                        field,
                        Problem::DuplicateProgram {
                            what,
                            name: program.as_str().to_owned(),
                            agent: (*owner).to_owned(),
                        },
                    )),
                    Some(_) => {}
                    None => {
                        owners.insert(key, name);
                    }
                }
            }
        }
        for (j, path) in agent.paths.iter().enumerate() {
            if path.as_str().starts_with("**/") {
                f.errors.push((
                    format!("{at}.paths[{j}]"),
                    Problem::AgentPathAnywhere {
                        path: path.as_str().to_owned(),
                    },
                ));
            }
        }
        for (j, marker) in agent.env.iter().enumerate() {
            match markers.get(marker.as_str()) {
                Some(owner) if *owner != name => f.errors.push((
                    format!("{at}.env[{j}]"),
                    Problem::DuplicateProgram {
                        what: "environment marker",
                        name: marker.as_str().to_owned(),
                        agent: (*owner).to_owned(),
                    },
                )),
                Some(_) => {}
                None => {
                    markers.insert(marker.as_str(), name);
                }
            }
        }
    }
}

fn key(program: &Program, max: usize) -> Vec<u8> {
    let bytes = program.as_str().as_bytes();
    bytes[..bytes.len().min(max)].to_vec()
}

fn truncation(what: &str, program: &Program, max: usize) -> Option<Note> {
    let name = program.as_str();
    if name.len() <= max {
        return None;
    }
    let kept = String::from_utf8_lossy(&key(program, max)).into_owned();
    Some(if what == "executable" {
        Note::ExecutableTruncated {
            name: name.to_owned(),
            kept,
        }
    } else {
        Note::ScriptTruncated {
            name: name.to_owned(),
            kept,
            max,
        }
    })
}

fn rules(policy: &Policy, f: &mut Findings) {
    let mut names: HashMap<&str, String> = HashMap::new();
    for (i, rule) in policy.spec.endpoints.iter().enumerate() {
        let at = format!("spec.endpoints[{i}]");
        unique(&mut names, rule.name.as_str(), format!("{at}.name"), f);
        let ip_targets = !(rule.cidrs.is_empty() && rule.ips.is_empty() && rule.hosts.is_empty());
        if !ip_targets && rule.unix.is_empty() {
            f.errors.push((at.clone(), Problem::EndpointMatchesNothing));
        }
        if !ip_targets && !rule.unix.is_empty() && !rule.ports.is_empty() {
            f.warnings
                .push((format!("{at}.ports"), Note::PortsWithoutIpTargets));
        }
        for (j, net) in rule.cidrs.iter().enumerate() {
            if net.trunc() != *net {
                f.warnings.push((
                    format!("{at}.cidrs[{j}]"),
                    Note::CidrHostBits {
                        text: net.to_string(),
                        network: net.trunc().to_string(),
                    },
                ));
            }
        }
    }
    for (i, d) in policy.spec.secrets.allow.iter().enumerate() {
        let at = format!("spec.secrets.allow[{i}]");
        unique(&mut names, d.name.as_str(), format!("{at}.name"), f);
        if d.cidrs.is_empty() && d.ips.is_empty() && d.hosts.is_empty() {
            f.errors.push((at, Problem::AllowMatchesNothing));
        }
    }
    for (i, rule) in policy.spec.paths.iter().enumerate() {
        let at = format!("spec.paths[{i}]");
        unique(&mut names, rule.name.as_str(), format!("{at}.name"), f);
        if rule.paths.is_empty() {
            f.errors.push((format!("{at}.paths"), Problem::NoPaths));
        }
        if rule.access.is_empty() {
            f.errors
                .push((format!("{at}.access"), Problem::EmptyAccess));
        }
    }
}

/// Rule names are unique across endpoints and paths: events and `guard status` name rules.
fn unique<'a>(
    names: &mut HashMap<&'a str, String>,
    name: &'a str,
    field: String,
    f: &mut Findings,
) {
    match names.get(name) {
        Some(first) => f.errors.push((
            field,
            Problem::DuplicateRule {
                name: name.to_owned(),
                first: first.clone(),
            },
        )),
        None => {
            names.insert(name, field);
        }
    }
}
