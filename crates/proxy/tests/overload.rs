//! Client faults and overload: clients that vanish at any point, a thousand at once, slow
//! readers, and hostile request bodies. Whatever happens, slots, tasks, file descriptors and
//! memory come back to where they were.

mod faulty;
mod support;

use blockops_proxy::{ServerHandle, Settings};
use faulty::{Fault, FaultyBackend};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};
use support::{client, fold_stream, log_records, parse_sse, proxy, settings};

struct Rig {
    backend: FaultyBackend,
    handle: ServerHandle,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

async fn rig(fault: Fault, tweak: impl FnOnce(&mut Settings)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let backend = FaultyBackend::start(fault).await;
    let mut s = settings(&backend.url, &dir);
    tweak(&mut s);
    let log = s.log_file.clone();
    let (handle, base) = proxy(s).await;
    Rig {
        backend,
        handle,
        base,
        log,
        _dir: dir,
    }
}

fn body(stream: bool) -> Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

fn post(base: &str, body: &Value) -> reqwest::RequestBuilder {
    client()
        .post(format!("{base}/v1/chat/completions"))
        .json(body)
}

/// Waits (bounded) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Everything the request held is back, and its record says the client left (499).
async fn released_and_logged_as_gone(r: &Rig, request_id: &str) {
    tokio::time::timeout(Duration::from_secs(30), r.handle.state().tasks.idle())
        .await
        .expect("the request task ends when its client leaves");
    assert_eq!(r.handle.state().gate.busy(), 0);
    assert_eq!(r.handle.state().gate.queued(), 0);
    r.handle.hub().log().flush().await;
    let records = log_records(&r.log);
    let record = records
        .iter()
        .find(|x| x["id"] == request_id)
        .unwrap_or_else(|| panic!("no record for {request_id}: {records:?}"));
    assert_eq!(record["status"], 499, "{record}");
}

#[tokio::test(start_paused = true)]
async fn a_client_leaving_while_waiting_for_the_first_byte_cancels_the_backend_request() {
    let r = rig(Fault::Silent, |_| {}).await;
    // Streaming: headers arrive (after half a second of waiting), then the client hangs up.
    let response = post(&r.base, &body(true)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    drop(response);
    tokio::time::timeout(Duration::from_secs(60), r.backend.wait_closed_early(1))
        .await
        .expect("the backend saw the connection close");
    released_and_logged_as_gone(&r, &id).await;

    // Non-streaming: the client gives up before any answer.
    let gave_up =
        tokio::time::timeout(Duration::from_secs(2), post(&r.base, &body(false)).send()).await;
    assert!(gave_up.is_err(), "no answer expected");
    tokio::time::timeout(Duration::from_secs(60), r.backend.wait_closed_early(2))
        .await
        .expect("the backend saw the second connection close");
    tokio::time::timeout(Duration::from_secs(30), r.handle.state().tasks.idle())
        .await
        .unwrap();
    assert_eq!(r.handle.state().gate.busy(), 0);
    r.handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_client_leaving_mid_stream_cancels_the_backend_request() {
    let r = rig(Fault::StallWith(vec!["one ".into(), "two ".into()]), |_| {}).await;
    let mut response = post(&r.base, &body(true)).send().await.unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut seen = String::new();
    while !seen.contains("two") {
        let c = response.chunk().await.unwrap().expect("more stream");
        seen.push_str(&String::from_utf8_lossy(&c));
    }
    drop(response);
    tokio::time::timeout(Duration::from_secs(60), r.backend.wait_closed_early(1))
        .await
        .expect("the backend saw the connection close");
    released_and_logged_as_gone(&r, &id).await;
    r.handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_client_leaving_mid_tool_call_cancels_the_backend_request() {
    // The model is halfway through a text tool call: the proxy holds it back (it may still be a
    // call), so the client sees only heartbeats, and leaves.
    let r = rig(
        Fault::StallWith(vec![
            "<tool_call>\n{\"name\": \"get_weather\", ".into(),
            "\"arguments\": {\"city\": \"Par".into(),
        ]),
        |_| {},
    )
    .await;
    let mut request = body(true);
    request["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let mut response = post(&r.base, &request).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // Read until the backend has certainly sent the partial call (a heartbeat after it).
    let mut beats = 0;
    while beats < 3 {
        let c = response.chunk().await.unwrap().expect("stream open");
        beats += String::from_utf8_lossy(&c).matches(": keep-alive").count();
    }
    drop(response);
    tokio::time::timeout(Duration::from_secs(60), r.backend.wait_closed_early(1))
        .await
        .expect("the backend saw the connection close");
    released_and_logged_as_gone(&r, &id).await;
    r.handle.shutdown().await;
}

#[tokio::test]
async fn a_client_leaving_the_queue_never_reaches_the_backend() {
    let r = rig(Fault::HeldThenHealthy(vec!["done".into()]), |s| {
        s.max_concurrent = 1;
    })
    .await;
    // The first request takes the only slot and is held by the backend.
    let first = tokio::spawn({
        let base = r.base.clone();
        async move { post(&base, &body(false)).send().await.unwrap().status() }
    });
    eventually("the first request reaches the backend", || {
        r.backend.requests() == 1
    })
    .await;
    // The second waits in the queue (its headers and heartbeats have started), then leaves.
    let queued = post(&r.base, &body(true)).send().await.unwrap();
    assert_eq!(queued.status(), 200);
    let id = queued.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(r.handle.state().gate.queued(), 1);
    drop(queued);
    eventually("the queue empties", || r.handle.state().gate.queued() == 0).await;
    r.backend.release();
    assert_eq!(first.await.unwrap(), 200);
    released_and_logged_as_gone(&r, &id).await;
    assert_eq!(
        r.backend.requests(),
        1,
        "the abandoned request never reached the backend"
    );
    r.handle.shutdown().await;
}

/// Open file descriptors of this process (Linux).
fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// The soft limit on open files (Linux).
fn fd_soft_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Tests that measure this process's memory run one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// 1000 streaming clients (BLOCKOPS_OVERLOAD_CLIENTS) against 3 slots and a queue of 64: the
/// excess gets 429 at once, the queued ones get heartbeats and complete, and slots, tasks, file
/// descriptors and memory return to where they were. Each client costs this process two file
/// descriptors (its socket and the proxy's), so the count is lowered to fit the soft limit on
/// machines where it is 1024.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streaming_clients_against_three_slots() {
    let _heavy = HEAVY.lock().await;
    const MAX_CONCURRENT: usize = 3;
    const MAX_QUEUE: usize = 64;
    let wanted: usize = std::env::var("BLOCKOPS_OVERLOAD_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let clients = match fd_soft_limit() {
        Some(limit) => wanted.min(limit.saturating_sub(200) / 3),
        None => wanted,
    };
    assert!(
        clients > MAX_CONCURRENT + MAX_QUEUE,
        "fd limit too low for this test"
    );
    if clients < wanted {
        eprintln!("open-file limit allows {clients} clients (of {wanted})");
    }
    let r = rig(
        Fault::HeldThenHealthy(vec!["all ".into(), "done".into()]),
        |s| {
            s.max_concurrent = MAX_CONCURRENT;
            s.max_queue = MAX_QUEUE;
            s.heartbeat_interval_secs = 0.1;
        },
    )
    .await;
    // Warm up: one request end to end, so lazily created things exist before counting.
    r.backend.release();
    let warm = post(&r.base, &body(true)).send().await.unwrap();
    assert_eq!(warm.status(), 200);
    warm.text().await.unwrap();
    r.backend.set(Fault::Healthy(vec![]));
    tokio::time::timeout(Duration::from_secs(10), r.handle.state().tasks.idle())
        .await
        .unwrap();
    let fds_before = open_fds();
    let rss_before = rss_bytes();

    // A fresh backend gate: every admitted request is held until all statuses are in.
    let held =
        FaultyBackend::start(Fault::HeldThenHealthy(vec!["all ".into(), "done".into()])).await;
    r.handle
        .settings()
        .patch(&json!({"backend_url": held.url}))
        .await
        .unwrap();

    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let (status_tx, mut status_rx) = tokio::sync::mpsc::unbounded_channel::<(u16, Duration)>();
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let http = http.clone();
        let url = format!("{}/v1/chat/completions", r.base);
        let status_tx = status_tx.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let response = http
                .post(url)
                .json(&body(true))
                .send()
                .await
                .expect("answered");
            let status = response.status().as_u16();
            let _ = status_tx.send((status, sent.elapsed()));
            let retry_after = response.headers().get("retry-after").cloned();
            let text = response.text().await.expect("body");
            (status, retry_after, text)
        }));
    }
    drop(status_tx);
    // Every client has its status before any admitted request has been answered.
    let mut ok = 0;
    let mut refused = 0;
    let mut slowest_refusal = Duration::ZERO;
    while ok + refused < clients {
        let (status, took) = tokio::time::timeout(Duration::from_secs(60), status_rx.recv())
            .await
            .expect("every client gets a status while the backend is held")
            .expect("status");
        match status {
            200 => ok += 1,
            429 => {
                refused += 1;
                slowest_refusal = slowest_refusal.max(took);
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, MAX_CONCURRENT + MAX_QUEUE, "3 running + 64 queued");
    assert_eq!(refused, clients - ok);
    assert_eq!(
        held.requests(),
        MAX_CONCURRENT,
        "only the slots reach the backend"
    );
    assert_eq!(r.handle.state().gate.queued(), MAX_QUEUE);
    assert_eq!(
        r.handle.snapshot().borrow().rejections.queue_full,
        refused as u64
    );
    // Queued clients hear heartbeats while they wait (interval 0.1 s).
    tokio::time::sleep(Duration::from_millis(500)).await;
    held.release();

    let mut completed = 0;
    for t in tasks {
        let (status, retry_after, text) = t.await.unwrap();
        if status == 429 {
            assert!(retry_after.is_some());
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["error"]["code"], "queue_full");
            continue;
        }
        let beats = text.matches(": keep-alive").count();
        assert!(beats >= 3, "a queued client heard {beats} heartbeats");
        let (content, _, _) = fold_stream(&parse_sse(&text).0);
        assert_eq!(content, "all done", "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"));
        completed += 1;
    }
    assert_eq!(completed, MAX_CONCURRENT + MAX_QUEUE);
    eprintln!(
        "{clients} clients: {completed} completed, {refused} refused (slowest 429 after {slowest_refusal:?})"
    );

