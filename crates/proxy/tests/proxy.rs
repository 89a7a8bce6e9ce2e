//! The whole server on port 0 against in-process fake backends: the foundation's contract.

mod support;

use axum::{
    Json, Router,
    extract::Request,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use std::time::Duration;
use support::*;

fn chat_body(stream: bool) -> Value {
    json!({"model": "fake", "stream": stream, "messages": [{"role": "user", "content": "hi"}],
           "x_vendor_field": {"keep": [1, 2, 3]}, "temperature": 0.3})
}

/// A backend that records what it got and replays a script as SSE.
async fn scripted(pieces: &'static [&'static str], recorder: Recorder) -> String {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |req: Request| {
            let recorder = recorder.clone();
            async move {
                let headers = req.headers().clone();
                let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .unwrap();
                recorder.push(
                    "/v1/chat/completions",
                    serde_json::from_slice(&body).unwrap(),
                    headers,
                );
                sse_response(sse_script(pieces), Duration::ZERO)
            }
        }),
    );
    serve(app).await
}

#[tokio::test]
async fn stream_and_non_stream_give_the_same_content() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let backend = scripted(&["Hel", "lo, ", "wörld", "!"], recorder.clone()).await;
    let (handle, base) = proxy(settings(&backend, &dir)).await;
    let http = client();

    let streamed = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    assert_eq!(streamed.headers()["content-type"], "text/event-stream");
    let text = streamed.text().await.unwrap();
    let (data, _) = parse_sse(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let (content, calls, finish) = fold_stream(&data);

    let whole: Value = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["content"], content);
    assert_eq!(content, "Hello, wörld!");
    assert!(calls.is_empty());
    assert_eq!(finish.as_deref(), Some("stop"));
    assert_eq!(whole["choices"][0]["finish_reason"], "stop");
    assert_eq!(whole["usage"]["prompt_tokens"], 7);

    // The backend was always asked for a stream with usage, and got every other field untouched.
    for body in recorder.bodies() {
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["x_vendor_field"], json!({"keep": [1, 2, 3]}));
        assert_eq!(body["temperature"], 0.3);
    }
    // The usage chunk reaches a streaming client only when it asked for it.
    assert!(!data.iter().any(|d| d.contains("\"usage\"")));
    handle.shutdown().await;
}

#[tokio::test]
async fn other_v1_paths_pass_through_with_bodies_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let r2 = recorder.clone();
    let app = Router::new()
        .route(
            "/v1/models",
            get(|| async { Json(json!({"object": "list", "data": [{"id": "m1"}]})) }),
        )
        .route(
            "/v1/embeddings",
            post(move |req: Request| {
                let r2 = r2.clone();
                async move {
                    let query = req.uri().query().unwrap_or("").to_owned();
                    let headers = req.headers().clone();
                    let body = axum::body::to_bytes(req.into_body(), 1 << 24)
                        .await
                        .unwrap();
                    r2.push(
                        "/v1/embeddings",
                        serde_json::from_slice(&body).unwrap(),
                        headers,
                    );
                    (
                        StatusCode::CREATED,
                        Json(json!({"query": query, "len": body.len()})),
                    )
                }
            }),
        );
    let backend = serve(app).await;
    let (handle, base) = proxy(settings(&backend, &dir)).await;
    let http = client();

    let models: Value = http
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "m1");

    let big = "x".repeat(3 << 20);
    let r = http
        .post(format!("{base}/v1/embeddings?dims=8"))
        .header("authorization", "Bearer client-secret")
        .header("x-api-key", "client-secret")
        .header("api-key", "client-secret")
        .header("cookie", "session=client-secret")
        .json(&json!({"input": big, "model": "e"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["query"], "dims=8");
    let (_, body, headers) = recorder.last().unwrap();
    assert_eq!(body["input"].as_str().map(str::len), Some(3 << 20));
    // The client's own credentials never reach the backend, whatever header carries them.
    for name in ["authorization", "x-api-key", "api-key", "cookie"] {
        assert!(headers.get(name).is_none(), "{name} was forwarded");
    }
    handle.shutdown().await;
    // Forwarded requests are in the traffic log too.
    let records = log_records(&dir.path().join("logs").join("proxy.log"));
    let paths: Vec<(String, u64)> = records
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap_or("").to_owned(),
                r["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert!(paths.contains(&("/v1/models".into(), 200)), "{paths:?}");
    assert!(paths.contains(&("/v1/embeddings".into(), 201)), "{paths:?}");
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn client_errors_are_400_and_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, base) = proxy(settings(&dead_url().await, &dir)).await;
    let http = client();
    let url = format!("{base}/v1/chat/completions");
    for (body, needle) in [
        ("{not json", "not valid JSON"),
        ("{\"model\":\"m\"}", "messages"),
        ("[]", "JSON object"),
    ] {
        let (status, v) = error_of(
            http.post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    }
    let (status, v) = error_of(http.get(format!("{base}/nowhere")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert!(v["error"]["message"].as_str().unwrap().contains("/v1/"));
    handle.shutdown().await;
}

#[tokio::test]
async fn refused_backend_is_502_naming_the_url_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let backend = dead_url().await;
    let (handle, base) = proxy(settings(&backend, &dir)).await;
    let http = client();
    for stream in [false, true] {
        let (status, v) = error_of(
            http.post(format!("{base}/v1/chat/completions"))
                .json(&chat_body(stream))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 502, "stream={stream}");
        assert_eq!(v["error"]["code"], "backend_unreachable");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(&backend),
            "{v}"
        );
    }
    handle.shutdown().await;
}

#[tokio::test]
async fn backend_errors_are_relayed_with_status_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"error": {"message": "model 'x' not loaded", "type": "invalid_request_error", "code": "model_not_found"}})),
            )
        }),
    );
    let backend = serve(app).await;
    let (handle, base) = proxy(settings(&backend, &dir)).await;
    let (status, v) = error_of(
        client()
            .post(format!("{base}/v1/chat/completions"))
            .json(&chat_body(true))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(v["error"]["message"], "model 'x' not loaded");
    assert_eq!(v["error"]["code"], "model_not_found");
    handle.shutdown().await;
}

