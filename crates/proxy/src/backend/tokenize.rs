//! Exact prompt counts from the backend's own tokenizer, where it has one: vLLM's
//! `POST /tokenize` (chat messages and tools in, `count` out) and llama-server's
//! `POST /apply-template` then `POST /tokenize`. Asked only when the estimate is near a
//! threshold, where precision decides what is cut; anything that fails falls back to the
//! estimate, silently (the estimate is always there).

use crate::config::Settings;
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The longest the tokenizer may take before the estimate is used instead.
const TOKENIZE_TIMEOUT: Duration = Duration::from_secs(5);

/// A count and who made it (for the traffic log: `vllm /tokenize`, `llamacpp /tokenize`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub tokens: u64,
    pub source: &'static str,
    /// Whether the count covers the tool schemas (llama-server's template call does not).
    pub includes_tools: bool,
}

/// Counts the prompt of `body` with the backend's tokenizer, if the backend is known to have
/// one (`kind`, as the health probe found it). `None`: no tokenizer, or it failed.
pub async fn count(
    client: &reqwest::Client,
    settings: &Settings,
    kind: &str,
    body: &Map<String, Value>,
) -> Option<Counted> {
    let base = settings.backend_url.as_str();
    let key = settings.upstream_api_key.as_deref();
    // One request to the tokenizer: its JSON answer, or `None` on any failure.
    let post = async |path: &str, payload: Value| -> Option<Value> {
        let mut request = client
            .post(format!("{base}{path}"))
            .timeout(TOKENIZE_TIMEOUT)
            .json(&payload);
        if let Some(k) = key {
            request = request.bearer_auth(k);
        }
        let response = request.send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    };
    let messages = body.get("messages").cloned().unwrap_or(Value::Null);
    match kind {
        "vllm" => {
            let mut payload = json!({
                "model": body.get("model").cloned().unwrap_or(Value::Null),
                "messages": messages,
                "add_generation_prompt": true,
            });
            if let Some(tools) = body.get("tools") {
                payload["tools"] = tools.clone();
            }
            let v = post("/tokenize", payload).await?;
            Some(Counted {
                tokens: v.get("count")?.as_u64()?,
                source: "vllm /tokenize",
                includes_tools: true,
            })
        }
        "llamacpp" => {
            let v = post("/apply-template", json!({"messages": messages})).await?;
            let prompt = v.get("prompt")?.as_str()?.to_owned();
            let v = post("/tokenize", json!({"content": prompt, "add_special": true})).await?;
            Some(Counted {
                tokens: v.get("tokens")?.as_array()?.len() as u64,
                source: "llamacpp /tokenize",
                includes_tools: false,
            })
        }
        _ => None,
    }
}
