//! Who may use the review page, and how each request proves it.
//!
//! - **Tokens.** At start the daemon writes two random tokens, `viewer.token` and
//!   `approver.token`, each mode 0640, owned by root and by the group that may read it (none:
//!   root only). Whoever can read a file may sign in with its role. A restart makes new
//!   tokens and ends every session.
//! - **Sessions.** Signing in (POST `/login` with a token) sets an HttpOnly, SameSite=Strict
//!   cookie naming a random session; each session has its own CSRF token, which every form
//!   carries and every POST must match.
//! - **Host and Origin.** DNS rebinding: the Host header must be an IP address or
//!   `localhost`, with the page's port. A POST must carry an Origin equal to the page's own.

use std::{
    collections::HashMap,
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use askama::Template;
use axum::{
    Form,
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
};
use http::{HeaderMap, Method, StatusCode, header};
use serde::Deserialize;

use super::{App, refuse, render};

/// What a signed-in holder may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Read every page.
    Viewer,
    /// Also approve and deny requests, and freeze, thaw and kill agent trees.
    Approver,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Approver => "approver",
        }
    }
}

/// The two tokens in force.
pub struct Tokens {
    viewer: String,
    approver: String,
}

/// Where the tokens were written.
#[derive(Clone, Debug)]
pub struct TokenFiles {
    pub viewer: PathBuf,
    pub approver: PathBuf,
}

impl Tokens {
    /// New random tokens, written to `dir` (created 0755, root's): `viewer.token` readable by
    /// `viewers` (a gid), `approver.token` by `approvers`.
    pub fn create(
        dir: &Path,
        viewers: Option<u32>,
        approvers: Option<u32>,
    ) -> std::io::Result<(Self, TokenFiles)> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        let tokens = Self {
            viewer: random_hex(32),
            approver: random_hex(32),
        };
        let files = TokenFiles {
            viewer: dir.join("viewer.token"),
            approver: dir.join("approver.token"),
        };
        write_token(&files.viewer, &tokens.viewer, viewers)?;
        write_token(&files.approver, &tokens.approver, approvers)?;
        Ok((tokens, files))
    }

    /// Tokens given as they are (tests of this module).
    #[cfg(test)]
    pub fn fixed(viewer: &str, approver: &str) -> Self {
        Self {
            viewer: viewer.into(),
            approver: approver.into(),
        }
    }

    fn role_of(&self, presented: &str) -> Option<Role> {
        let presented = presented.trim();
        if same(presented, &self.approver) {
            Some(Role::Approver)
        } else if same(presented, &self.viewer) {
            Some(Role::Viewer)
        } else {
            None
        }
    }
}

/// Replace `path` with a new file holding `token`: created 0600 (never readable by others,
/// even for a moment), then given to `group` with 0640.
fn write_token(path: &Path, token: &str, group: Option<u32>) -> std::io::Result<()> {
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    if let Some(gid) = group {
        std::os::unix::fs::fchown(&f, None, Some(gid))?;
        f.set_permissions(fs::Permissions::from_mode(0o640))?;
    }
    f.sync_all()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the kernel's random source");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A signed-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    pub role: Role,
    pub csrf: String,
    expires: Instant,
}

/// Sessions by id; bounded (the oldest goes first).
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

/// How long a session lasts.
const SESSION_FOR: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once.
const MAX_SESSIONS: usize = 256;
const COOKIE: &str = "guard_session";

impl Sessions {
    fn open(&self, role: Role) -> String {
        let id = random_hex(32);
        let mut map = self.0.lock().expect("sessions lock");
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                role,
                csrf: random_hex(32),
                expires: now + SESSION_FOR,
            },
        );
        id
    }

    fn get(&self, id: &str) -> Option<Session> {
        let map = self.0.lock().expect("sessions lock");
        map.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    fn close(&self, id: &str) {
        self.0.lock().expect("sessions lock").remove(id);
    }
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_owned())
}

/// A connection of the API socket: the role its peer's credentials give, or why it has none.
#[derive(Clone, Debug)]
pub struct Peer(pub Result<Role, String>);

/// Whether a Host header value names this page: an IP literal or `localhost`, with the
/// page's port (`port`), or with any port or none (`None`: a connection of the API socket,
/// which a user may forward to a port of their own). Anything else, a DNS name that resolves
/// here, is refused.
fn host_ok(host: &str, port: Option<u16>) -> bool {
    let (name, p) = match host.rsplit_once(':') {
        Some((n, p)) if !p.ends_with(']') => (n, Some(p)),
        _ => (host, None),
    };
    match (port, p) {
        (Some(want), Some(p)) if p.parse::<u16>() == Ok(want) => {}
        (None, None) => {}
        (None, Some(p)) if p.parse::<u16>().is_ok() => {}
        _ => return false,
    }
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Every request: a Host that names this page; every POST: an Origin that is this page.
pub(super) async fn check_origin(State(app): State<App>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let peer = req.extensions().get::<Peer>().cloned();
    if let Some(Peer(Err(why))) = &peer {
        return refuse(StatusCode::FORBIDDEN, format!("refused: {why}"));
    }
    let port = if peer.is_some() { None } else { Some(app.port) };
    if !host_ok(&host, port) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!("refused: Host {host:?} is not this page (use an IP address or localhost)"),
        );
    }
    if req.method() == Method::POST {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if origin != format!("http://{host}") {
            return refuse(
                StatusCode::FORBIDDEN,
                format!("refused: Origin {origin:?} is not this page"),
            );
        }
    }
    next.run(req).await
}

