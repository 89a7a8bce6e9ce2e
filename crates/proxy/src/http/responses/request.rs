//! A Responses request in, an OpenAI Chat Completions body out (what every backend speaks).
//!
//! Input items become chat messages; `instructions` and every `system`/`developer` message become
//! one leading system message (Codex sends its prompt as `developer` messages, and chat templates
//! want the system text first). Tools the backend cannot run are dropped, never refused: a 400
//! for a hosted tool is the most common way a local server breaks Codex.

use crate::error::ProxyError as ApiError;
use crate::pipeline::conversations::Conversation;
use crate::pipeline::ids::{item_id, next_seed};
use serde_json::{Map, Value, json};
use std::{collections::HashSet, sync::Arc};

/// What the handler needs from a client's body, beyond the chat body itself.
#[derive(Debug)]
pub struct Converted {
    /// The core's request: an OpenAI chat body.
    pub chat: Map<String, Value>,
    /// The conversation without `instructions` (chat messages, system text in place), kept for a
    /// later `previous_response_id`: the stored history plus this request's input.
    pub conversation: Conversation,
    /// Names of the client's freeform (`custom`) tools: their calls go back as `custom_tool_call`.
    pub custom_tools: Arc<HashSet<String>>,
    /// The model name the client asked for (echoed in every reply).
    pub model: String,
    /// The client's own fields that a response object repeats (`instructions`, `tools`, …).
    pub echo: Map<String, Value>,
    /// `store` is not `false`: keep this response for a later `previous_response_id`.
    pub store: bool,
}

/// Fields a response object repeats from the request, as the client sent them.
const ECHOED: &[&str] = &[
    "instructions",
    "max_output_tokens",
    "parallel_tool_calls",
    "previous_response_id",
    "reasoning",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "truncation",
    "user",
    "metadata",
];

fn bad(code: &'static str, param: &str, message: impl Into<String>) -> ApiError {
    ApiError::client(code, message).with_param(param)
}

/// Checks the parts of the body every request needs: an object with `input`, `stream` a boolean.
pub fn validate(body: &Map<String, Value>) -> Result<(), ApiError> {
    match body.get("input") {
        None | Some(Value::Null) => {
            return Err(bad(
                "missing_input",
                "input",
                "the request has no \"input\": send a string or an array of input items (messages, function_call_output, …)",
            ));
        }
        Some(Value::String(_) | Value::Array(_)) => {}
        Some(_) => {
            return Err(bad(
                "invalid_input",
                "input",
                "\"input\" must be a string or an array of input items",
            ));
        }
    }
    if let Some(stream) = body.get("stream")
        && !stream.is_boolean()
        && !stream.is_null()
    {
        return Err(bad(
            "invalid_stream",
            "stream",
            "\"stream\" must be true or false",
        ));
    }
    if let Some(id) = body.get("previous_response_id")
        && !id.is_string()
        && !id.is_null()
    {
        return Err(bad(
            "invalid_previous_response_id",
            "previous_response_id",
            "\"previous_response_id\" must be the id (resp_…) of an earlier response",
        ));
    }
    Ok(())
}

/// The request's input as Responses items, for `GET /v1/responses/{id}/input_items`: as the
/// client sent them, in the full form OpenAI lists (a string is one user message; a message
/// without `type` gets it, and string content becomes one text part), each with an `id`.
pub fn input_items(body: &Map<String, Value>) -> Vec<Value> {
    let items = match body.get("input") {
        Some(Value::String(text)) => {
            vec![json!({"type": "message", "role": "user", "content": text})]
        }
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    };
    items.into_iter().map(full_item).collect()
}

