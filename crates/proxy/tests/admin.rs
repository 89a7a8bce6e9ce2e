//! The admin API, `/metrics` and `Server-Timing`: the router without a socket
//! (`tower::ServiceExt::oneshot` on `http::router(state)`), and the whole server on port 0 for a
//! settings change under traffic.

mod support;

use axum::{
    Json, Router,
    body::Body,
    extract::Request,
    http::{self, StatusCode, header},
    response::Response,
    routing::{get, post},
};
use blockops_proxy::{http::router, observe::ProxyEvent, pipeline::AppState, server::build_state};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::time::Duration;
use support::*;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

/// Generous bound for things that happen within milliseconds; only a hang reaches it.
const BOUND: Duration = Duration::from_secs(10);

async fn send(state: &AppState, request: http::Request<Body>) -> Response {
    router(state.clone())
        .oneshot(request)
        .await
        .expect("the router is infallible")
}

async fn json_of(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes));
    });
    (status, value)
}

async fn text_of(response: Response) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn get_req(path: &str) -> http::Request<Body> {
    http::Request::get(path).body(Body::empty()).unwrap()
}

fn json_req(method: &str, path: &str, body: &str) -> http::Request<Body> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn chat_req(stream: bool) -> http::Request<Body> {
    let body = json!({"model": "fake", "stream": stream,
                      "messages": [{"role": "user", "content": "hi"}]});
    json_req("POST", "/v1/chat/completions", &body.to_string())
}

async fn status_of(state: &AppState) -> Value {
    let (code, v) = json_of(send(state, get_req("/admin/api/status")).await).await;
    assert_eq!(code, StatusCode::OK);
    v
}

/// A backend that answers with `name` as the content at once, and lists one model.
async fn immediate(name: &'static str, recorder: Recorder) -> String {
    serve(
        Router::new()
            .route(
                "/v1/chat/completions",
                post(move |req: Request| {
                    let recorder = recorder.clone();
                    async move {
                        let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                            .await
                            .unwrap();
                        recorder.push(
                            "/v1/chat/completions",
                            serde_json::from_slice(&body).unwrap(),
                            Default::default(),
                        );
                        sse_response(sse_script(&[name]), Duration::ZERO)
                    }
                }),
            )
            .route(
                "/v1/models",
                get(|| async { Json(json!({"object": "list", "data": [{"id": "fake-model"}]})) }),
            ),
    )
    .await
}

/// A backend that answers `name`, but holds every reply: before the first token until `first`
/// is open, and after it until `rest` is open. Each request is announced on `arrivals`.
struct Held {
    url: String,
    arrivals: mpsc::UnboundedReceiver<Value>,
    first: watch::Sender<bool>,
    rest: watch::Sender<bool>,
}

async fn held(name: &'static str) -> Held {
    let (arrived, arrivals) = mpsc::unbounded_channel();
    let (first, first_rx) = watch::channel(false);
    let (rest, rest_rx) = watch::channel(false);
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |req: Request| {
            let arrived = arrived.clone();
            let (mut first_rx, mut rest_rx) = (first_rx.clone(), rest_rx.clone());
            async move {
                let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let _ = arrived.send(serde_json::from_slice::<Value>(&body).unwrap());
                let mut frames = sse_script(&[name]).into_iter();
                let head: Vec<Bytes> = frames.by_ref().take(2).collect();
                let tail: Vec<Bytes> = frames.collect();
                let stream = futures_util::stream::once(async move {
                    let _ = first_rx.wait_for(|open| *open).await;
                })
                .filter_map(|()| async { None })
                .chain(futures_util::stream::iter(head))
                .chain(
                    futures_util::stream::once(async move {
                        let _ = rest_rx.wait_for(|open| *open).await;
                    })
                    .filter_map(|()| async { None }),
                )
                .chain(futures_util::stream::iter(tail))
                .map(Ok::<_, std::convert::Infallible>);
                let mut r = Response::new(Body::from_stream(stream));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/event-stream"),
                );
                r
            }
        }),
    );
    Held {
        url: serve(app).await,
        arrivals,
        first,
        rest,
    }
}

