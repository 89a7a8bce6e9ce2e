//! The translation engine: text tool calls in, OpenAI-shaped events out. Sans-IO.
//!
//! Models served locally write tool calls as text, in two dozen dialects. [`Parser`] reads a
//! response as it streams (`feed` each delta, then `finish`), sniffs the dialect per call, and
//! emits [`Event`]s: content, reasoning, and complete tool calls. [`parse`] runs the same core over
//! a whole text, so streaming and non-streaming always agree.
//!
//! The contract, each held by tests (`tests/corpus.rs`, `tests/properties.rs`):
//! - **Lossless**: every byte of output is content, reasoning, part of a tool call, or markup
//!   (the tags and the whitespace that only separates them); [`Parser::trace`] partitions the
//!   output into such spans, and a span that is not a valid call (bad JSON beyond repair, an
//!   undeclared name, cut off at the end) goes back to content, in order, with its reason.
//! - **Chunk-invariant**: any split of the input gives the same events, folded, as one piece. Only
//!   the shortest suffix that could still open a marker is held back.
//! - **Conservative**: only declared tools, never inside code, strings stay strings.
//!
//! Calls are emitted whole, when their span is complete and validated, not as argument
//! fragments while the model writes them: a span can still turn out invalid (or be cut off by
//! the token limit) until its closing marker, and an event, once sent to a client, cannot be
//! taken back. Sending only complete, valid calls is what makes "an invalid span goes back to
//! content" possible at all. The proxy keeps the client's connection alive with heartbeats
//! while a long call is being generated.
//!
//! How it is built: `scan.rs` is one incremental scanner for every format. It finds marker
//! starts with memchr, holds back only a suffix that could still become a marker, and hands the
//! text at a marker to its format module (`formats/`, one module per dialect), which answers
//! with a `formats::Scan`: calls, a rejection (the span goes back to content with a reason), a
//! section switch (harmony channels, `<seed:think>`: what follows is reasoning or content), or
//! "need more" (optionally naming the closing tag it awaits, so a long call fed token by token is
//! not re-read at every token). Cost is linear in the input however it is cut. Text that nothing
//! waits for is read where it lies in the delta; `events.rs` hands the events out borrowed
//! (text in the delta is not copied), from buffers the parser reuses, so a token-by-token stream
//! allocates nothing per token (`tests/allocations.rs`).
//!
//! ```
//! use toolcalls::{EventRef, Options, Parser, ToolSpec};
//!
//! let tools = vec![ToolSpec { name: "get_weather".into(), parameters: serde_json::json!({}) }];
//! let mut parser = Parser::new(tools, Options::default());
//! let mut content = String::new();
//! let mut calls = Vec::new();
//! for delta in ["Let me check.\n<tool_", "call>{\"name\": \"get_weather\", ", "\"arguments\": {}}</tool_call>"] {
//!     for event in parser.feed(delta) {
//!         match event {
//!             EventRef::Content { text } => content.push_str(text),
//!             EventRef::ToolCallStarted { name, .. } => calls.push(name.to_owned()),
//!             _ => {}
//!         }
//!     }
//! }
//! parser.finish(Some("stop")).for_each(drop);
//! assert_eq!(content, "Let me check.");
//! assert_eq!(calls, ["get_weather"]);
//! ```
//!
//! Fuzzing: `fuzz/` holds a cargo-fuzz target for the scanner (nightly:
//! `cargo +nightly fuzz run scanner`); the same body runs on stable in `tests/properties.rs`.

mod cli;
mod coerce;
mod events;
mod formats;
pub mod ids;
mod json;
mod scan;

pub use cli::parse_cli_line;
pub use events::{EventRef, Events};
pub use ids::call_id;

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
                    parameters: f
                        .get("parameters")
                        .cloned()
                        .unwrap_or(serde_json::Value::Null),
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
    /// Seed for generated call ids (`None`: a fresh one per parser).
    pub id_seed: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            formats: None,
            parse_tools: true,
            split_reasoning: true,
            prefill_think: false,
            parallel_tool_calls: true,
            id_seed: None,
        }
    }
}

