//! The admin API under `/admin/api/`: what the dashboard and the tray app read and change.

use crate::{
    backend,
    config::normalize_backend_url,
    error::{ProxyError, Source},
    observe::ProxyEvent,
    pipeline::AppState,
};
use axum::{
    Json,
    extract::{Path, Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Snapshot events are sent at most this often, however busy the proxy is.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(250);

pub async fn status(State(state): State<AppState>) -> Response {
    Json(state.hub.current_snapshot()).into_response()
}

pub async fn request(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.hub.request(&id) {
        Some(record) => Json(&*record).into_response(),
        None => ProxyError::not_found(format!(
            "no request {id:?} among the last {} (GET /admin/api/status lists them)",
            crate::observe::RECENT_REQUESTS
        ))
        .into_response(),
    }
}

pub async fn config(State(state): State<AppState>) -> Response {
    Json(state.settings.current().to_public_json()).into_response()
}

/// `GET /admin/api/config/schema`: what each setting may be (type, bounds, unit, choices,
/// default, live or restart), from the table the server validates with. The dashboard builds
/// its settings form from it.
pub async fn config_schema() -> Response {
    Json(crate::config::schema()).into_response()
}

/// Reads a JSON object body (admin endpoints that change things accept nothing else).
async fn json_body(request: Request) -> Result<Value, ProxyError> {
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return Err(ProxyError::client(
            "unsupported_content_type",
            "send a JSON body with Content-Type: application/json",
        ));
    }
    let bytes = crate::http::chat::read_body(request.into_body(), 1 << 20).await?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ProxyError::client(
            "invalid_json",
            format!("the request body is not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ProxyError::client(
            "invalid_json",
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

pub async fn patch_config(State(state): State<AppState>, request: Request) -> Response {
    let patch = match json_body(request).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    match state.settings.patch(&patch).await {
        Ok((_, keys)) => {
            // Applied from the settings now in force, not this PATCH's: when two PATCHes race,
            // whichever handler gets here last applies the latest, so the gate never keeps a
            // stale limit.
            let settings = state.settings.current();
            // Every backend's gate takes the new limits (its own, where it has them).
            state.backends.sync();
            state.hub.update(|s| s.apply_settings(&settings));
            state.hub.publish(ProxyEvent::SettingsChanged { keys });
            Json(settings.to_public_json()).into_response()
        }
        Err(e) => config_error(e),
    }
}

/// A refused change: 400 naming what was wrong, or 500 when it could not be saved.
fn config_error(e: crate::config::PatchError) -> Response {
    let mut error = ProxyError::new(
        StatusCode::BAD_REQUEST,
        Source::Client,
        "invalid_config",
        e.message,
    );
    if e.param.is_none() {
        error.status = StatusCode::INTERNAL_SERVER_ERROR;
        error.source = Source::Proxy;
        error.code = "config_not_saved";
    }
    error.param = e.param;
    error.into_response()
}

/// `GET /admin/api/backends`: every backend with its state, slots and queue.
pub async fn backends(State(state): State<AppState>) -> Response {
    state.backends.sync();
    state.managed.publish_all(&state);
    let list = state.hub.current_snapshot().backends;
    Json(list).into_response()
}

/// A managed backend by name, or the answer saying why not.
fn managed_backend(
    state: &AppState,
    name: &str,
) -> Result<std::sync::Arc<crate::pipeline::route::Backend>, Box<Response>> {
    let Some(b) = state.backends.get(name) else {
        let names: Vec<String> = state
            .backends
            .list()
            .iter()
            .map(|b| b.name().to_owned())
            .collect();
        return Err(Box::new(
            ProxyError::not_found(format!(
                "no backend named {name:?}: expected one of {}",
                names.join(", ")
            ))
            .into_response(),
        ));
    };
    if b.config.managed.is_none() {
        return Err(ProxyError::client(
            "not_managed",
            format!(
                "backend {name:?} is not started by blockops: give its [[backends]] table a cmd (e.g. cmd = [\"llama-server\", \"-m\", \"model.gguf\", \"--port\", \"${{PORT}}\"]) to have it started and stopped"
            ),
        )
        .into_response()
        .into());
    }
    Ok(b)
}

fn backend_view(state: &AppState, name: &str) -> Response {
    state.managed.publish_all(state);
    let view = state
        .hub
        .current_snapshot()
        .backends
        .into_iter()
        .find(|b| b.name == name);
    Json(view).into_response()
}

/// `POST /admin/api/backends/{name}/start`: starts a managed backend; answers once it is ready
/// (its view) or has failed (503 with the process's last output line).
pub async fn start_backend(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let backend = match managed_backend(&state, &name) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match state.managed.ensure(&state, &backend, async || {}).await {
        Ok(_) => backend_view(&state, &name),
        Err(e) => e.into_response(),
    }
}

/// `POST /admin/api/backends/{name}/stop`: stops a managed backend (requests in flight are cut;
/// the next request starts it again).
pub async fn stop_backend(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    if let Err(r) = managed_backend(&state, &name) {
        return *r;
    }
    state.managed.stop(&state, &name).await;
    backend_view(&state, &name)
}

/// `PUT /admin/api/backends/{name}`: adds the backend or replaces it whole. Requests in flight
/// finish on its old settings.
pub async fn put_backend(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let mut body = match json_body(request).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    if let Some(given) = body.get("name").and_then(Value::as_str)
        && given != name
    {
        return ProxyError::client(
            "invalid_config",
            format!(
                "the body names backend {given:?} but the path {name:?}: rename by DELETE and PUT"
            ),
        )
        .with_param("name")
        .into_response();
    }
    body["name"] = json!(name);
    let backend = match crate::config::BackendConfig::from_json(&body, "backend") {
        Ok(b) => b,
        Err(e) => return config_error(e.into()),
    };
    let changed = state
        .settings
        .change_routes(|list, _| {
            match list.iter_mut().find(|b| b.name == backend.name) {
                Some(old) => *old = backend,
                None => list.push(backend),
            }
            Ok(())
        })
        .await;
    routes_changed(&state, changed, &name)
}

/// `DELETE /admin/api/backends/{name}`.
pub async fn delete_backend(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let changed = state
        .settings
        .change_routes(|list, _| {
            let before = list.len();
            list.retain(|b| b.name != name);
            if list.len() == before {
                return Err(crate::config::PatchError {
                    param: Some("name".into()),
                    message: format!(
                        "no backend named {name:?} (GET /admin/api/backends lists them)"
                    ),
                });
            }
            Ok(())
        })
        .await;
    routes_changed(&state, changed, "")
}

/// `GET /admin/api/aliases`: the aliases in the order they are tried.
pub async fn aliases(State(state): State<AppState>) -> Response {
    let list: Vec<Value> = state
        .settings
        .current()
        .aliases
        .iter()
        .map(|a| a.to_json())
        .collect();
    Json(list).into_response()
}

/// `PUT /admin/api/aliases`: the whole list, `[{"match": GLOB, "model": ID}, …]`, in order.
pub async fn put_aliases(State(state): State<AppState>, request: Request) -> Response {
    let bytes = match crate::http::chat::read_body(request.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let parsed = serde_json::from_slice::<Value>(&bytes)
        .map_err(|e| crate::config::ConfigError {
            key: "aliases".into(),
            message: format!("not valid JSON: {e}"),
        })
        .and_then(|v| crate::config::parse_tables(None, Some(&v)));
    let aliases = match parsed {
        Ok((_, a)) => a,
        Err(e) => return config_error(e.into()),
    };
    let changed = state
        .settings
        .change_routes(|_, list| {
            *list = aliases;
            Ok(())
        })
        .await;
    match changed {
        Ok(_) => {
            state.hub.publish(ProxyEvent::SettingsChanged {
                keys: vec!["aliases".into()],
            });
            aliases_now(&state)
        }
        Err(e) => config_error(e),
    }
}

fn aliases_now(state: &AppState) -> Response {
    let list: Vec<Value> = state
        .settings
        .current()
        .aliases
        .iter()
        .map(|a| a.to_json())
        .collect();
    Json(list).into_response()
}

/// After a change to the backends: gates and views follow, and the answer is the backend (or,
/// after a removal, the list).
fn routes_changed(
    state: &AppState,
    changed: Result<std::sync::Arc<crate::config::Settings>, crate::config::PatchError>,
    name: &str,
) -> Response {
    if let Err(e) = changed {
        return config_error(e);
    }
    state.backends.sync();
    state.hub.publish(ProxyEvent::SettingsChanged {
        keys: vec!["backends".into()],
    });
    let list = state.hub.current_snapshot().backends;
    match list.iter().find(|b| b.name == name) {
        Some(b) => Json(b).into_response(),
        None => Json(list).into_response(),
    }
}

pub async fn test_backend(State(state): State<AppState>, request: Request) -> Response {
    let phases = super::timing::phases_of(request.extensions());
    let body = match json_body(request).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let Some(url) = body.get("url").and_then(Value::as_str) else {
        return ProxyError::client("missing_url", "send {\"url\": \"http://host:port\"}")
            .with_param("url")
            .into_response();
    };
    let url = match normalize_backend_url(url) {
        Ok(u) => u,
        Err(m) => {
            return ProxyError::client("invalid_url", format!("url: {m}"))
                .with_param("url")
                .into_response();
        }
    };
    let settings = state.settings.current();
    let _wait = phases.upstream();
    Json(backend::probe(&state.client, &url, settings.upstream_api_key.as_deref()).await)
        .into_response()
}

/// `POST /admin/api/cache/purge`: the dashboard's button and the tray menu. The outcome's
/// fields (`adapter`, `status`, `message`, `duration_ms`) at the top level; `purged` and
/// `unsupported` are 200 (a backend without a purge endpoint is an answer, not an error), a
/// failure is 502 with the usual `error` object as well.
pub async fn purge_cache(State(state): State<AppState>, request: Request) -> Response {
    let phases = super::timing::phases_of(request.extensions());
    // Any body (or none) is fine; a JSON object may name one backend: {"backend": NAME}.
    let body = crate::http::chat::read_body(request.into_body(), 1 << 16)
        .await
        .unwrap_or_default();
    let name = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("backend").and_then(Value::as_str).map(str::to_owned));
    let outcomes = {
        let _wait = phases.upstream();
        crate::pipeline::purge::purge(&state, name.as_deref(), None).await
    };
    let outcomes = match outcomes {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let outcome = crate::pipeline::purge::combined(&outcomes);
    let mut body = serde_json::to_value(&outcome).unwrap_or_default();
    if outcomes.len() > 1
        && let Some(b) = body.as_object_mut()
    {
        b.insert("backends".into(), json!(outcomes));
    }
    if outcome.status != "failed" {
        return Json(body).into_response();
    }
    let error = ProxyError::new(
        StatusCode::BAD_GATEWAY,
        Source::Upstream,
        "purge_failed",
        format!("KV-cache purge failed: {}", outcome.message),
    );
    if let (Some(b), Some(e)) = (body.as_object_mut(), error.body_json().get("error")) {
        b.insert("error".into(), e.clone());
    }
    (StatusCode::BAD_GATEWAY, Json(body)).into_response()
}

/// `GET /admin/api/events`: the snapshot first, then live events and throttled snapshots.
pub async fn events(State(state): State<AppState>) -> Response {
    let hub = state.hub.clone();
    let mut events = hub.subscribe();
    let mut snapshots = hub.snapshot();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let first = frame(
        "snapshot",
        &serde_json::to_value(hub.current_snapshot()).unwrap_or_default(),
    );
    let stop = state.clone();
    // Not a request task: shutdown ends it instead of waiting for it.
    tokio::spawn(async move {
        if tx.send(first).await.is_err() {
            return;
        }
        let mut next_snapshot = tokio::time::Instant::now();
        let mut snapshot_due = false;
        loop {
            let wake = tokio::time::sleep_until(next_snapshot);
            let f = tokio::select! {
                () = tx.closed() => return,
                () = stop.stopped() => return,
                e = events.recv() => match e {
                    Ok(event) => frame("proxy", &serde_json::to_value(&event).unwrap_or_default()),
                    Err(RecvError::Lagged(missed)) => {
                        // The state now sums up what was missed: it follows at once, so the
                        // dashboard is whole again without waiting for the next change.
                        snapshot_due = false;
                        next_snapshot = tokio::time::Instant::now() + SNAPSHOT_EVERY;
                        snapshots.mark_unchanged();
                        let snapshot = serde_json::to_value(hub.current_snapshot()).unwrap_or_default();
                        let mut both = frame("lagged", &json!({"missed": missed})).to_vec();
                        both.extend_from_slice(&frame("snapshot", &snapshot));
                        Bytes::from(both)
                    }
                    Err(RecvError::Closed) => return,
                },
                changed = snapshots.changed(), if !snapshot_due => {
                    if changed.is_err() { return; }
                    snapshot_due = true;
                    continue;
                }
                () = wake, if snapshot_due => {
                    snapshot_due = false;
                    next_snapshot = tokio::time::Instant::now() + SNAPSHOT_EVERY;
                    snapshots.mark_unchanged();
                    frame("snapshot", &serde_json::to_value(hub.current_snapshot()).unwrap_or_default())
                }
            };
            if tx.send(f).await.is_err() {
                return;
            }
        }
    });
    let interval = Duration::from_secs_f64(state.settings.current().heartbeat_interval_secs);
    let mut response =
        crate::http::stream::sse_response(rx, interval, crate::http::stream::Rendered);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn frame(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}
