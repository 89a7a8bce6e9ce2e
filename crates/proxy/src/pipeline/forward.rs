//! The lifecycle of a request forwarded untranslated (completions, embeddings, models, …): the
//! same refusal, admission, upstream limits, events and record as chat, with bodies streamed
//! both ways and never buffered. The backend's answer, error statuses included, goes back as
//! it is.

use super::{
    AppState,
    admission::{self, Slot},
    context::RequestCtx,
    upstream::{Deadlines, classify},
};
use crate::{
    error::ProxyError,
    observe::{Hub, ProxyEvent, RequestRecord, RequestState, Timings},
};
use serde_json::{Value, json};

/// Paths that make the backend generate, and so go through the gate.
pub fn is_generation(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "/v1/completions" | "/v1/embeddings" | "/v1/responses" | "/v1/messages"
    )
}

/// A request to forward: everything but the body is already filtered by the edge.
#[derive(Debug)]
pub struct Forward {
    pub method: reqwest::Method,
    /// Path and query, as the client sent them.
    pub target: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: reqwest::Body,
    /// The body limit the edge enforces while streaming (to name it when it is hit).
    pub limit: usize,
}

/// Holds the slot and writes the record when the exchange ends, however it ends: an early
/// error, the body fully sent, or the client gone mid-body.
#[derive(Debug)]
pub struct Exchange {
    hub: Hub,
    ctx: Option<RequestCtx>,
    status: u16,
    error: Option<ProxyError>,
    bytes: u64,
    _slot: Option<Slot>,
}

impl Exchange {
    /// `n` more bytes of the backend's answer reached the client.
    pub fn sent(&mut self, n: usize) {
        self.bytes += n as u64;
    }

    /// The proxy answered `status` instead of the backend's answer (which it could not use).
    pub fn failed(&mut self, status: u16) {
        self.status = status;
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let Some(ctx) = self.ctx.take() else { return };
        let total_ms = ctx.elapsed_ms();
        let mut summary = ctx.summary(if self.status < 400 {
            RequestState::Done
        } else {
            RequestState::Failed
        });
        summary.status = Some(self.status);
        summary.duration_ms = Some(total_ms);
        self.hub.finished(RequestRecord {
            summary,
            client_addr: ctx.client_addr.map(|a| a.to_string()),
            // The body streamed through unread; what identifies the request is its path.
            request: Value::Null,
            upstream_request: None,
            output: json!({"bytes": self.bytes}),
            raw_text: None,
            trace: None,
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

/// Forwards one request. `Ok`: the backend's response (any status) and the exchange to carry
/// along with its body; `Err`: nothing came back, the request is already recorded.
pub async fn forward(
    state: &AppState,
    ctx: RequestCtx,
    request: Forward,
) -> Result<(reqwest::Response, Exchange), ProxyError> {
    state.hub.publish(ProxyEvent::Received {
        request_id: ctx.id.clone(),
        model: ctx.model.clone(),
        stream: ctx.stream,
        path: ctx.path.clone(),
    });
    // Shown in the traffic table while it runs; generation waits at the gate first.
    let gated = is_generation(&ctx.path);
    state.hub.started(ctx.summary(if gated {
        RequestState::Queued
    } else {
        RequestState::Running
    }));
    let mut exchange = Exchange {
        hub: state.hub.clone(),
        ctx: Some(ctx),
        status: 0,
        error: None,
        bytes: 0,
        _slot: None,
    };
    match send(state, &mut exchange, request, gated).await {
        Ok(response) => {
            exchange.status = response.status().as_u16();
            Ok((response, exchange))
        }
        Err(e) => {
            exchange.status = e.status.as_u16();
            exchange.error = Some(e.clone());
            Err(e)
        }
    }
}

async fn send(
    state: &AppState,
    exchange: &mut Exchange,
    request: Forward,
    gated: bool,
) -> Result<reqwest::Response, ProxyError> {
    let Some(ctx) = exchange.ctx.as_mut() else {
        return Err(ProxyError::internal("the exchange lost its request"));
    };
    // Untranslated bodies are not read, so they name no model to route by: they go to the
    // backend serving any model (with one backend, that one).
    let Some(backend) = state.backends.any() else {
        return Err(ProxyError::internal("no backend is configured"));
    };
    ctx.backend = backend.name().to_owned();
    state.hub.routed(&ctx.id, &ctx.backend);
    ctx.settings = backend.settings.clone();
    let settings = ctx.settings.clone();
    // A managed backend starts first (its load time is not the request's).
    let loading = state.managed.ensure(state, &backend, async || {}).await?;
    if gated {
        if let Some(refusal) = state.memory.refusal(&state.hub, &settings) {
            return Err(refusal);
        }
        let slot = admission::admit(&backend.gate, &state.hub, ctx, async |_| {}).await?;
        exchange._slot = Some(slot);
        ctx.queue_ms = ctx.elapsed_ms();
        state.hub.publish(ProxyEvent::Admitted {
            request_id: ctx.id.clone(),
            queue_ms: ctx.queue_ms,
        });
    }
    let backend = settings.backend_url.as_str();
    let mut upstream = state
        .client
        .request(request.method, format!("{backend}{}", request.target))
        .headers(request.headers)
        .body(request.body);
    if let Some(key) = &settings.upstream_api_key {
        upstream = upstream.bearer_auth(key);
    }
    let deadlines = Deadlines::new(&settings, ctx.received + loading);
    let sent = {
        let _wait = ctx.phases.upstream();
        deadlines.within(false, upstream.send()).await
    };
    let response = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if hit_length_limit(&e) => return Err(ProxyError::too_large(request.limit)),
        Ok(Err(e)) => return Err(classify(&e, backend, settings.connect_timeout_secs)),
        Err(t) => return Err(t.error(backend)),
    };
    ctx.ttft_ms = Some(ctx.elapsed_ms());
    Ok(response)
}

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
