//! FRONT DOORS: the core interface a front door builds on (serve, Reply, FrontDoor, ChatRequest)
//! is described in ARCHITECTURE.md at the repository root; read it first.
//!
//! The request path for chat completions: admission → shaping → upstream → transform.
//!
//! Shaping comes in two parts. What needs no slot runs before admission: a memory refusal, a
//! session reset (its purge takes every slot itself, so it must not hold one) and the context
//! decision, so a request that cannot fit is refused at once rather than after its wait in the
//! queue. The memory notice is taken after admission, from the sample current when the request
//! actually goes to the backend.
//!
//! One pipeline serves both response modes. The backend is always asked for a stream; a
//! streaming client gets the transformed chunks as SSE, a non-streaming client gets their fold.
//! Each request runs in its own task, which ends as soon as the client goes away: dropping the
//! task's future drops the upstream response, so the backend sees the connection close and
//! stops generating, and the slot guard frees the slot.
//!
//! Streaming clients: the 200 and SSE headers are sent once the request is queued, the backend
//! has answered with a success status, or half a second has passed, whichever is first. An error
//! before that gets its proper HTTP status; after it, one SSE error event and `[DONE]`.

pub mod admission;
pub mod ids;
pub mod reply;
pub mod shaping;
pub mod sse;
pub mod tokenize;
pub mod transform;
pub mod upstream;

use crate::{
    config::Settings,
    error::{ProxyError, Source},
    http::timing::Phases,
    observe::{ProxyEvent, RequestRecord, RequestSummary, Timings, rfc3339},
    state::AppState,
};
use admission::{Entry, Refused};
use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value, json};
use sse::{SseDecoder, SseEvent};
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use transform::{Delta, Folder, OutChunk, Template, TransformSpec, Translator};

/// How long a streaming client may wait before its headers are sent anyway.
const COMMIT_AFTER: Duration = Duration::from_millis(500);
/// The SSE comment sent as a heartbeat.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// Everything known about one request; travels through every stage.
#[derive(Debug)]
pub struct RequestCtx {
    pub id: String,
    pub seed: u64,
    pub received: Instant,
    pub time: SystemTime,
    pub client_addr: Option<SocketAddr>,
    pub path: String,
    pub model: String,
    pub stream: bool,
    /// The settings in force when the request arrived; it finishes with them.
    pub settings: Arc<Settings>,
    /// Short lines shown to the person reading the reply (context, memory, purge).
    pub notices: Vec<String>,
    pub queue_ms: u64,
    pub ttft_ms: Option<u64>,
    /// Where the time before the response headers went (`Server-Timing`).
    pub phases: Arc<Phases>,
}

impl RequestCtx {
    pub fn new(settings: Arc<Settings>, path: &str, client_addr: Option<SocketAddr>) -> Self {
        let seed = ids::next_seed();
        RequestCtx {
            id: ids::request_id(seed),
            seed,
            received: Instant::now(),
            time: SystemTime::now(),
            client_addr,
            path: path.to_owned(),
            model: String::new(),
            stream: false,
            settings,
            notices: Vec::new(),
            queue_ms: 0,
            ttft_ms: None,
            phases: Phases::new(),
        }
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.received.elapsed().as_millis() as u64
    }

    pub fn summary(&self, state: &str) -> RequestSummary {
        RequestSummary {
            id: self.id.clone(),
            time: rfc3339(self.time),
            path: self.path.clone(),
            model: self.model.clone(),
            stream: self.stream,
            state: state.to_owned(),
            status: None,
            duration_ms: None,
            ttft_ms: None,
            prompt_tokens: None,
            completion_tokens: None,
            tool_calls: Vec::new(),
            notices: self.notices.clone(),
        }
    }
}

/// Why a request ended early.
#[derive(Debug)]
enum Failure {
    Api(ProxyError),
    ClientGone,
}

impl From<ProxyError> for Failure {
    fn from(e: ProxyError) -> Self {
        Failure::Api(e)
    }
}

