//! The Docker-compatible API of docker or podman (`podman system service`), over its unix
//! socket: `GET /containers/ID/json` gives the name, the image and the labels. HTTP/1.0, so
//! that the reply is one body that ends when the connection does.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::Deserialize;

use super::ContainerInfo;

/// How long one request may take: lookups run where tagging waits for them.
const TIMEOUT: Duration = Duration::from_millis(500);
/// A container's inspect document is a few KiB; anything past this is not one.
const MAX_REPLY: u64 = 4 << 20;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    #[serde(default)]
    name: String,
    #[serde(default)]
    config: InspectConfig,
    /// podman's compat reply also carries the image as given.
    #[serde(default)]
    image_name: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

/// `GET path` on the API at `socket`: the status code and the body.
fn get(socket: &Path, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut reply = Vec::new();
    s.take(MAX_REPLY).read_to_end(&mut reply)?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    match resp.parse(&reply) {
        Ok(httparse::Status::Complete(head)) => {
            Ok((resp.code.unwrap_or(0), reply[head..].to_vec()))
        }
        Ok(httparse::Status::Partial) => Err(bad("a partial HTTP reply")),
        Err(e) => Err(bad(&e.to_string())),
    }
}

/// Add what the API at `socket` says of `info.id`; whether it knew the container.
pub fn fill(socket: &Path, info: &mut ContainerInfo) -> bool {
    let Ok((200, body)) = get(socket, &format!("/containers/{}/json", info.id)) else {
        return false;
    };
    let Ok(doc) = serde_json::from_slice::<Inspect>(&body) else {
        return false;
    };
    let name = doc.name.trim_start_matches('/');
    if !name.is_empty() {
        info.name.get_or_insert_with(|| name.to_owned());
    }
    if let Some(image) = doc
        .config
        .image
        .or(doc.image_name)
        .filter(|i| !i.is_empty())
    {
        info.image.get_or_insert(image);
    }
    for (k, v) in doc.config.labels.unwrap_or_default() {
        info.labels.entry(k).or_insert(v);
    }
    info.sources.push(format!("api:{}", socket.display()));
    true
}

/// Whether an API answers at `socket` (`GET /_ping`).
pub fn answers(socket: &Path) -> bool {
    matches!(get(socket, "/_ping"), Ok((200, _)))
}
