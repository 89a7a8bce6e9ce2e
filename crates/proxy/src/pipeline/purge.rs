//! A KV-cache purge as the core runs it (for `/new`, the dashboard, the tray, the admin API):
//! every slot held first, so it never cuts into a generation, then the backend's adapter
//! (`backend/purge.rs`), and the outcome logged and published.

use super::AppState;
use crate::{
    backend::purge,
    config::Settings,
    observe::{ProxyEvent, PurgeOutcome},
};
use serde_json::json;
use tokio::time::Instant;

/// Purges the backend's KV cache. `model` is the conversation's model (Ollama unloads that one;
/// without it, every model Ollama has loaded). Publishes the outcome and returns it.
pub async fn purge(state: &AppState, model: Option<&str>) -> PurgeOutcome {
    let started = Instant::now();
    let settings = state.settings.current();
    let (adapter, status, message) = match purge::choose(&state.client, &state.purge_adapter, &settings).await {
        Err(n) => (n.adapter.to_owned(), n.status, n.message),
        Ok(purge::Adapter::Mlx) => (
            "mlx".to_owned(),
            "unsupported",
            "not supported by this backend: stock mlx_lm.server has no cache-purge endpoint (see the README for the workaround)".to_owned(),
        ),
        Ok(adapter) => {
            let (status, message) = purge_with(state, &settings, adapter, model).await;
            (adapter.as_str().to_owned(), status, message)
        }
    };
    let outcome = PurgeOutcome {
        adapter,
        status: status.to_owned(),
        message,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(
        adapter = %outcome.adapter,
        status = %outcome.status,
        duration_ms = outcome.duration_ms,
        "{}",
        outcome.message
    );
    state.hub.log().write(json!({
        "event": "cache_purged",
        "time": crate::observe::rfc3339(std::time::SystemTime::now()),
        "adapter": outcome.adapter,
        "status": outcome.status,
        "message": outcome.message,
        "duration_ms": outcome.duration_ms,
    }));
    state.hub.publish(ProxyEvent::CachePurged {
        outcome: outcome.clone(),
    });
    outcome
}

/// Holds every slot, then calls the backend.
async fn purge_with(
    state: &AppState,
    settings: &Settings,
    adapter: purge::Adapter,
    model: Option<&str>,
) -> (&'static str, String) {
    let Ok(_hold) = tokio::time::timeout(purge::WAIT_FOR_SLOTS, state.gate.hold_all()).await else {
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