/// What the pipeline learned while serving one request; becomes the log record.
#[derive(Debug)]
struct Exchange {
    ctx: RequestCtx,
    /// The body as sent to the backend.
    upstream_body: Value,
    translator: Option<Translator>,
    folder: Folder,
    /// What shaping decided (the traffic log's `shaping` field).
    shaping: Option<Value>,
    /// The forwarded prompt as measured, to calibrate against the backend's `prompt_tokens`.
    measure: Option<shaping::estimate::Measure>,
}

/// Where output goes: SSE frames for a streaming client (and always the fold, for the log).
struct Out {
    frames: Option<mpsc::Sender<Bytes>>,
    /// Frames made from one read of the backend, sent to the client together: one write for
    /// a burst of events instead of one per event.
    batch: BytesMut,
    head: Option<oneshot::Sender<Head>>,
    /// Time blocked on a slow client is the client's, not the proxy's.
    phases: Arc<Phases>,
}

enum Head {
    /// Send 200 and the SSE headers now.
    Stream,
    /// Nothing sent yet: answer with this error's status.
    Error(ProxyError),
}

impl Out {
    /// Commits a streaming response: from now on errors go in-band.
    fn commit(&mut self) {
        if let Some(head) = self.head.take() {
            let _ = head.send(Head::Stream);
        }
    }

    /// Sends one chunk now (with any queued before it).
    async fn send(&mut self, folder: &mut Folder, chunk: OutChunk) -> Result<(), Failure> {
        self.queue(folder, &chunk);
        self.flush().await
    }

    /// Adds a chunk to the batch; [`Out::flush`] sends it.
    fn queue(&mut self, folder: &mut Folder, chunk: &OutChunk) {
        folder.push(chunk);
        if self.frames.is_some() {
            self.batch.extend_from_slice(b"data: ");
            // Writing into memory cannot fail.
            let _ = chunk.write_json(&mut (&mut self.batch).writer());
            self.batch.extend_from_slice(b"\n\n");
        }
    }

    async fn flush(&mut self) -> Result<(), Failure> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.commit();
        if let Some(tx) = &self.frames {
            let frames = self.batch.split().freeze();
            let _wait = self.phases.client();
            tx.send(frames).await.map_err(|_| Failure::ClientGone)?;
        }
        Ok(())
    }
}

/// Serves `POST /v1/chat/completions` for an already-parsed JSON body.
pub async fn chat(state: AppState, mut ctx: RequestCtx, body: Map<String, Value>) -> Response {
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
    state.hub.started(ctx.summary("queued"));
    let heartbeat = Duration::from_secs_f64(ctx.settings.heartbeat_interval_secs);
    let request_id = ctx.id.clone();
    // A streaming client gets every byte; the fold is then only the record, and bounded.
    let folder = if ctx.stream {
        Folder::for_record_only()
    } else {
        Folder::default()
    };
    let exchange = Exchange {
        ctx,
        upstream_body: Value::Null,
        translator: None,
        folder,
        shaping: None,
        measure: None,
    };

    if exchange.ctx.stream {
        let (frames_tx, frames_rx) = mpsc::channel::<Bytes>(64);
        let (head_tx, mut head_rx) = oneshot::channel();
        let out = Out {
            frames: Some(frames_tx.clone()),
            batch: BytesMut::new(),
            head: Some(head_tx),
            phases: exchange.ctx.phases.clone(),
        };
        let task_state = state.clone();
        state.tasks.spawn(async move {
            let closed = async move { frames_tx.closed().await };
            // A streaming client has already been told everything through `out`.
            let _ = drive(task_state, exchange, body, out, closed).await;
        });
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
            Some(Head::Error(e)) => with_request_id(e.into_response(), &request_id),
            _ => with_request_id(sse_response(frames_rx, heartbeat), &request_id),
        };
    }

    let (done_tx, done_rx) = oneshot::channel::<Result<Value, ProxyError>>();
    let out = Out {
        frames: None,
        batch: BytesMut::new(),
        head: None,
        phases: exchange.ctx.phases.clone(),
    };
    let task_state = state.clone();
    let (closed_tx, closed_rx) = oneshot::channel::<()>();
    state.tasks.spawn(async move {
        let closed = async move {
            let _ = closed_rx.await;
        };
        let result = drive(task_state, exchange, body, out, closed).await;
        let _ = done_tx.send(result);
    });
    // If this handler is dropped (client gone), `closed_tx` drops and the task cancels itself.
    let result = done_rx.await;
    drop(closed_tx);
    let response = match result {
        Ok(Ok(completion)) => axum::Json(completion).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(_) => ProxyError::internal("the request was cancelled while the proxy shut down")
            .into_response(),
    };
    with_request_id(response, &request_id)
}

