//! An Anthropic Messages request body → the core's request (an OpenAI Chat Completions body).
//!
//! Pure functions over JSON: no I/O, no panics on any input (a property test feeds arbitrary
//! JSON). Unknown fields and unknown block types are ignored, never refused: Claude Code adds
//! new ones with every release (`context_management`, `output_config`, …).

use crate::error::ProxyError;
use serde_json::{Map, Value, json};

/// Claude Code's per-conversation attribution line. Forwarded, it changes the first bytes of
/// every prompt and so defeats the backend's prefix (KV) cache: a full re-prefill every turn.
pub const BILLING_HEADER: &str = "x-anthropic-billing-header:";

/// What the request is for: `count_tokens` takes the same body without `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Create,
    Count,
}

/// A converted request.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The OpenAI Chat Completions body the core forwards.
    pub body: Map<String, Value>,
    /// The model name the client asked for; the reply echoes it.
    pub model: String,
    /// `stop_sequences`, matched by the core itself (see `pipeline/stop.rs` for why not by the
    /// backend).
    pub stop_sequences: Vec<String>,
    /// System texts removed because they were Claude Code's billing header.
    pub billing_headers_removed: u64,
}

fn invalid(code: &'static str, param: &str, message: String) -> ProxyError {
    ProxyError::client(code, message).with_param(param)
}

/// Converts a Messages body. Errors name the field and how to fix it.
pub fn convert(body: &Map<String, Value>, purpose: Purpose) -> Result<Converted, ProxyError> {
    let model = match body.get("model") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(invalid(
                "invalid_model",
                "model",
                "\"model\" must be a string naming the model your backend serves, e.g. \"qwen3-coder\"".into(),
            ));
        }
    };
    let max_tokens = match (body.get("max_tokens"), purpose) {
        (Some(v), _) if v.as_u64().is_some_and(|n| n >= 1) => v.as_u64(),
        (None | Some(Value::Null), Purpose::Count) => None,
        (None | Some(Value::Null), Purpose::Create) => {
            return Err(invalid(
                "missing_max_tokens",
                "max_tokens",
                "the request has no \"max_tokens\": the Messages API requires it; send a positive integer, e.g. \"max_tokens\": 4096".into(),
            ));
        }
        (Some(v), _) => {
            return Err(invalid(
                "invalid_max_tokens",
                "max_tokens",
                format!(
                    "\"max_tokens\" must be a positive integer, got {}",
                    brief(v)
                ),
            ));
        }
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(invalid(
                "invalid_stream",
                "stream",
                format!("\"stream\" must be true or false, got {}", brief(v)),
            ));
        }
    };
    let Some(Value::Array(messages)) = body.get("messages") else {
        let message = if body.contains_key("messages") {
            "\"messages\" must be an array of {\"role\": \"user\"|\"assistant\", \"content\": …} objects"
        } else {
            "the request has no \"messages\": send an array of {\"role\": \"user\", \"content\": \"…\"} objects"
        };
        return Err(invalid("invalid_messages", "messages", message.into()));
    };

    let mut system = SystemText::default();
    system.add_field(body.get("system"))?;
    let mut out = Vec::with_capacity(messages.len() + 1);
    for (i, m) in messages.iter().enumerate() {
        convert_message(i, m, &mut system, &mut out)?;
    }
    let mut chat = Map::new();
    if !model.is_empty() {
        chat.insert("model".into(), Value::String(model.clone()));
    }
    let mut all = Vec::with_capacity(out.len() + 1);
    if !system.parts.is_empty() {
        all.push(json!({"role": "system", "content": system.parts.join("\n\n")}));
    }
    all.extend(out);
    chat.insert("messages".into(), Value::Array(all));
    if let Some(n) = max_tokens {
        chat.insert("max_tokens".into(), n.into());
    }
    for key in ["temperature", "top_p", "top_k"] {
        if let Some(v) = body.get(key).filter(|v| v.is_number()) {
            chat.insert(key.into(), v.clone());
        }
    }
    convert_tools(body, &mut chat)?;
    if stream {
        chat.insert("stream".into(), Value::Bool(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Converted {
        body: chat,
        model,
        stop_sequences: stop_sequences(body.get("stop_sequences"))?,
        billing_headers_removed: system.removed,
    })
}

fn stop_sequences(v: Option<&Value>) -> Result<Vec<String>, ProxyError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| match s {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                other => Err(invalid(
                    "invalid_stop_sequences",
                    "stop_sequences",
                    format!(
                        "each of \"stop_sequences\" must be a non-empty string, got {}",
                        brief(other)
                    ),
                )),
            })
            .collect(),
        Some(other) => Err(invalid(
            "invalid_stop_sequences",
            "stop_sequences",
            format!(
                "\"stop_sequences\" must be an array of strings, got {}",
                brief(other)
            ),
        )),
    }
}

