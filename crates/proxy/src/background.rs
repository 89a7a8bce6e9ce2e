//! Background tasks owned by the server: started with it, stopped and awaited at shutdown.
//! The backend's health, and memory pressure (`sample_memory`).

use crate::{backend, observe::ProxyEvent, pipeline::AppState};
use std::time::Duration;
use tokio::{sync::watch, task::JoinSet};

/// How often the backend is probed for the health shown in the dashboard and tray.
const BACKEND_PROBE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Background {
    tasks: JoinSet<()>,
}

impl Background {
    /// Waits for every task to see the stop signal and end.
    pub async fn stop(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

pub fn spawn(state: AppState, stop: watch::Receiver<bool>) -> Background {
    let mut tasks = JoinSet::new();
    tasks.spawn(backend_monitor(state.clone(), stop.clone()));
    tasks.spawn(sample_memory(state, stop));
    Background { tasks }
}

/// Probes the backend now and then, so "backend down" shows without waiting for a request.
async fn backend_monitor(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut last: Option<bool> = None;
    loop {
        let settings = state.settings.current();
        let probe = backend::check(&state.client, &state.hub, &settings).await;
        if last != Some(probe.reachable) {
            let text = if probe.reachable {
                format!("Backend is up: {}", settings.backend_url)
            } else {
                format!("Backend unreachable: {}", settings.backend_url)
            };
            if last.is_some() || !probe.reachable {
                state.hub.publish(ProxyEvent::Noticed {
                    request_id: None,
                    kind: crate::observe::NoticeKind::Backend,
                    text,
                });
            }
            last = Some(probe.reachable);
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(BACKEND_PROBE_EVERY) => {}
        }
    }
}

/// A memory sample every `MEMORY_POLL_SECS` (read anew each time: it is live).
async fn sample_memory(state: AppState, mut stop: watch::Receiver<bool>) {
    loop {
        let every = Duration::from_secs_f64(state.settings.current().memory_poll_secs);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(every) => {}
        }
        state
            .memory
            .sample(&state.hub, state.settings.current())
            .await;
    }
}
