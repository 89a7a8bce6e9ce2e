// The scanner's invariants over arbitrary bytes, shared by the cargo-fuzz target and by
// `tests/properties.rs` (stable toolchain). The first byte picks the options and the split
// sizes; the rest, read as UTF-8 (lossily), is the model's output.

pub fn check_scanner(data: &[u8]) {
    use toolcalls::{Options, ToolSpec, parse_chunks};
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let tools = vec![
        ToolSpec {
            name: "search".into(),
            parameters: serde_json::json!({"type": "object", "properties": {"query": {"type": "string"}, "n": {"type": "integer"}}}),
        },
        ToolSpec { name: "get_time".into(), parameters: serde_json::json!({"type": "object"}) },
    ];
    let options = Options {
        formats: None,
        parse_tools: control & 1 == 0,
        split_reasoning: control & 2 == 0,
        prefill_think: control & 4 != 0,
        parallel_tool_calls: control & 8 == 0,
        id_seed: Some(7),
    };
    let finish = if control & 16 != 0 { "length" } else { "stop" };
    let whole = parse_chunks([text.as_ref()], tools.clone(), options.clone(), Some(finish));

    // Every byte is in exactly one span, and content/reasoning are their spans' text.
    let (mut at, mut content, mut reasoning) = (0, String::new(), String::new());
    for span in &whole.trace {
        assert_eq!(span.start, at, "trace gap or overlap in {:?}", whole.trace);
        let piece = &text[span.start..span.end];
        match span.kind {
            "content" | "rejected" => content.push_str(piece),
            "reasoning" => reasoning.push_str(piece),
            "tool_call" | "markup" => {}
            other => panic!("unknown span kind {other}"),
        }
        at = span.end;
    }
    assert_eq!(at, text.len(), "the trace does not cover the input");
    assert_eq!(content, whole.content);
    assert_eq!(reasoning, whole.reasoning.clone().unwrap_or_default());
    for call in &whole.tool_calls {
        let args: serde_json::Value = serde_json::from_str(&call.arguments).expect("arguments are JSON");
        assert!(args.is_object(), "arguments are an object");
    }

    // Split into pieces of 1..=8 characters (sizes from the control byte), and per character.
    let size = usize::from(control >> 5) + 1;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let pieces: Vec<&str> = chars
        .chunks(size)
        .map(|c| {
            let start = c[0].0;
            let last = c[c.len() - 1];
            &text[start..last.0 + last.1.len_utf8()]
        })
        .collect();
    let split = parse_chunks(pieces, tools.clone(), options.clone(), Some(finish));
    assert_eq!(split, whole, "pieces of {size} characters differ from the whole text");
}
