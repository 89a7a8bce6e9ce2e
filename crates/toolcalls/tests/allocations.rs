//! Streaming allocates nothing per token once the parser's buffers have grown: events borrow
//! the parser and the delta. Counted with a counting global allocator (this test binary only).
//!
//! The counter is global to the process, so this binary runs without libtest's harness
//! (`harness = false`): libtest's main thread, waking late on a loaded machine, allocated once
//! inside a measured region and failed the test.

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use toolcalls::{EventRef, Options, Parser, ToolSpec};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn parser() -> Parser {
    let tools = vec![ToolSpec {
        name: "search".into(),
        parameters: serde_json::json!({"type": "object"}),
    }];
    Parser::new(tools, Options::default())
}

/// Feeds `text` in `size`-byte tokens; returns (allocations during the feeds, text seen).
fn stream(parser: &mut Parser, text: &str, size: usize) -> (usize, String) {
    let mut seen = String::with_capacity(text.len());
    let tokens: Vec<&str> = text
        .as_bytes()
        .chunks(size)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let region = Region::new(GLOBAL);
    for token in tokens {
        for event in parser.feed(token) {
            match event {
                EventRef::Content { text } | EventRef::Reasoning { text } => seen.push_str(text),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let change = region.change();
    (change.allocations + change.reallocations, seen)
}

fn main() {
    prose_and_reasoning_stream_without_allocating();
    println!("test result: ok. 1 passed; 0 failed (allocations)");
}

fn prose_and_reasoning_stream_without_allocating() {
    let prose = "The model answers in plain prose, with commas, numbers like 42, and questions? \
                 Yes. It also writes < and [ sometimes, and a new line:\nThen more text. ";
    let mut p = parser();
    // Warm up: the first content decides that no whole-message format applies, and the
    // buffers grow to their working size.
    stream(&mut p, prose, 4);
    let (allocations, seen) = stream(&mut p, &prose.repeat(50), 4);
    assert_eq!(allocations, 0, "prose fed in 4-byte tokens allocated");
    // The warm-up's trailing space was held back (it might have separated a call); it comes first.
    assert!(
        seen.trim() == prose.repeat(50).trim(),
        "text lost or changed"
    );

    // Reasoning tokens too (a thinking model's long preamble).
    let mut p = parser();
    stream(&mut p, "<think>", 1);
    stream(&mut p, prose, 3);
    let (allocations, _) = stream(&mut p, &prose.repeat(50), 3);
    assert_eq!(allocations, 0, "reasoning fed in 3-byte tokens allocated");

    // Text that lies in the delta is handed out where it lies, not copied.
    let mut p = parser();
    stream(&mut p, "Warm.", 5);
    let delta = "hello world";
    let events: Vec<EventRef<'_>> = p.feed(delta).collect();
    let [EventRef::Content { text }] = events[..] else {
        panic!("expected one content event, got {events:?}");
    };
    assert_eq!(text.as_ptr(), delta.as_ptr());
}
