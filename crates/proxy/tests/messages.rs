//! The Anthropic Messages front door, through the whole server on port 0 against in-process
//! fake backends: the wire as Claude Code and the Anthropic SDKs read it.

mod support;

use axum::{
    Router,
    body::Body,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use bytes::Bytes;
use serde_json::{Value, json};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use support::*;
use tokio::sync::{Notify, mpsc};

/// A bound on waits for things that must happen; never a sleep that waits for them.
const BOUND: Duration = Duration::from_secs(10);

/// A scripted OpenAI backend: records each raw request body, says when one arrives, streams
/// `frames`, and before frame `hold_at` waits for `release`. A response stream dropped before
/// its end (the proxy cancelled it) is reported on `dropped`.
struct Fake {
    url: String,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    release: Arc<Notify>,
    arrived: mpsc::UnboundedReceiver<()>,
    dropped: mpsc::UnboundedReceiver<()>,
}

struct DropSignal(Option<mpsc::UnboundedSender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

async fn fake(frames: Vec<Bytes>, hold_at: Option<usize>) -> Fake {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let release = Arc::new(Notify::new());
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    let (b, r) = (bodies.clone(), release.clone());
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |req: Request| {
            let (bodies, release, frames) = (b.clone(), r.clone(), frames.clone());
            let (arrived_tx, dropped_tx) = (arrived_tx.clone(), dropped_tx.clone());
            async move {
                let body = axum::body::to_bytes(req.into_body(), 1 << 24).await.unwrap();
                let model = serde_json::from_slice::<Value>(&body).unwrap()["model"].clone();
                bodies.lock().unwrap().push(body);
                let _ = arrived_tx.send(());
                if model == "missing" {
                    return (
                        StatusCode::NOT_FOUND,
                        axum::Json(json!({"error": {"message": "model 'missing' not found", "type": "not_found"}})),
                    )
                        .into_response();
                }
                let guard = DropSignal(Some(dropped_tx));
                let stream = futures_util::stream::unfold(
                    (0usize, guard),
                    move |(i, mut guard)| {
                        let (frames, release) = (frames.clone(), release.clone());
                        async move {
                            if hold_at == Some(i) {
                                release.notified().await;
                            }
                            let Some(f) = frames.get(i).cloned() else {
                                // Finished: not a cancellation.
                                drop(guard.0.take());
                                return None;
                            };
                            Some((Ok::<_, std::convert::Infallible>(f), (i + 1, guard)))
                        }
                    },
                );
                let mut resp = Response::new(Body::from_stream(stream));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                resp
            }
        }),
    );
    Fake {
        url: serve(app).await,
        bodies,
        release,
        arrived,
        dropped,
    }
}

impl Fake {
    fn body(&self, i: usize) -> Value {
        serde_json::from_slice(&self.bodies.lock().unwrap()[i]).unwrap()
    }
}

fn frames_end(mut frames: Vec<Bytes>, finish: &str) -> Vec<Bytes> {
    frames.push(chunk(json!({}), json!(finish)));
    frames.push(Bytes::from(format!(
        "data: {}\n\n",
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "fake", "choices": [],
               "usage": {"prompt_tokens": 31, "completion_tokens": 12, "total_tokens": 43}})
    )));
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    frames
}

fn text_frames(pieces: &[&str]) -> Vec<Bytes> {
    frames_end(
        pieces
            .iter()
            .map(|p| chunk(json!({"content": p}), Value::Null))
            .collect(),
        "stop",
    )
}

const BASH_CALL_AS_TEXT: &str =
    "<tool_call>\n{\"name\": \"Bash\", \"arguments\": {\"command\": \"echo hi\"}}\n</tool_call>";

fn bash_tool() -> Value {
    json!({"name": "Bash", "description": "Run a shell command",
           "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
           "cache_control": {"type": "ephemeral"}})
}

fn request(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5", "max_tokens": 32000, "stream": stream,
        "system": [{"type": "text", "text": "You are a coding agent."}],
        "messages": [{"role": "user", "content": "Run echo hi"}],
        "tools": [bash_tool()],
        "thinking": {"type": "adaptive", "display": "updates"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
        "output_config": {"effort": "high"}, "metadata": {"user_id": "u1"}
    })
}

/// The stream as (event name, data) pairs; checks every event's name is its data's `type`.
fn events(text: &str) -> Vec<(String, Value)> {
    assert!(!text.contains("[DONE]"), "Messages streams have no [DONE]");
    named_events(text)
}