fn with_request_id(mut response: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Runs one request to its end, then records it. Returns the folded completion or the error.
async fn drive(
    state: AppState,
    mut ex: Exchange,
    body: Map<String, Value>,
    mut out: Out,
    client_closed: impl std::future::Future<Output = ()>,
) -> Result<Value, ProxyError> {
    let result = tokio::select! {
        r = run(&state, &mut ex, body, &mut out) => r,
        () = client_closed => Err(Failure::ClientGone),
    };
    let (status, error) = match &result {
        Ok(()) => (200u16, None),
        Err(Failure::Api(e)) => (e.status.as_u16(), Some(e.clone())),
        // 499: the client closed the request (nginx's convention, widely understood).
        Err(Failure::ClientGone) => (499, None),
    };
    if let (Some(e), Some(tx)) = (&error, &out.frames) {
        match out.head.take().map(|h| h.send(Head::Error(e.clone()))) {
            Some(Ok(())) => {}
            // Headers already went out: the error is the stream's last event.
            Some(Err(_)) | None => {
                let _ = tx.send(e.sse_frames()).await;
            }
        }
    } else if result.is_ok()
        && let Some(tx) = &out.frames
    {
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    }
    let completion = ex.folder.completion();
    record(&state, ex, status, error.as_ref());
    match result {
        Ok(()) => Ok(completion),
        Err(Failure::Api(e)) => Err(e),
        Err(Failure::ClientGone) => Err(ProxyError::new(
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Source::Client,
            "client_closed",
            "the client closed the connection",
        )),
    }
}

async fn run(
    state: &AppState,
    ex: &mut Exchange,
    mut body: Map<String, Value>,
    out: &mut Out,
) -> Result<(), Failure> {
    let settings = ex.ctx.settings.clone();

    // Before a slot is taken: refusals that need none, and a session reset, whose purge takes
    // every slot itself.
    if let Some(refusal) = crate::memory::refusal(state, &settings) {
        return Err(refusal.into());
    }
    if let Some(reset) = shaping::reset_command(&body, &settings.reset_commands) {
        let outcome = crate::purge::purge(state, Some(&ex.ctx.model)).await;
        let line = crate::purge::sentence(&outcome);
        ex.shaping = Some(json!({"action": "reset", "purge": outcome}));
        match reset {
            shaping::Reset::Only { .. } => {
                ex.upstream_body = Value::Object(body);
                return answer_reset(ex, out, &line).await;
            }
            shaping::Reset::Then { rest, .. } => {
                shaping::replace_last_user_text(&mut body, &rest);
                ex.ctx.notices.push(line);
            }
        }
    }
    shape_context(state, ex, &mut body).await?;

    // 1. admission
    let queue_wait = ex.ctx.phases.queue();
    let _slot = match state.gate.enter(&ex.ctx.id, &ex.ctx.model) {
        Ok(Entry::Admitted(slot)) => slot,
        Ok(Entry::Queued(ticket)) => {
            state.hub.publish(ProxyEvent::Queued {
                request_id: ex.ctx.id.clone(),
                depth: state.gate.queued(),
            });
            // Queued means accepted: a streaming client gets its headers and heartbeats now.
            out.commit();
            let wait = Duration::from_secs_f64(settings.queue_timeout_secs);
            match tokio::time::timeout(wait, ticket.admitted()).await {
                Ok(slot) => slot,
                Err(_) => {
                    state.hub.update(|s| s.rejections.queue_timeout += 1);
                    return Err(queue_timeout(
                        settings.queue_timeout_secs,
                        settings.max_concurrent,
                    )
                    .into());
                }
            }
        }
        Err(Refused::QueueFull { max_queue }) => {
            state.hub.update(|s| s.rejections.queue_full += 1);
            return Err(queue_full(max_queue, settings.max_concurrent).into());
        }
    };
    drop(queue_wait);
    ex.ctx.queue_ms = ex.ctx.elapsed_ms();
    state.hub.publish(ProxyEvent::Admitted {
        request_id: ex.ctx.id.clone(),
        queue_ms: ex.ctx.queue_ms,
    });

    // 2. shaping, the part that belongs to the moment of sending: memory as it is now. (The
    // context was shaped above, before queueing, so a request that cannot fit is refused at
    // once instead of after its wait.)
    if let Some(notice) = state.memory.latest().notice(&settings) {
        ex.ctx.notices.push(notice);
    }
    for text in &ex.ctx.notices {
        let kind = notice_kind(text);
        tracing::info!(request_id = %ex.ctx.id, kind, "{text}");
        state.hub.publish(ProxyEvent::Noticed {
            request_id: Some(ex.ctx.id.clone()),
            kind: kind.to_owned(),
            text: text.clone(),
        });
    }

    // 3. upstream
    let mut spec =
        TransformSpec::from_request(&body, &settings.parser_formats, settings.reasoning_field);
    if settings.notices == crate::config::NoticeMode::Content {
        spec.notices = ex.ctx.notices.clone();
    }
    let upstream_body = upstream_request_body(body);
    ex.upstream_body = Value::Object(upstream_body.clone());
    ex.translator = Some(Translator::new(spec, ex.ctx.seed));
    let backend = settings.backend_url.clone();
    let url = format!("{backend}/v1/chat/completions");
    let payload =
        serde_json::to_vec(&upstream_body).map_err(|e| ProxyError::internal(e.to_string()))?;
    let mut request = state
        .client
        .post(&url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "text/event-stream")
        .body(payload);
    if let Some(key) = &settings.upstream_api_key {
        request = request.bearer_auth(key);
    }
    let deadline = (settings.total_timeout_secs > 0.0)
        .then(|| ex.ctx.received + Duration::from_secs_f64(settings.total_timeout_secs));
    let first_byte = Duration::from_secs_f64(settings.first_byte_timeout_secs);
    let first_byte_deadline = Instant::now() + first_byte;
    let sent = {
        let _wait = ex.ctx.phases.upstream();
        within(deadline, first_byte_deadline, request.send()).await
    };
    let response = match sent {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            return Err(upstream::classify(&e, &backend, settings.connect_timeout_secs).into());
        }
        None => return Err(timeout_error(deadline, &backend, &settings).into()),
    };
    let mut response = {
        let _wait = ex.ctx.phases.upstream();
        upstream::check_status(response, &backend).await?
    };
    out.commit();

    // 4. transform
    let idle = Duration::from_secs_f64(settings.idle_timeout_secs);
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    let mut got_first_byte = false;
    let mut done = false;
    while !done {
        let wait_until = if got_first_byte {
            Instant::now() + idle
        } else {
            first_byte_deadline
        };
        let read = {
            let _wait = ex.ctx.phases.upstream();
            within(deadline, wait_until, response.chunk()).await
        };
        let chunk = match read {
            Some(Ok(Some(c))) => c,
            Some(Ok(None)) => break,
            Some(Err(e)) => {
                flush_before_error(ex, out).await?;
                return Err(upstream::classify(&e, &backend, settings.connect_timeout_secs).into());
            }
            None => {
                flush_before_error(ex, out).await?;
                let what = if deadline.is_some_and(|d| Instant::now() >= d) {
                    "total"
                } else if got_first_byte {
                    "idle"
                } else {
                    "first byte"
                };
                let secs = match what {
                    "total" => settings.total_timeout_secs,
                    "idle" => settings.idle_timeout_secs,
                    _ => settings.first_byte_timeout_secs,
                };
                return Err(upstream::timeout(&backend, what, secs).into());
            }
        };
        got_first_byte = true;
        if decoder.feed(&chunk, &mut events).is_err() {
            flush_before_error(ex, out).await?;
            return Err(bad_stream(&backend, "an SSE event larger than 16 MiB").into());
        }
        for event in events.drain(..) {
            let SseEvent::Data(data) = event;
            let data = data.trim();
            if data == "[DONE]" {
                done = true;
                break;
            }
            if data.is_empty() {
                continue;
            }
            let mut normalized = String::new();
            let chunk = match transform::read_chunk(data, &mut normalized) {
                Ok(Some(chunk)) => chunk,
                // Valid JSON but not an object: nothing to translate.
                Ok(None) => continue,
                Err(e) => {
                    flush_before_error(ex, out).await?;
                    return Err(bad_stream(
                        &backend,
                        &format!("invalid JSON in a data event ({e})"),
                    )
                    .into());
                }
            };
            if let Some(err) = chunk.error {
                flush_before_error(ex, out).await?;
                let err: Value = serde_json::from_str(err.get()).unwrap_or(Value::Null);
                let message = err
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| err.to_string());
                return Err(ProxyError::new(
                    StatusCode::BAD_GATEWAY,
                    Source::Upstream,
                    "upstream_error",
                    format!("the backend at {backend} reported an error mid-stream: {message}"),
                )
                .into());
            }
            let translator = ex
                .translator
                .as_mut()
                .ok_or_else(|| ProxyError::internal("translator missing"))?;
            let outputs = translator.on_chunk(chunk);
            for output in outputs {
                if ex.ctx.ttft_ms.is_none() {
                    ex.ctx.ttft_ms = Some(ex.ctx.elapsed_ms());
                    state.gate.first_token(&ex.ctx.id);
                    state.hub.publish(ProxyEvent::FirstByte {
                        request_id: ex.ctx.id.clone(),
                        ttft_ms: ex.ctx.ttft_ms.unwrap_or_default(),
                    });
                }
                out.queue(&mut ex.folder, &output);
            }
        }
        out.flush().await?;
    }
    if !done {
        let mut tail = Vec::new();
        decoder.finish(&mut tail);
        if !tail.is_empty()
            || ex
                .folder
                .choice(0)
                .is_none_or(|c| c.finish_reason.is_none())
        {
            // Without `[DONE]` and without a finish_reason the reply may be cut short: say so,
            // after delivering everything that did arrive.
            flush_before_error(ex, out).await?;
            return Err(
                bad_stream(&backend, "the stream ended before the reply was finished").into(),
            );
        }
    }
    let translator = ex
        .translator
        .as_mut()
        .ok_or_else(|| ProxyError::internal("translator missing"))?;
    let tail = translator.finish();
    let usage = translator.usage().cloned();
    for output in tail {
        out.send(&mut ex.folder, output).await?;
    }
    ex.folder.set_usage(usage.as_ref());
    if let (Some(measure), Some(prompt)) = (
        ex.measure,
        usage
            .as_ref()
            .and_then(|u| u.get("prompt_tokens"))
            .and_then(Value::as_u64),
    ) {
        state
            .calibration
            .observe(&settings.backend_url, &ex.ctx.model, measure, prompt);
    }
    Ok(())
}

