//! What kind of server the backend is, and whether it answers.

pub mod process;
pub mod purge;
pub mod tokenize;

use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Demo,
    Vllm,
    Llamacpp,
    Ollama,
    Mlx,
    Generic,
    Unknown,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Demo => "demo",
            BackendKind::Vllm => "vllm",
            BackendKind::Llamacpp => "llamacpp",
            BackendKind::Ollama => "ollama",
            BackendKind::Mlx => "mlx",
            BackendKind::Generic => "generic",
            BackendKind::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub url: String,
    pub reachable: bool,
    pub models: Vec<String>,
    pub kind: BackendKind,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// Asks the backend for `/v1/models` (2 s budget) and guesses its kind from the answer.
pub async fn probe(client: &reqwest::Client, base: &str, key: Option<&str>) -> Probe {
    let started = Instant::now();
    let mut request = client
        .get(format!("{base}/v1/models"))
        .timeout(Duration::from_secs(2));
    if let Some(k) = key {
        request = request.bearer_auth(k);
    }
    let result = request.send().await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let mut probe = Probe {
        url: base.to_owned(),
        reachable: false,
        models: Vec::new(),
        kind: BackendKind::Unknown,
        latency_ms,
        error: None,
    };
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            probe.error = Some(if e.is_timeout() {
                format!("no answer from {base} within 2 s")
            } else {
                format!("cannot connect to {base}: is the model server running?")
            });
            return probe;
        }
    };
    probe.reachable = true;
    let server = response
        .headers()
        .get(reqwest::header::SERVER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let status = response.status();
    let body = read_models(response).await;
    if !status.is_success() {
        probe.error = Some(format!("{base}/v1/models answered {status}"));
    }
    let data = body
        .get("data")
        .and_then(|d| d.as_array())
        .cloned()
        .unwrap_or_default();
    probe.models = data
        .iter()
        .filter_map(|m| m.get("id")?.as_str().map(str::to_owned))
        .collect();
    let owned_by: Vec<String> = data
        .iter()
        .filter_map(|m| m.get("owned_by")?.as_str().map(str::to_ascii_lowercase))
        .collect();
    probe.kind = if owned_by.iter().any(|o| o == "blockops-demo") {
        BackendKind::Demo
    } else if owned_by.iter().any(|o| o == "vllm") {
        BackendKind::Vllm
    } else if owned_by.iter().any(|o| o == "llamacpp") || server.contains("llama") {
        BackendKind::Llamacpp
    } else if owned_by.iter().any(|o| o == "library" || o == "ollama") || server.contains("ollama")
    {
        BackendKind::Ollama
    } else if data.iter().any(|m| {
        m.get("id")
            .and_then(|i| i.as_str())
            .is_some_and(|i| i.starts_with("mlx-community/"))
    }) {
        BackendKind::Mlx
    } else if status.is_success() {
        BackendKind::Generic
    } else {
        BackendKind::Unknown
    };
    probe
}

/// A model list is small; a backend that sends more than this is not answering `/v1/models`
/// (or is hostile), and the probe must not buffer it.
const MODELS_BODY_LIMIT: usize = 4 << 20;

async fn read_models(mut response: reqwest::Response) -> serde_json::Value {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= MODELS_BODY_LIMIT => {
                body.extend_from_slice(&chunk)
            }
            Ok(None) => return serde_json::from_slice(&body).unwrap_or_default(),
            Ok(Some(_)) | Err(_) => return serde_json::Value::Null,
        }
    }
}
