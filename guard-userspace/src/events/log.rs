//! The durable event log.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use super::Event;

/// Append-only JSON-lines log, flushed after each event so a crash loses nothing written.
pub struct EventLog {
    path: PathBuf,
    file: File,
    stdout: bool,
}

impl EventLog {
    pub fn open(path: &Path, stdout: bool) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            stdout,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        let mut line = serde_json::to_vec(event).map_err(io::Error::other)?;
        line.push(b'\n');
        // One write(2) per line: concurrent readers never see half a line.
        self.file.write_all(&line)?;
        if self.stdout {
            io::stdout().write_all(&line)?;
        }
        Ok(())
    }
}
