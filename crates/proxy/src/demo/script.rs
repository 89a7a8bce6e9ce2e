//! What the demo model says: pure functions of the request.

use serde_json::{Map, Value, json};

/// Tool-call formats the demo writes, in rotation. Names match the engine's format names.
pub const FORMATS: &[&str] = &["hermes", "tool_call_line", "qwen3_coder"];

/// The reply text for a request (the `n`th the demo has served).
pub fn reply_for(request: &Value, n: u64) -> String {
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    let last_role = last.get("role").and_then(Value::as_str).unwrap_or("");
    let user_text = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(message_text)
        .unwrap_or_default();
    let tools: Vec<Value> = request
        .get("tools")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let tool_choice_none = request.get("tool_choice").and_then(Value::as_str) == Some("none");

    if last_role == "tool" {
        let result = message_text(&last);
        let result: String = result.chars().take(200).collect();
        return format!(
            "<think>The tool answered; I can reply now.</think>\nHere is what I found: {result}\n\nAnything else you would like to know?"
        );
    }
    if !tools.is_empty() && !tool_choice_none {
        let format = chosen_format(&user_text).unwrap_or(FORMATS[(n as usize) % FORMATS.len()]);
        let tool = &tools[0];
        let name = tool
            .pointer("/function/name")
            .and_then(Value::as_str)
            .unwrap_or("tool");
        let schema = tool
            .pointer("/function/parameters")
            .cloned()
            .unwrap_or(Value::Null);
        let args = example_arguments(&schema, &user_text);
        return format!(
            "<think>The user asked: {}. The {name} tool can answer that, so I will call it.</think>\nLet me check that for you.\n{}",
            short(&user_text),
            render_call(format, name, &args)
        );
    }
    format!(
        "<think>A plain question, no tools needed.</think>\nThis reply comes from the blockops demo backend. You said: \"{}\". \
         Point BACKEND_URL at mlx_lm.server, vLLM, llama.cpp or Ollama to talk to a real model; declare `tools` in the request \
         to watch the proxy turn text tool calls into structured tool_calls.",
        short(&user_text)
    )
}

fn short(text: &str) -> String {
    let t: String = text.chars().take(120).collect();
    // The reply adds its own full stop.
    t.replace(['\n', '"'], " ")
        .trim_end_matches(['?', '.', '!', ' '])
        .to_owned()
}

fn chosen_format(user_text: &str) -> Option<&'static str> {
    let start = user_text.find("[format=")? + "[format=".len();
    let end = user_text[start..].find(']')? + start;
    let wanted = &user_text[start..end];
    FORMATS.iter().copied().find(|f| *f == wanted)
}

fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Plausible arguments for a JSON schema: enough for a demo and for tests to predict.
pub fn example_arguments(schema: &Value, user_text: &str) -> Map<String, Value> {
    let mut args = Map::new();
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return args;
    };
    for (key, prop) in props {
        args.insert(key.clone(), example_value(key, prop, user_text));
    }
    args
}

fn example_value(key: &str, prop: &Value, user_text: &str) -> Value {
    if let Some(first) = prop
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    let ty = prop.get("type").and_then(Value::as_str).unwrap_or("string");
    match ty {
        "integer" => json!(3),
        "number" => json!(2.5),
        "boolean" => json!(true),
        "array" => json!([]),
        "object" => json!({}),
        _ => {
            let k = key.to_ascii_lowercase();
            if k.contains("city") || k.contains("location") || k.contains("place") {
                json!(capitalised_word(user_text).unwrap_or_else(|| "Paris".into()))
            } else if k.contains("unit") {
                json!("celsius")
            } else {
                json!(short(user_text).trim().to_owned())
            }
        }
    }
}

/// The last capitalised word of the user's message (a city, in "weather in Paris?").
fn capitalised_word(text: &str) -> Option<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .skip(1)
        .filter(|w| w.chars().next().is_some_and(char::is_uppercase))
        .last()
        .map(str::to_owned)
}

/// A tool call written as text in one of the formats.
pub fn render_call(format: &str, name: &str, args: &Map<String, Value>) -> String {
    let args_json = Value::Object(args.clone()).to_string();
    match format {
        "tool_call_line" => {
            format!("TOOL_CALL: {{\"name\": \"{name}\", \"arguments\": {args_json}}}\n")
        }
        "qwen3_coder" => {
            let mut s = format!("<tool_call>\n<function={name}>\n");
            for (k, v) in args {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                s.push_str(&format!("<parameter={k}>\n{text}\n</parameter>\n"));
            }
            s.push_str("</function>\n</tool_call>");
            s
        }
        _ => format!(
            "<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {args_json}}}\n</tool_call>"
        ),
    }
}

/// Splits text into token-sized pieces (about four characters, on char boundaries), so the
/// stream cuts through markers the way a real tokenizer's output does.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        current.push(c);
        if current.len() >= 4 || c == ' ' || c == '\n' {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather_request(text: &str) -> Value {
        json!({"messages": [{"role": "user", "content": text}],
               "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]})
    }

    #[test]
    fn rotates_formats_and_honours_a_chosen_one() {
        let a = reply_for(&weather_request("Weather in Paris?"), 0);
        assert!(
            a.contains(
                "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}"
            ),
            "{a}"
        );
        let b = reply_for(&weather_request("Weather in Oslo?"), 1);
        assert!(b.contains("TOOL_CALL: {\"name\": \"get_weather\""), "{b}");
        let c = reply_for(&weather_request("Weather in Rome? [format=qwen3_coder]"), 0);
        assert!(
            c.contains("<function=get_weather>\n<parameter=city>\nRome\n</parameter>"),
            "{c}"
        );
    }

    #[test]
    fn answers_in_prose_after_a_tool_result() {
        let r = json!({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "12°C"}], "tools": []});
        assert!(reply_for(&r, 0).contains("Here is what I found: 12°C"));
    }

    #[test]
    fn tokens_cover_the_text() {
        let t = "héllo <tool_call>{\"a\":1}</tool_call>";
        assert_eq!(tokens(t).concat(), t);
    }
}
