//! Protecting the backend, whole server on port 0 against in-process fake backends of each kind:
//! the concurrency gate and queue, heartbeats, context truncation and its calibration, memory
//! pressure, visible notices, and the KV-cache purge behind `/new` and the admin API.

mod support;

use axum::{
    Json, Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use blockops_proxy::{
    ServerHandle, Settings,
    config::{CachePurge, CriticalAction, NoticeMode},
    observe::memory::{Reading, Sampler},
};
use bytes::Bytes;
use serde_json::{Value, json};
use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use support::{client, fold_stream, log_records, parse_sse, proxy, serve, settings};
use tokio::sync::Notify;

// ---------------------------------------------------------------- the fake backend

/// What kind of server the fake pretends to be: decides `/v1/models` and its purge endpoints.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Generic,
    Vllm,
    VllmWithoutDevMode,
    Llamacpp,
    Ollama,
    Mlx,
}

/// The fake's tokenizer: 2.8 bytes a token and 6 tokens a message, deliberately unlike the
/// proxy's starting guess (3.5 and 4), so calibration has something to learn.
fn backend_tokens(body: &Value) -> u64 {
    let mut bytes = 0usize;
    let mut fixed = 2u64;
    for m in body["messages"].as_array().into_iter().flatten() {
        fixed += 6;
        for key in ["role", "content", "tool_call_id", "name"] {
            bytes += m[key].as_str().map_or(0, str::len);
        }
        for c in m["tool_calls"].as_array().into_iter().flatten() {
            bytes += c["function"]["name"].as_str().map_or(0, str::len);
            bytes += c["function"]["arguments"].as_str().map_or(0, str::len);
            fixed += 6;
        }
    }
    for t in body["tools"].as_array().into_iter().flatten() {
        bytes += t.to_string().len();
        fixed += 6;
    }
    (bytes as f64 / 2.8).ceil() as u64 + fixed
}

#[derive(Clone)]
struct Fake {
    kind: Kind,
    /// `METHOD path?query` of every request, in order.
    calls: Arc<Mutex<Vec<String>>>,
    /// Bodies of the chat requests and the purge calls.
    bodies: Arc<Mutex<Vec<(String, Value)>>>,
    /// Chat requests whose response stream is still open (dropped when the proxy hangs up).
    live: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// Before the first token: wait this long, or (`None` and `hold`) until released.
    first_token_after: Arc<Mutex<Duration>>,
    hold: Arc<Mutex<Option<Arc<Notify>>>>,
    gap: Duration,
    reply: Arc<Mutex<Vec<Value>>>,
}

struct Live {
    live: Arc<AtomicUsize>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Fake {
    fn new(kind: Kind) -> Fake {
        Fake {
            kind,
            calls: Default::default(),
            bodies: Default::default(),
            live: Default::default(),
            peak: Default::default(),
            first_token_after: Arc::new(Mutex::new(Duration::ZERO)),
            hold: Default::default(),
            gap: Duration::ZERO,
            reply: Arc::new(Mutex::new(vec![json!({"content": "ok"})])),
        }
    }

    async fn start(self) -> (Fake, String) {
        let router = Router::new()
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", any(chat))
            .fallback(any(other))
            .with_state(self.clone());
        let url = serve(router).await;
        (self, url)
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn chats(&self) -> Vec<Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == "/v1/chat/completions")
            .map(|(_, b)| b.clone())
            .collect()
    }
}

async fn models(State(f): State<Fake>) -> Response {
    f.calls.lock().unwrap().push("GET /v1/models".into());
    let (id, owned_by) = match f.kind {
        Kind::Generic => ("fake", "me"),
        Kind::Vllm | Kind::VllmWithoutDevMode => ("Qwen/Qwen3-8B", "vllm"),
        Kind::Llamacpp => ("qwen3.gguf", "llamacpp"),
        Kind::Ollama => ("qwen3:8b", "library"),
        Kind::Mlx => ("mlx-community/Qwen3-8B-4bit", "system"),
    };
    Json(json!({"object": "list", "data": [{"id": id, "object": "model", "owned_by": owned_by}]}))
        .into_response()
}

async fn other(State(f): State<Fake>, request: Request) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let line = format!(
        "{method} {}{}",
        uri.path(),
        uri.query().map(|q| format!("?{q}")).unwrap_or_default()
    );
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    f.calls.lock().unwrap().push(line.clone());
    f.bodies
        .lock()
        .unwrap()
        .push((uri.path().to_owned(), body.clone()));
    let ok = |v: Value| Json(v).into_response();
    match (f.kind, line.as_str()) {
        (Kind::Generic, "DELETE /v1/cache") => {
            ok(json!({"status": "purged", "message": "cleared 3 prompts"}))
        }
        (Kind::Vllm, "POST /reset_prefix_cache") => ok(json!({})),
        // The tokenizers: vLLM counts chat messages; llama-server renders, then tokenizes.
        (Kind::Vllm, "POST /tokenize") => {
            ok(json!({"count": backend_tokens(&body), "max_model_len": 131072}))
        }
        (Kind::Llamacpp, "POST /apply-template") => {
            ok(json!({"prompt": json!({"messages": body["messages"]}).to_string()}))
        }
        (Kind::Llamacpp, "POST /tokenize") => {
            let rendered: Value =
                serde_json::from_str(body["content"].as_str().unwrap_or("{}")).unwrap_or_default();
            ok(json!({"tokens": vec![1; backend_tokens(&rendered) as usize]}))
        }
        (Kind::Llamacpp, "GET /slots") => {
            ok(json!([{"id": 0, "n_ctx": 4096}, {"id": 1, "n_ctx": 4096}]))
        }
        (Kind::Llamacpp, l) if l.starts_with("POST /slots/") && l.ends_with("?action=erase") => {
            ok(json!({"id_slot": 0, "n_erased": 12}))
        }
        (Kind::Ollama, "POST /api/generate") => ok(json!({"done": true, "done_reason": "unload"})),
        (Kind::Ollama, "GET /api/ps") => {
            ok(json!({"models": [{"name": "qwen3:8b"}, {"name": "llama3:8b"}]}))
        }
        _ => (StatusCode::NOT_FOUND, "404 page not found").into_response(),
    }
}

