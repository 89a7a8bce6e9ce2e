//! Managed backends, whole server on port 0 against real child processes: a small Python fake
//! model server (`tests/managed/fake_server.py`) that listens after a delay and can be told to
//! fail or hang. Real time (the children are real processes), small values; every wait is
//! bounded and waits for an observed state, never a fixed sleep.
#![cfg(unix)]

mod support;

use blockops_proxy::{
    ServerHandle, Settings,
    config::{CriticalAction, parse_tables},
    observe::{
        BackendView,
        memory::{Reading, Sampler},
    },
};
use serde_json::{Value, json};
use std::{path::PathBuf, time::Duration};
use support::{client, fold_stream, parse_sse, proxy};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/managed/fake_server.py");
/// Upper bound for any one wait in these tests.
const BOUND: Duration = Duration::from_secs(30);

fn python() -> Option<&'static str> {
    ["python3", "python"].into_iter().find(|p| {
        std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// A `[[backends]]` table for the fake: `extra` adds flags (`--delay`, `--fail`, `--hang`) and
/// `fields` the table's own fields.
fn fake(name: &str, starts: &std::path::Path, extra: &[&str], fields: Value) -> Value {
    let mut cmd = vec![
        json!(python().unwrap_or("python3")),
        json!(SCRIPT),
        json!("--port"),
        json!("${PORT}"),
        json!("--name"),
        json!(name),
        json!("--starts"),
        json!(starts.to_string_lossy()),
    ];
    cmd.extend(extra.iter().map(|e| json!(e)));
    let mut table = json!({
        "name": format!("{name}-{}", unique()),
        "models": [name],
        "cmd": cmd,
        "start_timeout_secs": 20,
        "stop_grace_secs": 2,
    });
    if let (Some(t), Some(f)) = (table.as_object_mut(), fields.as_object()) {
        for (k, v) in f {
            t.insert(k.clone(), v.clone());
        }
    }
    table
}

/// Backend names are process-wide (their port is kept by name): each test's are its own.
fn unique() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{}", N.fetch_add(1, Ordering::SeqCst))
}

struct Rig {
    handle: ServerHandle,
    base: String,
    starts: PathBuf,
    _dir: tempfile::TempDir,
    names: Vec<String>,
}

async fn rig(
    tables: impl FnOnce(&PathBuf) -> Vec<Value>,
    tweak: impl FnOnce(&mut Settings),
) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts.txt");
    let tables = tables(&starts);
    let names = tables
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    let (backends, _) = parse_tables(Some(&json!(tables)), None).unwrap();
    let mut s = support::settings("http://127.0.0.1:9", &dir);
    s.backends = backends;
    s.heartbeat_interval_secs = 0.2;
    tweak(&mut s);
    let (handle, base) = proxy(s).await;
    Rig {
        handle,
        base,
        starts,
        _dir: dir,
        names,
    }
}

impl Rig {
    fn starts(&self) -> Vec<String> {
        std::fs::read_to_string(&self.starts)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
            .collect()
    }

    fn view(&self, i: usize) -> BackendView {
        let name = &self.names[i];
        self.handle
            .backends()
            .into_iter()
            .find(|b| &b.name == name)
            .unwrap()
    }

    fn state_of(&self, i: usize) -> String {
        self.view(i).process.map(|p| p.state).unwrap_or_default()
    }

    /// Waits (bounded) until backend `i`'s process is in `state`.
    async fn wait_state(&self, i: usize, state: &str) {
        let name = self.names[i].clone();
        let mut snap = self.handle.snapshot();
        let found = tokio::time::timeout(
            BOUND,
            snap.wait_for(|s| {
                s.backends
                    .iter()
                    .any(|b| b.name == name && b.process.as_ref().is_some_and(|p| p.state == state))
            }),
        )
        .await;
        assert!(
            found.is_ok(),
            "backend {name} never reached {state}: {:?}",
            self.view(i).process
        );
    }

