use std::{io::Write as _, time::Duration};

use super::*;
use crate::events::{EventLog, LogConfig, ProcessInfo};

fn ev(kind: &str, agent: &str, rule: Option<&str>, action: Option<&str>, time: &str) -> Event {
    Event {
        schema: 1,
        time: time.into(),
        node: "n".into(),
        kind: kind.into(),
        agent: agent.into(),
        rule: rule.map(Into::into),
        action: action.map(Into::into),
        result: action.map(|a| format!("{a}ed")),
        process: Some(ProcessInfo {
            pid: 42,
            comm: "curl".into(),
            ..ProcessInfo::default()
        }),
        ..Event::default()
    }
}

fn sample() -> Vec<Event> {
    vec![
        ev(
            "tagged_exec",
            "claude-code",
            None,
            None,
            "2026-01-01T10:00:00Z",
        ),
        ev(
            "net_connect",
            "claude-code",
            Some("prod-db"),
            Some("deny"),
            "2026-01-01T10:01:00Z",
        ),
        ev(
            "net_connect",
            "aider",
            Some("prod-db"),
            Some("audit"),
            "2026-01-01T10:02:00Z",
        ),
        ev(
            "file_open",
            "aider",
            Some("credentials"),
            Some("deny"),
            "2026-01-01T10:03:00Z",
        ),
    ]
}

fn t(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap()
}

#[test]
fn filters_by_every_field_and_time() {
    let events = sample();
    let count = |f: Filter| events.iter().filter(|e| f.matches(e)).count();
    // Decisions by default; the exec line on request.
    assert_eq!(count(Filter::default()), 3);
    let all = || Filter {
        view: Shown::All,
        ..Filter::default()
    };
    assert_eq!(count(all()), 4);
    assert_eq!(
        count(Filter {
            view: Shown::Commands,
            ..Filter::default()
        }),
        4
    );
    let deny = || Filter {
        action: Some("deny".into()),
        ..Filter::default()
    };
    assert_eq!(count(deny()), 2);
    assert_eq!(
        count(Filter {
            agent: Some("aider".into()),
            ..deny()
        }),
        1
    );
    assert_eq!(
        count(Filter {
            rule: Some("prod-db".into()),
            ..Filter::default()
        }),
        2
    );
    assert_eq!(
        count(Filter {
            kind: Some("tagged_exec".into()),
            ..Filter::default()
        }),
        1
    );
    // A family: `net` is every net_* kind; a prefix that is not a family matches nothing.
    let kind = |k: &str| Filter {
        kind: Some(k.into()),
        ..Filter::default()
    };
    assert_eq!(count(kind("net")), 2);
    assert_eq!(count(kind("ne")), 0);
    assert_eq!(count(kind("secret")), 0);
    assert_eq!(
        count(Filter {
            since: Some(t("2026-01-01T10:01:30Z")),
            ..all()
        }),
        2
    );
    assert_eq!(
        count(Filter {
            since: Some(t("2026-01-01T10:01:00Z")),
            ..all()
        }),
        3,
        "the cutoff is inclusive"
    );
}

#[test]
fn lifecycle_lines_show_only_when_asked_for() {
    let fork = ev("tagged_fork", "aider", None, None, "2026-01-01T10:00:00Z");
    let shown = |view| {
        Filter {
            view,
            ..Filter::default()
        }
        .matches(&fork)
    };
    assert!(!shown(Shown::Decisions) && !shown(Shown::Commands) && shown(Shown::All));
    let lost = ev("events_lost", "", None, None, "2026-01-01T10:00:00Z");
    assert!(
        Filter::default().matches(&lost),
        "lost events are never hidden"
    );
}