    // Nothing leaked: tasks, slots, file descriptors, memory.
    drop(http);
    tokio::time::timeout(Duration::from_secs(10), r.handle.state().tasks.idle())
        .await
        .expect("no request task left");
    assert_eq!(r.handle.state().tasks.running(), 0);
    assert_eq!(r.handle.state().gate.busy(), 0);
    assert_eq!(r.handle.state().gate.queued(), 0);
    if let Some(before) = fds_before {
        // The held backend's listener and a few pooled connections may remain.
        eventually("file descriptors return", || {
            open_fds().is_some_and(|now| now <= before + 8)
        })
        .await;
    }
    if let (Some(before), Some(after)) = (rss_before, rss_bytes()) {
        let growth = after.saturating_sub(before) >> 20;
        eprintln!("rss growth after the storm: {growth} MB");
        assert!(growth < 200, "memory grew by {growth} MB");
    }
    r.handle.shutdown().await;
}

#[tokio::test]
async fn a_slow_reader_holds_the_backend_back_instead_of_growing_memory() {
    let _heavy = HEAVY.lock().await;
    const TOTAL: usize = 128 << 20;
    let r = rig(
        Fault::Huge {
            total: TOTAL,
            piece: 16 << 10,
        },
        |_| {},
    )
    .await;
    let mut response = post(&r.base, &body(true)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.chunk().await.unwrap();
    // The client stops reading. Once the buffers on the way are full (TCP on both hops, the
    // proxy's 64-frame channel), the backend cannot send more.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = r.backend.sent_bytes();
        if now == last {
            break;
        }
        last = now;
        assert!(
            now < TOTAL,
            "the backend sent everything to a client that reads nothing"
        );
    }
    assert!(
        last < 64 << 20,
        "{} MB buffered for a client that reads nothing",
        last >> 20
    );
    // The client reads again and gets everything.
    let mut bytes = 0usize;
    let mut stream = response.bytes_stream();
    let mut tail = Vec::new();
    while let Some(c) = stream.next().await {
        let c = c.unwrap();
        bytes += c.len();
        tail = c.to_vec();
    }
    assert!(bytes > TOTAL);
    assert!(String::from_utf8_lossy(&tail).ends_with("data: [DONE]\n\n"));
    r.handle.shutdown().await;
}

