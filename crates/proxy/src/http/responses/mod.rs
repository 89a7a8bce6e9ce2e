//! `POST /v1/responses`: the OpenAI Responses front door (Codex CLI, the OpenAI Agents SDK).
//!
//! The body becomes an OpenAI chat body (`request`), the core serves it, and the reply is
//! rendered as Responses events or one response object (`render`). Recent responses are kept
//! (`store`) so `previous_response_id` works and `GET`/`DELETE /v1/responses/{id}` and
//! `…/input_items` can answer (`stored`); stateless clients (Codex: `store: false`, the
//! whole history every turn) need none of it. Errors before the reply starts are OpenAI-shaped
//! HTTP errors, as on chat; after it, a `response.failed` event.

mod render;
mod request;
mod stored;

pub use stored::{delete, input_items, retrieve};

use crate::pipeline::conversations::Conversation;
use crate::{
    config::Settings,
    error::ProxyError,
    http::{chat::with_request_id, stream::sse_response},
    pipeline::AppState,
    pipeline::{self, ChatRequest, FrontDoor, Reply, RequestCtx},
};
use axum::{
    Json,
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use render::{Head, Keep, ResponsesEncoder, whole_response};
use serde_json::{Map, Value};
use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

pub async fn create(State(state): State<AppState>, request: Request) -> Response {
    let (mut ctx, _parts, bytes) = super::receive(&state, request, FrontDoor::Responses).await;
    let body = bytes.and_then(|b| parse_object(&b));
    // Codex names its conversation in the body; the chat body the core gets does not carry it.
    if let Ok(b) = &body
        && let Some(key) = b.get("prompt_cache_key").and_then(Value::as_str)
    {
        ctx.session_headers
            .push(("prompt_cache_key".into(), key.to_owned()));
    }
    let request_id = ctx.id.clone();
    let response = match body {
        Ok(body) => respond(state, ctx, body)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    };
    with_request_id(response, &request_id)
}

/// Another method on a Responses path: a 405 that names the methods served there.
pub async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let served = if path == "/v1/responses" {
        "send it with POST to create a response"
    } else if path.ends_with("/input_items") {
        "use GET to list the response's input items"
    } else {
        "use GET to retrieve the response or DELETE to forget it"
    };
    ProxyError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        crate::error::Source::Client,
        "method_not_allowed",
        format!("{method} {path} is not served: {served}"),
    )
    .into_response()
}

/// The body as a JSON object, or a 400 that says what is wrong with it.
fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ProxyError> {
    super::json_object(
        bytes,
        "send a JSON object such as {\"model\": \"…\", \"input\": \"Hello\"}",
    )
}

async fn respond(
    state: AppState,
    ctx: RequestCtx,
    body: Map<String, Value>,
) -> Result<Response, ProxyError> {
    request::validate(&body)?;
    let settings = ctx.settings.clone();
    let ttl = Duration::from_secs_f64(settings.responses_store_ttl_secs);
    let history = match body.get("previous_response_id").and_then(Value::as_str) {
        Some(id) => match state.responses.get(id, ttl) {
            Some(stored) => stored.conversation.clone(),
            None => {
                return Err(ProxyError::client(
                    "previous_response_not_found",
                    format!(
                        "{}; send the whole conversation as input instead",
                        not_kept(id, &settings)
                    ),
                )
                .with_param("previous_response_id"));
            }
        },
        None => Conversation::default(),
    };
    let converted = request::convert(&body, history)?;
    let keep = (converted.store && settings.responses_store_max > 0).then(|| Keep {
        store: state.responses.clone(),
        conversation: converted.conversation,
        input: Arc::from(request::input_items(&body)),
        max: settings.responses_store_max,
        ttl,
    });
    let head = Head {
        // The request id's own suffix, so a response and its traffic-log record match.
        id: format!("resp_{}", ctx.id.strip_prefix("req_").unwrap_or(&ctx.id)),
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        model: converted.model,
        echo: converted.echo,
        custom_tools: converted.custom_tools,
        store: converted.store,
        keep,
    };
    let interval = Duration::from_secs_f64(settings.heartbeat_interval_secs);
    let request = ChatRequest {
        body: converted.chat,
        client_body: Some(Value::Object(body)),
        stop_sequences: Vec::new(),
    };
    Ok(match pipeline::serve(state, ctx, request).await? {
        Reply::Stream(rx) => sse_response(rx, interval, ResponsesEncoder::new(head)),
        Reply::Whole(fold) => Json(whole_response(&head, &fold)).into_response(),
    })
}

/// Why a response id is not in the store: what blockops keeps. Each caller adds its own fix.
fn not_kept(id: &str, settings: &Settings) -> String {
    format!(
        "no stored response {id:?}: blockops keeps the last {} responses for {}s in memory (RESPONSES_STORE_MAX, RESPONSES_STORE_TTL_SECS), none sent with \"store\": false, none deleted, and none across restarts",
        settings.responses_store_max, settings.responses_store_ttl_secs
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_that_are_not_json_objects_are_named() {
        for (body, needle) in [
            (&b""[..], "empty"),
            (b"{", "not valid JSON"),
            (b"[1]", "JSON object"),
        ] {
            let e = parse_object(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.code, "invalid_json");
            assert!(e.message.contains(needle), "{}", e.message);
        }
    }
}