#[test]
fn summarises_by_agent_rule_and_action() {
    let mut b = SummaryBuilder::default();
    for e in sample() {
        b.add(&e);
    }
    let s = b.finish();
    assert_eq!(s.total, 4);
    assert_eq!(s.by_agent["aider"], 2);
    assert_eq!(s.by_rule["prod-db"], 2);
    assert_eq!(s.by_rule["-"], 1);
    assert_eq!(s.by_action["deny"], 2);
    assert_eq!(s.by_kind["net_connect"], 2);
    assert_eq!(s.rows.len(), 4);
    let text = crate::events::table::summary(&s, false);
    assert!(text.contains("prod-db"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("total") && l.ends_with('4')),
        "{text}"
    );
}

#[test]
fn the_summary_lists_the_secrets_each_agent_read() {
    let read = |root: u32, file: &str| Event {
        secrets: vec![crate::events::schema::SecretFound {
            detector: "github-token".into(),
            fingerprint: "fp:00112233aabbccdd".into(),
            line: 3,
        }],
        object: Some(crate::events::Object {
            path: Some(file.into()),
            ..Default::default()
        }),
        root: Some(crate::events::schema::RootRef {
            pid: root,
            start_ns: 1,
            ..Default::default()
        }),
        ..ev(
            "secret_read",
            "claude-code",
            Some("guard:secrets"),
            Some("audit"),
            "2026-01-01T10:04:00Z",
        )
    };
    let mut b = SummaryBuilder::default();
    for e in [
        read(7, "/p/notes.txt"),
        read(8, "/p/notes.txt"),
        read(8, "/p/old.txt"),
    ] {
        b.add(&e);
    }
    let s = b.finish();
    assert_eq!(s.secrets.len(), 2);
    assert_eq!(
        (
            s.secrets[0].file.as_str(),
            s.secrets[0].reads,
            s.secrets[0].trees
        ),
        ("/p/notes.txt", 2, 2)
    );
    let text = crate::events::table::summary(&s, false);
    assert!(text.contains("claude-code    github-token"), "{text}");
    assert!(!text.contains("line"), "{text}");
}

fn write_log(path: &Path, config: LogConfig, events: &[Event]) {
    let mut log = EventLog::open(path, config, false).unwrap();
    for e in events {
        log.write(e).unwrap();
    }
}

fn run_to_string(path: &Path, args: &EventsArgs) -> String {
    let mut out = Vec::new();
    run(path, args, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn reads_rotated_files_oldest_first_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let events: Vec<Event> = (0..30)
        .map(|i| {
            let mut e = ev("tagged_fork", "a", None, None, "2026-01-01T10:00:00Z");
            e.exit_code = Some(i);
            e
        })
        .collect();
    let len = serde_json::to_vec(&events[0]).unwrap().len() as u64 + 1;
    write_log(
        &path,
        LogConfig {
            max_bytes: len * 7,
            files: 10,
        },
        &events,
    );
    assert!(log_files(&path).len() >= 4);
    let args = EventsArgs {
        json: true,
        filter: Filter {
            view: Shown::All,
            ..Filter::default()
        },
        ..EventsArgs::default()
    };
    let out = run_to_string(&path, &args);
    let codes: Vec<i32> = out
        .lines()
        .map(|l| serde_json::from_str::<Event>(l).unwrap().exit_code.unwrap())
        .collect();
    assert_eq!(codes, (0..30).collect::<Vec<_>>());
}

#[test]
fn says_so_when_there_are_no_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let out = run_to_string(&path, &EventsArgs::default());
    assert!(out.starts_with("no events: "), "{out}");
    assert!(out.contains("does not exist yet"), "{out}");
    write_log(&path, LogConfig::default(), &sample());
    let args = EventsArgs {
        filter: Filter {
            action: Some("kill".into()),
            ..Filter::default()
        },
        ..EventsArgs::default()
    };
    let out = run_to_string(&path, &args);
    assert!(
        out.starts_with("no events matching action kill in "),
        "{out}"
    );
    let args = EventsArgs {
        summary: true,
        filter: Filter {
            since: Some(EventsArgs::since(Duration::from_secs(60))),
            ..Filter::default()
        },
        ..EventsArgs::default()
    };
    assert!(run_to_string(&path, &args).starts_with("no events matching since "));
    // JSON output of nothing is nothing (a valid empty stream).
    let args = EventsArgs {
        json: true,
        filter: Filter {
            action: Some("kill".into()),
            ..Filter::default()
        },
        ..EventsArgs::default()
    };
    assert_eq!(run_to_string(&path, &args), "");
}

