//! Pump: the backend's event stream in, through the translator, out to the sink. Reads under
//! the request's deadlines; before any error, everything the model produced is delivered.

use super::{
    Exchange,
    reply::{Event, Notice},
    sink::{Failure, Sink},
    sse::{SseDecoder, SseEvent},
    stop::{self, StopMatcher},
    translate::{self, Translator},
    upstream::{Call, Deadlines, ReadTimer, bad_stream},
};
use crate::{
    config::NoticeMode,
    error::{ProxyError, Source, StatusCode},
    observe::{Hub, ProxyEvent},
    pipeline::admission::Gate,
};
use serde_json::Value;

/// What the pump reports to the gate and the hub when the first token arrives.
pub struct Watchers<'a> {
    pub gate: &'a Gate,
    pub hub: &'a Hub,
}

/// Runs the reply to its end: every backend read becomes one batch of events.
pub async fn pump(
    ex: &mut Exchange,
    call: &Call<'_>,
    mut response: reqwest::Response,
    deadlines: &Deadlines,
    sink: &mut Sink,
    watchers: &Watchers<'_>,
) -> Result<(), Failure> {
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    let mut out = Vec::new();
    let mut got_first_byte = false;
    let mut done = false;
    let mut timer = ReadTimer::default();
    while !done {
        let chunk = match call
            .read(&mut response, deadlines, got_first_byte, &mut timer)
            .await
        {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return fail(ex, sink, e).await,
        };
        got_first_byte = true;
        if decoder.feed(&chunk, &mut events).is_err() {
            let e = bad_stream(call.backend, "an SSE event larger than 16 MiB");
            return fail(ex, sink, e).await;
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
            let chunk = match translate::read_chunk(data, &mut normalized) {
                Ok(Some(chunk)) => chunk,
                // Valid JSON but not an object: nothing to translate.
                Ok(None) => continue,
                Err(e) => {
                    let what = format!("invalid JSON in a data event ({e})");
                    return fail(ex, sink, bad_stream(call.backend, &what)).await;
                }
            };
            if let Some(err) = chunk.error {
                let e = reported_error(call.backend, err.get());
                return fail(ex, sink, e).await;
            }
            translator(ex)?.on_chunk(chunk, &mut out);
            if let Some(name) = &ex.reply_model {
                show_model(&mut out, name);
            }
            late_notices(ex, watchers.hub, &mut out);
            let stopped = stop_sequences(ex, &mut out);
            if out.iter().any(|e| !matches!(e, Event::Meta(_))) {
                first_token(ex, watchers);
            }
            // Queued at once, so an error later in this read still delivers them first.
            sink.queue(out.drain(..));
            if stopped {
                // A stop sequence ended the reply: returning drops the backend's response,
                // which cancels its work; nothing it writes after the match is wanted.
                return sink.flush().await;
            }
        }
        sink.flush().await?;
    }
    if !done {
        let mut tail = Vec::new();
        decoder.finish(&mut tail);
        let finished = sink.fold.choice(0).is_some_and(|c| c.finish.is_some());
        if !tail.is_empty() || !finished {
            // Without `[DONE]` and without a finish_reason the reply may be cut short: say so,
            // after delivering everything that did arrive.
            let e = bad_stream(
                call.backend,
                "the stream ended before the reply was finished",
            );
            return fail(ex, sink, e).await;
        }
    }
    translator(ex)?.finish(&mut out);
    late_notices(ex, watchers.hub, &mut out);
    stop_sequences(ex, &mut out);
    if let Some(held) = ex.stop.as_mut().map(StopMatcher::flush)
        && !held.is_empty()
    {
        // A possible start of a sequence that the reply ended in: text after all.
        out.push(Event::Text {
            choice: 0,
            text: held,
        });
    }
    sink.send(out).await
}

/// The request's stop sequences applied to a batch; `true` when one ended the reply.
fn stop_sequences(ex: &mut Exchange, out: &mut Vec<Event>) -> bool {
    let Some(matcher) = ex.stop.as_mut() else {
        return false;
    };
    let (events, stopped) = stop::apply(matcher, std::mem::take(out));
    *out = events;
    stopped
}

/// An aliased request's reply names the model the client asked for, not the backend's.
fn show_model(events: &mut [Event], name: &str) {
    for e in events {
        if let Event::Meta(meta) = e {
            let mut shown = (**meta).clone();
            shown.model = Some(name.into());
            *meta = std::sync::Arc::new(shown);
        }
    }
}

/// Notices the translator found mid-reply (a call the backend dropped): into the request's
/// notices (the record's `notices`) and published at once; left in the reply only when the
/// settings put notices in the content.
fn late_notices(ex: &mut Exchange, hub: &Hub, out: &mut Vec<Event>) {
    if !out.iter().any(|e| matches!(e, Event::Notice { .. })) {
        return;
    }
    let in_content = ex.ctx.settings.notices == NoticeMode::Content;
    let ctx = &mut ex.ctx;
    out.retain(|e| {
        let Event::Notice { kind, text } = e else {
            return true;
        };
        tracing::warn!(request_id = %ctx.id, kind = kind.as_str(), "{text}");
        hub.publish(ProxyEvent::Noticed {
            request_id: Some(ctx.id.clone()),
            kind: *kind,
            text: text.clone(),
        });
        ctx.notices.push(Notice {
            kind: *kind,
            text: text.clone(),
        });
        in_content
    });
}

fn translator(ex: &mut Exchange) -> Result<&mut Translator, Failure> {
    ex.translator
        .as_mut()
        .ok_or_else(|| ProxyError::internal("translator missing").into())
}

fn first_token(ex: &mut Exchange, watchers: &Watchers<'_>) {
    if ex.ctx.ttft_ms.is_some() {
        return;
    }
    let ttft = ex.ctx.elapsed_ms();
    ex.ctx.ttft_ms = Some(ttft);
    watchers.gate.first_token(&ex.ctx.id);
    watchers.hub.publish(ProxyEvent::FirstByte {
        request_id: ex.ctx.id.clone(),
        ttft_ms: ttft,
    });
}

/// Delivers every byte the model produced (held-back text included), then fails with `e`.
async fn fail(ex: &mut Exchange, sink: &mut Sink, e: ProxyError) -> Result<(), Failure> {
    if let Some(translator) = ex.translator.as_mut() {
        let mut out = Vec::new();
        translator.flush_on_error(&mut out);
        sink.send(out).await?;
    }
    Err(e.into())
}

/// An error the backend reported inside its stream.
fn reported_error(backend: &str, raw: &str) -> ProxyError {
    let err: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| err.to_string());
    ProxyError::new(
        StatusCode::BAD_GATEWAY,
        Source::Upstream,
        "upstream_error",
        format!("the backend at {backend} reported an error mid-stream: {message}"),
    )
}
