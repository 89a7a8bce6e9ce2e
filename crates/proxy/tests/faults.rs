//! Backend faults, one by one, in both response modes. For each: the client gets a clear
//! OpenAI-shaped error (or, once a stream has started, one SSE error event and `[DONE]`), the slot
//! is released, the traffic log records what happened, and the next request succeeds.
//!
//! Timeouts run on paused time (`start_paused`): the defaults (first byte 600 s, idle 300 s) are
//! tested as they ship, in milliseconds of real time.

mod faulty;
mod support;

use blockops_proxy::{ServerHandle, Settings};
use faulty::{Fault, FaultyBackend};
use serde_json::{Value, json};
use std::{path::PathBuf, time::Duration};
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

/// What a client saw, normalised across the two modes.
#[derive(Debug)]
struct Outcome {
    request_id: String,
    /// The HTTP status.
    http: u16,
    /// The error object, from the JSON body or from the SSE error event.
    error: Option<Value>,
    content: String,
    /// `data: [DONE]` events seen (streaming only).
    dones: usize,
    /// SSE error events seen (streaming only).
    error_events: usize,
}

async fn chat(base: &str, stream: bool) -> Outcome {
    let r = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("the proxy answers");
    let http = r.status().as_u16();
    let request_id = r
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let is_sse = r
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let text = r.text().await.expect("the body arrives whole");
    if is_sse {
        let (data, _) = parse_sse(&text);
        let errors: Vec<Value> = data
            .iter()
            .filter(|d| d.contains("\"error\""))
            .map(|d| serde_json::from_str::<Value>(d).expect("the error event is JSON"))
            .collect();
        let chunks: Vec<String> = data
            .iter()
            .filter(|d| !d.contains("\"error\""))
            .cloned()
            .collect();
        let (content, _, _) = fold_stream(&chunks);
        Outcome {
            request_id,
            http,
            error: errors.first().map(|e| e["error"].clone()),
            content,
            dones: data.iter().filter(|d| *d == "[DONE]").count(),
            error_events: errors.len(),
        }
    } else {
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("non-streaming body is JSON ({e}): {text}"));
        Outcome {
            request_id,
            http,
            error: v.get("error").cloned(),
            content: v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            dones: 0,
            error_events: 0,
        }
    }
}

/// The error is OpenAI-shaped and says something a person can act on.
fn assert_clear_error(o: &Outcome, code: &str, needle: &str) {
    let e = o
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("no error: {o:?}"));
    assert_eq!(e["code"], code, "{o:?}");
    assert!(e["type"].is_string(), "{o:?}");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

/// A failed streaming request that had started: exactly one error event, then `[DONE]`.
fn assert_in_band(o: &Outcome) {
    assert_eq!(o.http, 200, "{o:?}");
    assert_eq!(o.error_events, 1, "{o:?}");
    assert_eq!(o.dones, 1, "{o:?}");
}

/// The backend saw the proxy hang up (bounded: on paused time an idle wait ends at once).
async fn closed_early(r: &Rig) {
    tokio::time::timeout(Duration::from_secs(60), r.backend.wait_closed_early(1))
        .await
        .expect("the proxy closed the backend connection");
}

/// After any fault: slot released, the log has the record, and the next request succeeds.
async fn recovers(rig: &Rig, failed: &Outcome, logged_status: u16) {
    tokio::time::timeout(Duration::from_secs(30), rig.handle.state().tasks.idle())
        .await
        .expect("request tasks end");
    assert_eq!(rig.handle.state().gate.busy(), 0, "slot released");
    assert_eq!(rig.handle.state().gate.queued(), 0);
    assert_eq!(rig.handle.snapshot().borrow().slots.busy, 0);
    rig.handle.hub().log().flush().await;
    let records = log_records(&rig.log);
    let record = records
        .iter()
        .find(|r| r["id"] == failed.request_id.as_str())
        .unwrap_or_else(|| panic!("no log record for {}: {records:?}", failed.request_id));
    assert_eq!(record["status"], logged_status, "{record}");
    if logged_status != 200 {
        assert!(record["error"]["error"]["message"].is_string(), "{record}");
        assert_eq!(record["state"], "failed");
    }
    rig.backend
        .set(Fault::Healthy(vec!["fine".into(), " again".into()]));
    for stream in [false, true] {
        let next = chat(&rig.base, stream).await;
        assert_eq!(next.http, 200, "{next:?}");
        assert!(next.error.is_none(), "{next:?}");
        assert_eq!(next.content, "fine again");
    }
}