/// The leading system message being assembled: `system`, then every `role: "system"` message
/// found among `messages`, in order (chat templates want one, first).
#[derive(Default)]
struct SystemText {
    parts: Vec<String>,
    removed: u64,
}

impl SystemText {
    fn push(&mut self, text: &str) {
        match strip_billing_header(text) {
            Some(rest) => {
                self.removed += 1;
                if !rest.trim().is_empty() {
                    self.parts.push(rest.to_owned());
                }
            }
            None if text.is_empty() => {}
            None => self.parts.push(text.to_owned()),
        }
    }

    fn add_field(&mut self, system: Option<&Value>) -> Result<(), ProxyError> {
        match system {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(s)) => {
                self.push(s);
                Ok(())
            }
            Some(Value::Array(blocks)) => {
                for b in blocks {
                    match block_text(b) {
                        Some(t) => self.push(t),
                        None => {
                            return Err(invalid(
                                "invalid_system",
                                "system",
                                format!(
                                    "each block of \"system\" must be {{\"type\": \"text\", \"text\": \"…\"}}, got {}",
                                    brief(b)
                                ),
                            ));
                        }
                    }
                }
                Ok(())
            }
            Some(other) => Err(invalid(
                "invalid_system",
                "system",
                format!(
                    "\"system\" must be a string or an array of text blocks, got {}",
                    brief(other)
                ),
            )),
        }
    }
}

/// The text after Claude Code's billing-header line, if `text` starts with one (a text that
/// is only the header gives `Some("")`).
pub fn strip_billing_header(text: &str) -> Option<&str> {
    let t = text.trim_start();
    if !t.starts_with(BILLING_HEADER) {
        return None;
    }
    Some(t.split_once('\n').map_or("", |(_, rest)| rest))
}

fn block_text(b: &Value) -> Option<&str> {
    if b.get("type").and_then(Value::as_str) == Some("text") {
        b.get("text").and_then(Value::as_str)
    } else {
        None
    }
}

fn convert_message(
    i: usize,
    m: &Value,
    system: &mut SystemText,
    out: &mut Vec<Value>,
) -> Result<(), ProxyError> {
    let param = format!("messages[{i}]");
    let Some(m) = m.as_object() else {
        return Err(invalid(
            "invalid_message",
            &param,
            format!(
                "{param} must be an object with \"role\" and \"content\", got {}",
                brief(m)
            ),
        ));
    };
    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
    let content = m.get("content").unwrap_or(&Value::Null);
    // Borrowed: a conversation's history (images, file-sized tool results) is not copied.
    let one;
    let blocks: &[Value] = match content {
        Value::String(s) => {
            one = [json!({"type": "text", "text": s})];
            &one
        }
        Value::Array(a) => a,
        other => {
            return Err(invalid(
                "invalid_content",
                &format!("{param}.content"),
                format!(
                    "{param}.content must be a string or an array of content blocks, got {}",
                    brief(other)
                ),
            ));
        }
    };
    match role {
        "user" => user_turn(blocks, out),
        "assistant" => assistant_turn(blocks, out),
        // Claude Code puts one after the first user turn; it joins the leading system message.
        "system" => {
            for b in blocks {
                if let Some(t) = block_text(b) {
                    system.push(t);
                }
            }
        }
        other => {
            return Err(invalid(
                "invalid_role",
                &format!("{param}.role"),
                format!("{param}.role must be \"user\" or \"assistant\", got {other:?}"),
            ));
        }
    }
    Ok(())
}