/// Estimates the prompt and acts on the thresholds: a notice, dropped middle turns, or a 400.
/// Near a threshold, the backend's own tokenizer (where it has one) sets the ratio, and a
/// truncation is counted again and redone once if the backend would still count too many.
async fn shape_context(
    state: &AppState,
    ex: &mut Exchange,
    body: &mut Map<String, Value>,
) -> Result<(), Failure> {
    use shaping::estimate::{measure_request, measure_tools, ratio_from};
    let settings = ex.ctx.settings.clone();
    let (backend, model) = (settings.backend_url.as_str(), ex.ctx.model.as_str());
    let mut bytes_per_token = state.calibration.bytes_per_token(backend, model);
    let mut measure = measure_request(body);
    let without_tools = |body: &Map<String, Value>| {
        let (all, tools) = (measure_request(body), measure_tools(body));
        shaping::estimate::Measure {
            text_bytes: all.text_bytes.saturating_sub(tools.text_bytes),
            fixed_tokens: all.fixed_tokens.saturating_sub(tools.fixed_tokens),
        }
    };
    let near =
        |tokens: u64| tokens.saturating_mul(5) >= settings.token_warn_threshold.saturating_mul(4);
    let mut counted: Option<(u64, &'static str)> = None;
    if near(measure.tokens(bytes_per_token))
        && let Some(c) = tokenize::count(state, body).await
    {
        let counted_part = if c.includes_tools {
            measure
        } else {
            without_tools(body)
        };
        if let Some(r) = ratio_from(counted_part, c.tokens) {
            bytes_per_token = r;
        }
        state
            .calibration
            .observe(backend, model, counted_part, c.tokens);
        counted = Some((c.tokens, c.source));
    }
    let mut policy = shaping::Policy {
        warn_tokens: settings.token_warn_threshold,
        hard_tokens: settings.token_hard_threshold,
        bytes_per_token,
    };
    let mut decision = shaping::decide(body, &policy);
    if let (Some((_, _)), shaping::Decision::Truncate { messages, .. }) = (counted, &decision) {
        // The dropped part may tokenize differently from the kept part: count what would be
        // sent, and if the backend would still see too much, decide again at its ratio.
        let mut trimmed = body.clone();
        trimmed.insert("messages".into(), Value::Array(messages.clone()));
        let budget = policy.hard_tokens.saturating_sub(shaping::max_tokens(body));
        if let Some(c) = tokenize::count(state, &trimmed).await
            && c.tokens > budget
        {
            let part = if c.includes_tools {
                measure_request(&trimmed)
            } else {
                without_tools(&trimmed)
            };
            if let Some(r) = ratio_from(part, c.tokens) {
                // A little under the measured ratio, so the second cut lands inside the limit.
                policy.bytes_per_token = r * 0.98;
                decision = shaping::decide(body, &policy);
            }
        }
    }
    let mut detail = decision.detail(measure, policy.bytes_per_token, &policy);
    if let (Some(d), Some((tokens, source))) = (detail.as_object_mut(), counted) {
        d.insert("counted_by".into(), source.into());
        d.insert("counted_tokens".into(), tokens.into());
    }
    if let (Some(d), Some(prior)) = (
        detail.as_object_mut(),
        ex.shaping.take().and_then(|v| v.as_object().cloned()),
    ) {
        // A `/new <text>` keeps its purge next to the context decision.
        d.extend(prior.into_iter().filter(|(k, _)| k == "purge"));
    }
    state.hub.publish(ProxyEvent::Shaped {
        request_id: ex.ctx.id.clone(),
        detail: detail.clone(),
    });
    ex.shaping = Some(detail);
    let result = match decision {
        shaping::Decision::Forward { notice, .. } => {
            ex.ctx.notices.extend(notice);
            Ok(())
        }
        shaping::Decision::Truncate {
            messages, notice, ..
        } => {
            body.insert("messages".into(), Value::Array(messages));
            ex.ctx.notices.push(notice);
            // Calibration learns from what was sent, not from what arrived.
            measure = measure_request(body);
            Ok(())
        }
        shaping::Decision::TooLong {
            estimate,
            minimum,
            limit,
            max_tokens,
        } => {
            state.hub.update(|s| s.rejections.context += 1);
            Err(ProxyError::client(
                "context_length_exceeded",
                format!(
                    "the conversation is about {estimate} tokens; even the messages that must stay (system messages, the first user message, the latest turn) need about {minimum}, and with max_tokens {max_tokens} that is over TOKEN_HARD_THRESHOLD ({limit}). Shorten them, lower max_tokens, or raise TOKEN_HARD_THRESHOLD if the model's context allows it"
                ),
            )
            .with_param("messages")
            .into())
        }
    };
    ex.measure = Some(measure);
    result
}

/// Which kind of notice a line is, for the event stream and `blockops_notices_total`.
fn notice_kind(text: &str) -> &'static str {
    if text.starts_with("Memory") {
        "memory"
    } else if text.starts_with("Context trimmed") {
        "truncation"
    } else if text.starts_with("Long context") {
        "context"
    } else if text.starts_with("KV cache") {
        "purge"
    } else {
        "other"
    }
}