/// Pages behind the sign-in: a live session, and on a POST its CSRF token (checked by each
/// action's form, see [`csrf_ok`]).
pub(super) async fn require_session(
    State(app): State<App>,
    mut req: Request,
    next: Next,
) -> Response {
    let session = session_id(req.headers()).and_then(|id| app.sessions.get(&id));
    // On the API socket the peer's credentials are the sign-in: a session of that role is
    // opened (its cookie carries the CSRF token's session), never one of another role.
    if let Some(Peer(Ok(role))) = req.extensions().get::<Peer>().cloned() {
        if let Some(s) = session.filter(|s| s.role == role) {
            req.extensions_mut().insert(s);
            return next.run(req).await;
        }
        let id = app.sessions.open(role);
        let Some(s) = app.sessions.get(&id) else {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "no session could be opened",
            );
        };
        req.extensions_mut().insert(s);
        let mut res = next.run(req).await;
        if let Ok(v) = http::HeaderValue::from_str(&session_cookie(&id)) {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
        return res;
    }
    let Some(session) = session else {
        return if req.method() == Method::GET {
            Redirect::to("/login").into_response()
        } else {
            refuse(StatusCode::UNAUTHORIZED, "refused: not signed in")
        };
    };
    req.extensions_mut().insert(session);
    next.run(req).await
}

fn session_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/")
}

/// Whether a form's CSRF token is the session's.
pub(super) fn csrf_ok(session: &Session, presented: &str) -> bool {
    same(presented, &session.csrf)
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
}

pub(super) async fn login_page() -> Response {
    render(&LoginPage { error: None })
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

/// A failed sign-in waits this long: guessing is slow.
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(500);

pub(super) async fn login(State(app): State<App>, Form(form): Form<LoginForm>) -> Response {
    let Some(role) = app.tokens.role_of(&form.token) else {
        tokio::time::sleep(FAILED_LOGIN_DELAY).await;
        tracing::warn!("review page: sign-in with a wrong token");
        let page = LoginPage {
            error: Some("That token is not a viewer's or an approver's token.".into()),
        };
        return (StatusCode::UNAUTHORIZED, render(&page)).into_response();
    };
    let id = app.sessions.open(role);
    tracing::info!(role = role.name(), "review page: signed in");
    (
        [(header::SET_COOKIE, session_cookie(&id))],
        Redirect::to("/"),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    csrf: String,
}

pub(super) async fn logout(
    State(app): State<App>,
    axum::Extension(session): axum::Extension<Session>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&session, &form.csrf) {
        return refuse(StatusCode::FORBIDDEN, "refused: bad CSRF token");
    }
    if let Some(id) = session_id(&headers) {
        app.sessions.close(&id);
    }
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_addresses_or_localhost_with_the_port() {
        assert!(host_ok("127.0.0.1:7682", Some(7682)));
        assert!(host_ok("localhost:7682", Some(7682)));
        assert!(host_ok("[::1]:7682", Some(7682)));
        assert!(!host_ok("127.0.0.1:80", Some(7682)));
        assert!(!host_ok("evil.example:7682", Some(7682)));
        assert!(!host_ok("127.0.0.1", Some(7682)));
        // The API socket: any port or none, still no names but localhost.
        assert!(host_ok("localhost", None));
        assert!(host_ok("localhost:9000", None));
        assert!(host_ok("[::1]", None));
        assert!(!host_ok("evil.example", None));
    }

    #[test]
    fn tokens_give_roles() {
        let t = Tokens::fixed("v", "a");
        assert_eq!(t.role_of("a\n"), Some(Role::Approver));
        assert_eq!(t.role_of("v"), Some(Role::Viewer));
        assert_eq!(t.role_of("x"), None);
        assert_eq!(t.role_of(""), None);
    }

    #[test]
    fn token_files_are_private_to_root_and_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let gid = nix::unistd::getgid().as_raw();
        let (t, files) = Tokens::create(dir.path(), Some(gid), None).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.viewer), 0o640);
        assert_eq!(mode(&files.approver), 0o600);
        let read = fs::read_to_string(&files.approver).unwrap();
        assert_eq!(t.role_of(&read), Some(Role::Approver));
    }
}
