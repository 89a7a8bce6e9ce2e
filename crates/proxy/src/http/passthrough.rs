//! Every other `/v1/*` path (models, completions, embeddings, …): forwarded as is, bodies
//! streamed both ways. Generation endpoints take a slot at the gate, held until the response
//! body is fully sent or dropped.

use crate::{
    error::ProxyError,
    observe::{ProxyEvent, RequestRecord, Timings},
    pipeline::{self, RequestCtx, admission::Entry, upstream},
    state::AppState,
};
use axum::{
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderName, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::{net::SocketAddr, time::Duration};

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

/// The client's body went over the limit while it was being sent (the error is nested in
/// reqwest's and hyper's).
fn hit_length_limit(error: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() || e.to_string().contains("length limit") {
            return true;
        }
        cause = e.source();
    }
    false
}

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

/// Writes the traffic-log record of a forwarded request when the exchange ends, however it ends:
/// an early error, the body fully sent, or the client gone mid-body.
struct Recorded {
    state: AppState,
    ctx: Option<RequestCtx>,
    status: u16,
    error: Option<ProxyError>,
    bytes: u64,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        let Some(ctx) = self.ctx.take() else { return };
        let total_ms = ctx.elapsed_ms();
        let mut summary = ctx.summary(if self.status < 400 { "done" } else { "failed" });
        summary.status = Some(self.status);
        summary.duration_ms = Some(total_ms);
        self.state.hub.finished(RequestRecord {
            summary,
            client_addr: ctx.client_addr.map(|a| a.to_string()),
            request: Value::Null,
            output: json!({"bytes": self.bytes}),
            raw_text: None,
            trace: Value::Null,
            timings: Timings {
                queue_ms: ctx.queue_ms,
                ttft_ms: ctx.ttft_ms,
                total_ms,
            },
            usage: None,
            finish_reason: None,
            error: self.error.as_ref().map(ProxyError::body_json),
            shaping: None,
        });
    }
}

pub async fn forward(State(state): State<AppState>, request: Request) -> Response {
    let client_addr = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let mut ctx = RequestCtx::new(state.settings.current(), request.uri().path(), client_addr);
    ctx.phases = super::timing::phases_of(request.extensions());
    state.hub.publish(ProxyEvent::Received {
        request_id: ctx.id.clone(),
        model: ctx.model.clone(),
        stream: ctx.stream,
        path: ctx.path.clone(),
    });
    // Shown in the traffic table while it runs; generation waits at the gate first.
    let gated = is_generation(&ctx.path);
    state
        .hub
        .started(ctx.summary(if gated { "queued" } else { "running" }));
    let mut recorded = Recorded {
        state: state.clone(),
        ctx: Some(ctx),
        status: 0,
        error: None,
        bytes: 0,
    };
    match forward_inner(&state, request, &mut recorded).await {
        Ok(response) => response,
        Err(e) => {
            recorded.status = e.status.as_u16();
            recorded.error = Some(e.clone());
            e.into_response()
        }
    }
}

async fn forward_inner(
    state: &AppState,
    request: Request,
    recorded: &mut Recorded,
) -> Result<Response, ProxyError> {
    let settings = state.settings.current();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    // A declared length over the limit is refused before a slot or the backend is involved.
    let limit = settings.max_body_bytes;
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(ProxyError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            crate::error::Source::Client,
            "request_too_large",
            format!("the request body is larger than {limit} bytes (BLOCKOPS_MAX_BODY_BYTES)"),
        ));
    }
    let phases = recorded
        .ctx
        .as_ref()
        .map(|c| c.phases.clone())
        .unwrap_or_else(super::timing::Phases::new);
    let slot = if is_generation(&path) {
        let id = recorded
            .ctx
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or_default();
        let _queue_wait = phases.queue();
        if let Some(refusal) = crate::memory::refusal(state, &settings) {
            return Err(refusal);
        }
        let slot = match state.gate.enter(&id, "") {
            Ok(Entry::Admitted(slot)) => Some(slot),
            Ok(Entry::Queued(ticket)) => {
                let wait = Duration::from_secs_f64(settings.queue_timeout_secs);
                match tokio::time::timeout(wait, ticket.admitted()).await {
                    Ok(slot) => Some(slot),
                    Err(_) => {
                        state.hub.update(|s| s.rejections.queue_timeout += 1);
                        return Err(pipeline::queue_timeout(
                            settings.queue_timeout_secs,
                            settings.max_concurrent,
                        ));
                    }
                }
            }
            Err(pipeline::admission::Refused::QueueFull { max_queue }) => {
                state.hub.update(|s| s.rejections.queue_full += 1);
                return Err(pipeline::queue_full(max_queue, settings.max_concurrent));
            }
        };
        if let Some(ctx) = recorded.ctx.as_mut() {
            ctx.queue_ms = ctx.elapsed_ms();
            state.hub.publish(ProxyEvent::Admitted {
                request_id: ctx.id.clone(),
                queue_ms: ctx.queue_ms,
            });
        }
        slot
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
    let sent = {
        let _wait = phases.upstream();
        tokio::time::timeout(first_byte, upstream_request.send()).await
    };
    let response = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            if hit_length_limit(&e) {
                return Err(ProxyError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    crate::error::Source::Client,
                    "request_too_large",
                    format!(
                        "the request body is larger than {limit} bytes (BLOCKOPS_MAX_BODY_BYTES)"
                    ),
                ));
            }
            return Err(upstream::classify(
                &e,
                &backend,
                settings.connect_timeout_secs,
            ));
        }
        Err(_) => {
            return Err(upstream::timeout(
                &backend,
                "first byte",
                settings.first_byte_timeout_secs,
            ));
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
    if let Some(ctx) = recorded.ctx.as_mut() {
        ctx.ttft_ms = Some(ctx.elapsed_ms());
    }
    // The slot and the log record ride along with the body: both end when the body is done or
    // the client goes away.
    let mut record = Recorded {
        state: state.clone(),
        ctx: recorded.ctx.take(),
        status: status.as_u16(),
        error: None,
        bytes: 0,
    };
    let body = response.bytes_stream().map(move |chunk| {
        // Naming both whole values makes the closure own them (not just the fields it touches).
        let (_held, record) = (&slot, &mut record);
        if let Ok(c) = &chunk {
            record.bytes += c.len() as u64;
        }
        chunk
    });
    builder
        .body(Body::from_stream(body))
        .map_err(|e| ProxyError::internal(e.to_string()))
}
