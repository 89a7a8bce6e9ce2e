//! One line of the `blockops-proxy parse` command: JSON in, JSON out, errors on their line.

use crate::{Options, ToolSpec, parse_chunks};
use serde_json::{Value, json};

/// Parses one input record `{"text", "tools"?, "chunks"?, "finish_reason"?, "prefill_think"?}`
/// and returns the output record, or `{"error": …}` naming what was wrong with the line.
pub fn parse_cli_line(line: &str, chunk_size: Option<usize>) -> Value {
    match run(line, chunk_size) {
        Ok(v) => v,
        Err(e) => json!({"error": e}),
    }
}

fn run(line: &str, chunk_size: Option<usize>) -> Result<Value, String> {
    let input: Value =
        serde_json::from_str(line).map_err(|e| format!("the line is not valid JSON: {e}"))?;
    let obj = input
        .as_object()
        .ok_or("each line must be a JSON object with \"text\"")?;
    let text = obj
        .get("text")
        .and_then(Value::as_str)
        .ok_or("\"text\" (a string) is required")?;
    let tools = match obj.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(t @ Value::Array(_)) => ToolSpec::from_openai_tools(t),
        Some(_) => return Err("\"tools\" must be an array of OpenAI tools or null".into()),
    };
    let finish_reason = match obj.get("finish_reason") {
        None | Some(Value::Null) => "stop".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("\"finish_reason\" must be a string".into()),
    };
    let prefill_think = match obj.get("prefill_think") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("\"prefill_think\" must be true or false".into()),
    };
    let chunks: Vec<String> = match (obj.get("chunks"), chunk_size) {
        (_, Some(n)) if n > 0 => split_chars(text, n),
        (Some(Value::Array(items)), _) => {
            let pieces: Option<Vec<String>> = items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect();
            let pieces = pieces.ok_or("\"chunks\" must be an array of strings")?;
            if pieces.concat() != text {
                return Err("\"chunks\" must concatenate to \"text\"".into());
            }
            pieces
        }
        (None | Some(Value::Null), _) => vec![text.to_owned()],
        (Some(_), _) => return Err("\"chunks\" must be an array of strings".into()),
    };
    let options = Options {
        parse_tools: !tools.is_empty(),
        prefill_think,
        ..Options::default()
    };
    let parsed = parse_chunks(
        chunks.iter().map(String::as_str),
        tools,
        options,
        Some(&finish_reason),
    );
    let calls: Vec<Value> = parsed
        .tool_calls
        .iter()
        .map(|c| {
            let args: Value = serde_json::from_str(&c.arguments).unwrap_or(Value::Null);
            json!({"id": c.id, "name": c.name, "arguments": args, "format": c.format})
        })
        .collect();
    let finish = if calls.is_empty() {
        finish_reason
    } else {
        "tool_calls".to_owned()
    };
    Ok(json!({
        "content": parsed.content,
        "reasoning": parsed.reasoning,
        "tool_calls": calls,
        "finish_reason": finish,
        "trace": parsed.trace,
    }))
}

/// Splits into pieces of `n` characters (never inside a character).
fn split_chars(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(n).map(|c| c.iter().collect()).collect()
}
