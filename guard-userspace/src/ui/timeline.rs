//! The timeline of decisions (filters, search, live rows), an event's detail, and the
//! export of the current filter as JSON lines. Everything is read from the event log: the
//! page shows what the log holds, as `guard events` does.

use std::{collections::BTreeSet, convert::Infallible, sync::Arc};

use askama::Template;
use axum::{
    Extension,
    extract::{Path, Query, State},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use futures_util::stream;
use http::{StatusCode, header};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::sync::broadcast::error::RecvError;

use super::{
    App,
    auth::Session,
    refuse, render,
    store::{self, Entry},
};
use crate::events::{
    Event,
    query::{Filter, Shown},
};

/// Rows the timeline shows at most (newest first); the export has them all.
const SHOWN: usize = 500;

/// The filters, as the page's form and its links carry them.
#[derive(Clone, Debug, Default, Deserialize)]
pub(super) struct Filters {
    #[serde(default)]
    agent: String,
    #[serde(default)]
    rule: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    kind: String,
    /// `15m`, `1h`, `24h`, … (empty: all the log holds).
    #[serde(default)]
    since: String,
    /// Words that must all appear in the event's line (any field).
    #[serde(default)]
    q: String,
}

impl Filters {
    /// The filter these ask for, or why `since` cannot be read.
    fn filter(&self) -> Result<Filter, String> {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let since = match self.since.trim() {
            "" => None,
            s => Some(
                humantime::parse_duration(s)
                    .map_err(|e| format!("since {s:?}: {e} (write 15m, 1h, 24h, 7d)"))?,
            ),
        };
        Ok(Filter {
            action: opt(&self.action),
            agent: opt(&self.agent),
            rule: opt(&self.rule),
            kind: opt(&self.kind),
            since: since.map(|d| OffsetDateTime::now_utc() - d),
            view: Shown::Decisions,
        })
    }

    fn matches(&self, filter: &Filter, e: &Event, line: &str) -> bool {
        if !filter.matches(e) {
            return false;
        }
        if self.q.trim().is_empty() {
            return true;
        }
        let line = line.to_lowercase();
        self.q
            .split_whitespace()
            .all(|w| line.contains(&w.to_lowercase()))
    }

    /// The query string of these filters, for links (live stream, export).
    fn query(&self) -> String {
        let pairs = [
            ("agent", &self.agent),
            ("rule", &self.rule),
            ("action", &self.action),
            ("kind", &self.kind),
            ("since", &self.since),
            ("q", &self.q),
        ];
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
            out.append_pair(k, v);
        }
        out.finish()
    }
}

/// One row of the timeline.
pub(super) struct Row {
    id: String,
    time: String,
    kind: String,
    agent: String,
    rule: String,
    action: String,
    result: String,
    who: String,
    target: String,
}

impl Row {
    fn of(e: &Event, id: String) -> Self {
        let target = e
            .destination
            .as_ref()
            .map(|d| d.short())
            .or_else(|| e.object.as_ref().map(|o| o.short()))
            .unwrap_or_default();
        Self {
            id,
            time: e.time.get(..19).unwrap_or(&e.time).replace('T', " "),
            kind: e.kind.clone(),
            agent: e.agent.clone(),
            rule: e.rule.clone().unwrap_or_default(),
            action: e.action.clone().unwrap_or_default(),
            result: e.result.clone().unwrap_or_default(),
            who: e
                .process
                .as_ref()
                .map(|p| format!("{} [{}]", p.comm, p.pid))
                .unwrap_or_default(),
            target,
        }
    }

    /// The class the row is styled by: what happened.
    fn tone(&self) -> &'static str {
        match self.result.as_str() {
            "killed" | "kill-failed" => "kill",
            "denied" | "held" | "asked" => "deny",
            "allowed" | "audited" => "audit",
            _ => "note",
        }
    }
}

#[derive(Template)]
#[template(path = "timeline.html")]
struct TimelinePage {
    nav: Nav,
    f: Filters,
    query: String,
    rows: Vec<Row>,
    matched: usize,
    held: usize,
    error: String,
    agents: Vec<String>,
    rules: Vec<String>,
    actions: Vec<String>,
    kinds: Vec<String>,
}

/// What the page header shows.
pub(super) struct Nav {
    pub page: &'static str,
    pub role: &'static str,
    pub csrf: String,
    pub tier: String,
}

impl Nav {
    pub(super) fn new(app: &App, session: &Session, page: &'static str) -> Self {
        Self {
            page,
            role: session.role.name(),
            csrf: session.csrf.clone(),
            tier: app.backend.tier(),
        }
    }
}