async fn chat(State(f): State<Fake>, request: Request) -> Response {
    let bytes = axum::body::to_bytes(request.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    f.calls
        .lock()
        .unwrap()
        .push("POST /v1/chat/completions".into());
    f.bodies
        .lock()
        .unwrap()
        .push(("/v1/chat/completions".into(), body.clone()));
    let now = f.live.fetch_add(1, Ordering::SeqCst) + 1;
    f.peak.fetch_max(now, Ordering::SeqCst);
    let live = Live {
        live: f.live.clone(),
    };
    let prompt = backend_tokens(&body);
    let mut frames: Vec<Bytes> = f
        .reply
        .lock()
        .unwrap()
        .iter()
        .map(|d| support::chunk(d.clone(), Value::Null))
        .collect();
    let finish = if f
        .reply
        .lock()
        .unwrap()
        .iter()
        .any(|d| d.get("tool_calls").is_some())
    {
        "tool_calls"
    } else {
        "stop"
    };
    frames.push(support::chunk(json!({}), json!(finish)));
    frames.push(Bytes::from(format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake", "choices": [],
               "usage": {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1}})
    )));
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let delay = *f.first_token_after.lock().unwrap();
    let hold = f.hold.lock().unwrap().clone();
    let gap = f.gap;
    struct St {
        frames: std::vec::IntoIter<Bytes>,
        first: bool,
        delay: Duration,
        hold: Option<Arc<Notify>>,
        gap: Duration,
        live: Option<Live>,
    }
    let st = St {
        frames: frames.into_iter(),
        first: true,
        delay,
        hold,
        gap,
        live: Some(live),
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        if st.first {
            st.first = false;
            if let Some(h) = st.hold.take() {
                h.notified().await;
            }
            if !st.delay.is_zero() {
                tokio::time::sleep(st.delay).await;
            }
        } else if !st.gap.is_zero() {
            tokio::time::sleep(st.gap).await;
        }
        let f = st.frames.next()?;
        if st.frames.len() == 0 {
            // Done before `[DONE]` leaves: the proxy may free the slot the moment it reads it.
            st.live = None;
        }
        Some((Ok::<_, std::convert::Infallible>(f), st))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

// ---------------------------------------------------------------- the proxy

struct Rig {
    fake: Fake,
    handle: ServerHandle,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

async fn rig(fake: Fake, tweak: impl FnOnce(&mut Settings)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let (fake, url) = fake.start().await;
    let mut s = settings(&url, &dir);
    tweak(&mut s);
    let log = s.log_file.clone();
    let (handle, base) = proxy(s).await;
    Rig {
        fake,
        handle,
        base,
        log,
        _dir: dir,
    }
}

impl Rig {
    fn post(&self, body: &Value) -> reqwest::RequestBuilder {
        client()
            .post(format!("{}/v1/chat/completions", self.base))
            .json(body)
    }

    async fn records(&self) -> Vec<Value> {
        self.handle.hub().log().flush().await;
        log_records(&self.log)
    }
}

fn chat_body(stream: bool, text: &str) -> Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": text}]})
}

async fn content_of(r: reqwest::Response) -> String {
    let v: Value = r.json().await.unwrap();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

// ---------------------------------------------------------------- gate, queue, heartbeats

#[tokio::test]
async fn max_concurrent_two_and_ten_clients_the_backend_never_sees_more_than_two() {
    let mut fake = Fake::new(Kind::Generic);
    fake.gap = Duration::from_millis(15);
    *fake.reply.lock().unwrap() = vec![json!({"content": "a"}), json!({"content": "b"})];
    let r = rig(fake, |s| s.max_concurrent = 2).await;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let req = r.post(&chat_body(i % 2 == 0, "hi"));
            tokio::spawn(async move { req.send().await.unwrap().text().await.unwrap() })
        })
        .collect();
    for t in tasks {
        let text = t.await.unwrap();
        assert!(text.contains("ab") || text.contains("\"a\""), "{text}");
    }
    assert_eq!(r.fake.chats().len(), 10);
    assert_eq!(r.fake.peak.load(Ordering::SeqCst), 2, "never more than 2");
    assert_eq!(r.handle.state().gate.busy(), 0);
    r.handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_is_429_and_a_queue_timeout_is_503_or_an_sse_error() {
    let fake = Fake::new(Kind::Generic);
    let hold = Arc::new(Notify::new());
    *fake.hold.lock().unwrap() = Some(hold.clone());
    let r = rig(fake, |s| {
        s.max_concurrent = 1;
        s.max_queue = 2;
        s.queue_timeout_secs = 30.0;
        // Paused time jumps ahead while every task waits on a socket: keep the held request's
        // own limits out of reach so only the queue timeout can fire.
        s.first_byte_timeout_secs = 86_400.0;
        s.idle_timeout_secs = 86_400.0;
    })
    .await;
    // One in flight (held by the backend), two waiting.
    let running = tokio::spawn(r.post(&chat_body(false, "first")).send());
    let mut queued_stream = None;
    let mut queued_plain = None;
    for _ in 0..100_000 {
        if r.handle.state().gate.busy() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(r.handle.state().gate.busy(), 1);
    let started = tokio::time::Instant::now();
    let s = r
        .post(&chat_body(true, "queued, streaming"))
        .send()
        .await
        .unwrap();
    // Accepted into the queue: headers and a first heartbeat at once, not after the wait.
    // (Paused time may jump while sockets work, so "at once" is checked as "while still
    // queued, long before the queue timeout", not against a wall-clock second.)
    assert_eq!(s.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(r.handle.state().gate.queued(), 1);
    queued_stream.replace(s);
    queued_plain.replace(tokio::spawn(r.post(&chat_body(false, "queued")).send()));
    for _ in 0..100_000 {
        if r.handle.state().gate.queued() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(r.handle.state().gate.queued(), 2);

    // Full: 429 at once with Retry-After, streaming or not.
    for stream in [false, true] {
        let full = r
            .post(&chat_body(stream, "one too many"))
            .send()
            .await
            .unwrap();
        assert_eq!(full.status(), 429);
        assert!(full.headers().get("retry-after").is_some());
        let v: Value = full.json().await.unwrap();
        assert_eq!(v["error"]["code"], "queue_full");
        assert_eq!(v["error"]["type"], "rate_limit_error");
    }

    // 30 s later the waiters time out: 503 for the plain one, an error event then [DONE] for
    // the stream whose headers already went out.
    let plain = queued_plain.take().unwrap().await.unwrap().unwrap();
    assert_eq!(plain.status(), 503);
    assert!(plain.headers().get("retry-after").is_some());
    let v: Value = plain.json().await.unwrap();
    assert_eq!(v["error"]["code"], "queue_timeout");
    let text = queued_stream.take().unwrap().text().await.unwrap();
    let (data, beats) = parse_sse(&text);
    assert!(beats >= 5, "heartbeats while queued: {beats}");
    assert_eq!(data.len(), 2, "{text}");
    assert!(data[0].contains("queue_timeout"), "{text}");
    assert_eq!(data[1], "[DONE]");
    assert_eq!(
        r.fake.chats().len(),
        1,
        "the waiters never reached the backend"
    );
    assert_eq!(r.handle.snapshot().borrow().rejections.queue_timeout, 2);

    hold.notify_one();
    let first = running.await.unwrap().unwrap();
    assert_eq!(first.status(), 200);
    r.handle.shutdown().await;
}

#[tokio::test]
async fn raising_max_concurrent_admits_the_queue_at_once_and_lowering_lets_requests_finish() {
    let fake = Fake::new(Kind::Generic);
    let hold = Arc::new(Notify::new());
    *fake.hold.lock().unwrap() = Some(hold.clone());
    let r = rig(fake, |s| s.max_concurrent = 1).await;
    let gate = r.handle.state().gate.clone();
    let a = tokio::spawn(r.post(&chat_body(false, "a")).send());
    let b = tokio::spawn(r.post(&chat_body(false, "b")).send());
    let wait = |what: &'static str, f: Box<dyn Fn() -> bool + Send>| async move {
        for _ in 0..2000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    };
    let (g, live) = (gate.clone(), r.fake.live.clone());
    wait(
        "one running, one queued",
        Box::new(move || g.busy() == 1 && g.queued() == 1 && live.load(Ordering::SeqCst) == 1),
    )
    .await;
    let patch = |n: usize| {
        client()
            .patch(format!("{}/admin/api/config", r.base))
            .json(&json!({ "max_concurrent": n }))
            .send()
    };
    // Raised: the waiter goes to the backend now, without anything finishing.
    assert_eq!(patch(2).await.unwrap().status(), 200);
    let live = r.fake.live.clone();
    wait(
        "both at the backend",
        Box::new(move || live.load(Ordering::SeqCst) == 2),
    )
    .await;
    // Lowered: both keep running; a third waits until both are done.
    assert_eq!(patch(1).await.unwrap().status(), 200);
    let c = tokio::spawn(r.post(&chat_body(false, "c")).send());
    let g = gate.clone();
    wait("c queued", Box::new(move || g.queued() == 1)).await;
    assert_eq!(r.fake.chats().len(), 2);
    hold.notify_one();
    hold.notify_one();
    for t in [a, b] {
        assert_eq!(t.await.unwrap().unwrap().status(), 200);
    }
    // c's own backend response waits on the same notification: release it too.
    let live = r.fake.live.clone();
    wait(
        "c at the backend",
        Box::new(move || live.load(Ordering::SeqCst) == 1),
    )
    .await;
    assert_eq!(r.fake.peak.load(Ordering::SeqCst), 2);
    hold.notify_one();
    assert_eq!(c.await.unwrap().unwrap().status(), 200);
    assert_eq!(r.fake.chats().len(), 3);
    r.handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn heartbeats_while_queued_and_during_a_slow_first_token_and_only_comments_before_it() {
    let fake = Fake::new(Kind::Generic);
    *fake.first_token_after.lock().unwrap() = Duration::from_secs(30);
    let r = rig(fake, |s| {
        s.max_concurrent = 1;
        // Paused time jumps ahead whenever every task waits, socket I/O included; generous
        // limits keep such a jump from reading as a backend timeout.
        s.first_byte_timeout_secs = 86_400.0;
        s.idle_timeout_secs = 86_400.0;
        s.queue_timeout_secs = 86_400.0;
    })
    .await;
    let started = tokio::time::Instant::now();
    let slow = r.post(&chat_body(true, "slow")).send().await.unwrap();
    assert_eq!(slow.status(), 200);
    // Headers before the backend's first token (30 s away), not after it.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "headers before the first token: {:?}",
        started.elapsed()
    );
    let waiting = r.post(&chat_body(true, "behind it")).send().await.unwrap();
    assert_eq!(waiting.status(), 200);
    for (name, response, min) in [("slow first token", slow, 6), ("queued", waiting, 12)] {
        let text = response.text().await.unwrap();
        let before_data = &text[..text.find("data:").expect("data")];
        let beats = before_data.matches(": keep-alive\n\n").count();
        // 30 s (and 60 s for the one queued behind) at one comment every 5 s.
        assert!(
            beats >= min,
            "{name}: {beats} heartbeats before the first token: {text}"
        );
        assert_eq!(
            before_data.replace(": keep-alive\n\n", ""),
            "",
            "{name}: only comments before the first token"
        );
        assert!(!text.contains("id:") && !text.contains("retry:"));
        let (data, _) = parse_sse(&text);
        assert!(
            data[0].contains("\"content\":\"ok\""),
            "{name}: the first event carries the token: {:?}",
            &data[..data.len().min(3)]
        );
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    }
    // A non-streaming client's body never carries a heartbeat.
    let plain = r.post(&chat_body(false, "plain")).send().await.unwrap();
    let text = plain.text().await.unwrap();
    assert!(!text.contains("keep-alive"));
    serde_json::from_str::<Value>(&text).unwrap();
    r.handle.shutdown().await;
}

// ---------------------------------------------------------------- context

/// A long agent session: system, first user, then `turns` rounds of user → assistant tool call
/// → tool result (~`result_bytes`) → assistant answer, and a final user question.
fn agent_session(turns: usize, result_bytes: usize) -> Value {
    let mut messages = vec![
        json!({"role": "system", "content": "You are a coding agent. Use the tools."}),
        json!({"role": "user", "content": "Refactor the parser module."}),
    ];
    for i in 0..turns {
        messages.push(json!({"role": "user", "content": format!("Step {i}: look at file {i}.")}));
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": format!("call_{i}"), "type": "function", "function": {"name": "read_file", "arguments": format!("{{\"path\":\"src/f{i}.rs\"}}")}}
        ]}));
        let body: String = (0..result_bytes / 16)
            .map(|j| format!("fn f{j:04}() {{}}\n"))
            .collect();
        messages
            .push(json!({"role": "tool", "tool_call_id": format!("call_{i}"), "content": body}));
        messages.push(json!({"role": "assistant", "content": format!("File {i} read; it defines many functions.")}));
    }
    messages.push(json!({"role": "user", "content": "Now summarise what you found."}));
    json!({
        "model": "m",
        "max_tokens": 2000,
        "messages": messages,
        "tools": [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}]
    })
}

