//! Loading tests: the embedded default, and that every kind of mistake is reported with its
//! file, line, column and field.

use std::{io::Write as _, net::IpAddr};

use super::*;

/// A policy whose spec starts on line 6.
fn doc(spec: &str) -> String {
    format!(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata:\n  name: t\nspec:\n{spec}"
    )
}

fn err(spec: &str) -> PolicyError {
    Policy::from_yaml(&doc(spec), "policy.yaml").unwrap_err()
}

#[test]
fn embedded_default_parses_and_compiles() {
    let policy = Policy::embedded_default();
    assert!(policy.warnings().is_empty(), "{:?}", policy.warnings());
    let c = policy.compile();
    assert_eq!(c.name, "default");
    assert_eq!(c.mode, Mode::Enforce);
    let agents: Vec<&str> = c.agents.iter().map(|a| a.name.as_str()).collect();
    for name in [
        "claude-code",
        "codex",
        "cursor",
        "aider",
        "gemini-cli",
        "copilot",
        "opencode",
        "cline",
        "amp",
        "goose",
        "ai-agent",
    ] {
        assert!(agents.contains(&name), "{name}");
    }
    // The IDEs are not agents: their human terminals stay untagged.
    assert!(c.agents.iter().all(|a| a.executables.iter().all(|e| {
        let e = guard_common::agent::trim_nul(&e.bytes);
        e != b"cursor" && e != b"windsurf" && e != b"code"
    })));
    let cursor = c.agents.iter().find(|a| a.name == "cursor").unwrap();
    assert!(cursor.env.contains(&"CURSOR_AGENT=1".to_owned()));
    let metadata = &c.endpoints[0];
    assert_eq!(
        (metadata.action, metadata.mode),
        (Action::Deny, Mode::Enforce)
    );
    assert_eq!(
        metadata.networks,
        [
            "169.254.169.254/32",
            "169.254.170.2/32",
            "169.254.170.23/32",
            "100.100.100.200/32",
            "fd00:ec2::254/128",
            "fd00:ec2::23/128",
        ]
        .map(|n| n.parse::<ipnet::IpNet>().unwrap())
    );
    assert!(
        c.endpoints[1]
            .unix
            .contains(&"/var/run/docker.sock".to_owned())
    );
    assert_eq!(c.endpoints[2].mode, Mode::Audit);
    let creds = &c.paths[0];
    assert_eq!(
        (creds.action, creds.mode, creds.access),
        (Action::Deny, Mode::Audit, READ)
    );
    assert!(creds.paths.iter().any(|p| p.pattern()
        == PathPattern::AnyDir {
            name: ".env.production".into()
        }));
    assert_eq!(creds.id, 4);
    assert!(!c.drop_capabilities.is_empty());
    // Control planes and the secrets rule: in audit, as a first run should be.
    let cp = &c.endpoints[3];
    assert_eq!((cp.name.as_str(), cp.mode), ("control-planes", Mode::Audit));
    assert!(cp.hosts.iter().any(|h| h == "api.vercel.com"));
    assert_eq!(
        (c.secrets.action, c.secrets.mode),
        (Some(Action::Deny), Mode::Audit)
    );
    let summary = c.summary();
    assert!(
        summary
            .contains("11 agents, 4 endpoint rules, 1 path rule; 3 of 5 rules only record (audit)"),
        "{summary}"
    );
    assert!(summary.contains("~/.ssh/id_* (pattern)"), "{summary}");
}

#[test]
fn typo_is_reported_with_line_and_column() {
    let e = err("  endpoints:\n    - name: x\n      ips: [10.0.0.1]\n      acton: deny\n");
    let msg = e.to_string();
    assert!(
        msg.starts_with("policy.yaml:9:7: spec.endpoints[0]: unknown field `acton`, expected one of `name`, `cidrs`"),
        "{msg}"
    );
    assert_eq!(
        e.location().map(|l| (l.line, l.column)),
        Some((9, 7)),
        "{msg}"
    );
}

