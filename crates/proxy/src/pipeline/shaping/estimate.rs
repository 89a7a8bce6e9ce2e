//! Token estimates without a tokenizer: bytes of text divided by a bytes-per-token ratio, plus
//! fixed costs per message and per image. The ratio starts at a pessimistic default and is
//! calibrated per backend and model from the `usage.prompt_tokens` each reply reports.
//!
//! Bytes rather than characters: a token covers about 4 bytes of English, code or JSON and 2–3
//! bytes of CJK text, so bytes vary less across scripts than characters do.

use serde_json::Value;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Bytes per token before any calibration: below the ~4 of English prose, so an uncalibrated
/// estimate errs on the high side and truncation errs toward sending less.
pub const DEFAULT_BYTES_PER_TOKEN: f64 = 3.5;
/// Chat-template tokens around each message (role markers, separators).
pub const TOKENS_PER_MESSAGE: u64 = 4;
/// Tokens that prime the reply (`<|im_start|>assistant` and the like).
pub const TOKENS_PER_REQUEST: u64 = 3;
/// An image part, whatever its size: vision encoders take a few hundred to a thousand or so.
pub const TOKENS_PER_IMAGE: u64 = 768;
/// The plausible range of a learned ratio (see [`ratio_from`]).
pub const MIN_BYTES_PER_TOKEN: f64 = 0.8;
pub const MAX_BYTES_PER_TOKEN: f64 = 6.0;
/// Calibration totals are halved past this many tokens, so recent replies weigh the most.
const CALIBRATION_WINDOW_TOKENS: f64 = 2_000_000.0;
/// Replies with fewer text tokens than this say more about the template than the ratio.
const MIN_CALIBRATION_TOKENS: u64 = 32;

/// What the estimate is made of: bytes of text (divided by the ratio) and fixed tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Measure {
    pub text_bytes: u64,
    pub fixed_tokens: u64,
}

impl Measure {
    pub fn tokens(self, bytes_per_token: f64) -> u64 {
        let ratio = if bytes_per_token.is_finite() && bytes_per_token > 0.0 {
            bytes_per_token
        } else {
            DEFAULT_BYTES_PER_TOKEN
        };
        (self.text_bytes as f64 / ratio).ceil() as u64 + self.fixed_tokens
    }

    fn add(&mut self, other: Measure) {
        self.text_bytes += other.text_bytes;
        self.fixed_tokens += other.fixed_tokens;
    }
}

/// One message: its role, name, text or parts, tool calls (names and arguments) and tool id.
pub fn measure_message(message: &Value) -> Measure {
    let mut m = Measure {
        text_bytes: 0,
        fixed_tokens: TOKENS_PER_MESSAGE,
    };
    let Some(obj) = message.as_object() else {
        m.text_bytes += message.to_string().len() as u64;
        return m;
    };
    for key in ["role", "name", "tool_call_id"] {
        if let Some(Value::String(s)) = obj.get(key) {
            m.text_bytes += s.len() as u64;
        }
    }
    if let Some(content) = obj.get("content") {
        m.add(measure_content(content));
    }
    // Reasoning sent back by some clients is part of the prompt the template renders.
    for key in ["reasoning_content", "reasoning"] {
        if let Some(Value::String(s)) = obj.get(key) {
            m.text_bytes += s.len() as u64;
        }
    }
    if let Some(Value::Array(calls)) = obj.get("tool_calls") {
        for call in calls {
            let f = &call["function"];
            if let Some(name) = f["name"].as_str() {
                m.text_bytes += name.len() as u64;
            }
            m.text_bytes += match &f["arguments"] {
                Value::String(s) => s.len() as u64,
                Value::Null => 0,
                other => other.to_string().len() as u64,
            };
            // The template's call markers and the call id.
            m.fixed_tokens += TOKENS_PER_MESSAGE;
        }
    }
    m
}

fn measure_content(content: &Value) -> Measure {
    let mut m = Measure::default();
    match content {
        Value::String(s) => m.text_bytes += s.len() as u64,
        Value::Array(parts) => {
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        m.text_bytes += part["text"].as_str().map_or(0, str::len) as u64
                    }
                    Some("image_url" | "image" | "input_image") => {
                        m.fixed_tokens += TOKENS_PER_IMAGE
                    }
                    // Audio, files and unknown parts: their JSON is a fair upper bound.
                    _ => m.text_bytes += part.to_string().len() as u64,
                }
            }
        }
        Value::Null => {}
        other => m.text_bytes += other.to_string().len() as u64,
    }
    m
}

/// The request's tool declarations: templates render the schemas into the prompt.
pub fn measure_tools(body: &serde_json::Map<String, Value>) -> Measure {
    let mut m = Measure::default();
    for key in ["tools", "functions"] {
        if let Some(Value::Array(tools)) = body.get(key) {
            for tool in tools {
                m.text_bytes += tool.to_string().len() as u64;
                m.fixed_tokens += TOKENS_PER_MESSAGE;
            }
        }
    }
    m
}

/// The whole prompt: every message, the tools, and the reply's priming.
pub fn measure_request(body: &serde_json::Map<String, Value>) -> Measure {
    let mut m = measure_tools(body);
    m.fixed_tokens += TOKENS_PER_REQUEST;
    if let Some(Value::Array(messages)) = body.get("messages") {
        for message in messages {
            m.add(measure_message(message));
        }
    }
    m
}

