//! The corpus: hand-written cases in `tests/corpus/*.txt`, each run whole, one character at a
//! time and in random pieces, all of which must give the case's expected result and the same
//! trace, and every trace must account for every byte of the input.
//!
//! A case:
//! ```text
//! === hermes: one call after prose            <- name
//! tools: get_weather search                   <- optional header lines (see `Case`)
//! --- input
//! Let me check.
//! <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>
//! --- content
//! Let me check.
//! --- calls
//! hermes get_weather {"city": "Paris"}
//! ```
//! A section's text is its lines joined by `\n`, trailing blank lines dropped; `--- input+nl`
//! (any section `+nl`) adds a final newline. Absent
//! `content` means empty content, absent `reasoning` means none. `--- rejected` lists
//! substrings the trace's rejection reasons must contain, one per line; `--- repaired` the
//! same for the notes of calls that had to be repaired (a call span has a note only then).
//!
//! `CORPUS_SHOW=1 cargo test -p blockops-toolcalls --test corpus` prints what each failing case
//! produced, in the case format.

mod support;

use serde_json::Value;
use std::{fmt::Write as _, path::Path};
use support::cases::{Case, load, options_for, tools_for};
use toolcalls::{Parsed, parse_chunks};

fn run<'a>(case: &Case, chunks: impl IntoIterator<Item = &'a str>) -> Parsed {
    parse_chunks(
        chunks,
        tools_for(case),
        options_for(case),
        Some(case.finish.as_deref().unwrap_or("stop")),
    )
}

/// Splits at character boundaries chosen by a small deterministic generator.
fn random_pieces(text: &str, seed: u64) -> Vec<&str> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < text.len() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut end = (start + 1 + (state >> 33) as usize % 12).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        pieces.push(&text[start..end]);
        start = end;
    }
    pieces
}

fn chars(text: &str) -> Vec<&str> {
    text.char_indices()
        .map(|(i, c)| &text[i..i + c.len_utf8()])
        .collect()
}

/// What went wrong with one case, or `None`.
fn check(case: &Case) -> Option<String> {
    let whole = run(case, [case.input.as_str()]);
    let mut problems = String::new();
    if whole.content != case.content {
        let _ = writeln!(
            problems,
            "content: expected {:?}\n         got      {:?}",
            case.content, whole.content
        );
    }
    if whole.reasoning != case.reasoning {
        let _ = writeln!(
            problems,
            "reasoning: expected {:?}\n           got      {:?}",
            case.reasoning, whole.reasoning
        );
    }
    let got_calls: Vec<(String, String, Value)> = whole
        .tool_calls
        .iter()
        .map(|c| {
            let args: Value = serde_json::from_str(&c.arguments).unwrap_or_else(|e| {
                panic!(
                    "{}: arguments {:?} are not JSON: {e}",
                    case.name, c.arguments
                )
            });
            (c.format.to_owned(), c.name.clone(), args)
        })
        .collect();
    if got_calls != case.calls {
        let _ = writeln!(
            problems,
            "calls: expected {:?}\n       got      {:?}",
            case.calls, got_calls
        );
    }
    for c in &whole.tool_calls {
        // `call_` + 24 alphanumerics, or an id the model wrote itself, carried through.
        let generated = c.id.len() == 29
            && c.id.starts_with("call_")
            && c.id[5..].chars().all(|ch| ch.is_ascii_alphanumeric());
        let from_model = !c.id.is_empty() && !c.id.starts_with("call_");
        if !(generated || from_model) {
            let _ = writeln!(problems, "bad id {:?}", c.id);
        }
    }
    // Rejected spans say why; repaired calls say what was repaired; no others have a reason.
    for (kind, wanted, what) in [
        ("rejected", &case.rejected, "rejection reason"),
        ("tool_call", &case.repaired, "repair note"),
    ] {
        let reasons: Vec<&str> = whole
            .trace
            .iter()
            .filter(|s| s.kind == kind)
            .filter_map(|s| s.reason.as_deref())
            .collect();
        for w in wanted {
            if !reasons.iter().any(|r| r.contains(w.as_str())) {
                let _ = writeln!(problems, "no {what} contains {w:?}; got {reasons:?}");
            }
        }
        if wanted.is_empty() && !reasons.is_empty() {
            let _ = writeln!(problems, "unexpected {what}s: {reasons:?}");
        }
    }
    // The scanner re-reads a pending span only when one of these bytes arrives
    // (`scan::SPAN_END_BYTES`): a call ending otherwise would wait for the end of the reply.
    for span in whole.trace.iter().filter(|s| s.kind == "tool_call") {
        let last = case.input.as_bytes()[span.end - 1];
        if !b">}])\n".contains(&last) {
            let _ = writeln!(
                problems,
                "a {:?} call ends with {:?}",
                span.format, last as char
            );
        }
    }
    if let Some(p) = lossless(&case.input, &whole) {
        let _ = writeln!(problems, "trace: {p}");
    }
    // The same result and trace however the text is cut.
    let mut splits: Vec<(String, Vec<&str>)> =
        vec![("one character at a time".into(), chars(&case.input))];
    for seed in 1..=4 {
        splits.push((
            format!("random pieces (seed {seed})"),
            random_pieces(&case.input, seed),
        ));
    }
    for (how, pieces) in splits {
        let got = run(case, pieces.iter().copied());
        if got != whole {
            let _ = writeln!(
                problems,
                "{how} differs from the whole text:\n  whole {whole:?}\n  split {got:?}"
            );
        }
    }
    (!problems.is_empty()).then_some(problems)
}