#[test]
fn reversed_port_range() {
    let e = err("  endpoints:\n    - { name: x, ips: [10.0.0.1], ports: [443, \"9000-80\"] }\n");
    assert_eq!(
        e.to_string(),
        "policy.yaml:7:48: spec.endpoints[0].ports[1]: port range \"9000-80\" is reversed"
    );
}

#[test]
fn port_out_of_range() {
    let e =
        err("  endpoints:\n    - name: x\n      ips: [10.0.0.1]\n      ports:\n        - 70000\n");
    assert_eq!(
        e.to_string(),
        "policy.yaml:10:11: spec.endpoints[0].ports[0]: port \"70000\" is out of range 1-65535"
    );
}

#[test]
fn bad_cidr() {
    let e = err("  endpoints:\n    - name: x\n      cidrs: [10.0.0.0/8, 10.0.0.0/33]\n");
    assert_eq!(
        e.to_string(),
        "policy.yaml:8:27: spec.endpoints[0].cidrs[1]: invalid CIDR \"10.0.0.0/33\": prefix length is longer than 32"
    );
    let msg = err("  endpoints:\n    - { name: x, cidrs: [prod] }\n").to_string();
    assert!(
        msg.starts_with("policy.yaml:7:26: spec.endpoints[0].cidrs[0]: invalid CIDR \"prod\""),
        "{msg}"
    );
}

#[test]
fn duplicate_rule_names_across_endpoints_and_paths() {
    let e = err(
        "  endpoints:\n    - { name: prod, ips: [10.0.0.1] }\n  paths:\n    - name: prod\n      paths: [/srv]\n      access: [write]\n",
    );
    let PolicyError::Invalid(diags) = &e else {
        panic!("{e:?}")
    };
    assert!(matches!(&diags[0].kind, Problem::DuplicateRule { name, .. } if name == "prod"));
    assert_eq!(
        e.to_string(),
        "policy.yaml:9:13: spec.paths[0].name: duplicate rule name \"prod\" (first used at spec.endpoints[0].name)"
    );
}

#[test]
fn empty_access() {
    let e = err("  paths:\n    - name: p\n      paths: [/srv]\n      access: []\n");
    assert_eq!(
        e.to_string(),
        "policy.yaml:9:15: spec.paths[0].access: access is empty: give at least one of read, write, delete, exec"
    );
    let e = err("  paths:\n    - name: p\n      paths: [/srv]\n");
    assert!(
        e.to_string()
            .starts_with("policy.yaml:7:7: spec.paths[0]: missing field `access`"),
        "{e}"
    );
}

#[test]
fn relative_path() {
    let e = err(
        "  paths:\n    - name: p\n      paths:\n        - /srv\n        - .env.production\n      access: [read]\n",
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with("policy.yaml:10:11: spec.paths[0].paths[1]: relative path \".env.production\": paths are absolute"),
        "{msg}"
    );
}

#[test]
fn unknown_action() {
    let msg = err("  endpoints:\n    - { name: x, ips: [10.0.0.1], action: block }\n").to_string();
    assert!(
        msg.starts_with("policy.yaml:7:43: spec.endpoints[0].action: unknown variant `block`, expected one of `deny`, `kill`, `kill-tree`, `audit`"),
        "{msg}"
    );
}

#[test]
fn raw_sockets_default_to_deny_and_follow_spec_mode() {
    let c = Policy::from_yaml(&doc("  mode: audit\n"), "p.yaml")
        .unwrap()
        .compile();
    assert_eq!(
        c.raw_sockets,
        Some(CompiledRawRule {
            action: Action::Deny,
            mode: Mode::Audit
        })
    );
    let c = Policy::from_yaml(&doc("  rawSockets: kill-tree\n"), "p.yaml")
        .unwrap()
        .compile();
    assert_eq!(c.raw_sockets.map(|r| r.action), Some(Action::KillTree));
    let c = Policy::from_yaml(&doc("  rawSockets: allow\n"), "p.yaml")
        .unwrap()
        .compile();
    assert_eq!(c.raw_sockets, None);
    assert!(
        c.summary().contains("raw sockets: allowed"),
        "{}",
        c.summary()
    );
    let msg = err("  rawSockets: dny\n").to_string();
    assert!(
        msg.starts_with("policy.yaml:6:15: spec.rawSockets: unknown variant `dny`, expected one of `deny`, `kill`, `kill-tree`, `audit`, `allow`"),
        "{msg}"
    );
}

