//! The Responses front door (`POST /v1/responses`) through the whole server on port 0, against
//! in-process fake chat backends: what the backend is sent, what the client gets (streamed and
//! whole), `previous_response_id`, the kept responses (`GET`/`DELETE /v1/responses/{id}`,
//! `…/input_items`), the error shapes, queueing and a backend cut mid-reply.

mod faulty;
mod support;

use axum::{Router, extract::Request, routing};
use bytes::Bytes;
use faulty::{Fault, FaultyBackend};
use serde_json::{Value, json};
use std::time::Duration;
use support::*;

/// A chat backend that records each body and answers every request with `frames`.
async fn backend(frames: Vec<Bytes>, recorder: Recorder) -> String {
    let app = Router::new().route(
        "/v1/chat/completions",
        routing::post(move |req: Request| {
            let recorder = recorder.clone();
            let frames = frames.clone();
            async move {
                let headers = req.headers().clone();
                let body = axum::body::to_bytes(req.into_body(), 1 << 24)
                    .await
                    .unwrap();
                recorder.push(
                    "/v1/chat/completions",
                    serde_json::from_slice(&body).unwrap(),
                    headers,
                );
                sse_response(frames, Duration::ZERO)
            }
        }),
    );
    serve(app).await
}

const TEXT_CALL: &[&str] = &[
    "Checking.\n<tool_call>\n{\"name\": \"get_weather\", ",
    "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
];

/// The backend's own structured call, its arguments in two pieces.
fn structured_frames() -> Vec<Bytes> {
    vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_backend0", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Rome\"}"}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
        Bytes::from(format!(
            "data: {}\n\n",
            json!({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "fake", "choices": [],
                   "usage": {"prompt_tokens": 12, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}}})
        )),
        Bytes::from_static(b"data: [DONE]\n\n"),
    ]
}

/// What Codex sends, in shape: developer prompt, user turn, function tools, a namespace, a
/// hosted tool, and fields a chat backend has no use for.
fn codex_like_body(stream: bool) -> Value {
    json!({
        "model": "local-model", "stream": stream, "store": false,
        "tool_choice": "auto", "parallel_tool_calls": true,
        "reasoning": {"summary": "auto"}, "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "k", "client_metadata": {"x": "y"},
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        ],
        "tools": [
            {"type": "function", "name": "get_weather", "strict": false,
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
            {"type": "namespace", "name": "agents", "tools": [{"type": "function", "name": "close_agent", "parameters": {"type": "object", "properties": {}}}]},
            {"type": "web_search", "external_web_access": true},
        ],
    })
}