/// Waits until the hub's snapshot satisfies `f`.
async fn snapshot_until(state: &AppState, what: &str, f: impl Fn(&Value) -> bool) {
    let mut rx = state.hub.snapshot();
    tokio::time::timeout(BOUND, async {
        loop {
            if f(&serde_json::to_value(state.hub.current_snapshot()).unwrap()) {
                return;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "snapshot never showed {what}: {}",
            serde_json::to_value(state.hub.current_snapshot()).unwrap()
        )
    });
}

fn row<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no row {id} in {status}"))
}

/// Reads an SSE body frame by frame.
struct Frames {
    body: Body,
    buf: String,
}

impl Frames {
    fn new(body: Body) -> Frames {
        Frames {
            body,
            buf: String::new(),
        }
    }

    /// Reads until a frame contains `needle`; returns every frame read.
    async fn until(&mut self, needle: &str) -> Vec<String> {
        let mut frames = Vec::new();
        let found = tokio::time::timeout(BOUND, async {
            loop {
                while let Some(end) = self.buf.find("\n\n") {
                    let frame: String = self.buf.drain(..end + 2).collect();
                    let done = frame.contains(needle);
                    frames.push(frame);
                    if done {
                        return;
                    }
                }
                let frame = self
                    .body
                    .frame()
                    .await
                    .expect("the stream ended")
                    .expect("body error");
                if let Ok(data) = frame.into_data() {
                    self.buf.push_str(std::str::from_utf8(&data).unwrap());
                }
            }
        })
        .await;
        if found.is_err() {
            let tail = &frames[frames.len().saturating_sub(5)..];
            panic!(
                "no {needle:?} in {} frames; the last: {tail:?}",
                frames.len()
            );
        }
        frames
    }
}

#[tokio::test]
async fn status_has_the_dashboard_contract_fields() {
    let dir = tempfile::tempdir().unwrap();
    let backend = dead_url().await;
    let state = build_state(settings(&backend, &dir));
    let response = send(&state, get_req("/admin/api/status")).await;
    let timing = response.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(timing.starts_with("proxy;dur="), "{timing}");
    let (code, s) = json_of(response).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(s["slots"]["total"], 3);
    assert_eq!(s["slots"]["busy"], 0);
    assert_eq!(s["slots"]["active"], json!([]));
    assert_eq!(s["queue"]["depth"], 0);
    assert_eq!(s["queue"]["max"], 64);
    assert_eq!(s["backend"]["url"], backend.as_str());
    assert!(s["backend"].get("up").is_some());
    assert!(s["memory"]["used_percent"].is_number());
    assert_eq!(s["memory"]["warn_percent"], 85.0);
    assert_eq!(s["tokens"]["prompt"], 0);
    assert_eq!(s["tokens"]["completion"], 0);
    assert_eq!(s["tokens"]["warn_threshold"], 80000);
    assert_eq!(s["requests"], json!([]));
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    for reason in [
        "queue_full",
        "queue_timeout",
        "memory",
        "context",
        "unauthorized",
    ] {
        assert_eq!(s["rejections"][reason], 0, "{reason}");
    }
}

