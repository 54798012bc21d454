//! Human output of `guard events`: an aligned table, colour only on a terminal.

use std::fmt::Write as _;

use super::{Event, KIND_EVENTS_LOST, query::Summary};

const HEADERS: [&str; 8] = [
    "TIME", "AGENT", "KIND", "ACTION", "RULE", "PID", "PROCESS", "DETAIL",
];
/// Column widths in follow mode, where rows are printed as they come.
const FOLLOW_WIDTHS: [usize; 7] = [20, 12, 12, 14, 14, 7, 40];
const PROCESS_MAX: usize = 60;
const DETAIL_MAX: usize = 80;

const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn time(e: &Event) -> String {
    // 2026-11-21T12:00:01.123456789Z → 2026-11-21 12:00:01Z
    match e.time.get(..19) {
        Some(t) => format!("{}Z", t.replacen('T', " ", 1)),
        None => e.time.clone(),
    }
}

fn process(e: &Event) -> String {
    let Some(p) = &e.process else {
        return String::new();
    };
    let cmd = if p.argv.is_empty() {
        p.exe.clone().unwrap_or_else(|| p.comm.clone())
    } else {
        p.argv.join(" ")
    };
    cut(&cmd, PROCESS_MAX)
}

/// Lineage up to the agent root (`*`), then what is above it.
fn lineage(e: &Event) -> String {
    let mut parts = Vec::new();
    for a in &e.ancestry {
        let name = if a.comm.is_empty() {
            a.exe
                .as_deref()
                .and_then(|x| x.rsplit('/').next())
                .unwrap_or("?")
        } else {
            &a.comm
        };
        parts.push(format!(
            "{name}({}){}",
            a.pid,
            if a.agent_root { "*" } else { "" }
        ));
        if a.agent_root {
            break;
        }
    }
    parts.join(" < ")
}

fn detail(e: &Event) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &e.recognised {
        parts.push(match &r.matched {
            Some(m) => format!("recognised by {} {m}", r.by),
            None => format!("recognised by {}", r.by),
        });
    }
    if let Some(d) = &e.destination {
        parts.push(d.short());
    }
    if let Some(o) = &e.object {
        parts.push(o.short());
    }
    if let Some(code) = e.exit_code {
        parts.push(format!("exit {code}"));
    }
    if let Some(sig) = e.signal {
        parts.push(format!("killed by signal {sig}"));
    }
    if let Some(lost) = e.lost {
        parts.push(format!(
            "{lost} event(s) lost in the kernel (total {})",
            e.dropped_total.unwrap_or(0)
        ));
    }
    let lineage = lineage(e);
    if !lineage.is_empty() {
        parts.push(format!("by {lineage}"));
    }
    cut(&parts.join("  "), DETAIL_MAX)
}

fn action(e: &Event) -> String {
    match (&e.action, &e.result) {
        (Some(a), Some(r)) if a != r => format!("{a}/{r}"),
        (Some(a), _) => a.clone(),
        (None, _) => "-".into(),
    }
}

fn cells(e: &Event) -> [String; 8] {
    [
        time(e),
        if e.agent.is_empty() {
            "-".into()
        } else {
            e.agent.clone()
        },
        e.kind.clone(),
        action(e),
        e.rule.clone().unwrap_or_else(|| "-".into()),
        e.process
            .as_ref()
            .map_or_else(|| "-".into(), |p| p.pid.to_string()),
        process(e),
        detail(e),
    ]
}

fn colour(e: &Event) -> Option<&'static str> {
    if e.kind == KIND_EVENTS_LOST {
        return Some(RED);
    }
    match e.action.as_deref() {
        Some("deny" | "kill" | "kill-tree") => Some(RED),
        Some("audit") => Some(YELLOW),
        Some(_) => None,
        None => Some(DIM),
    }
}

fn row(out: &mut String, cells: &[String], widths: &[usize], color: Option<&str>) {
    let mut line = String::new();
    for (i, c) in cells.iter().enumerate() {
        if i + 1 == cells.len() {
            line.push_str(c);
        } else {
            let _ = write!(line, "{c:<w$}  ", w = widths[i]);
        }
    }
    let line = line.trim_end();
    match color {
        Some(c) => {
            let _ = writeln!(out, "{c}{line}{RESET}");
        }
        None => {
            let _ = writeln!(out, "{line}");
        }
    }
}

/// Events as an aligned table.
pub fn events(events: &[&Event], color: bool) -> String {
    let rows: Vec<[String; 8]> = events.iter().map(|e| cells(e)).collect();
    let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let headers: Vec<String> = HEADERS.iter().map(|h| h.to_string()).collect();
    row(&mut out, &headers, &widths, color.then_some(BOLD));
    for (r, e) in rows.iter().zip(events) {
        row(&mut out, r, &widths, if color { colour(e) } else { None });
    }
    out
}

pub fn follow_header(color: bool) -> String {
    let mut out = String::new();
    let headers: Vec<String> = HEADERS.iter().map(|h| h.to_string()).collect();
    row(&mut out, &headers, &FOLLOW_WIDTHS, color.then_some(BOLD));
    out
}

/// One event in follow mode (fixed widths).
pub fn follow_row(e: &Event, color: bool) -> String {
    let mut out = String::new();
    row(
        &mut out,
        &cells(e),
        &FOLLOW_WIDTHS,
        if color { colour(e) } else { None },
    );
    out
}

/// `--summary`: counts by agent, rule and action.
pub fn summary(s: &Summary, color: bool) -> String {
    let mut out = String::new();
    let (b, r) = if color { (BOLD, RESET) } else { ("", "") };
    let widths = [
        s.rows
            .iter()
            .map(|x| x.agent.len())
            .max()
            .unwrap_or(0)
            .max(5),
        s.rows
            .iter()
            .map(|x| x.rule.len())
            .max()
            .unwrap_or(0)
            .max(4),
        s.rows
            .iter()
            .map(|x| x.action.len())
            .max()
            .unwrap_or(0)
            .max(6),
    ];
    let _ = writeln!(
        out,
        "{b}{:<w0$}  {:<w1$}  {:<w2$}  COUNT{r}",
        "AGENT",
        "RULE",
        "ACTION",
        w0 = widths[0],
        w1 = widths[1],
        w2 = widths[2]
    );
    for x in &s.rows {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            x.agent,
            x.rule,
            x.action,
            x.count,
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    for (title, map) in [
        ("by agent", &s.by_agent),
        ("by rule", &s.by_rule),
        ("by action", &s.by_action),
        ("by kind", &s.by_kind),
    ] {
        let list: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "{b}{title:<10}{r} {}", list.join(", "));
    }
    let _ = writeln!(out, "{b}total{r}      {}", s.total);
    if !s.secrets.is_empty() {
        let _ = writeln!(
            out,
            "\n{b}secrets read, by agent{r} (detector, fingerprint, file: reads / agent trees)"
        );
        for x in &s.secrets {
            let _ = writeln!(
                out,
                "  {:<14} {:<28} {:<19} {}  {} / {}",
                x.agent, x.detector, x.fingerprint, x.file, x.reads, x.trees
            );
        }
    }
    out
}
