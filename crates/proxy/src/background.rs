//! Background tasks owned by the server: started with it, stopped and awaited at shutdown.
//! The backend's health, memory pressure (`sample_memory`), managed backends (`supervise`).

use crate::{backend, observe::ProxyEvent, pipeline::AppState};
use std::time::Duration;
use tokio::{sync::watch, task::JoinSet};

/// How often the backend is probed for the health shown in the dashboard and tray.
const BACKEND_PROBE_EVERY: Duration = Duration::from_secs(5);

/// How often managed backends are looked at (ttl, crashes).
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);

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
    tasks.spawn(sample_memory(state.clone(), stop.clone()));
    tasks.spawn(supervise(state, stop));
    Background { tasks }
}

/// Probes every backend now and then, so "backend down" shows without waiting for a request.
async fn backend_monitor(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut last: Option<bool> = None;
    loop {
        let settings = state.settings.current();
        // A managed backend that is not running starts on demand: not probed, not "down".
        let list: Vec<_> = state
            .backends
            .list()
            .into_iter()
            .filter(|b| state.managed.usable(b))
            .collect();
        let probes = futures_util::future::join_all(list.iter().map(|b| {
            backend::probe(
                &state.client,
                &b.config.url,
                b.settings.upstream_api_key.as_deref(),
            )
        }))
        .await;
        for (b, probe) in list.iter().zip(&probes) {
            let changed = state.backends.probed(b.name(), probe);
            if let Some(before) = changed
                && !settings.single_backend()
                && (before.is_some() || !probe.reachable)
            {
                let text = if probe.reachable {
                    format!("Backend {:?} is up: {}", b.name(), b.config.url)
                } else {
                    format!("Backend {:?} unreachable: {}", b.name(), b.config.url)
                };
                notice(&state, text);
            }
        }
        // The first backend is also the one-backend status the dashboard and /health show.
        if let Some(probe) = probes.into_iter().next() {
            legacy_status(&state, &settings, &mut last, probe);
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(BACKEND_PROBE_EVERY) => {}
        }
    }
}

/// The first backend's health as the one-backend status (`backend` in the snapshot, /health).
fn legacy_status(
    state: &AppState,
    settings: &crate::config::Settings,
    last: &mut Option<bool>,
    probe: backend::Probe,
) {
    if *last != Some(probe.reachable) {
        let text = if probe.reachable {
            format!("Backend is up: {}", probe.url)
        } else {
            format!("Backend unreachable: {}", probe.url)
        };
        if (last.is_some() || !probe.reachable) && settings.single_backend() {
            notice(state, text);
        }
        *last = Some(probe.reachable);
    }
    backend::record(&state.hub, &probe);
}

fn notice(state: &AppState, text: String) {
    state.hub.publish(ProxyEvent::Noticed {
        request_id: None,
        kind: crate::observe::NoticeKind::Backend,
        text,
    });
}

/// The managed backends, once a second: ttl stops, crashes noticed, RSS read every few seconds.
async fn supervise(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(SUPERVISE_EVERY) => {}
        }
        state.managed.tick(&state, ticks.is_multiple_of(5)).await;
        ticks = ticks.wrapping_add(1);
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