fn full_item(mut item: Value) -> Value {
    let Some(obj) = item.as_object_mut() else {
        return item;
    };
    if !obj.contains_key("type") && obj.contains_key("role") {
        obj.insert("type".into(), "message".into());
    }
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or_default();
    let prefix = match kind {
        "message" => "msg",
        "function_call" => "fc",
        "function_call_output" => "fco",
        "custom_tool_call" => "ctc",
        "custom_tool_call_output" => "ctco",
        "reasoning" => "rs",
        _ => "item",
    };
    if kind == "message" {
        let part = if obj.get("role").and_then(Value::as_str) == Some("assistant") {
            "output_text"
        } else {
            "input_text"
        };
        if let Some(Value::String(text)) = obj.get("content") {
            let parts = json!([{"type": part, "text": text}]);
            obj.insert("content".into(), parts);
        }
        obj.entry("status").or_insert("completed".into());
    }
    if !obj.get("id").is_some_and(Value::is_string) {
        obj.insert("id".into(), item_id(prefix, next_seed()).into());
    }
    item
}

/// Converts a validated body. `history` is the stored conversation `previous_response_id` named.
pub fn convert(body: &Map<String, Value>, history: Conversation) -> Result<Converted, ApiError> {
    let mut messages: Vec<Value> = Vec::new();
    match body.get("input") {
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                push_item(&mut messages, item, i)?;
            }
        }
        _ => {}
    }
    let (tools, custom_tools) = convert_tools(body.get("tools"));
    let mut conversation = history;
    conversation.push(Arc::from(messages));

    let mut chat = Map::new();
    if let Some(model) = body.get("model") {
        chat.insert("model".into(), model.clone());
    }
    chat.insert(
        "messages".into(),
        Value::Array(chat_messages(body.get("instructions"), &conversation)),
    );
    let has_tools = !tools.is_empty();
    if has_tools {
        chat.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = body.get("tool_choice").and_then(tool_choice) {
            chat.insert("tool_choice".into(), choice);
        }
        if let Some(p) = body.get("parallel_tool_calls").filter(|v| v.is_boolean()) {
            chat.insert("parallel_tool_calls".into(), p.clone());
        }
    }
    if let Some(n) = body.get("max_output_tokens").filter(|v| v.is_u64()) {
        chat.insert("max_tokens".into(), n.clone());
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = body.get(key).filter(|v| v.is_number()) {
            chat.insert(key.into(), v.clone());
        }
    }
    if let Some(format) = body
        .get("text")
        .and_then(|t| t.get("format"))
        .and_then(response_format)
    {
        chat.insert("response_format".into(), format);
    }
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    chat.insert("stream".into(), Value::Bool(stream));

    let echo = ECHOED
        .iter()
        .filter_map(|k| body.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect();
    Ok(Converted {
        chat,
        conversation,
        custom_tools: Arc::new(custom_tools),
        model: body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        echo,
        store: body.get("store").and_then(Value::as_bool) != Some(false),
    })
}

/// The chat messages: one leading system message (instructions, then every system/developer
/// text in order), then the rest of the conversation in order.
fn chat_messages(instructions: Option<&Value>, conversation: &Conversation) -> Vec<Value> {
    let mut system: Vec<String> = Vec::new();
    if let Some(text) = instructions.and_then(Value::as_str)
        && !text.is_empty()
    {
        system.push(text.to_owned());
    }
    let mut rest = Vec::new();
    for m in conversation.iter().flat_map(|seg| seg.iter()) {
        if m.get("role").and_then(Value::as_str) == Some("system") {
            if let Some(text) = m.get("content").and_then(Value::as_str)
                && !text.is_empty()
            {
                system.push(text.to_owned());
            }
        } else {
            rest.push(m.clone());
        }
    }
    let mut out = Vec::with_capacity(rest.len() + 1);
    if !system.is_empty() {
        out.push(json!({"role": "system", "content": system.join("\n\n")}));
    }
    out.extend(rest);
    out
}

