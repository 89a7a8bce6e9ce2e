//! A model server blockops runs itself: spawned in its own process group, its output kept
//! (bounded), stopped with SIGTERM to the group then SIGKILL after a grace period, and recorded
//! under the run directory (pid and start time) so that a blockops killed without a chance to
//! stop it reaps it on its next start. A [`Process`] is a guard: dropped without
//! [`Process::stop`], it kills its group at once.
//!
//! Who decides when to start and stop is the core's supervisor (`pipeline/managed.rs`); this
//! module only spawns, signals, reads output and cleans up.

use serde::{Deserialize, Serialize};
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    task::JoinHandle,
};

/// Lines of output kept per process.
pub const OUTPUT_LINES: usize = 200;
/// Bytes kept of one line.
const LINE_LIMIT: usize = 2000;

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The backend's name (the record's file name).
    pub name: String,
    pub argv: Vec<String>,
    /// Added to blockops' own environment.
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

/// The last lines a process wrote on stdout and stderr, oldest first. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Output(Arc<Mutex<VecDeque<String>>>);

impl Output {
    pub fn push(&self, line: &str) {
        let mut line = line.trim_end().to_owned();
        if line.is_empty() {
            return;
        }
        if line.len() > LINE_LIMIT {
            line.truncate(line.floor_char_boundary(LINE_LIMIT));
            line.push('…');
        }
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() >= OUTPUT_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    pub fn last_line(&self) -> Option<String> {
        self.tail(1).pop()
    }
}

/// What the run directory keeps of a running child.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub backend: String,
    pub pid: u32,
    /// Seconds since the Unix epoch, as the system reports it: with `pid`, what tells this
    /// process from a later one given the same pid.
    pub start_time: u64,
    /// The blockops that started it, and when that one started.
    pub owner_pid: u32,
    pub owner_start_time: u64,
    pub argv: Vec<String>,
}

/// A running child in its own process group.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    pid: u32,
    output: Output,
    readers: Vec<JoinHandle<()>>,
    record: Option<PathBuf>,
}

impl Process {
    /// Spawns `spec` in a new process group, stdin closed, stdout and stderr read into
    /// `output`, and records it under `run_dir`. The error says what could not be run.
    pub fn spawn(spec: &Spec, output: Output, run_dir: Option<&Path>) -> Result<Process, String> {
        let Some((program, args)) = spec.argv.split_first() else {
            return Err("cmd is empty".into());
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        if let Some(dir) = &spec.cwd {
            cmd.current_dir(dir);
        }
        #[cfg(unix)]
        cmd.process_group(0);
        let mut child = cmd.spawn().map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound => {
                    " (not found: give its full path, or add its directory to PATH)"
                }
                std::io::ErrorKind::PermissionDenied => " (permission denied: is it executable?)",
                _ => "",
            };
            format!("cannot run {program:?}: {e}{hint}")
        })?;
        let pid = child.id().unwrap_or_default();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(read_lines(out, output.clone())));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(read_lines(err, output.clone())));
        }
        let record = run_dir.and_then(|dir| {
            let (_, start_time) = process_info(pid)?;
            let (owner_pid, owner_start_time) = own_identity();
            let record = Record {
                backend: spec.name.clone(),
                pid,
                start_time,
                owner_pid,
                owner_start_time,
                argv: spec.argv.clone(),
            };
            write_record(dir, &record)
        });
        Ok(Process {
            child: Some(child),
            pid,
            output,
            readers,
            record,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn output(&self) -> &Output {
        &self.output
    }

    /// `Some` once the child has exited: how.
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(describe_exit(status)),
            Ok(None) => None,
            Err(e) => Some(format!("cannot be watched: {e}")),
        }
    }

    /// SIGTERM to the group, then SIGKILL once `grace` has passed; returns when the child is
    /// gone. Returns whether it had to be killed.
    pub async fn stop(mut self, grace: Duration) -> bool {
        let mut killed = false;
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                signal_group(self.pid, Signal::Term);
                // Without process groups (not Unix) there is no SIGTERM to wait on.
                let grace = if cfg!(unix) { grace } else { Duration::ZERO };
                if tokio::time::timeout(grace, child.wait()).await.is_err() {
                    killed = true;
                    signal_group(self.pid, Signal::Kill);
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
            // Whatever it left behind in its group goes with it.
            signal_group(self.pid, Signal::Kill);
        }
        // The pipes close with the group; what was written is in `output` once the readers end.
        for r in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_millis(200), r).await;
        }
        if let Some(path) = self.record.take() {
            let _ = std::fs::remove_file(path);
        }
        killed
    }

    /// Resident memory of the process and everything it started, bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        tree_rss(self.pid)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(self.pid, Signal::Kill);
            // The child itself where there are no process groups (not Unix).
            let _ = child.start_kill();
            let _ = child.try_wait();
        }
        for r in &self.readers {
            r.abort();
        }
        if let Some(path) = self.record.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn read_lines(pipe: impl AsyncRead + Unpin, output: Output) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Bounded: a line without an end is cut at the limit, not read whole into memory.
        match read_bounded_line(&mut reader, &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                // Progress bars redraw with '\r': the last state is the line.
                let text = String::from_utf8_lossy(&buf);
                let line = text
                    .rsplit('\r')
                    .find(|s| !s.trim().is_empty())
                    .unwrap_or("");
                output.push(line);
            }
        }
    }
}

