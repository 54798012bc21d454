//! A secret's fingerprint: a keyed BLAKE3 hash, cut to 64 bits. The same secret has the same
//! fingerprint in every event of one installation, so "which agents touched this token" is
//! a search; without the key (root-only, beside the event log) a short secret cannot be
//! brute-forced from it, as it could from a plain hash prefix.

use std::{
    fs,
    io::{self, Read, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// The fingerprint key.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

/// The key's file name, in the event log's directory.
pub const KEY_FILE: &str = "fingerprint.key";

impl Key {
    /// Where the key of the event log `event_log` is kept.
    pub fn path_for(event_log: &Path) -> PathBuf {
        event_log
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(KEY_FILE)
    }

    /// Read the key at `path`, creating it (mode 0600) the first time.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        match Self::load(path) {
            Ok(k) => return Ok(k),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        let key = Self::random()?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(&key.0)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(key)
    }

    /// Read an existing key; it must be 32 bytes and readable by its owner only.
    pub fn load(path: &Path) -> io::Result<Self> {
        let mut f = fs::File::open(path)?;
        let mode = f.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(io::Error::other(format!(
                "{} is readable by others (mode {:o}); it must be 0600",
                path.display(),
                mode & 0o777
            )));
        }
        let mut key = [0u8; 32];
        f.read_exact(&mut key)?;
        Ok(Self(key))
    }

    /// A key of this process only (fingerprints not comparable with the daemon's).
    pub fn random() -> anyhow::Result<Self> {
        let mut key = [0u8; 32];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .context("reading /dev/urandom")?;
        Ok(Self(key))
    }

    /// Where `/dev/urandom` cannot be read: a key derived from this process's identity and
    /// the time (not secret from root, which can read the key file anyway).
    pub fn of_process() -> Self {
        let seed = format!("{}:{:?}", std::process::id(), std::time::SystemTime::now());
        Self(*blake3::hash(seed.as_bytes()).as_bytes())
    }

    /// `fp:` and 16 hex digits.
    pub fn fingerprint(&self, secret: &[u8]) -> String {
        let hash = blake3::keyed_hash(&self.0, secret);
        let mut out = String::from("fp:");
        for b in &hash.as_bytes()[..8] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}
