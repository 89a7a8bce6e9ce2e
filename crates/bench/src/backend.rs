//! The fast fake backend: an OpenAI-compatible server whose every streaming reply is the same
//! scripted SSE stream of N events (a model writing Hermes `<tool_call>` text), sent with no delay.
//!
//! The reply is built once; each response clones `Bytes` handles, so the backend's own cost per
//! request is as small as a server's can be, and the proxy under test gets the CPU.

use axum::{
    Json, Router,
    body::{Body, Bytes},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::ListenerExt,
};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::net::TcpListener;

/// The tool the benchmark's requests declare, and the model "calls" in its text.
pub fn tools() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
                },
                "required": ["city"]
            }
        }
    }])
}

/// The body every benchmark request sends: streaming, with tools, so the proxy's engine runs.
pub fn request_body(model: &str) -> Bytes {
    Bytes::from(
        json!({
            "model": model,
            "stream": true,
            "messages": [
                {"role": "system", "content": "You are a weather assistant. Use the tools."},
                {"role": "user", "content": "What is the weather in these eight cities right now?"}
            ],
            "tools": tools(),
        })
        .to_string(),
    )
}

const CITIES: &[&str] = &[
    "Paris", "Berlin", "Tokyo", "Lima", "Oslo", "Cairo", "Quito", "Perth", "Seoul", "Dakar",
];

/// The model's whole text: a sentence, then Hermes tool calls, sized so that `content_events`
/// deltas of about four characters (a token's worth) carry it.
pub fn reply_text(content_events: usize) -> String {
    let mut text = String::from("I'll look up the current weather for each city you named.\n");
    let mut i = 0;
    while text.len() < content_events * 4 {
        let city = CITIES[i % CITIES.len()];
        text.push_str(&format!(
            "<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"{city}\", \"unit\": \"celsius\"}}}}\n</tool_call>\n"
        ));
        i += 1;
    }
    text
}

/// How many tool calls [`reply_text`] writes.
pub fn calls_in_reply(content_events: usize) -> usize {
    reply_text(content_events).matches("<tool_call>").count()
}

/// Splits `text` into `n` pieces of nearly equal length on character boundaries.
fn split(text: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    let chars: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let mut pieces = Vec::with_capacity(n);
    let mut start = 0;
    for k in 1..=n {
        // Boundaries at k·len/n characters: every piece within one character of the others.
        let end = chars
            .get(k * chars.len() / n)
            .copied()
            .unwrap_or(text.len());
        if start < end {
            pieces.push(&text[start..end]);
        }
        start = end;
    }
    pieces
}

/// The SSE frames of one reply: a role chunk, content deltas, a finish chunk with usage, and
/// `[DONE]` — `events` frames in all.
pub fn frames(events: usize) -> Vec<Bytes> {
    let content_events = events.saturating_sub(3).max(1);
    let text = reply_text(content_events);
    let chunk = |delta: Value, finish: Value, usage: Option<Value>| {
        let mut c = json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000u64,
            "model": "bench",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if let Some(u) = usage {
            c["usage"] = u;
        }
        Bytes::from(format!("data: {c}\n\n"))
    };
    let mut frames = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
        None,
    )];
    for piece in split(&text, content_events) {
        frames.push(chunk(json!({"content": piece}), Value::Null, None));
    }
    frames.push(chunk(
        json!({}),
        json!("stop"),
        Some(json!({"prompt_tokens": 40, "completion_tokens": content_events, "total_tokens": 40 + content_events})),
    ));
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    frames
}

struct Script {
    frames: Vec<Bytes>,
    text: String,
}

pub fn router(events: usize) -> Router {
    let frames = frames(events);
    let text = reply_text(events.saturating_sub(3).max(1));
    let script = Arc::new(Script { frames, text });
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .with_state(script)
}

async fn models() -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": "bench", "object": "model", "owned_by": "blockops-bench"}]}),
    )
}

async fn chat(
    axum::extract::State(script): axum::extract::State<Arc<Script>>,
    body: Bytes,
) -> Response {
    // A non-streaming request (LiteLLM's health checks, curl) gets the same text as one message.
    let streaming = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("stream").and_then(Value::as_bool))
        .unwrap_or(false);
    if !streaming {
        return Json(json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_700_000_000u64,
            "model": "bench",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": script.text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 200, "total_tokens": 240}
        }))
        .into_response();
    }
    let frames = script.frames.clone();
    let stream =
        futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::convert::Infallible>));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Serves the fake backend on `listener` until the process ends.
pub async fn serve(listener: TcpListener, events: usize) -> std::io::Result<()> {
    // Small SSE writes must leave at once, not wait for Nagle.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(events)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_the_requested_count_and_carry_the_whole_text() {
        for events in [10, 200, 333] {
            let f = frames(events);
            assert_eq!(f.len(), events, "events={events}");
            let mut text = String::new();
            for frame in &f[1..f.len() - 2] {
                let s = std::str::from_utf8(frame).unwrap();
                let v: Value =
                    serde_json::from_str(s.trim().strip_prefix("data: ").unwrap()).unwrap();
                text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap());
            }
            assert_eq!(text, reply_text(events - 3));
            assert_eq!(f.last().unwrap().as_ref(), b"data: [DONE]\n\n");
        }
        assert!(calls_in_reply(197) >= 5);
    }

    #[test]
    fn split_keeps_every_character() {
        let s = "héllo wörld ✓ abc";
        for n in 1..30 {
            assert_eq!(split(s, n).concat(), s);
            assert!(split(s, n).len() <= n);
        }
    }
}
