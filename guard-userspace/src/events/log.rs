//! The durable event log: JSON lines, one write(2) per line, size-based rotation
//! (`events.jsonl` → `events.jsonl.1` → … → `events.jsonl.N-1`, the oldest removed).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use super::Event;

/// Rotation settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Rotate when the live file would grow past this many bytes.
    pub max_bytes: u64,
    /// Files kept, the live one included: at most `max_bytes × files` on disk.
    pub files: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            max_bytes: 50 << 20,
            files: 5,
        }
    }
}

/// Append-only JSON-lines log. Each line is one write(2) to an `O_APPEND` file, so a reader
/// (or a crash) never sees half a line; the page cache holds it once `write` returns, and
/// [`EventLog::sync`] makes it durable against power loss.
pub struct EventLog {
    path: PathBuf,
    file: File,
    size: u64,
    config: LogConfig,
    stdout: bool,
    dirty: bool,
}

impl EventLog {
    pub fn open(path: &Path, config: LogConfig, stdout: bool) -> io::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            config: LogConfig {
                max_bytes: config.max_bytes.max(1),
                files: config.files.max(1),
            },
            stdout,
            dirty: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        let mut line = serde_json::to_vec(event).map_err(io::Error::other)?;
        line.push(b'\n');
        self.write_line(&line)
    }

    /// Append complete lines (each ending in `\n`): as few write(2)s as rotation allows, so
    /// that every file but one line longer than the limit stays within `max_bytes`.
    pub fn write_lines(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.size + bytes.len() as u64 <= self.config.max_bytes {
            // No rotation on the way: one write, without looking for the line ends.
            return self.write_line(bytes);
        }
        let (mut start, mut end) = (0, 0);
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            if end > start && self.size + (end - start + line.len()) as u64 > self.config.max_bytes
            {
                self.write_line(&bytes[start..end])?;
                start = end;
            }
            end += line.len();
        }
        if end > start {
            self.write_line(&bytes[start..end])?;
        }
        Ok(())
    }

    /// Append one complete line, or several (each ending in `\n`), with one write(2).
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.config.max_bytes {
            self.rotate()?;
        }
        // One write(2) per line: concurrent readers never see half a line.
        let n = self.file.write(line)?;
        self.size += n as u64;
        if n != line.len() {
            // Only on a full disk or similar; finish the line rather than leave it torn.
            self.file.write_all(&line[n..])?;
            self.size += (line.len() - n) as u64;
        }
        self.dirty = true;
        if self.stdout {
            let mut out = io::stdout().lock();
            out.write_all(line)?;
            out.flush()?;
        }
        Ok(())
    }

    /// fdatasync the live file if anything was written since the last call.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Shift `path.i` → `path.i+1` (dropping the oldest), `path` → `path.1`, open a new file.
    fn rotate(&mut self) -> io::Result<()> {
        let _ = self.file.sync_data();
        let keep = self.config.files - 1;
        if keep == 0 {
            self.file = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&self.path)?;
            self.file = open_append(&self.path)?;
            self.size = 0;
            return Ok(());
        }
        let numbered = |i: u32| numbered(&self.path, i);
        let _ = std::fs::remove_file(numbered(keep));
        for i in (1..keep).rev() {
            match std::fs::rename(numbered(i), numbered(i + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// A size in bytes: `1048576`, `64K`, `50MiB`, `1G` (K/M/G and KiB/MiB/GiB are both 1024-based).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 52428800, 64K, 50MiB, 1G)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use K, M, G, KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(1 << shift)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a usable size"))
}

fn open_append(path: &Path) -> io::Result<File> {
    // The log is the security team's: readable by the daemon's group, writable by root.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// `path.i`.
pub(crate) fn numbered(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// The log's files, oldest first: `path.N`, …, `path.1`, `path` (those that exist).
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = format!("{name}.");
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            let i: u32 = n.strip_prefix(&prefix)?.parse().ok()?;
            Some((i, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u32) -> Event {
        Event {
            schema: 1,
            kind: "tagged_fork".into(),
            exit_code: Some(i as i32),
            ..Event::default()
        }
    }

    fn read_all(path: &Path) -> Vec<i32> {
        log_files(path)
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str::<Event>(l).unwrap().exit_code.unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn a_batch_of_lines_rotates_like_single_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let line_len = serde_json::to_vec(&event(100)).unwrap().len() as u64 + 1;
        let config = LogConfig {
            max_bytes: line_len * 10,
            files: 4,
        };
        let mut log = EventLog::open(&path, config, false).unwrap();
        let mut batch = Vec::new();
        for i in 100..125 {
            serde_json::to_writer(&mut batch, &event(i)).unwrap();
            batch.push(b'\n');
        }
        log.write_lines(&batch).unwrap();
        let files = log_files(&path);
        assert_eq!(files.len(), 3);
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= config.max_bytes);
        }
        assert_eq!(read_all(&path), (100..125).collect::<Vec<_>>());
    }

    #[test]
    fn rotates_by_size_and_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let line_len = serde_json::to_vec(&event(100)).unwrap().len() as u64 + 1;
        let config = LogConfig {
            max_bytes: line_len * 10,
            files: 3,
        };
        let mut log = EventLog::open(&path, config, false).unwrap();
        for i in 100..135 {
            log.write(&event(i)).unwrap();
        }
        let files = log_files(&path);
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["events.jsonl.2", "events.jsonl.1", "events.jsonl"]);
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= config.max_bytes);
        }
        // Oldest first, in order; the first ten went with the removed file.
        assert_eq!(read_all(&path), (110..135).collect::<Vec<_>>());

        // Reopening appends to the live file and keeps rotating.
        drop(log);
        let mut log = EventLog::open(&path, config, false).unwrap();
        for i in 135..145 {
            log.write(&event(i)).unwrap();
        }
        assert_eq!(read_all(&path), (120..145).collect::<Vec<_>>());
        assert!(!numbered(&path, 3).exists());
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("50MiB"), Ok(50 << 20));
        assert_eq!(parse_size("1 G"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn single_file_log_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let line_len = serde_json::to_vec(&event(100)).unwrap().len() as u64 + 1;
        let config = LogConfig {
            max_bytes: line_len * 4,
            files: 1,
        };
        let mut log = EventLog::open(&path, config, false).unwrap();
        for i in 100..110 {
            log.write(&event(i)).unwrap();
        }
        log.sync().unwrap();
        assert_eq!(read_all(&path), (108..110).collect::<Vec<_>>());
        assert_eq!(log_files(&path).len(), 1);
    }
}
