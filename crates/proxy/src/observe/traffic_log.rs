//! The traffic log: one JSON line per request, written by one writer thread, never on the
//! request path. Rotated by size; flushed whenever the queue drains (so within a second) and
//! at shutdown. A write failure (disk full, file removed) is a warning and the writer reopens
//! the file on the next record, so logging recovers by itself.

use serde::Serialize;
use serde_json::Value;
use std::{
    fs::{self, File, OpenOptions},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, oneshot};

/// Rotated files kept beside the live one: `proxy.log.1` … `proxy.log.5`.
pub const KEEP_FILES: usize = 5;

/// A record, serialized by the writer thread (off the request path) when it writes it.
type Record = Box<dyn FnOnce() -> Vec<u8> + Send>;

enum Msg {
    Record(Record),
    Flush(oneshot::Sender<()>),
}

/// The sending side; cheap to clone. Records are never dropped: the queue is unbounded and the
/// writer only stops after every sender is gone and the queue is drained.
#[derive(Debug, Clone)]
pub struct TrafficLog {
    tx: mpsc::UnboundedSender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl TrafficLog {
    /// Starts the writer thread. The returned handle finishes once every `TrafficLog` is dropped
    /// and the last record is on disk.
    pub fn spawn(path: PathBuf, max_bytes: u64) -> (TrafficLog, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = std::thread::Builder::new()
            .name("blockops-traffic-log".into())
            .spawn(move || Writer::new(path, max_bytes).run(rx))
            .unwrap_or_else(|e| panic!("cannot start the traffic-log thread: {e}"));
        (TrafficLog { tx }, handle)
    }

    pub fn write<T: Serialize + Send + 'static>(&self, record: T) {
        let record: Record = Box::new(move || serde_json::to_vec(&record).unwrap_or_default());
        if self.tx.send(Msg::Record(record)).is_err() {
            tracing::warn!("traffic log writer has stopped; record not written");
        }
    }

    /// Waits until everything sent so far is written and flushed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

struct Writer {
    path: PathBuf,
    max_bytes: u64,
    file: Option<BufWriter<File>>,
    size: u64,
    last_warning: Option<Instant>,
}

impl Writer {
    fn new(path: PathBuf, max_bytes: u64) -> Self {
        Writer {
            path,
            max_bytes,
            file: None,
            size: 0,
            last_warning: None,
        }
    }

    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        while let Some(msg) = rx.blocking_recv() {
            self.handle(msg);
            // Drain what is already queued, then flush once: batching without delaying.
            while let Ok(msg) = rx.try_recv() {
                self.handle(msg);
            }
            self.flush();
        }
        self.flush();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Record(record) => {
                let mut line = record();
                line.push(b'\n');
                if let Err(e) = self.append(&line) {
                    self.file = None;
                    self.warn(&format!(
                        "could not write the traffic log {}: {e}",
                        self.path.display()
                    ));
                }
            }
            Msg::Flush(done) => {
                self.flush();
                let _ = done.send(());
            }
        }
    }

    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.file.is_some() && self.size + line.len() as u64 > self.max_bytes && self.size > 0 {
            self.rotate()?;
        }
        if self.file.is_none() {
            self.open()?;
            if self.size + line.len() as u64 > self.max_bytes && self.size > 0 {
                self.rotate()?;
            }
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("log file not open"))?;
        file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn open(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let file = private_append(&self.path)?;
        self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.file = Some(BufWriter::with_capacity(64 * 1024, file));
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush()?;
        }
        for i in (1..KEEP_FILES).rev() {
            let from = rotated(&self.path, i);
            if from.exists() {
                fs::rename(&from, rotated(&self.path, i + 1))?;
            }
        }
        fs::rename(&self.path, rotated(&self.path, 1))?;
        self.open()
    }

    fn flush(&mut self) {
        if let Some(f) = self.file.as_mut()
            && let Err(e) = f.flush()
        {
            self.file = None;
            self.warn(&format!(
                "could not flush the traffic log {}: {e}",
                self.path.display()
            ));
        }
    }

    /// At most one warning every ten seconds: a full disk must not flood stderr.
    fn warn(&mut self, message: &str) {
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            self.last_warning = Some(Instant::now());
            tracing::warn!(
                "{message}; requests keep working and logging resumes when the file is writable"
            );
        }
    }
}

pub fn rotated(path: &Path, i: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{i}"));
    PathBuf::from(name)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn private_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Keys whose values never reach the log, wherever they appear in a body.
const SECRET_KEYS: &[&str] = &[
    "authorization",
    "api_key",
    "apikey",
    "api-key",
    "x-api-key",
    "x_api_key",
    "password",
    "client_secret",
];

/// Replaces secret-looking values in a JSON body before it is logged.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if SECRET_KEYS.iter().any(|s| s.eq_ignore_ascii_case(k)) {
                    *v = Value::String("[redacted]".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rotates_by_size_and_keeps_five() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs").join("proxy.log");
        let (log, handle) = TrafficLog::spawn(path.clone(), 200);
        for i in 0..40 {
            log.write(json!({"i": i, "pad": "x".repeat(60)}));
        }
        drop(log);
        handle.join().unwrap();
        assert!(rotated(&path, 5).exists());
        assert!(!rotated(&path, 6).exists());
        let last: Vec<Value> = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(last.last().unwrap()["i"], 39);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                fs::metadata(path.parent().unwrap())
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777,
                0o700
            );
        }
    }

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let mut v =
            json!({"api_key": "sk-1", "extra": [{"Authorization": "Bearer x"}], "max_tokens": 5});
        redact(&mut v);
        assert_eq!(
            v,
            json!({"api_key": "[redacted]", "extra": [{"Authorization": "[redacted]"}], "max_tokens": 5})
        );
    }
}
