//! Several backends behind one address (issue 17): routing by model, aliases, the models union,
//! per-backend queues, fallback before the first byte (and none after), session affinity, and
//! changing the backends while running. Three kinds of fake backend: one that answers at once,
//! one that holds its replies until told (slow), and addresses where nothing listens (down).
//! Every wait is on a channel or a response, never on a clock.

mod support;

use axum::{
    Json, Router,
    body::Body,
    extract::Request,
    response::Response,
    routing::{get, post},
};
use blockops_proxy::{ServerHandle, Settings, config};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use support::{
    Recorder, client, dead_url, fold_stream, log_records, parse_sse, proxy, serve, settings,
    sse_response, sse_script,
};
use tokio::sync::{mpsc, watch};

/// A backend that answers `NAME:MODEL` (the model it was asked for), lists `models`, and, when
/// `hold` is given, keeps each reply back until it is open. Arrivals are announced.
struct Fake {
    url: String,
    recorder: Recorder,
    arrivals: mpsc::UnboundedReceiver<String>,
    open: watch::Sender<bool>,
}

async fn fake(name: &'static str, models: &[&str], held: bool) -> Fake {
    let recorder = Recorder::default();
    let (arrived, arrivals) = mpsc::unbounded_channel();
    let (open, open_rx) = watch::channel(!held);
    let listed: Vec<Value> = models.iter().map(|m| json!({"id": m})).collect();
    let rec = recorder.clone();
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            post(move |req: Request| {
                let (rec, arrived, mut open_rx) = (rec.clone(), arrived.clone(), open_rx.clone());
                async move {
                    let headers = req.headers().clone();
                    let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
                        .await
                        .unwrap();
                    let body: Value = serde_json::from_slice(&bytes).unwrap();
                    let model = body["model"].as_str().unwrap_or_default().to_owned();
                    rec.push("/v1/chat/completions", body, headers);
                    let _ = arrived.send(model.clone());
                    let _ = open_rx.wait_for(|o| *o).await;
                    sse_response(sse_script(&[&format!("{name}:{model}")]), Duration::ZERO)
                }
            }),
        )
        .route(
            "/v1/models",
            get(move || {
                let listed = listed.clone();
                async move { Json(json!({"object": "list", "data": listed})) }
            }),
        );
    Fake {
        url: serve(app).await,
        recorder,
        arrivals,
        open,
    }
}

/// A backend that fails before any of its reply: 500 with an OpenAI error body.
async fn failing() -> String {
    serve(Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            let mut r = Response::new(Body::from(
                json!({"error": {"message": "out of memory", "type": "server_error"}}).to_string(),
            ));
            *r.status_mut() = axum::http::StatusCode::INTERNAL_SERVER_ERROR;
            r
        }),
    ))
    .await
}

/// A backend that starts its reply, then breaks the connection once `crash` is opened.
async fn breaking() -> (String, watch::Sender<bool>) {
    let (crash, crash_rx) = watch::channel(false);
    let url = serve(Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let mut crash_rx = crash_rx.clone();
            async move {
                let frames = sse_script(&["half "]);
                let head: Vec<Result<Bytes, std::io::Error>> =
                    frames.into_iter().take(2).map(Ok).collect();
                let stream = futures_util::stream::iter(head).chain(futures_util::stream::once(
                    async move {
                        let _ = crash_rx.wait_for(|c| *c).await;
                        Err(std::io::Error::other("backend crashed"))
                    },
                ));
                let mut r = Response::new(Body::from_stream(stream));
                r.headers_mut().insert(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("text/event-stream"),
                );
                r
            }
        }),
    ))
    .await;
    (url, crash)
}

