//! The core's one error type, classified by source. It knows no wire format beyond the JSON body
//! OpenAI clients expect; each front door in `http/` renders it (once) in its own shape.

use bytes::Bytes;
pub use reqwest::StatusCode;
use serde_json::json;
use std::fmt;

/// Who caused the error: decides the `type` field and how it is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something wrong: fixable by the caller.
    Client,
    /// The backend failed, refused, timed out or answered with an error.
    Upstream,
    /// The proxy itself is protecting the backend (queue full, memory) or failed.
    Proxy,
}

#[derive(Debug, Clone)]
pub struct ProxyError {
    pub status: StatusCode,
    pub source: Source,
    /// Machine-readable code, e.g. `invalid_json`, `backend_unreachable`.
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub retry_after_secs: Option<u64>,
    /// A backend's own JSON error body, relayed as it was sent.
    pub upstream_body: Option<Bytes>,
}

impl ProxyError {
    pub fn new(
        status: StatusCode,
        source: Source,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ProxyError {
            status,
            source,
            code,
            message: message.into(),
            param: None,
            retry_after_secs: None,
            upstream_body: None,
        }
    }

    pub fn client(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Source::Client, code, message)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// A body over `BLOCKOPS_MAX_BODY_BYTES`, however it was found out.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Source::Client,
            "request_too_large",
            format!("the request body is larger than {limit} bytes (BLOCKOPS_MAX_BODY_BYTES)"),
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, Source::Client, "not_found", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Source::Proxy,
            "internal_error",
            message,
        )
    }

    /// The backend answered with an error status: relay its status and body.
    pub fn upstream_status(status: StatusCode, body: Bytes, backend: &str) -> Self {
        let is_openai_error = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .is_some_and(|v| v.get("error").is_some_and(|e| e.is_object()));
        let text = String::from_utf8_lossy(&body);
        let snippet: String = text.chars().take(2_000).collect();
        let message = if snippet.trim().is_empty() {
            format!("the backend at {backend} answered {status} with an empty body")
        } else {
            format!(
                "the backend at {backend} answered {status}: {}",
                snippet.trim()
            )
        };
        ProxyError {
            status,
            source: Source::Upstream,
            code: "upstream_error",
            message,
            param: None,
            retry_after_secs: None,
            upstream_body: is_openai_error.then_some(body),
        }
    }

    /// `type` as OpenAI clients expect it.
    pub fn kind(&self) -> &'static str {
        match (self.source, self.status.as_u16()) {
            (_, 401) => "authentication_error",
            (_, 429) => "rate_limit_error",
            (Source::Client, _) => "invalid_request_error",
            (Source::Upstream, _) => "upstream_error",
            (Source::Proxy, _) => "server_error",
        }
    }

    pub fn body_json(&self) -> serde_json::Value {
        if let Some(v) = self
            .upstream_body
            .as_ref()
            .and_then(|b| serde_json::from_slice(b).ok())
        {
            return v;
        }
        json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}})
    }

    /// The error as the last SSE event of a stream that has already started, then `[DONE]`.
    pub fn sse_frames(&self) -> Bytes {
        let mut body = self.body_json();
        // Keep the status visible to a client that can only read the stream.
        if let Some(e) = body.get_mut("error").and_then(|e| e.as_object_mut()) {
            e.entry("status").or_insert(self.status.as_u16().into());
        }
        Bytes::from(format!("data: {body}\n\ndata: [DONE]\n\n"))
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ProxyError {}
