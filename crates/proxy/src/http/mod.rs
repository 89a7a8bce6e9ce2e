//! The HTTP edge: routes, extraction and validation. Handlers convert and call one function.

mod admin;
mod chat;
mod error;
pub mod guard;
pub mod messages;
mod passthrough;
pub mod responses;
pub mod stream;
pub mod timing;
mod ui;

/// Public for the fuzz targets and property tests (crates/proxy/fuzz).
pub use chat::parse_chat_body;

use crate::{
    backend,
    error::ProxyError,
    pipeline::{AppState, FrontDoor, RequestCtx},
};
use axum::{
    Json, Router,
    extract::State,
    response::{IntoResponse, Redirect, Response},
    routing::{any, get, patch, post},
};
use axum::{extract::ConnectInfo, http::request::Parts};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use std::net::SocketAddr;

/// What every front door does first: the request's context (settings in force, client address,
/// timing), its head, and its body read up to `BLOCKOPS_MAX_BODY_BYTES`.
pub async fn receive(
    state: &AppState,
    request: axum::extract::Request,
    door: FrontDoor,
) -> (RequestCtx, Parts, Result<Bytes, ProxyError>) {
    let settings = state.settings.current();
    let client_addr = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let (parts, body) = request.into_parts();
    let limit = settings.max_body_bytes;
    let mut ctx = RequestCtx::new(settings, parts.uri.path(), client_addr, door);
    ctx.phases = timing::phases_of(&parts.extensions);
    ctx.session_headers = session_headers(&parts.headers);
    let bytes = chat::read_body(body, limit).await;
    (ctx, parts, bytes)
}

/// The request body as a JSON object, or a 400 that says what is wrong and, by `example`
/// ("send a JSON object with …"), what to send instead.
pub fn json_object(bytes: &[u8], example: &str) -> Result<Map<String, Value>, ProxyError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ProxyError::client(
            "invalid_json",
            format!("the request body is empty: {example}"),
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ProxyError::client(
            "invalid_json",
            format!("the request body is not a JSON object: {example}"),
        )),
        Err(e) => Err(ProxyError::client(
            "invalid_json",
            format!("the request body is not valid JSON ({e}): {example}"),
        )),
    }
}

/// The whole router. Middleware that guards it (auth, host checks) wraps this in `server`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .merge(messages::routes())
        .route("/v1/models", get(models))
        .route(
            "/v1/responses",
            post(responses::create).fallback(responses::wrong_method),
        )
        .route(
            "/v1/responses/{id}",
            get(responses::retrieve)
                .delete(responses::delete)
                .fallback(responses::wrong_method),
        )
        .route(
            "/v1/responses/{id}/input_items",
            get(responses::input_items).fallback(responses::wrong_method),
        )
        .route("/v1/{*path}", any(passthrough::forward))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/admin/api/status", get(admin::status))
        .route("/admin/api/events", get(admin::events))
        .route("/admin/api/requests/{id}", get(admin::request))
        .route(
            "/admin/api/config",
            get(admin::config).merge(patch(admin::patch_config)),
        )
        .route("/admin/api/config/schema", get(admin::config_schema))
        .route("/admin/api/backend/test", post(admin::test_backend))
        .route("/admin/api/cache/purge", post(admin::purge_cache))
        .route("/admin/api/backends", get(admin::backends))
        .route(
            "/admin/api/backends/{name}",
            axum::routing::put(admin::put_backend).delete(admin::delete_backend),
        )
        .route(
            "/admin/api/backends/{name}/start",
            post(admin::start_backend),
        )
        .route("/admin/api/backends/{name}/stop", post(admin::stop_backend))
        .route(
            "/admin/api/aliases",
            get(admin::aliases).merge(axum::routing::put(admin::put_aliases)),
        )
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(ui::index))
        .route("/ui/{*path}", get(ui::file))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(timing::server_timing))
        .with_state(state)
}

/// The client's headers that identify a conversation (session affinity). Every front door puts
/// them in `RequestCtx::session_headers`.
pub fn session_headers(headers: &axum::http::HeaderMap) -> Vec<(String, String)> {
    crate::pipeline::route::SESSION_HEADERS
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?.to_str().ok()?;
            Some(((*name).to_owned(), value.to_owned()))
        })
        .collect()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ProxyError::not_found(format!(
        "no route for {}: the API is under /v1/ (e.g. POST /v1/chat/completions), the dashboard at /ui/",
        uri.path()
    ))
    .into_response()
}

/// `GET /v1/models`: with one backend, its own answer as it is; with several, their union and
/// the aliases.
async fn models(state: State<AppState>, request: axum::extract::Request) -> Response {
    if state.settings.current().single_backend() {
        return passthrough::forward(state, request).await;
    }
    Json(crate::pipeline::models::list(&state).await).into_response()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::observe::metrics::CONTENT_TYPE,
        )],
        state.hub.metrics().render(),
    )
        .into_response()
}

/// `GET /health`: the proxy is up; whether the backend answered.
async fn health(
    State(state): State<AppState>,
    phases: Option<axum::Extension<std::sync::Arc<timing::Phases>>>,
) -> Response {
    let settings = state.settings.current();
    let wait = phases.map(|p| p.upstream());
    let probe = backend::check(&state.client, &state.hub, &settings).await;
    drop(wait);
    if settings.api_key.is_some() {
        // With a key set, /health stays open but says nothing beyond up/down.
        return Json(json!({"status": "ok", "backend_up": probe.reachable})).into_response();
    }
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "backend_url": settings.backend_url,
        "backend_up": probe.reachable,
        "backend_kind": probe.kind.as_str(),
        "model_name": settings.model_name,
    }))
    .into_response()
}
