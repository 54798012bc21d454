//! The security team's review page, served by the daemon (`guard daemon --ui-addr`).
//!
//! Server-rendered HTML (askama templates compiled into the binary) with one small vendored
//! script for live updates over server-sent events: the page works with no network beyond
//! the daemon itself. Pages: the timeline of decisions (filters, search, export as JSON
//! lines), an event's detail (offender, ancestry as a tree, rule and mechanism), the agent
//! trees running now (freeze, thaw, kill), the pending requests (approve, deny), each rule's
//! hits by hour, and the secrets found in what agents read. What the pages show is held in
//! [`store`], read from the event log.
//!
//! Who gets in (see [`auth`]): a holder of the viewer or the approver token, each a file the
//! daemon writes at start, readable by root and one group. TCP carries no peer credentials,
//! so tagged processes are kept off the daemon's ports by a built-in connect rule
//! (`guard:self/ports`) and off the token files by an internal read rule.
//!
//! The page acts through [`Backend`], which the daemon implements: this module sees no
//! daemon state of its own.

mod act;
mod auth;
mod store;
mod summary;
mod timeline;

use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin, sync::Arc};

use axum::{
    Router, middleware,
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use http::StatusCode;

pub use auth::{Role, TokenFiles, Tokens};

use crate::{requests::Scope, tags::TaggedProc};

/// A boxed future, so that [`Backend`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the page asks of the daemon. Every action is authorised by the page (role and CSRF)
/// before it is called; the daemon carries it out as the CLI's would, recorded as root's
/// with the reason "on the review page".
pub trait Backend: Send + Sync + 'static {
    /// The event log the timeline reads and follows.
    fn event_log(&self) -> PathBuf;
    /// The enforcement tier in force (`bpf-lsm` or `fallback`).
    fn tier(&self) -> String;
    /// How rule `rule` is enforced on this tier, in words (`guard status`'s view of it).
    fn mechanism(&self, rule: &str) -> String;
    /// Every tagged process now (`guard ps`).
    fn processes(&self) -> Vec<TaggedProc>;
    /// The requests of `ask` rules, open and approved (`guard requests`).
    fn requests(&self) -> Result<Vec<crate::requests::Request>, String>;
    /// `guard approve ID --for SECS --scope SCOPE`: a line saying what was done.
    fn approve(
        &self,
        id: u64,
        for_secs: u64,
        scope: Scope,
        reason: String,
    ) -> Result<String, String>;
    /// `guard deny ID`.
    fn deny(&self, id: u64, reason: String) -> Result<String, String>;
    /// `guard freeze|thaw|kill ROOT`: `action` is one of those words.
    fn tree(&self, action: &'static str, root: String) -> BoxFuture<'_, Result<String, String>>;
}

#[derive(Debug, thiserror::Error)]
#[error("review page {addr}: {source}")]
pub struct UiError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// What every handler shares.
#[derive(Clone)]
struct App {
    backend: Arc<dyn Backend>,
    sessions: Arc<auth::Sessions>,
    tokens: Arc<Tokens>,
    store: Arc<store::Store>,
    /// The port the page is served on (the Host header must name it).
    port: u16,
}

/// Bind `addr`: an error naming it if it cannot be bound.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, UiError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| UiError { addr, source })
}

/// The page, ready to serve: on its TCP listener, and on connections of the API socket
/// that speak HTTP ([`Page::serve_unix`]).
#[derive(Clone)]
pub struct Page {
    app: App,
}

impl Page {
    /// The page's state; its store starts reading the event log.
    pub fn new(tokens: Tokens, backend: Arc<dyn Backend>, port: u16) -> Self {
        let store = Arc::new(store::Store::default());
        store::follow(store.clone(), backend.event_log());
        Self {
            app: App {
                backend,
                sessions: Arc::new(auth::Sessions::default()),
                tokens: Arc::new(tokens),
                store,
                port,
            },
        }
    }

    /// Serve the page on `listener`, on a task.
    pub fn serve_tcp(&self, listener: tokio::net::TcpListener) {
        let router = router(self.app.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "review page stopped");
            }
        });
    }

    /// Serve one connection of the API socket that speaks HTTP. Its peer's credentials give
    /// the role (`peer`: the daemon's verdict, or why the peer may not see the page); no
    /// token is asked for.
    pub async fn serve_unix(&self, stream: tokio::net::UnixStream, peer: Result<Role, String>) {
        let router = router(self.app.clone()).layer(axum::Extension(auth::Peer(peer)));
        let service = hyper_util::service::TowerToHyperService::new(router);
        let io = hyper_util::rt::TokioIo::new(stream);
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "review page connection on the API socket");
        }
    }
}

/// Whether the first bytes a client sent on the API socket are an HTTP request (the API
/// itself speaks JSON lines, which start with `{`).
pub fn is_http(first: &[u8]) -> bool {
    [&b"GET "[..], b"POST ", b"HEAD "]
        .iter()
        .any(|m| first.starts_with(m))
}

fn router(app: App) -> Router {
    let signed_in = Router::new()
        .route("/", get(timeline::page))
        .route("/live", get(timeline::live))
        .route("/export.jsonl", get(timeline::export))
        .route("/event/{id}", get(timeline::detail))
        .route("/agents", get(act::agents))
        .route("/agents/{root}/{action}", post(act::tree))
        .route("/requests", get(act::requests))
        .route("/rules", get(summary::rules))
        .route("/secrets", get(summary::secrets))
        .route("/requests/{id}/approve", post(act::approve))
        .route("/requests/{id}/deny", post(act::deny))
        .route("/logout", post(auth::logout))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_session,
        ));
    Router::new()
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/static/app.js", get(script))
        .route("/static/app.css", get(style))
        .merge(signed_in)
        .layer(middleware::from_fn_with_state(
            app.clone(),
            auth::check_origin,
        ))
        .layer(middleware::from_fn(security_headers))
        .with_state(app)
}

const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

async fn script() -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE,
    )
        .into_response()
}

/// Every answer: no framing by other sites, no sniffing, nothing loaded from elsewhere.
async fn security_headers(req: axum::extract::Request, next: middleware::Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut http::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, http::HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    );
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "same-origin");
    set(h, "cache-control", "no-store");
    res
}

/// A template rendered as a page, or a plain error if rendering failed.
fn render(t: &impl askama::Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering: {e}")).into_response(),
    }
}

/// A refusal the browser shows as text.
fn refuse(code: StatusCode, why: impl Into<String>) -> Response {
    (code, why.into()).into_response()
}
