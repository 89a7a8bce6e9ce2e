//! Every other `/v1/*` path (models, completions, embeddings, …): forwarded as is, bodies
//! streamed both ways, through the core's lifecycle (`pipeline/forward.rs`). This edge only
//! filters headers and converts bodies.

use crate::{
    backend,
    error::{ProxyError, Source},
    pipeline::AppState,
    pipeline::{self, FrontDoor, RequestCtx, forward::Forward},
};
use axum::{
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderName, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use std::net::SocketAddr;

/// Headers not forwarded: those that describe one hop, not the message (RFC 9110 §7.6.1), ones
/// we set ourselves, and the client's credentials.
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
    "content-length",
    // The client's credentials are for this proxy, never for the backend (UPSTREAM_API_KEY is).
    "authorization",
    "x-api-key",
    "api-key",
    "cookie",
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.as_str().eq_ignore_ascii_case(h))
}

pub async fn forward(State(state): State<AppState>, request: Request) -> Response {
    let settings = state.settings.current();
    let client_addr = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let mut ctx = RequestCtx::new(
        settings.clone(),
        request.uri().path(),
        client_addr,
        FrontDoor::Passthrough,
    );
    ctx.phases = super::timing::phases_of(request.extensions());
    let (parts, body) = request.into_parts();
    // A declared length over the limit is refused before a slot or the backend is involved.
    let limit = settings.max_body_bytes;
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        && len > limit as u64
    {
        return ProxyError::too_large(limit).into_response();
    }
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) {
            headers.append(name, value.clone());
        }
    }
    if let Some(len) = parts.headers.get(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, len.clone());
    }
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let lists_models = parts.method == axum::http::Method::GET
        && parts.uri.path().trim_end_matches('/') == "/v1/models";
    let forward = Forward {
        method: parts.method.clone(),
        target,
        headers,
        body: streamed(body, limit),
        limit,
    };
    match pipeline::forward::forward(&state, ctx, forward).await {
        Ok((response, exchange)) if lists_models && response.status().is_success() => {
            relay_models(response, exchange, &settings.backend_url).await
        }
        Ok((response, exchange)) => relay(response, exchange),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/models`, read whole (a model list is small) so that an empty answer can be named:
/// mlx_lm.server sends 200 and no body when the Hugging Face cache folder is missing, which a
/// client would otherwise report as a JSON parse error.
async fn relay_models(
    response: reqwest::Response,
    mut exchange: pipeline::forward::Exchange,
    backend: &str,
) -> Response {
    let builder = head_of(&response);
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            exchange.failed(StatusCode::BAD_GATEWAY.as_u16());
            return ProxyError::new(
                StatusCode::BAD_GATEWAY,
                Source::Upstream,
                "upstream_error",
                format!("reading {backend}/v1/models failed: {e}"),
            )
            .into_response();
        }
    };
    if backend::models_body(&body) == backend::ModelsBody::Empty {
        let message = backend::empty_models_message(backend);
        tracing::warn!("{message}");
        exchange.failed(StatusCode::BAD_GATEWAY.as_u16());
        return ProxyError::new(
            StatusCode::BAD_GATEWAY,
            Source::Upstream,
            "upstream_empty_models",
            message,
        )
        .into_response();
    }
    exchange.sent(body.len());
    builder
        .body(Body::from(body))
        .unwrap_or_else(|e| ProxyError::internal(e.to_string()).into_response())
}

/// The client's body as a stream for the backend, never buffered, bounded by the body limit.
fn streamed(body: Body, limit: usize) -> reqwest::Body {
    let data = http_body_util::Limited::new(body, limit);
    let stream = http_body_util::BodyStream::new(data).filter_map(|frame| {
        let item = match frame {
            Ok(f) => f
                .into_data()
                .ok()
                .map(Ok::<_, Box<dyn std::error::Error + Send + Sync>>),
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
    reqwest::Body::wrap_stream(body_stream)
}

/// The backend's response as it is; the slot and the record ride along with the body, and both
/// end when the body is done or the client goes away.
/// The backend's status and end-to-end headers, for the client's response.
fn head_of(response: &reqwest::Response) -> axum::http::response::Builder {
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut builder = Response::builder().status(status);
    for (name, value) in response.headers() {
        if !is_hop_by_hop(name) {
            builder = builder.header(name, value);
        }
    }
    builder
}

fn relay(response: reqwest::Response, mut exchange: pipeline::forward::Exchange) -> Response {
    let builder = head_of(&response);
    let body = response.bytes_stream().map(move |chunk| {
        if let Ok(c) = &chunk {
            exchange.sent(c.len());
        }
        chunk
    });
    builder
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| ProxyError::internal(e.to_string()).into_response())
}
