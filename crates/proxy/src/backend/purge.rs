//! KV-cache purge: what `/new` and `/reset`, the dashboard's button, the tray menu and
//! `POST /admin/api/cache/purge` do. Each backend offers something different:
//!
//! | adapter    | call                                                              |
//! |------------|-------------------------------------------------------------------|
//! | `generic`  | `DELETE {BACKEND_URL}/v1/cache` (custom MLX servers, the demo)     |
//! | `vllm`     | `POST /reset_prefix_cache` (only with `VLLM_SERVER_DEV_MODE=1`)    |
//! | `llamacpp` | `GET /slots`, then `POST /slots/{id}?action=erase` for each slot   |
//! | `ollama`   | `POST /api/generate {model, keep_alive: 0}`: unloads the model     |
//! | (mlx)      | stock `mlx_lm.server` has no purge endpoint: said plainly          |
//!
//! `CACHE_PURGE=auto` probes the backend once per backend URL and remembers the answer. A purge
//! takes every slot first (waits for requests in flight, holds new ones in the queue), so it
//! never cuts into a generation, and gives up after [`WAIT_FOR_SLOTS`] / [`CALL_TIMEOUT`].

use crate::{
    backend::{self, BackendKind},
    config::{CachePurge, Settings},
    observe::PurgeOutcome,
};
use serde_json::{Value, json};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

/// Longest wait for requests in flight to finish before purging.
pub const WAIT_FOR_SLOTS: Duration = Duration::from_secs(30);
/// Longest the backend may take over the purge itself (all its calls together).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// How a backend's cache is purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    Generic,
    Vllm,
    Llamacpp,
    Ollama,
    /// Stock `mlx_lm.server`: nothing to call.
    Mlx,
}

impl Adapter {
    pub fn as_str(self) -> &'static str {
        match self {
            Adapter::Generic => "generic",
            Adapter::Vllm => "vllm",
            Adapter::Llamacpp => "llamacpp",
            Adapter::Ollama => "ollama",
            Adapter::Mlx => "mlx",
        }
    }

    fn of_kind(kind: BackendKind) -> Option<Adapter> {
        match kind {
            BackendKind::Vllm => Some(Adapter::Vllm),
            BackendKind::Llamacpp => Some(Adapter::Llamacpp),
            BackendKind::Ollama => Some(Adapter::Ollama),
            BackendKind::Mlx => Some(Adapter::Mlx),
            BackendKind::Demo | BackendKind::Generic => Some(Adapter::Generic),
            BackendKind::Unknown => None,
        }
    }
}

/// What `auto` found, per backend URL. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Detected {
    inner: Arc<Mutex<Option<(String, Adapter)>>>,
}

impl Detected {
    fn get(&self, backend: &str) -> Option<Adapter> {
        let d = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        d.as_ref().filter(|(b, _)| b == backend).map(|(_, a)| *a)
    }

    fn remember(&self, backend: &str, adapter: Adapter) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = Some((backend.to_owned(), adapter));
    }
}

/// Why no adapter could be chosen: the outcome to report instead.
pub struct NoAdapter {
    pub adapter: &'static str,
    pub status: &'static str,
    pub message: String,
}

/// The adapter for the backend in `settings`: the configured one, or (`auto`) the one its kind
/// calls for, probed once per backend URL.
pub async fn choose(
    client: &reqwest::Client,
    detected: &Detected,
    settings: &Settings,
) -> Result<Adapter, NoAdapter> {
    match settings.cache_purge {
        CachePurge::Off => Err(NoAdapter {
            adapter: "off",
            status: "unsupported",
            message: "cache purge is switched off (CACHE_PURGE=off)".into(),
        }),
        CachePurge::Generic => Ok(Adapter::Generic),
        CachePurge::Vllm => Ok(Adapter::Vllm),
        CachePurge::Llamacpp => Ok(Adapter::Llamacpp),
        CachePurge::Ollama => Ok(Adapter::Ollama),
        CachePurge::Auto => {
            if let Some(a) = detected.get(&settings.backend_url) {
                return Ok(a);
            }
            let probe = backend::probe(
                client,
                &settings.backend_url,
                settings.upstream_api_key.as_deref(),
            )
            .await;
            match Adapter::of_kind(probe.kind).filter(|_| probe.reachable) {
                Some(a) => {
                    detected.remember(&settings.backend_url, a);
                    Ok(a)
                }
                None => Err(NoAdapter {
                    adapter: "auto",
                    status: "failed",
                    message: format!(
                        "could not tell what kind of server {} is ({}); set CACHE_PURGE to generic, vllm, llamacpp or ollama",
                        settings.backend_url,
                        probe.error.unwrap_or_else(|| "no answer".into())
                    ),
                }),
            }
        }
    }
}