/// Every tool-call format the engine knows (the `PARSER_FORMATS` vocabulary).
pub fn known_formats() -> Vec<&'static str> {
    formats::known()
}

/// What the engine produced from the text seen so far. Events are final: never retracted.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Content {
        text: String,
    },
    Reasoning {
        text: String,
    },
    ToolCallStarted {
        index: usize,
        id: String,
        name: String,
        format: &'static str,
    },
    ToolCallArguments {
        index: usize,
        fragment: String,
    },
    ToolCallFinished {
        index: usize,
    },
}

/// One classified span of the raw output, for the traffic log and the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceSpan {
    /// `content`, `reasoning`, `tool_call`, `rejected` (content that looked like a call), or
    /// `markup` (tags and separating whitespace).
    pub kind: &'static str,
    pub format: Option<&'static str>,
    /// Byte offsets into the raw model output.
    pub start: usize,
    pub end: usize,
    /// Why a `rejected` span is not a call; for a `tool_call` span, what had to be repaired to
    /// read it (`repaired: …`), if anything.
    pub reason: Option<String>,
}

/// The incremental parser for one choice of one response.
#[derive(Debug)]
pub struct Parser {
    scanner: scan::Scanner,
}

impl Parser {
    pub fn new(tools: Vec<ToolSpec>, options: Options) -> Self {
        Parser {
            scanner: scan::Scanner::new(tools, options),
        }
    }

    /// Feeds a delta of model text; returns the events that are now final. They borrow the
    /// parser and the delta (text that lies in the delta is not copied), so a token-by-token
    /// stream costs no allocation per token; `.map(Event::from)` keeps them.
    #[inline]
    pub fn feed<'a>(&'a mut self, delta: &'a str) -> Events<'a> {
        self.scanner.feed(delta);
        Events::new(self.scanner.emitted(), delta)
    }

    /// Ends the response (`finish_reason` as the backend sent it); flushes held-back text. A
    /// call that lacks only its closing tags is complete when the reply ended normally
    /// (`stop`, `tool_calls`, or `None`); with `length` (cut by the token limit) or any other
    /// reason it goes back to content.
    pub fn finish(&mut self, finish_reason: Option<&str>) -> Events<'_> {
        self.scanner.finish(finish_reason);
        Events::new(self.scanner.emitted(), "")
    }

    /// The per-response trace so far.
    pub fn trace(&self) -> &[TraceSpan] {
        self.scanner.trace()
    }

    /// How many tool calls have been emitted.
    pub fn calls_emitted(&self) -> usize {
        self.scanner.calls_emitted()
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
pub fn parse(
    text: &str,
    tools: Vec<ToolSpec>,
    options: Options,
    finish_reason: Option<&str>,
) -> Parsed {
    parse_chunks(std::iter::once(text), tools, options, finish_reason)
}

/// Feeds the given pieces in order, then finishes: what a streaming client would assemble.
pub fn parse_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a str>,
    tools: Vec<ToolSpec>,
    options: Options,
    finish_reason: Option<&str>,
) -> Parsed {
    let mut parser = Parser::new(tools, options);
    let mut events = Vec::new();
    for c in chunks {
        events.extend(parser.feed(c).map(Event::from));
    }
    events.extend(parser.finish(finish_reason).map(Event::from));
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
            Event::ToolCallStarted {
                id, name, format, ..
            } => tool_calls.push(ParsedCall {
                id,
                name,
                arguments: String::new(),
                format,
            }),
            Event::ToolCallArguments { index, fragment } => {
                if let Some(call) = tool_calls.get_mut(index) {
                    call.arguments.push_str(&fragment);
                }
            }
            Event::ToolCallFinished { .. } => {}
        }
    }
    Parsed {
        content,
        reasoning,
        tool_calls,
        trace,
    }
}
