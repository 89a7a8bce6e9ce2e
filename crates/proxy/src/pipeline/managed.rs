//! Managed backends: model servers blockops starts when a request needs them and stops when
//! they are idle too long, when another member of their group is needed, when memory is short,
//! and on quit. The router consults [`Supervisor::ensure`] before admission; spawning, signals
//! and output are `backend/process.rs`'s.
//!
//! - One start at a time per backend (per group for a group's members): the lock below. A start
//!   runs in its own owned task, so a client that goes away does not leave it half done.
//! - A start that fails marks the backend `failed` with the process's last output line; requests
//!   that waited for that very attempt get its error, the next request tries once more.
//! - A swap (another member of the group is needed) lets the running member's in-flight and
//!   queued requests finish for at most its `swap_max_wait_secs`; until then requests for the
//!   running member still go first (same model first, so swaps are few), after it they wait.
//! - Eviction before a start under memory pressure: idle managed backends (nothing in flight or
//!   queued), lowest priority then least recently used first, until pressure is below warn; at
//!   critical, every idle one but the most recently used.

use super::{AppState, route::Backend};
use crate::{
    backend::process::{Output, Process, Spec},
    config::Managed,
    error::{ProxyError, Source, StatusCode},
    observe::{NoticeKind, ProcessView, ProxyEvent, memory::Pressure},
};
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};
use tokio::time::Instant;

/// How a notice of a backend unloaded for memory begins (the tray turns those into native
/// notifications).
pub const UNLOADED_FOR_MEMORY: &str = "Unloaded backend ";

/// How often a starting server's ready path is asked.
const READY_POLL: Duration = Duration::from_millis(200);
/// How long one readiness probe may take.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a swap looks whether the running member's requests are done.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Output lines shown in views.
const VIEW_LINES: usize = 20;

/// Where a managed backend is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Stopped,
    Starting,
    Running,
    Stopping,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stopped => "stopped",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Failed => "failed",
        }
    }
}

/// Why a backend stopped (said in notices).
#[derive(Debug, Clone)]
pub enum StopReason {
    Idle(f64),
    Swap(String),
    Memory(String),
    Asked,
    Restart,
    Quit,
}

#[derive(Debug)]
struct Unit {
    phase: Phase,
    process: Option<Process>,
    output: Output,
    last_used: Option<(Instant, SystemTime)>,
    /// Start attempts finished (each success or failure counts one).
    attempts: u64,
    failure: Option<String>,
    /// A swap waits for this one's requests until then; after it, requests wait for the swap.
    swap_due: Option<Instant>,
    rss: Option<u64>,
    /// Requests waiting for its start (bounded by its `max_queue`).
    waiting: usize,
}

impl Default for Unit {
    fn default() -> Unit {
        Unit {
            phase: Phase::Stopped,
            process: None,
            output: Output::default(),
            last_used: None,
            attempts: 0,
            failure: None,
            swap_due: None,
            rss: None,
            waiting: 0,
        }
    }
}

/// A request waiting for a start: counted while it lives.
struct Waiting<'a> {
    supervisor: &'a Supervisor,
    name: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.supervisor
            .with(self.name, |u| u.waiting = u.waiting.saturating_sub(1));
    }
}

/// Every managed backend's process and state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Supervisor {
    units: Arc<Mutex<HashMap<String, Unit>>>,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    run_dir: Option<PathBuf>,
}

fn managed(b: &Backend) -> Option<&Managed> {
    b.config.managed.as_ref()
}

impl Supervisor {
    /// `run_dir` keeps the children's records (pid and start time); the orphans a killed
    /// blockops left there are reaped now.
    pub fn new(run_dir: Option<PathBuf>) -> Supervisor {
        if let Some(dir) = &run_dir {
            let reaped = crate::backend::process::reap_orphans(dir);
            for r in reaped {
                tracing::warn!(backend = %r.backend, pid = r.pid, "reaped an orphaned model server");
            }
        }
        Supervisor {
            units: Default::default(),
            locks: Default::default(),
            run_dir,
        }
    }

