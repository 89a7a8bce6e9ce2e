//! Errors in Anthropic's shape: `{"type":"error","error":{"type":…,"message":…}}`, with the
//! statuses Anthropic uses, so the SDKs raise the right exception and Claude Code retries what
//! it should (529 and 429 with `Retry-After`, 5xx) and shows the rest.

use crate::error::ProxyError;
use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// Anthropic's "overloaded" status; Claude Code retries it with backoff.
const OVERLOADED: u16 = 529;

/// The status and `error.type` Anthropic would answer for this error.
pub fn classify(e: &ProxyError) -> (StatusCode, &'static str) {
    // The proxy protecting the backend (queue full or timed out, memory critical) is what
    // Anthropic calls overloaded.
    if matches!(e.code, "queue_full" | "queue_timeout" | "memory_pressure") {
        return (overloaded(), "overloaded_error");
    }
    let (status, kind) = match e.status.as_u16() {
        400 | 422 => (400, "invalid_request_error"),
        401 => (401, "authentication_error"),
        403 => (403, "permission_error"),
        404 => (404, "not_found_error"),
        413 => (413, "request_too_large"),
        429 => (429, "rate_limit_error"),
        503 | 529 => (OVERLOADED, "overloaded_error"),
        504 => (504, "timeout_error"),
        // A client error without a Messages equivalent (405, 409, 499 …) is still the caller's.
        s if (400..500).contains(&s) => (400, "invalid_request_error"),
        _ => (500, "api_error"),
    };
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        kind,
    )
}

fn overloaded() -> StatusCode {
    StatusCode::from_u16(OVERLOADED).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

/// The error object (`{"type":"error","error":{…}}`); also the data of a mid-stream `error` event.
pub fn body(e: &ProxyError) -> Value {
    let (_, kind) = classify(e);
    json!({"type": "error", "error": {"type": kind, "message": e.message}})
}

/// The whole HTTP response for an error before anything was sent.
pub fn response(e: &ProxyError) -> Response {
    let (status, _) = classify(e);
    let mut r = (status, Json(body(e))).into_response();
    if let Some(secs) = e.retry_after_secs {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Source;

    fn e(status: u16, code: &'static str) -> ProxyError {
        ProxyError::new(
            StatusCode::from_u16(status).unwrap(),
            Source::Proxy,
            code,
            "why and how to fix",
        )
    }

    #[test]
    fn statuses_and_types_are_anthropics() {
        for (status, code, want_status, want_type) in [
            (400, "invalid_json", 400, "invalid_request_error"),
            (401, "missing_api_key", 401, "authentication_error"),
            (403, "origin_not_allowed", 403, "permission_error"),
            (404, "not_found", 404, "not_found_error"),
            (413, "request_too_large", 413, "request_too_large"),
            (429, "queue_full", 529, "overloaded_error"),
            (503, "memory_pressure", 529, "overloaded_error"),
            (504, "queue_timeout", 529, "overloaded_error"),
            (429, "rate_limited", 429, "rate_limit_error"),
            (502, "backend_unreachable", 500, "api_error"),
            (504, "backend_timeout", 504, "timeout_error"),
            (500, "internal_error", 500, "api_error"),
        ] {
            let err = e(status, code);
            let (s, t) = classify(&err);
            assert_eq!((s.as_u16(), t), (want_status, want_type), "{status} {code}");
            let b = body(&err);
            assert_eq!(b["type"], "error");
            assert_eq!(b["error"]["type"], want_type);
            assert_eq!(b["error"]["message"], "why and how to fix");
        }
    }

    #[test]
    fn retry_after_is_kept() {
        let r = response(&e(429, "queue_full").with_retry_after(3));
        assert_eq!(r.status().as_u16(), 529);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
    }
}
