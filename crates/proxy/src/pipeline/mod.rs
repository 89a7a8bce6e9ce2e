//! The core: one request lifecycle for every front door, in the core's own language.
//!
//! A front door (in `http/`) turns its protocol's request into a [`ChatRequest`] (an OpenAI Chat
//! body, which is what every backend speaks), calls [`serve`], and renders the [`Reply`]: a
//! stream of protocol-neutral [`reply::Frame`]s, or their [`reply::Fold`]. Nothing here knows a
//! client's wire format, and nothing here imports `axum` or `http` (checked by
//! `tests/architecture.rs`).
//!
//! [`run`] is the lifecycle, one call per stage:
//!
//! ```text
//! refuse (memory) → route (open.rs, route.rs) → reset, context (shaping/apply.rs)
//!   → open: start a managed backend, admit, notices, send; fall back before any reply byte
//!     (open.rs, managed.rs, admission.rs, upstream.rs)
//!   → pump: decode, translate, emit (pump.rs, translate.rs, sink.rs) → record (record.rs)
//! ```
//!
//! Shaping's first part runs before admission: a session reset's purge takes every slot itself,
//! and a request that cannot fit is refused at once rather than after its wait in the queue.
//! The memory notice is taken after admission, from the sample current when the request
//! actually goes to the backend.
//!
//! The backend is always asked for a stream; a streaming client gets the events as they come,
//! a non-streaming one their fold. Each request runs in its own task, which ends as soon as the
//! client goes away: dropping the task's future drops the upstream response, so the backend sees
//! the connection close and stops generating, and the slot guard frees the slot.
//!
//! Streaming clients: the response starts once the request is queued, the backend has answered
//! with a success status, or half a second has passed, whichever is first. An error before that
//! keeps its HTTP status; after it, it is the stream's last frame.

pub mod admission;
pub mod context;
pub mod conversations;
pub mod forward;
pub mod ids;
pub mod managed;
pub mod models;
mod open;
pub mod phases;
pub mod pump;
pub mod purge;
pub mod record;
pub mod reply;
pub mod route;
pub mod shaping;
pub mod sink;
pub mod sse;
pub mod state;
pub mod stop;
pub mod translate;
pub mod upstream;

pub use admission::{queue_full, queue_timeout};
pub use context::{FrontDoor, RequestCtx};
pub use state::{AppState, Tasks};

use crate::{
    backend::tokenize,
    error::{ProxyError, Source, StatusCode},
    observe::ProxyEvent,
};
use futures_util::FutureExt;
use reply::{Event, FinishReason, Fold, Frame};
use serde_json::{Map, Value};
use shaping::{apply::AfterReset, estimate::Measure};
use sink::{Failure, Head, Sink};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use translate::{TransformSpec, Translator};

/// How long a streaming client may wait before its response starts anyway.
const COMMIT_AFTER: Duration = Duration::from_millis(500);

/// A request in the core's terms: an OpenAI Chat body, forwarded to the backend after shaping.
#[derive(Debug)]
pub struct ChatRequest {
    pub body: Map<String, Value>,
    /// What the client sent, when it is not `body` itself (another front door's protocol);
    /// recorded as the request, with `body` beside it.
    pub client_body: Option<Value>,
    /// Stop sequences the core matches itself, so the reply can say which one ended it (see
    /// `stop.rs`); not sent to the backend.
    pub stop_sequences: Vec<String>,
}

impl ChatRequest {
    /// A request whose client body is the chat body itself.
    pub fn chat(body: Map<String, Value>) -> ChatRequest {
        ChatRequest {
            body,
            client_body: None,
            stop_sequences: Vec::new(),
        }
    }
}

/// What [`serve`] answers.
#[derive(Debug)]
pub enum Reply {
    /// Frames as they come; the response may start now.
    Stream(mpsc::Receiver<Frame>),
    /// The whole reply.
    Whole(Fold),
}

/// What the core learned while serving one request; becomes the record.
#[derive(Debug)]
pub struct Exchange {
    pub ctx: RequestCtx,
    /// The body for the backend (shaped in place).
    pub body: Map<String, Value>,
    /// What the client sent, kept once `body` stops being it.
    pub client_body: Option<Value>,
    /// `body` differs from what the client sent beyond the streaming switches.
    pub upstream_differs: bool,
    pub translator: Option<Translator>,
    /// What shaping decided (the traffic log's `shaping` field).
    pub shaping: Option<Value>,
    /// The forwarded prompt as measured, to calibrate against the backend's `prompt_tokens`.
    pub measure: Option<Measure>,
    /// The model name the reply shows when it is not the backend's (an alias was asked for).
    pub reply_model: Option<String>,
    /// The request's stop sequences, when it has any.
    pub stop: Option<stop::StopMatcher>,
}

