//! The review page end to end, in headless Chromium from Debian's packages, driven over
//! WebDriver (chromedriver). The browser runs in a network namespace with loopback alone: it
//! reaches the daemon's page only through a socat bridge of this test, so the page loads and
//! updates with no network at all.
//!
//! Shown: a tagged process's denial appears on the open timeline without a reload; filters
//! narrow the list; an event's detail shows its ancestry; an approver approves a pending
//! request on the page and the agent's retry goes through; a viewer cannot approve; requests
//! without a session, or with a bad CSRF token, are refused; a tagged process can neither
//! reach the page's port nor read the tokens, while untagged ones can. Screenshots of the
//! main views are written to `target/review-page/`.

#[allow(dead_code, reason = "shared with the network tests")]
#[path = "network_support/mod.rs"]
mod network_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator};
use guard_tests::{Daemon, Proc, free_ports, netns::NetNs, output, output_text, wait_for};
use network_support::{CLIENT, Listener, Net};
use serde_json::{Value, json};

fn policy(db: &str, api: &str) -> String {
    format!(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: review }}\n\
         spec:\n  agents:\n    - {{ name: claude-code, executables: [claude] }}\n\
         \x20 endpoints:\n    - {{ name: prod-db, ips: [{db}], ports: [5432], action: deny }}\n\
         \x20   - {{ name: prod-api, ips: [{api}], ports: [443], action: ask }}\n"
    )
}

/// A recognised agent (a shell named `claude`) that runs each command written to `cmdN`
/// when `goN` appears, its stdout and stderr to `outN`.
fn agent(dir: &Path) -> Proc {
    let claude = dir.join("claude");
    std::fs::copy("/bin/bash", &claude).unwrap();
    let d = dir.display();
    let script = format!(
        "i=1; while true; do until [ -e {d}/go$i ]; do sleep 0.05; done; \
         bash {d}/cmd$i > {d}/out$i.tmp 2>&1; echo \"rc=$?\" >> {d}/out$i.tmp; \
         mv {d}/out$i.tmp {d}/out$i; i=$((i+1)); done"
    );
    let mut c = Command::new(&claude);
    c.env("CLIENT", CLIENT).args(["-c", &script]);
    Proc::spawn(c)
}

/// Whether a step's output has `line` (its stderr, where a reason line may land first, is
/// in the same file).
fn printed(out: &str, line: &str) -> bool {
    out.lines().any(|l| l == line)
}

/// Step `i` of the agent: run `cmd` in its tree, and what it printed (ending `rc=N`).
fn agent_runs(dir: &Path, i: u32, cmd: &str) -> String {
    std::fs::write(dir.join(format!("cmd{i}")), cmd).unwrap();
    std::fs::write(dir.join(format!("go{i}")), "").unwrap();
    wait_for(&format!("agent step {i}"), Duration::from_secs(20), || {
        std::fs::read_to_string(dir.join(format!("out{i}"))).ok()
    })
}

/// `socat` from `listen` to `connect` (socat address specs), in `ns` when given.
fn bridge(ns: Option<&NetNs>, listen: &str, connect: &str) -> Proc {
    let mut c = match ns {
        Some(ns) => ns.command("socat"),
        None => Command::new("socat"),
    };
    c.args([listen, connect]);
    Proc::spawn(c)
}

/// A raw HTTP/1.1 request to the page from this (untagged) test: status line and body.
fn http(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/review-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    let path = screenshots_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.display());
}

/// Poll `f` every 200 ms for up to `secs`.
async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn texts(c: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in c.find_all(Locator::Css(css)).await.unwrap_or_default() {
        out.push(e.text().await.unwrap_or_default());
    }
    out
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.delete_all_cookies().await.unwrap();
    c.goto(&format!("{base}/")).await.unwrap();
    assert!(
        c.current_url().await.unwrap().path() == "/login",
        "an unsigned browser is sent to the sign-in page"
    );
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(token.trim())
        .await
        .unwrap();
    c.find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the timeline after signing in", 10, || async {
        (c.current_url().await.ok()?.path() == "/").then_some(())
    })
    .await;
}