    fn with<R>(&self, name: &str, f: impl FnOnce(&mut Unit) -> R) -> R {
        let mut units = self.units.lock().unwrap_or_else(|e| e.into_inner());
        f(units.entry(name.to_owned()).or_default())
    }

    /// The start lock: the group's for a group member, else the backend's own.
    fn lock_for(&self, b: &Backend) -> Arc<tokio::sync::Mutex<()>> {
        let key = match managed(b).and_then(|m| m.group.as_deref()) {
            Some(g) => format!("group:{g}"),
            None => format!("backend:{}", b.name()),
        };
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }

    pub fn phase(&self, name: &str) -> Phase {
        self.with(name, |u| u.phase)
    }

    /// The backend may take a request now: unmanaged, or its process is running.
    pub fn usable(&self, b: &Backend) -> bool {
        managed(b).is_none() || self.phase(b.name()) == Phase::Running
    }

    /// Makes sure a managed backend's process runs, starting it (and swapping out its group's
    /// running member, and evicting idle ones under memory pressure) if not. `on_wait` runs
    /// once when the request has to wait (a streaming client gets its heartbeats from then).
    /// Returns how long the request waited. Unmanaged backends return at once.
    pub async fn ensure(
        &self,
        state: &AppState,
        backend: &Arc<Backend>,
        on_wait: impl AsyncFnOnce(),
    ) -> Result<Duration, ProxyError> {
        let Some(m) = managed(backend) else {
            return Ok(Duration::ZERO);
        };
        let name = backend.name().to_owned();
        let now = Instant::now();
        let seen = self.with(&name, |u| {
            crashed(u);
            let go = u.phase == Phase::Running && u.swap_due.is_none_or(|d| now < d);
            if go {
                u.last_used = Some((now, SystemTime::now()));
            }
            (go, u.attempts)
        });
        let (ready, seen) = seen;
        if ready {
            return Ok(Duration::ZERO);
        }
        // Requests waiting for a start are bounded like the slots and queue they wait for.
        let max_queue = backend.settings.max_queue;
        let bound = max_queue + backend.settings.max_concurrent;
        let admitted = self.with(&name, |u| {
            if u.waiting >= bound {
                return false;
            }
            u.waiting += 1;
            true
        });
        if !admitted {
            state.hub.update(|s| s.rejections.queue_full += 1);
            let mut e = super::queue_full(max_queue, backend.settings.max_concurrent);
            e.message = format!("backend {name:?} is loading: {}", e.message);
            return Err(e);
        }
        let _waiting = Waiting {
            supervisor: self,
            name: &name,
        };
        let began = Instant::now();
        self.publish(state, &name, Some(m));
        on_wait().await;
        // The start runs in a task of its own: it completes (or fails) even if this request
        // goes away, and never twice at once (the lock).
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (this, st, b) = (self.clone(), state.clone(), backend.clone());
        state.tasks.spawn(async move {
            let _ = tx.send(this.locked_start(&st, &b, seen).await);
        });
        match rx.await {
            Ok(Ok(())) => Ok(began.elapsed()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ProxyError::internal(format!(
                "the start of backend {name:?} was cut short (the proxy is shutting down)"
            ))),
        }
    }

    async fn locked_start(
        &self,
        state: &AppState,
        backend: &Arc<Backend>,
        seen: u64,
    ) -> Result<(), ProxyError> {
        let lock = self.lock_for(backend);
        let _held = lock.lock().await;
        let name = backend.name().to_owned();
        let Some(m) = managed(backend).cloned() else {
            return Ok(());
        };
        let settled = self.with(&name, |u| {
            crashed(u);
            if u.phase == Phase::Running {
                u.swap_due = None;
                u.last_used = Some((Instant::now(), SystemTime::now()));
                return Some(Ok(()));
            }
            // The attempt this request waited for failed: it is told so, no second try.
            if u.phase == Phase::Failed && u.attempts != seen {
                return Some(Err(u.failure.clone().unwrap_or_default()));
            }
            None
        });
        match settled {
            Some(Ok(())) => return Ok(()),
            Some(Err(f)) => return Err(start_failed(&name, &f)),
            None => {}
        }
        if let Some(group) = &m.group {
            for peer in state.backends.list() {
                let same = managed(&peer).and_then(|p| p.group.as_deref()) == Some(group.as_str());
                if same && peer.name() != name {
                    self.swap_out(state, &peer, &name).await;
                }
            }
        }
        self.relieve(state, Some(&name)).await;
        self.start(state, backend, &m).await
    }

