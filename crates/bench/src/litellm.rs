//! LiteLLM's proxy as the peer: installed by `litellm/setup.sh`, configured with one
//! OpenAI-compatible model pointing at the fake backend. Any failure is a reason, never a panic:
//! the benchmark reports "litellm: unavailable (reason)" and goes on.

use crate::children::{Proc, free_port, wait_ready};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};
use tokio::process::Command;

/// Longest the install may take (a cold pip install of `litellm[proxy]` is a few minutes).
const INSTALL_LIMIT: Duration = Duration::from_secs(900);
/// LiteLLM imports a lot of Python before it listens.
const START_LIMIT: Duration = Duration::from_secs(180);

fn setup_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("litellm/setup.sh")
}

/// Finds (or, when `install`, installs) the `litellm` command.
pub async fn command(install: bool) -> Result<PathBuf, String> {
    let script = setup_script();
    if !script.is_file() {
        return Err(format!("{} not found", script.display()));
    }
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    if !install {
        cmd.arg("--check");
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if install {
        eprintln!(
            "litellm: installing with {} (once; cached in ~/.cache/blockops)",
            script.display()
        );
    }
    let out = tokio::time::timeout(INSTALL_LIMIT, cmd.output())
        .await
        .map_err(|_| format!("setup.sh took longer than {INSTALL_LIMIT:?}"))?
        .map_err(|e| format!("cannot run setup.sh: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        return Err(format!("setup.sh failed: {last}"));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "setup.sh printed no litellm command ({})",
            path.display()
        ))
    }
}

/// Starts LiteLLM's proxy in front of `backend`; returns the process and its base URL.
pub async fn start(exe: &Path, backend: SocketAddr, dir: &Path) -> Result<(Proc, String), String> {
    let port = free_port()?;
    let config = dir.join("litellm.yaml");
    // One model, the OpenAI-compatible provider, straight at the fake backend; no database, no
    // callbacks, no retries: the lightest LiteLLM setup, which is what most users start with.
    let yaml = format!(
        "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/bench\n      api_base: http://{backend}/v1\n      api_key: unused\n\
         litellm_settings:\n  drop_params: true\n  num_retries: 0\n  request_timeout: 60\n  telemetry: false\n"
    );
    std::fs::write(&config, yaml).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--config")
        .arg(&config)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--num_workers",
            "1",
        ])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_LOG", "ERROR")
        .env("LITELLM_TELEMETRY", "False")
        .env("DISABLE_ADMIN_UI", "True")
        .env("HOME", dir)
        .env_remove("DATABASE_URL")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("litellm.stderr"))
                .map_err(|e| format!("cannot create the LiteLLM log: {e}"))?,
        ));
    let mut proc = Proc::spawn("litellm", cmd)?;
    let base = format!("http://127.0.0.1:{port}");
    match wait_ready(&mut proc, &format!("{base}/health/liveliness"), START_LIMIT).await {
        Ok(_) => Ok((proc, base)),
        Err(e) => {
            let log = std::fs::read_to_string(dir.join("litellm.stderr")).unwrap_or_default();
            let last = log
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_owned();
            proc.stop().await;
            Err(if last.is_empty() {
                e
            } else {
                format!("{e}; last log line: {last}")
            })
        }
    }
}
