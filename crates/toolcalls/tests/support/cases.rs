//! The corpus's case format and loader, shared by the engine's corpus test and the proxy's
//! end-to-end translation test (`crates/proxy/tests/translation.rs`), which replays the same
//! cases as a backend's SSE stream. The format is described in `tests/corpus.rs`.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::path::Path;
use toolcalls::{Options, ToolSpec};

/// The tools every case may call (a case's `tools:` line narrows them).
pub fn all_tools() -> Vec<ToolSpec> {
    let spec = |name: &str, parameters: Value| ToolSpec {
        name: name.into(),
        parameters,
    };
    vec![
        spec(
            "get_weather",
            json!({"type": "object", "properties": {
                "city": {"type": "string"}, "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}),
        ),
        spec(
            "search",
            json!({"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}}),
        ),
        spec(
            "calculate",
            json!({"type": "object", "properties": {"expression": {"type": "string"}, "precision": {"type": "number"}}}),
        ),
        spec(
            "write_file",
            json!({"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}}),
        ),
        spec(
            "set_alarm",
            json!({"type": "object", "properties": {"time": {"type": "string"}, "enabled": {"type": "boolean"}}}),
        ),
        spec(
            "create_event",
            json!({"type": "object", "properties": {
                "title": {"type": "string"},
                "attendees": {"type": "array", "items": {"type": "string"}},
                "duration": {"type": "number"},
                "metadata": {"type": "object"},
                "zip": {"type": "string"},
                "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "priority": {"type": ["integer", "null"]}}}),
        ),
        spec("get_time", json!({"type": "object", "properties": {}})),
        spec(
            "edit_file",
            json!({"type": "object", "properties": {
                "path": {"type": "string"}, "old_text": {"type": "string"},
                "new_text": {"type": "string"}}, "required": ["path", "old_text", "new_text"]}),
        ),
        // Type names as tool definitions in the wild spell them, outside JSON Schema.
        spec(
            "configure",
            json!({"type": "object", "properties": {
                "ratio": {"type": "float"}, "scale": {"type": "double"}, "count": {"type": "int"},
                "verbose": {"type": "bool"}, "options": {"type": "dict"}, "tags": {"type": "list"},
                "label": {"type": "str"}}}),
        ),
    ]
}

#[derive(Debug, Default)]
pub struct Case {
    pub file: String,
    pub name: String,
    /// `tools: a b` (default: all; `none` = no tools declared).
    pub tools: Option<Vec<String>>,
    /// `finish: length` (default `stop`).
    pub finish: Option<String>,
    /// `prefill_think: true`.
    pub prefill_think: bool,
    /// `parallel: false`.
    pub parallel: bool,
    /// `formats: hermes,mistral` (PARSER_FORMATS).
    pub formats: Option<Vec<String>>,
    /// `reasoning: off`.
    pub no_reasoning: bool,
    pub input: String,
    pub content: String,
    pub reasoning: Option<String>,
    /// `(format, name, arguments)`.
    pub calls: Vec<(String, String, Value)>,
    pub rejected: Vec<String>,
    /// Substrings the reasons of repaired call spans must contain (`repaired: …`).
    pub repaired: Vec<String>,
}

pub fn load(dir: &Path) -> Vec<Case> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("tests/corpus exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("corpus file is UTF-8");
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        cases.extend(parse_file(&file, &text));
    }
    cases
}

fn parse_file(file: &str, text: &str) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    let mut section: Option<(String, Vec<&str>)> = None;
    fn close(case: &mut Case, section: Option<(String, Vec<&str>)>) {
        let Some((name, mut lines)) = section else {
            return;
        };
        // Blank lines separate cases; a section that ends with a newline says `+nl`.
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        let (name, newline) = match name.strip_suffix("+nl") {
            Some(n) => (n.to_owned(), true),
            None => (name, false),
        };
        let mut body = lines.join("\n");
        if newline {
            body.push('\n');
        }
        match name.as_str() {
            "input" => case.input = body,
            "content" => case.content = body,
            "reasoning" => case.reasoning = Some(body),
            "calls" => {
                for line in lines.iter().filter(|l| !l.trim().is_empty()) {
                    let mut parts = line.splitn(3, ' ');
                    let format = parts.next().unwrap().to_owned();
                    let name = parts.next().unwrap_or_default().to_owned();
                    let args: Value = serde_json::from_str(parts.next().unwrap_or("{}"))
                        .unwrap_or_else(|e| {
                            panic!("{}: bad expected arguments {line:?}: {e}", case.name)
                        });
                    case.calls.push((format, name, args));
                }
            }
            "rejected" => case.rejected = lines.iter().map(|l| l.to_string()).collect(),
            "repaired" => case.repaired = lines.iter().map(|l| l.to_string()).collect(),
            other => panic!("{}: unknown section {other:?}", case.name),
        }
    }
    // Split on `\n` only: a case may hold `\r\n` line ends (CRLF layouts) that `lines()` drops.
    for line in text.split('\n') {
        if let Some(name) = line.strip_prefix("=== ") {
            if let Some(case) = cases.last_mut() {
                close(case, section.take());
            }
            cases.push(Case {
                file: file.to_owned(),
                name: name.trim().to_owned(),
                parallel: true,
                ..Case::default()
            });
            continue;
        }
        let Some(case) = cases.last_mut() else {
            continue; // comments before the first case
        };
        if let Some(name) = line.strip_prefix("--- ") {
            close(case, section.take());
            section = Some((name.trim().to_owned(), Vec::new()));
        } else if let Some((_, lines)) = section.as_mut() {
            lines.push(line);
        } else if let Some((key, value)) = line.split_once(':') {
            let value = value.trim();
            match key.trim() {
                "tools" if value == "none" => case.tools = Some(Vec::new()),
                "tools" => case.tools = Some(value.split_whitespace().map(str::to_owned).collect()),
                "finish" => case.finish = Some(value.to_owned()),
                "prefill_think" => case.prefill_think = value == "true",
                "parallel" => case.parallel = value != "false",
                "formats" => {
                    case.formats = Some(value.split(',').map(|s| s.trim().to_owned()).collect())
                }
                "reasoning" => case.no_reasoning = value == "off",
                "note" => {}
                other => panic!("{}: unknown header {other:?}", case.name),
            }
        }
    }
    if let Some(case) = cases.last_mut() {
        close(case, section.take());
    }
    cases
}

pub fn tools_for(case: &Case) -> Vec<ToolSpec> {
    let all = all_tools();
    match &case.tools {
        None => all,
        Some(names) => all
            .into_iter()
            .filter(|t| names.contains(&t.name))
            .collect(),
    }
}

pub fn options_for(case: &Case) -> Options {
    Options {
        formats: case.formats.clone(),
        parse_tools: !tools_for(case).is_empty(),
        split_reasoning: !case.no_reasoning,
        prefill_think: case.prefill_think,
        parallel_tool_calls: case.parallel,
        id_seed: Some(42),
    }
}