/// A streamed reply folded as the SDKs do, checking the block rules on the way: one block open
/// at a time, sequential indexes, deltas of the open block's type, signed thinking.
fn fold(evs: &[(String, Value)]) -> Value {
    assert_eq!(evs[0].0, "message_start");
    let mut message = evs[0].1["message"].clone();
    let mut blocks: Vec<Value> = Vec::new();
    let mut open = false;
    let mut partial_json = String::new();
    for (name, d) in evs {
        match name.as_str() {
            "content_block_start" => {
                assert!(!open, "a block started while another was open");
                assert_eq!(d["index"], blocks.len());
                blocks.push(d["content_block"].clone());
                partial_json.clear();
                open = true;
            }
            "content_block_delta" => {
                assert!(open, "a delta outside a block");
                assert_eq!(d["index"], blocks.len() - 1);
                let b = blocks.last_mut().unwrap();
                let delta = &d["delta"];
                match (b["type"].as_str().unwrap(), delta["type"].as_str().unwrap()) {
                    ("text", "text_delta") => append(b, delta, "text"),
                    ("thinking", "thinking_delta") => append(b, delta, "thinking"),
                    ("thinking", "signature_delta") => b["signature"] = delta["signature"].clone(),
                    ("tool_use", "input_json_delta") => {
                        partial_json.push_str(delta["partial_json"].as_str().unwrap());
                    }
                    (b, d) => panic!("{d} in a {b} block"),
                }
            }
            "content_block_stop" => {
                assert!(open);
                assert_eq!(d["index"], blocks.len() - 1);
                let b = blocks.last_mut().unwrap();
                if b["type"] == "thinking" {
                    assert!(
                        !b["signature"].as_str().unwrap().is_empty(),
                        "unsigned thinking"
                    );
                }
                if b["type"] == "tool_use" && !partial_json.is_empty() {
                    b["input"] = serde_json::from_str(&partial_json).unwrap();
                }
                open = false;
            }
            "message_delta" => {
                assert!(!open);
                message["stop_reason"] = d["delta"]["stop_reason"].clone();
                message["stop_sequence"] = d["delta"]["stop_sequence"].clone();
                message["usage"]["output_tokens"] = d["usage"]["output_tokens"].clone();
            }
            "message_start" | "ping" | "message_stop" => {}
            other => panic!("unexpected event {other}: {d}"),
        }
    }
    assert_eq!(evs.last().unwrap().0, "message_stop");
    message["content"] = Value::Array(blocks);
    message
}

/// Appends a delta's `key` text to the block's.
fn append(block: &mut Value, delta: &Value, key: &str) {
    let text = format!(
        "{}{}",
        block[key].as_str().unwrap(),
        delta[key].as_str().unwrap()
    );
    block[key] = text.into();
}

async fn post_messages(base: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/messages?beta=true"))
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14",
        )
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_text_tool_call_comes_back_as_tool_use_streaming_and_not() {
    let dir = tempfile::tempdir().unwrap();
    let backend = fake(text_frames(&["Running.\n", BASH_CALL_AS_TEXT]), None).await;
    let (handle, base) = proxy(settings(&backend.url, &dir)).await;

    let r = post_messages(&base, &request(true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert!(
        r.headers()["request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    let streamed = fold(&events(&r.text().await.unwrap()));

    let r = post_messages(&base, &request(false)).await;
    assert_eq!(r.status(), 200);
    let whole: Value = r.json().await.unwrap();

    for m in [&streamed, &whole] {
        assert_eq!(m["type"], "message");
        assert_eq!(m["role"], "assistant");
        assert_eq!(
            m["model"], "claude-sonnet-4-5",
            "the requested name is echoed"
        );
        assert!(m["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(m["stop_reason"], "tool_use");
        let content = m["content"].as_array().unwrap();
        assert_eq!(content.len(), 2, "{m}");
        assert_eq!(content[0]["type"], "text");
        assert_eq!(content[0]["text"].as_str().unwrap().trim_end(), "Running.");
        assert_eq!(content[1]["type"], "tool_use");
        assert_eq!(content[1]["name"], "Bash");
        assert_eq!(content[1]["input"], json!({"command": "echo hi"}));
        assert!(content[1]["id"].as_str().unwrap().starts_with("toolu_"));
    }
    assert_eq!(whole["usage"]["input_tokens"], 31);
    assert_eq!(whole["usage"]["output_tokens"], 12);

    // What the backend was asked: OpenAI chat, tools as functions, no Messages-only fields.
    let sent = backend.body(0);
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["max_tokens"], 32000);
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "You are a coding agent."})
    );
    assert_eq!(sent["tools"][0]["function"]["name"], "Bash");
    assert!(sent["tools"][0].get("cache_control").is_none());
    for key in [
        "system",
        "thinking",
        "context_management",
        "output_config",
        "metadata",
    ] {
        assert!(sent.get(key).is_none(), "{key} was forwarded");
    }
    assert_eq!(sent["stream_options"]["include_usage"], true);

    handle.shutdown().await;
    let records = log_records(&dir.path().join("logs").join("proxy.log"));
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r["front_door"], "messages", "{r}");
        assert_eq!(r["model"], "claude-sonnet-4-5");
        // The record keeps what the client sent, and what went upstream beside it.
        assert_eq!(r["request"]["output_config"]["effort"], "high", "{r}");
        assert_eq!(r["upstream_request"]["tools"][0]["type"], "function", "{r}");
    }
}

