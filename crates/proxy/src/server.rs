//! Starting and stopping the proxy: bind, serve, drain, flush.

use crate::{
    config::{LiveSettings, Settings},
    http,
    observe::memory::{MemoryMonitor, MemorySample, SystemSampler},
    observe::{Hub, PurgeOutcome, Snapshot, TrafficLog},
    pipeline::{AppState, Tasks},
    pipeline::{admission::Gate, route::Backends, upstream},
};
use axum::serve::ListenerExt;
use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    net::TcpListener,
    sync::{Mutex, watch},
};

#[derive(Debug)]
pub enum StartError {
    PortInUse {
        addr: SocketAddr,
    },
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::PortInUse { addr } => write!(
                f,
                "port {} is already in use on {}: stop the other program or choose another port with --port / PORT",
                addr.port(),
                addr.ip()
            ),
            StartError::Bind { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running proxy. Cheap to clone; [`ServerHandle::shutdown`] stops it for every clone.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    addr: SocketAddr,
    state: AppState,
    stop: Arc<watch::Sender<bool>>,
    finished: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// Binds the configured address and starts serving in the background.
pub async fn start(settings: Settings) -> Result<ServerHandle, StartError> {
    let addr = SocketAddr::new(settings.host, settings.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::AddrInUse => StartError::PortInUse { addr },
            _ => StartError::Bind { addr, error },
        })?;
    Ok(start_on(listener, settings))
}

/// Serves on an already-bound listener (tests bind port 0).
pub fn start_on(listener: TcpListener, mut settings: Settings) -> ServerHandle {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::new(settings.host, settings.port));
    settings.port = addr.port();
    let state = build_state(settings);
    let stop_tx = state.stopping.clone();
    let mut stop_rx = stop_tx.subscribe();
    let router = http::guard::protect(http::router(state.clone()), state.clone());
    // Small SSE writes must leave at once, not wait for Nagle.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let grace = Duration::from_secs_f64(state.settings.current().shutdown_grace_secs);
    let tasks = state.tasks.clone();
    let serve_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        let mut serve_stop = serve_stop;
        let serve = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = serve_stop.wait_for(|s| *s).await;
        });
        let serving = tokio::spawn(async move { serve.await });
        let _ = stop_rx.wait_for(|s| *s).await;
        // Accepting has stopped; in-flight requests get the grace period, then are cut.
        if tokio::time::timeout(grace, async {
            tasks.idle().await;
        })
        .await
        .is_err()
        {
            tracing::warn!(
                remaining = tasks.running(),
                "shutdown grace period over; cutting remaining requests"
            );
        }
        match tokio::time::timeout(Duration::from_millis(500), serving).await {
            Ok(_) => {}
            Err(_) => tracing::debug!("connections still open after the drain; closing"),
        }
    });
    let background = crate::background::spawn(state.clone(), stop_tx.subscribe());
    let managed_state = state.clone();
    let finished = tokio::spawn(async move {
        let _ = server.await;
        background.stop().await;
        managed_state.managed.shutdown(&managed_state).await;
    });
    ServerHandle {
        addr,
        state,
        stop: stop_tx,
        finished: Arc::new(Mutex::new(Some(finished))),
    }
}

