//! Open: the stage between shaping and the pump. Route the request (aliases, affinity), then
//! on the route's backends in turn: start a managed backend if needed, take a slot, send the
//! request and wait for its head; fall back to the next backend only before any reply byte.

use super::{
    AppState, Exchange, admission, managed,
    reply::{Event, Notice},
    route,
    sink::{Failure, Sink},
    upstream::{self, Call, Deadlines},
};
use crate::{config, error::ProxyError, observe::ProxyEvent};
use serde_json::{Map, Value, json};

/// The request to a backend's chat endpoint, with its key and connect timeout.
pub(super) fn call_to<'a>(
    state: &'a AppState,
    settings: &'a config::Settings,
    phases: &'a std::sync::Arc<super::phases::Phases>,
) -> Call<'a> {
    Call {
        client: &state.client,
        backend: &settings.backend_url,
        path: "/v1/chat/completions",
        api_key: settings.upstream_api_key.as_deref(),
        connect_timeout_secs: settings.connect_timeout_secs,
        phases,
    }
}

/// Picks the backend (through the aliases; by affinity where several serve the model) and
/// runs the request on its settings from here on. An aliased request asks the backend for the
/// alias's target, and its reply names the model the client asked for.
pub(super) fn route_request(
    state: &AppState,
    ex: &mut Exchange,
) -> Result<route::Route, ProxyError> {
    let (headers, body) = (&ex.ctx.session_headers, &ex.body);
    let route = state
        .backends
        .route(&ex.ctx.model, || route::session_key(headers, body))?;
    let Some(primary) = route.chain.first() else {
        return Err(ProxyError::internal("a route without a backend"));
    };
    use_backend(state, ex, primary);
    if route.target != ex.ctx.model {
        ex.keep_client_body();
        ex.body
            .insert("model".into(), Value::String(route.target.clone()));
        ex.reply_model = Some(ex.ctx.model.clone());
    }
    Ok(route)
}

fn use_backend(state: &AppState, ex: &mut Exchange, backend: &route::Backend) {
    state.hub.routed(&ex.ctx.id, backend.name());
    ex.ctx.backend = backend.name().to_owned();
    ex.ctx.settings = backend.settings.clone();
    if !backend.settings.single_backend() {
        ex.ctx.phases.set_backend(backend.name());
    }
}

/// A backend that took the request: its slot, its reply's head, the limits it runs under.
pub(super) struct Opened {
    pub backend: std::sync::Arc<route::Backend>,
    pub _slot: admission::Slot,
    pub response: reqwest::Response,
    pub deadlines: Deadlines,
}