impl Exchange {
    /// Keeps the client's body for the record before `body` is changed.
    pub fn keep_client_body(&mut self) {
        if self.client_body.is_none() {
            self.client_body = Some(Value::Object(self.body.clone()));
        }
        self.upstream_differs = true;
    }
}

/// Serves one chat request. Streams when the body says `"stream": true`. For a stream it
/// returns once the response can start; for a whole reply, at its end. An `Err` means nothing
/// was sent yet: the front door answers with its status.
pub async fn serve(
    state: AppState,
    mut ctx: RequestCtx,
    request: ChatRequest,
) -> Result<Reply, ProxyError> {
    let ChatRequest {
        body,
        client_body,
        stop_sequences,
    } = request;
    ctx.model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    ctx.stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    state.hub.publish(ProxyEvent::Received {
        request_id: ctx.id.clone(),
        model: ctx.model.clone(),
        stream: ctx.stream,
        path: ctx.path.clone(),
    });
    state
        .hub
        .started(ctx.summary(crate::observe::RequestState::Queued));
    let stream = ctx.stream;
    let phases = ctx.phases.clone();
    let ex = Exchange {
        upstream_differs: client_body.is_some(),
        ctx,
        body,
        client_body,
        translator: None,
        shaping: None,
        measure: None,
        reply_model: None,
        stop: (!stop_sequences.is_empty()).then(|| stop::StopMatcher::new(stop_sequences)),
    };
    if stream {
        let (frames_tx, frames_rx) = mpsc::channel::<Frame>(64);
        let (head_tx, mut head_rx) = oneshot::channel();
        let sink = Sink::stream(frames_tx.clone(), head_tx, phases);
        let task_state = state.clone();
        let closed = async move { frames_tx.closed().await };
        // A streaming client has already been told everything through the sink. Spawned as
        // the future itself, not awaited inside another `async` block, which would hold it twice.
        state
            .tasks
            .spawn(drive(task_state, ex, sink, closed).map(drop));
        let head = tokio::select! {
            head = &mut head_rx => head.ok(),
            () = tokio::time::sleep(COMMIT_AFTER) => {
                // Closing first means a head sent in the same instant is still read here, and one
                // sent later comes back to the task, which then reports it in-band.
                head_rx.close();
                head_rx.try_recv().ok()
            }
        };
        return match head {
            Some(Head::Error(e)) => Err(e),
            _ => Ok(Reply::Stream(frames_rx)),
        };
    }

    let (done_tx, done_rx) = oneshot::channel();
    let (closed_tx, closed_rx) = oneshot::channel::<()>();
    let task_state = state.clone();
    state.tasks.spawn(async move {
        let closed = async move {
            let _ = closed_rx.await;
        };
        let _ = done_tx.send(drive(task_state, ex, Sink::whole(phases), closed).await);
    });
    // If this future is dropped (client gone), `closed_tx` drops and the task cancels itself.
    let result = done_rx.await;
    drop(closed_tx);
    match result {
        Ok(result) => result.map(Reply::Whole),
        Err(_) => Err(ProxyError::internal(
            "the request was cancelled while the proxy shut down",
        )),
    }
}

/// Runs one request to its end, ends the reply, and records it. Returns the fold or the error.
async fn drive(
    state: AppState,
    mut ex: Exchange,
    mut sink: Sink,
    client_closed: impl std::future::Future<Output = ()>,
) -> Result<Fold, ProxyError> {
    let result = tokio::select! {
        r = run(&state, &mut ex, &mut sink) => r,
        () = client_closed => Err(Failure::ClientGone),
    };
    let error = match result {
        Ok(()) => None,
        Err(Failure::Api(e)) => Some(e),
        Err(Failure::ClientGone) => Some(ProxyError::new(
            // 499: the client closed the request (nginx's convention, widely understood).
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Source::Client,
            "client_closed",
            "the client closed the connection",
        )),
    };
    // Recorded before the client hears the end: whoever sees a reply finish (a client, a test)
    // finds it in the metrics, the dashboard and the log's queue.
    let status = error.as_ref().map_or(200, |e| e.status.as_u16());
    let fold = std::mem::take(&mut sink.fold);
    let recorded_error = error.as_ref().filter(|e| e.code != "client_closed");
    record::record(&state.hub, ex, &fold, status, recorded_error);
    sink.end(error.as_ref()).await;
    match error {
        None => Ok(fold),
        Some(e) => Err(e),
    }
}