pub(super) async fn page(
    State(app): State<App>,
    Extension(session): Extension<Session>,
    Query(f): Query<Filters>,
) -> Response {
    let all = app.store.held();
    let (filter, error) = match f.filter() {
        Ok(filter) => (filter, String::new()),
        // Nothing matches a filter that cannot be read: never everything.
        Err(why) => (
            Filter {
                kind: Some(String::new()),
                ..Filter::default()
            },
            why,
        ),
    };
    let mut sets: [BTreeSet<String>; 4] = Default::default();
    for e in all.iter().map(|x| &x.event) {
        let fields = [
            Some(&e.agent),
            e.rule.as_ref(),
            e.action.as_ref(),
            Some(&e.kind),
        ];
        for (set, v) in sets.iter_mut().zip(fields) {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                set.insert(v.clone());
            }
        }
    }
    let matching: Vec<&Arc<Entry>> = all
        .iter()
        .filter(|x| f.matches(&filter, &x.event, &x.line))
        .collect();
    let rows = matching
        .iter()
        .rev()
        .take(SHOWN)
        .map(|x| Row::of(&x.event, x.id.clone()))
        .collect();
    let [agents, rules, actions, kinds] = sets.map(|s| s.into_iter().collect());
    render(&TimelinePage {
        nav: Nav::new(&app, &session, "timeline"),
        query: f.query(),
        f,
        rows,
        matched: matching.len(),
        held: store::HELD,
        error,
        agents,
        rules,
        actions,
        kinds,
    })
}

#[derive(Template)]
#[template(path = "row.html")]
struct RowFragment<'a> {
    row: &'a Row,
}

/// New matching rows as they are written, each as an SSE `row` event holding its HTML.
pub(super) async fn live(State(app): State<App>, Query(f): Query<Filters>) -> Response {
    let filter = match f.filter() {
        Ok(filter) => filter,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
    };
    let rx = app.store.subscribe();
    let stream = stream::unfold((rx, f, filter), |(mut rx, f, filter)| async move {
        loop {
            let entry = match rx.recv().await {
                Ok(entry) => entry,
                // A slow reader missed rows: they are on the page at its next load.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            };
            if !f.matches(&filter, &entry.event, &entry.line) {
                continue;
            }
            let row = Row::of(&entry.event, entry.id.clone());
            let Ok(html) = (RowFragment { row: &row }).render() else {
                continue;
            };
            let ev = SseEvent::default()
                .event("row")
                .data(html.replace('\n', ""));
            return Some((Ok::<_, Infallible>(ev), (rx, f, filter)));
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The current filter's events, oldest first, as JSON lines.
pub(super) async fn export(State(app): State<App>, Query(f): Query<Filters>) -> Response {
    let filter = match f.filter() {
        Ok(filter) => filter,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
    };
    let path = app.backend.event_log();
    let body = tokio::task::spawn_blocking(move || {
        let mut body = String::new();
        store::for_each_line(&path, u64::MAX, |line| {
            if let Ok(e) = serde_json::from_str::<Event>(line)
                && f.matches(&filter, &e, line)
            {
                body.push_str(line);
                body.push('\n');
            }
        });
        body
    })
    .await
    .unwrap_or_default();
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"guard-events.jsonl\"",
            ),
        ],
        body,
    )
        .into_response()
}

/// One ancestor line of the detail page's tree, outermost (init) first.
struct Node {
    pid: u32,
    comm: String,
    argv: String,
    root: bool,
    exited: bool,
}

#[derive(Template)]
#[template(path = "event.html")]
struct EventPage {
    nav: Nav,
    row: Row,
    mechanism: String,
    chain: Vec<Node>,
    offender: Node,
    complete: bool,
    /// The reason lines written for the offender (for this rule where one names it).
    said: Vec<String>,
    json: String,
}

pub(super) async fn detail(
    State(app): State<App>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let Some(entry) = app.store.find(&id) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!(
                "no event {id} among the newest {} decisions (the export has the whole log)",
                store::HELD
            ),
        );
    };
    let full = entry.full();
    let (e, line) = (&full, &entry.line);
    let mut chain: Vec<Node> = e
        .ancestry
        .iter()
        .map(|a| Node {
            pid: a.pid,
            comm: a.comm.clone(),
            argv: a.argv.join(" "),
            root: a.agent_root || e.root.as_ref().is_some_and(|r| r.pid == a.pid),
            exited: a.exited,
        })
        .collect();
    chain.reverse();
    let offender = e.process.as_ref().map_or(
        Node {
            pid: 0,
            comm: String::new(),
            argv: String::new(),
            root: false,
            exited: false,
        },
        |p| Node {
            pid: p.pid,
            comm: p.comm.clone(),
            argv: p.argv.join(" "),
            root: false,
            exited: false,
        },
    );
    let mechanism = e
        .rule
        .as_deref()
        .map(|r| app.backend.mechanism(r))
        .unwrap_or_default();
    let said = e.process.as_ref().map_or_else(Vec::new, |p| {
        let all = crate::respond::said::lines_for(p.pid, p.start_ns);
        let rule = e.rule.as_deref().unwrap_or_default();
        let named: Vec<String> = all
            .iter()
            .filter(|l| !rule.is_empty() && l.contains(rule))
            .cloned()
            .collect();
        if named.is_empty() { all } else { named }
    });
    let json = serde_json::to_string_pretty(e).unwrap_or_else(|_| line.clone());
    render(&EventPage {
        nav: Nav::new(&app, &session, "timeline"),
        row: Row::of(e, id),
        mechanism,
        chain,
        offender,
        complete: e.ancestry_complete.unwrap_or(false),
        said,
        json,
    })
}