/// Runs `adapter` against the backend (the caller holds every slot): `(status, message)`.
pub async fn run(
    client: &reqwest::Client,
    settings: &Settings,
    adapter: Adapter,
    model: Option<&str>,
) -> (&'static str, String) {
    let call = Call {
        client,
        base: &settings.backend_url,
        key: settings.upstream_api_key.as_deref(),
    };
    match tokio::time::timeout(CALL_TIMEOUT, call.run(adapter, model)).await {
        Ok(Ok(message)) => ("purged", message),
        Ok(Err(Refusal::Unsupported(message))) => ("unsupported", message),
        Ok(Err(Refusal::Failed(message))) => ("failed", message),
        Err(_) => (
            "failed",
            format!(
                "the backend at {} did not finish the purge within {} s",
                settings.backend_url,
                CALL_TIMEOUT.as_secs()
            ),
        ),
    }
}

enum Refusal {
    Unsupported(String),
    Failed(String),
}

struct Call<'a> {
    client: &'a reqwest::Client,
    base: &'a str,
    key: Option<&'a str>,
}

impl Call<'_> {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(reqwest::StatusCode, Value), Refusal> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method.clone(), &url);
        if let Some(k) = self.key {
            request = request.bearer_auth(k);
        }
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.map_err(|e| {
            let mut cause: &(dyn std::error::Error + 'static) = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            Refusal::Failed(format!("{method} {url} failed: {cause}"))
        })?;
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(&bytes).chars().take(300).collect())
        });
        Ok((status, value))
    }

    fn unexpected(&self, what: &str, status: reqwest::StatusCode, body: &Value) -> Refusal {
        Refusal::Failed(format!(
            "{what} at {} answered {status}: {}",
            self.base,
            body.to_string().chars().take(300).collect::<String>()
        ))
    }

    async fn run(&self, adapter: Adapter, model: Option<&str>) -> Result<String, Refusal> {
        match adapter {
            Adapter::Generic => self.generic().await,
            Adapter::Vllm => self.vllm().await,
            Adapter::Llamacpp => self.llamacpp().await,
            Adapter::Ollama => self.ollama(model).await,
            Adapter::Mlx => Err(Refusal::Unsupported(
                "not supported by this backend: stock mlx_lm.server has no cache-purge endpoint"
                    .into(),
            )),
        }
    }

    async fn generic(&self) -> Result<String, Refusal> {
        use reqwest::Method;
        let (status, body) = self.send(Method::DELETE, "/v1/cache", None).await?;
        if status.is_success() {
            let said = body.get("message").and_then(Value::as_str);
            Ok(format!(
                "KV cache cleared (DELETE /v1/cache){}",
                said.map(|m| format!(": {m}")).unwrap_or_default()
            ))
        } else if missing(status) {
            Err(Refusal::Unsupported(format!(
                "not supported by this backend: DELETE /v1/cache answered {status} (stock mlx_lm.server has no purge endpoint; see the README for the workaround)"
            )))
        } else {
            Err(self.unexpected("DELETE /v1/cache", status, &body))
        }
    }

    async fn vllm(&self) -> Result<String, Refusal> {
        use reqwest::Method;
        let (status, body) = self.send(Method::POST, "/reset_prefix_cache", None).await?;
        if status.is_success() {
            Ok("prefix cache reset (POST /reset_prefix_cache)".into())
        } else if missing(status) {
            Err(Refusal::Unsupported(format!(
                "not supported by this backend as started: vLLM serves /reset_prefix_cache only with VLLM_SERVER_DEV_MODE=1 (it answered {status}); restart vLLM with that variable set"
            )))
        } else {
            Err(self.unexpected("POST /reset_prefix_cache", status, &body))
        }
    }

    async fn llamacpp(&self) -> Result<String, Refusal> {
        use reqwest::Method;
        let (status, body) = self.send(Method::GET, "/slots", None).await?;
        if missing(status) {
            return Err(Refusal::Unsupported(format!(
                "not supported by this backend as started: llama-server's /slots answered {status}; start it with --slots (and without --no-slots)"
            )));
        }
        if !status.is_success() {
            return Err(self.unexpected("GET /slots", status, &body));
        }
        let ids: Vec<u64> = body
            .as_array()
            .map(|slots| {
                slots
                    .iter()
                    .filter_map(|s| s.get("id").and_then(Value::as_u64))
                    .collect()
            })
            .unwrap_or_default();
        for id in &ids {
            let path = format!("/slots/{id}?action=erase");
            let (status, body) = self.send(Method::POST, &path, None).await?;
            if missing(status) {
                return Err(Refusal::Unsupported(format!(
                    "not supported by this backend as started: POST {path} answered {status}"
                )));
            }
            if !status.is_success() {
                return Err(self.unexpected(&format!("POST {path}"), status, &body));
            }
        }
        Ok(format!(
            "{} slot{} erased (llama-server /slots)",
            ids.len(),
            if ids.len() == 1 { "" } else { "s" }
        ))
    }

    async fn ollama(&self, model: Option<&str>) -> Result<String, Refusal> {
        use reqwest::{Method, StatusCode};
        let models: Vec<String> = match model.filter(|m| !m.is_empty()) {
            Some(m) => vec![m.to_owned()],
            None => {
                let (status, body) = self.send(Method::GET, "/api/ps", None).await?;
                if missing(status) {
                    return Err(Refusal::Unsupported(format!(
                        "not supported by this backend: GET /api/ps answered {status} (is it Ollama?)"
                    )));
                }
                if !status.is_success() {
                    return Err(self.unexpected("GET /api/ps", status, &body));
                }
                body.get("models")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|m| {
                        m.get("name")
                            .or_else(|| m.get("model"))
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .collect()
            }
        };
        for m in &models {
            let (status, body) = self
                .send(
                    Method::POST,
                    "/api/generate",
                    Some(json!({"model": m, "keep_alive": 0})),
                )
                .await?;
            if missing(status) && status != StatusCode::NOT_FOUND {
                return Err(Refusal::Unsupported(format!(
                    "not supported by this backend: POST /api/generate answered {status} (is it Ollama?)"
                )));
            }
            // 404 here is Ollama's "model not found": nothing of it is loaded.
            if !status.is_success() && status != StatusCode::NOT_FOUND {
                return Err(self.unexpected("POST /api/generate", status, &body));
            }
        }
        Ok(if models.is_empty() {
            "no model was loaded; nothing to unload (Ollama)".into()
        } else {
            format!(
                "unloaded {} (Ollama frees a model's KV cache only by unloading it; the next request loads it again)",
                models.join(", ")
            )
        })
    }
}

/// Statuses that mean "this server has no such endpoint".
fn missing(s: reqwest::StatusCode) -> bool {
    use reqwest::StatusCode;
    matches!(
        s,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
    )
}

/// The one-line account of a purge for a notice or a `/new` reply.
pub fn sentence(outcome: &PurgeOutcome) -> String {
    match outcome.status.as_str() {
        "purged" => format!(
            "KV cache purged ({}, {} ms): {}.",
            outcome.adapter, outcome.duration_ms, outcome.message
        ),
        "unsupported" => format!("KV cache not purged: {}.", outcome.message),
        _ => format!("KV cache purge failed: {}.", outcome.message),
    }
}