/// Appends one input item's chat form. Unknown item types are skipped (a hosted tool's call
/// record, a compaction marker): the backend could do nothing with them.
fn push_item(messages: &mut Vec<Value>, item: &Value, i: usize) -> Result<(), ApiError> {
    let param = format!("input[{i}]");
    let Some(obj) = item.as_object() else {
        return Err(bad(
            "invalid_input",
            &param,
            format!("{param} must be an object such as {{\"role\": \"user\", \"content\": \"…\"}}"),
        ));
    };
    let kind = obj.get("type").and_then(Value::as_str);
    match kind {
        Some("message") => push_message(messages, obj, &param),
        // An item with a role and no type is a message (the "easy input message" form).
        None if obj.contains_key("role") => push_message(messages, obj, &param),
        None => Err(bad(
            "invalid_input",
            &param,
            format!(
                "{param} has neither \"type\" nor \"role\": send a message or another input item"
            ),
        )),
        Some("function_call") => {
            let call_id = str_field(obj, "call_id", &param)?;
            let name = str_field(obj, "name", &param)?;
            let arguments = match obj.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "{}".to_owned(),
                Some(other) => other.to_string(),
            };
            push_call(messages, call_id, name, arguments);
            Ok(())
        }
        Some("custom_tool_call") => {
            let call_id = str_field(obj, "call_id", &param)?;
            let name = str_field(obj, "name", &param)?;
            let input = obj.get("input").and_then(Value::as_str).unwrap_or_default();
            push_call(
                messages,
                call_id,
                name,
                json!({ "input": input }).to_string(),
            );
            Ok(())
        }
        Some("function_call_output" | "custom_tool_call_output") => {
            let call_id = str_field(obj, "call_id", &param)?;
            let content = match obj.get("output") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) => content_parts(parts, &format!("{param}.output"))?,
                Some(Value::Null) | None => Value::String(String::new()),
                Some(other) => Value::String(other.to_string()),
            };
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": content}));
            Ok(())
        }
        // Earlier reasoning is not sent back: chat templates drop it from history anyway, and it
        // would cost prompt tokens on every turn.
        Some("reasoning") => Ok(()),
        Some(other) => {
            tracing::debug!(item = other, "responses: input item type skipped");
            Ok(())
        }
    }
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str, param: &str) -> Result<&'a str, ApiError> {
    obj.get(key).and_then(Value::as_str).ok_or_else(|| {
        bad(
            "invalid_input",
            param,
            format!("{param} needs a string \"{key}\""),
        )
    })
}

/// A call joins the assistant message just before it (text, then calls, is one chat turn).
fn push_call(messages: &mut Vec<Value>, call_id: &str, name: &str, arguments: String) {
    let call = json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}});
    if let Some(last) = messages.last_mut()
        && last.get("role").and_then(Value::as_str) == Some("assistant")
        && let Some(obj) = last.as_object_mut()
    {
        match obj.get_mut("tool_calls") {
            Some(Value::Array(calls)) => calls.push(call),
            _ => {
                obj.insert("tool_calls".into(), Value::Array(vec![call]));
            }
        }
        return;
    }
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
}

fn push_message(
    messages: &mut Vec<Value>,
    obj: &Map<String, Value>,
    param: &str,
) -> Result<(), ApiError> {
    let role = match obj.get("role").and_then(Value::as_str) {
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some("system" | "developer") => "system",
        other => {
            return Err(bad(
                "invalid_input",
                param,
                format!(
                    "{param} has role {:?}: use user, assistant, system or developer",
                    other.unwrap_or("(none)")
                ),
            ));
        }
    };
    let content = match obj.get("content") {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) => content_parts(parts, &format!("{param}.content"))?,
        Some(Value::Null) | None => Value::String(String::new()),
        Some(_) => {
            return Err(bad(
                "invalid_input",
                param,
                format!("{param}.content must be a string or an array of content parts"),
            ));
        }
    };
    if role == "system" {
        // System text is hoisted to the front, so it must be plain text.
        let text = match content {
            Value::String(s) => s,
            other => text_of_parts(&other),
        };
        messages.push(json!({"role": "system", "content": text}));
        return Ok(());
    }
    if role == "assistant"
        && let Some(last) = messages.last_mut()
        && last.get("role").and_then(Value::as_str) == Some("assistant")
        && last.get("content").is_none_or(Value::is_null)
        && let Some(o) = last.as_object_mut()
    {
        // Text after a call of the same turn: one assistant message, as chat templates expect.
        o.insert("content".into(), content);
        return Ok(());
    }
    messages.push(json!({"role": role, "content": content}));
    Ok(())
}