async fn post(base: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/responses"))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn calls_of(output: &Value) -> Vec<(String, Value)> {
    output
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "function_call")
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_owned(),
                serde_json::from_str(i["arguments"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_text_tool_call_streams_as_a_function_call_item_and_whole_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let url = backend(sse_script(TEXT_CALL), recorder.clone()).await;
    let (handle, base) = proxy(settings(&url, &dir)).await;

    let r = post(&base, &codex_like_body(true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let evs = named_events(&r.text().await.unwrap());
    assert!(!evs.iter().any(|(_, d)| d.to_string().contains("[DONE]")));
    assert_eq!(evs[0].0, "response.created");
    assert_eq!(evs[0].1["response"]["status"], "in_progress");
    for (i, (_, d)) in evs.iter().enumerate() {
        assert_eq!(
            d["sequence_number"], i as u64,
            "sequence numbers count from 0"
        );
    }
    let (last, done) = evs.last().unwrap();
    assert_eq!(last, "response.completed");
    let response = &done["response"];
    assert_eq!(response["status"], "completed");
    assert_eq!(
        response["model"], "local-model",
        "the name the client asked for"
    );
    assert!(response["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(
        calls_of(&response["output"]),
        [("get_weather".to_owned(), json!({"city": "Paris"}))]
    );
    // Codex builds its history from output_item.done only: the call must be there, whole.
    let done_items: Vec<&Value> = evs
        .iter()
        .filter(|(n, _)| n == "response.output_item.done")
        .map(|(_, d)| &d["item"])
        .collect();
    let call = done_items
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap();
    let call_id = call["call_id"].as_str().unwrap();
    assert!(call_id.starts_with("call_"));
    assert_eq!(call["id"], format!("fc_{}", &call_id[5..]));
    assert_eq!(done_items[0]["content"][0]["text"], "Checking.");
    let usage = &response["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap())
    );

    // What the backend got: one system message first, functions flattened, the hosted tool gone.
    let sent = recorder.last().unwrap().1;
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "You are Codex."})
    );
    assert_eq!(
        sent["messages"][1],
        json!({"role": "user", "content": "Weather in Paris?"})
    );
    let names: Vec<&str> = sent["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["get_weather", "close_agent"]);
    assert_eq!(sent["tool_choice"], "auto");
    for absent in ["input", "include", "reasoning", "store", "prompt_cache_key"] {
        assert!(sent.get(absent).is_none(), "{absent} was forwarded");
    }

    let whole: Value = post(&base, &codex_like_body(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(whole["object"], "response");
    assert_eq!(whole["status"], "completed");
    assert_eq!(whole["model"], "local-model");
    assert_eq!(calls_of(&whole["output"]), calls_of(&response["output"]));
    assert_eq!(whole["output"][0]["content"][0]["text"], "Checking.");
    handle.shutdown().await;
}

#[tokio::test]
async fn structured_backend_calls_stream_their_arguments_and_report_cached_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let url = backend(structured_frames(), Recorder::default()).await;
    let (handle, base) = proxy(settings(&url, &dir)).await;
    let body = json!({"model": "m", "stream": true, "input": "Rome?",
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]});
    let evs = named_events(&post(&base, &body).await.text().await.unwrap());
    let deltas: String = evs
        .iter()
        .filter(|(n, _)| n == "response.function_call_arguments.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "{\"city\": \"Rome\"}");
    let response = &evs.last().unwrap().1["response"];
    assert_eq!(
        calls_of(&response["output"]),
        [("get_weather".to_owned(), json!({"city": "Rome"}))]
    );
    assert_eq!(response["usage"]["input_tokens"], 12);
    assert_eq!(
        response["usage"]["input_tokens_details"]["cached_tokens"],
        4
    );
    assert_eq!(response["usage"]["total_tokens"], 17);
    handle.shutdown().await;
}

#[tokio::test]
async fn previous_response_id_continues_a_stored_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let url = backend(sse_script(TEXT_CALL), recorder.clone()).await;
    let (handle, base) = proxy(settings(&url, &dir)).await;
    let first: Value = post(
        &base,
        &json!({"model": "m", "input": "Weather in Paris?", "instructions": "Be brief.",
            "tools": [{"type": "function", "name": "get_weather"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let call = first["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap()
        .clone();
    let second = post(
        &base,
        &json!({"model": "m", "previous_response_id": first["id"],
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}]}),
    )
    .await;
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["previous_response_id"], first["id"]);
    let sent = recorder.last().unwrap().1;
    let messages = sent["messages"].as_array().unwrap();
    // Instructions are not carried over (as on OpenAI): only the history is.
    assert_eq!(
        messages[0],
        json!({"role": "user", "content": "Weather in Paris?"})
    );
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], "Checking.");
    assert_eq!(messages[1]["tool_calls"][0]["id"], call["call_id"]);
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": call["call_id"], "content": "sunny"})
    );

    // `store: false` keeps nothing, and an id not kept is a 400 that says so.
    let unstored: Value = post(&base, &json!({"model": "m", "input": "hi", "store": false}))
        .await
        .json()
        .await
        .unwrap();
    for id in [unstored["id"].as_str().unwrap(), "resp_never"] {
        let r = post(
            &base,
            &json!({"model": "m", "input": "again", "previous_response_id": id}),
        )
        .await;
        assert_eq!(r.status(), 400);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "previous_response_not_found");
        assert_eq!(e["error"]["param"], "previous_response_id");
        assert_eq!(e["error"]["type"], "invalid_request_error");
    }
    handle.shutdown().await;
}

async fn get(base: &str, path: &str) -> reqwest::Response {
    client().get(format!("{base}{path}")).send().await.unwrap()
}

/// A 404 in OpenAI's shape whose message names the id and what blockops keeps.
async fn assert_not_kept(r: reqwest::Response, id: &str) {
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(e["error"]["code"], "not_found");
    assert_eq!(e["error"]["param"], Value::Null);
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains(id), "{message}");
    assert!(message.contains("RESPONSES_STORE_MAX"), "{message}");
}