    /// Lets `peer`'s requests finish (at most its `swap_max_wait_secs`; they still go first
    /// until then), then stops it for `wanted`.
    async fn swap_out(&self, state: &AppState, peer: &Arc<Backend>, wanted: &str) {
        let Some(pm) = managed(peer) else { return };
        let due = Instant::now() + Duration::from_secs_f64(pm.swap_max_wait_secs);
        let running = self.with(peer.name(), |u| {
            let live = matches!(u.phase, Phase::Running | Phase::Starting);
            if live {
                u.swap_due = Some(due);
            }
            live
        });
        if !running {
            return;
        }
        self.publish(state, peer.name(), Some(pm));
        while Instant::now() < due && (peer.gate.busy() > 0 || peer.gate.queued() > 0) {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        self.stop_unit(state, peer, StopReason::Swap(wanted.to_owned()))
            .await;
    }

    async fn start(
        &self,
        state: &AppState,
        backend: &Arc<Backend>,
        m: &Managed,
    ) -> Result<(), ProxyError> {
        let name = backend.name().to_owned();
        let spec = Spec {
            name: name.clone(),
            argv: m.cmd.iter().map(|a| m.expand(a)).collect(),
            env: m
                .env
                .iter()
                .map(|(k, v)| (k.clone(), m.expand(v)))
                .collect(),
            cwd: m.cwd.as_ref().map(PathBuf::from),
        };
        let output = self.with(&name, |u| {
            u.phase = Phase::Starting;
            u.failure = None;
            u.swap_due = None;
            u.output = Output::default();
            u.output.clone()
        });
        self.publish(state, &name, Some(m));
        notice(
            state,
            NoticeKind::Backend,
            format!("Starting backend {name:?}: {}", spec.argv.join(" ")),
        );
        let process = match Process::spawn(&spec, output.clone(), self.run_dir.as_deref()) {
            Ok(p) => p,
            Err(e) => return Err(self.failed(state, backend, m, e).await),
        };
        let pid = process.pid();
        self.with(&name, |u| u.process = Some(process));
        self.publish(state, &name, Some(m));
        let url = format!(
            "{}{}",
            backend.config.url,
            m.ready_path_for(&backend.config.kind)
        );
        let deadline = Instant::now() + Duration::from_secs_f64(m.start_timeout_secs);
        loop {
            let exited = self.with(&name, |u| u.process.as_mut().and_then(Process::exited));
            if let Some(how) = exited {
                let why = format!("the process (pid {pid}) {how} before it was ready");
                return Err(self.failed(state, backend, m, why).await);
            }
            if self.phase(&name) != Phase::Starting {
                // Stopped meanwhile (quit, or the admin API).
                return Err(start_failed(&name, "it was stopped while starting"));
            }
            let probe = state
                .client
                .get(&url)
                .timeout(READY_PROBE_TIMEOUT)
                .send()
                .await;
            if probe.is_ok_and(|r| r.status().as_u16() == 200) {
                break;
            }
            if Instant::now() >= deadline {
                let why = format!(
                    "not ready after start_timeout_secs = {} (GET {url} never answered 200); raise start_timeout_secs if loading the model takes longer",
                    m.start_timeout_secs
                );
                return Err(self.failed(state, backend, m, why).await);
            }
            tokio::time::sleep(READY_POLL).await;
        }
        self.with(&name, |u| {
            u.phase = Phase::Running;
            u.attempts += 1;
            u.last_used = Some((Instant::now(), SystemTime::now()));
        });
        state.backends.mark(&name, Some(true), None);
        self.publish(state, &name, Some(m));
        notice(
            state,
            NoticeKind::Backend,
            format!("Backend {name:?} is ready (pid {pid})"),
        );
        Ok(())
    }

    /// A start failed: the process (if any) is stopped, the backend is `failed` with `why` and
    /// the last output line, and the error is what the waiting requests are answered.
    async fn failed(
        &self,
        state: &AppState,
        backend: &Backend,
        m: &Managed,
        why: String,
    ) -> ProxyError {
        let name = backend.name().to_owned();
        let process = self.with(&name, |u| u.process.take());
        if let Some(p) = process {
            p.stop(Duration::from_secs_f64(m.stop_grace_secs)).await;
        }
        let last = self.with(&name, |u| u.output.last_line());
        let text = match last {
            Some(line) => format!("{why}; its last output: {line:?}"),
            None => format!("{why}; it wrote no output"),
        };
        self.with(&name, |u| {
            u.phase = Phase::Failed;
            u.attempts += 1;
            u.failure = Some(text.clone());
        });
        state.backends.mark(&name, Some(false), Some(&text));
        self.publish(state, &name, Some(m));
        notice(
            state,
            NoticeKind::Backend,
            format!("Backend {name:?} failed to start: {text}"),
        );
        start_failed(&name, &text)
    }

    /// Stops a managed backend's process (SIGTERM, SIGKILL after `stop_grace_secs`). The
    /// caller holds its start lock, or the process is being stopped for good.
    async fn stop_unit(&self, state: &AppState, backend: &Backend, reason: StopReason) -> bool {
        let name = backend.name().to_owned();
        let grace = managed(backend).map_or(10.0, |m| m.stop_grace_secs);
        let process = self.with(&name, |u| {
            let p = u.process.take();
            if p.is_some() {
                u.phase = Phase::Stopping;
            }
            p
        });
        let Some(process) = process else {
            self.with(&name, |u| {
                if u.phase != Phase::Failed {
                    u.phase = Phase::Stopped;
                }
                u.swap_due = None;
            });
            return false;
        };
        self.publish(state, &name, managed(backend));
        let killed = process.stop(Duration::from_secs_f64(grace)).await;
        self.with(&name, |u| {
            u.phase = Phase::Stopped;
            u.swap_due = None;
            u.rss = None;
        });
        state.backends.mark(&name, None, None);
        self.publish(state, &name, managed(backend));
        let how = if killed {
            " (killed after stop_grace_secs)"
        } else {
            ""
        };
        let text = match &reason {
            StopReason::Idle(ttl) => {
                format!("Stopped backend {name:?}: idle for {ttl} s (ttl_secs){how}")
            }
            StopReason::Swap(other) => {
                format!("Stopped backend {name:?} so that {other:?} (same group) can run{how}")
            }
            StopReason::Memory(figure) => {
                format!("{UNLOADED_FOR_MEMORY}{name:?} for memory: {figure}{how}")
            }
            StopReason::Asked => format!("Stopped backend {name:?}{how}"),
            StopReason::Restart => format!(
                "Stopped backend {name:?} to free its cache; it restarts on the next request{how}"
            ),
            StopReason::Quit => format!("Stopped backend {name:?} (blockops is quitting){how}"),
        };
        let kind = if matches!(reason, StopReason::Memory(_)) {
            NoticeKind::Memory
        } else {
            NoticeKind::Backend
        };
        notice(state, kind, text);
        true
    }

    /// Stops `name` when asked (admin API, dashboard, tray): its in-flight requests are cut.
    /// `None` when it is not a managed backend.
    pub async fn stop(&self, state: &AppState, name: &str) -> Option<bool> {
        let backend = state.backends.get(name)?;
        managed(&backend)?;
        let lock = self.lock_for(&backend);
        let _held = lock.lock().await;
        Some(self.stop_unit(state, &backend, StopReason::Asked).await)
    }

    /// Restarts a managed backend to free its prompt cache (a purge on a kind without a purge
    /// endpoint): the caller holds every slot; the next request starts it again.
    pub async fn restart_for_purge(&self, state: &AppState, name: &str) -> Option<bool> {
        let backend = state.backends.get(name)?;
        managed(&backend)?;
        let lock = self.lock_for(&backend);
        let _held = lock.lock().await;
        Some(self.stop_unit(state, &backend, StopReason::Restart).await)
    }

    /// Stops every managed backend that runs ("unload all").
    pub async fn stop_all(&self, state: &AppState) -> usize {
        let mut n = 0;
        for b in state.backends.list() {
            if managed(&b).is_some() && self.stop(state, b.name()).await == Some(true) {
                n += 1;
            }
        }
        n
    }

    /// On quit: every process stops (concurrently, each with its grace).
    pub async fn shutdown(&self, state: &AppState) {
        let list = state.backends.list();
        futures_util::future::join_all(
            list.iter()
                .filter(|b| managed(b).is_some())
                .map(|b| self.stop_unit(state, b, StopReason::Quit)),
        )
        .await;
        // Processes of backends removed from the config meanwhile.
        let rest: Vec<Process> = {
            let mut units = self.units.lock().unwrap_or_else(|e| e.into_inner());
            units
                .values_mut()
                .filter_map(|u| u.process.take())
                .collect()
        };
        futures_util::future::join_all(rest.into_iter().map(|p| p.stop(Duration::from_secs(10))))
            .await;
    }

    /// Under memory pressure, stops idle managed backends (never `except`): lowest priority,
    /// then least recently used, first, until pressure is below warn; at critical, every idle
    /// one but the most recently used. Returns how many were stopped.
    pub async fn relieve(&self, state: &AppState, except: Option<&str>) -> usize {
        let settings = state.settings.current();
        let sample = state.memory.latest();
        let pressure = sample.pressure_under(&settings);
        if pressure == Pressure::Normal {
            return 0;
        }
        let mut idle: Vec<(i64, Option<Instant>, Arc<Backend>)> = state
            .backends
            .list()
            .into_iter()
            .filter(|b| managed(b).is_some() && Some(b.name()) != except)
            .filter(|b| b.gate.busy() == 0 && b.gate.queued() == 0)
            .filter_map(|b| {
                let (phase, used) = self.with(b.name(), |u| (u.phase, u.last_used.map(|l| l.0)));
                (phase == Phase::Running).then(|| (managed(&b).map_or(0, |m| m.priority), used, b))
            })
            .collect();
        idle.sort_by_key(|e| (e.0, e.1));
        if pressure == Pressure::Critical {
            // Keep the most recently used.
            if let Some(latest) = idle
                .iter()
                .enumerate()
                .max_by_key(|(_, e)| e.1)
                .map(|(i, _)| i)
                && except.is_none()
            {
                idle.remove(latest);
            }
        }
        let mut stopped = 0;
        let mut now = sample;
        for (_, _, b) in idle {
            let lock = self.lock_for(&b);
            // A member of the group being started (lock held) or one starting now: left alone.
            let Ok(_held) = lock.try_lock() else { continue };
            if b.gate.busy() > 0 || b.gate.queued() > 0 {
                continue;
            }
            let rss = self.with(b.name(), |u| {
                u.process.as_ref().and_then(Process::rss_bytes).or(u.rss)
            });
            let figure = format!(
                "memory {:.0}% used (pressure {}){}",
                now.used_percent,
                now.pressure_under(&settings).as_str(),
                rss.map(|r| format!(", it used {}", gib(r)))
                    .unwrap_or_default()
            );
            if self.stop_unit(state, &b, StopReason::Memory(figure)).await {
                stopped += 1;
            }
            now = state.memory.sample(&state.hub, settings.clone()).await;
            if pressure == Pressure::Warning && now.pressure_under(&settings) == Pressure::Normal {
                break;
            }
        }
        stopped
    }

    /// Once a second (the server's background task): ttl stops, crashed processes noticed,
    /// still-busy backends kept fresh, RSS read (every `rss_every`th tick).
    pub async fn tick(&self, state: &AppState, read_rss: bool) {
        let list = state.backends.list();
        // A backend removed from the config: its process goes.
        let orphaned: Vec<Process> = {
            let mut units = self.units.lock().unwrap_or_else(|e| e.into_inner());
            units
                .iter_mut()
                .filter(|(name, _)| !list.iter().any(|b| b.name() == name.as_str()))
                .filter_map(|(_, u)| {
                    u.phase = Phase::Stopped;
                    u.process.take()
                })
                .collect()
        };
        for p in orphaned {
            p.stop(Duration::from_secs(10)).await;
        }
        for b in list {
            let Some(m) = managed(&b) else { continue };
            let name = b.name();
            let busy = b.gate.busy() > 0 || b.gate.queued() > 0;
            let (phase, idle_for, newly_failed) = self.with(name, |u| {
                let was = u.phase;
                crashed(u);
                if busy && u.phase == Phase::Running {
                    u.last_used = Some((Instant::now(), SystemTime::now()));
                }
                if read_rss {
                    u.rss = u.process.as_ref().and_then(Process::rss_bytes);
                }
                (
                    u.phase,
                    u.last_used.map(|l| l.0.elapsed()),
                    was == Phase::Running && u.phase == Phase::Failed,
                )
            });
            if newly_failed {
                let text = self.with(name, |u| u.failure.clone()).unwrap_or_default();
                state.backends.mark(name, Some(false), Some(&text));
                notice(
                    state,
                    NoticeKind::Backend,
                    format!("Backend {name:?} stopped by itself: {text}"),
                );
            }
            let expired = m.ttl_secs > 0.0
                && phase == Phase::Running
                && !busy
                && idle_for.is_some_and(|d| d.as_secs_f64() >= m.ttl_secs);
            if expired {
                let lock = self.lock_for(&b);
                if let Ok(_held) = lock.try_lock()
                    && b.gate.busy() == 0
                    && b.gate.queued() == 0
                {
                    self.stop_unit(state, &b, StopReason::Idle(m.ttl_secs))
                        .await;
                }
            }
            self.publish(state, name, Some(m));
        }
    }

    /// What `GET /admin/api/backends` and the dashboard show of a managed backend's process.
    pub fn view(&self, name: &str, m: &Managed) -> ProcessView {
        self.with(name, |u| ProcessView {
            state: u.phase.as_str().into(),
            pid: u.process.as_ref().map(Process::pid),
            rss_bytes: u.rss,
            last_used: u.last_used.map(|l| crate::observe::rfc3339(l.1)),
            output: u.output.tail(VIEW_LINES),
            error: u.failure.clone(),
            group: m.group.clone(),
            priority: m.priority,
            ttl_secs: m.ttl_secs,
            swapping_out: u.swap_due.is_some(),
            waiting: u.waiting,
        })
    }

    /// Puts the process view into the snapshot (the dashboard's Backends card).
    fn publish(&self, state: &AppState, name: &str, m: Option<&Managed>) {
        let Some(m) = m else { return };
        let view = self.view(name, m);
        state.hub.update(|snap| {
            if let Some(v) = snap.backends.iter_mut().find(|v| v.name == name) {
                v.process = Some(view);
            }
        });
    }

    /// Refreshes every managed backend's view (after the backends changed).
    pub fn publish_all(&self, state: &AppState) {
        for b in state.backends.list() {
            self.publish(state, b.name(), managed(&b));
        }
    }
}

/// A running process that exited by itself is `failed`, with how and its last line.
fn crashed(u: &mut Unit) {
    if u.phase != Phase::Running {
        return;
    }
    let Some(how) = u.process.as_mut().and_then(Process::exited) else {
        return;
    };
    u.process = None;
    let text = match u.output.last_line() {
        Some(l) => format!("the process {how}; its last output: {l:?}"),
        None => format!("the process {how}"),
    };
    u.phase = Phase::Failed;
    u.failure = Some(text);
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn notice(state: &AppState, kind: NoticeKind, text: String) {
    tracing::info!("{text}");
    state.hub.publish(ProxyEvent::Noticed {
        request_id: None,
        kind,
        text,
    });
}

/// The 503 a request gets when its backend could not start.
pub fn start_failed(name: &str, why: &str) -> ProxyError {
    ProxyError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Source::Upstream,
        "backend_start_failed",
        format!(
            "backend {name:?} could not be started: {why}. Check its cmd in the [[backends]] table (GET /admin/api/backends shows its output); the next request tries again"
        ),
    )
    .with_retry_after(1)
}