#[tokio::test]
async fn a_silent_backend_times_out_with_504() {
    let dir = tempfile::tempdir().unwrap();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "never"
        }),
    );
    let backend = serve(app).await;
    let mut s = settings(&backend, &dir);
    s.first_byte_timeout_secs = 0.2;
    let (handle, base) = proxy(s).await;
    let (status, v) = error_of(
        client()
            .post(format!("{base}/v1/chat/completions"))
            .json(&chat_body(false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 504);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("FIRST_BYTE_TIMEOUT_SECS"),
        "{v}"
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn a_failure_after_the_stream_started_is_one_error_event_then_done() {
    let dir = tempfile::tempdir().unwrap();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            // Two content chunks, then the connection dies without a finish or [DONE].
            let frames = vec![
                chunk(
                    json!({"role": "assistant", "content": "partial "}),
                    Value::Null,
                ),
                chunk(json!({"content": "answer"}), Value::Null),
            ];
            let stream = futures_util::stream::iter(
                frames.into_iter().map(Ok::<_, std::io::Error>),
            )
            .chain(futures_util::stream::once(async {
                // Let the first chunks reach the proxy before the connection dies.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(std::io::Error::other("backend crashed"))
            }));
            let mut r = Response::new(axum::body::Body::from_stream(stream));
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }),
    );
    let backend = serve(app).await;
    let (handle, base) = proxy(settings(&backend, &dir)).await;
    let r = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (data, _) = parse_sse(&r.text().await.unwrap());
    let errors: Vec<&String> = data.iter().filter(|d| d.contains("\"error\"")).collect();
    assert_eq!(errors.len(), 1, "{data:?}");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    // Everything the model produced before the failure was delivered.
    let (content, _, _) = fold_stream(
        &data
            .iter()
            .filter(|d| !d.contains("\"error\""))
            .cloned()
            .collect::<Vec<_>>(),
    );
    assert_eq!(content, "partial answer");
    handle.shutdown().await;
}

use futures_util::StreamExt;

