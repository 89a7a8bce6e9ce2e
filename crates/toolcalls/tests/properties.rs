//! Properties over generated text: every byte is accounted for, and no split of the text
//! changes the result. The inputs are built from the pieces that make the scanner work hard
//! (markers of every format, halves of markers, JSON, fences, think tags, multi-byte
//! characters) mixed with arbitrary text. The same body is the fuzz target in `fuzz/`.

use proptest::prelude::*;
use serde_json::json;
use toolcalls::{Options, Parsed, ToolSpec, parse_chunks};

const PIECES: &[&str] = &[
    "<tool_call>",
    "</tool_call>",
    "<tool_call>{\"name\": \"search\", \"arguments\": {\"query\": \"a\"}}</tool_call>",
    "<tool_call>\n<function=search>\n<parameter=query>\nx\n</parameter>\n</function>\n</tool_call>",
    "<function=search>",
    "<parameter=query>",
    "</parameter>",
    "</function>",
    "TOOL_CALL: {\"name\": \"get_time\", \"arguments\": {}}\n",
    "TOOL_CALL:",
    "[TOOL_CALLS]",
    "[TOOL_CALLS]search[ARGS]{\"query\": \"m\"}",
    "[{\"name\": \"search\", \"arguments\": {\"query\": \"l\"}}]",
    "<|python_tag|>",
    "<|tool_calls_section_begin|>",
    "<|tool_call_begin|>functions.search:0<|tool_call_argument_begin|>{\"query\": \"k\"}<|tool_call_end|>",
    "<|tool_calls_section_end|>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁call▁begin｜>function<｜tool▁sep｜>search\n```json\n{\"query\": \"d\"}\n```<｜tool▁call▁end｜>",
    "<｜tool▁calls▁end｜>",
    "<arg_key>query</arg_key><arg_value>g</arg_value>",
    "[search(query='p')]",
    "{\"name\": \"get_time\", \"parameters\": {}}",
    "<think>",
    "</think>",
    "```",
    "`",
    "\n",
    " ",
    "{",
    "}",
    "\"",
    "<",
    "<tool",
    "é",
    "東京",
    "🌧️",
    "hello ",
    "The answer is 42.",
];

fn tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "search".into(),
            parameters: json!({"type": "object", "properties": {"query": {"type": "string"}}}),
        },
        ToolSpec {
            name: "get_time".into(),
            parameters: json!({"type": "object", "properties": {}}),
        },
    ]
}

fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => proptest::sample::select(PIECES).prop_map(str::to_owned),
        1 => "\\PC{0,6}",
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

fn options() -> impl Strategy<Value = Options> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(parse_tools, split_reasoning, prefill_think, parallel_tool_calls)| Options {
            formats: None,
            parse_tools,
            split_reasoning,
            prefill_think,
            parallel_tool_calls,
            id_seed: Some(1),
        },
    )
}

/// Cuts `text` at the given fractions (snapped to character boundaries).
fn cut<'a>(text: &'a str, cuts: &[f64]) -> Vec<&'a str> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|f| {
            let mut p = (f * text.len() as f64) as usize;
            while !text.is_char_boundary(p) {
                p -= 1;
            }
            p
        })
        .collect();
    points.push(0);
    points.push(text.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &text[w[0]..w[1]]).collect()
}

fn run<'a>(pieces: impl IntoIterator<Item = &'a str>, options: &Options, finish: &str) -> Parsed {
    parse_chunks(pieces, tools(), options.clone(), Some(finish))
}

/// The trace partitions the input; content and reasoning are exactly their spans' text; every
/// call's arguments are a JSON object.
fn assert_lossless(input: &str, parsed: &Parsed) -> Result<(), TestCaseError> {
    let mut at = 0;
    let (mut content, mut reasoning) = (String::new(), String::new());
    let mut call_spans = 0;
    for span in &parsed.trace {
        prop_assert_eq!(span.start, at, "trace gap or overlap: {:?}", parsed.trace);
        prop_assert!(span.end >= span.start && span.end <= input.len());
        let text = &input[span.start..span.end];
        match span.kind {
            "content" | "rejected" => content.push_str(text),
            "reasoning" => reasoning.push_str(text),
            "tool_call" => call_spans += 1,
            "markup" => prop_assert!(!text.is_empty()),
            other => prop_assert!(false, "unknown span kind {}", other),
        }
        at = span.end;
    }
    prop_assert_eq!(at, input.len(), "the trace does not cover the input");
    prop_assert_eq!(&content, &parsed.content);
    prop_assert_eq!(&reasoning, &parsed.reasoning.clone().unwrap_or_default());
    prop_assert!(call_spans > 0 || parsed.tool_calls.is_empty());
    for call in &parsed.tool_calls {
        let args: serde_json::Value = serde_json::from_str(&call.arguments)
            .map_err(|e| TestCaseError::fail(format!("arguments not JSON: {e}")))?;
        prop_assert!(args.is_object());
        prop_assert!(call.id.starts_with("call_") && call.id.len() == 29 || !call.id.is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_byte_is_accounted_for(input in text(), options in options(), length in any::<bool>()) {
        let finish = if length { "length" } else { "stop" };
        let parsed = run([input.as_str()], &options, finish);
        assert_lossless(&input, &parsed)?;
    }

    #[test]
    fn any_split_gives_the_same_result(
        input in text(),
        options in options(),
        cuts in proptest::collection::vec(0.0f64..1.0, 0..12),
    ) {
        let whole = run([input.as_str()], &options, "stop");
        let split = run(cut(&input, &cuts), &options, "stop");
        prop_assert_eq!(&split, &whole);
    }

    #[test]
    fn one_character_at_a_time_gives_the_same_result(input in text(), options in options()) {
        let whole = run([input.as_str()], &options, "stop");
        let pieces: Vec<&str> = input
            .char_indices()
            .map(|(i, c)| &input[i..i + c.len_utf8()])
            .collect();
        prop_assert_eq!(&run(pieces, &options, "stop"), &whole);
    }

    /// Text that cannot begin any marker streams through with nothing held back (an upper-case
    /// letter at a line start might begin `TOOL_CALL:`, so it may wait).
    #[test]
    fn plain_text_is_never_held_back(input in "[a-z0-9.,!? ]{0,200}") {
        let mut parser = toolcalls::Parser::new(tools(), Options::default());
        let mut seen = String::new();
        for (i, c) in input.char_indices() {
            for e in parser.feed(&input[i..i + c.len_utf8()]) {
                if let toolcalls::Event::Content { text } = e {
                    seen.push_str(&text);
                }
            }
            // Only trailing whitespace may wait (it may turn out to separate a call).
            prop_assert_eq!(seen.as_str(), input[..i + c.len_utf8()].trim_end());
        }
    }
}