/// The state a server runs on, without serving: tests drive `http::router(state)` with it.
pub fn build_state(settings: Settings) -> AppState {
    // The writer thread ends by itself once the last sender is gone; `shutdown` flushes it.
    let (log, _writer) = TrafficLog::spawn(
        settings.log_file.clone(),
        settings.log_max_mb.saturating_mul(1 << 20),
    );
    let snapshot = Snapshot::starting(&settings);
    let hub = Hub::new(log, snapshot);
    // The first backend's gate is also `state.gate` (with one backend, the proxy's one gate).
    let first = settings
        .effective_backends()
        .first()
        .map(|b| b.name.clone())
        .unwrap_or_default();
    let gate = Gate::named(
        &first,
        settings.max_concurrent,
        settings.max_queue,
        hub.clone(),
    );
    let client = upstream::client(&settings);
    // The children's records live beside the log (`~/.blockops/run/` by default).
    let run_dir = settings.log_file.parent().map(|d| d.join("run"));
    let live = LiveSettings::new(settings);
    let backends = Backends::new(live.clone(), hub.clone(), gate.clone());
    let state = AppState {
        settings: live,
        client,
        hub,
        gate,
        backends,
        managed: crate::pipeline::managed::Supervisor::new(run_dir),
        memory: MemoryMonitor::new(Box::new(SystemSampler::default())),
        calibration: Default::default(),
        purge_adapter: Default::default(),
        responses: Default::default(),
        tasks: Tasks::default(),
        stopping: Arc::new(watch::channel(false).0),
    };
    state.managed.publish_all(&state);
    // The first request already sees a real sample, not an empty one.
    state
        .memory
        .sample_blocking(&state.hub, &state.settings.current());
    state
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn base_url(&self) -> String {
        let host = if self.addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            self.addr.ip().to_string()
        };
        if self.addr.is_ipv6() && !self.addr.ip().is_unspecified() {
            format!("http://[{host}]:{}", self.addr.port())
        } else {
            format!("http://{host}:{}", self.addr.port())
        }
    }

    pub fn api_url(&self) -> String {
        format!("{}/v1", self.base_url())
    }

    pub fn dashboard_url(&self) -> String {
        format!("{}/ui/", self.base_url())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn hub(&self) -> &Hub {
        &self.state.hub
    }

    pub fn settings(&self) -> &LiveSettings {
        &self.state.settings
    }

    pub fn snapshot(&self) -> watch::Receiver<Snapshot> {
        self.state.hub.snapshot()
    }

    /// The latest memory sample, updated every `MEMORY_POLL_SECS`: used and available memory,
    /// swap and its growth, the macOS kernel level, and the [`crate::observe::memory::Pressure`] verdict
    /// (`normal`, `warning`, `critical`). `changed().await` on it wakes on every sample; compare
    /// `pressure` with the previous one to notify only on a change.
    pub fn memory(&self) -> watch::Receiver<MemorySample> {
        self.state.memory.subscribe()
    }

    /// Purges the backend's KV cache (the tray menu's item): takes every slot, calls the
    /// backend's purge endpoint, and reports what happened. Never an error: a backend without a
    /// purge endpoint is `status: "unsupported"`, a failure is `status: "failed"` with the reason.
    pub async fn purge_cache(&self) -> PurgeOutcome {
        let all = crate::pipeline::purge::purge(&self.state, None, None).await;
        crate::pipeline::purge::combined(&all.unwrap_or_default())
    }

    /// Purges one backend's KV cache (the tray's per-backend item); `None` for an unknown name.
    pub async fn purge_backend_cache(&self, name: &str) -> Option<PurgeOutcome> {
        let done = crate::pipeline::purge::purge(&self.state, Some(name), None).await;
        done.ok()?.into_iter().next()
    }

    /// Starts a managed backend ("load"); returns once it is ready, or why it could not start.
    pub async fn start_backend(&self, name: &str) -> Result<(), String> {
        let Some(b) = self.state.backends.get(name) else {
            return Err(format!("no backend named {name:?}"));
        };
        self.state
            .managed
            .ensure(&self.state, &b, async || {})
            .await
            .map(|_| ())
            .map_err(|e| e.message)
    }

    /// Stops a managed backend ("unload"); `false` when it was not running.
    pub async fn stop_backend(&self, name: &str) -> bool {
        self.state.managed.stop(&self.state, name).await == Some(true)
    }

    /// Stops every managed backend that runs (the tray's "Unload all"); how many were.
    pub async fn unload_all(&self) -> usize {
        self.state.managed.stop_all(&self.state).await
    }

    /// Every backend as the dashboard shows it: state, kind, models, slots, queue, last error.
    pub fn backends(&self) -> Vec<crate::observe::BackendView> {
        self.state.backends.sync();
        self.state.managed.publish_all(&self.state);
        self.state.hub.snapshot().borrow().backends.clone()
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, flushes the log.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let finished = self.finished.lock().await.take();
        if let Some(f) = finished {
            let _ = f.await;
        }
        self.state.hub.log().flush().await;
    }

    /// Waits until the server has stopped (after [`ServerHandle::shutdown`] from anywhere).
    pub async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
        self.shutdown().await;
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM: what the binary and the tray app both stop on.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
