//! Tool-call translation end to end: the engine's whole corpus replayed by a fake backend as an
//! SSE stream (cut into token-sized pieces), through the running proxy, to a streaming and a
//! non-streaming client; and the demo backend's three seed formats. What the clients assemble
//! must be what the corpus expects.

#[path = "../../toolcalls/tests/support/cases.rs"]
mod cases;
mod support;

use axum::{Json, Router, extract::State, response::Response, routing::post};
use cases::Case;
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};
use support::*;

/// The cases a request can express: everything but options the proxy derives otherwise
/// (PARSER_FORMATS is a server setting; `reasoning: off` is REASONING_FIELD=none, which moves
/// reasoning into content rather than leaving the tags).
fn replayable(case: &Case) -> bool {
    case.formats.is_none() && !case.no_reasoning && !cases::tools_for(case).is_empty()
}

fn openai_tools(case: &Case) -> Value {
    Value::Array(
        cases::tools_for(case)
            .into_iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "parameters": t.parameters}}))
            .collect(),
    )
}

/// Token-sized pieces (1 to 5 characters, varying), so markers are cut everywhere.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut size = 1;
    for c in text.chars() {
        current.push(c);
        if current.chars().count() >= size {
            out.push(std::mem::take(&mut current));
            size = size % 5 + 1;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The fake backend: the last user message names the case; its input is the reply.
async fn replay(State(cases): State<Arc<Vec<Case>>>, Json(body): Json<Value>) -> Response {
    let name = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let case = cases.iter().find(|c| c.name == name).expect("a known case");
    let mut frames = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for t in tokens(&case.input) {
        frames.push(chunk(json!({"content": t}), Value::Null));
    }
    frames.push(chunk(
        json!({}),
        json!(case.finish.as_deref().unwrap_or("stop")),
    ));
    frames.push(bytes::Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(frames, Duration::ZERO)
}

/// What a streaming client assembles: content, reasoning, calls (name, arguments), finish.
type Assembled = (String, String, Vec<(String, Value)>, String);

fn assemble_stream(body: &str) -> Assembled {
    let (data, _) = parse_sse(body);
    let (mut content, mut reasoning) = (String::new(), String::new());
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut finish = String::new();
    for d in data.iter().filter(|d| *d != "[DONE]") {
        let v: Value = serde_json::from_str(d).expect("chunk is JSON");
        assert!(v.get("error").is_none(), "error event: {d}");
        for c in v["choices"].as_array().into_iter().flatten() {
            let delta = &c["delta"];
            content.push_str(delta["content"].as_str().unwrap_or_default());
            reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or_default());
            for tc in delta["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().expect("index") as usize;
                if i == calls.len() {
                    let id = tc["id"]
                        .as_str()
                        .expect("the first delta of a call has its id");
                    assert!(id.starts_with("call_") && id.len() == 29 || !id.is_empty());
                    calls.push((String::new(), String::new()));
                }
                if let Some(n) = tc["function"]["name"].as_str() {
                    calls[i].0.push_str(n);
                }
                calls[i]
                    .1
                    .push_str(tc["function"]["arguments"].as_str().unwrap_or_default());
            }
            if let Some(f) = c["finish_reason"].as_str() {
                finish = f.to_owned();
            }
        }
    }
    let calls = calls
        .into_iter()
        .map(|(n, a)| {
            (
                n,
                serde_json::from_str(&a).expect("streamed arguments are JSON"),
            )
        })
        .collect();
    (content, reasoning, calls, finish)
}

fn assemble_whole(v: &Value) -> Assembled {
    let m = &v["choices"][0]["message"];
    let calls = m["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|tc| {
            let args = tc["function"]["arguments"]
                .as_str()
                .expect("arguments is a string");
            (
                tc["function"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                serde_json::from_str(args).expect("arguments are JSON"),
            )
        })
        .collect::<Vec<_>>();
    if !calls.is_empty() && m["content"].as_str().is_none_or(str::is_empty) {
        assert!(
            m["content"].is_null(),
            "content is null when only calls were produced: {m}"
        );
    }
    (
        m["content"].as_str().unwrap_or_default().to_owned(),
        m["reasoning_content"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        calls,
        v["choices"][0]["finish_reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn expected(case: &Case) -> Assembled {
    let finish = if case.calls.is_empty() {
        case.finish.clone().unwrap_or_else(|| "stop".into())
    } else {
        "tool_calls".into()
    };
    (
        case.content.clone(),
        case.reasoning.clone().unwrap_or_default(),
        case.calls
            .iter()
            .map(|(_, n, a)| (n.clone(), a.clone()))
            .collect(),
        finish,
    )
}

fn request(case: &Case, stream: bool) -> Value {
    let mut messages = vec![json!({"role": "user", "content": case.name})];
    if case.prefill_think {
        messages.push(json!({"role": "assistant", "content": "<think>"}));
    }
    json!({
        "model": "fake",
        "stream": stream,
        "messages": messages,
        "tools": openai_tools(case),
        "parallel_tool_calls": case.parallel,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_case_translates_the_same_through_the_proxy_streaming_and_not() {
    let dir_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../toolcalls/tests/corpus");
    let all = cases::load(&dir_path);
    let cases: Vec<Case> = all.into_iter().filter(replayable).collect();
    assert!(
        cases.len() >= 150,
        "only {} replayable corpus cases",
        cases.len()
    );
    let cases = Arc::new(cases);
    let backend = serve(
        Router::new()
            .route("/v1/chat/completions", post(replay))
            .with_state(cases.clone()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&backend, &dir);
    // Notices would start the content; this test is about translation alone.
    s.memory_warn_percent = 100.0;
    s.memory_critical_percent = 100.0;
    let (_handle, base) = proxy(s).await;
    let http = client();
    let mut failures = Vec::new();
    let mut formats_seen = std::collections::BTreeSet::new();
    for case in cases.iter() {
        let want = expected(case);
        formats_seen.extend(case.calls.iter().map(|(f, _, _)| f.clone()));
        let streamed = http
            .post(format!("{base}/v1/chat/completions"))
            .json(&request(case, true))
            .send()
            .await
            .expect("request");
        assert_eq!(streamed.status(), 200, "{}", case.name);
        let got = assemble_stream(&streamed.text().await.unwrap());
        if got != want {
            failures.push(format!(
                "{} (streaming):\n  want {want:?}\n  got  {got:?}",
                case.name
            ));
        }
        let whole: Value = http
            .post(format!("{base}/v1/chat/completions"))
            .json(&request(case, false))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("a chat.completion");
        let got = assemble_whole(&whole);
        if got != want {
            failures.push(format!(
                "{} (non-streaming):\n  want {want:?}\n  got  {got:?}",
                case.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for format in toolcalls::known_formats() {
        assert!(
            formats_seen.contains(format),
            "no replayed case of format {format}"
        );
    }
}

#[tokio::test]
async fn the_demo_backend_s_seed_formats_arrive_as_tool_calls() {
    let (addr, _demo) = blockops_proxy::demo::spawn(blockops_proxy::demo::DemoOptions {
        tokens_per_sec: 0.0,
    })
    .await
    .expect("demo backend");
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&format!("http://{addr}"), &dir);
    s.memory_warn_percent = 100.0;
    s.memory_critical_percent = 100.0;
    let (_handle, base) = proxy(s).await;
    let http = client();
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    for format in ["hermes", "tool_call_line", "qwen3_coder"] {
        for stream in [true, false] {
            let body = json!({"model": "demo", "stream": stream, "tools": tools,
                "messages": [{"role": "user", "content": format!("Weather in Paris? [format={format}]")}]});
            let r = http
                .post(format!("{base}/v1/chat/completions"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let (content, reasoning, calls, finish) = if stream {
                assemble_stream(&r.text().await.unwrap())
            } else {
                assemble_whole(&r.json().await.unwrap())
            };
            assert_eq!(finish, "tool_calls", "{format} stream={stream}");
            assert_eq!(calls.len(), 1, "{format} stream={stream}: {calls:?}");
            assert_eq!(calls[0].0, "get_weather");
            assert_eq!(calls[0].1["city"], "Paris", "{format}: {calls:?}");
            assert!(
                !content.contains("tool_call") && !content.contains("TOOL_CALL"),
                "{format}: {content:?}"
            );
            assert!(!reasoning.is_empty(), "the demo's <think> is reasoning");
        }
    }
}
