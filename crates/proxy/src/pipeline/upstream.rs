//! Upstream: the HTTP client to the backend, and how its failures become [`ProxyError`]s.

use crate::error::StatusCode;
use crate::{
    config::Settings,
    error::{ProxyError, Source},
};
use bytes::Bytes;
use std::time::Duration;

/// Builds the one shared client: pooled connections, `TCP_NODELAY` (Nagle would hold small SSE
/// writes back by tens of milliseconds), no overall timeout (streams are long; the pipeline
/// enforces first-byte, idle and total timeouts itself).
pub fn client(settings: &Settings) -> reqwest::Client {
    // reqwest is built without a default TLS provider (ring keeps builds fast); install it once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs_f64(settings.connect_timeout_secs))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .no_proxy()
        .build()
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not build the configured HTTP client; using defaults");
            reqwest::Client::new()
        })
}

/// A failure to reach the backend or to get an answer in time.
pub fn classify(error: &reqwest::Error, backend: &str, timeout_secs: f64) -> ProxyError {
    if error.is_timeout() {
        return timeout(backend, "connect", timeout_secs);
    }
    if error.is_connect() {
        let cause = root_cause(error);
        return ProxyError::new(
            StatusCode::BAD_GATEWAY,
            Source::Upstream,
            "backend_unreachable",
            format!(
                "could not connect to the backend at {backend} ({cause}); is the model server running? \
                 Set BACKEND_URL (or backend_url in the dashboard) to its address"
            ),
        );
    }
    ProxyError::new(
        StatusCode::BAD_GATEWAY,
        Source::Upstream,
        "backend_error",
        format!(
            "the connection to the backend at {backend} failed: {}",
            root_cause(error)
        ),
    )
}

/// The backend took longer than a configured limit.
pub fn timeout(backend: &str, what: &str, secs: f64) -> ProxyError {
    let (setting, hint) = match what {
        "first byte" => (
            "FIRST_BYTE_TIMEOUT_SECS",
            "the model may still be loading or the prompt is very long",
        ),
        "idle" => ("IDLE_TIMEOUT_SECS", "the backend stopped sending"),
        "total" => ("TOTAL_TIMEOUT_SECS", "the whole request took too long"),
        _ => (
            "CONNECT_TIMEOUT_SECS",
            "the backend did not accept the connection",
        ),
    };
    ProxyError::new(
        StatusCode::GATEWAY_TIMEOUT,
        Source::Upstream,
        "backend_timeout",
        format!(
            "the backend at {backend} did not answer within {secs} s ({what} timeout: {hint}; raise {setting} if this is expected)"
        ),
    )
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Reads an error response body, bounded so a hostile backend cannot make us buffer gigabytes.
pub async fn error_body(response: reqwest::Response) -> Bytes {
    const LIMIT: usize = 64 * 1024;
    let mut response = response;
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = LIMIT.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= LIMIT {
            break;
        }
    }
    Bytes::from(body)
}

/// The backend's answer to a request, as an error if its status says so.
pub async fn check_status(
    response: reqwest::Response,
    backend: &str,
) -> Result<reqwest::Response, ProxyError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = error_body(response).await;
    let mut e = ProxyError::upstream_status(status, body, backend);
    e.retry_after_secs = retry_after;
    Err(e)
}