/// POST a form from the page's own origin with the browser's session: the status code.
async fn post_from_page(c: &Client, path: &str, body: &str) -> u64 {
    let script = "const [path, body, done] = arguments; \
        fetch(path, {method: 'POST', body: body, \
          headers: {'content-type': 'application/x-www-form-urlencoded'}}) \
        .then(r => done(r.status), e => done(String(e)));";
    let v = c
        .execute_async(script, vec![json!(path), json!(body)])
        .await
        .unwrap();
    v.as_u64().unwrap_or_else(|| panic!("fetch failed: {v}"))
}

#[test]
fn the_review_page_shows_decisions_live_and_approvers_answer_requests() {
    for tool in [
        "/usr/bin/chromium",
        "/usr/bin/chromedriver",
        "/usr/bin/socat",
    ] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: `cargo xtask test` installs chromium, chromium-driver and socat"
        );
    }
    let net = Net::new();
    let _listener = Listener::start(
        &net,
        &[format!("tcp:5432:{}", net.a), format!("tcp:443:{}", net.b)],
    );
    let [port, wd_port] = free_ports::<2>();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_with_args(Some(&policy(&net.a, &net.b)), &["--ui-addr", &addr]);
    let tokens = d.socket.parent().unwrap().join("ui");
    let approver = std::fs::read_to_string(tokens.join("approver.token")).unwrap();
    let viewer = std::fs::read_to_string(tokens.join("viewer.token")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _agent = agent(dir.path());

    // The browser's world: loopback alone; the page and the WebDriver port are bridged
    // through unix sockets of this test.
    let ns = NetNs::loopback_only();
    let mut links = Command::new("ip");
    links.args(["-n", &ns.name, "-o", "link"]);
    let links = output(links);
    assert_eq!(
        output_text(&links)
            .lines()
            .filter(|l| l.contains(": "))
            .count(),
        1,
        "the browser's namespace has loopback alone: {}",
        output_text(&links)
    );
    let ui_sock = dir.path().join("ui.sock");
    let wd_sock = dir.path().join("wd.sock");
    let _in_ns = bridge(
        Some(&ns),
        &format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"),
        &format!("UNIX-CONNECT:{}", ui_sock.display()),
    );
    let _to_page = bridge(
        None,
        &format!("UNIX-LISTEN:{},fork", ui_sock.display()),
        &format!("TCP:{addr}"),
    );
    let mut driver = ns.command("chromedriver");
    driver.args(["--port=9515", "--log-level=WARNING"]);
    let _driver = Proc::spawn(driver);
    let _wd_out = bridge(
        Some(&ns),
        &format!("UNIX-LISTEN:{},fork", wd_sock.display()),
        "TCP:127.0.0.1:9515",
    );
    let _wd_in = bridge(
        None,
        &format!("TCP-LISTEN:{wd_port},bind=127.0.0.1,fork,reuseaddr"),
        &format!("UNIX-CONNECT:{}", wd_sock.display()),
    );

    // A tagged process cannot reach the page's port, nor read the tokens; untagged ones can.
    let out = agent_runs(
        dir.path(),
        1,
        &format!("curl -s -m 3 -o /dev/null -w '%{{http_code}}' http://{addr}/login"),
    );
    assert!(
        out.ends_with("rc=7\n"),
        "the agent's connect to the page is refused: {out}"
    );
    assert!(
        http(
            port,
            &format!("GET /login HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        )
        .starts_with("HTTP/1.0 200")
    );
    let out = agent_runs(
        dir.path(),
        2,
        &format!("cat {}", tokens.join("viewer.token").display()),
    );
    assert!(
        out.contains("Operation not permitted") && !out.contains(viewer.trim()),
        "the agent cannot read a token: {out}"
    );
    let ports = wait_for(
        "the page's port refusal event",
        Duration::from_secs(10),
        || {
            d.events()
                .into_iter()
                .find(|e| e["rule"] == "guard:self/ports" && e["result"] == "denied")
        },
    );
    assert!(ports["ancestry"].as_array().is_some_and(|a| !a.is_empty()));

    // No session, no page; no session, no action; a foreign Host is refused.
    let anon = http(port, &format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n"));
    assert!(
        anon.starts_with("HTTP/1.0 303") && anon.contains("location: /login"),
        "{anon}"
    );
    let anon = http(
        port,
        &format!(
            "POST /requests/1/approve HTTP/1.0\r\nHost: {addr}\r\nOrigin: http://{addr}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 6\r\n\r\ncsrf=x"
        ),
    );
    assert!(anon.starts_with("HTTP/1.0 401"), "{anon}");
    let rebound = http(
        port,
        &format!("GET /login HTTP/1.0\r\nHost: attacker.example:{port}\r\n\r\n"),
    );
    assert!(rebound.starts_with("HTTP/1.0 421"), "{rebound}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let data = dir.path().join("chromium");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--window-size=1280,900",
                         format!("--user-data-dir={}", data.display())],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let c = eventually("chromedriver", 30, || {
            let caps = caps.clone();
            let connector = connector.clone();
            async move {
                ClientBuilder::new(connector)
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{wd_port}"))
                    .await
                    .ok()
            }
        })
        .await;
        let base = format!("http://{addr}");
        let targets = Targets {
            db: net.a.clone(),
            api: net.b.clone(),
        };
        review(&c, &base, &d, dir.path(), (&approver, &viewer), &targets).await;
        c.close().await.unwrap();
    });
}

/// The addresses of the policy's two endpoints.
struct Targets {
    db: String,
    api: String,
}

async fn review(c: &Client, base: &str, d: &Daemon, dir: &Path, tokens: (&str, &str), t: &Targets) {
    let (approver, viewer) = tokens;
    sign_in(c, base, approver).await;
    assert_eq!(texts(c, "#role").await, ["approver"]);
    // A marker that a reload would wipe.
    c.execute("window.__stayed = true;", vec![]).await.unwrap();
    eventually("the live stream to open", 10, || async {
        let live = c.find(Locator::Id("live")).await.ok()?;
        (live.attr("class").await.ok()?? == "on").then_some(())
    })
    .await;

    // Live: the agent's denied connect, and its asked one, appear without a reload. The
    // denied client lingers, so that its reason line has a live process to go to.
    let out = agent_runs(
        dir,
        3,
        &format!("python3 -c \"$CLIENT\" tcp {} 5432 0.5", t.db),
    );
    assert!(printed(&out, "err 1"), "prod-db denies: {out}");
    let out = agent_runs(dir, 4, &format!("python3 -c \"$CLIENT\" tcp {} 443", t.api));
    assert!(
        printed(&out, "err 1"),
        "prod-api asks, denying at once: {out}"
    );
    let rows = eventually("both decisions on the open page", 15, || async {
        let rows = texts(c, "#timeline tbody tr").await;
        let has = |rule: &str| rows.iter().any(|r| r.contains(rule));
        (has("prod-db") && has("prod-api")).then_some(rows)
    })
    .await;
    let stayed = c
        .execute("return window.__stayed === true;", vec![])
        .await
        .unwrap();
    assert_eq!(stayed, Value::Bool(true), "rows arrived without a reload");
    screenshot(c, "timeline").await;

    // Nothing the page loaded came from anywhere but the page.
    let loaded = c
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name);",
            vec![],
        )
        .await
        .unwrap();
    for url in loaded.as_array().unwrap() {
        assert!(
            url.as_str().unwrap().starts_with(base),
            "loaded from elsewhere: {url}"
        );
    }

    // Filters narrow the list (the filter choices are what the log held at load).
    c.goto(&format!("{base}/")).await.unwrap();
    c.find(Locator::Id("f-rule"))
        .await
        .unwrap()
        .select_by_value("prod-db")
        .await
        .unwrap();
    c.find(Locator::Id("apply"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let filtered = eventually("the filtered timeline", 10, || async {
        let url = c.current_url().await.ok()?;
        url.query()?.contains("rule=prod-db").then_some(())?;
        Some(texts(c, "#timeline tbody tr").await)
    })
    .await;
    assert!(
        !filtered.is_empty() && filtered.len() < rows.len(),
        "{filtered:?} of {rows:?}"
    );
    assert!(
        filtered.iter().all(|r| r.contains("prod-db")),
        "{filtered:?}"
    );
    screenshot(c, "timeline-filtered").await;

    // An event's detail: the offender in its ancestry, the rule and its mechanism.
    c.find(Locator::Css("#timeline tbody tr a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the event page", 10, || async {
        c.current_url()
            .await
            .ok()?
            .path()
            .starts_with("/event/")
            .then_some(())
    })
    .await;
    assert_eq!(texts(c, "#rule").await, ["prod-db"]);
    assert!(!texts(c, "#mechanism").await[0].is_empty());
    let tree = texts(c, "#ancestry").await.join("\n");
    assert!(
        tree.contains("claude") && tree.contains("python3"),
        "{tree}"
    );
    let said = texts(c, "#said").await.join("\n");
    assert!(
        said.contains("guard: connect to") && said.contains("prod-db"),
        "the reason line the agent saw: {said:?}; the agent's output: {:?}; the event: {}",
        std::fs::read_to_string(dir.join("out3")),
        texts(c, "pre.json").await.join("")
    );
    screenshot(c, "event").await;

    // Each rule's hits by hour.
    c.goto(&format!("{base}/rules")).await.unwrap();
    let hits = texts(c, "#rules tbody tr").await;
    assert!(hits.iter().any(|r| r.starts_with("prod-db")), "{hits:?}");
    screenshot(c, "rules").await;

    // The pending request: a bad CSRF token is refused, the approver's click approves it.
    let id = pending_request(d);
    c.goto(&format!("{base}/requests")).await.unwrap();
    screenshot(c, "requests").await;
    let bad = post_from_page(c, &format!("/requests/{id}/approve"), "csrf=bad").await;
    assert_eq!(bad, 403, "a bad CSRF token is refused");
    assert_eq!(pending_request(d), id, "still open");
    c.find(Locator::Id(&format!("approve-{id}")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let flash = eventually("the approval's answer", 10, || async {
        texts(c, "#flash").await.into_iter().next()
    })
    .await;
    assert!(flash.contains("approved"), "{flash}");
    let out = agent_runs(dir, 5, &format!("python3 -c \"$CLIENT\" tcp {} 443", t.api));
    assert!(
        printed(&out, "ok"),
        "the agent's retry goes through once approved: {out}"
    );

    // The current filter as JSON lines: the whole log, only what matches.
    let script = "const [done] = arguments; fetch('/export.jsonl?rule=prod-db') \
        .then(r => r.text()).then(done, e => done(String(e)));";
    let exported = c.execute_async(script, vec![]).await.unwrap();
    let lines: Vec<Value> = exported
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        !lines.is_empty() && lines.iter().all(|e| e["rule"] == "prod-db"),
        "{exported}"
    );

    // Agents now: an approver freezes the tree and thaws it again.
    c.goto(&format!("{base}/agents")).await.unwrap();
    let trees = texts(c, "#agents tbody tr").await;
    assert!(trees.iter().any(|r| r.contains("claude-code")), "{trees:?}");
    screenshot(c, "agents").await;
    let root = trees_root(d);
    for (action, done) in [("freeze", "froze"), ("thaw", "thawed")] {
        let button = format!("form[action='/agents/{root}/{action}'] button");
        c.find(Locator::Css(&button))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let flash = eventually(&format!("the {action}'s answer"), 15, || async {
            texts(c, "#flash")
                .await
                .into_iter()
                .find(|f| f.contains(done))
        })
        .await;
        let held = d.status_json().unwrap()["held_trees"].as_u64();
        assert_eq!(held, Some(u64::from(action == "freeze")), "{flash}");
    }
    let out = agent_runs(dir, 6, "echo still-running");
    assert!(printed(&out, "still-running"), "thawed: {out}");

    // A narrow window: the timeline still reads.
    c.set_window_size(420, 900).await.unwrap();
    c.goto(&format!("{base}/")).await.unwrap();
    screenshot(c, "timeline-narrow").await;
    c.set_window_size(1280, 900).await.unwrap();

    // A viewer sees, and cannot act.
    sign_in(c, base, viewer).await;
    assert_eq!(texts(c, "#role").await, ["viewer"]);
    c.goto(&format!("{base}/requests")).await.unwrap();
    assert!(
        c.find_all(Locator::Css("form.approve"))
            .await
            .unwrap()
            .is_empty()
    );
    let csrf = c
        .find(Locator::Css("header input[name=csrf]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    let tried = post_from_page(c, &format!("/requests/{id}/deny"), &format!("csrf={csrf}")).await;
    assert_eq!(tried, 403, "a viewer may not answer requests");
    let root = trees_root(d);
    let tried = post_from_page(c, &format!("/agents/{root}/kill"), &format!("csrf={csrf}")).await;
    assert_eq!(tried, 403, "a viewer may not kill a tree");
    assert!(
        d.status_json().unwrap()["tagged_processes"]
            .as_u64()
            .unwrap()
            > 0
    );
}

/// The id of the one open request.
fn pending_request(d: &Daemon) -> u64 {
    let out = d.cli(&["requests", "-o", "json"]);
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let open: Vec<u64> = list
        .iter()
        .filter(|r| r["state"] == "open")
        .filter_map(|r| r["id"].as_u64())
        .collect();
    assert_eq!(open.len(), 1, "one open request: {list:?}");
    open[0]
}

/// The root pid of the one agent tree.
fn trees_root(d: &Daemon) -> u64 {
    let out = d.cli(&["ps", "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v["processes"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| v.as_array().cloned().unwrap_or_default());
    list.iter()
        .find_map(|p| p["root_pid"].as_u64())
        .expect("a tagged tree")
}

/// `curl` on the API socket as `uid:gid` (or as this test, root): status code and body.
fn curl_unix(d: &Daemon, who: Option<(u32, u32)>, args: &[&str]) -> (String, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(&d.socket)
        .args(args);
    if let Some((uid, gid)) = who {
        use std::os::unix::process::CommandExt;
        // std clears the supplementary groups when root sets a uid.
        c.uid(uid).gid(gid);
    }
    let out = output(c);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (code.to_owned(), body.to_owned())
}

#[test]
fn on_the_api_socket_the_page_goes_by_peer_credentials() {
    let d = Daemon::start_with_args(
        Some(&policy("10.255.0.1", "10.255.0.2")),
        &["--ui", "--ui-viewers", "65534"],
    );
    let dir = tempfile::tempdir().unwrap();
    // The socket's directory must be reachable for the other users.
    for p in [d.socket.parent().unwrap(), dir.path()] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let _agent = agent(dir.path());

    let (code, body) = curl_unix(&d, None, &["http://localhost/"]);
    assert_eq!(code, "200", "root gets in by its credentials: {body}");
    assert!(body.contains(r#"<b id="role">approver"#), "root approves");
    let (code, body) = curl_unix(&d, Some((65534, 65534)), &["http://localhost/requests"]);
    assert_eq!(code, "200", "{body}");
    assert!(
        body.contains(r#"<b id="role">viewer"#),
        "the viewers' group views"
    );
    let (code, body) = curl_unix(&d, Some((65533, 65533)), &["http://localhost/"]);
    assert_eq!(code, "403", "anyone else is refused: {body}");
    assert!(body.contains("neither an approver"), "{body}");

    // A filter that cannot be read is said, and matches nothing (never everything).
    let (code, body) = curl_unix(&d, None, &["http://localhost/?since=banana"]);
    assert_eq!(code, "200", "{body}");
    assert!(
        body.contains(r#"id="filter-error""#) && body.contains(r#"<span id="matched">0<"#),
        "{body}"
    );
    let (code, body) = curl_unix(&d, None, &["http://localhost/export.jsonl?since=banana"]);
    assert_eq!(code, "400", "{body}");
    assert!(body.contains("since \"banana\""), "{body}");

    // Actions still need the session's CSRF token, and a page Origin.
    let post = [
        "-X",
        "POST",
        "-H",
        "Origin: http://localhost",
        "-d",
        "csrf=forged",
        "http://localhost/requests/1/deny",
    ];
    let (code, body) = curl_unix(&d, None, &post);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("CSRF"), "{body}");
    let (code, _) = curl_unix(
        &d,
        None,
        &["-H", "Host: attacker.example", "http://localhost/"],
    );
    assert_eq!(code, "421", "a foreign Host is refused");

    // A tagged process is refused, and the refusal is an event with its ancestry.
    let out = agent_runs(
        dir.path(),
        1,
        &format!(
            "curl -s -w ' %{{http_code}}' --unix-socket {} http://localhost/",
            d.socket.display()
        ),
    );
    assert!(
        out.contains("tagged process may not see") && out.contains(" 403"),
        "{out}"
    );
    let e = wait_for("the refusal event", Duration::from_secs(10), || {
        d.events().into_iter().find(|e| {
            e["kind"] == "self_protect" && e["object"]["operation"] == "api request the review page"
        })
    });
    assert!(
        e["ancestry"].as_array().is_some_and(|a| !a.is_empty()),
        "{e}"
    );
    // The JSON API on the same socket is unchanged.
    let status = d.cli(&["status"]);
    assert!(status.status.success(), "{}", output_text(&status));
}
