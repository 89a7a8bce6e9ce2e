//! What kind of server the backend is, and whether it answers.

pub mod process;
pub mod purge;
pub mod tokenize;

use crate::{config::Settings, observe::Hub};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Probes the backend of `settings` and records what was found in the hub's snapshot (the
/// dashboard, the tray, `/metrics`, and the tokenizer's choice of endpoint read it there).
pub async fn check(client: &reqwest::Client, hub: &Hub, settings: &Settings) -> Probe {
    let probe = probe(
        client,
        &settings.backend_url,
        settings.upstream_api_key.as_deref(),
    )
    .await;
    record(hub, &probe);
    probe
}

/// Records what a probe found in the hub's snapshot.
pub fn record(hub: &Hub, probe: &Probe) {
    hub.update(|s| {
        s.backend.url.clone_from(&probe.url);
        s.backend.up = Some(probe.reachable);
        if probe.reachable {
            s.backend.kind = probe.kind.as_str().to_owned();
        }
    });
}

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
    } else if body == ModelsBody::Empty {
        probe.error = Some(empty_models_message(base));
    }
    // mlx_lm.server is Python's `http.server` (`Server: BaseHTTP/…`), the only backend of the
    // ones named here that is; its model entries carry no `owned_by` (any Python server that
    // names an owner is someone else's, and may well purge: it is probed as generic).
    let python_http = server.starts_with("basehttp/");
    let body = match body {
        ModelsBody::Json(v) => v,
        ModelsBody::Empty | ModelsBody::Unreadable => serde_json::Value::Null,
    };
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
    }) || (python_http && status.is_success() && owned_by.is_empty())
    {
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

/// What a backend answered to `GET /v1/models`.
#[derive(Debug, PartialEq)]
pub enum ModelsBody {
    Json(serde_json::Value),
    /// Nothing (or only whitespace): mlx_lm.server does this when the Hugging Face cache folder
    /// does not exist (it fails scanning the cache after sending its headers).
    Empty,
    /// Too large, cut off, or not JSON.
    Unreadable,
}

/// What to tell the user when `/v1/models` came back empty, and how to fix it.
pub fn empty_models_message(base: &str) -> String {
    format!(
        "{base}/v1/models answered 200 with an empty body. mlx_lm.server does this when the \
         Hugging Face cache folder does not exist: create it (mkdir -p ~/.cache/huggingface/hub) \
         or point HF_HUB_CACHE at an existing folder, then restart the server"
    )
}

/// Reads a `/v1/models` body, at most [`MODELS_BODY_LIMIT`] bytes.
pub async fn read_models(mut response: reqwest::Response) -> ModelsBody {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= MODELS_BODY_LIMIT => {
                body.extend_from_slice(&chunk)
            }
            Ok(None) => return models_body(&body),
            Ok(Some(_)) | Err(_) => return ModelsBody::Unreadable,
        }
    }
}

/// Classifies a whole `/v1/models` body.
pub fn models_body(body: &[u8]) -> ModelsBody {
    if body.iter().all(u8::is_ascii_whitespace) {
        return ModelsBody::Empty;
    }
    match serde_json::from_slice(body) {
        Ok(v) => ModelsBody::Json(v),
        Err(_) => ModelsBody::Unreadable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_models_body_is_told_apart_from_a_bad_one() {
        assert_eq!(models_body(b""), ModelsBody::Empty);
        assert_eq!(models_body(b" \n"), ModelsBody::Empty);
        assert_eq!(models_body(b"{"), ModelsBody::Unreadable);
        assert_eq!(
            models_body(br#"{"data":[]}"#),
            ModelsBody::Json(serde_json::json!({"data": []}))
        );
        assert!(empty_models_message("http://x").contains("HF_HUB_CACHE"));
    }
}