#[tokio::test]
async fn shutdown_lets_in_flight_streams_finish_and_flushes_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            sse_response(
                sse_script(&["slow ", "but ", "complete"]),
                Duration::from_millis(150),
            )
        }),
    );
    let backend = serve(app).await;
    let s = settings(&backend, &dir);
    let log = s.log_file.clone();
    let (handle, base) = proxy(s).await;
    let http = client();
    let request = tokio::spawn({
        let http = http.clone();
        let url = format!("{base}/v1/chat/completions");
        async move {
            http.post(url)
                .json(&chat_body(true))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    // Wait until the request is in flight, then ask the server to stop.
    let mut snapshot = handle.snapshot();
    tokio::time::timeout(
        Duration::from_secs(5),
        snapshot.wait_for(|s| s.slots.busy == 1),
    )
    .await
    .unwrap()
    .unwrap();
    handle.shutdown().await;
    let text = request.await.unwrap();
    let (data, _) = parse_sse(&text);
    assert_eq!(fold_stream(&data).0, "slow but complete");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    // No new connections after shutdown.
    assert!(http.get(format!("{base}/health")).send().await.is_err());
    let records = log_records(&log);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["status"], 200);
}

#[tokio::test]
async fn the_traffic_log_has_every_field_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let backend = scripted(&["<think>hmm</think>", "Hi"], recorder).await;
    let s = settings(&backend, &dir);
    let log = s.log_file.clone();
    let (handle, base) = proxy(s).await;
    let mut body = chat_body(true);
    body["api_key"] = json!("sk-should-not-appear");
    let r = client()
        .post(format!("{base}/v1/chat/completions"))
        .header("authorization", "Bearer sk-header-secret")
        .json(&body)
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let _ = r.text().await.unwrap();
    handle.shutdown().await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("sk-should-not-appear") && !text.contains("sk-header-secret"));
    let records = log_records(&log);
    let rec = &records[0];
    assert_eq!(rec["id"], id);
    for field in [
        "time",
        "client_addr",
        "model",
        "stream",
        "status",
        "timings",
        "usage",
        "request",
        "output",
    ] {
        assert!(!rec[field].is_null(), "missing {field}: {rec}");
    }
    assert_eq!(rec["stream"], true);
    assert!(rec["timings"]["total_ms"].is_u64());
    assert!(rec["timings"]["ttft_ms"].is_u64());
    assert_eq!(rec["usage"]["prompt_tokens"], 7);
    assert_eq!(rec["request"]["messages"][0]["content"], "hi");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

#[tokio::test]
async fn health_reports_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let app = Router::new().route(
        "/v1/models",
        get(|| async { Json(json!({"data": []})).into_response() }),
    );
    let backend = serve(app).await;
    let mut s = settings(&backend, &dir);
    s.model_name = "qwen3-coder".into();
    let (handle, base) = proxy(s).await;
    let v: Value = client()
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["backend_up"], true);
    assert_eq!(v["backend_url"], backend);
    assert_eq!(v["model_name"], "qwen3-coder");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    handle.shutdown().await;

    let (handle, base) = proxy(settings(&dead_url().await, &dir)).await;
    let v: Value = client()
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["backend_up"], false);
    handle.shutdown().await;
}

#[tokio::test]
async fn the_demo_backend_drives_the_whole_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _demo) = blockops_proxy::demo::spawn(blockops_proxy::demo::DemoOptions {
        tokens_per_sec: 0.0,
    })
    .await
    .unwrap();
    let (handle, base) = proxy(settings(&format!("http://{addr}"), &dir)).await;
    let r = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "demo", "stream": true, "messages": [{"role": "user", "content": "Hello"}]}))
        .send()
        .await
        .unwrap();
    let (data, _) = parse_sse(&r.text().await.unwrap());
    let (content, _, finish) = fold_stream(&data);
    assert!(content.contains("blockops demo backend"), "{content}");
    assert_eq!(finish.as_deref(), Some("stop"));
    handle.shutdown().await;
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&dead_url().await, &dir);
    s.max_body_bytes = 4096;
    let (handle, base) = proxy(s).await;
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(10_000)}]});
    let (status, v) = error_of(
        client()
            .post(format!("{base}/v1/chat/completions"))
            .json(&big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("BLOCKOPS_MAX_BODY_BYTES")
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn an_open_dashboard_event_stream_does_not_hold_up_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, base) = proxy(settings(&dead_url().await, &dir)).await;
    let mut events = client()
        .get(format!("{base}/admin/api/events"))
        .send()
        .await
        .unwrap();
    let first = events.chunk().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains(": keep-alive")
            || String::from_utf8_lossy(&first).contains("snapshot")
    );
    // The grace period is 30 s; the event stream must end at once instead.
    tokio::time::timeout(Duration::from_secs(5), handle.shutdown())
        .await
        .expect("shutdown waited for the event stream");
}