#[test]
fn unknown_api_version_and_kind() {
    let msg = Policy::from_yaml(
        "apiVersion: guard.dev/v1\nkind: GuardPolicy\nmetadata: { name: t }\nspec: {}\n",
        "p.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.starts_with(
            "p.yaml:1:13: apiVersion: unknown variant `guard.dev/v1`, expected `guard.dev/v1alpha1`"
        ),
        "{msg}"
    );
    let msg = Policy::from_yaml(
        "apiVersion: guard.dev/v1alpha1\nkind: NetworkPolicy\nmetadata: { name: t }\nspec: {}\n",
        "p.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.starts_with(
            "p.yaml:2:7: kind: unknown variant `NetworkPolicy`, expected `GuardPolicy`"
        ),
        "{msg}"
    );
}

#[test]
fn syntax_errors_and_empty_documents() {
    let msg = Policy::from_yaml(
        "apiVersion: guard.dev/v1alpha1\nkind: 'GuardPolicy\n",
        "p.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(msg.starts_with("p.yaml:3:1: "), "{msg}");
    // A syntax error after a schema error is still the one reported.
    let msg = Policy::from_yaml("foo: bar\n  baz: 1\n", "p.yaml")
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "p.yaml:2:6: mapping values are not allowed in this context"
    );
    for empty in ["", "# nothing\n\n"] {
        let e = Policy::from_yaml(empty, "p.yaml").unwrap_err();
        assert_eq!(e.to_string(), "p.yaml: the policy is empty");
    }
    let msg = Policy::from_yaml(&format!("{}\n---\n{}", doc(""), doc("")), "p.yaml")
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("p.yaml: "), "{msg}");
}

#[test]
fn every_cross_field_error_is_reported() {
    let e = err(concat!(
        "  agents:\n",
        "    - { name: a, executables: [claude] }\n",
        "    - { name: a, executables: [claude-x] }\n",
        "    - { name: c }\n",
        "    - { name: d, scripts: [d], executables: [codex, claude] }\n",
        "  endpoints:\n",
        "    - { name: e, ports: [443] }\n",
        "  paths:\n",
        "    - { name: p, paths: [], access: [read] }\n",
    ));
    let PolicyError::Invalid(diags) = &e else {
        panic!("{e:?}")
    };
    let got: Vec<(String, usize, usize)> = diags
        .iter()
        .map(|d| (d.field.clone(), d.at.line, d.at.column))
        .collect();
    assert_eq!(
        got,
        [
            ("spec.agents[1].name".into(), 8, 15),
            ("spec.agents[2]".into(), 9, 7),
            ("spec.agents[3].executables[1]".into(), 10, 53),
            ("spec.endpoints[0]".into(), 12, 7),
            ("spec.paths[0].paths".into(), 14, 25),
        ],
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("executable \"claude\" is already listed by agent \"a\"")
    );
}

#[test]
fn executables_are_basenames_and_long_ones_warn() {
    let msg = err("  agents:\n    - { name: a, executables: [/usr/bin/claude] }\n").to_string();
    assert!(
        msg.starts_with("policy.yaml:7:32: spec.agents[0].executables[0]: invalid program name \"/usr/bin/claude\""),
        "{msg}"
    );
    let p = Policy::from_yaml(
        &doc("  agents:\n    - { name: a, executables: [cursor-agent-helper] }\n"),
        "p.yaml",
    )
    .unwrap();
    assert_eq!(p.warnings().len(), 1);
    assert_eq!(
        p.warnings()[0].to_string(),
        "p.yaml:7:32: spec.agents[0].executables[0]: executable \"cursor-agent-helper\" is longer than 15 bytes: the kernel matches the process name (comm), so only \"cursor-agent-he\" is compared"
    );
}