    async fn chat(&self, model: &str, content: &str, stream: bool) -> (u16, String) {
        let r = client()
            .post(format!("{}/v1/chat/completions", self.base))
            .json(&json!({"model": model, "stream": stream,
                "messages": [{"role": "user", "content": content}]}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        if stream && status == 200 {
            let (data, _) = parse_sse(&text);
            let (content, _, _) = fold_stream(&data);
            return (status, content);
        }
        let v: Value = serde_json::from_str(&text).unwrap_or(json!(text));
        let out = v["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or(text);
        (status, out)
    }
}

#[tokio::test]
async fn a_request_starts_its_backend_and_the_requests_that_follow_wait_for_it() {
    if python().is_none() {
        eprintln!("skipped: no python3");
        return;
    }
    let r = rig(
        |s| vec![fake("alpha", s, &["--delay", "1"], json!({}))],
        |_| {},
    )
    .await;
    assert_eq!(r.state_of(0), "stopped");
    // While the process starts, the three requests wait in the backend's queue, and show there.
    let mut snap = r.handle.snapshot();
    let name = r.names[0].clone();
    let all_three_queued = async {
        tokio::time::timeout(
            BOUND,
            snap.wait_for(|s| {
                s.backends.iter().any(|b| {
                    b.name == name
                        && b.queue.depth == 3
                        && b.queue.waiting.len() == 3
                        && b.process.as_ref().is_some_and(|p| p.state == "starting")
                })
            }),
        )
        .await
        .is_ok()
    };
    let (a, b, c, queued) = tokio::join!(
        r.chat("alpha", "one", true),
        r.chat("alpha", "two", false),
        r.chat("alpha", "three", true),
        all_three_queued,
    );
    assert!(
        queued,
        "the requests waiting for the start never showed in the queue"
    );
    assert_eq!(
        r.view(0).queue.depth,
        0,
        "the queue empties once they are served"
    );
    for (status, content) in [a, b, c] {
        assert_eq!((status, content.as_str()), (200, "alpha"));
    }
    assert_eq!(r.starts(), ["alpha"], "started once");
    let view = r.view(0).process.unwrap();
    assert_eq!(view.state, "running");
    assert!(view.pid.is_some() && view.last_used.is_some());
    assert!(
        view.output.iter().any(|l| l.contains("listening")),
        "{:?}",
        view.output
    );
    // The admin API shows the same, and stops it on request.
    let list: Value = client()
        .get(format!("{}/admin/api/backends", r.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["process"]["state"], "running", "{list}");
    let stopped: Value = client()
        .post(format!("{}/admin/api/backends/{}/stop", r.base, r.names[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stopped["process"]["state"], "stopped", "{stopped}");
    let started = client()
        .post(format!(
            "{}/admin/api/backends/{}/start",
            r.base, r.names[0]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 200);
    assert_eq!(r.starts().len(), 2);
    r.handle.shutdown().await;
    assert_eq!(r.state_of(0), "stopped", "stopped on quit");
}

#[tokio::test]
async fn requests_waiting_for_a_start_are_bounded_like_the_queue() {
    if python().is_none() {
        return;
    }
    let r = rig(
        |s| vec![fake("eps", s, &["--delay", "1"], json!({"max_queue": 0}))],
        |s| s.max_concurrent = 1,
    )
    .await;
    let (a, b) = tokio::join!(r.chat("eps", "one", false), async {
        r.wait_state(0, "starting").await;
        r.chat("eps", "two", false).await
    });
    assert_eq!(a, (200, "eps".into()));
    assert_eq!(b.0, 429, "{b:?}");
    assert!(b.1.contains("is loading"), "{b:?}");
    r.handle.shutdown().await;
}

#[tokio::test]
async fn an_idle_backend_stops_after_its_ttl() {
    if python().is_none() {
        return;
    }
    let r = rig(
        |s| vec![fake("beta", s, &[], json!({"ttl_secs": 1}))],
        |_| {},
    )
    .await;
    assert_eq!(r.chat("beta", "hi", false).await.0, 200);
    assert_eq!(r.state_of(0), "running");
    r.wait_state(0, "stopped").await;
    // The next request starts it again.
    assert_eq!(r.chat("beta", "again", false).await, (200, "beta".into()));
    assert_eq!(r.starts().len(), 2);
    r.handle.shutdown().await;
}

#[tokio::test]
async fn a_failing_start_answers_503_with_its_last_output_and_the_next_request_tries_again() {
    if python().is_none() {
        return;
    }
    let r = rig(|s| vec![fake("gamma", s, &["--fail"], json!({}))], |_| {}).await;
    let (status, body) = r.chat("gamma", "hi", false).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("model weights not found"), "{body}");
    assert!(body.contains("exited with status 1"), "{body}");
    assert_eq!(r.state_of(0), "failed");
    assert_eq!(r.view(0).up, Some(false));
    let (status, _) = r.chat("gamma", "again", false).await;
    assert_eq!(status, 503);
    assert_eq!(
        r.starts().len(),
        2,
        "one more try per request, no retry loop"
    );
    // A stream already started (its client got heartbeats while it loaded) ends in an error event.
    let text = client()
        .post(format!("{}/v1/chat/completions", r.base))
        .json(&json!({"model": "gamma", "stream": true, "messages": [{"role": "user", "content": "s"}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("backend_start_failed"), "{text}");
    assert!(text.contains("model weights not found"), "{text}");
    assert_eq!(r.starts().len(), 3);
    r.handle.shutdown().await;
}

#[tokio::test]
async fn a_start_that_never_gets_ready_times_out() {
    if python().is_none() {
        return;
    }
    let r = rig(
        |s| {
            vec![fake(
                "delta",
                s,
                &["--hang"],
                json!({"start_timeout_secs": 1}),
            )]
        },
        |_| {},
    )
    .await;
    let (status, body) = r.chat("delta", "hi", false).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("start_timeout_secs"), "{body}");
    assert!(body.contains("loading model"), "{body}");
    assert_eq!(r.state_of(0), "failed");
    r.handle.shutdown().await;
}

#[tokio::test]
async fn a_group_swap_lets_requests_in_flight_finish_and_same_model_requests_go_first() {
    if python().is_none() {
        return;
    }
    let r = rig(
        |s| {
            vec![
                fake(
                    "one",
                    s,
                    &[],
                    json!({"group": "g", "swap_max_wait_secs": 20}),
                ),
                fake(
                    "two",
                    s,
                    &[],
                    json!({"group": "g", "swap_max_wait_secs": 20}),
                ),
            ]
        },
        |s| s.max_concurrent = 1,
    )
    .await;
    assert_eq!(r.chat("one", "warm", false).await.0, 200);
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let run = |model: &'static str, content: &'static str| {
        let order = order.clone();
        let r = &r;
        async move {
            let got = r.chat(model, content, true).await;
            order.lock().unwrap().push(format!("{model}:{content}"));
            got
        }
    };
    // one:a is in flight when two:b arrives; one:c and one:d arrive after two:b but go first.
    let (a, b, c, d) = tokio::join!(
        run("one", "slow:1.5"),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            run("two", "b").await
        },
        async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            run("one", "c").await
        },
        async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            run("one", "d").await
        }
    );
    assert_eq!(a, (200, "one".into()), "the request in flight finished");
    assert_eq!(b, (200, "two".into()));
    assert_eq!(c, (200, "one".into()));
    assert_eq!(d, (200, "one".into()));
    let order = order.lock().unwrap().clone();
    assert_eq!(order.last().map(String::as_str), Some("two:b"), "{order:?}");
    assert_eq!(r.starts(), ["one", "two"], "one swap");
    assert_eq!(r.state_of(0), "stopped");
    assert_eq!(r.state_of(1), "running");
    r.handle.shutdown().await;
}

/// A reading at the given percent of 16 GiB used.
struct Fixed(u64);

impl Sampler for Fixed {
    fn read(&mut self) -> Reading {
        const GIB: u64 = 1 << 30;
        Reading {
            total_bytes: 100 * GIB,
            available_bytes: (100 - self.0) * GIB,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
            kernel_level: None,
        }
    }
}

async fn pressure(r: &Rig, percent: u64) {
    let state = r.handle.state();
    state.memory.set_sampler(Box::new(Fixed(percent)));
    state
        .memory
        .sample(&state.hub, state.settings.current())
        .await;
}

#[tokio::test]
async fn memory_pressure_evicts_idle_backends_by_priority_before_a_start_and_before_a_refusal() {
    if python().is_none() {
        return;
    }
    let r = rig(
        |s| {
            vec![
                fake("low", s, &[], json!({"priority": 1})),
                fake("high", s, &[], json!({"priority": 9})),
                fake("new", s, &[], json!({})),
            ]
        },
        |s| {
            s.memory_warn_percent = 80.0;
            s.memory_critical_percent = 95.0;
            s.memory_critical_action = CriticalAction::Reject;
        },
    )
    .await;
    pressure(&r, 10).await;
    assert_eq!(r.chat("high", "x", false).await.0, 200);
    assert_eq!(r.chat("low", "x", false).await.0, 200);
    // Warning: the lowest priority goes first (though it was used last); pressure stays high,
    // so the next one goes too — every idle one until below warn.
    pressure(&r, 85).await;
    let mut events = r.handle.hub().subscribe();
    let (status, content) = r.chat("new", "x", false).await;
    assert_eq!(status, 200);
    assert!(content.ends_with("new"), "{content}");
    assert_eq!(r.state_of(0), "stopped");
    assert_eq!(r.state_of(1), "stopped");
    let mut unloaded = Vec::new();
    while let Ok(e) = events.try_recv() {
        let text = serde_json::to_value(&e).unwrap().to_string();
        if text.contains("Unloaded") {
            unloaded.push(text);
        }
    }
    assert_eq!(unloaded.len(), 2, "{unloaded:?}");
    assert!(
        unloaded[0].contains(&r.names[0]),
        "lowest priority first: {unloaded:?}"
    );
    assert!(unloaded[0].contains("85% used"), "{unloaded:?}");
    // Critical with reject: idle backends go before the refusal, but the most recent stays.
    pressure(&r, 10).await;
    assert_eq!(r.chat("low", "x", false).await.0, 200);
    pressure(&r, 97).await;
    let (status, body) = r.chat("new", "x", false).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("memory"), "{body}");
    assert_eq!(r.state_of(0), "running", "the most recently used stays");
    assert_eq!(r.state_of(2), "stopped", "the older idle one went first");
    r.handle.shutdown().await;
}

#[tokio::test]
async fn a_purge_on_a_managed_mlx_backend_restarts_its_process() {
    if python().is_none() {
        return;
    }
    let r = rig(
        |s| vec![fake("mlxish", s, &[], json!({"kind": "mlx"}))],
        |_| {},
    )
    .await;
    assert_eq!(r.chat("mlxish", "x", false).await.0, 200);
    let pid = r.view(0).process.unwrap().pid;
    let outcome = r.handle.purge_backend_cache(&r.names[0]).await.unwrap();
    assert_eq!(outcome.status, "purged", "{outcome:?}");
    assert_eq!(outcome.adapter, "restart");
    assert!(outcome.message.contains("restarted"), "{outcome:?}");
    let view = r.view(0).process.unwrap();
    assert_eq!(view.state, "running");
    assert_ne!(view.pid, pid);
    assert_eq!(r.starts().len(), 2);
    r.handle.shutdown().await;
}

/// Whether `pid` is gone (or a zombie nobody has reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_child_left_behind_by_a_killed_blockops_is_reaped_on_the_next_start() {
    if python().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts.txt");
    let mut table = fake("orphan", &starts, &[], json!({}));
    table["name"] = json!("orphan");
    let config = dir.path().join("config.toml");
    let toml_table: toml::Value = serde_json::from_value(json!({"backends": [table]})).unwrap();
    std::fs::write(&config, toml::to_string(&toml_table).unwrap()).unwrap();
    let log = dir.path().join("logs").join("proxy.log");
    let launch = |port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_blockops-proxy"))
            .args([
                "--config",
                config.to_str().unwrap(),
                "--port",
                &port.to_string(),
            ])
            .env("BLOCKOPS_LOG_FILE", &log)
            .env("HOME", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let mut first = launch(port);
    let up = |base: String| async move {
        tokio::time::timeout(BOUND, async {
            while client().get(format!("{base}/health")).send().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .is_ok()
    };
    assert!(up(base.clone()).await, "blockops started");
    let started: Value = client()
        .post(format!("{base}/admin/api/backends/orphan/start"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let child = started["process"]["pid"].as_u64().unwrap() as u32;
    assert!(!gone(child));
    first.kill().unwrap(); // SIGKILL: no chance to stop its children
    let _ = first.wait();
    assert!(
        !gone(child),
        "the child outlives a SIGKILLed blockops (its own group)"
    );
    let mut second = launch(port);
    assert!(up(base.clone()).await, "blockops started again");
    assert!(gone(child), "reaped at start");
    assert!(!dir.path().join("logs/run/orphan.json").exists());
    second.kill().unwrap();
    let _ = second.wait();
}
