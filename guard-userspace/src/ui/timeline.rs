//! The timeline of decisions (filters, search, live rows), an event's detail, and the
//! export of the current filter as JSON lines. Everything is read from the event log: the
//! page shows what the log holds, as `guard events` does.

use std::{collections::BTreeSet, convert::Infallible, time::Duration};

use askama::Template;
use axum::{
    Extension,
    extract::{Path, Query, State},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use futures_util::stream::{self, Stream};
use http::{StatusCode, header};
use serde::Deserialize;
use time::OffsetDateTime;

use super::{App, auth::Session, refuse, render};
use crate::events::{
    Event,
    query::{self, Filter, Follower, Shown},
};

/// Rows the timeline shows at most (newest first); the export has them all.
const SHOWN: usize = 500;
/// How often the live stream looks at the log.
const LIVE_POLL: Duration = Duration::from_millis(250);

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
    fn filter(&self) -> Filter {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Filter {
            action: opt(&self.action),
            agent: opt(&self.agent),
            rule: opt(&self.rule),
            kind: opt(&self.kind),
            since: humantime::parse_duration(&self.since)
                .ok()
                .map(|d| OffsetDateTime::now_utc() - d),
            view: Shown::Decisions,
        }
    }

    fn matches(&self, filter: &Filter, e: &Event, line: &str) -> bool {
        let line = line.to_lowercase();
        filter.matches(e)
            && self
                .q
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

/// An event's id: a digest of its line (stable for as long as the log holds it).
fn id_of(line: &str) -> String {
    blake3::hash(line.as_bytes()).to_hex()[..16].to_owned()
}

/// Each event of the log with its line, oldest first.
fn history(app: &App) -> Vec<(Event, String)> {
    let (events, _) = query::read_all(&app.backend.event_log()).unwrap_or_default();
    events
        .into_iter()
        .map(|e| {
            let line = serde_json::to_string(&e).unwrap_or_default();
            (e, line)
        })
        .collect()
}

#[derive(Template)]
#[template(path = "timeline.html")]
struct TimelinePage {
    nav: Nav,
    f: Filters,
    query: String,
    rows: Vec<Row>,
    matched: usize,
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
    let all = history(&app);
    let filter = f.filter();
    let mut sets: [BTreeSet<String>; 4] = Default::default();
    let decisions = Filter::default();
    for (e, _) in all.iter().filter(|(e, _)| decisions.matches(e)) {
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
    let matching: Vec<&(Event, String)> = all
        .iter()
        .filter(|(e, line)| f.matches(&filter, e, line))
        .collect();
    let rows = matching
        .iter()
        .rev()
        .take(SHOWN)
        .map(|(e, line)| Row::of(e, id_of(line)))
        .collect();
    let [agents, rules, actions, kinds] = sets.map(|s| s.into_iter().collect());
    render(&TimelinePage {
        nav: Nav::new(&app, &session, "timeline"),
        query: f.query(),
        f,
        rows,
        matched: matching.len(),
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
pub(super) async fn live(
    State(app): State<App>,
    Query(f): Query<Filters>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let follower = Follower::at_end(&app.backend.event_log())
        .unwrap_or_else(|_| Follower::new(&app.backend.event_log()));
    let filter = f.filter();
    let stream = stream::unfold(
        (follower, f, filter, std::collections::VecDeque::new()),
        |(mut follower, f, filter, mut pending)| async move {
            loop {
                if let Some(ev) = pending.pop_front() {
                    return Some((Ok(ev), (follower, f, filter, pending)));
                }
                tokio::time::sleep(LIVE_POLL).await;
                for line in follower.poll().unwrap_or_default() {
                    let Ok(e) = serde_json::from_str::<Event>(&line) else {
                        continue;
                    };
                    let line = serde_json::to_string(&e).unwrap_or_default();
                    if !f.matches(&filter, &e, &line) {
                        continue;
                    }
                    let row = Row::of(&e, id_of(&line));
                    if let Ok(html) = (RowFragment { row: &row }).render() {
                        pending.push_back(
                            SseEvent::default()
                                .event("row")
                                .data(html.replace('\n', "")),
                        );
                    }
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The current filter's events, oldest first, as JSON lines.
pub(super) async fn export(State(app): State<App>, Query(f): Query<Filters>) -> Response {
    let filter = f.filter();
    let mut body = String::new();
    for (e, line) in history(&app) {
        if f.matches(&filter, &e, &line) {
            body.push_str(&line);
            body.push('\n');
        }
    }
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
    json: String,
}

pub(super) async fn detail(
    State(app): State<App>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let Some((e, line)) = history(&app).into_iter().find(|(_, l)| id_of(l) == id) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no event {id} in the log (rotated away?)"),
        );
    };
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
    let json = serde_json::to_string_pretty(&e).unwrap_or(line.clone());
    render(&EventPage {
        nav: Nav::new(&app, &session, "timeline"),
        row: Row::of(&e, id),
        mechanism,
        chain,
        offender,
        complete: e.ancestry_complete.unwrap_or(false),
        json,
    })
}