#[test]
fn mapped_ipv6_targets_compile_to_ipv4() {
    let p = Policy::from_yaml(
        &doc("  endpoints:\n    - name: x\n      ips: [\"::ffff:169.254.169.254\"]\n      cidrs: [\"::ffff:10.20.0.0/112\", \"2001:db8::/32\"]\n"),
        "p.yaml",
    )
    .unwrap();
    let nets = &p.compile().endpoints[0].networks;
    let want: Vec<ipnet::IpNet> = ["10.20.0.0/16", "2001:db8::/32", "169.254.169.254/32"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(*nets, want);
    assert!(nets[0].contains(&"10.20.3.4".parse::<IpAddr>().unwrap()));
}

#[test]
fn tilde_paths_expand_per_home() {
    let p = Policy::from_yaml(
        &doc("  paths:\n    - { name: k, paths: [\"~/.kube/config\", \"~\"], access: [read, write] }\n"),
        "p.yaml",
    )
    .unwrap();
    let rule = &p.compile().paths[0];
    assert_eq!(rule.access, READ | WRITE);
    let homes = homes_from_passwd("root:x:0:0::/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n");
    assert_eq!(
        rule.patterns(&homes),
        [
            PathPattern::Exact("/root/.kube/config".into()),
            PathPattern::Exact("/home/u/.kube/config".into()),
            PathPattern::Exact("/root".into()),
            PathPattern::Exact("/home/u".into()),
        ]
    );
}

#[test]
fn load_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let e = Policy::load(&missing).unwrap_err();
    assert!(matches!(e, PolicyError::Io { .. }));
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read policy: ", missing.display())),
        "{e}"
    );
    let file = dir.path().join("policy.yaml");
    let mut f = std::fs::File::create(&file).unwrap();
    f.write_all(doc("  endpoints:\n    - { name: x, ips: [10.0.0.1], ports: [0] }\n").as_bytes())
        .unwrap();
    let msg = Policy::load(&file).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!(
            "{}:7:43: spec.endpoints[0].ports[0]: port \"0\"",
            file.display()
        )),
        "{msg}"
    );
}

#[test]
fn secrets_rule_defaults_to_audit_and_its_allow_list_compiles_to_exemptions() {
    let c = Policy::from_yaml(&doc(""), "p.yaml").unwrap().compile();
    assert_eq!(c.secrets.action, Some(Action::Audit));
    let c = Policy::from_yaml(
        &doc(
            "  secrets:\n    taint: kill\n    allow:\n      - { name: npm, hosts: [registry.npmjs.org], ports: [443] }\n      - { name: lan, cidrs: [192.168.0.0/16] }\n",
        ),
        "p.yaml",
    )
    .unwrap()
    .compile();
    assert_eq!(
        (c.secrets.action, c.secrets.mode),
        (Some(Action::Kill), Mode::Enforce)
    );
    assert_eq!(c.secrets.allow, ["npm", "lan"]);
    let allow: Vec<&CompiledEndpointRule> = c
        .endpoints
        .iter()
        .filter(|r| r.action == Action::Allow)
        .collect();
    assert_eq!(allow.len(), 2);
    assert_eq!(allow[0].id, FIRST_SECRETS_ALLOW_ID);
    assert_eq!(allow[0].hosts, ["registry.npmjs.org"]);
    assert_eq!(allow[0].ports, [(443, 443)]);
    assert!(
        c.summary()
            .contains("secrets: an agent tree that read a secret: kill enforce except to npm")
    );
    // An allow-list entry without destinations, or named like a rule, is an error; `allow`
    // is no action for a policy's own rules.
    let msg = err("  secrets:\n    allow:\n      - { name: x, ports: [443] }\n").to_string();
    assert!(msg.contains("allow-list entry matches nothing"), "{msg}");
    let msg = err("  endpoints:\n    - { name: x, ips: [10.0.0.1], action: allow }\n").to_string();
    assert!(msg.contains("unknown variant `allow`"), "{msg}");
    let msg = err("  endpoints:\n    - { name: x, ips: [10.0.0.1] }\n  secrets:\n    allow: [{ name: x, ips: [10.0.0.2] }]\n").to_string();
    assert!(msg.contains("duplicate"), "{msg}");
}

