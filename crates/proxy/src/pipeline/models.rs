//! `GET /v1/models` when the proxy fronts several backends: the union of what each backend that
//! answers serves (`owned_by` = the backend's name), and every alias without glob characters.

use super::{AppState, route};
use serde_json::{Value, json};

/// The model list, OpenAI's shape. A backend's literal configured ids count when it answers;
/// a backend that does not answer is left out (it cannot serve them now).
pub async fn list(state: &AppState) -> Value {
    let backends = state.backends.list();
    let probes = futures_util::future::join_all(backends.iter().map(|b| {
        crate::backend::probe(
            &state.client,
            &b.config.url,
            b.settings.upstream_api_key.as_deref(),
        )
    }))
    .await;
    let mut data: Vec<Value> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut add = |id: &str, owner: &str, data: &mut Vec<Value>| {
        if !seen.iter().any(|s| s == id) {
            seen.push(id.to_owned());
            data.push(json!({"id": id, "object": "model", "created": 0, "owned_by": owner}));
        }
    };
    for (b, probe) in backends.iter().zip(&probes) {
        state.backends.probed(b.name(), probe);
        if !probe.reachable {
            continue;
        }
        let literal = b.config.models.iter().filter(|m| !route::is_glob(m));
        for id in probe.models.iter().chain(literal) {
            add(id, b.name(), &mut data);
        }
    }
    let settings = state.settings.current();
    for alias in settings
        .aliases
        .iter()
        .filter(|a| !route::is_glob(&a.pattern))
    {
        // Owned by the backend the alias's target routes to, when one does.
        let owner = state
            .backends
            .route(&alias.pattern, String::new)
            .ok()
            .and_then(|r| r.chain.first().map(|b| b.name().to_owned()))
            .unwrap_or_else(|| "blockops".into());
        add(&alias.pattern, &owner, &mut data);
    }
    json!({"object": "list", "data": data})
}