/// The lifecycle: each line is one stage.
async fn run(state: &AppState, ex: &mut Exchange, sink: &mut Sink) -> Result<(), Failure> {
    if state.memory.latest().pressure_under(&ex.ctx.settings)
        == crate::observe::memory::Pressure::Critical
    {
        // Idle model servers go before any request is refused for memory.
        Box::pin(state.managed.relieve(state, None)).await;
    }
    if let Some(refusal) = state.memory.refusal(&state.hub, &ex.ctx.settings) {
        return Err(refusal.into());
    }
    let route = open::route_request(state, ex)?;
    if let AfterReset::Answer(line) = Box::pin(shaping::apply::reset(state, ex)).await {
        return answer_reset(ex, sink, line).await;
    }
    Box::pin(shaping::apply::context(state, ex)).await?;
    let settings = ex.ctx.settings.clone();
    let spec =
        TransformSpec::from_request(&ex.body, &settings.parser_formats, settings.reasoning_field);
    ex.translator = Some(Translator::new(spec, ex.ctx.seed));
    // The stages before the reply are boxed: their futures are freed once done, so a task that
    // streams holds only the pump's (the task's size is the largest stage's, ~13 KB unboxed).
    let opened = Box::pin(open::open(state, ex, sink, &route)).await?;
    sink.commit();
    let settings = opened.backend.settings.clone();
    let phases = ex.ctx.phases.clone();
    let call = open::call_to(state, &settings, &phases);
    let watchers = pump::Watchers {
        gate: &opened.backend.gate,
        hub: &state.hub,
    };
    pump::pump(
        ex,
        &call,
        opened.response,
        &opened.deadlines,
        sink,
        &watchers,
    )
    .await?;
    calibrate(state, ex, &sink.fold);
    Ok(())
}

/// The backend's count of the prompt teaches the estimate its bytes per token.
fn calibrate(state: &AppState, ex: &Exchange, fold: &Fold) {
    if let (Some(measure), Some(prompt)) = (
        ex.measure,
        fold.usage.as_ref().and_then(|u| u.prompt_tokens),
    ) {
        state
            .calibration
            .observe(&ex.ctx.settings.backend_url, &ex.ctx.model, measure, prompt);
    }
}

/// The proxy's own reply to a bare `/new`: what was purged, as the reply's text.
async fn answer_reset(ex: &mut Exchange, sink: &mut Sink, line: String) -> Result<(), Failure> {
    let created = ex
        .ctx
        .time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let meta = reply::Meta {
        id: Some(format!("chatcmpl-{}", ex.ctx.id.trim_start_matches("req_")).into()),
        created: Some(created.into()),
        model: Some(ex.ctx.model.clone().into()),
        system_fingerprint: None,
    };
    sink.send([
        Event::Meta(meta.into()),
        Event::Text {
            choice: 0,
            text: line,
        },
        Event::Finish {
            choice: 0,
            reason: FinishReason::Stop,
        },
    ])
    .await
}

/// Prompt tokens of an OpenAI chat body: the backend's tokenizer where it has one, else the
/// calibrated estimate. The backend is the one its model routes to (the first one, if none).
pub async fn count_tokens(state: &AppState, body: &Map<String, Value>) -> u64 {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let backend = state
        .backends
        .route(model, || route::session_key(&[], body))
        .ok()
        .and_then(|r| r.chain.first().cloned())
        .or_else(|| state.backends.any());
    let name = backend
        .as_ref()
        .map(|b| b.name().to_owned())
        .unwrap_or_default();
    if let Some(c) = count_with_tokenizer(state, body, &name).await {
        return c.tokens;
    }
    let settings = backend.map_or_else(|| state.settings.current(), |b| b.settings.clone());
    let ratio = state
        .calibration
        .bytes_per_token(&settings.backend_url, model);
    shaping::estimate::measure_request(body).tokens(ratio)
}

/// The backend's own count of a prompt, where the kind of backend `backend` (configured, or
/// found by the health probe) has a tokenizer.
pub async fn count_with_tokenizer(
    state: &AppState,
    body: &Map<String, Value>,
    backend: &str,
) -> Option<tokenize::Counted> {
    let (settings, kind) = match state.backends.get(backend) {
        Some(b) if !b.settings.single_backend() || b.config.kind != "auto" => {
            (b.settings.clone(), b.kind())
        }
        // One backend, kind found by the probe: what the dashboard shows.
        _ => (
            state.settings.current(),
            state.hub.snapshot().borrow().backend.kind.clone(),
        ),
    };
    tokenize::count(&state.client, &settings, &kind, body).await
}