#[tokio::test]
async fn a_request_shows_queued_running_and_done_with_slot_and_queue_detail() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = held("A").await;
    let mut s = settings(&backend.url, &dir);
    s.max_concurrent = 1;
    let state = build_state(s);

    let first = tokio::spawn(send_owned(state.clone(), chat_req(false)));
    backend.arrivals.recv().await.unwrap();
    // At the backend, no token yet.
    let status = status_of(&state).await;
    assert_eq!(status["slots"]["busy"], 1);
    let active = &status["slots"]["active"][0];
    assert_eq!(active["first_token"], false);
    assert!(active["busy_secs"].as_f64().unwrap() >= 0.0);
    let a = active["id"].as_str().unwrap().to_owned();
    assert_eq!(row(&status, &a)["state"], "running");
    assert_eq!(row(&status, &a)["status"], Value::Null);

    backend.first.send_replace(true);
    snapshot_until(&state, "the first token", |s| {
        s["slots"]["active"][0]["first_token"] == true
    })
    .await;
    let status = status_of(&state).await;
    assert!(row(&status, &a)["ttft_ms"].is_u64());

    // The one slot is taken: the next request waits in the queue.
    let second = tokio::spawn(send_owned(state.clone(), chat_req(false)));
    snapshot_until(&state, "a queued request", |s| s["queue"]["depth"] == 1).await;
    let status = status_of(&state).await;
    let waiting = &status["queue"]["waiting"][0];
    let b = waiting["id"].as_str().unwrap().to_owned();
    assert!(waiting["wait_secs"].as_f64().unwrap() >= 0.0);
    assert_eq!(row(&status, &b)["state"], "queued");

    backend.rest.send_replace(true);
    for task in [first, second] {
        let response = tokio::time::timeout(BOUND, task).await.unwrap().unwrap();
        let timing = response.headers()["server-timing"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(timing.starts_with("queue;dur="), "{timing}");
        assert!(timing.contains(", upstream;dur="), "{timing}");
        assert!(timing.contains(", proxy;dur="), "{timing}");
        let (code, body) = json_of(response).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["choices"][0]["message"]["content"], "A");
    }
    let status = status_of(&state).await;
    for id in [&a, &b] {
        let r = row(&status, id);
        assert_eq!(r["state"], "done");
        assert_eq!(r["status"], 200);
        assert_eq!(r["prompt_tokens"], 7);
    }
    assert_eq!(status["slots"]["busy"], 0);
    assert_eq!(status["queue"]["depth"], 0);
    assert_eq!(status["tokens"]["prompt"], 14);
    assert_eq!(status["tokens"]["completion"], 2);
}

async fn send_owned(state: AppState, request: http::Request<Body>) -> Response {
    send(&state, request).await
}