fn backends(s: &mut Settings, list: Value, aliases: Value) {
    let (b, a) = config::parse_tables(Some(&list), Some(&aliases)).expect("test config is valid");
    s.backends = b;
    s.aliases = a;
    s.validate().expect("test config validates");
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

async fn send(base: &str, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

async fn content(base: &str, model: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let r = send(base, &chat(model, false), headers).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn start(s: Settings) -> (ServerHandle, String) {
    proxy(s).await
}

#[tokio::test]
async fn models_route_through_aliases_to_their_backends_and_unknown_ones_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let mac = fake("mac", &["qwen-coder"], false).await;
    let small = fake("small", &["qwen-small"], false).await;
    let down = dead_url().await;
    let mut s = settings(&mac.url, &dir);
    backends(
        &mut s,
        json!([
            {"name": "mac", "url": mac.url, "models": ["qwen-coder"]},
            {"name": "small", "url": small.url, "models": ["qwen-small", "tiny-*"], "kind": "generic"},
            {"name": "down", "url": down, "models": ["llama"]},
        ]),
        json!([
            {"match": "claude-*haiku*", "model": "qwen-small"},
            {"match": "claude-*", "model": "qwen-coder"},
            {"match": "coder", "model": "qwen-coder"},
        ]),
    );
    let log = s.log_file.clone();
    let (handle, base) = start(s).await;

    let (code, v) = content(&base, "qwen-coder", &[]).await;
    assert_eq!(
        (code, v["choices"][0]["message"]["content"].clone()),
        (200, json!("mac:qwen-coder"))
    );
    let (_, v) = content(&base, "tiny-1b", &[]).await;
    assert_eq!(
        v["choices"][0]["message"]["content"], "small:tiny-1b",
        "a glob"
    );

    // The backend is asked for the alias's target; the client sees the name it asked for.
    let (code, v) = content(&base, "claude-3-5-haiku-20241022", &[]).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "small:qwen-small");
    assert_eq!(v["model"], "claude-3-5-haiku-20241022");
    let (_, v) = content(&base, "claude-opus-4", &[]).await;
    assert_eq!(
        v["choices"][0]["message"]["content"], "mac:qwen-coder",
        "first match wins"
    );
    // Streamed too.
    let r = send(&base, &chat("claude-sonnet-4", true), &[]).await;
    let (data, _) = parse_sse(&r.text().await.unwrap());
    assert_eq!(fold_stream(&data).0, "mac:qwen-coder");
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["model"], "claude-sonnet-4");

    let (code, v) = content(&base, "gpt-4o", &[]).await;
    assert_eq!(code, 404, "{v}");
    assert_eq!(v["error"]["code"], "model_not_found");
    let msg = v["error"]["message"].as_str().unwrap();
    for m in [
        "\"gpt-4o\"",
        "qwen-coder",
        "qwen-small",
        "llama",
        "coder",
        "tiny-*",
    ] {
        assert!(msg.contains(m), "{m} missing from: {msg}");
    }

    // The union of what answering backends serve, plus literal aliases.
    let models: Value = client()
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let owned: Vec<(String, String)> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().into(),
                m["owned_by"].as_str().unwrap().into(),
            )
        })
        .collect();
    let has = |id: &str, by: &str| owned.iter().any(|(i, o)| i == id && o == by);
    assert!(
        has("qwen-coder", "mac") && has("qwen-small", "small") && has("coder", "mac"),
        "{owned:?}"
    );
    assert!(
        !owned.iter().any(|(i, _)| i == "llama" || i.contains('*')),
        "{owned:?}"
    );

    // Records and metrics name the backend.
    handle.hub().log().flush().await;
    let records = log_records(&log);
    let aliased = records
        .iter()
        .find(|r| r["model"] == "claude-3-5-haiku-20241022")
        .expect("the aliased request is logged");
    assert_eq!(aliased["backend"], "small");
    assert_eq!(aliased["upstream_request"]["model"], "qwen-small");
    let metrics = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"blockops_requests_total{model="qwen-coder",front_door="chat",status="200",backend="mac"} 1"#),
        "{metrics}"
    );
    let listed: Value = client()
        .get(format!("{base}/admin/api/backends"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mac", "small", "down"]);
    assert_eq!(listed[1]["kind"], "generic");
    assert_eq!(listed[0]["slots"], json!({"total": 3, "busy": 0}));
    assert_eq!(listed[0]["queue"]["depth"], 0);
    assert_eq!(
        listed[2]["up"], false,
        "the models listing probed it: {listed}"
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn a_full_backend_answers_429_at_once_without_blocking_another() {
    let dir = tempfile::tempdir().unwrap();
    let mut slow = fake("slow", &["big"], true).await;
    let quick = fake("quick", &["small"], false).await;
    let mut s = settings(&slow.url, &dir);
    backends(
        &mut s,
        json!([
            {"name": "slow", "url": slow.url, "models": ["big"], "max_concurrent": 1, "max_queue": 0},
            {"name": "quick", "url": quick.url, "models": ["small"]},
        ]),
        json!([]),
    );
    let (handle, base) = start(s).await;
    let b = base.clone();
    let first = tokio::spawn(async move { content(&b, "big", &[]).await });
    assert_eq!(slow.arrivals.recv().await.unwrap(), "big");
    // The slow backend's only slot is taken and it may not queue: 429 at once, naming it.
    let (code, v) = content(&base, "big", &[]).await;
    assert_eq!(code, 429, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("backend \"slow\""),
        "{v}"
    );
    // The other backend is not held up by it.
    let (code, v) = content(&base, "small", &[]).await;
    assert_eq!(
        (code, v["choices"][0]["message"]["content"].clone()),
        (200, json!("quick:small"))
    );
    slow.open.send_replace(true);
    let (code, _) = first.await.unwrap();
    assert_eq!(code, 200);
    let _ = quick.recorder.bodies();
    handle.shutdown().await;
}

#[tokio::test]
async fn fallbacks_take_over_before_the_first_byte_and_never_after() {
    let dir = tempfile::tempdir().unwrap();
    let spare = fake("spare", &[], false).await;
    let (dead, fails) = (dead_url().await, failing().await);
    let (breaks, crash) = breaking().await;
    let mut s = settings(&spare.url, &dir);
    backends(
        &mut s,
        json!([
            {"name": "dead", "url": dead, "models": ["a"], "fallbacks": ["spare"]},
            {"name": "fails", "url": fails, "models": ["b"], "fallbacks": ["spare"]},
            {"name": "breaks", "url": breaks, "models": ["c"], "fallbacks": ["spare"]},
            {"name": "alone", "url": fails, "models": ["d"]},
            {"name": "spare", "url": spare.url, "models": ["spare-only"]},
        ]),
        json!([]),
    );
    let log = s.log_file.clone();
    let (handle, base) = start(s).await;
    // Refused connection, and a 500 before any reply: the fallback answers, same model id.
    for model in ["a", "b"] {
        let (code, v) = content(&base, model, &[]).await;
        assert_eq!(code, 200, "{model}: {v}");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            format!("spare:{model}")
        );
    }
    let r = send(&base, &chat("b", true), &[]).await;
    let (data, _) = parse_sse(&r.text().await.unwrap());
    assert_eq!(fold_stream(&data).0, "spare:b", "a streaming client too");
    assert_eq!(spare.recorder.bodies().len(), 3);

    // Without a fallback, the backend's own error.
    let (code, v) = content(&base, "d", &[]).await;
    assert_eq!(code, 500, "{v}");

    // Once the reply has started, no retry: the client gets what came and then the error.
    let mut r = send(&base, &chat("c", true), &[]).await;
    assert_eq!(r.status(), 200);
    let mut text = String::new();
    while !text.contains("half") {
        let chunk = r.chunk().await.unwrap().expect("the reply goes on");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    crash.send_replace(true);
    while let Some(chunk) = r.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (data, _) = parse_sse(&text);
    assert!(fold_stream(&data).0.starts_with("half"), "{text}");
    assert!(text.contains("\"error\""), "{text}");
    assert_eq!(
        spare.recorder.bodies().len(),
        3,
        "nothing went to the fallback"
    );

    handle.hub().log().flush().await;
    let records = log_records(&log);
    let served: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["model"].as_str().unwrap_or("").into(),
                r["backend"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert!(served.contains(&("a".into(), "spare".into())), "{served:?}");
    assert!(
        served.contains(&("c".into(), "breaks".into())),
        "{served:?}"
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn a_conversation_stays_on_its_backend_and_a_new_one_goes_to_the_least_busy() {
    let dir = tempfile::tempdir().unwrap();
    let mut one = fake("one", &["shared"], true).await;
    let two = fake("two", &["shared"], false).await;
    let mut s = settings(&one.url, &dir);
    backends(
        &mut s,
        json!([
            {"name": "one", "url": one.url, "models": ["shared"], "max_concurrent": 4},
            {"name": "two", "url": two.url, "models": ["shared"], "max_concurrent": 4},
        ]),
        json!([]),
    );
    let (handle, base) = start(s).await;
    let session = |id: &'static str| [("x-claude-code-session-id", id)];
    // Both idle: the first takes it; it is now busy.
    let b = base.clone();
    let s1 = tokio::spawn(async move { content(&b, "shared", &session("s1")).await });
    one.arrivals.recv().await.unwrap();
    // A new conversation goes to the idle backend, and stays there.
    for _ in 0..2 {
        let (_, v) = content(&base, "shared", &session("s2")).await;
        assert_eq!(v["choices"][0]["message"]["content"], "two:shared");
    }
    // The first conversation comes back to its backend although it is the busier one.
    let b = base.clone();
    let again = tokio::spawn(async move { content(&b, "shared", &session("s1")).await });
    one.arrivals.recv().await.unwrap();
    one.open.send_replace(true);
    for task in [s1, again] {
        let (_, v) = task.await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "one:shared");
    }
    // Claude Code's header pins its Messages requests too (the same body both times, so only
    // the header can send them apart).
    for (id, served_by) in [("s1", "one:shared"), ("s2", "two:shared")] {
        let r = client()
            .post(format!("{base}/v1/messages"))
            .header("x-claude-code-session-id", id)
            .json(&json!({"model": "shared", "max_tokens": 16,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["content"][0]["text"], served_by, "{v}");
    }
    // Without a session header, the conversation's opening identifies it: later turns follow.
    let opening =
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "task 7"}]);
    let mut picked = Vec::new();
    for turn in 0..3 {
        let mut messages = opening.as_array().unwrap().clone();
        for t in 0..turn {
            messages.push(json!({"role": "assistant", "content": format!("a{t}")}));
            messages.push(json!({"role": "user", "content": format!("u{t}")}));
        }
        let r = send(
            &base,
            &json!({"model": "shared", "messages": messages}),
            &[],
        )
        .await;
        let v: Value = r.json().await.unwrap();
        picked.push(
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(picked.iter().all(|p| *p == picked[0]), "{picked:?}");
    handle.shutdown().await;
}

#[tokio::test]
async fn backends_change_while_running_and_bad_ones_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let first = fake("first", &["m1"], false).await;
    let later = fake("later", &["m2"], false).await;
    let s = settings(&first.url, &dir);
    let path = s.config_path.clone().unwrap();
    let (handle, base) = start(s).await;
    let admin =
        |method: reqwest::Method, path: &str| client().request(method, format!("{base}{path}"));

    // One backend (BACKEND_URL alone): named default, serving everything.
    let listed: Value = admin(reqwest::Method::GET, "/admin/api/backends")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["name"], "default");
    assert_eq!(listed[0]["models"], json!(["*"]));

    let r = admin(reqwest::Method::PUT, "/admin/api/backends/later")
        .json(&json!({"url": later.url, "models": ["m2"], "max_queue": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let view: Value = r.json().await.unwrap();
    assert_eq!(view["queue"]["max"], 0);
    // Each view carries its table as PUT takes it (the configured kind, not the probed one), so
    // an editor (the dashboard's form) can change one field and send the rest back as it was.
    assert_eq!(
        view["config"],
        json!({"name": "later", "url": later.url, "kind": "auto", "models": ["m2"],
            "fallbacks": [], "max_queue": 0}),
        "{view}"
    );
    let mut edited = view["config"].clone();
    edited["max_concurrent"] = json!(3);
    let r = admin(reqwest::Method::PUT, "/admin/api/backends/later")
        .json(&edited)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let view: Value = r.json().await.unwrap();
    assert_eq!(
        (&view["slots"]["total"], &view["queue"]["max"]),
        (&json!(3), &json!(0)),
        "{view}"
    );
    assert_eq!(view["config"]["max_concurrent"], 3);
    let (_, v) = content(&base, "m2", &[]).await;
    assert_eq!(v["choices"][0]["message"]["content"], "later:m2");
    let (_, v) = content(&base, "anything", &[]).await;
    assert_eq!(
        v["choices"][0]["message"]["content"], "first:anything",
        "default still serves the rest"
    );
    let saved = std::fs::read_to_string(&path).unwrap();
    assert!(
        saved.contains("[[backends]]") && saved.contains("later"),
        "{saved}"
    );
    let reread = config::load(&config::Sources {
        config_path: Some(path.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(reread.backends.len(), 2);

    // A bad backend: 400 naming it and the field; nothing changes.
    for (body, field) in [
        (json!({"url": "nowhere", "models": ["x"]}), "url"),
        (
            json!({"url": later.url, "models": ["x"], "fallbacks": ["ghost"]}),
            "fallbacks",
        ),
        (
            json!({"url": later.url, "models": ["x"], "max_concurrent": 0}),
            "max_concurrent",
        ),
    ] {
        let r = admin(reqwest::Method::PUT, "/admin/api/backends/bad")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let e: Value = r.json().await.unwrap();
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("backend \"bad\"") && msg.contains(field),
            "{msg}"
        );
    }

    // Aliases change live too, in order.
    let r = admin(reqwest::Method::PUT, "/admin/api/aliases")
        .json(&json!([{"match": "gpt-*", "model": "m2"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, v) = content(&base, "gpt-5", &[]).await;
    assert_eq!(v["choices"][0]["message"]["content"], "later:m2");

    let r = admin(reqwest::Method::DELETE, "/admin/api/backends/later")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, v) = content(&base, "m2", &[]).await;
    assert_eq!(
        v["choices"][0]["message"]["content"], "first:m2",
        "back to the catch-all"
    );
    let r = admin(reqwest::Method::DELETE, "/admin/api/backends/later")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The backend URL setting still moves `default`, now that the list is explicit.
    let r = admin(reqwest::Method::PATCH, "/admin/api/config")
        .json(&json!({"backend_url": later.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, v) = content(&base, "anything", &[]).await;
    assert_eq!(v["choices"][0]["message"]["content"], "later:anything");
    handle.shutdown().await;
}

#[test]
fn a_bad_backend_in_the_file_names_the_backend_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[[backends]]\nname = \"gpu\"\nurl = \"http://h:1\"\nmodels = [\"*\"]\nmax_queue = -1\n",
    )
    .unwrap();
    let e = config::load(&config::Sources {
        config_path: Some(path.clone()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("backend \"gpu\": max_queue") && e.contains("config.toml"),
        "{e}"
    );
    std::fs::write(
        &path,
        "[[backends]]\nname = \"gpu\"\nurl = \"http://h:1\"\nmodels = [\"*\"]\n\n[[aliases]]\nmatch = \"claude-*\"\nmodel = \"qwen\"\n",
    )
    .unwrap();
    let s = config::load(&config::Sources {
        config_path: Some(path.clone()),
        env: vec![("backend_url".into(), "http://127.0.0.1:9".into())],
        ..Default::default()
    })
    .unwrap();
    let list = s.effective_backends();
    assert_eq!(
        list.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        ["gpu", "default"]
    );
    assert_eq!(s.aliases[0].model, "qwen");
}
