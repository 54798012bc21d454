//! Webhooks (`spec.notify.webhook`): a human hears of a request when it opens and when it is
//! decided. Deliveries wait in a bounded queue, one at a time, each retried with doubling
//! waits; what could not be queued or delivered is counted and shown in `guard status`, with
//! the last error. A signed delivery carries `X-Guard-Timestamp: SECONDS` and
//! `X-Guard-Signature-256: sha256=HEX`, the HMAC-SHA256 of `SECONDS.BODY` under the key in
//! `secretFile` (the timestamp inside the MAC lets a receiver refuse replays).
//!
//! Documents hold what a request shows in `guard requests` (agent, process, rule,
//! destination, state): no command line, file content or secret.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::policy::{Webhook, WebhookFormat, webhook_target};

/// `guard status`: the webhook and how its deliveries went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyStatus {
    pub url: String,
    pub format: String,
    pub signed: bool,
    pub delivered: u64,
    /// Given up after every retry.
    pub failed: u64,
    /// Not queued: the queue was full.
    pub dropped: u64,
    /// Waiting or being delivered.
    pub pending: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Stats {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    pending: AtomicU64,
    last_error: Mutex<Option<String>>,
}

struct Target {
    url: String,
    host: String,
    port: u16,
    path: String,
    key: Option<Vec<u8>>,
    timeout: Duration,
    retries: u8,
}

/// A running webhook: its queue and its counters. Dropping it ends its delivery task once
/// the queue is empty.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Bytes>,
    stats: Arc<Stats>,
    format: WebhookFormat,
    url: String,
    signed: bool,
}

impl Notifier {
    /// Start delivering to `w`. Errors name what is wrong (the URL, the key file).
    pub fn start(w: &Webhook) -> Result<Self, String> {
        let (host, port, path) = webhook_target(&w.url)?;
        let key = match &w.secret_file {
            None => None,
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| format!("secretFile {}: {e}", file.display()))?;
                let key = text.lines().next().unwrap_or("").trim().as_bytes().to_vec();
                if key.is_empty() {
                    return Err(format!("secretFile {}: the key is empty", file.display()));
                }
                Some(key)
            }
        };
        let (tx, rx) = mpsc::channel(usize::from(w.queue).max(1));
        let stats = Arc::new(Stats::default());
        let target = Target {
            url: w.url.clone(),
            host,
            port,
            path,
            key,
            timeout: w.timeout,
            retries: w.retries,
        };
        let signed = target.key.is_some();
        tokio::spawn(deliver_all(target, rx, stats.clone()));
        Ok(Self {
            tx,
            stats,
            format: w.format,
            url: w.url.clone(),
            signed,
        })
    }

    /// Queue `doc` (guard's JSON format) or `text` (the chat format); a full queue drops it.
    pub fn send(&self, doc: &serde_json::Value, text: &str) {
        let body = match self.format {
            WebhookFormat::Json => doc.to_string(),
            WebhookFormat::Slack => serde_json::json!({ "text": text }).to_string(),
        };
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(Bytes::from(body)).is_err() {
            self.stats.pending.fetch_sub(1, Ordering::Relaxed);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(url = %self.url, "webhook queue full: a notification was dropped");
        }
    }

    pub fn status(&self) -> NotifyStatus {
        let s = &self.stats;
        NotifyStatus {
            url: self.url.clone(),
            format: match self.format {
                WebhookFormat::Json => "json",
                WebhookFormat::Slack => "slack",
            }
            .into(),
            signed: self.signed,
            delivered: s.delivered.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            pending: s.pending.load(Ordering::Relaxed),
            last_error: s.last_error.lock().expect("stats lock").clone(),
        }
    }
}

async fn deliver_all(target: Target, mut rx: mpsc::Receiver<Bytes>, stats: Arc<Stats>) {
    while let Some(body) = rx.recv().await {
        let mut wait = Duration::from_secs(1);
        let mut attempt = 0;
        let outcome = loop {
            let result = tokio::time::timeout(target.timeout, deliver(&target, body.clone()))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", target.timeout)));
            match result {
                Ok(()) => break Ok(()),
                Err(e) if attempt >= target.retries => break Err(e),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        };
        stats.pending.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let e = format!("{}: {e} (after {} attempts)", target.url, attempt + 1);
                tracing::warn!(error = %e, "webhook delivery failed");
                *stats.last_error.lock().expect("stats lock") = Some(e);
            }
        }
    }
}

/// One POST; a 2xx answer is delivered.
async fn deliver(t: &Target, body: Bytes) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(conn);
    let mut req = http::Request::post(t.path.as_str())
        .header(http::header::HOST, authority(t))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("guard/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(key) = &t.key {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        req = req.header("X-Guard-Timestamp", &ts).header(
            "X-Guard-Signature-256",
            format!("sha256={}", sign(key, &ts, &body)),
        );
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", resp.status()))
    }
}

fn authority(t: &Target) -> String {
    let host = if t.host.contains(':') {
        format!("[{}]", t.host)
    } else {
        t.host.clone()
    };
    if t.port == 80 {
        host
    } else {
        format!("{host}:{}", t.port)
    }
}

/// Lower-case hex of HMAC-SHA256(key, `TIMESTAMP.BODY`).
pub fn sign(key: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2 (key "Jefe"), then the same data split as guard splits it.
        let whole = {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").unwrap();
            mac.update(b"what do ya want for nothing?");
            mac.finalize().into_bytes()
        };
        let hex: String = whole.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(sign(b"Jefe", "what do ya want", b" for nothing?"), {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").unwrap();
            mac.update(b"what do ya want. for nothing?");
            mac.finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        });
    }

    #[test]
    fn only_http_urls_are_taken() {
        assert_eq!(
            webhook_target("http://127.0.0.1:8080/hook?x=1").unwrap(),
            ("127.0.0.1".into(), 8080, "/hook?x=1".into())
        );
        assert_eq!(webhook_target("http://relay/").unwrap().1, 80);
        assert!(
            webhook_target("https://hooks.slack.com/x")
                .unwrap_err()
                .contains("TLS")
        );
        assert!(webhook_target("ftp://x/").is_err());
        assert!(webhook_target("not a url").is_err());
    }
}
