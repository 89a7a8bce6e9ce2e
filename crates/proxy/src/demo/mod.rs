//! The demo backend: a small OpenAI-compatible model server with scripted replies.
//!
//! It writes tool calls as *text*, the way local models do, in every format the engine
//! understands (rotating per request, or chosen with `[format=NAME]` in the user's message),
//! with `<think>` reasoning first, at a realistic pace. Once the last message is a tool result it
//! answers in prose. It serves `/v1/models` and `DELETE /v1/cache`, so a newcomer sees the whole
//! proxy working without a model, and tests and benchmarks have a fixture.

mod script;

pub use script::{FORMATS, render_call, reply_for};

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use bytes::Bytes;
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Pace of the reply; 0 sends everything at once.
    pub tokens_per_sec: f64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            tokens_per_sec: 40.0,
        }
    }
}

#[derive(Debug)]
struct Demo {
    options: DemoOptions,
    requests: AtomicU64,
    purges: AtomicU64,
}

pub fn router(options: DemoOptions) -> Router {
    let demo = Arc::new(Demo {
        options,
        requests: AtomicU64::new(0),
        purges: AtomicU64::new(0),
    });
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/v1/cache", delete(purge))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .with_state(demo)
}

/// Serves the demo backend on `listener` until the task is aborted.
pub fn spawn_on(listener: TcpListener, options: DemoOptions) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(options)).await {
            tracing::error!(error = %e, "demo backend stopped");
        }
    })
}

/// Binds a free loopback port and serves the demo backend there.
pub async fn spawn(
    options: DemoOptions,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    Ok((addr, spawn_on(listener, options)))
}

async fn models() -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": "demo", "object": "model", "created": now(), "owned_by": "blockops-demo"}]}),
    )
}

async fn purge(State(demo): State<Arc<Demo>>) -> Json<Value> {
    let n = demo.purges.fetch_add(1, Ordering::Relaxed) + 1;
    Json(json!({"status": "purged", "message": "demo backend: KV cache cleared", "purges": n}))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn chat(State(demo): State<Arc<Demo>>, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "demo backend: body is not JSON", "type": "invalid_request_error"}})),
        )
            .into_response();
    };
    let n = demo.requests.fetch_add(1, Ordering::Relaxed);
    let text = reply_for(&request, n);
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("demo")
        .to_owned();
    let prompt_tokens = request
        .get("messages")
        .map(|m| m.to_string().len() as u64 / 4)
        .unwrap_or(0);
    let pieces = script::tokens(&text);
    let completion_tokens = pieces.len() as u64;
    let id = format!("chatcmpl-demo{n}");
    let created = now();
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});

    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let include_usage = request
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let delay = (demo.options.tokens_per_sec > 0.0)
        .then(|| Duration::from_secs_f64(1.0 / demo.options.tokens_per_sec));
    let chunk = move |delta: Value, finish: Value| {
        Bytes::from(format!(
            "data: {}\n\n",
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        ))
    };
    let mut frames: Vec<Bytes> = Vec::with_capacity(pieces.len() + 4);
    frames.push(chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ));
    for p in pieces {
        frames.push(chunk(json!({"content": p}), Value::Null));
    }
    frames.push(chunk(json!({}), json!("stop")));
    if include_usage {
        frames.push(Bytes::from(format!(
            "data: {}\n\n",
            json!({"id": format!("chatcmpl-demo{n}"), "object": "chat.completion.chunk", "created": created, "choices": [], "usage": usage})
        )));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let stream = futures_util::stream::unfold(
        (frames.into_iter(), true),
        move |(mut it, first)| async move {
            let frame = it.next()?;
            if let (Some(d), false) = (delay, first) {
                tokio::time::sleep(d).await;
            }
            Some((Ok::<_, std::convert::Infallible>(frame), (it, false)))
        },
    );
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
}
