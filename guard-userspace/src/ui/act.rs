//! Pages that act: the agent trees running now (freeze, thaw, kill) and the requests of
//! `ask` rules (approve, deny). Every action is a POST from a form carrying the session's
//! CSRF token, and only an approver's session may act.

use std::collections::BTreeMap;

use askama::Template;
use axum::{
    Extension, Form,
    extract::{Path, State},
    response::{IntoResponse, Redirect, Response},
};
use http::StatusCode;
use serde::Deserialize;

use super::{
    App,
    auth::{Role, Session, csrf_ok},
    refuse, render,
    timeline::Nav,
};
use crate::requests::Scope;

/// One agent tree, as the agents page lists it.
struct Tree {
    root: u32,
    agent: String,
    command: String,
    recognised: String,
    processes: usize,
    held: bool,
}

#[derive(Template)]
#[template(path = "agents.html")]
struct AgentsPage {
    nav: Nav,
    approver: bool,
    trees: Vec<Tree>,
    flash: String,
}

#[derive(Deserialize, Default)]
pub(super) struct Flash {
    #[serde(default)]
    done: String,
}

pub(super) async fn agents(
    State(app): State<App>,
    Extension(session): Extension<Session>,
    axum::extract::Query(flash): axum::extract::Query<Flash>,
) -> Response {
    let mut trees: BTreeMap<(u32, u64), Tree> = BTreeMap::new();
    for p in app.backend.processes() {
        let t = trees
            .entry((p.root_pid, p.root_start_ns))
            .or_insert_with(|| Tree {
                root: p.root_pid,
                agent: p.agent.clone(),
                command: String::new(),
                recognised: String::new(),
                processes: 0,
                held: false,
            });
        t.processes += 1;
        t.held |= p.held;
        if p.pid == p.root_pid {
            t.command = p.argv.join(" ");
            t.recognised = p.recognised.clone();
        }
    }
    render(&AgentsPage {
        nav: Nav::new(&app, &session, "agents"),
        approver: session.role == Role::Approver,
        trees: trees.into_values().collect(),
        flash: flash.done,
    })
}

#[derive(Deserialize)]
pub(super) struct ActForm {
    csrf: String,
    #[serde(default)]
    for_secs: Option<u64>,
    #[serde(default)]
    scope: Option<Scope>,
    #[serde(default)]
    reason: String,
}

/// An approver's session and a matching CSRF token: `None`, else the refusal.
fn refused(session: &Session, form: &ActForm) -> Option<Response> {
    if !csrf_ok(session, &form.csrf) {
        return Some(refuse(StatusCode::FORBIDDEN, "refused: bad CSRF token"));
    }
    if session.role != Role::Approver {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "refused: a viewer may not act (sign in with the approver token)",
        ));
    }
    None
}

/// Back to `page`, saying what was done (or why not).
fn back(page: &str, outcome: Result<String, String>) -> Response {
    let said = match outcome {
        Ok(done) => done,
        Err(why) => format!("not done: {why}"),
    };
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("done", &said)
        .finish();
    Redirect::to(&format!("{page}?{q}")).into_response()
}

pub(super) async fn tree(
    State(app): State<App>,
    Extension(session): Extension<Session>,
    Path((root, action)): Path<(String, String)>,
    Form(form): Form<ActForm>,
) -> Response {
    if let Some(r) = refused(&session, &form) {
        return r;
    }
    let action = match action.as_str() {
        "freeze" => "freeze",
        "thaw" => "thaw",
        "kill" => "kill",
        other => return refuse(StatusCode::NOT_FOUND, format!("no action {other:?}")),
    };
    let outcome = app.backend.tree(action, root).await;
    back("/agents", outcome)
}

/// One request, as the requests page lists it.
struct RequestRow {
    id: u64,
    opened: String,
    agent: String,
    who: String,
    command: String,
    rule: String,
    destination: String,
    /// Empty while open; else when the approval ends, and its scope.
    until: String,
    scope: &'static str,
}

impl RequestRow {
    fn of(r: &crate::requests::Request) -> Self {
        let (until, scope) = match &r.state {
            crate::requests::State::Open => (String::new(), ""),
            crate::requests::State::Approved { until, scope, .. } => (until.clone(), scope.name()),
        };
        Self {
            id: r.id,
            opened: r.opened.clone(),
            agent: r.agent.clone(),
            who: format!("{} [{}]", r.comm, r.pid),
            command: r.argv.join(" "),
            rule: r.rule.clone(),
            destination: r.destination.clone(),
            until,
            scope,
        }
    }
}

#[derive(Template)]
#[template(path = "requests.html")]
struct RequestsPage {
    nav: Nav,
    approver: bool,
    open: Vec<RequestRow>,
    approved: Vec<RequestRow>,
    error: String,
    flash: String,
}

pub(super) async fn requests(
    State(app): State<App>,
    Extension(session): Extension<Session>,
    axum::extract::Query(flash): axum::extract::Query<Flash>,
) -> Response {
    let (all, error) = match app.backend.requests() {
        Ok(all) => (all, String::new()),
        Err(e) => (Vec::new(), e),
    };
    let (open, approved): (Vec<_>, Vec<_>) = all
        .iter()
        .map(RequestRow::of)
        .partition(|r| r.until.is_empty());
    render(&RequestsPage {
        nav: Nav::new(&app, &session, "requests"),
        approver: session.role == Role::Approver,
        open,
        approved,
        error,
        flash: flash.done,
    })
}

/// An approval lasts this long unless the form says otherwise.
const DEFAULT_FOR_SECS: u64 = 15 * 60;

pub(super) async fn approve(
    State(app): State<App>,
    Extension(session): Extension<Session>,
    Path(id): Path<u64>,
    Form(form): Form<ActForm>,
) -> Response {
    if let Some(r) = refused(&session, &form) {
        return r;
    }
    let outcome = app.backend.approve(
        id,
        form.for_secs.unwrap_or(DEFAULT_FOR_SECS),
        form.scope.unwrap_or_default(),
        form.reason.clone(),
    );
    back("/requests", outcome)
}

pub(super) async fn deny(
    State(app): State<App>,
    Extension(session): Extension<Session>,
    Path(id): Path<u64>,
    Form(form): Form<ActForm>,
) -> Response {
    if let Some(r) = refused(&session, &form) {
        return r;
    }
    let outcome = app.backend.deny(id, form.reason.clone());
    back("/requests", outcome)
}