#[tokio::test(start_paused = true)]
async fn refused_connection_is_502_naming_the_backend() {
    for stream in [false, true] {
        let dead = support::dead_url().await;
        let r = rig(Fault::Silent, |s| s.backend_url = dead.clone()).await;
        let o = chat(&r.base, stream).await;
        assert_eq!(o.http, 502, "{o:?}");
        assert_clear_error(&o, "backend_unreachable", &dead);
        // Point the proxy at the live backend, as a user fixing BACKEND_URL would.
        r.handle
            .settings()
            .patch(&json!({"backend_url": r.backend.url}))
            .await
            .unwrap();
        recovers(&r, &o, 502).await;
        r.handle.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_never_answers_hits_the_first_byte_timeout() {
    // The shipped default (600 s), on paused time.
    for stream in [false, true] {
        let r = rig(Fault::Silent, |_| {}).await;
        assert_eq!(r.handle.settings().current().first_byte_timeout_secs, 600.0);
        let o = chat(&r.base, stream).await;
        if stream {
            // Headers went out after half a second of waiting; the error comes in-band.
            assert_in_band(&o);
        } else {
            assert_eq!(o.http, 504);
        }
        assert_clear_error(&o, "backend_timeout", "FIRST_BYTE_TIMEOUT_SECS");
        closed_early(&r).await;
        recovers(&r, &o, 504).await;
        r.handle.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_stalls_between_chunks_hits_the_idle_timeout() {
    for stream in [false, true] {
        let r = rig(Fault::StallAfter { before: 2 }, |_| {}).await;
        assert_eq!(r.handle.settings().current().idle_timeout_secs, 300.0);
        let o = chat(&r.base, stream).await;
        assert_clear_error(&o, "backend_timeout", "IDLE_TIMEOUT_SECS");
        if stream {
            assert_in_band(&o);
            // What the model produced before the stall was delivered.
            assert_eq!(o.content, "part0 part1 ");
        } else {
            assert_eq!(o.http, 504);
        }
        closed_early(&r).await;
        recovers(&r, &o, 504).await;
        r.handle.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_total_timeout_cuts_a_slow_but_alive_stream() {
    let r = rig(Fault::StallAfter { before: 1 }, |s| {
        s.total_timeout_secs = 30.0;
    })
    .await;
    let o = chat(&r.base, true).await;
    assert_in_band(&o);
    assert_clear_error(&o, "backend_timeout", "TOTAL_TIMEOUT_SECS");
    assert_eq!(o.content, "part0 ");
    closed_early(&r).await;
    recovers(&r, &o, 504).await;
    r.handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_connect_timeout_applies_to_a_backend_that_never_accepts() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so a connect hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let _listener = socket.listen(1).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    let url = format!("http://{addr}");
    let r = rig(Fault::Silent, |s| {
        s.backend_url = url.clone();
        s.connect_timeout_secs = 5.0;
    })
    .await;
    let o = chat(&r.base, false).await;
    assert_eq!(o.http, 504, "{o:?}");
    assert_clear_error(&o, "backend_timeout", "CONNECT_TIMEOUT_SECS");
    r.handle
        .settings()
        .patch(&json!({"backend_url": r.backend.url}))
        .await
        .unwrap();
    recovers(&r, &o, 504).await;
    r.handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_reset_mid_stream_delivers_what_came_then_one_error() {
    for stream in [false, true] {
        let r = rig(Fault::ResetMidStream, |_| {}).await;
        let o = chat(&r.base, stream).await;
        assert_eq!(o.error.as_ref().unwrap()["type"], "upstream_error", "{o:?}");
        assert!(
            o.error.as_ref().unwrap()["message"]
                .as_str()
                .unwrap()
                .contains(&r.backend.url),
            "{o:?}"
        );
        if stream {
            assert_in_band(&o);
            assert_eq!(o.content, "partial answer");
        } else {
            assert_eq!(o.http, 502);
        }
        recovers(&r, &o, 502).await;
        r.handle.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn malformed_sse_is_a_broken_stream_error() {
    for stream in [false, true] {
        let r = rig(Fault::MalformedSse, |_| {}).await;
        let o = chat(&r.base, stream).await;
        assert_clear_error(&o, "bad_upstream_stream", "broken stream");
        if stream {
            assert_in_band(&o);
        } else {
            assert_eq!(o.http, 502);
        }
        recovers(&r, &o, 502).await;
        r.handle.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn invalid_json_in_a_data_event_is_named() {
    for stream in [false, true] {
        let r = rig(Fault::InvalidJson, |_| {}).await;
        let o = chat(&r.base, stream).await;
        assert_clear_error(&o, "bad_upstream_stream", "invalid JSON");
        if stream {
            assert_in_band(&o);
            assert_eq!(o.content, "before ");
        } else {
            assert_eq!(o.http, 502);
        }
        // The proxy hung up on the broken backend instead of waiting for more.
        closed_early(&r).await;
        recovers(&r, &o, 502).await;
        r.handle.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn multi_byte_characters_split_across_chunks_arrive_intact() {
    let text = "é€😀 naïve 日本語 ✓";
    for stream in [false, true] {
        let r = rig(Fault::SplitUtf8(text.into()), |_| {}).await;
        let o = chat(&r.base, stream).await;
        assert_eq!(o.http, 200, "{o:?}");
        assert!(o.error.is_none(), "{o:?}");
        assert_eq!(o.content, text);
        assert!(!o.content.contains('\u{FFFD}'));
        if stream {
            assert_eq!(o.dones, 1);
        }
        recovers(&r, &o, 200).await;
        r.handle.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_finished_reply_without_done_is_complete() {
    for stream in [false, true] {
        let r = rig(Fault::NoDoneFinished, |_| {}).await;
        let o = chat(&r.base, stream).await;
        assert_eq!(o.http, 200, "{o:?}");
        assert!(o.error.is_none(), "{o:?}");
        assert_eq!(o.content, "complete");
        if stream {
            assert_eq!(o.dones, 1, "the proxy adds the [DONE] the backend forgot");
        }
        recovers(&r, &o, 200).await;
        r.handle.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_reply_cut_off_without_done_is_an_error_after_its_content() {
    for stream in [false, true] {
        let r = rig(Fault::NoDoneCut, |_| {}).await;
        let o = chat(&r.base, stream).await;
        assert_clear_error(&o, "bad_upstream_stream", "before the reply was finished");
        if stream {
            assert_in_band(&o);
            assert_eq!(o.content, "cut sho");
        } else {
            assert_eq!(o.http, 502);
        }
        recovers(&r, &o, 502).await;
        r.handle.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn done_twice_ends_the_reply_at_the_first() {
    for stream in [false, true] {
        let r = rig(Fault::DoubleDone, |_| {}).await;
        let o = chat(&r.base, stream).await;
        assert_eq!(o.http, 200, "{o:?}");
        assert_eq!(o.content, "once");
        if stream {
            assert_eq!(o.dones, 1, "{o:?}");
        }
        recovers(&r, &o, 200).await;
        r.handle.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn error_statuses_are_relayed_with_status_and_body() {
    let openai =
        r#"{"error":{"message":"model is overloaded","type":"server_error","code":"overloaded"}}"#;
    let cases: [(u16, &str); 4] = [
        (500, "Traceback (most recent call last): Metal OOM"),
        (429, openai),
        (503, openai),
        (500, ""),
    ];
    for (status, body) in cases {
        for stream in [false, true] {
            let r = rig(Fault::Status(status, body.into()), |_| {}).await;
            let o = chat(&r.base, stream).await;
            // The backend refused before anything streamed: the real status, in both modes.
            assert_eq!(o.http, status, "{o:?}");
            let e = o.error.as_ref().unwrap();
            if body.starts_with('{') {
                assert_eq!(e["message"], "model is overloaded", "relayed as sent");
                assert_eq!(e["code"], "overloaded");
            } else if body.is_empty() {
                assert!(e["message"].as_str().unwrap().contains("empty body"), "{e}");
            } else {
                assert!(e["message"].as_str().unwrap().contains("Metal OOM"), "{e}");
                assert_eq!(e["type"], "upstream_error");
            }
            recovers(&r, &o, status).await;
            r.handle.shutdown().await;
        }
    }
}

/// Resident memory of this process, in bytes (Linux).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The proxy's memory while relaying a 100 MB stream must not grow with the reply's size (the
/// copy kept for the log is bounded by `reply::LOG_TEXT_LIMIT`).
#[tokio::test]
async fn a_100_mb_reply_streams_through_whole_in_bounded_memory() {
    let growth = stream_100_mb().await;
    assert!(growth < 64 << 20, "grew {} MB", growth >> 20);
}

async fn stream_100_mb() -> u64 {
    const TOTAL: usize = 100 << 20;
    let r = rig(
        Fault::Huge {
            total: TOTAL,
            piece: 64 << 10,
        },
        |_| {},
    )
    .await;
    let before = rss_bytes();
    let mut response = client()
        .post(format!("{}/v1/chat/completions", r.base))
        .json(
            &json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut bytes = 0usize;
    let mut peak = 0u64;
    let mut tail = Vec::new();
    while let Some(c) = response.chunk().await.unwrap() {
        bytes += c.len();
        tail.extend_from_slice(&c);
        if tail.len() > 4096 {
            tail.drain(..tail.len() - 4096);
        }
        if let Some(now) = rss_bytes() {
            peak = peak.max(now);
        }
    }
    let tail = String::from_utf8_lossy(&tail);
    assert!(bytes > TOTAL, "the client got the content: {bytes} bytes");
    assert!(tail.ends_with("data: [DONE]\n\n"), "{tail}");
    let growth = before.map(|b| peak.saturating_sub(b)).unwrap_or(0);
    eprintln!("rss growth while streaming 100 MB: {} MB", growth >> 20);
    recovers(
        &r,
        &Outcome {
            request_id,
            http: 200,
            error: None,
            content: String::new(),
            dones: 1,
            error_events: 0,
        },
        200,
    )
    .await;
    r.handle.shutdown().await;
    growth
}