#[test]
fn table_is_aligned_and_plain_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    write_log(&path, LogConfig::default(), &sample());
    let every = || EventsArgs {
        filter: Filter {
            view: Shown::All,
            ..Filter::default()
        },
        ..EventsArgs::default()
    };
    let out = run_to_string(&path, &every());
    assert!(!out.contains('\x1b'), "no colour off a terminal");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[0].starts_with("TIME"));
    let col = lines[0].find("AGENT").unwrap();
    for l in &lines[1..] {
        assert_eq!(&l[col - 2..col], "  ", "columns aligned:\n{out}");
    }
    let colored = EventsArgs {
        color: true,
        ..every()
    };
    assert!(run_to_string(&path, &colored).contains("\x1b[31m"));
}

#[test]
fn follower_survives_rotation_and_partial_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut f = Follower::new(&path);
    assert!(f.poll().unwrap().is_empty(), "no file yet");
    let mut live = std::fs::File::create(&path).unwrap();
    live.write_all(b"one\ntw").unwrap();
    assert_eq!(f.poll().unwrap(), ["one"]);
    live.write_all(b"o\nthree\n").unwrap();
    // Rotation: the old file gets one more line after the rename, then a new file appears.
    std::fs::rename(&path, dir.path().join("events.jsonl.1")).unwrap();
    live.write_all(b"four\n").unwrap();
    let mut new = std::fs::File::create(&path).unwrap();
    new.write_all(b"five\n").unwrap();
    assert_eq!(f.poll().unwrap(), ["two", "three", "four", "five"]);
    new.write_all(b"six\n").unwrap();
    assert_eq!(f.poll().unwrap(), ["six"]);
    assert!(f.poll().unwrap().is_empty());

    // Several rotations between two polls: every file is read, oldest first.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.jsonl");
    let line_len = serde_json::to_vec(&ev("k", "a", None, None, "t"))
        .unwrap()
        .len() as u64
        + 1;
    let config = LogConfig {
        max_bytes: line_len * 2,
        files: 20,
    };
    let mut f = Follower::new(&path);
    let mut log = EventLog::open(&path, config, false).unwrap();
    let mut e = ev("k", "a", None, None, "t");
    e.exit_code = Some(0);
    log.write(&e).unwrap();
    assert_eq!(f.poll().unwrap().len(), 1);
    for i in 1..15 {
        e.exit_code = Some(i);
        log.write(&e).unwrap();
    }
    let codes: Vec<i32> = f
        .poll()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str::<Event>(l).unwrap().exit_code.unwrap())
        .collect();
    assert_eq!(codes, (1..15).collect::<Vec<_>>());
}

#[test]
fn follower_waits_out_the_gap_of_a_rotation_in_progress() {
    // The drained file is .3; the rotation has renamed .2 to .3's old place and is about to
    // rename .1 to .2: for a moment there is no .2. The follower must wait for it, not skip
    // the file (or jump to the live one).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let n = |i| crate::events::log::numbered(&path, i);
    std::fs::write(n(3), "drained\n").unwrap();
    std::fs::write(n(1), "next\n").unwrap();
    std::fs::write(&path, "live\n").unwrap();
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    let (drained, next) = (ino(&n(3)), ino(&n(1)));
    let f = Follower::new(&path);
    let rotation = {
        let (one, two, live) = (n(1), n(2), path.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::rename(&one, &two).unwrap();
            std::fs::rename(&live, &one).unwrap();
            std::fs::write(&live, "").unwrap();
        })
    };
    let (found, want) = f.next_path(drained);
    rotation.join().unwrap();
    assert_eq!((found, want), (n(2), Some(next)));
}
