//! No way in from outside: the API key, the DNS-rebinding defence, CSRF and CORS, key handling
//! toward the backend and in the log, at the router (oneshot) and over real sockets.

mod support;

use axum::{
    Router,
    body::Body,
    extract::Request,
    http::{Request as HttpRequest, StatusCode},
    routing::{any, post},
};
use blockops_proxy::{Settings, http, http::guard};
use serde_json::{Value, json};
use std::time::Duration;
use support::{Recorder, client, log_records, proxy, serve, settings, sse_response, sse_script};
use tower::ServiceExt;

const KEY: &str = "sk-local-9f8e7d6c";
const UPSTREAM_KEY: &str = "sk-upstream-1a2b3c";

/// A backend that records headers of every request and answers chat with a short stream.
async fn recording_backend(recorder: Recorder) -> String {
    let chat_recorder = recorder.clone();
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            post(move |req: Request| {
                let recorder = chat_recorder.clone();
                async move {
                    let headers = req.headers().clone();
                    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                        .await
                        .unwrap();
                    recorder.push(
                        "/v1/chat/completions",
                        serde_json::from_slice(&body).unwrap_or(Value::Null),
                        headers,
                    );
                    sse_response(sse_script(&["ok"]), Duration::ZERO)
                }
            }),
        )
        .route(
            "/v1/{*rest}",
            any(move |req: Request| {
                let recorder = recorder.clone();
                async move {
                    recorder.push(req.uri().path(), Value::Null, req.headers().clone());
                    axum::Json(json!({"object": "list", "data": []}))
                }
            }),
        );
    serve(app).await
}

fn keyed(backend: &str, dir: &tempfile::TempDir) -> Settings {
    let mut s = settings(backend, dir);
    s.api_key = Some(KEY.into());
    s.upstream_api_key = Some(UPSTREAM_KEY.into());
    s.cors_origins = vec!["https://chat.example".into()];
    s
}

