//! Every other `/v1/*` path (models, completions, embeddings, …): forwarded as is, bodies
//! streamed both ways. Generation endpoints take a slot at the gate, held until the response
//! body is fully sent or dropped.

use crate::{
    error::ApiError,
    pipeline::{self, admission::Entry, upstream},
    state::AppState,
};
use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderName, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use std::time::Duration;

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus ones we set ourselves.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "content-length",
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.as_str().eq_ignore_ascii_case(h))
}

/// Paths that make the backend generate, and so go through the gate.
fn is_generation(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "/v1/completions" | "/v1/embeddings" | "/v1/responses" | "/v1/messages"
    )
}

pub async fn forward(State(state): State<AppState>, request: Request) -> Response {
    let settings = state.settings.current();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let slot = if is_generation(&path) {
        let id = pipeline::ids::request_id(pipeline::ids::next_seed());
        match state.gate.enter(&id, "") {
            Ok(Entry::Admitted(slot)) => Some(slot),
            Ok(Entry::Queued(ticket)) => {
                let wait = Duration::from_secs_f64(settings.queue_timeout_secs);
                match tokio::time::timeout(wait, ticket.admitted()).await {
                    Ok(slot) => Some(slot),
                    Err(_) => {
                        state.hub.update(|s| s.rejections.queue_timeout += 1);
                        return ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            crate::error::Source::Proxy,
                            "queue_timeout",
                            format!(
                                "waited {} s for a free slot at the backend",
                                settings.queue_timeout_secs
                            ),
                        )
                        .with_retry_after(1)
                        .into_response();
                    }
                }
            }
            Err(pipeline::admission::Refused::QueueFull { max_queue }) => {
                state.hub.update(|s| s.rejections.queue_full += 1);
                return pipeline::queue_full(max_queue, settings.max_concurrent).into_response();
            }
        }
    } else {
        None
    };

    let backend = settings.backend_url.clone();
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let url = format!("{backend}{path}{query}");
    let mut upstream_request = state.client.request(parts.method.clone(), &url);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) {
            upstream_request = upstream_request.header(name, value);
        }
    }
    if let Some(key) = &settings.upstream_api_key {
        upstream_request = upstream_request.bearer_auth(key);
    }
    if let Some(len) = parts.headers.get(header::CONTENT_LENGTH) {
        upstream_request = upstream_request.header(header::CONTENT_LENGTH, len);
    }
    // Stream the client's body to the backend without buffering it, bounded by the body limit.
    let limit = settings.max_body_bytes;
    let mut seen = 0usize;
    let data = http_body_util::Limited::new(body, limit);
    let stream = http_body_util::BodyStream::new(data).filter_map(move |frame| {
        let item = match frame {
            Ok(f) => f.into_data().ok().map(|d| {
                seen += d.len();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(d)
            }),
            Err(e) => Some(Err(e)),
        };
        async move { item }
    });
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    // reqwest wants a `Sync` body stream; a channel decouples the two without buffering more
    // than a few frames.
    tokio::spawn(async move {
        futures_util::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            if tx.send(item).await.is_err() {
                break;
            }
        }
    });
    let body_stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
    upstream_request = upstream_request.body(reqwest::Body::wrap_stream(body_stream));

    let first_byte = Duration::from_secs_f64(settings.first_byte_timeout_secs);
    let response = match tokio::time::timeout(first_byte, upstream_request.send()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            if std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("length limit"))
            {
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    crate::error::Source::Client,
                    "request_too_large",
                    format!(
                        "the request body is larger than {limit} bytes (BLOCKOPS_MAX_BODY_BYTES)"
                    ),
                )
                .into_response();
            }
            return upstream::classify(&e, &backend, settings.connect_timeout_secs).into_response();
        }
        Err(_) => {
            return upstream::timeout(&backend, "first byte", settings.first_byte_timeout_secs)
                .into_response();
        }
    };
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut builder = Response::builder().status(status);
    for (name, value) in response.headers() {
        if !is_hop_by_hop(name) {
            builder = builder.header(name, value);
        }
    }
    // The slot rides along with the body: freed when the body is done or the client goes away.
    let body = response.bytes_stream().map(move |chunk| {
        let _held = &slot;
        chunk
    });
    builder
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
}