#[tokio::test]
async fn hostile_bodies_are_400_or_413_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FaultyBackend::start(Fault::Healthy(vec!["ok".into()])).await;
    let mut s = settings(&backend.url, &dir);
    s.max_body_bytes = 64 << 10;
    let (handle, base) = proxy(s).await;
    let http = client();
    let url = format!("{base}/v1/chat/completions");
    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        (
            "application/json",
            b"{not json".to_vec(),
            400,
            "invalid_json",
            "not valid JSON",
        ),
        (
            "text/plain",
            b"{}".to_vec(),
            400,
            "unsupported_content_type",
            "Content-Type",
        ),
        (
            "application/xml",
            b"<a/>".to_vec(),
            400,
            "unsupported_content_type",
            "application/json",
        ),
        (
            "application/json",
            br#"{"model":"m"}"#.to_vec(),
            400,
            "missing_messages",
            "messages",
        ),
        (
            "application/json",
            br#"{"model":"m","messages":"hi"}"#.to_vec(),
            400,
            "invalid_messages",
            "array",
        ),
        (
            "application/json",
            br#"{"model":"m","messages":null}"#.to_vec(),
            400,
            "invalid_messages",
            "array",
        ),
        (
            "application/json",
            b"{\"messages\":[],\"x\":\"\xff\xfe\"}".to_vec(),
            400,
            "invalid_encoding",
            "UTF-8",
        ),
        (
            "application/json",
            b"[]".to_vec(),
            400,
            "invalid_json",
            "JSON object",
        ),
        (
            "application/json",
            b"".to_vec(),
            400,
            "invalid_json",
            "empty",
        ),
        (
            "application/json",
            br#"{"messages":[],"stream":"yes"}"#.to_vec(),
            400,
            "invalid_stream",
            "stream",
        ),
        (
            "application/json",
            [
                b"{\"messages\":[{\"content\":\"".as_slice(),
                &vec![b'x'; 70 << 10],
                b"\"}]}",
            ]
            .concat(),
            413,
            "request_too_large",
            "BLOCKOPS_MAX_BODY_BYTES",
        ),
        (
            "application/json",
            "[".repeat(10_000).into_bytes(),
            400,
            "invalid_json",
            "not valid JSON",
        ),
    ];
    for (ct, bytes, status, code, needle) in cases {
        let r = http
            .post(&url)
            .header("content-type", ct)
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            status,
            "{}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    }
    // Pass-through paths enforce the same body limit.
    let r = http
        .post(format!("{base}/v1/completions"))
        .header("content-type", "application/json")
        .body(vec![b' '; 70 << 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("BLOCKOPS_MAX_BODY_BYTES")
    );
    // Without a declared length (chunked upload), the limit cuts the stream: still 413.
    let chunks = futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 10 << 10]))),
    );
    let r = http
        .post(format!("{base}/v1/completions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(handle.state().gate.busy(), 0);
    assert_eq!(
        backend.requests(),
        0,
        "no hostile chat body reached the backend"
    );
    handle.shutdown().await;
}