/// Admission and the request's head, on the route's backends in turn: the next one is tried
/// only when this one could not be reached or failed before any of its reply was read (see
/// [`upstream::falls_back`]). A full queue is an answer, not a failure.
pub(super) async fn open(
    state: &AppState,
    ex: &mut Exchange,
    sink: &mut Sink,
    route: &route::Route,
) -> Result<Opened, Failure> {
    let payload = upstream_payload(&mut ex.body)?;
    for (i, backend) in route.chain.iter().enumerate() {
        use_backend(state, ex, backend);
        let (slot, loading) = match admit_managed(state, ex, sink, backend).await {
            Ok(admitted) => admitted,
            Err(e) if e.code == "backend_start_failed" && route.chain.get(i + 1).is_some() => {
                let next = route.chain[i + 1].name().to_owned();
                fell_back(state, ex, backend.name(), &next, &e);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if i == 0 {
            ex.ctx.queue_ms = ex.ctx.elapsed_ms();
            state.hub.publish(ProxyEvent::Admitted {
                request_id: ex.ctx.id.clone(),
                queue_ms: ex.ctx.queue_ms,
            });
            take_notices(state, ex, sink);
        }
        let settings = backend.settings.clone();
        let phases = ex.ctx.phases.clone();
        let call = call_to(state, &settings, &phases);
        // A managed backend's load time counts against its start timeout, not the request's.
        let deadlines = Deadlines::new(&settings, ex.ctx.received + loading);
        match call.send(call.post_json(payload.clone()), &deadlines).await {
            Ok(response) => {
                return Ok(Opened {
                    backend: backend.clone(),
                    _slot: slot,
                    response,
                    deadlines,
                });
            }
            Err(e) if upstream::falls_back(&e) => {
                if matches!(e.code, "backend_unreachable" | "backend_timeout") {
                    state.backends.failed(backend.name(), &e.message);
                }
                let Some(next) = route.chain.get(i + 1) else {
                    return Err(e.into());
                };
                fell_back(state, ex, backend.name(), next.name(), &e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ProxyError::internal("a route without a backend").into())
}

/// Admission to `backend`, its process started first when blockops runs it (the request waits,
/// with heartbeats, while it loads). A managed backend stopped between the start and the slot
/// (a swap, ttl) is started again; returns the slot and how long loading took.
async fn admit_managed(
    state: &AppState,
    ex: &mut Exchange,
    sink: &mut Sink,
    backend: &std::sync::Arc<route::Backend>,
) -> Result<(admission::Slot, std::time::Duration), ProxyError> {
    let mut loading = std::time::Duration::ZERO;
    let mut told = false;
    // Bounded: each round is a start that succeeded and a stop between it and the slot.
    for _ in 0..4 {
        // Waiting for the start is waiting in the backend's queue, and shows there.
        let starting = (!state.managed.usable(backend))
            .then(|| backend.gate.starting(&ex.ctx.id, &ex.ctx.model));
        loading += state
            .managed
            .ensure(state, backend, async || {
                if !told {
                    told = true;
                    let _ = sink.queued(backend.gate.queued()).await;
                }
            })
            .await?;
        drop(starting);
        let slot = admission::admit(&backend.gate, &state.hub, &ex.ctx, async |depth| {
            if !told {
                let _ = sink.queued(depth).await;
            }
        })
        .await?;
        if state.managed.usable(backend) {
            return Ok((slot, loading));
        }
        drop(slot);
    }
    Err(managed::start_failed(
        backend.name(),
        "it was stopped again each time it had started (its group is busy swapping); retry shortly",
    ))
}

/// Says (log, events, the request's notices) that `from` failed and `to` takes over.
fn fell_back(state: &AppState, ex: &mut Exchange, from: &str, to: &str, e: &ProxyError) {
    let text = format!("backend {from:?} failed ({}); trying {to:?}", e.message);
    tracing::warn!(request_id = %ex.ctx.id, "{text}");
    state.hub.publish(ProxyEvent::Noticed {
        request_id: Some(ex.ctx.id.clone()),
        kind: crate::observe::NoticeKind::Backend,
        text,
    });
}

/// The notices of the moment of sending (memory as it is now) joined to shaping's, published,
/// and shown at the start of the reply when the settings say so.
fn take_notices(state: &AppState, ex: &mut Exchange, sink: &mut Sink) {
    let settings = &ex.ctx.settings;
    if let Some(text) = state.memory.latest().notice(settings) {
        ex.ctx.notices.push(Notice {
            kind: crate::observe::NoticeKind::Memory,
            text,
        });
    }
    if !settings.single_backend() {
        // With several backends, which one is short of context or purged is part of the news.
        let name = &ex.ctx.backend;
        for notice in &mut ex.ctx.notices {
            notice.text = format!("{} (backend {name:?})", notice.text);
        }
    }
    for notice in &ex.ctx.notices {
        let kind = notice.kind.as_str();
        tracing::info!(request_id = %ex.ctx.id, kind, "{}", notice.text);
        state.hub.publish(ProxyEvent::Noticed {
            request_id: Some(ex.ctx.id.clone()),
            kind: notice.kind,
            text: notice.text.clone(),
        });
    }
    if settings.notices == crate::config::NoticeMode::Content {
        sink.queue(ex.ctx.notices.iter().map(|n| Event::Notice {
            kind: n.kind,
            text: n.text.clone(),
        }));
    }
}

/// The body as the backend gets it: streaming (and usage in the stream) switched on, all else
/// as shaped.
fn upstream_payload(body: &mut Map<String, Value>) -> Result<Vec<u8>, ProxyError> {
    body.insert("stream".into(), Value::Bool(true));
    let options = body.entry("stream_options").or_insert_with(|| json!({}));
    if !options.is_object() {
        *options = json!({});
    }
    if let Some(o) = options.as_object_mut() {
        o.insert("include_usage".into(), Value::Bool(true));
    }
    serde_json::to_vec(body).map_err(|e| ProxyError::internal(e.to_string()))
}