/// The proxy's own reply to a bare `/new`: what was purged, as one content chunk and a finish.
async fn answer_reset(ex: &mut Exchange, out: &mut Out, line: &str) -> Result<(), Failure> {
    let created = ex
        .ctx
        .time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let id = format!("chatcmpl-{}", ex.ctx.id.trim_start_matches("req_"));
    let template = Arc::new(Template::new(
        json!({"id": id, "created": created, "model": ex.ctx.model})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    ));
    let content = Delta {
        role: Some("assistant"),
        content: Some(line.to_owned()),
        ..Delta::default()
    };
    let first = OutChunk::choice(template.clone(), 0, content, None, None);
    let finish = OutChunk::choice(template, 0, Delta::default(), Some("stop".into()), None);
    out.send(&mut ex.folder, first).await?;
    out.send(&mut ex.folder, finish).await?;
    Ok(())
}

/// Awaits `fut` until the earlier of two deadlines; `None` when time ran out.
async fn within<F: std::future::Future>(
    deadline: Option<Instant>,
    until: Instant,
    fut: F,
) -> Option<F::Output> {
    let until = deadline.map_or(until, |d| d.min(until));
    tokio::time::timeout_at(until, fut).await.ok()
}

fn timeout_error(deadline: Option<Instant>, backend: &str, settings: &Settings) -> ProxyError {
    if deadline.is_some_and(|d| Instant::now() >= d) {
        upstream::timeout(backend, "total", settings.total_timeout_secs)
    } else {
        upstream::timeout(backend, "first byte", settings.first_byte_timeout_secs)
    }
}