#[tokio::test]
async fn stored_responses_are_retrieved_listed_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let url = backend(sse_script(TEXT_CALL), Recorder::default()).await;
    let (handle, base) = proxy(settings(&url, &dir)).await;
    let input = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "message", "id": "msg_mine", "role": "user",
         "content": [{"type": "input_text", "text": "Be quick."}]},
    ]);
    let tools = json!([{"type": "function", "name": "get_weather"}]);

    // Whole: GET gives back the object the POST returned.
    let whole: Value = post(
        &base,
        &json!({"model": "m", "input": input, "tools": tools}),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = whole["id"].as_str().unwrap();
    let r = get(&base, &format!("/v1/responses/{id}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), whole);

    // Streamed: the object response.completed carried.
    let r = post(
        &base,
        &json!({"model": "m", "input": "hi", "tools": tools, "stream": true}),
    )
    .await;
    let evs = named_events(&r.text().await.unwrap());
    let (last, completed) = evs.last().unwrap();
    assert_eq!(last, "response.completed");
    let streamed_id = completed["response"]["id"].as_str().unwrap();
    let got: Value = get(&base, &format!("/v1/responses/{streamed_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got, completed["response"]);
    assert_eq!(got["object"], "response");
    assert_eq!(got["status"], "completed");

    // Input items: what was sent, newest first, each with an id; asc and limit page it.
    let list: Value = get(&base, &format!("/v1/responses/{id}/input_items"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["has_more"], false);
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["id"], "msg_mine");
    assert_eq!(data[0]["content"][0]["text"], "Be quick.");
    let first_sent = data[1]["id"].as_str().unwrap();
    assert!(first_sent.starts_with("msg_"));
    assert_eq!(
        data[1]["content"],
        json!([{"type": "input_text", "text": "Weather in Paris?"}])
    );
    assert_eq!(list["first_id"], "msg_mine");
    assert_eq!(list["last_id"], first_sent);
    let asc: Value = get(
        &base,
        &format!("/v1/responses/{id}/input_items?order=asc&limit=1"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(asc["data"][0]["id"], first_sent);
    assert_eq!(asc["has_more"], true);
    let r = get(&base, &format!("/v1/responses/{id}/input_items?limit=500")).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "limit");

    // Delete: then it is gone for GET, input_items, a second DELETE and previous_response_id.
    let r = client()
        .delete(format!("{base}/v1/responses/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"id": id, "object": "response.deleted", "deleted": true})
    );
    assert_not_kept(get(&base, &format!("/v1/responses/{id}")).await, id).await;
    assert_not_kept(
        get(&base, &format!("/v1/responses/{id}/input_items")).await,
        id,
    )
    .await;
    let again = client()
        .delete(format!("{base}/v1/responses/{id}"))
        .send()
        .await
        .unwrap();
    assert_not_kept(again, id).await;
    let r = post(
        &base,
        &json!({"model": "m", "input": "more", "previous_response_id": id}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "previous_response_not_found");
    // Another method says which ones are served.
    let r = client()
        .put(format!("{base}/v1/responses/{streamed_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "method_not_allowed");
    assert!(e["error"]["message"].as_str().unwrap().contains("DELETE"));
    // The streamed one is untouched.
    assert_eq!(
        get(&base, &format!("/v1/responses/{streamed_id}"))
            .await
            .status(),
        200
    );

    // `store: false` keeps nothing; an id never seen is the same helpful 404.
    let unstored: Value = post(&base, &json!({"model": "m", "input": "hi", "store": false}))
        .await
        .json()
        .await
        .unwrap();
    let unstored_id = unstored["id"].as_str().unwrap();
    assert_not_kept(
        get(&base, &format!("/v1/responses/{unstored_id}")).await,
        unstored_id,
    )
    .await;
    assert_not_kept(get(&base, "/v1/responses/resp_never").await, "resp_never").await;
    handle.shutdown().await;
}

#[tokio::test]
async fn bad_bodies_are_openai_shaped_400s() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let url = backend(sse_script(&["x"]), recorder.clone()).await;
    let (handle, base) = proxy(settings(&url, &dir)).await;
    let cases: &[(&[u8], &str)] = &[
        (b"{\"model\": ", "invalid_json"),
        (b"[]", "invalid_json"),
        (b"{\"model\": \"m\"}", "missing_input"),
        (b"{\"model\": \"m\", \"input\": 3}", "invalid_input"),
        (
            b"{\"model\": \"m\", \"input\": [{\"role\": \"robot\", \"content\": \"x\"}]}",
            "invalid_input",
        ),
    ];
    for (body, code) in cases {
        let r = client()
            .post(format!("{base}/v1/responses"))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{}", String::from_utf8_lossy(body));
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], *code);
        assert!(!e["error"]["message"].as_str().unwrap().is_empty());
    }
    assert!(recorder.bodies().is_empty(), "nothing reached the backend");
    handle.shutdown().await;
}

#[tokio::test]
async fn a_reply_cut_mid_stream_ends_with_response_failed_after_its_text() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FaultyBackend::start(Fault::NoDoneCut).await;
    let (handle, base) = proxy(settings(&backend.url, &dir)).await;
    let r = post(&base, &json!({"model": "m", "input": "hi", "stream": true})).await;
    assert_eq!(r.status(), 200);
    let evs = named_events(&r.text().await.unwrap());
    let text: String = evs
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "cut sho");
    let (last, failed) = evs.last().unwrap();
    assert_eq!(last, "response.failed");
    assert_eq!(failed["response"]["status"], "failed");
    assert_eq!(failed["response"]["error"]["code"], "server_error");
    // The text delivered before the failure is a finished item.
    assert_eq!(
        failed["response"]["output"][0]["content"][0]["text"],
        "cut sho"
    );
    // Not streaming: an OpenAI-shaped HTTP error.
    let r = post(&base, &json!({"model": "m", "input": "hi"})).await;
    assert_eq!(r.status(), 502);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"]["message"].is_string());
    handle.shutdown().await;
}

/// Waits (bounded) until `ready` holds.
async fn until(what: &str, ready: impl Fn() -> bool) {
    for _ in 0..1000 {
        if ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_queued_request_gets_created_at_once_then_in_progress_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FaultyBackend::start(Fault::HeldThenHealthy(vec!["done".into()])).await;
    let mut s = settings(&backend.url, &dir);
    s.max_concurrent = 1;
    s.heartbeat_interval_secs = 0.05;
    let (handle, base) = proxy(s).await;
    let first = tokio::spawn({
        let base = base.clone();
        async move {
            post(&base, &json!({"model": "m", "input": "one"}))
                .await
                .status()
        }
    });
    until("the first request holds the slot", || {
        backend.requests() == 1
    })
    .await;

    let mut queued = post(
        &base,
        &json!({"model": "m", "input": "two", "stream": true}),
    )
    .await;
    assert_eq!(queued.status(), 200);
    let mut seen = String::new();
    // While it waits: response.created, then response.in_progress events (not SSE comments:
    // Codex's idle timer counts parsed events only).
    while seen.matches("event: response.in_progress").count() < 3 {
        let bytes = queued
            .chunk()
            .await
            .unwrap()
            .expect("the stream stays open while queued");
        seen.push_str(std::str::from_utf8(&bytes).unwrap());
    }
    assert!(seen.starts_with("event: response.created\n"));
    assert!(!seen.lines().any(|l| l.starts_with(':')));
    backend.release();
    while let Some(bytes) = queued.chunk().await.unwrap() {
        seen.push_str(std::str::from_utf8(&bytes).unwrap());
    }
    let evs = named_events(&seen);
    assert_eq!(evs.last().unwrap().0, "response.completed");
    assert_eq!(
        evs.last().unwrap().1["response"]["output"][0]["content"][0]["text"],
        "done"
    );
    assert_eq!(first.await.unwrap(), 200);
    handle.shutdown().await;
}