/// The bytes-per-token ratio that makes `measure` come to `tokens`, if that is plausible.
pub fn ratio_from(measure: Measure, tokens: u64) -> Option<f64> {
    let text_tokens = tokens.checked_sub(measure.fixed_tokens)?;
    if text_tokens == 0 || measure.text_bytes == 0 {
        return None;
    }
    let ratio = measure.text_bytes as f64 / text_tokens as f64;
    // Real tokenizers land between about 1 (CJK, emoji, base64) and 5 (English with a large
    // vocabulary) bytes a token. A higher figure is a backend reporting only the part of the
    // prompt it did not find in its cache (Ollama does): learning from it would make the
    // estimate too low, which is the dangerous direction, so it is ignored.
    (MIN_BYTES_PER_TOKEN..=MAX_BYTES_PER_TOKEN)
        .contains(&ratio)
        .then_some(ratio)
}

/// Bytes per token learned from replies, per backend and model. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Calibration {
    ratios: Arc<Mutex<HashMap<String, Totals>>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    bytes: f64,
    tokens: f64,
}

impl Calibration {
    fn key(backend: &str, model: &str) -> String {
        format!("{backend}\n{model}")
    }

    /// The ratio to use for this backend and model: learned, or the default.
    pub fn bytes_per_token(&self, backend: &str, model: &str) -> f64 {
        let ratios = self.ratios.lock().unwrap_or_else(|e| e.into_inner());
        ratios
            .get(&Self::key(backend, model))
            .filter(|t| t.tokens > 0.0 && t.bytes > 0.0)
            .map_or(DEFAULT_BYTES_PER_TOKEN, |t| t.bytes / t.tokens)
    }

    /// Learns from one reply: the prompt as measured and the backend's own token count.
    /// Returns the new ratio, or `None` when the reply says too little to learn from.
    pub fn observe(
        &self,
        backend: &str,
        model: &str,
        measure: Measure,
        prompt_tokens: u64,
    ) -> Option<f64> {
        let text_tokens = prompt_tokens.checked_sub(measure.fixed_tokens)?;
        if text_tokens < MIN_CALIBRATION_TOKENS {
            return None;
        }
        ratio_from(measure, prompt_tokens)?;
        let mut ratios = self.ratios.lock().unwrap_or_else(|e| e.into_inner());
        let t = ratios.entry(Self::key(backend, model)).or_default();
        t.bytes += measure.text_bytes as f64;
        t.tokens += text_tokens as f64;
        while t.tokens > CALIBRATION_WINDOW_TOKENS {
            t.bytes /= 2.0;
            t.tokens /= 2.0;
        }
        Some(t.bytes / t.tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_tool_calls_tools_and_images_all_count() {
        let body = json!({
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:..."}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
        });
        let m = measure_request(body.as_object().unwrap());
        let tools =
            json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}})
                .to_string()
                .len() as u64;
        // user+look, assistant+f+args, tool+c1+ok, and the tool schema.
        let text = 4 + 4 + 9 + 1 + 7 + 4 + 2 + 2 + tools;
        assert_eq!(m.text_bytes, text);
        assert_eq!(
            m.fixed_tokens,
            TOKENS_PER_REQUEST + 3 * TOKENS_PER_MESSAGE + TOKENS_PER_MESSAGE // the call
                + TOKENS_PER_IMAGE + TOKENS_PER_MESSAGE // the tool
        );
    }

    #[test]
    fn calibration_learns_the_backends_ratio_per_model() {
        let c = Calibration::default();
        assert_eq!(c.bytes_per_token("b", "m"), DEFAULT_BYTES_PER_TOKEN);
        let m = Measure {
            text_bytes: 30_000,
            fixed_tokens: 100,
        };
        // 30 000 bytes were 10 000 tokens: 3 bytes per token.
        assert_eq!(c.observe("b", "m", m, 10_100), Some(3.0));
        assert_eq!(c.bytes_per_token("b", "m"), 3.0);
        assert_eq!(c.bytes_per_token("b", "other"), DEFAULT_BYTES_PER_TOKEN);
        assert_eq!(m.tokens(3.0), 10_100);
        // Too small to learn from, or impossible counts, change nothing; nor does a count of
        // only the uncached part of a prompt (30 000 bytes as 1 000 tokens).
        assert_eq!(c.observe("b", "m", m, 110), None);
        assert_eq!(c.observe("b", "m", m, 50), None);
        assert_eq!(c.observe("b", "m", m, 1_000_000), None);
        assert_eq!(c.observe("b", "m", m, 1_100), None);
        assert_eq!(c.bytes_per_token("b", "m"), 3.0);
    }

    #[test]
    fn old_replies_fade() {
        let c = Calibration::default();
        let m = |b| Measure {
            text_bytes: b,
            fixed_tokens: 0,
        };
        for _ in 0..10 {
            c.observe("b", "m", m(4_000_000), 1_000_000);
        }
        for _ in 0..10 {
            c.observe("b", "m", m(2_000_000), 1_000_000);
        }
        let r = c.bytes_per_token("b", "m");
        assert!(r < 2.1, "recent replies dominate: {r}");
    }
}