fn bad_stream(backend: &str, what: &str) -> ProxyError {
    ProxyError::new(
        StatusCode::BAD_GATEWAY,
        Source::Upstream,
        "bad_upstream_stream",
        format!("the backend at {backend} sent a broken stream: {what}"),
    )
}

/// Before an error event, deliver every byte the model produced (held-back text included).
async fn flush_before_error(ex: &mut Exchange, out: &mut Out) -> Result<(), Failure> {
    let Some(translator) = ex.translator.as_mut() else {
        return Ok(());
    };
    for output in translator.flush_on_error() {
        out.send(&mut ex.folder, output).await?;
    }
    Ok(())
}

pub fn queue_full(max_queue: usize, max_concurrent: usize) -> ProxyError {
    ProxyError::new(
        StatusCode::TOO_MANY_REQUESTS,
        Source::Proxy,
        "queue_full",
        format!(
            "the backend is busy: {max_concurrent} requests in flight and {max_queue} waiting (MAX_CONCURRENT, MAX_QUEUE); retry shortly"
        ),
    )
    .with_retry_after(1)
}

pub fn queue_timeout(queue_timeout_secs: f64, max_concurrent: usize) -> ProxyError {
    ProxyError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Source::Proxy,
        "queue_timeout",
        format!(
            "waited {queue_timeout_secs} s for a free slot at the backend (MAX_CONCURRENT={max_concurrent}); try again later or raise QUEUE_TIMEOUT_SECS"
        ),
    )
    .with_retry_after(queue_timeout_secs.ceil().max(1.0) as u64)
}