/// A user turn: its tool results become `role: "tool"` messages first (the calls they answer
/// come right before), then the rest of the turn one user message.
fn user_turn(blocks: &[Value], out: &mut Vec<Value>) {
    let mut parts = Parts::default();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("tool_result") => {
                let id = b.get("tool_use_id").and_then(Value::as_str).unwrap_or("");
                let mut text = String::new();
                match b.get("content") {
                    Some(Value::String(s)) => text.push_str(s),
                    Some(Value::Array(inner)) => {
                        for c in inner {
                            if let Some(t) = block_text(c) {
                                if !text.is_empty() {
                                    text.push('\n');
                                }
                                text.push_str(t);
                            } else if let Some(image) = image_part(c) {
                                // Tool messages carry text only; the image follows in the
                                // turn's user message rather than being lost.
                                parts.items.push(image);
                            }
                        }
                    }
                    _ => {}
                }
                if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                    text = format!("Error: {text}");
                }
                out.push(json!({"role": "tool", "tool_call_id": call_id(id), "content": text}));
            }
            _ => parts.push_block(b),
        }
    }
    if let Some(content) = parts.into_content() {
        out.push(json!({"role": "user", "content": content}));
    }
}

/// An assistant turn: text, and `tool_use` blocks as `tool_calls`. Thinking is dropped: chat
/// templates drop earlier turns' reasoning anyway, and not every backend accepts the field.
fn assistant_turn(blocks: &[Value], out: &mut Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    text.push_str(t);
                }
            }
            Some("tool_use") => {
                let id = b.get("id").and_then(Value::as_str).unwrap_or("");
                let name = b.get("name").and_then(Value::as_str).unwrap_or("");
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": call_id(id),
                    "type": "function",
                    "function": {"name": name, "arguments": input.to_string()},
                }));
            }
            _ => {}
        }
    }
    if text.is_empty() && calls.is_empty() {
        return;
    }
    let mut m = Map::new();
    m.insert("role".into(), "assistant".into());
    m.insert("content".into(), Value::String(text));
    if !calls.is_empty() {
        m.insert("tool_calls".into(), Value::Array(calls));
    }
    out.push(Value::Object(m));
}

/// User content parts: a plain string while they are all text (what every chat template
/// takes), OpenAI parts once an image is among them.
#[derive(Default)]
struct Parts {
    items: Vec<Value>,
}

impl Parts {
    fn push_block(&mut self, b: &Value) {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    self.items.push(json!({"type": "text", "text": t}));
                }
            }
            Some("image") => {
                if let Some(p) = image_part(b) {
                    self.items.push(p);
                }
            }
            // A plain-text document is text; other documents (PDF) have nothing a chat
            // backend can read.
            Some("document") => {
                if b.pointer("/source/type").and_then(Value::as_str) == Some("text")
                    && let Some(t) = b.pointer("/source/data").and_then(Value::as_str)
                {
                    self.items.push(json!({"type": "text", "text": t}));
                }
            }
            _ => {}
        }
    }

    fn into_content(self) -> Option<Value> {
        if self.items.is_empty() {
            return None;
        }
        if self.items.iter().all(|p| p["type"] == "text") {
            let texts: Vec<&str> = self
                .items
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect();
            return Some(Value::String(texts.join("\n")));
        }
        Some(Value::Array(self.items))
    }
}