#[tokio::test]
async fn the_key_is_required_on_v1_metrics_and_admin_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let backend = recording_backend(recorder.clone()).await;
    let (handle, base) = proxy(keyed(&backend, &dir)).await;
    let http = client();
    let mut refused = 0;
    for (method, path) in [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/metrics"),
        ("GET", "/admin/api/status"),
        ("GET", "/admin/api/config"),
        ("PATCH", "/admin/api/config"),
        ("GET", "/admin/api/events"),
    ] {
        for auth in [None, Some("Bearer wrong-key"), Some("Basic c2stbG9jYWw=")] {
            let mut r = http.request(method.parse().unwrap(), format!("{base}{path}"));
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} {auth:?}");
            assert!(
                r.headers()["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer")
            );
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["type"], "authentication_error");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("Authorization: Bearer")
            );
            refused += 1;
        }
    }
    assert_eq!(handle.snapshot().borrow().rejections.unauthorized, refused);
    // (The proxy's own health probe, GET /v1/models, is all the backend may have seen.)
    let reached = |r: &Recorder| {
        r.0.lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p != "/v1/models")
            .count()
    };
    assert_eq!(reached(&recorder), 0, "nothing reached the backend");

    // With the key: through, and the backend sees the upstream key, never the client's.
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{base}/v1/embeddings"))
        .header("authorization", format!("bearer {KEY}"))
        .json(&json!({"input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(reached(&recorder), 2);
    for (path, _, headers) in recorder.0.lock().unwrap().iter() {
        let auth: Vec<_> = headers.get_all("authorization").iter().collect();
        assert_eq!(auth.len(), 1, "{path}");
        assert_eq!(auth[0], &format!("Bearer {UPSTREAM_KEY}"), "{path}");
    }
    // /health and the dashboard's files stay open; /health says nothing beyond up/down.
    let health: Value = http
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert!(
        health.get("backend_url").is_none() && health.get("version").is_none(),
        "{health}"
    );
    let ui = http.get(format!("{base}/ui/")).send().await.unwrap();
    assert_ne!(ui.status(), 401);

    // The log has neither key.
    handle.hub().log().flush().await;
    let text = std::fs::read_to_string(dir.path().join("logs").join("proxy.log")).unwrap();
    assert!(!text.is_empty());
    assert!(!text.contains(KEY) && !text.contains(UPSTREAM_KEY));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let log = dir.path().join("logs").join("proxy.log");
        assert_eq!(
            std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let folder = log.parent().unwrap();
        assert_eq!(
            std::fs::metadata(folder).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
    handle.shutdown().await;
}

#[tokio::test]
async fn the_clients_key_is_not_forwarded_without_an_upstream_key() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let backend = recording_backend(recorder.clone()).await;
    let mut s = keyed(&backend, &dir);
    s.upstream_api_key = None;
    let (handle, base) = proxy(s).await;
    for path in ["/v1/completions", "/v1/embeddings"] {
        let r = client()
            .post(format!("{base}{path}"))
            .bearer_auth(KEY)
            .json(&json!({"input": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    for (path, _, headers) in recorder.0.lock().unwrap().iter() {
        assert!(
            headers.get("authorization").is_none(),
            "{path} got the client's key"
        );
    }
    handle.shutdown().await;
}

#[tokio::test]
async fn a_rebound_host_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&support::dead_url().await, &dir);
    s.allowed_hosts = vec!["mybox.lan".into()];
    let (handle, base) = proxy(s).await;
    let http = client();
    for host in ["evil.example", "evil.example:8080", "127.0.0.1.nip.io"] {
        let r = http
            .get(format!("{base}/admin/api/config"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{host}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "host_not_allowed");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("BLOCKOPS_ALLOWED_HOSTS")
        );
    }
    for host in ["localhost", "mybox.lan:1234"] {
        let r = http
            .get(format!("{base}/admin/api/config"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    handle.shutdown().await;
}

#[tokio::test]
async fn admin_changes_need_json_and_the_dashboards_own_origin() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, base) = proxy(settings(&support::dead_url().await, &dir)).await;
    let port = handle.local_addr().port();
    let http = client();
    let before = handle.settings().current().max_queue;
    // A cross-site page (form post or fetch): refused, nothing changed.
    for origin in ["http://evil.example", "null", "http://localhost:1"] {
        for path in [
            "/admin/api/config",
            "/admin/api/backend/test",
            "/admin/api/cache/purge",
        ] {
            let method = if path.ends_with("config") {
                "PATCH"
            } else {
                "POST"
            };
            let r = http
                .request(method.parse().unwrap(), format!("{base}{path}"))
                .header("origin", origin)
                .json(&json!({"max_queue": 1, "url": "http://127.0.0.1:1"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{origin} {path}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "origin_not_allowed");
        }
    }
    assert_eq!(handle.settings().current().max_queue, before);
    // A form body from the dashboard's own origin is still not JSON.
    let r = http
        .patch(format!("{base}/admin/api/config"))
        .header("origin", format!("http://127.0.0.1:{port}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("max_queue=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The dashboard itself, and the tray app.
    for (origin, queue) in [
        (format!("http://127.0.0.1:{port}"), 11),
        (format!("http://localhost:{port}"), 12),
        ("tauri://localhost".to_owned(), 13),
    ] {
        let r = http
            .patch(format!("{base}/admin/api/config"))
            .header("origin", &origin)
            .json(&json!({"max_queue": queue}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{origin}");
        assert_eq!(handle.settings().current().max_queue, queue);
        assert!(r.headers().get("access-control-allow-origin").is_none());
    }
    handle.shutdown().await;
}

#[tokio::test]
async fn cors_is_granted_on_v1_to_listed_origins_only() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let backend = recording_backend(recorder.clone()).await;
    let (handle, base) = proxy(keyed(&backend, &dir)).await;
    let http = client();
    let preflight = |origin: &str, path: &str| {
        http.request(reqwest::Method::OPTIONS, format!("{base}{path}"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let r = preflight("https://chat.example", "/v1/chat/completions")
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://chat.example"
    );
    assert!(
        r.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        r.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    assert!(
        r.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    for (origin, path) in [
        ("https://other.example", "/v1/chat/completions"),
        ("https://chat.example", "/admin/api/config"),
    ] {
        let r = preflight(origin, path).await.unwrap();
        assert_eq!(r.status(), 403, "{origin} {path}");
        assert!(r.headers().get("access-control-allow-origin").is_none());
    }
    // The real request from the listed origin: with the key, answered with CORS headers.
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .header("origin", "https://chat.example")
        .bearer_auth(KEY)
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://chat.example"
    );
    assert!(
        r.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-request-id")
    );
    // A page from anywhere else cannot run prompts, not even with a "simple" form post.
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let chats = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _, _)| p == "/v1/chat/completions")
        .count();
    assert_eq!(chats, 1, "only the allowed request reached the backend");
    handle.shutdown().await;
}

#[tokio::test]
async fn router_level_tests_can_apply_the_guard() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, _base) = proxy(keyed(&support::dead_url().await, &dir)).await;
    let state = handle.state().clone();
    let app = guard::protect(http::router(state.clone()), state);
    let req = |auth: Option<&str>| {
        let mut b = HttpRequest::get("/admin/api/status").header("host", "127.0.0.1");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(Body::empty()).unwrap()
    };
    let r = app.clone().oneshot(req(None)).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .oneshot(req(Some(&format!("Bearer {KEY}"))))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let _ = log_records(&dir.path().join("logs").join("proxy.log"));
    handle.shutdown().await;
}
