//! The translation engine: text tool calls in, OpenAI-shaped events out. Sans-IO.
//!
//! API contract (the proxy depends on exactly this surface):
//! - [`ToolSpec::from_openai_tools`] reads the request's `tools` array.
//! - [`Parser::new`], [`Parser::feed`], [`Parser::finish`], [`Parser::trace`].
//! - [`parse`] runs the same core over a whole text.

use serde::Serialize;

/// One declared tool: its name and its JSON schema (`function.parameters`).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub parameters: serde_json::Value,
}

impl ToolSpec {
    /// Reads an OpenAI `tools` array; entries that are not functions with a name are skipped.
    pub fn from_openai_tools(tools: &serde_json::Value) -> Vec<ToolSpec> {
        let Some(items) = tools.as_array() else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|t| {
                let f = t.get("function")?;
                Some(ToolSpec {
                    name: f.get("name")?.as_str()?.to_owned(),
                    parameters: f.get("parameters").cloned().unwrap_or(serde_json::Value::Null),
                })
            })
            .collect()
    }
}

/// Per-response options.
#[derive(Debug, Clone)]
pub struct Options {
    /// `None` = sniff every known format; `Some(names)` narrows the set (`PARSER_FORMATS`).
    pub formats: Option<Vec<String>>,
    /// Parse tool calls at all (false when no tools were declared or `tool_choice` is `none`).
    pub parse_tools: bool,
    /// Split `<think>` reasoning out of content.
    pub split_reasoning: bool,
    /// The prompt ended inside `<think>`: output starts as reasoning.
    pub prefill_think: bool,
    /// `parallel_tool_calls: false` keeps only the first call; the rest go back to content.
    pub parallel_tool_calls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            formats: None,
            parse_tools: true,
            split_reasoning: true,
            prefill_think: false,
            parallel_tool_calls: true,
        }
    }
}

/// What the engine produced from the text seen so far. Events are final: never retracted.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Content { text: String },
    Reasoning { text: String },
    ToolCallStarted { index: usize, id: String, name: String, format: &'static str },
    ToolCallArguments { index: usize, fragment: String },
    ToolCallFinished { index: usize },
}

/// One classified span of the raw output, for the traffic log and the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceSpan {
    /// `content`, `reasoning`, `tool_call` or `rejected`.
    pub kind: &'static str,
    pub format: Option<&'static str>,
    /// Byte offsets into the raw model output.
    pub start: usize,
    pub end: usize,
    pub reason: Option<String>,
}

/// The incremental parser for one choice of one response.
#[derive(Debug)]
pub struct Parser {
    tools: Vec<ToolSpec>,
    options: Options,
    trace: Vec<TraceSpan>,
    offset: usize,
}

impl Parser {
    pub fn new(tools: Vec<ToolSpec>, options: Options) -> Self {
        Parser { tools, options, trace: Vec::new(), offset: 0 }
    }

    /// Feeds a delta of model text; returns the events that are now final.
    pub fn feed(&mut self, delta: &str) -> Vec<Event> {
        let _ = (&self.tools, &self.options);
        if delta.is_empty() {
            return Vec::new();
        }
        self.trace.push(TraceSpan {
            kind: "content",
            format: None,
            start: self.offset,
            end: self.offset + delta.len(),
            reason: None,
        });
        self.offset += delta.len();
        vec![Event::Content { text: delta.to_owned() }]
    }

    /// Ends the response (`finish_reason` as the backend sent it); flushes held-back text.
    pub fn finish(&mut self, finish_reason: Option<&str>) -> Vec<Event> {
        let _ = finish_reason;
        Vec::new()
    }

    /// The per-response trace so far.
    pub fn trace(&self) -> &[TraceSpan] {
        &self.trace
    }
}

/// A whole response, folded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parsed {
    pub content: String,
    pub reasoning: Option<String>,
    pub tool_calls: Vec<ParsedCall>,
    pub trace: Vec<TraceSpan>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParsedCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON string, exactly as streamed.
    pub arguments: String,
    pub format: &'static str,
}

/// Parses a whole text through the same core as [`Parser::feed`].
pub fn parse(text: &str, tools: Vec<ToolSpec>, options: Options, finish_reason: Option<&str>) -> Parsed {
    let mut parser = Parser::new(tools, options);
    let mut events = parser.feed(text);
    events.extend(parser.finish(finish_reason));
    fold(events, parser.trace().to_vec())
}

/// Folds a stream of events into the whole-response shape.
pub fn fold(events: impl IntoIterator<Item = Event>, trace: Vec<TraceSpan>) -> Parsed {
    let mut content = String::new();
    let mut reasoning: Option<String> = None;
    let mut tool_calls: Vec<ParsedCall> = Vec::new();
    for event in events {
        match event {
            Event::Content { text } => content.push_str(&text),
            Event::Reasoning { text } => reasoning.get_or_insert_with(String::new).push_str(&text),
            Event::ToolCallStarted { id, name, format, .. } => {
                tool_calls.push(ParsedCall { id, name, arguments: String::new(), format })
            }
            Event::ToolCallArguments { index, fragment } => {
                if let Some(call) = tool_calls.get_mut(index) {
                    call.arguments.push_str(&fragment);
                }
            }
            Event::ToolCallFinished { .. } => {}
        }
    }
    Parsed { content, reasoning, tool_calls, trace }
}