fn image_part(b: &Value) -> Option<Value> {
    if b.get("type").and_then(Value::as_str) != Some("image") {
        return None;
    }
    let source = b.get("source")?;
    let url = match source.get("type").and_then(Value::as_str)? {
        "base64" => format!(
            "data:{};base64,{}",
            source.get("media_type").and_then(Value::as_str)?,
            source.get("data").and_then(Value::as_str)?
        ),
        "url" => source.get("url").and_then(Value::as_str)?.to_owned(),
        _ => return None,
    };
    Some(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// `tools`, `tool_choice` and `disable_parallel_tool_use` in OpenAI form. Server tools (typed,
/// without an `input_schema`: web search, code execution, …) have no function form and are
/// dropped; `cache_control` and `defer_loading` are not copied.
fn convert_tools(
    body: &Map<String, Value>,
    chat: &mut Map<String, Value>,
) -> Result<(), ProxyError> {
    let tools: Vec<Value> = match body.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools.iter().filter_map(function_tool).collect(),
        Some(other) => {
            return Err(invalid(
                "invalid_tools",
                "tools",
                format!(
                    "\"tools\" must be an array of {{\"name\", \"description\", \"input_schema\"}} objects, got {}",
                    brief(other)
                ),
            ));
        }
    };
    // Title requests carry `tools: []`; some backends answer 400 to a tool_choice without tools.
    if tools.is_empty() {
        return Ok(());
    }
    chat.insert("tools".into(), Value::Array(tools));
    let Some(choice) = body.get("tool_choice").filter(|c| !c.is_null()) else {
        return Ok(());
    };
    let kind = choice.get("type").and_then(Value::as_str).unwrap_or("");
    let mapped = match kind {
        "auto" => json!("auto"),
        "any" => json!("required"),
        "none" => json!("none"),
        "tool" => match choice.get("name").and_then(Value::as_str) {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => {
                return Err(invalid(
                    "invalid_tool_choice",
                    "tool_choice",
                    "\"tool_choice\" of type \"tool\" needs the tool's \"name\"".into(),
                ));
            }
        },
        _ => {
            return Err(invalid(
                "invalid_tool_choice",
                "tool_choice",
                format!(
                    "\"tool_choice\" must be {{\"type\": \"auto\"|\"any\"|\"tool\"|\"none\"}}, got {}",
                    brief(choice)
                ),
            ));
        }
    };
    chat.insert("tool_choice".into(), mapped);
    if choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        == Some(true)
    {
        chat.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
    Ok(())
}

fn function_tool(t: &Value) -> Option<Value> {
    let name = t.get("name").and_then(Value::as_str)?;
    let kind = t.get("type").and_then(Value::as_str);
    let schema = t.get("input_schema");
    if !matches!(kind, None | Some("custom")) && schema.is_none() {
        return None;
    }
    let mut f = Map::new();
    f.insert("name".into(), name.into());
    if let Some(d) = t.get("description").and_then(Value::as_str) {
        f.insert("description".into(), d.into());
    }
    f.insert(
        "parameters".into(),
        schema
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    );
    Some(json!({"type": "function", "function": f}))
}

/// The id a tool call has in the OpenAI history: `toolu_X` ↔ `call_X`, so the id the core gave
/// a call comes back as itself. Any other id is kept as it is (it is only matched against
/// itself: a `tool_use` and the `tool_result` that answers it map alike).
pub fn call_id(tool_use_id: &str) -> String {
    match tool_use_id.strip_prefix("toolu_") {
        Some(rest) => format!("call_{rest}"),
        None => tool_use_id.to_owned(),
    }
}

/// The Messages id of a core tool call id (the inverse of [`call_id`]).
pub fn tool_use_id(call_id: &str) -> String {
    match call_id.strip_prefix("call_") {
        Some(rest) => format!("toolu_{rest}"),
        None => format!("toolu_{call_id}"),
    }
}

/// A short rendering of a value for an error message.
fn brief(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= 60 {
        return s;
    }
    let cut: String = s.chars().take(57).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn conv(v: Value) -> Converted {
        convert(v.as_object().unwrap(), Purpose::Create).unwrap()
    }

    fn err(v: Value) -> ProxyError {
        convert(v.as_object().unwrap(), Purpose::Create).unwrap_err()
    }

    #[test]
    fn system_blocks_and_mid_history_system_messages_merge_first_without_billing_header() {
        let c = conv(json!({
            "model": "claude-sonnet-4-5", "max_tokens": 100,
            "system": [
                {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332.9a2; cc_entrypoint=sdk-cli;"},
                {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}
            ],
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "system", "content": "# Environment"},
                {"role": "system", "content": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=9"}]},
            ],
            "context_management": {"edits": []}, "output_config": {"effort": "high"},
            "metadata": {"user_id": "u"}, "thinking": {"type": "adaptive", "display": "updates"}
        }));
        assert_eq!(c.billing_headers_removed, 2);
        assert_eq!(
            Value::Object(c.body.clone()),
            json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [
                {"role": "system", "content": "You are Claude Code.\n\n# Environment"},
                {"role": "user", "content": "hi"}
            ]})
        );
    }

    #[test]
    fn bodies_differing_only_in_the_billing_header_convert_identically() {
        let body = |v: &str| {
            json!({"model": "m", "max_tokens": 5, "system": [
                {"type": "text", "text": format!("x-anthropic-billing-header: cc_version={v}; cc_entrypoint=cli;")},
                {"type": "text", "text": "S"}], "messages": [{"role": "user", "content": "q"}]})
        };
        let a = serde_json::to_vec(&conv(body("2.1.1.aaa")).body).unwrap();
        let b = serde_json::to_vec(&conv(body("2.1.2.bbb")).body).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn billing_header_detection() {
        assert_eq!(
            strip_billing_header("x-anthropic-billing-header: a"),
            Some("")
        );
        assert_eq!(
            strip_billing_header("  x-anthropic-billing-header: a\nrest"),
            Some("rest")
        );
        assert_eq!(
            strip_billing_header("You are x-anthropic-billing-header:"),
            None
        );
    }

    #[test]
    fn tool_loop_history_converts_with_ids_that_match() {
        let c = conv(json!({
            "model": "m", "max_tokens": 50,
            "messages": [
                {"role": "user", "content": "run it"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "redacted_thinking", "data": "x"},
                    {"type": "text", "text": "Running."},
                    {"type": "tool_use", "id": "toolu_01abc", "name": "Bash", "input": {"command": "echo hi"}}
                ]},
                {"role": "user", "content": [
                    {"type": "text", "text": "and then?"},
                    {"type": "tool_result", "tool_use_id": "toolu_01abc", "content": "hi", "is_error": false, "cache_control": {"type": "ephemeral"}},
                    {"type": "tool_result", "tool_use_id": "other-id", "content": [{"type": "text", "text": "boom"}], "is_error": true}
                ]}
            ]
        }));
        assert_eq!(
            c.body["messages"],
            json!([
                {"role": "user", "content": "run it"},
                {"role": "assistant", "content": "Running.", "tool_calls": [
                    {"id": "call_01abc", "type": "function", "function": {"name": "Bash", "arguments": "{\"command\":\"echo hi\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_01abc", "content": "hi"},
                {"role": "tool", "tool_call_id": "other-id", "content": "Error: boom"},
                {"role": "user", "content": "and then?"}
            ])
        );
        assert_eq!(tool_use_id(&call_id("toolu_01abc")), "toolu_01abc");
        assert_eq!(tool_use_id("call_XYZ"), "toolu_XYZ");
        assert_eq!(call_id(&tool_use_id("call_XYZ")), "call_XYZ");
    }

    #[test]
    fn images_become_image_urls() {
        let c = conv(
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is it?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
            ]}]}),
        );
        assert_eq!(
            c.body["messages"][0]["content"],
            json!([
                {"type": "text", "text": "what is it?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
            ])
        );
    }

    #[test]
    fn tools_and_tool_choice_map() {
        let c = conv(json!({
            "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
            "tools": [
                {"name": "Bash", "description": "run", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}, "cache_control": {"type": "ephemeral"}},
                {"name": "Later", "input_schema": {"type": "object"}, "defer_loading": true},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
            ],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"], "temperature": 0.2, "top_p": 0.9, "top_k": 40, "stream": true
        }));
        assert_eq!(
            Value::Object(c.body),
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                "tools": [
                    {"type": "function", "function": {"name": "Bash", "description": "run", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}},
                    {"type": "function", "function": {"name": "Later", "parameters": {"type": "object"}}}
                ],
                "tool_choice": "required", "parallel_tool_calls": false,
                "temperature": 0.2, "top_p": 0.9, "top_k": 40,
                "stream": true, "stream_options": {"include_usage": true}})
        );
        assert_eq!(c.stop_sequences, vec!["END".to_owned()]);
        for (choice, want) in [
            (json!({"type": "auto"}), json!("auto")),
            (json!({"type": "none"}), json!("none")),
            (
                json!({"type": "tool", "name": "Bash"}),
                json!({"type": "function", "function": {"name": "Bash"}}),
            ),
        ] {
            let c = conv(
                json!({"max_tokens": 5, "messages": [], "tools": [{"name": "Bash", "input_schema": {}}], "tool_choice": choice}),
            );
            assert_eq!(c.body["tool_choice"], want);
        }
    }

    #[test]
    fn empty_tools_send_no_tool_choice() {
        let c = conv(
            json!({"model": "m", "max_tokens": 5, "messages": [], "tools": [], "tool_choice": {"type": "auto"}}),
        );
        assert!(!c.body.contains_key("tools"));
        assert!(!c.body.contains_key("tool_choice"));
    }

    #[test]
    fn bad_bodies_are_named() {
        for (body, param, needle) in [
            (
                json!({"model": "m", "messages": []}),
                "max_tokens",
                "no \"max_tokens\"",
            ),
            (
                json!({"model": "m", "max_tokens": 0, "messages": []}),
                "max_tokens",
                "positive integer",
            ),
            (
                json!({"model": "m", "max_tokens": 5}),
                "messages",
                "no \"messages\"",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": {}}),
                "messages",
                "must be an array",
            ),
            (
                json!({"model": 5, "max_tokens": 5, "messages": []}),
                "model",
                "must be a string",
            ),
            (
                json!({"max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].role",
                "\"user\" or \"assistant\"",
            ),
            (
                json!({"max_tokens": 5, "messages": [{"role": "user", "content": 3}]}),
                "messages[0].content",
                "string or an array",
            ),
            (
                json!({"max_tokens": 5, "messages": [], "stream": "yes"}),
                "stream",
                "true or false",
            ),
            (
                json!({"max_tokens": 5, "messages": [], "system": [{"type": "image"}]}),
                "system",
                "text",
            ),
            (
                json!({"max_tokens": 5, "messages": [], "stop_sequences": "END"}),
                "stop_sequences",
                "array",
            ),
        ] {
            let e = err(body.clone());
            assert_eq!(e.status.as_u16(), 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    #[test]
    fn count_needs_no_max_tokens() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let c = convert(body.as_object().unwrap(), Purpose::Count).unwrap();
        assert!(!c.body.contains_key("max_tokens"));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            prop::sample::select(vec![
                "user",
                "assistant",
                "system",
                "text",
                "tool_use",
                "tool_result",
                "image",
                "base64",
                "url",
                "thinking",
                "auto",
                "any",
                "tool",
                "none",
                "toolu_1",
                "x-anthropic-billing-header: v",
                "document",
            ])
            .prop_map(|s| Value::String(s.into())),
            ".*".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop::sample::select(vec![
                            "role",
                            "content",
                            "type",
                            "text",
                            "id",
                            "name",
                            "input",
                            "tool_use_id",
                            "is_error",
                            "source",
                            "media_type",
                            "data",
                            "url",
                            "messages",
                            "system",
                            "tools",
                            "tool_choice",
                            "input_schema",
                            "max_tokens",
                            "stream",
                            "stop_sequences",
                            "model",
                        ]),
                        inner
                    ),
                    0..6
                )
                .prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        /// Any JSON object converts or is refused with a 400; nothing panics.
        #[test]
        fn converter_never_panics(body in arb_json(), count in any::<bool>()) {
            let mut map = match body { Value::Object(m) => m, other => {
                let mut m = Map::new(); m.insert("messages".into(), other); m
            }};
            map.entry("max_tokens").or_insert(json!(16));
            let purpose = if count { Purpose::Count } else { Purpose::Create };
            match convert(&map, purpose) {
                Ok(c) => prop_assert!(c.body["messages"].is_array()),
                Err(e) => prop_assert_eq!(e.status.as_u16(), 400),
            }
        }
    }
}
