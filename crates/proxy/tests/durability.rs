//! Nothing lost: the traffic log reaches the disk within a second, survives kill -9, degrades to
//! a warning when it cannot be written and recovers; settings files are written atomically and
//! a corrupt one is reported with its line, skipped only when asked.

mod faulty;
mod support;

use faulty::{Fault, FaultyBackend};
use serde_json::json;
use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};
use support::{client, log_records, proxy, settings};

const BIN: &str = env!("CARGO_BIN_EXE_blockops-proxy");

fn chat_body() -> serde_json::Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

/// Warnings logged by the proxy (the log writer is its own thread, so a global subscriber).
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_writer(move || Capture(writer.clone()))
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .try_init();
        buf
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn a_record_is_on_disk_within_a_second_without_shutdown_or_flush() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FaultyBackend::start(Fault::Healthy(vec!["hi".into()])).await;
    let s = settings(&backend.url, &dir);
    let log = s.log_file.clone();
    let (handle, base) = proxy(s).await;
    for n in 1..=3 {
        let r = client()
            .post(format!("{base}/v1/chat/completions"))
            .json(&chat_body())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let took = wait_for("the record is in the file", Duration::from_secs(1), || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == n)
        })
        .await;
        assert!(took < Duration::from_secs(1));
    }
    handle.shutdown().await;
}