/// The client's body with streaming (and usage in the stream) switched on; all else untouched.
fn upstream_request_body(mut body: Map<String, Value>) -> Map<String, Value> {
    body.insert("stream".into(), Value::Bool(true));
    let options = body.entry("stream_options").or_insert_with(|| json!({}));
    if !options.is_object() {
        *options = json!({});
    }
    if let Some(o) = options.as_object_mut() {
        o.insert("include_usage".into(), Value::Bool(true));
    }
    body
}

/// The SSE response body: frames as they come, and a `: keep-alive` comment after every
/// `interval` of silence. Comments go between events only, never inside one.
pub fn sse_response(rx: mpsc::Receiver<Bytes>, interval: Duration) -> Response {
    struct State {
        rx: mpsc::Receiver<Bytes>,
        interval: Duration,
        next_beat: Instant,
        first: bool,
    }
    let state = State {
        rx,
        interval,
        next_beat: Instant::now() + interval,
        first: true,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.first {
            st.first = false;
            st.next_beat = Instant::now() + st.interval;
            return Some((
                Ok::<_, std::convert::Infallible>(Bytes::from_static(KEEP_ALIVE)),
                st,
            ));
        }
        tokio::select! {
            frame = st.rx.recv() => {
                let frame = frame?;
                st.next_beat = Instant::now() + st.interval;
                Some((Ok(frame), st))
            }
            () = tokio::time::sleep_until(st.next_beat) => {
                st.next_beat = Instant::now() + st.interval;
                Some((Ok(Bytes::from_static(KEEP_ALIVE)), st))
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Keeps reverse proxies (nginx) from buffering the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn record(state: &AppState, ex: Exchange, status: u16, error: Option<&ProxyError>) {
    let Exchange {
        ctx,
        upstream_body,
        translator,
        folder,
        shaping,
        measure: _,
    } = ex;
    let choice = folder.choice(0).cloned().unwrap_or_default();
    let usage = translator.as_ref().and_then(|t| t.usage().cloned());
    let raw = translator
        .as_ref()
        .and_then(|t| t.raw_text(0).map(str::to_owned));
    let trace = translator.as_ref().map(|t| t.trace(0)).unwrap_or_default();
    let tool_names: Vec<String> = choice.tool_calls.iter().map(|c| c.name.clone()).collect();
    // Calls the engine found in text have a trace span each, in order; calls the backend sent
    // already structured have none, and count as `structured`.
    let mut spans = trace.iter().filter(|s| s.kind == "tool_call");
    for call in &choice.tool_calls {
        let format = spans.next().and_then(|s| s.format).unwrap_or("structured");
        state.hub.publish(ProxyEvent::ToolCallTranslated {
            request_id: ctx.id.clone(),
            name: call.name.clone(),
            format: format.to_owned(),
        });
    }
    let total_ms = ctx.elapsed_ms();
    state
        .hub
        .metrics()
        .proxy_overhead(ctx.phases.own_time().as_secs_f64());
    let mut summary = ctx.summary(if status == 200 { "done" } else { "failed" });
    summary.status = Some(status);
    summary.duration_ms = Some(total_ms);
    summary.ttft_ms = ctx.ttft_ms;
    summary.prompt_tokens = usage
        .as_ref()
        .and_then(|u| u.get("prompt_tokens"))
        .and_then(Value::as_u64);
    summary.completion_tokens = usage
        .as_ref()
        .and_then(|u| u.get("completion_tokens"))
        .and_then(Value::as_u64);
    summary.tool_calls = tool_names;
    let output = json!({
        "content": if choice.content.is_empty() && !choice.tool_calls.is_empty() { Value::Null } else { choice.content.clone().into() },
        "reasoning": choice.reasoning_content.clone().or(choice.reasoning.clone()),
        "tool_calls": choice.tool_calls.iter().map(|c| json!({"id": c.id, "name": c.name, "arguments": c.arguments})).collect::<Vec<_>>(),
    });
    let raw_text = raw.filter(|r| *r != choice.content);
    state.hub.finished(RequestRecord {
        summary,
        client_addr: ctx.client_addr.map(|a| a.to_string()),
        request: upstream_body,
        output,
        raw_text,
        trace: serde_json::to_value(&trace).unwrap_or_default(),
        timings: Timings {
            queue_ms: ctx.queue_ms,
            ttft_ms: ctx.ttft_ms,
            total_ms,
        },
        usage,
        finish_reason: choice.finish_reason.clone(),
        error: error.map(ProxyError::body_json),
        shaping,
    });
}