#[tokio::test]
async fn the_event_stream_starts_with_the_snapshot_then_sends_events() {
    let dir = tempfile::tempdir().unwrap();
    let state = build_state(settings(&dead_url().await, &dir));
    let response = send(&state, get_req("/admin/api/events")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = Frames::new(response.into_body());
    let frames = body.until("event: snapshot").await;
    assert!(
        frames[..frames.len() - 1]
            .iter()
            .all(|f| f.starts_with(':')),
        "only comments before the snapshot: {frames:?}"
    );
    let snapshot = frames.last().unwrap();
    let data: Value = serde_json::from_str(
        snapshot
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(data["slots"]["total"], 3);

    state.hub.publish(ProxyEvent::Noticed {
        request_id: None,
        kind: blockops_proxy::observe::NoticeKind::Memory,
        text: "Memory pressure: 91% used".into(),
    });
    let frames = body.until("event: proxy").await;
    let event = frames.last().unwrap();
    assert!(event.contains(r#""type":"noticed""#), "{event}");
    assert!(event.contains("Memory pressure: 91% used"), "{event}");
}

#[tokio::test]
async fn one_request_in_full_by_id_and_404_for_an_unknown_one() {
    let dir = tempfile::tempdir().unwrap();
    let backend = immediate("A", Recorder::default()).await;
    let state = build_state(settings(&backend, &dir));
    let response = send(&state, chat_req(true)).await;
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let text = text_of(response).await;
    assert!(text.contains("[DONE]"));

    let (code, r) =
        json_of(send(&state, get_req(&format!("/admin/api/requests/{id}"))).await).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(r["id"], id.as_str());
    assert_eq!(r["state"], "done");
    assert_eq!(r["status"], 200);
    assert_eq!(r["stream"], true);
    assert_eq!(r["model"], "fake");
    assert_eq!(r["request"]["messages"][0]["content"], "hi");
    assert_eq!(r["output"]["content"], "A");
    assert!(r["output"]["tool_calls"].is_array());
    assert!(r["trace"].is_array(), "{r}");
    assert!(r["notices"].is_array());
    assert!(r["timings"]["total_ms"].is_u64());
    assert!(r["timings"]["queue_ms"].is_u64());
    assert_eq!(r["usage"]["prompt_tokens"], 7);
    assert_eq!(r["finish_reason"], "stop");

    let (code, e) = json_of(send(&state, get_req("/admin/api/requests/req-nope")).await).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("req-nope"),
        "{e}"
    );
}

#[tokio::test]
async fn a_patch_is_applied_at_once_persisted_and_published() {
    let dir = tempfile::tempdir().unwrap();
    let state = build_state(settings(&dead_url().await, &dir));
    let (code, config) = json_of(send(&state, get_req("/admin/api/config")).await).await;
    assert_eq!(code, StatusCode::OK);
    for key in [
        "backend_url",
        "max_concurrent",
        "token_warn_threshold",
        "heartbeat_interval_secs",
        "notices",
    ] {
        assert!(
            config.get(key).is_some(),
            "GET config lacks {key}: {config}"
        );
    }
    assert!(
        config.get("api_key").is_none_or(Value::is_null),
        "no secret shown"
    );

    let mut events = state.hub.subscribe();
    let (code, after) = json_of(
        send(
            &state,
            json_req(
                "PATCH",
                "/admin/api/config",
                r#"{"max_concurrent": 5, "token_warn_threshold": 1234}"#,
            ),
        )
        .await,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{after}");
    assert_eq!(after["max_concurrent"], 5);
    let (_, config) = json_of(send(&state, get_req("/admin/api/config")).await).await;
    assert_eq!(config["max_concurrent"], 5);
    assert_eq!(config["token_warn_threshold"], 1234);
    let status = status_of(&state).await;
    assert_eq!(status["slots"]["total"], 5, "the gate was resized");
    assert_eq!(status["tokens"]["warn_threshold"], 1234);
    let event = tokio::time::timeout(BOUND, events.recv())
        .await
        .unwrap()
        .unwrap();
    let ProxyEvent::SettingsChanged { mut keys } = event else {
        panic!("expected SettingsChanged, got {event:?}")
    };
    keys.sort();
    assert_eq!(keys, ["max_concurrent", "token_warn_threshold"]);
    let file: toml::Table = std::fs::read_to_string(dir.path().join("config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(file["max_concurrent"].as_integer(), Some(5));
    assert_eq!(file["token_warn_threshold"].as_integer(), Some(1234));
}

#[tokio::test]
async fn bad_patches_are_400_naming_the_field_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = build_state(settings(&dead_url().await, &dir));
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        ("application/json", "{", None, "not valid JSON"),
        ("application/json", "", None, "not valid JSON"),
        ("application/json", "[1, 2]", None, "JSON object"),
        (
            "application/json",
            "\"max_concurrent\"",
            None,
            "JSON object",
        ),
        (
            "text/plain",
            r#"{"max_concurrent": 4}"#,
            None,
            "Content-Type",
        ),
        (
            "application/json",
            r#"{"no_such_key": 1}"#,
            Some("no_such_key"),
            "unknown setting",
        ),
        (
            "application/json",
            r#"{"max_concurrent": "lots"}"#,
            Some("max_concurrent"),
            "max_concurrent",
        ),
        (
            "application/json",
            r#"{"max_concurrent": 0}"#,
            Some("max_concurrent"),
            "max_concurrent",
        ),
        (
            "application/json",
            r#"{"max_concurrent": null}"#,
            Some("max_concurrent"),
            "max_concurrent",
        ),
        (
            "application/json",
            r#"{"max_concurrent": {"n": 2}}"#,
            Some("max_concurrent"),
            "max_concurrent",
        ),
        (
            "application/json",
            r#"{"backend_url": "ftp://x"}"#,
            Some("backend_url"),
            "backend_url",
        ),
        (
            "application/json",
            r#"{"token_warn_threshold": 100000000}"#,
            Some("token_warn_threshold"),
            "token_hard_threshold",
        ),
        (
            "application/json",
            r#"{"port": 9999}"#,
            Some("port"),
            "restart",
        ),
        (
            "application/json",
            r#"{"log_file": "/tmp/x.log"}"#,
            Some("log_file"),
            "restart",
        ),
        // One bad key spoils the whole PATCH: the good one is not applied either.
        (
            "application/json",
            r#"{"max_concurrent": 4, "bogus": 1}"#,
            Some("bogus"),
            "unknown setting",
        ),
    ];
    for (content_type, body, param, needle) in cases {
        let request = http::Request::patch("/admin/api/config")
            .header(header::CONTENT_TYPE, *content_type)
            .body(Body::from(body.to_string()))
            .unwrap();
        let (code, e) = json_of(send(&state, request).await).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body} → {e}");
        assert_eq!(e["error"]["type"], "invalid_request_error", "{body} → {e}");
        assert_eq!(e["error"]["param"].as_str(), *param, "{body} → {e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body} → {message}");
    }
    let (_, config) = json_of(send(&state, get_req("/admin/api/config")).await).await;
    assert_eq!(config["max_concurrent"], 3);
    assert_eq!(status_of(&state).await["slots"]["total"], 3);
    assert!(
        !dir.path().join("config.toml").exists(),
        "nothing was saved"
    );
}

/// The dashboard builds its form from `GET /admin/api/config/schema`; the bounds it shows must be
/// what a PATCH accepts, for every live number, and every setting GET config shows is described.
#[tokio::test]
async fn the_settings_schema_describes_every_setting_with_the_bounds_patch_enforces() {
    let dir = tempfile::tempdir().unwrap();
    let state = build_state(settings(&dead_url().await, &dir));
    let (code, schema) = json_of(send(&state, get_req("/admin/api/config/schema")).await).await;
    assert_eq!(code, StatusCode::OK, "{schema}");
    let described = schema["settings"].as_array().expect("settings: [...]");
    let (_, config) = json_of(send(&state, get_req("/admin/api/config")).await).await;
    for key in config.as_object().unwrap().keys() {
        if key == "api_key_set" {
            continue;
        }
        let d = described
            .iter()
            .find(|d| d["key"] == key.as_str())
            .unwrap_or_else(|| panic!("GET config shows {key}, the schema does not describe it"));
        assert!(
            d["label"].as_str().is_some_and(|l| !l.is_empty()),
            "{key}: {d}"
        );
        assert!(d["live"].is_boolean(), "{key}: {d}");
    }
    assert!(
        described
            .iter()
            .any(|d| d["key"] == "max_concurrent" && d["min"] == 1 && d["live"] == true),
        "max_concurrent is live with min 1"
    );
    // The backend form's choices: the kinds a table may name, and the settings it may override,
    // each described above with the bounds it is checked against.
    assert_eq!(
        schema["backends"]["kinds"],
        json!(blockops_proxy::config::KINDS)
    );
    assert_eq!(
        schema["backends"]["overrides"],
        json!(blockops_proxy::config::OVERRIDES)
    );
    for key in blockops_proxy::config::OVERRIDES {
        assert!(
            described.iter().any(|d| d["key"] == *key),
            "override {key} is described"
        );
    }

    // Each live number just past either bound is refused, naming the key.
    let mut lowest = serde_json::Map::new();
    let mut highest = serde_json::Map::new();
    for d in described {
        let key = d["key"].as_str().unwrap();
        let integer = d["type"] == "integer";
        if d["live"] != true || !(integer || d["type"] == "number") {
            continue;
        }
        let (min, max) = (d["min"].as_f64().unwrap(), d["max"].as_f64().unwrap());
        let hair = |x: f64| {
            if integer {
                1.0
            } else {
                (x.abs() * 1e-9).max(1e-9)
            }
        };
        // As the form sends them: whole numbers without a fraction.
        let num = |x: f64| if integer { json!(x as i64) } else { json!(x) };
        let low = if d["exclusive_min"] == true {
            min + hair(min)
        } else {
            min
        };
        for bad in [min - hair(min), max + hair(max)] {
            let body = json!({ key: num(bad) }).to_string();
            let (code, e) =
                json_of(send(&state, json_req("PATCH", "/admin/api/config", &body)).await).await;
            assert_eq!(code, StatusCode::BAD_REQUEST, "{body} → {e}");
            assert_eq!(e["error"]["param"], key, "{body} → {e}");
        }
        if d["exclusive_min"] == true {
            let body = json!({ key: min }).to_string();
            let (code, e) =
                json_of(send(&state, json_req("PATCH", "/admin/api/config", &body)).await).await;
            assert_eq!(code, StatusCode::BAD_REQUEST, "{body} → {e}");
        }
        lowest.insert(key.into(), num(low));
        highest.insert(key.into(), num(max));
    }
    assert!(lowest.len() >= 10, "live numbers: {lowest:?}");

    // And every bound itself is accepted (all at once, so the warn ≤ hard rules hold).
    for bounds in [lowest, highest] {
        let body = Value::Object(bounds.clone()).to_string();
        let (code, after) =
            json_of(send(&state, json_req("PATCH", "/admin/api/config", &body)).await).await;
        assert_eq!(code, StatusCode::OK, "{body} → {after}");
        for (key, v) in &bounds {
            assert_eq!(after[key].as_f64(), v.as_f64(), "{key}");
        }
    }
}

#[tokio::test]
async fn backend_test_probes_a_url_before_it_is_saved() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_url().await;
    let state = build_state(settings(&dead, &dir));
    let live = immediate("A", Recorder::default()).await;

    let response = send(
        &state,
        json_req(
            "POST",
            "/admin/api/backend/test",
            &json!({"url": live}).to_string(),
        ),
    )
    .await;
    let timing = response.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        timing.starts_with("upstream;dur="),
        "the probe is upstream time: {timing}"
    );
    let (code, probe) = json_of(response).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(probe["reachable"], true, "{probe}");
    assert_eq!(probe["models"], json!(["fake-model"]));
    assert!(probe["kind"].is_string());

    let (code, probe) = json_of(
        send(
            &state,
            json_req(
                "POST",
                "/admin/api/backend/test",
                &json!({"url": dead}).to_string(),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(probe["reachable"], false);
    assert!(probe["error"].as_str().unwrap().contains(&dead), "{probe}");

    for body in [r#"{}"#, r#"{"url": "not a url"}"#, r#"{"url": 5}"#] {
        let (code, e) =
            json_of(send(&state, json_req("POST", "/admin/api/backend/test", body)).await).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(e["error"]["param"], "url", "{body} → {e}");
    }
    // Testing is not saving.
    let (_, config) = json_of(send(&state, get_req("/admin/api/config")).await).await;
    assert_eq!(config["backend_url"], dead.as_str());
}

/// Checks the Prometheus text format line by line; returns `series → value`.
fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let mut types = std::collections::HashMap::new();
    let mut samples = std::collections::HashMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(name_ok(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line == "# EOF" {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line}");
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("labels end with }");
                for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").expect("k=\"v\"");
                    assert!(name_ok(k), "label name in {line}");
                    assert!(!v.trim_end_matches('"').contains('\n'));
                }
                name
            }
            None => series,
        };
        assert!(name_ok(name), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE before {line}");
        assert!(name.starts_with("blockops_"), "{line}");
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_move_after_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let backend = immediate("A", Recorder::default()).await;
    let state = build_state(settings(&backend, &dir));
    let response = send(&state, get_req("/metrics")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let before = parse_prometheus(&text_of(response).await);
    assert_eq!(before.get("blockops_num_requests_running"), Some(&0.0));
    assert_eq!(before.get("blockops_slots_capacity"), Some(&3.0));
    assert_eq!(
        before.get(r#"blockops_requests_rejected_total{reason="queue_full"}"#),
        Some(&0.0)
    );
    assert!(
        !before
            .keys()
            .any(|k| k.starts_with("blockops_requests_total"))
    );

    for stream in [false, true] {
        let response = send(&state, chat_req(stream)).await;
        assert_eq!(response.status(), StatusCode::OK);
        text_of(response).await;
    }
    let after = parse_prometheus(&text_of(send(&state, get_req("/metrics")).await).await);
    let get = |k: &str| {
        *after
            .get(k)
            .unwrap_or_else(|| panic!("no {k} in {after:?}"))
    };
    assert_eq!(
        get(r#"blockops_requests_total{model="fake",front_door="chat",status="200"}"#),
        2.0
    );
    assert_eq!(
        get(r#"blockops_prompt_tokens_total{model="fake",front_door="chat"}"#),
        14.0
    );
    assert_eq!(
        get(r#"blockops_generation_tokens_total{model="fake",front_door="chat"}"#),
        2.0
    );
    assert_eq!(
        get(r#"blockops_e2e_request_latency_seconds_count{model="fake",front_door="chat"}"#),
        2.0
    );
    assert_eq!(
        get(r#"blockops_time_to_first_token_seconds_count{model="fake",front_door="chat"}"#),
        2.0
    );
    assert_eq!(
        get(r#"blockops_request_queue_time_seconds_count{model="fake",front_door="chat"}"#),
        2.0
    );
    assert_eq!(
        get(
            r#"blockops_e2e_request_latency_seconds_bucket{model="fake",front_door="chat",le="+Inf"}"#
        ),
        2.0
    );
    assert_eq!(get("blockops_proxy_overhead_seconds_count"), 2.0);
    assert!(get("blockops_proxy_overhead_seconds_sum") < 1.0);
    assert_eq!(get("blockops_num_requests_running"), 0.0);
}

#[tokio::test]
async fn a_stalled_event_subscriber_lags_and_never_slows_requests() {
    let dir = tempfile::tempdir().unwrap();
    let backend = immediate("A", Recorder::default()).await;
    let state = build_state(settings(&backend, &dir));
    let mut events = Frames::new(send(&state, get_req("/admin/api/events")).await.into_body());
    events.until("event: snapshot").await;

    // The subscriber reads nothing more. Requests run and stages publish far more events than
    // its buffers hold; every request still completes promptly.
    for i in 0..20 {
        for _ in 0..100 {
            state.hub.publish(ProxyEvent::Noticed {
                request_id: None,
                kind: blockops_proxy::observe::NoticeKind::Memory,
                text: format!("filler {i}"),
            });
        }
        let response = tokio::time::timeout(BOUND, async {
            let r = send(&state, chat_req(i % 2 == 0)).await;
            let code = r.status();
            (code, text_of(r).await)
        })
        .await
        .expect("a request was held up by a stalled subscriber");
        assert_eq!(response.0, StatusCode::OK);
    }
    let frames = events.until("event: lagged").await;
    let lagged = frames.last().unwrap();
    let data: Value = serde_json::from_str(
        lagged
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap(),
    )
    .unwrap();
    assert!(data["missed"].as_u64().unwrap() > 0, "{lagged}");
    // The state follows at once, so the dashboard is whole again.
    let frames = events.until("event: snapshot").await;
    assert_eq!(
        frames.len(),
        1,
        "the snapshot comes right after the gap: {frames:?}"
    );
    assert!(frames[0].contains(r#""completion":20"#), "{}", frames[0]);
    // And it keeps going after the gap: the latest state still arrives.
    state.hub.publish(ProxyEvent::Noticed {
        request_id: None,
        kind: blockops_proxy::observe::NoticeKind::Memory,
        text: "after the gap".into(),
    });
    events.until("after the gap").await;
}

/// The whole server: a backend switch and a storm of PATCHes while requests run.
#[tokio::test]
async fn a_settings_change_under_traffic_keeps_requests_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = held("A").await;
    let b_recorder = Recorder::default();
    let b = immediate("B", b_recorder.clone()).await;
    let mut s = settings(&a.url, &dir);
    s.max_concurrent = 8;
    let (handle, base) = proxy(s).await;
    let client = client();
    let chat = |stream: bool| {
        let client = client.clone();
        let url = format!("{base}/v1/chat/completions");
        async move {
            let r = client
                .post(url)
                .json(&json!({"model": "fake", "stream": stream,
                              "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };

    // Three streams in flight at A, mid-reply.
    a.first.send_replace(true);
    let in_flight: Vec<_> = (0..3).map(|_| tokio::spawn(chat(true))).collect();
    for _ in 0..3 {
        tokio::time::timeout(BOUND, a.arrivals.recv())
            .await
            .unwrap()
            .unwrap();
    }

    // The dashboard's own origin switches the backend.
    let r = client
        .patch(format!("{base}/admin/api/config"))
        .header("origin", &base)
        .json(&json!({"backend_url": b}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // New requests and a storm of concurrent PATCHes at once.
    let patches: Vec<_> = (4..12)
        .map(|n| {
            let client = client.clone();
            let url = format!("{base}/admin/api/config");
            tokio::spawn(async move {
                client
                    .patch(url)
                    .json(&json!({"max_concurrent": n, "heartbeat_interval_secs": n}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let fresh: Vec<_> = (0..10).map(|i| tokio::spawn(chat(i % 2 == 0))).collect();
    for p in patches {
        assert_eq!(tokio::time::timeout(BOUND, p).await.unwrap().unwrap(), 200);
    }
    for f in fresh {
        let (code, text) = tokio::time::timeout(BOUND, f).await.unwrap().unwrap();
        assert_eq!(code, 200, "{text}");
        assert!(
            text.contains(r#""content":"B""#),
            "new requests go to B: {text}"
        );
    }
    assert_eq!(b_recorder.bodies().len(), 10);

    // The ones that started at A finish there, whole.
    a.rest.send_replace(true);
    for f in in_flight {
        let (code, text) = tokio::time::timeout(BOUND, f).await.unwrap().unwrap();
        assert_eq!(code, 200);
        let (data, _) = parse_sse(&text);
        let (content, _, finish) = fold_stream(&data);
        assert_eq!(content, "A");
        assert_eq!(finish.as_deref(), Some("stop"));
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    }
    assert!(a.arrivals.try_recv().is_err(), "nothing new reached A");

    // The file holds the last write, as valid TOML, and matches what is in force.
    let config: Value = client
        .get(format!("{base}/admin/api/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let file: toml::Table = std::fs::read_to_string(dir.path().join("config.toml"))
        .unwrap()
        .parse()
        .expect("the config file is valid TOML");
    assert_eq!(file["backend_url"].as_str(), Some(b.as_str()));
    assert_eq!(
        file["max_concurrent"].as_integer(),
        config["max_concurrent"].as_i64()
    );
    assert_eq!(
        file["heartbeat_interval_secs"].as_integer(),
        config["heartbeat_interval_secs"].as_f64().map(|f| f as i64)
    );
    let status: Value = client
        .get(format!("{base}/admin/api/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["slots"]["total"], config["max_concurrent"],
        "the gate follows the last write"
    );
    assert_eq!(status["backend"]["url"], b.as_str());
    handle.shutdown().await;
}
