//! The Anthropic Messages front door: `POST /v1/messages` and `POST /v1/messages/count_tokens`,
//! for Claude Code and the Anthropic SDKs. A codec at the edge: the body becomes an OpenAI
//! Chat request for the core (`request`), the core's reply becomes Messages events or one
//! `message` (`encode`), errors take Anthropic's shape (`error`); `stop_sequences` go to the
//! core, which matches them itself (`pipeline/stop.rs`).

pub mod encode;
pub mod error;
pub mod request;

use crate::{
    error::ProxyError,
    pipeline::{
        self, ChatRequest, FrontDoor, Reply, RequestCtx, shaping::estimate::measure_request,
        state::AppState,
    },
};
use axum::{
    Json, Router,
    extract::{Request, State},
    http::HeaderValue,
    response::{IntoResponse, Response},
    routing::post,
};
use encode::{Encoder, Head};
use request::{Converted, Purpose};
use serde_json::{Value, json};
use std::time::Duration;

/// Whether a path belongs to this door (its errors, refusals included, take Anthropic's shape).
pub fn is_messages_path(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}

/// The door's routes. Claude Code calls `/v1/messages?beta=true`: routing is on the path only.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/messages", post(create).fallback(wrong_method))
        .route(
            "/v1/messages/count_tokens",
            post(count_tokens).fallback(wrong_method),
        )
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error::response(&ProxyError::client(
        "method_not_allowed",
        format!(
            "{method} {} is not served: send the request with POST",
            uri.path()
        ),
    ))
}

async fn create(State(state): State<AppState>, request: Request) -> Response {
    match read(request, Purpose::Create, &state).await {
        Ok((ctx, converted, client_body)) => answer(state, ctx, converted, client_body).await,
        Err(e) => error::response(&e),
    }
}

/// `{"input_tokens": N}`: the backend's tokenizer where it has one, else the calibrated estimate.
async fn count_tokens(State(state): State<AppState>, request: Request) -> Response {
    match read(request, Purpose::Count, &state).await {
        Ok((_, converted, _)) => {
            let n = pipeline::count_tokens(&state, &converted.body).await;
            Json(json!({"input_tokens": n})).into_response()
        }
        Err(e) => error::response(&e),
    }
}

/// Reads, parses and converts the body; the request's context for the core.
async fn read(
    request: Request,
    purpose: Purpose,
    state: &AppState,
) -> Result<(RequestCtx, Converted, Value), ProxyError> {
    let (ctx, _, bytes) = super::receive(state, request, FrontDoor::Messages).await;
    let body = super::json_object(
        &bytes?,
        "send a JSON object with \"model\", \"max_tokens\" and \"messages\"",
    )?;
    let converted = request::convert(&body, purpose)?;
    Ok((ctx, converted, Value::Object(body)))
}

/// Runs the request through the core and renders its reply.
async fn answer(
    state: AppState,
    ctx: RequestCtx,
    converted: Converted,
    client_body: Value,
) -> Response {
    let Converted {
        body,
        model,
        stop_sequences,
        billing_headers_removed,
    } = converted;
    state
        .hub
        .metrics()
        .billing_headers_removed(billing_headers_removed);
    let settings = ctx.settings.clone();
    let bytes_per_token = state
        .calibration
        .bytes_per_token(&settings.backend_url, &model);
    let head = Head {
        id: Head::message_id(&ctx.id),
        model,
        input_tokens: measure_request(&body).tokens(bytes_per_token),
        bytes_per_token,
    };
    let request_id = ctx.id.clone();
    let heartbeat = Duration::from_secs_f64(settings.heartbeat_interval_secs);
    let reply = pipeline::serve(
        state,
        ctx,
        ChatRequest {
            body,
            client_body: Some(client_body),
            stop_sequences,
        },
    )
    .await;
    let response = match reply {
        Err(e) => error::response(&e),
        Ok(Reply::Whole(fold)) => Json(encode::message(&head, &fold)).into_response(),
        Ok(Reply::Stream(rx)) => {
            crate::http::stream::sse_response(rx, heartbeat, Encoder::new(head))
        }
    };
    with_request_id(response, &request_id)
}

/// Anthropic's SDKs read `request-id`; the dashboard and the chat door use `x-request-id`.
fn with_request_id(mut response: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        let h = response.headers_mut();
        h.insert("request-id", v.clone());
        h.insert("x-request-id", v);
    }
    response
}
