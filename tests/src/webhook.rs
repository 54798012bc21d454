//! A webhook receiver on loopback: a python HTTP server that appends each POST (path,
//! headers, body) to a file as a JSON line and answers 200, or 500 on `/fail`.

use std::{io::BufRead, path::PathBuf, process::Command};

use serde_json::Value;

use crate::Proc;

const HOOK_SERVER: &str = r#"
import http.server, json, sys
out = open(sys.argv[1], 'a', buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        out.write(json.dumps({'path': self.path, 'headers': {k.lower(): v for k, v in self.headers.items()}, 'body': body.decode()}) + '\n')
        self.send_response(500 if self.path == '/fail' else 200)
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(('127.0.0.1', 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// A running receiver; stopped on drop.
pub struct HookServer {
    pub port: String,
    file: PathBuf,
    _server: Proc,
}

impl HookServer {
    /// Start one that records into `file`.
    pub fn start(file: PathBuf) -> Self {
        let mut c = Command::new("python3");
        c.args(["-c", HOOK_SERVER])
            .arg(&file)
            .stdout(std::process::Stdio::piped());
        let mut server = Proc::spawn(c);
        let mut port = String::new();
        std::io::BufReader::new(server.child.stdout.take().expect("piped stdout"))
            .read_line(&mut port)
            .expect("the hook server's port");
        Self {
            port: port.trim().to_owned(),
            file,
            _server: server,
        }
    }

    /// The deliveries recorded so far.
    pub fn deliveries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The bodies of the deliveries, parsed.
    pub fn documents(&self) -> Vec<Value> {
        self.deliveries()
            .iter()
            .filter_map(|h| serde_json::from_str(h["body"].as_str()?).ok())
            .collect()
    }
}
