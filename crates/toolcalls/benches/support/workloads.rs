//! The engine benchmarks' workloads, shared by `engine.rs` (criterion, wall time) and
//! `count.rs` (one run, for callgrind's instruction counts).

use serde_json::json;
use toolcalls::{EventRef, Events, Options, Parser, ToolSpec};

pub fn tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "get_weather".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}),
        },
        ToolSpec {
            name: "search".into(),
            parameters: json!({"type": "object", "properties": {"query": {"type": "string"}}}),
        },
    ]
}

/// About `size` bytes of ordinary English prose with punctuation and newlines: no marker.
pub fn prose(size: usize) -> String {
    const PARAGRAPH: &str = "The proxy sits between the client and the model server, reading every \
        token the model writes. Most of what it sees is plain prose like this sentence, which it \
        must pass through untouched and without delay: commas, full stops, numbers such as 3.14 \
        and 42, quotes \"like these\", and the occasional question? Yes.\n\n";
    PARAGRAPH.repeat(size / PARAGRAPH.len() + 1)
}

/// About `size` bytes where every few lines hold a tool call, in three formats.
pub fn call_dense(size: usize) -> String {
    const BLOCK: &str = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n</tool_call>\n\
        TOOL_CALL: {\"name\": \"search\", \"arguments\": {\"query\": \"rust streaming parsers\"}}\n\
        <tool_call>\n<function=get_weather>\n<parameter=city>\nSan Francisco\n</parameter>\n<parameter=days>\n5\n</parameter>\n</function>\n</tool_call>\n";
    BLOCK.repeat(size / BLOCK.len() + 1)
}

/// What a consumer does with the events: reads every byte of text and arguments.
pub fn consume(events: Events<'_>) -> usize {
    events
        .map(|e| match e {
            EventRef::Content { text } | EventRef::Reasoning { text } => text.len(),
            EventRef::ToolCallArguments { fragment, .. } => fragment.len(),
            EventRef::ToolCallStarted { name, .. } => name.len(),
            EventRef::ToolCallFinished { .. } => 0,
        })
        .sum()
}

// Never inlined: each run is a symbol of its own, so callgrind can count it alone
// (`--toggle-collect`), apart from start-up and building the input.
#[inline(never)]
pub fn run_whole(text: &str) -> usize {
    let mut p = Parser::new(
        tools(),
        Options {
            id_seed: Some(1),
            ..Options::default()
        },
    );
    let mut n = consume(p.feed(text));
    n += consume(p.finish(Some("stop")));
    n
}

#[inline(never)]
pub fn run_pieces(pieces: &[&str]) -> usize {
    let mut p = Parser::new(
        tools(),
        Options {
            id_seed: Some(1),
            ..Options::default()
        },
    );
    let mut n = 0;
    for piece in pieces {
        n += consume(p.feed(piece));
    }
    n + consume(p.finish(Some("stop")))
}

/// The text cut into pieces of `n` characters (1: what the target names; 4: about a
/// token, what a real stream delivers).
pub fn pieces(text: &str, n: usize) -> Vec<&str> {
    let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).step_by(n).collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &i)| &text[i..starts.get(k + 1).copied().unwrap_or(text.len())])
        .collect()
}
