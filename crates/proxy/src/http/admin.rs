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
            state
                .gate
                .resize(settings.max_concurrent, settings.max_queue);
            state.hub.update(|s| s.apply_settings(&settings));
            state.hub.publish(ProxyEvent::SettingsChanged { keys });
            Json(settings.to_public_json()).into_response()
        }
        Err(e) => {
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
    // Any body (or none) is fine: the purge takes no options.
    drop(request);
    let outcome = {
        let _wait = phases.upstream();
        crate::pipeline::purge::purge(&state, None).await
    };
    let mut body = serde_json::to_value(&outcome).unwrap_or_default();
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