async fn read_bounded_line(
    reader: &mut BufReader<impl AsyncRead + Unpin>,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(total);
        }
        let (used, done) = match memchr::memchr(b'\n', available) {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        let room = (LINE_LIMIT * 2).saturating_sub(buf.len());
        buf.extend_from_slice(&available[..used.min(room)]);
        reader.consume(used);
        total += used;
        if done {
            return Ok(total);
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("killed by signal {sig}");
        }
    }
    "exited".into()
}

#[derive(Debug, Clone, Copy)]
enum Signal {
    Term,
    Kill,
}

/// Sends `sig` to the process group led by `pid` (a child spawned with `process_group(0)`).
fn signal_group(pid: u32, sig: Signal) {
    #[cfg(unix)]
    {
        use rustix::process::{Pid, Signal as S, kill_process_group};
        let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            return;
        };
        // Never the init process, never ourselves: only a child we spawned leads a group.
        if pid == Pid::INIT || pid.as_raw_nonzero().get() as u32 == std::process::id() {
            return;
        }
        let sig = match sig {
            Signal::Term => S::TERM,
            Signal::Kill => S::KILL,
        };
        let _ = kill_process_group(pid, sig);
    }
    #[cfg(not(unix))]
    {
        let _ = (pid, sig);
    }
}

/// A process's parent and start time, if it exists.
fn process_info(pid: u32) -> Option<(Option<u32>, u64)> {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
    let mut sys = System::new();
    let spid = Pid::from_u32(pid);
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[spid]),
        true,
        ProcessRefreshKind::nothing(),
    );
    let p = sys.process(spid)?;
    Some((p.parent().map(|p| p.as_u32()), p.start_time()))
}

fn own_identity() -> (u32, u64) {
    let pid = std::process::id();
    (pid, process_info(pid).map_or(0, |(_, t)| t))
}

/// Resident memory of `root` and its descendants.
fn tree_rss(root: u32) -> Option<u64> {
    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
    let mut sys = System::new();
    sys.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing().with_memory(),
    );
    let procs = sys.processes();
    procs.get(&sysinfo::Pid::from_u32(root))?;
    let mut total = 0u64;
    let mut frontier = vec![root];
    let mut seen = 0usize;
    while let Some(pid) = frontier.pop() {
        seen += 1;
        if seen > 10_000 {
            break;
        }
        if let Some(p) = procs.get(&sysinfo::Pid::from_u32(pid)) {
            total += p.memory();
        }
        frontier.extend(
            procs
                .iter()
                .filter(|(_, p)| p.parent().is_some_and(|pp| pp.as_u32() == pid))
                .map(|(c, _)| c.as_u32()),
        );
    }
    Some(total)
}

/// Start times agree within a second (systems derive them from boot time and ticks).
fn same_start(a: u64, b: u64) -> bool {
    a.abs_diff(b) <= 1
}

fn record_path(dir: &Path, backend: &str) -> PathBuf {
    dir.join(format!("{backend}.json"))
}

