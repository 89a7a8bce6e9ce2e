//! A KV-cache purge as the core runs it (for `/new`, the dashboard, the tray, the admin API):
//! every slot of the backend held first, so it never cuts into a generation, then the backend's
//! adapter (`backend/purge.rs`), and the outcome logged and published.

use super::{AppState, route::Backend};
use crate::{
    backend::purge,
    config::Settings,
    error::ProxyError,
    observe::{ProxyEvent, PurgeOutcome},
};
use serde_json::json;
use std::sync::Arc;
use tokio::time::Instant;

/// Purges backend `name`'s KV cache, or (`None`) every backend's. `model` is the
/// conversation's model (Ollama unloads that one; without it, every model Ollama has loaded).
/// An unknown name is a 404 that lists the backends.
pub async fn purge(
    state: &AppState,
    name: Option<&str>,
    model: Option<&str>,
) -> Result<Vec<PurgeOutcome>, ProxyError> {
    let list = state.backends.list();
    let chosen: Vec<Arc<Backend>> = match name {
        None => list,
        Some(n) => match list.iter().find(|b| b.name() == n) {
            Some(b) => vec![b.clone()],
            None => {
                let names: Vec<&str> = list.iter().map(|b| b.name()).collect();
                return Err(ProxyError::not_found(format!(
                    "no backend named {n:?}: expected one of {} (GET /admin/api/backends lists them)",
                    names.join(", ")
                ))
                .with_param("backend"));
            }
        },
    };
    let mut outcomes = Vec::with_capacity(chosen.len());
    for b in chosen {
        outcomes.push(purge_backend(state, &b, model).await);
    }
    Ok(outcomes)
}

/// Several outcomes as one: the worst status, every message.
pub fn combined(outcomes: &[PurgeOutcome]) -> PurgeOutcome {
    if let [one] = outcomes {
        return one.clone();
    }
    let rank = |s: &str| match s {
        "failed" => 2,
        "unsupported" => 1,
        _ => 0,
    };
    let worst = outcomes
        .iter()
        .max_by_key(|o| rank(&o.status))
        .map_or("purged", |o| o.status.as_str());
    let named = |o: &PurgeOutcome, text: &str| match &o.backend {
        Some(b) => format!("{b}: {text}"),
        None => text.to_owned(),
    };
    PurgeOutcome {
        backend: None,
        adapter: outcomes
            .iter()
            .map(|o| named(o, &o.adapter))
            .collect::<Vec<_>>()
            .join(", "),
        status: worst.to_owned(),
        message: outcomes
            .iter()
            .map(|o| named(o, &o.message))
            .collect::<Vec<_>>()
            .join("; "),
        duration_ms: outcomes.iter().map(|o| o.duration_ms).sum(),
    }
}

/// Purges one backend. Publishes the outcome and returns it.
pub async fn purge_backend(
    state: &AppState,
    backend: &Backend,
    model: Option<&str>,
) -> PurgeOutcome {
    let started = Instant::now();
    let settings = backend.settings.clone();
    let chosen = if backend.config.kind == "mlx" {
        Ok(purge::Adapter::Mlx)
    } else {
        purge::choose(&state.client, &state.purge_adapter, &settings).await
    };
    let unsupported = match &chosen {
        Ok(purge::Adapter::Mlx) => true,
        Err(n) => n.status == "unsupported",
        Ok(_) => false,
    };
    let (adapter, status, message) = match chosen {
        _ if unsupported && backend.config.managed.is_some() => {
            let (status, message) = restart(state, backend).await;
            ("restart".to_owned(), status, message)
        }
        Err(n) => (n.adapter.to_owned(), n.status, n.message),
        Ok(purge::Adapter::Mlx) => (
            "mlx".to_owned(),
            "unsupported",
            "not supported by this backend: stock mlx_lm.server has no cache-purge endpoint (see the README for the workaround)".to_owned(),
        ),
        Ok(adapter) => {
            let (status, message) = purge_with(state, backend, &settings, adapter, model).await;
            (adapter.as_str().to_owned(), status, message)
        }
    };
    let outcome = PurgeOutcome {
        // Named only when there are several, so a single backend's answer reads as before.
        backend: (!settings.single_backend()).then(|| backend.name().to_owned()),
        adapter,
        status: status.to_owned(),
        message,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(
        backend = %backend.name(),
        adapter = %outcome.adapter,
        status = %outcome.status,
        duration_ms = outcome.duration_ms,
        "{}",
        outcome.message
    );
    let mut line = json!({
        "event": "cache_purged",
        "time": crate::observe::rfc3339(std::time::SystemTime::now()),
        "adapter": outcome.adapter,
        "status": outcome.status,
        "message": outcome.message,
        "duration_ms": outcome.duration_ms,
    });
    if let Some(b) = &outcome.backend {
        line["backend"] = json!(b);
    }
    state.hub.log().write(line);
    state.hub.publish(ProxyEvent::CachePurged {
        outcome: outcome.clone(),
    });
    outcome
}

/// A managed backend whose server cannot purge (stock `mlx_lm.server`): its process is restarted
/// once its in-flight requests finish, which frees the cache and its memory. New requests wait
/// (queued, with heartbeats) for the restart.
async fn restart(state: &AppState, backend: &Backend) -> (&'static str, String) {
    let name = backend.name().to_owned();
    let hold = backend.gate.hold_all().await;
    let was_running = state.managed.restart_for_purge(state, &name).await == Some(true);
    if !was_running {
        return (
            "purged",
            "its process is not running: nothing is cached".to_owned(),
        );
    }
    let started = match state.backends.get(&name) {
        Some(b) => state.managed.ensure(state, &b, async || {}).await,
        None => Ok(std::time::Duration::ZERO),
    };
    drop(hold);
    match started {
        Ok(_) => (
            "purged",
            "restarted its process (this server has no cache-purge endpoint): the cache and its memory are freed".to_owned(),
        ),
        Err(e) => (
            "failed",
            format!("stopped its process to free the cache, but it did not start again: {}", e.message),
        ),
    }
}

/// Holds every slot of the backend, then calls it.
async fn purge_with(
    state: &AppState,
    backend: &Backend,
    settings: &Settings,
    adapter: purge::Adapter,
    model: Option<&str>,
) -> (&'static str, String) {
    let Ok(_hold) = tokio::time::timeout(purge::WAIT_FOR_SLOTS, backend.gate.hold_all()).await
    else {
        return (
            "failed",
            format!(
                "requests were still running after {} s; nothing was purged, try again when they finish",
                purge::WAIT_FOR_SLOTS.as_secs()
            ),
        );
    };
    purge::run(&state.client, settings, adapter, model).await
}