#[test]
fn host_lists_expand_and_unknown_ones_are_named() {
    let c = Policy::from_yaml(
        &doc("  endpoints:\n    - { name: cp, hosts: [\"@control-planes\", example.com] }\n"),
        "p.yaml",
    )
    .unwrap()
    .compile();
    let hosts = &c.endpoints[0].hosts;
    assert_eq!(hosts.len(), hostlists::CONTROL_PLANES.len() + 1);
    assert!(hosts.iter().any(|h| h == "backboard.railway.app"));
    assert_eq!(hosts.last().unwrap(), "example.com");
    let msg = err("  endpoints:\n    - { name: cp, hosts: [\"@control-plane\"] }\n").to_string();
    assert!(
        msg.contains("unknown host list \"@control-plane\" (known: @control-planes)"),
        "{msg}"
    );
}

#[test]
fn ask_and_hold_are_for_endpoints_and_the_hold_timeout_is_bounded() {
    let c = Policy::from_yaml(
        &doc("  endpoints:\n    - { name: db, ips: [10.0.0.1], action: hold }\n  hold: { timeout: 90s, then: thaw }\n"),
        "p.yaml",
    )
    .unwrap()
    .compile();
    assert_eq!(c.endpoints[0].action, Action::Hold);
    assert_eq!(c.hold.timeout, std::time::Duration::from_secs(90));
    assert_eq!(c.hold.then, HoldThen::Thaw);
    assert_eq!(
        Policy::from_yaml(&doc(""), "p.yaml")
            .unwrap()
            .compile()
            .hold,
        Hold::default()
    );
    for action in [Action::Ask, Action::Hold] {
        let c = Policy::from_yaml(
            &doc(&format!(
                "  paths:\n    - {{ name: p, paths: [/srv], access: [write], action: {action} }}\n"
            )),
            "p.yaml",
        )
        .unwrap()
        .compile();
        assert_eq!(c.paths[0].action, action);
    }
    let msg = err("  hold: { timeout: 2d }\n").to_string();
    assert!(msg.contains("out of range"), "{msg}");
    let msg = err("  hold: { timeout: soon }\n").to_string();
    assert!(msg.contains("not a duration"), "{msg}");
    let msg = err("  approvers: { users: [alice], team: [x] }\n").to_string();
    assert!(msg.contains("unknown field `team`"), "{msg}");
}

#[test]
fn protected_socket_files_are_kept_where_their_rules_name_them() {
    let p = Policy::from_yaml(
        &doc("  endpoints:\n    - { name: rt, unix: [/run/x.sock, \"@abstract\"], action: deny }\n    \
              - { name: seen, unix: [/run/audited.sock], action: audit }\n    \
              - { name: tried, unix: [/run/tried.sock], action: deny, mode: audit }\n"),
        "p.yaml",
    )
    .unwrap();
    let c = p.compile();
    let files = c
        .paths
        .iter()
        .find(|r| r.name == compile::SOCKET_FILES_RULE)
        .expect("the socket-files rule");
    let paths: Vec<&str> = files.paths.iter().map(PathSpec::as_str).collect();
    // The built-in executors' sockets (systemd, D-Bus) and the policy's refusing, enforced,
    // non-abstract one; never an audited rule's.
    assert!(paths.contains(&"/run/x.sock"), "{paths:?}");
    assert!(paths.contains(&"/run/systemd/private"), "{paths:?}");
    assert!(
        !paths
            .iter()
            .any(|p| p.contains("audited") || p.contains("tried") || p.starts_with('@')),
        "{paths:?}"
    );
    assert_eq!(files.access, WRITE | DELETE);
    assert_eq!((files.action, files.mode), (Action::Deny, Mode::Enforce));
}