#[tokio::test]
async fn an_unwritable_log_is_a_warning_requests_keep_working_and_logging_recovers() {
    let capture = captured();
    let dir = tempfile::tempdir().unwrap();
    let backend = FaultyBackend::start(Fault::Healthy(vec!["hi".into()])).await;
    let mut s = settings(&backend.url, &dir);
    // The log's folder is a plain file: opening the log fails even for root (ENOTDIR).
    let blocker = dir.path().join("blocked");
    std::fs::write(&blocker, "not a directory").unwrap();
    s.log_file = blocker.join("proxy.log");
    let log = s.log_file.clone();
    let (handle, base) = proxy(s).await;
    let send = || async {
        client()
            .post(format!("{base}/v1/chat/completions"))
            .json(&chat_body())
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(send().await, 200, "requests keep working");
    handle.hub().log().flush().await;
    let warned = String::from_utf8_lossy(&capture.lock().unwrap()).into_owned();
    assert!(
        warned.contains("could not write the traffic log") && warned.contains("proxy.log"),
        "{warned}"
    );
    // Space returns: the next record is written.
    std::fs::remove_file(&blocker).unwrap();
    assert_eq!(send().await, 200);
    handle.hub().log().flush().await;
    assert_eq!(log_records(&log).len(), 1, "logging resumed");
    handle.shutdown().await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_full_disk_is_a_warning_not_a_failure() {
    // /dev/full accepts the open and fails every write with ENOSPC.
    let capture = captured();
    let dir = tempfile::tempdir().unwrap();
    let backend = FaultyBackend::start(Fault::Healthy(vec!["hi".into()])).await;
    let mut s = settings(&backend.url, &dir);
    s.log_file = "/dev/full".into();
    let (handle, base) = proxy(s).await;
    for _ in 0..3 {
        let r = client()
            .post(format!("{base}/v1/chat/completions"))
            .json(&chat_body())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    handle.hub().log().flush().await;
    let warned = String::from_utf8_lossy(&capture.lock().unwrap()).into_owned();
    assert!(warned.contains("/dev/full"), "{warned}");
    handle.shutdown().await;
}

/// A free loopback port (bound, then released for the child process).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn proxy_command(home: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BLOCKOPS_CONFIG", home.join("config.toml"))
        .env("BLOCKOPS_LOG_FILE", home.join("logs").join("proxy.log"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

#[tokio::test]
async fn kill_9_loses_at_most_the_last_second() {
    let home = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = proxy_command(home.path())
        .args(["--demo", "--demo-tokens-per-sec", "0", "--port"])
        .arg(port.to_string())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = client();
    let start = Instant::now();
    loop {
        if http.get(format!("{base}/health")).send().await.is_ok() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "proxy did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    const N: usize = 20;
    for _ in 0..N {
        let r = http
            .post(format!("{base}/v1/chat/completions"))
            .json(&chat_body())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // Records older than a second are on disk; then the process dies without any cleanup.
    tokio::time::sleep(Duration::from_secs(1)).await;
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success());
    let log = home.path().join("logs").join("proxy.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        N,
        "every request older than a second survived kill -9"
    );
    for l in lines {
        serde_json::from_str::<serde_json::Value>(l).expect("every line is whole JSON");
    }
}

fn run_to_exit(mut c: Command) -> (Option<i32>, String) {
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), err);
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the proxy did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_non_loopback_address_without_a_key_exits_2_naming_blockops_api_key() {
    let home = tempfile::tempdir().unwrap();
    let mut c = proxy_command(home.path());
    c.env("BLOCKOPS_HOST", "0.0.0.0")
        .env("PORT", free_port().to_string());
    let (code, err) = run_to_exit(c);
    assert_eq!(code, Some(2), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("BLOCKOPS_API_KEY"))
        .collect();
    assert_eq!(lines.len(), 1, "one line names BLOCKOPS_API_KEY: {err}");
}

#[test]
fn a_corrupt_config_file_is_reported_with_its_line_and_never_skipped_silently() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config.toml");
    for (text, line) in [
        (
            "port = 9000\nmax_queue = 10\nbackend_url = \"http://x:1\n",
            "line 3",
        ),
        ("port = 9000\n\nmax_concurrent = 0\n", "line 3"),
        ("# comment\nno_such_key = 1\n", "no_such_key"),
    ] {
        std::fs::write(&config, text).unwrap();
        let (code, err) = run_to_exit(proxy_command(home.path()));
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(line), "{line:?} not in {err}");
        assert!(err.contains("config.toml"), "{err}");
        assert!(
            err.contains("--ignore-bad-config"),
            "the way out is named: {err}"
        );
    }
}

#[tokio::test]
async fn ignore_bad_config_starts_on_defaults_says_so_and_keeps_the_file() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config.toml");
    let broken = "max_queue = [oops\n";
    std::fs::write(&config, broken).unwrap();
    for how in ["flag", "env"] {
        let port = free_port();
        let mut c = proxy_command(home.path());
        c.env("PORT", port.to_string());
        if how == "flag" {
            c.arg("--ignore-bad-config");
        } else {
            c.env("BLOCKOPS_IGNORE_BAD_CONFIG", "1");
        }
        let mut child = c.spawn().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        let status = loop {
            if let Ok(r) = client()
                .get(format!("{base}/admin/api/config"))
                .send()
                .await
            {
                break r.json::<serde_json::Value>().await.unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "did not start ({how})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status["max_queue"], 64, "defaults ({how})");
        // A settings change must not overwrite the user's broken file.
        let r = client()
            .patch(format!("{base}/admin/api/config"))
            .json(&json!({"max_queue": 5}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_server_error(), "{}", r.status());
        assert_eq!(std::fs::read_to_string(&config).unwrap(), broken);
        child.kill().unwrap();
        let _ = child.wait();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(err.contains("line 1"), "{err}");
        assert!(err.contains("ignoring the config file"), "{err}");
    }
}

#[test]
fn settings_are_written_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("config.toml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "model_name = \"keep\"\n").unwrap();
    let mut updates = std::collections::BTreeMap::new();
    updates.insert("max_queue".to_owned(), toml::Value::Integer(7));
    blockops_proxy::config::persist(&path, &updates).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let table: toml::Table = text.parse().unwrap();
    assert_eq!(table["model_name"].as_str(), Some("keep"));
    assert_eq!(table["max_queue"].as_integer(), Some(7));
    // Nothing but the file itself is left behind (the temporary file was renamed over it).
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("config.toml")]);
}