#[tokio::test]
async fn the_tool_result_turn_reaches_the_backend_as_a_tool_message_with_the_calls_id() {
    let dir = tempfile::tempdir().unwrap();
    let backend = fake(text_frames(&["It printed hi."]), None).await;
    let (handle, base) = proxy(settings(&backend.url, &dir)).await;
    let mut body = request(false);
    body["messages"] = json!([
        {"role": "user", "content": "Run echo hi"},
        {"role": "system", "content": "# Environment\ncwd: /tmp"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should run it.", "signature": "sig"},
            {"type": "text", "text": "Running."},
            {"type": "tool_use", "id": "toolu_01abc", "name": "Bash", "input": {"command": "echo hi"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01abc", "content": "hi", "is_error": false,
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Go on."}]}
    ]);
    let r = post_messages(&base, &body).await;
    assert_eq!(r.status(), 200);
    let m: Value = r.json().await.unwrap();
    assert_eq!(
        m["content"],
        json!([{"type": "text", "text": "It printed hi."}])
    );
    assert_eq!(m["stop_reason"], "end_turn");
    let sent = backend.body(0);
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "You are a coding agent.\n\n# Environment\ncwd: /tmp"},
            {"role": "user", "content": "Run echo hi"},
            {"role": "assistant", "content": "Running.", "tool_calls": [
                {"id": "call_01abc", "type": "function", "function": {"name": "Bash", "arguments": "{\"command\":\"echo hi\"}"}}]},
            {"role": "tool", "tool_call_id": "call_01abc", "content": "hi"},
            {"role": "user", "content": "Go on."}
        ])
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn the_billing_header_never_reaches_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let backend = fake(text_frames(&["ok"]), None).await;
    let (handle, base) = proxy(settings(&backend.url, &dir)).await;
    for version in ["2.1.332.9a2", "2.1.333.b7c"] {
        let mut body = request(false);
        body["system"] = json!([
            {"type": "text", "text": format!("x-anthropic-billing-header: cc_version={version}; cc_entrypoint=sdk-cli;")},
            {"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}
        ]);
        let r = post_messages(&base, &body).await;
        assert_eq!(r.status(), 200);
    }
    let bodies = backend.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    assert_eq!(
        bodies[0], bodies[1],
        "the same conversation must be the same bytes"
    );
    assert!(!String::from_utf8_lossy(&bodies[0]).contains("x-anthropic-billing-header"));
    let metrics = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("blockops_billing_headers_removed_total 2\n"),
        "{metrics}"
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn structured_calls_and_reasoning_from_the_backend_become_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let frames = frames_end(
        vec![
            chunk(
                json!({"role": "assistant", "reasoning_content": "Need "}),
                Value::Null,
            ),
            chunk(json!({"reasoning_content": "a shell."}), Value::Null),
            chunk(json!({"content": "Sure."}), Value::Null),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_abc", "type": "function",
                                       "function": {"name": "Bash", "arguments": ""}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"command\": "}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"ls\"}"}}]}),
                Value::Null,
            ),
        ],
        "tool_calls",
    );
    let backend = fake(frames, None).await;
    let (handle, base) = proxy(settings(&backend.url, &dir)).await;
    let streamed = fold(&events(
        &post_messages(&base, &request(true))
            .await
            .text()
            .await
            .unwrap(),
    ));
    let whole: Value = post_messages(&base, &request(false))
        .await
        .json()
        .await
        .unwrap();
    for m in [&streamed, &whole] {
        let content = m["content"].as_array().unwrap();
        let kinds: Vec<&str> = content
            .iter()
            .map(|b| b["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["thinking", "text", "tool_use"], "{m}");
        assert_eq!(content[0]["thinking"], "Need a shell.");
        assert!(!content[0]["signature"].as_str().unwrap().is_empty());
        assert_eq!(content[1]["text"], "Sure.");
        assert_eq!(content[2]["id"], "toolu_abc");
        assert_eq!(content[2]["input"], json!({"command": "ls"}));
        assert_eq!(m["stop_reason"], "tool_use");
    }
    handle.shutdown().await;
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    (status, v["error"].clone())
}

#[tokio::test]
async fn errors_are_in_anthropics_shape() {
    let dir = tempfile::tempdir().unwrap();
    let backend = fake(text_frames(&["ok"]), None).await;
    let mut s = settings(&backend.url, &dir);
    s.api_key = Some("sk-local-key".into());
    let (handle, base) = proxy(s).await;
    let http = client();
    let post = |body: &'static [u8], key: Option<(&'static str, &'static str)>| {
        let mut r = http
            .post(format!("{base}/v1/messages"))
            .header("content-type", "application/json")
            .body(body);
        if let Some((k, v)) = key {
            r = r.header(k, v);
        }
        r.send()
    };
    let good =
        br#"{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}"#;
    let key = Some(("x-api-key", "sk-local-key"));

    let (status, e) = error_of(post(good, None).await.unwrap()).await;
    assert_eq!(
        (status, e["type"].as_str()),
        (401, Some("authentication_error"))
    );
    assert!(e["message"].as_str().unwrap().contains("x-api-key"));
    let (status, e) = error_of(post(good, Some(("x-api-key", "wrong"))).await.unwrap()).await;
    assert_eq!(
        (status, e["type"].as_str()),
        (401, Some("authentication_error"))
    );
    assert_eq!(post(good, key).await.unwrap().status(), 200);
    assert_eq!(
        post(good, Some(("authorization", "Bearer sk-local-key")))
            .await
            .unwrap()
            .status(),
        200
    );

    for (body, needle) in [
        (&b"{not json"[..], "not valid JSON"),
        (&b""[..], "empty"),
        (&br#"{"model": "m", "messages": []}"#[..], "max_tokens"),
        (&br#"{"model": "m", "max_tokens": 5}"#[..], "messages"),
    ] {
        let (status, e) = error_of(post(body, key).await.unwrap()).await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["type"], "invalid_request_error");
        assert!(e["message"].as_str().unwrap().contains(needle), "{e}");
    }
    let missing = br#"{"model": "missing", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}"#;
    let (status, e) = error_of(post(missing, key).await.unwrap()).await;
    assert_eq!((status, e["type"].as_str()), (404, Some("not_found_error")));
    assert!(e["message"].as_str().unwrap().contains("not found"), "{e}");

    let r = http
        .get(format!("{base}/v1/messages"))
        .header("x-api-key", "sk-local-key")
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(r).await;
    assert_eq!(
        (status, e["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
    assert!(e["message"].as_str().unwrap().contains("POST"), "{e}");

    let count = br#"{"model": "m", "system": "Be brief.", "messages": [{"role": "user", "content": "How many tokens is this?"}]}"#;
    let r = http
        .post(format!("{base}/v1/messages/count_tokens?beta=true"))
        .header("x-api-key", "sk-local-key")
        .body(&count[..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["input_tokens"].as_u64().is_some_and(|n| n > 0), "{v}");
    handle.shutdown().await;
}

#[tokio::test]
async fn pings_flow_while_the_backend_is_silent_and_a_full_queue_is_529() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = fake(text_frames(&["Hello"]), Some(0)).await;
    let mut s = settings(&backend.url, &dir);
    s.heartbeat_interval_secs = 0.05;
    s.max_concurrent = 1;
    s.max_queue = 0;
    let (handle, base) = proxy(s).await;

    let mut r = post_messages(&base, &request(true)).await;
    assert_eq!(r.status(), 200);
    tokio::time::timeout(BOUND, backend.arrived.recv())
        .await
        .unwrap();
    // The backend holds the only slot and says nothing: message_start, then pings.
    let mut seen = String::new();
    while seen.matches("event: ping").count() < 2 {
        let chunk = tokio::time::timeout(BOUND, r.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(seen.starts_with("event: message_start\n"), "{seen}");
    assert!(!seen.contains("content_block_start"));

    // No slot and no queue: Anthropic's overloaded status, which Claude Code retries.
    let busy = post_messages(&base, &request(false)).await;
    assert_eq!(busy.status().as_u16(), 529);
    assert!(busy.headers().contains_key("retry-after"));
    let (_, e) = error_of(busy).await;
    assert_eq!(e["type"], "overloaded_error");

    backend.release.notify_one();
    while let Some(chunk) = tokio::time::timeout(BOUND, r.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let m = fold(&events(&seen));
    assert_eq!(m["content"], json!([{"type": "text", "text": "Hello"}]));
    handle.shutdown().await;
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_upstream_request() {
    let dir = tempfile::tempdir().unwrap();
    // The backend sends one piece, then would go on forever.
    let mut backend = fake(text_frames(&["Hel", "lo"]), Some(1)).await;
    let (handle, base) = proxy(settings(&backend.url, &dir)).await;
    let mut r = post_messages(&base, &request(true)).await;
    let mut seen = String::new();
    while !seen.contains("text_delta") {
        let chunk = tokio::time::timeout(BOUND, r.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    drop(r);
    tokio::time::timeout(BOUND, backend.dropped.recv())
        .await
        .expect("the upstream request was not cancelled")
        .unwrap();
    handle.shutdown().await;
}

#[tokio::test]
async fn a_stop_sequence_ends_the_reply_and_the_upstream_request() {
    let dir = tempfile::tempdir().unwrap();
    let frames = text_frames(&["one two E", "ND three", "four"]);
    let mut backend = fake(frames, Some(2)).await;
    let (handle, base) = proxy(settings(&backend.url, &dir)).await;
    for stream in [true, false] {
        let mut body = request(stream);
        body["stop_sequences"] = json!(["END", "STOP"]);
        let r = post_messages(&base, &body).await;
        assert_eq!(r.status(), 200);
        let m = if stream {
            fold(&events(&r.text().await.unwrap()))
        } else {
            r.json().await.unwrap()
        };
        assert_eq!(
            m["content"],
            json!([{"type": "text", "text": "one two "}]),
            "{m}"
        );
        assert_eq!(m["stop_reason"], "stop_sequence");
        assert_eq!(m["stop_sequence"], "END");
        // The backend, held after "ND three", was cancelled rather than waited for.
        tokio::time::timeout(BOUND, backend.dropped.recv())
            .await
            .expect("the upstream request was not cancelled")
            .unwrap();
    }
    assert!(backend.body(0).get("stop").is_none());
    // A reply a stop sequence ended is a finished request, not one the client abandoned.
    let status: Value = client()
        .get(format!("{base}/admin/api/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for row in status["requests"].as_array().unwrap() {
        assert_eq!(row["state"], "done", "{row}");
        assert_eq!(row["status"], 200, "{row}");
    }
    handle.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_fails_mid_stream_ends_with_an_error_event() {
    let dir = tempfile::tempdir().unwrap();
    // No finish, no [DONE]: the backend's connection ends mid-reply.
    let frames = vec![chunk(json!({"content": "The weather is"}), Value::Null)];
    let backend = fake(frames, None).await;
    let (handle, base) = proxy(settings(&backend.url, &dir)).await;
    let text = post_messages(&base, &request(true))
        .await
        .text()
        .await
        .unwrap();
    let evs = events(&text);
    assert!(
        evs.iter()
            .any(|(_, d)| d["delta"]["text"] == "The weather is"),
        "{text}"
    );
    let (name, last) = evs.last().unwrap();
    assert_eq!(name, "error", "{text}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("backend"),
        "{last}"
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn claude_model_names_reach_the_backend_through_aliases_and_are_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let backend = fake(text_frames(&["ok"]), None).await;
    let mut s = settings(&backend.url, &dir);
    let (backends, aliases) = blockops_proxy::config::parse_tables(
        None,
        Some(&json!([
            {"match": "claude-*haiku*", "model": "qwen-small"},
            {"match": "claude-*", "model": "qwen-coder"}
        ])),
    )
    .unwrap();
    s.backends = backends;
    s.aliases = aliases;
    s.validate().unwrap();
    let (handle, base) = proxy(s).await;
    for (i, (asked, served)) in [
        ("claude-sonnet-4-5", "qwen-coder"),
        ("claude-haiku-4-5-20251001", "qwen-small"),
    ]
    .into_iter()
    .enumerate()
    {
        for stream in [false, true] {
            let mut body = request(stream);
            body["model"] = json!(asked);
            let r = post_messages(&base, &body).await;
            assert_eq!(r.status(), 200);
            let m = if stream {
                fold(&events(&r.text().await.unwrap()))
            } else {
                r.json().await.unwrap()
            };
            assert_eq!(m["model"], asked, "the reply echoes the requested name");
            assert_eq!(backend.body(2 * i + usize::from(stream))["model"], served);
        }
    }
    handle.shutdown().await;
}