/// Content parts: plain text when all are text (most backends accept only a string), else
/// chat parts with `image_url`.
fn content_parts(parts: &[Value], param: &str) -> Result<Value, ApiError> {
    let mut out: Vec<Value> = Vec::new();
    let mut has_image = false;
    for (j, part) in parts.iter().enumerate() {
        let p = format!("{param}[{j}]");
        let Some(o) = part.as_object() else {
            if let Some(s) = part.as_str() {
                out.push(json!({"type": "text", "text": s}));
            }
            continue;
        };
        match o.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text" | "summary_text" | "reasoning_text") => {
                let text = o.get("text").and_then(Value::as_str).unwrap_or_default();
                out.push(json!({"type": "text", "text": text}));
            }
            Some("refusal") => {
                let text = o.get("refusal").and_then(Value::as_str).unwrap_or_default();
                out.push(json!({"type": "text", "text": text}));
            }
            Some("input_image") => {
                let url = o
                    .get("image_url")
                    .and_then(|u| u.as_str().or_else(|| u.get("url").and_then(Value::as_str)));
                let Some(url) = url else {
                    return Err(bad(
                        "unsupported_image",
                        &p,
                        format!(
                            "{p}: only images given by \"image_url\" (an http(s) or data: URL) can reach a local backend; file_id needs OpenAI's file store"
                        ),
                    ));
                };
                let mut image = json!({"url": url});
                if let Some(d) = o.get("detail").filter(|d| d.is_string()) {
                    image["detail"] = d.clone();
                }
                out.push(json!({"type": "image_url", "image_url": image}));
                has_image = true;
            }
            Some("input_file") => {
                return Err(bad(
                    "unsupported_file",
                    &p,
                    format!(
                        "{p}: input_file parts cannot reach a local backend; send the file's text as an input_text part"
                    ),
                ));
            }
            _ => {}
        }
    }
    if has_image {
        Ok(Value::Array(out))
    } else {
        Ok(Value::String(text_of_parts(&Value::Array(out))))
    }
}

/// The text parts of chat content, one per line.
fn text_of_parts(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Chat tools from Responses tools: functions as they are, namespaces flattened, freeform
/// (`custom`) tools as a function with one string parameter `input`, the rest dropped.
fn convert_tools(tools: Option<&Value>) -> (Vec<Value>, HashSet<String>) {
    let mut out = Vec::new();
    let mut custom = HashSet::new();
    if let Some(Value::Array(tools)) = tools {
        for t in tools {
            add_tool(t, &mut out, &mut custom, 0);
        }
    }
    (out, custom)
}

fn add_tool(t: &Value, out: &mut Vec<Value>, custom: &mut HashSet<String>, depth: u8) {
    let Some(name) = t.get("name").and_then(Value::as_str) else {
        return;
    };
    match t.get("type").and_then(Value::as_str) {
        Some("function") => {
            // The chat form nested under "function" is accepted too.
            let f = t.get("function").filter(|f| f.is_object()).unwrap_or(t);
            let mut function = Map::new();
            function.insert("name".into(), name.into());
            if let Some(d) = f.get("description").filter(|d| d.is_string()) {
                function.insert("description".into(), d.clone());
            }
            let params = f
                .get("parameters")
                .filter(|p| p.is_object())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            function.insert("parameters".into(), params);
            out.push(json!({"type": "function", "function": function}));
        }
        Some("custom") => {
            let mut description = t
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if let Some(def) = t.pointer("/format/definition").and_then(Value::as_str) {
                // A grammar the backend cannot enforce; the model can still read it.
                description.push_str("\n\nThe input must follow this grammar:\n");
                description.push_str(def);
            }
            out.push(json!({"type": "function", "function": {
                "name": name,
                "description": description,
                "parameters": {"type": "object", "properties": {"input": {"type": "string", "description": "the tool's freeform input"}}, "required": ["input"]},
            }}));
            custom.insert(name.to_owned());
        }
        Some("namespace") if depth < 4 => {
            for inner in ["tools", "functions"]
                .iter()
                .filter_map(|k| t.get(*k).and_then(Value::as_array))
                .flatten()
            {
                add_tool(inner, out, custom, depth + 1);
            }
        }
        _ => {}
    }
}

/// `tool_choice` in chat form; `None` drops it (a form chat has no word for).
fn tool_choice(choice: &Value) -> Option<Value> {
    match choice {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => {
            Some(choice.clone())
        }
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("function" | "custom") => {
                let name = o
                    .get("name")
                    .or_else(|| o.get("function").and_then(|f| f.get("name")))
                    .and_then(Value::as_str)?;
                Some(json!({"type": "function", "function": {"name": name}}))
            }
            _ => None,
        },
        _ => None,
    }
}