/// The trace partitions the input, and content and reasoning are exactly their spans' text.
fn lossless(input: &str, parsed: &Parsed) -> Option<String> {
    let mut at = 0;
    let mut content = String::new();
    let mut reasoning = String::new();
    for span in &parsed.trace {
        if span.start != at || span.end < span.start || span.end > input.len() {
            return Some(format!(
                "span {span:?} does not start where the previous ended ({at})"
            ));
        }
        let text = &input[span.start..span.end];
        match span.kind {
            "content" | "rejected" => content.push_str(text),
            "reasoning" => reasoning.push_str(text),
            "tool_call" | "markup" => {}
            other => return Some(format!("unknown span kind {other:?}")),
        }
        at = span.end;
    }
    if at != input.len() {
        return Some(format!("the trace covers {at} of {} bytes", input.len()));
    }
    // Notices and separators aside, the text classified as content is the content sent.
    if content != parsed.content {
        return Some(format!(
            "content spans give {content:?}, content is {:?}",
            parsed.content
        ));
    }
    if reasoning != parsed.reasoning.clone().unwrap_or_default() {
        return Some(format!(
            "reasoning spans give {reasoning:?}, reasoning is {:?}",
            parsed.reasoning
        ));
    }
    None
}

fn show(case: &Case) -> String {
    let got = run(case, [case.input.as_str()]);
    let mut s = format!("=== {}\n--- input\n{}\n", case.name, case.input);
    if !got.content.is_empty() {
        let _ = write!(s, "--- content\n{}\n", got.content);
    }
    if let Some(r) = &got.reasoning {
        let _ = write!(s, "--- reasoning\n{r}\n");
    }
    if !got.tool_calls.is_empty() {
        s.push_str("--- calls\n");
        for c in &got.tool_calls {
            let _ = writeln!(s, "{} {} {}", c.format, c.name, c.arguments);
        }
    }
    for (kind, section) in [("rejected", "rejected"), ("tool_call", "repaired")] {
        let reasons: Vec<_> = got
            .trace
            .iter()
            .filter(|t| t.kind == kind)
            .filter_map(|t| t.reason.clone())
            .collect();
        if !reasons.is_empty() {
            let _ = write!(s, "--- {section}\n{}\n", reasons.join("\n"));
        }
    }
    s
}

/// "Hundreds of cases": the corpus may only grow.
const MIN_CASES: usize = 400;

#[test]
fn corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let cases = load(&dir);
    assert!(
        cases.len() >= MIN_CASES,
        "the corpus has only {} cases",
        cases.len()
    );
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(names.insert(&c.name), "two cases are named {:?}", c.name);
        assert!(!c.input.is_empty(), "{}: empty input", c.name);
    }
    let show_all = std::env::var_os("CORPUS_SHOW").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        if let Some(p) = check(case) {
            if show_all {
                eprintln!("{}", show(case));
            }
            failures.push(format!("{} / {}:\n{p}", case.file, case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Every format the engine claims has positive cases in the corpus.
#[test]
fn every_format_has_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let cases = load(&dir);
    for format in toolcalls::known_formats() {
        let n = cases
            .iter()
            .filter(|c| c.calls.iter().any(|(f, _, _)| f == format))
            .count();
        assert!(
            n >= 3,
            "format {format} has {n} positive corpus cases (want at least 3)"
        );
    }
}

/// `blockops-proxy parse` (one JSON line per input) gives each case's expected content, reasoning
/// and calls, whole and fed one character at a time: the command is the engine, not a copy.
/// Cases it cannot express (PARSER_FORMATS, reasoning off, parallel off) are left out.
#[test]
fn the_parse_command_gives_the_corpus_results() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let cases: Vec<Case> = load(&dir)
        .into_iter()
        .filter(|c| c.formats.is_none() && !c.no_reasoning && c.parallel)
        .collect();
    assert!(cases.len() >= MIN_CASES / 2, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let tools: Vec<Value> = support::cases::tools_for(case)
            .into_iter()
            .map(|t| serde_json::json!({"type": "function", "function": {"name": t.name, "parameters": t.parameters}}))
            .collect();
        let line = serde_json::json!({
            "text": case.input,
            "tools": tools,
            "finish_reason": case.finish.as_deref().unwrap_or("stop"),
            "prefill_think": case.prefill_think,
        })
        .to_string();
        let want_calls: Vec<Value> = case
            .calls
            .iter()
            .map(|(format, name, args)| serde_json::json!([format, name, args]))
            .collect();
        for chunk_size in [None, Some(1)] {
            let out = toolcalls::parse_cli_line(&line, chunk_size);
            let calls: Vec<Value> = out["tool_calls"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .map(|c| serde_json::json!([c["format"], c["name"], c["arguments"]]))
                        .collect()
                })
                .unwrap_or_default();
            if out["content"] != case.content
                || out["reasoning"].as_str() != case.reasoning.as_deref()
                || calls != want_calls
            {
                failures.push(format!(
                    "{} (chunk size {chunk_size:?}): got {out}",
                    case.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