/// Every tool result follows the assistant message that called it, and every call has its result.
fn assert_tool_pairs_intact(messages: &[Value]) {
    let mut open: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match m["role"].as_str() {
            Some("tool") => {
                let id = m["tool_call_id"].as_str().unwrap().to_owned();
                assert!(open.contains(&id), "orphan tool result {id} at {i}");
                open.retain(|o| *o != id);
            }
            _ => {
                assert!(open.is_empty(), "calls {open:?} without results before {i}");
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    open.push(c["id"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    assert!(open.is_empty(), "calls {open:?} without results at the end");
}

#[tokio::test]
async fn a_150k_token_conversation_reaches_the_backend_under_the_hard_threshold_with_tool_pairs_intact()
 {
    let r = rig(Fake::new(Kind::Generic), |_| {}).await;
    // One ordinary reply first: its usage calibrates the estimate to this backend's tokenizer
    // (uncalibrated, the proxy assumes 3.5 bytes a token; this one counts 2.8).
    let warm = r.post(&agent_session(8, 2_000)).send().await.unwrap();
    warm.text().await.unwrap();
    let mut body = agent_session(140, 3_500);
    let sent_tokens = backend_tokens(&body);
    assert!(sent_tokens > 150_000, "the session is {sent_tokens} tokens");
    body["stream"] = json!(true);
    let response = r.post(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let (data, _) = parse_sse(&text);
    let (content, _, _) = fold_stream(&data);
    assert!(content.starts_with("⚠ Context trimmed: "), "{content}");
    assert!(content.ends_with("ok"), "{content}");

    let chats = r.fake.chats();
    let received = &chats[1];
    let got = received["messages"].as_array().unwrap();
    let tokens = backend_tokens(received);
    assert!(tokens <= 100_000, "the backend counts {tokens} tokens");
    assert!(tokens > 60_000, "no more was dropped than needed: {tokens}");
    let original = body["messages"].as_array().unwrap();
    assert_eq!(got[0], original[0], "system kept");
    // The first user message is kept; the note rides on it when an assistant turn follows.
    assert!(
        got[1]["content"]
            .as_str()
            .unwrap()
            .starts_with("Refactor the parser module."),
        "first user kept"
    );
    let roles: Vec<&str> = got.iter().map(|m| m["role"].as_str().unwrap()).collect();
    // The original alternates user and assistant turns; so does what was sent.
    assert!(
        !roles
            .windows(2)
            .any(|w| w[0] == w[1] && (w[0] == "user" || w[0] == "assistant")),
        "the note adds no same-role neighbours: {roles:?}"
    );
    assert_eq!(got.last(), original.last(), "the latest turn kept");
    assert_tool_pairs_intact(got);
    let notes: Vec<&Value> = got
        .iter()
        .filter(|m| {
            m["content"]
                .as_str()
                .is_some_and(|c| c.contains("omitted here by the proxy"))
        })
        .collect();
    assert_eq!(notes.len(), 1, "one note");
    assert_eq!(received["tools"], body["tools"]);

    let records = r.records().await;
    let record = records.last().unwrap();
    let shaping = &record["shaping"];
    assert_eq!(shaping["action"], "truncated");
    assert_eq!(shaping["truncated"], true);
    let dropped = shaping["messages_dropped"].as_u64().unwrap() as usize;
    let separate_note = usize::from(notes[0]["role"] == "assistant");
    assert_eq!(got.len(), original.len() - dropped + separate_note);
    assert!(shaping["tokens_before"].as_u64().unwrap() > 100_000);
    assert!(shaping["tokens_after"].as_u64().unwrap() + 2000 <= 100_000);
    assert!(
        record["notices"][0]
            .as_str()
            .unwrap()
            .starts_with("Context trimmed")
    );
    assert_eq!(r.handle.snapshot().borrow().rejections.context, 0);
    r.handle.shutdown().await;
}

/// With a tokenizer at the backend, even the first long conversation is cut by the backend's own
/// count, without a reply to calibrate from first.
#[tokio::test]
async fn near_the_thresholds_the_backends_tokenizer_decides() {
    for (kind, source) in [
        (Kind::Vllm, "vllm /tokenize"),
        (Kind::Llamacpp, "llamacpp /tokenize"),
    ] {
        let r = rig(Fake::new(kind), |_| {}).await;
        for _ in 0..1000 {
            if r.handle.snapshot().borrow().backend.kind == format!("{kind:?}").to_lowercase() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let body = agent_session(140, 3_500);
        assert!(backend_tokens(&body) > 150_000);
        let response = r.post(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let content = content_of(response).await;
        assert!(
            content.starts_with("⚠ Context trimmed"),
            "{kind:?}: {content}"
        );
        let sent = &r.fake.chats()[0];
        let tokens = backend_tokens(sent);
        // llama-server's count leaves out the tool schema (a few dozen tokens here).
        assert!(tokens <= 100_000, "{kind:?}: the backend counts {tokens}");
        assert!(
            tokens > 90_000,
            "{kind:?}: no more dropped than needed: {tokens}"
        );
        assert_tool_pairs_intact(sent["messages"].as_array().unwrap());
        let records = r.records().await;
        assert_eq!(records[0]["shaping"]["counted_by"], source, "{kind:?}");
        assert_eq!(
            records[0]["shaping"]["counted_tokens"].as_u64().unwrap(),
            if kind == Kind::Vllm {
                backend_tokens(&body)
            } else {
                backend_tokens(&json!({"messages": body["messages"]}))
            }
        );
        // Far below the thresholds nobody asks the tokenizer.
        let before = r.fake.calls().len();
        r.post(&chat_body(false, "hi"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let calls = r.fake.calls();
        assert!(
            !calls[before..].iter().any(|c| c.contains("tokenize")),
            "{calls:?}"
        );
        r.handle.shutdown().await;
    }
}

#[tokio::test]
async fn the_estimate_after_calibration_is_within_ten_percent_of_the_backends_count() {
    let r = rig(Fake::new(Kind::Generic), |_| {}).await;
    let estimate_and_count = |record: &Value| {
        (
            record["shaping"]["estimate"].as_u64().unwrap() as f64,
            record["usage"]["prompt_tokens"].as_u64().unwrap() as f64,
        )
    };
    // Sessions of different sizes, all under the warn threshold.
    for (turns, bytes) in [(10, 2_000), (25, 1_200), (6, 6_000)] {
        let response = r.post(&agent_session(turns, bytes)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap();
    }
    let records = r.records().await;
    let (first_estimate, first_count) = estimate_and_count(&records[0]);
    let first_error = (first_estimate - first_count).abs() / first_count;
    assert!(
        first_error > 0.10,
        "the uncalibrated guess is off by {:.1}% (so this test shows calibration)",
        first_error * 100.0
    );
    // A new conversation of another shape: the learned ratio carries over.
    let response = r.post(&agent_session(40, 900)).send().await.unwrap();
    response.text().await.unwrap();
    let records = r.records().await;
    let (estimate, count) = estimate_and_count(records.last().unwrap());
    let error = (estimate - count).abs() / count;
    assert!(
        error <= 0.10,
        "estimate {estimate} vs backend {count}: {:.1}% off",
        error * 100.0
    );
    r.handle.shutdown().await;
}

#[tokio::test]
async fn above_the_warn_threshold_a_notice_and_a_minimum_that_cannot_fit_is_400() {
    let r = rig(Fake::new(Kind::Generic), |s| {
        s.token_warn_threshold = 1_000;
        s.token_hard_threshold = 5_000;
    })
    .await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(10_000)}]});
    let content = content_of(r.post(&body).send().await.unwrap()).await;
    assert!(content.starts_with("⚠ Long context: about "), "{content}");
    assert!(content.ends_with("ok"));

    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(40_000)}]});
    let response = r.post(&body).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("TOKEN_HARD_THRESHOLD (5000)"), "{message}");
    assert_eq!(
        r.fake.chats().len(),
        1,
        "the refused one never reached the backend"
    );
    assert_eq!(r.handle.snapshot().borrow().rejections.context, 1);
    r.handle.shutdown().await;
}

// ---------------------------------------------------------------- memory and notices

#[tokio::test]
async fn memory_warn_percent_1_shows_the_notice_in_content_never_in_tool_arguments() {
    let fake = Fake::new(Kind::Generic);
    *fake.reply.lock().unwrap() = vec![
        json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}),
    ];
    let r = rig(fake, |s| {
        s.memory_warn_percent = 1.0;
        s.memory_critical_percent = 100.0;
    })
    .await;
    let mut events = r.handle.hub().subscribe();
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    for stream in [false, true] {
        let mut body = chat_body(stream, "weather?");
        body["tools"] = tools.clone();
        let response = r.post(&body).send().await.unwrap();
        let (content, calls) = if stream {
            let text = response.text().await.unwrap();
            let (data, _) = parse_sse(&text);
            let first: Value = serde_json::from_str(&data[0]).unwrap();
            assert!(
                first["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("⚠ Memory pressure: ")),
                "the first content delta carries it: {}",
                data[0]
            );
            let (content, calls, _) = fold_stream(&data);
            (content, calls)
        } else {
            let v: Value = response.json().await.unwrap();
            let m = &v["choices"][0]["message"];
            let calls = m["tool_calls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["function"]["name"].as_str().unwrap().to_owned(),
                        c["function"]["arguments"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            (m["content"].as_str().unwrap_or_default().to_owned(), calls)
        };
        assert!(
            content.starts_with("⚠ Memory pressure: ") && content.contains("% used"),
            "{content}"
        );
        assert_eq!(
            calls,
            vec![("get_weather".to_owned(), "{\"city\":\"Paris\"}".to_owned())]
        );
    }
    // Published as an event and logged with the request.
    let mut noticed = false;
    while let Ok(e) = events.try_recv() {
        let e = serde_json::to_value(&e).unwrap();
        if e["type"] == "noticed" && e["kind"] == "memory" {
            assert!(e["request_id"].is_string());
            noticed = true;
        }
    }
    assert!(noticed);
    let records = r.records().await;
    assert!(
        records[0]["notices"][0]
            .as_str()
            .unwrap()
            .starts_with("Memory pressure")
    );
    let snap = r.handle.snapshot().borrow().clone();
    assert_eq!(snap.memory.pressure, "warning");
    assert!(snap.memory.used_percent > 1.0 && !snap.memory.history.is_empty());
    assert_eq!(
        r.handle
            .memory()
            .borrow()
            .pressure_under(&r.handle.settings().current()),
        blockops_proxy::observe::memory::Pressure::Warning
    );

    // NOTICES=off: the same pressure, no line in the reply.
    r.handle
        .settings()
        .patch(&json!({"notices": "off"}))
        .await
        .unwrap();
    let content = content_of(r.post(&chat_body(false, "hi")).send().await.unwrap()).await;
    assert!(!content.contains("Memory"), "{content}");
    r.handle.shutdown().await;
}

struct Fixed(Reading);

impl Sampler for Fixed {
    fn read(&mut self) -> Reading {
        self.0
    }
}

#[tokio::test]
async fn critical_pressure_with_reject_answers_503_with_retry_after() {
    let r = rig(Fake::new(Kind::Generic), |s| {
        s.memory_critical_action = CriticalAction::Reject;
        s.memory_warn_percent = 85.0;
        s.memory_critical_percent = 95.0;
    })
    .await;
    const GIB: u64 = 1 << 30;
    r.handle.state().memory.set_sampler(Box::new(Fixed(Reading {
        total_bytes: 64 * GIB,
        available_bytes: GIB,
        swap_total_bytes: 0,
        swap_used_bytes: 0,
        kernel_level: None,
    })));
    let sample = {
        let state = r.handle.state();
        state
            .memory
            .sample(&state.hub, state.settings.current())
            .await
    };
    assert_eq!(
        sample.pressure,
        blockops_proxy::observe::memory::Pressure::Critical
    );
    assert_eq!(*r.handle.memory().borrow(), sample);
    assert_eq!(r.handle.snapshot().borrow().memory.pressure, "critical");
    for stream in [false, true] {
        let response = r.post(&chat_body(stream, "hi")).send().await.unwrap();
        assert_eq!(response.status(), 503);
        assert!(response.headers().get("retry-after").is_some());
        let v: Value = response.json().await.unwrap();
        assert_eq!(v["error"]["code"], "memory_pressure");
        assert!(v["error"]["message"].as_str().unwrap().contains("98% used"));
    }
    // Generation passthrough paths are refused the same way.
    let response = client()
        .post(format!("{}/v1/completions", r.base))
        .json(&json!({"model": "m", "prompt": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(r.fake.chats().is_empty());
    assert_eq!(r.handle.snapshot().borrow().rejections.memory, 3);

    // With the default action the same pressure is a notice, not a refusal.
    r.handle
        .settings()
        .patch(&json!({"memory_critical_action": "notice"}))
        .await
        .unwrap();
    let content = content_of(r.post(&chat_body(false, "hi")).send().await.unwrap()).await;
    assert!(
        content.starts_with("⚠ Memory pressure critical: 98% used"),
        "{content}"
    );
    r.handle.shutdown().await;
}

/// A reading that climbs by one GiB of 16 each time it is read.
struct Climbing(u64);

impl Sampler for Climbing {
    fn read(&mut self) -> Reading {
        const GIB: u64 = 1 << 30;
        self.0 = (self.0 + 1).min(16);
        Reading {
            total_bytes: 16 * GIB,
            available_bytes: (16 - self.0) * GIB,
            swap_total_bytes: 4 * GIB,
            swap_used_bytes: 0,
            kernel_level: None,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_memory_task_samples_every_poll_into_the_watch_channel_snapshot_and_events() {
    let r = rig(Fake::new(Kind::Generic), |s| {
        s.memory_poll_secs = 0.5;
        s.memory_warn_percent = 85.0;
        s.memory_critical_percent = 95.0;
    })
    .await;
    r.handle.state().memory.set_sampler(Box::new(Climbing(0)));
    let mut memory = r.handle.memory();
    let mut events = r.handle.hub().subscribe();
    let mut seen = Vec::new();
    while seen.last().is_none_or(|p: &f64| *p < 100.0) {
        tokio::time::timeout(Duration::from_secs(5), memory.changed())
            .await
            .expect("a sample every 0.5 s")
            .unwrap();
        seen.push(memory.borrow_and_update().used_percent);
    }
    // 1/16 … 16/16 GiB used, one poll each, in order.
    assert_eq!(seen.len(), 16, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let latest = r.handle.memory().borrow().clone();
    assert_eq!(
        latest.pressure,
        blockops_proxy::observe::memory::Pressure::Critical
    );
    let snapshot = r.handle.snapshot().borrow().clone();
    assert_eq!(snapshot.memory.pressure, "critical");
    assert_eq!(snapshot.memory.used_percent, 100.0);
    assert!(snapshot.memory.history.len() >= 16);
    let mut pressures = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let blockops_proxy::observe::ProxyEvent::MemorySampled { pressure, .. } = e {
            pressures.push(pressure);
        }
    }
    assert!(pressures.len() >= 16);
    for p in ["normal", "warning", "critical"] {
        assert!(pressures.iter().any(|x| x == p), "{p} in {pressures:?}");
    }
    let metrics = client()
        .get(format!("{}/metrics", r.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("blockops_memory_used_ratio 1.0\n")
            && metrics.contains("blockops_memory_pressure_level 2\n"),
        "{metrics}"
    );
    // The task is owned: shutdown stops it, waits for it, and returns. (No timeout around it:
    // paused time would run out while the log's writer thread flushes in real time.)
    r.handle.shutdown().await;
}

// ---------------------------------------------------------------- purge and /new

/// `/new` against a fake of each kind: the right endpoints, a one-chunk reply, and `auto`
/// probes the backend once.
#[tokio::test]
async fn new_hits_each_purge_adapters_endpoint() {
    let cases: &[(Kind, &[&str], &str, &str)] = &[
        (Kind::Generic, &["DELETE /v1/cache"], "purged", "generic"),
        (Kind::Vllm, &["POST /reset_prefix_cache"], "purged", "vllm"),
        (
            Kind::VllmWithoutDevMode,
            &["POST /reset_prefix_cache"],
            "unsupported",
            "vllm",
        ),
        (
            Kind::Llamacpp,
            &[
                "GET /slots",
                "POST /slots/0?action=erase",
                "POST /slots/1?action=erase",
            ],
            "purged",
            "llamacpp",
        ),
        (Kind::Ollama, &["POST /api/generate"], "purged", "ollama"),
        (Kind::Mlx, &[], "unsupported", "mlx"),
    ];
    for &(kind, endpoints, status, adapter) in cases {
        let r = rig(Fake::new(kind), |_| {}).await;
        let mut events = r.handle.hub().subscribe();
        for stream in [true, false] {
            let response = r.post(&chat_body(stream, "/new")).send().await.unwrap();
            assert_eq!(response.status(), 200, "{kind:?}");
            let content = if stream {
                let text = response.text().await.unwrap();
                let (data, _) = parse_sse(&text);
                assert_eq!(
                    data.len(),
                    3,
                    "{kind:?}: one content chunk, a finish, [DONE]: {text}"
                );
                let (content, calls, finish) = fold_stream(&data);
                assert!(calls.is_empty());
                assert_eq!(finish.as_deref(), Some("stop"));
                assert_eq!(data[2], "[DONE]");
                content
            } else {
                content_of(response).await
            };
            let expected = match status {
                "purged" => "KV cache purged",
                _ => "KV cache not purged: not supported by this backend",
            };
            assert!(content.starts_with(expected), "{kind:?}: {content}");
            if kind == Kind::VllmWithoutDevMode {
                assert!(content.contains("VLLM_SERVER_DEV_MODE=1"), "{content}");
            }
        }
        let calls: Vec<String> = r
            .fake
            .calls()
            .into_iter()
            .filter(|c| c != "GET /v1/models")
            .collect();
        let expected: Vec<String> = endpoints
            .iter()
            .chain(endpoints.iter())
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            calls, expected,
            "{kind:?}: the chat itself never reached the backend"
        );
        if kind == Kind::Ollama {
            let bodies = r.fake.bodies.lock().unwrap().clone();
            assert_eq!(bodies[0].1, json!({"model": "m", "keep_alive": 0}));
        }
        let mut purged = 0;
        while let Ok(e) = events.try_recv() {
            let e = serde_json::to_value(&e).unwrap();
            if e["type"] == "cache_purged" {
                assert_eq!(e["outcome"]["adapter"], adapter, "{kind:?}");
                assert_eq!(e["outcome"]["status"], status, "{kind:?}");
                purged += 1;
            }
        }
        assert_eq!(purged, 2, "{kind:?}");
        let records = r.records().await;
        let purges: Vec<&Value> = records
            .iter()
            .filter(|x| x["event"] == "cache_purged")
            .collect();
        assert_eq!(purges.len(), 2, "{kind:?}: purges are in the traffic log");
        let request = records
            .iter()
            .find(|x| x["shaping"]["action"] == "reset")
            .unwrap();
        assert_eq!(request["shaping"]["purge"]["adapter"], adapter);
        r.handle.shutdown().await;
    }
}

#[tokio::test]
async fn new_with_text_purges_then_forwards_the_text() {
    let r = rig(Fake::new(Kind::Llamacpp), |_| {}).await;
    let body = json!({"model": "m", "messages": [
        {"role": "user", "content": "old question"},
        {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": "/reset  write a haiku"}
    ]});
    let content = content_of(r.post(&body).send().await.unwrap()).await;
    assert!(
        content.starts_with("⚠ KV cache purged (llamacpp"),
        "{content}"
    );
    assert!(content.ends_with("ok"));
    let calls = r.fake.calls();
    let chat_at = calls
        .iter()
        .position(|c| c == "POST /v1/chat/completions")
        .unwrap();
    assert!(calls[..chat_at].contains(&"POST /slots/1?action=erase".to_owned()));
    let sent = &r.fake.chats()[0];
    assert_eq!(sent["messages"][2]["content"], "write a haiku");
    assert_eq!(sent["messages"][0]["content"], "old question");
    r.handle.shutdown().await;
}

#[tokio::test]
async fn the_admin_purge_waits_for_requests_in_flight_and_reports_the_outcome() {
    let fake = Fake::new(Kind::Ollama);
    let hold = Arc::new(Notify::new());
    *fake.hold.lock().unwrap() = Some(hold.clone());
    let r = rig(fake, |s| s.cache_purge = CachePurge::Auto).await;
    let running = tokio::spawn(r.post(&chat_body(false, "long one")).send());
    while r.handle.state().gate.busy() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let purge = tokio::spawn({
        let url = format!("{}/admin/api/cache/purge", r.base);
        async move { client().post(url).json(&json!({})).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !purge.is_finished(),
        "the purge waits for the request in flight"
    );
    assert!(!r.fake.calls().iter().any(|c| c.contains("/api/")));
    hold.notify_one();
    assert_eq!(running.await.unwrap().unwrap().status(), 200);
    let response = purge.await.unwrap();
    assert_eq!(response.status(), 200);
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["adapter"], "ollama");
    assert_eq!(v["status"], "purged");
    assert!(v["duration_ms"].is_u64());
    // No model in an admin purge: every model Ollama has loaded is unloaded.
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("qwen3:8b, llama3:8b"),
        "{v}"
    );
    let calls = r.fake.calls();
    assert_eq!(
        calls.iter().filter(|c| *c == "POST /api/generate").count(),
        2,
        "{calls:?}"
    );

    // The tray's call: the same purge, straight from the handle; `auto` does not probe again.
    let probes = || {
        r.fake
            .calls()
            .iter()
            .filter(|c| *c == "GET /v1/models")
            .count()
    };
    let before = probes();
    let outcome = r.handle.purge_cache().await;
    assert_eq!(outcome.status, "purged");
    assert_eq!(probes(), before, "auto detects once and remembers");
    r.handle.shutdown().await;
}

#[tokio::test]
async fn a_failed_purge_is_502_and_off_is_a_plain_answer() {
    let dir = tempfile::tempdir().unwrap();
    let dead = support::dead_url().await;
    let mut s = settings(&dead, &dir);
    s.cache_purge = CachePurge::Generic;
    let (handle, base) = proxy(s).await;
    let http = client();
    let response = http
        .post(format!("{base}/admin/api/cache/purge"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"]["code"], "purge_failed");
    handle
        .settings()
        .patch(&json!({"cache_purge": "off"}))
        .await
        .unwrap();
    let response = http
        .post(format!("{base}/admin/api/cache/purge"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["status"], "unsupported");
    assert!(v["message"].as_str().unwrap().contains("CACHE_PURGE=off"));
    // With notices off, /new still answers (the reply is the answer, not a notice).
    handle
        .settings()
        .patch(&json!({"notices": "off"}))
        .await
        .unwrap();
    assert_eq!(handle.settings().current().notices, NoticeMode::Off);
    let content = content_of(
        http.post(format!("{base}/v1/chat/completions"))
            .json(&chat_body(false, "/new"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(content.contains("CACHE_PURGE=off"), "{content}");
    handle.shutdown().await;
}
