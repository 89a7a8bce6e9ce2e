//! Shared fixtures: a scriptable fake backend and a proxy on port 0, both in-process.
#![allow(dead_code)]

use axum::{
    Router,
    body::Body,
    http::{HeaderValue, header},
    response::Response,
};
use blockops_proxy::{ServerHandle, Settings};
use bytes::Bytes;
use serde_json::{Value, json};
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::net::TcpListener;

/// Serves `router` on a loopback port; returns its base URL.
pub async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake backend");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

/// A base URL where nothing listens (bound, then released).
pub async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

/// Settings for a test proxy: the given backend, a private log file, no config file.
pub fn settings(backend_url: &str, dir: &tempfile::TempDir) -> Settings {
    Settings {
        backend_url: backend_url.to_owned(),
        log_file: dir.path().join("logs").join("proxy.log"),
        config_path: Some(dir.path().join("config.toml")),
        ..Settings::default()
    }
}

/// A proxy on a free loopback port.
pub async fn proxy(settings: Settings) -> (ServerHandle, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let handle = blockops_proxy::start_on(listener, settings);
    let base = format!("http://{}", handle.local_addr());
    (handle, base)
}

/// `chat.completion.chunk` SSE frames for the given content pieces, then a finish, usage and `[DONE]`.
pub fn sse_script(pieces: &[&str]) -> Vec<Bytes> {
    let mut frames = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for p in pieces {
        frames.push(chunk(json!({"content": p}), Value::Null));
    }
    frames.push(chunk(json!({}), json!("stop")));
    frames.push(Bytes::from(format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake", "choices": [],
               "usage": {"prompt_tokens": 7, "completion_tokens": pieces.len(), "total_tokens": 7 + pieces.len()}})
    )));
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    frames
}

pub fn chunk(delta: Value, finish: Value) -> Bytes {
    Bytes::from(format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    ))
}

/// An SSE response from frames, each sent after `gap`.
pub fn sse_response(frames: Vec<Bytes>, gap: Duration) -> Response {
    let stream = futures_util::stream::unfold(frames.into_iter(), move |mut it| async move {
        let f = it.next()?;
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        Some((Ok::<_, std::convert::Infallible>(f), it))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// Every request body the fake backend received, in order.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<(String, Value, axum::http::HeaderMap)>>>);

impl Recorder {
    pub fn push(&self, path: &str, body: Value, headers: axum::http::HeaderMap) {
        self.0
            .lock()
            .unwrap()
            .push((path.to_owned(), body, headers));
    }
    pub fn bodies(&self) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b, _)| b.clone())
            .collect()
    }
    pub fn last(&self) -> Option<(String, Value, axum::http::HeaderMap)> {
        self.0.lock().unwrap().last().cloned()
    }
}

/// Reads an SSE body into its `data:` payloads and counts comment lines.
pub fn parse_sse(text: &str) -> (Vec<String>, usize) {
    let mut data = Vec::new();
    let mut comments = 0;
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data: ") {
            data.push(d.to_owned());
        } else if line.starts_with(':') {
            comments += 1;
        }
    }
    (data, comments)
}

/// Reads a stream of named events (Messages, Responses) into (name, data) pairs, checking each
/// event is named by its data's `type`.
pub fn named_events(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut name = None;
        let mut data = None;
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_owned());
            } else if let Some(d) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str::<Value>(d).expect("event data is JSON"));
            }
        }
        let (name, data) = (name.expect("every event is named"), data.expect("has data"));
        assert_eq!(data["type"], name.as_str(), "{block}");
        out.push((name, data));
    }
    out
}

/// Folds streamed chunks the way an OpenAI SDK does: content and tool calls.
pub fn fold_stream(data: &[String]) -> (String, Vec<(String, String)>, Option<String>) {
    let mut content = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut finish = None;
    for d in data {
        if d == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(d).expect("chunk is JSON");
        for c in v["choices"].as_array().into_iter().flatten() {
            if let Some(t) = c["delta"]["content"].as_str() {
                content.push_str(t);
            }
            for tc in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().unwrap() as usize;
                if calls.len() <= i {
                    calls.resize(i + 1, (String::new(), String::new()));
                }
                if let Some(n) = tc["function"]["name"].as_str() {
                    calls[i].0.push_str(n);
                }
                if let Some(a) = tc["function"]["arguments"].as_str() {
                    calls[i].1.push_str(a);
                }
            }
            if let Some(f) = c["finish_reason"].as_str() {
                finish = Some(f.to_owned());
            }
        }
    }
    (content, calls, finish)
}

/// Reads every record of the traffic log.
pub fn log_records(path: &PathBuf) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("log line is JSON"))
        .collect()
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}