fn write_record(dir: &Path, record: &Record) -> Option<PathBuf> {
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::warn!(
            "cannot create {}: {e}; orphans cannot be reaped",
            dir.display()
        );
        return None;
    }
    let path = record_path(dir, &record.backend);
    let text = serde_json::to_string(record).ok()?;
    match std::fs::write(&path, text) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(
                "cannot write {}: {e}; orphans cannot be reaped",
                path.display()
            );
            None
        }
    }
}

/// Stops the children a previous blockops recorded under `dir` and did not stop (it was killed):
/// only a process whose pid *and* start time match the record (a recycled pid is left alone),
/// and only when the blockops that started it is gone. Returns what was reaped.
pub fn reap_orphans(dir: &Path) -> Vec<Record> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut reaped = Vec::new();
    for entry in entries.flatten().take(1000) {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Some(record) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Record>(&t).ok())
        else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let owner_alive = process_info(record.owner_pid)
            .is_some_and(|(_, t)| same_start(t, record.owner_start_time));
        if owner_alive && record.owner_pid != std::process::id() {
            // Another blockops runs it.
            continue;
        }
        let alive = process_info(record.pid).is_some_and(|(_, t)| same_start(t, record.start_time));
        if alive {
            tracing::warn!(
                backend = %record.backend,
                pid = record.pid,
                "stopping a model server left running by a blockops that was killed"
            );
            signal_group(record.pid, Signal::Term);
            let mut gone = false;
            for _ in 0..40 {
                std::thread::sleep(Duration::from_millis(50));
                if !process_info(record.pid).is_some_and(|(_, t)| same_start(t, record.start_time))
                {
                    gone = true;
                    break;
                }
            }
            if !gone {
                signal_group(record.pid, Signal::Kill);
            }
            reaped.push(record.clone());
        }
        let _ = std::fs::remove_file(&path);
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_the_last_lines_bounded() {
        let out = Output::default();
        for i in 0..(OUTPUT_LINES + 5) {
            out.push(&format!("line {i}\n"));
        }
        out.push("   ");
        let tail = out.tail(2);
        assert_eq!(
            tail,
            [
                format!("line {}", OUTPUT_LINES + 3),
                format!("line {}", OUTPUT_LINES + 4)
            ]
        );
        assert_eq!(out.tail(10_000).len(), OUTPUT_LINES);
        out.push(&"é".repeat(LINE_LIMIT));
        assert!(out.last_line().unwrap().len() <= LINE_LIMIT + 3);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_child_is_spawned_recorded_and_stopped_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec {
            name: "t".into(),
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo hello; echo oops >&2; sleep 30 & wait".into(),
            ],
            env: vec![],
            cwd: None,
        };
        let p = Process::spawn(&spec, Output::default(), Some(dir.path())).unwrap();
        let record = dir.path().join("t.json");
        assert!(record.exists());
        let pid = p.pid();
        let out = p.output().clone();
        // Stop only once it has written (else the signal may come first).
        let wrote = tokio::time::timeout(Duration::from_secs(10), async {
            while out.tail(10).len() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(wrote.is_ok(), "{:?}", out.tail(10));
        assert!(!p.stop(Duration::from_secs(5)).await, "SIGTERM is enough");
        assert!(!record.exists());
        assert!(process_info(pid).is_none(), "the child is gone");
        let lines = out.tail(10);
        assert!(lines.contains(&"hello".to_owned()), "{lines:?}");
        assert!(lines.contains(&"oops".to_owned()), "stderr too: {lines:?}");
    }

    #[tokio::test]
    async fn a_missing_program_says_so() {
        let spec = Spec {
            name: "t".into(),
            argv: vec!["/nonexistent/mlx_lm.server".into()],
            env: vec![],
            cwd: None,
        };
        let e = Process::spawn(&spec, Output::default(), None).unwrap_err();
        assert!(e.contains("not found"), "{e}");
    }

    #[test]
    fn a_record_of_a_recycled_pid_is_dropped_without_a_signal() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let record = Record {
            backend: "x".into(),
            pid: me,
            start_time: 1, // not our start time: the pid was "recycled"
            owner_pid: u32::MAX - 1,
            owner_start_time: 0,
            argv: vec![],
        };
        std::fs::write(
            dir.path().join("x.json"),
            serde_json::to_string(&record).unwrap(),
        )
        .unwrap();
        assert!(reap_orphans(dir.path()).is_empty());
        assert!(!dir.path().join("x.json").exists());
    }
}
