//! Calls a backend loses in its own parser, and a backend's raw text, end to end: a fake backend
//! that behaves as stock mlx_lm.server does (measured: `finish_reason: "tool_calls"` with no call
//! when its parser rejects the model's text; 200 and an empty body for `/v1/models` without a
//! Hugging Face cache folder), and as mlx_lm.server behind scripts/mlx-raw-server does (the
//! call's text in the reasoning field). `tests/mlx/` runs the same against the real server.

mod support;

use axum::{
    Json, Router,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use blockops_proxy::config::NoticeMode;
use serde_json::{Value, json};
use std::time::Duration;
use support::*;

const CALL_TEXT: &str = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>";

/// The last user message names what the backend does.
async fn stock_like(Json(body): Json<Value>) -> Response {
    let what = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let role = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    let call = |args: Value| {
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": args}}]}),
            Value::Null,
        )
    };
    let frames = match what.as_str() {
        // mlx_lm.server's parser raised: no call, and still "tool_calls".
        "drop" => vec![role, chunk(json!({}), json!("tool_calls"))],
        // A call whose arguments are a JSON string, not an object.
        "bad-args" => vec![
            role,
            call(json!("\"Paris\"")),
            chunk(json!({}), json!("tool_calls")),
        ],
        "kept" => vec![
            role,
            call(json!("{\"city\": \"Paris\"}")),
            chunk(json!({}), json!("tool_calls")),
        ],
        // Parser off: a call written before </think> stays in the reasoning field.
        "think" => {
            let mut f = vec![role];
            for piece in [
                "The user wants weather.\n",
                &CALL_TEXT[..7],
                &CALL_TEXT[7..],
            ] {
                f.push(chunk(json!({"reasoning": piece}), Value::Null));
            }
            f.push(chunk(json!({"content": "Done."}), Value::Null));
            f.push(chunk(json!({}), json!("stop")));
            f
        }
        _ => vec![
            role,
            chunk(json!({"content": "Hello"}), Value::Null),
            chunk(json!({}), json!("stop")),
        ],
    };
    let mut frames = frames;
    frames.push(bytes::Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(frames, Duration::ZERO)
}

/// `GET /v1/models` as mlx_lm.server answers it without a Hugging Face cache folder.
async fn empty_models() -> Response {
    let mut r = ().into_response();
    r.headers_mut().insert(
        header::SERVER,
        HeaderValue::from_static("BaseHTTP/0.6 Python/3.11.7"),
    );
    r
}

async fn setup(notices: NoticeMode) -> (blockops_proxy::ServerHandle, String, tempfile::TempDir) {
    let backend = serve(
        Router::new()
            .route("/v1/chat/completions", post(stock_like))
            .route("/v1/models", get(empty_models)),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&backend, &dir);
    s.notices = notices;
    let (handle, base) = proxy(s).await;
    (handle, base, dir)
}

fn request(what: &str, stream: bool) -> Value {
    json!({
        "model": "m",
        "stream": stream,
        "messages": [{"role": "user", "content": what}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
    })
}

/// The reply as a client assembles it: content, calls (name, arguments), finish_reason.
async fn ask(base: &str, what: &str, stream: bool) -> (String, Vec<(String, String)>, String) {
    let r = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&request(what, stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    if stream {
        let (data, _) = parse_sse(&text);
        let (content, calls, finish) = fold_stream(&data);
        return (content, calls, finish.unwrap_or_default());
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    let m = &v["choices"][0]["message"];
    let calls = m["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["function"]["name"].as_str().unwrap().to_owned(),
                c["function"]["arguments"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (
        m["content"].as_str().unwrap_or_default().to_owned(),
        calls,
        v["choices"][0]["finish_reason"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

async fn get_json(url: String) -> (u16, Value) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn dropped_total(base: &str) -> String {
    let text = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("blockops_backend_tool_calls_dropped_total{"))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_call_the_backend_dropped_is_said_counted_and_not_promised() {
    let (_h, base, dir) = setup(NoticeMode::Content).await;
    for stream in [false, true] {
        let (content, calls, finish) = ask(&base, "drop", stream).await;
        assert!(calls.is_empty());
        assert_eq!(finish, "stop", "no call reached the client");
        assert!(
            content.contains("Backend dropped a tool call")
                && content.contains("scripts/mlx-raw-server"),
            "{content:?}"
        );
    }
    assert_eq!(
        dropped_total(&base).await,
        "blockops_backend_tool_calls_dropped_total{backend=\"default\"} 2"
    );
    let (_, status) = get_json(format!("{base}/admin/api/status")).await;
    let row = &status["requests"][0];
    assert_eq!(row["dropped_calls"], 1, "{row}");
    assert_eq!(status["backend"]["tool_text"]["mode"], "parsed");
    assert_eq!(status["backend"]["tool_text"]["dropped_calls"], 2);
    // Another backend: what this one did says nothing about it.
    let r = reqwest::Client::new()
        .patch(format!("{base}/admin/api/config"))
        .header("origin", &base)
        .json(&json!({"backend_url": "http://127.0.0.1:9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (_, status) = get_json(format!("{base}/admin/api/status")).await;
    assert_eq!(
        status["backend"]["tool_text"]["mode"], "unknown",
        "{status}"
    );
    assert_eq!(status["backend"]["tool_text"]["dropped_calls"], 0);
    let records = log_records(&dir.path().join("logs").join("proxy.log"));
    let last = records.last().unwrap();
    assert_eq!(last["finish_reason"], "stop");
    assert!(
        last["notices"][0]
            .as_str()
            .unwrap()
            .starts_with("Backend dropped a tool call"),
        "{last}"
    );
}

#[tokio::test]
async fn a_late_notice_follows_the_words_and_stays_out_when_notices_are_off() {
    let (h, base, dir) = setup(NoticeMode::Off).await;
    let (content, _, finish) = ask(&base, "drop", true).await;
    assert_eq!((content.as_str(), finish.as_str()), ("", "stop"));
    // Off: not in the reply, still in the record and the counter.
    assert!(dropped_total(&base).await.ends_with(" 1"));
    // Shutting down flushes the traffic log.
    h.shutdown().await;
    let records = log_records(&dir.path().join("logs").join("proxy.log"));
    assert_eq!(records.last().unwrap()["dropped_calls"], 1);
}

#[tokio::test]
async fn a_structured_call_without_an_object_for_arguments_counts_as_dropped() {
    let (_h, base, _dir) = setup(NoticeMode::Content).await;
    let (content, calls, finish) = ask(&base, "bad-args", false).await;
    // Passed on as the backend sent it, and said.
    assert_eq!(calls, vec![("get_weather".into(), "\"Paris\"".into())]);
    assert_eq!(finish, "tool_calls");
    assert!(content.contains("not a JSON object"), "{content:?}");
    assert!(dropped_total(&base).await.ends_with(" 1"));
}

#[tokio::test]
async fn calls_that_arrive_and_plain_text_are_never_reported() {
    let (_h, base, _dir) = setup(NoticeMode::Content).await;
    for stream in [false, true] {
        let (content, calls, finish) = ask(&base, "kept", stream).await;
        assert_eq!(content, "");
        assert_eq!(
            calls,
            vec![("get_weather".into(), "{\"city\": \"Paris\"}".into())]
        );
        assert_eq!(finish, "tool_calls");
        let (content, calls, finish) = ask(&base, "plain", stream).await;
        assert_eq!((content.as_str(), finish.as_str()), ("Hello", "stop"));
        assert!(calls.is_empty());
    }
    assert_eq!(dropped_total(&base).await, "");
    let (_, status) = get_json(format!("{base}/admin/api/status")).await;
    assert_eq!(status["backend"]["tool_text"]["mode"], "parsed");
    assert_eq!(status["backend"]["tool_text"]["structured_calls"], 2);
}

#[tokio::test]
async fn a_call_in_the_backends_reasoning_becomes_a_call() {
    let (_h, base, _dir) = setup(NoticeMode::Content).await;
    for stream in [false, true] {
        let (content, calls, finish) = ask(&base, "think", stream).await;
        assert_eq!(content, "Done.");
        assert_eq!(
            calls,
            vec![("get_weather".into(), "{\"city\":\"Paris\"}".into())]
        );
        assert_eq!(finish, "tool_calls");
    }
    let (_, status) = get_json(format!("{base}/admin/api/status")).await;
    assert_eq!(status["backend"]["tool_text"]["mode"], "raw", "{status}");
    assert_eq!(status["backend"]["tool_text"]["text_calls"], 2);
}

#[tokio::test]
async fn an_empty_models_list_is_named_not_a_parse_error() {
    let (_h, base, _dir) = setup(NoticeMode::Content).await;
    let (status, body) = get_json(format!("{base}/v1/models")).await;
    assert_eq!(status, 502);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("empty body") && message.contains("HF_HUB_CACHE"),
        "{message}"
    );
}