/// `text.format` as chat's `response_format`.
fn response_format(format: &Value) -> Option<Value> {
    match format.get("type").and_then(Value::as_str)? {
        "json_object" => Some(json!({"type": "json_object"})),
        "json_schema" => {
            let mut schema = Map::new();
            for k in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(k) {
                    schema.insert(k.into(), v.clone());
                }
            }
            Some(json!({"type": "json_schema", "json_schema": schema}))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(body: Value) -> Converted {
        let body = body.as_object().unwrap().clone();
        validate(&body).unwrap();
        convert(&body, Conversation::default()).unwrap()
    }

    #[test]
    fn input_items_are_listed_in_full_form_with_ids() {
        let body = json!({"input": "hi"});
        let items = input_items(body.as_object().unwrap());
        assert_eq!(items.len(), 1);
        assert!(items[0]["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(items[0]["type"], "message");
        assert_eq!(items[0]["role"], "user");
        assert_eq!(
            items[0]["content"],
            json!([{"type": "input_text", "text": "hi"}])
        );
        let body = json!({"input": [
            {"role": "assistant", "content": "earlier"},
            {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
            {"type": "message", "id": "msg_mine", "role": "user", "content": [{"type": "input_text", "text": "q"}]},
        ]});
        let items = input_items(body.as_object().unwrap());
        assert_eq!(
            items[0]["content"],
            json!([{"type": "output_text", "text": "earlier"}])
        );
        assert!(items[1]["id"].as_str().unwrap().starts_with("fco_"));
        assert_eq!(items[1]["output"], "ok");
        assert_eq!(items[2]["id"], "msg_mine", "the client's own id is kept");
        assert_ne!(items[0]["id"], items[1]["id"]);
    }

    #[test]
    fn a_string_input_is_one_user_message() {
        let c = conv(json!({"model": "m", "input": "hi", "instructions": "be brief"}));
        assert_eq!(
            c.chat["messages"],
            json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
        );
        assert_eq!(c.chat["stream"], false);
        assert_eq!(c.model, "m");
        assert!(c.store);
    }

    #[test]
    fn developer_messages_lead_and_calls_pair_with_outputs() {
        let c = conv(json!({"model": "m", "store": false, "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "sys A"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}, {"type": "input_text", "text": "two"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "hmm"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Running."}]},
            {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": "{\"command\":[\"ls\"]}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
            {"role": "developer", "content": "sys B"},
            {"type": "custom_tool_call", "call_id": "call_2", "name": "apply_patch", "input": "*** Begin"},
            {"type": "custom_tool_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "done"}]},
        ]}));
        assert!(!c.store);
        assert_eq!(
            c.chat["messages"],
            json!([
                {"role": "system", "content": "sys A\n\nsys B"},
                {"role": "user", "content": "one\ntwo"},
                {"role": "assistant", "content": "Running.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "shell", "arguments": "{\"command\":[\"ls\"]}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_2", "type": "function", "function": {"name": "apply_patch", "arguments": "{\"input\":\"*** Begin\"}"}}]},
                {"role": "tool", "tool_call_id": "call_2", "content": "done"},
            ])
        );
    }

    #[test]
    fn tools_are_flattened_mapped_or_dropped() {
        let c = conv(
            json!({"input": "x", "tool_choice": "required", "parallel_tool_calls": false, "tools": [
                {"type": "function", "name": "f", "description": "d", "strict": true, "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}},
                {"type": "web_search"},
                {"type": "image_generation"},
                {"type": "namespace", "name": "mcp", "tools": [{"type": "function", "name": "g"}]},
                {"type": "custom", "name": "apply_patch", "description": "patch", "format": {"type": "grammar", "definition": "start: x"}},
            ]}),
        );
        let tools = c.chat["tools"].as_array().unwrap();
        let names: Vec<&str> = tools
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["f", "g", "apply_patch"]);
        assert!(tools[0]["function"].get("strict").is_none());
        assert_eq!(tools[1]["function"]["parameters"]["type"], "object");
        assert_eq!(
            tools[2]["function"]["parameters"]["required"],
            json!(["input"])
        );
        assert!(c.custom_tools.contains("apply_patch"));
        assert_eq!(c.chat["tool_choice"], "required");
        assert_eq!(c.chat["parallel_tool_calls"], false);
    }

    #[test]
    fn hosted_tools_only_means_no_tools_and_no_tool_choice() {
        let c =
            conv(json!({"input": "x", "tool_choice": "auto", "tools": [{"type": "web_search"}]}));
        assert!(c.chat.get("tools").is_none());
        assert!(c.chat.get("tool_choice").is_none());
    }

    #[test]
    fn sampling_fields_pass_and_unknown_fields_are_accepted() {
        let c = conv(
            json!({"input": "x", "max_output_tokens": 50, "temperature": 0.2, "top_p": 0.9,
            "reasoning": {"effort": "high"}, "include": ["reasoning.encrypted_content"], "prompt_cache_key": "k",
            "client_metadata": {"a": 1}, "x_unknown": true, "stream": true,
            "text": {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}}}}),
        );
        assert_eq!(c.chat["max_tokens"], 50);
        assert_eq!(c.chat["temperature"], 0.2);
        assert_eq!(c.chat["top_p"], 0.9);
        assert_eq!(c.chat["stream"], true);
        assert_eq!(c.chat["response_format"]["json_schema"]["name"], "n");
        assert!(c.chat.get("reasoning").is_none());
    }

    #[test]
    fn images_become_chat_image_parts() {
        let c = conv(json!({"input": [{"role": "user", "content": [
            {"type": "input_text", "text": "what is this"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]}]}));
        assert_eq!(
            c.chat["messages"][0]["content"],
            json!([{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}])
        );
    }

    #[test]
    fn history_comes_before_the_new_input() {
        let body = json!({"input": "again", "instructions": "new rules"});
        let history: Conversation = vec![Arc::from(vec![
            json!({"role": "user", "content": "first"}),
            json!({"role": "assistant", "content": "ok"}),
        ])];
        let c = convert(body.as_object().unwrap(), history).unwrap();
        assert_eq!(
            c.chat["messages"],
            json!([
                {"role": "system", "content": "new rules"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "again"},
            ])
        );
        assert_eq!(c.conversation.len(), 2);
    }

    #[test]
    fn bad_bodies_say_what_to_fix() {
        let cases = [
            (json!({"model": "m"}), "no \"input\""),
            (json!({"input": 5}), "string or an array"),
            (json!({"input": "x", "stream": "yes"}), "true or false"),
            (
                json!({"input": "x", "previous_response_id": 3}),
                "previous_response_id",
            ),
        ];
        for (body, needle) in cases {
            let e = validate(body.as_object().unwrap()).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(needle), "{}", e.message);
        }
        let convert_cases = [
            (json!({"input": [3]}), "input[0] must be an object"),
            (
                json!({"input": [{"role": "robot", "content": "x"}]}),
                "role",
            ),
            (
                json!({"input": [{"type": "function_call", "name": "f"}]}),
                "call_id",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
                "image_url",
            ),
            (json!({"input": [{"foo": 1}]}), "neither"),
        ];
        for (body, needle) in convert_cases {
            let e = convert(body.as_object().unwrap(), Conversation::default()).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(needle), "{}", e.message);
        }
    }
}
