//! The shared state every handler and stage sees, and the owner of request tasks.

use super::{admission::Gate, route::Backends, shaping::estimate::Calibration};
use crate::{
    backend::purge,
    config::LiveSettings,
    observe::{Hub, memory::MemoryMonitor},
};
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};
use tokio::sync::{Notify, watch};

#[derive(Debug, Clone)]
pub struct AppState {
    pub settings: LiveSettings,
    pub client: reqwest::Client,
    pub hub: Hub,
    /// The first backend's gate (with one backend, the proxy's one gate); every backend's
    /// gate is in `backends`.
    pub gate: Gate,
    /// Every backend: its settings, gate and health; routing.
    pub backends: Backends,
    /// The processes of the backends blockops runs itself.
    pub managed: super::managed::Supervisor,
    /// The latest memory sample and where samples come from.
    pub memory: MemoryMonitor,
    /// Bytes per token learned from the backend's `usage.prompt_tokens`, per backend and model.
    pub calibration: Calibration,
    /// The purge adapter `CACHE_PURGE=auto` found, per backend URL.
    pub purge_adapter: purge::Detected,
    /// Recent `/v1/responses` replies, for `previous_response_id`.
    pub responses: crate::pipeline::conversations::ConversationStore,
    /// Request tasks: shutdown waits for these to finish.
    pub tasks: Tasks,
    /// Set once when the server starts shutting down; long-lived streams (the dashboard's
    /// event stream) end on it instead of holding shutdown up.
    pub stopping: Arc<watch::Sender<bool>>,
}

impl AppState {
    /// Resolves when the server starts shutting down.
    pub async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Counts the request tasks in flight so shutdown can wait for them to finish.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    inner: Arc<TasksInner>,
}

#[derive(Debug, Default)]
struct TasksInner {
    running: AtomicUsize,
    idle: Notify,
}

struct Running(Arc<TasksInner>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tasks {
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, fut: F) {
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        let guard = Running(self.inner.clone());
        // `map` holds the future once; an `async` block awaiting it would keep room for it twice.
        tokio::spawn(futures_util::FutureExt::map(fut, move |()| drop(guard)));
    }

    pub fn running(&self) -> usize {
        self.inner.running.load(Ordering::Acquire)
    }

    /// Resolves once no task is running.
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }
}
