//! The OpenAI Chat Completions front door, `POST /v1/chat/completions`: validate the body, hand
//! it to the core, render the reply (`render.rs`).

pub mod render;

use crate::{
    error::ProxyError,
    http::stream::sse_response,
    pipeline::AppState,
    pipeline::{self, ChatRequest, FrontDoor, Reply},
};
use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use render::{ChatStyle, ChunkWriter};
use serde_json::{Map, Value};
use std::time::Duration;

pub async fn chat_completions(State(state): State<AppState>, request: Request) -> Response {
    let (ctx, parts, bytes) = super::receive(&state, request, FrontDoor::Chat).await;
    let request_id = ctx.id.clone();
    let body = match bytes.and_then(|b| parse_chat_body(&parts.headers, &b)) {
        Ok(body) => body,
        Err(e) => return with_request_id(e.into_response(), &request_id),
    };
    let settings = &ctx.settings;
    let style = ChatStyle {
        reasoning_field: settings.reasoning_field,
        include_usage: body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let heartbeat = Duration::from_secs_f64(settings.heartbeat_interval_secs);
    let response = match pipeline::serve(state, ctx, ChatRequest::chat(body)).await {
        Ok(Reply::Stream(frames)) => sse_response(frames, heartbeat, ChunkWriter::new(style)),
        Ok(Reply::Whole(fold)) => axum::Json(render::completion(&fold, style)).into_response(),
        Err(e) => e.into_response(),
    };
    with_request_id(response, &request_id)
}

/// Every reply names its request, so a user can find it in the dashboard and the log.
pub fn with_request_id(mut response: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Reads a request body up to `limit` bytes; more is a 413 that names the limit.
pub async fn read_body(body: axum::body::Body, limit: usize) -> Result<bytes::Bytes, ProxyError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            ProxyError::too_large(limit)
        } else {
            ProxyError::client(
                "invalid_body",
                format!("could not read the request body: {e}"),
            )
        }
    })
}

/// Checks the body of a chat request and returns its JSON object, untouched.
pub fn parse_chat_body(
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<Map<String, Value>, ProxyError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let mime = ct.split(';').next().unwrap_or("").trim();
        // `curl -d` sends form encoding by default; its body is still JSON, so it is accepted.
        let accepted = mime == "application/json"
            || mime.ends_with("+json")
            || mime == "application/x-www-form-urlencoded"
            || mime.is_empty();
        if !accepted {
            return Err(ProxyError::client(
                "unsupported_content_type",
                format!(
                    "unsupported Content-Type {mime:?}: send the request as JSON with Content-Type: application/json"
                ),
            ));
        }
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ProxyError::client(
            "invalid_encoding",
            format!(
                "the request body is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ),
        )
    })?;
    let body = super::json_object(
        text.as_bytes(),
        "send a JSON object with \"model\" and \"messages\"",
    )?;
    match body.get("messages") {
        None => Err(ProxyError::client(
            "missing_messages",
            "the request has no \"messages\": send an array of chat messages",
        )
        .with_param("messages")),
        Some(Value::Array(_)) => Ok(body),
        Some(_) => Err(ProxyError::client(
            "invalid_messages",
            "\"messages\" must be an array of chat messages",
        )
        .with_param("messages")),
    }
    .and_then(|body| {
        if let Some(stream) = body.get("stream")
            && !stream.is_boolean()
            && !stream.is_null()
        {
            return Err(
                ProxyError::client("invalid_stream", "\"stream\" must be true or false")
                    .with_param("stream"),
            );
        }
        Ok(body)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(ct: Option<&str>, body: &[u8]) -> Result<Map<String, Value>, ProxyError> {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        }
        parse_chat_body(&h, body)
    }

    #[test]
    fn bad_bodies_are_named() {
        let cases: &[(Option<&str>, &[u8], &str)] = &[
            (Some("application/json"), b"{", "not valid JSON"),
            (Some("text/plain"), b"{}", "Content-Type"),
            (None, b"[1]", "JSON object"),
            (None, b"{\"model\":\"m\"}", "no \"messages\""),
            (None, b"{\"messages\":{}}", "must be an array"),
            (None, b"\xff\xfe", "UTF-8"),
            (None, b"", "empty"),
        ];
        for (ct, body, needle) in cases {
            let e = parse(*ct, body).unwrap_err();
            assert_eq!(e.status, crate::error::StatusCode::BAD_REQUEST);
            assert!(
                e.message.contains(needle),
                "{:?} → {}",
                String::from_utf8_lossy(body),
                e.message
            );
        }
    }

    #[test]
    fn unknown_fields_survive() {
        let body = parse(
            Some("application/json"),
            br#"{"messages":[],"x_custom":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(body["x_custom"]["a"], 1);
    }
}
