//! JSON helpers for text that models write: find where a value ends (string-aware, so a brace
//! inside a string never closes an object), and parse leniently where models are sloppy
//! (trailing commas, Python literals, single quotes) without ever guessing content.

use serde_json::Value;

/// Where a JSON object or array that starts at byte 0 ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The value is complete and this many bytes long.
    Complete(usize),
    /// The text ends inside the value.
    Incomplete,
    /// Byte 0 does not open an object or array.
    NotAValue,
}

/// Scans a JSON object/array (or Python-style dict/list) starting at byte 0, tracking strings in
/// double or single quotes and nesting depth.
pub fn value_end(s: &str) -> End {
    value_end_from(s, None).0
}

/// Where a scan of an incomplete value stopped, to go on from there when more text arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    depth: usize,
    quote: Option<u8>,
    escaped: bool,
    /// Bytes already scanned.
    pub scanned: usize,
}

/// [`value_end`], resuming from `progress` (a scan of a prefix of `s`); an incomplete value
/// returns where it stopped.
pub fn value_end_from(s: &str, progress: Option<Progress>) -> (End, Option<Progress>) {
    let bytes = s.as_bytes();
    match bytes.first() {
        Some(b'{') | Some(b'[') => {}
        _ => return (End::NotAValue, None),
    }
    let start = progress.filter(|p| p.scanned <= bytes.len());
    let (mut depth, mut quote, mut escaped, mut i) = match start {
        Some(p) => (p.depth, p.quote, p.escaped, p.scanned),
        None => (0usize, None, false, 0),
    };
    while i < bytes.len() {
        let b = bytes[i];
        if !in_string(&mut quote, &mut escaped, b) {
            match b {
                b'"' | b'\'' => quote = Some(b),
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return (End::Complete(i + 1), None);
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    (
        End::Incomplete,
        Some(Progress {
            depth,
            quote,
            escaped,
            scanned: i,
        }),
    )
}

/// One byte of a scan that tracks strings in double or single quotes: whether it was inside a
/// string (an opening quote is not: the caller sees it and opens the string).
// Runs for every byte of every call's JSON: inlined into both scans.
#[inline(always)]
fn in_string(quote: &mut Option<u8>, escaped: &mut bool, b: u8) -> bool {
    let Some(q) = *quote else {
        return false;
    };
    if *escaped {
        *escaped = false;
    } else if b == b'\\' {
        *escaped = true;
    } else if b == q {
        *quote = None;
    }
    true
}

/// Parses JSON, repairing only what is unambiguous: trailing commas, Python's `True`/`False`/
/// `None`, and single-quoted strings. Returns `None` when the text is not JSON even then.
pub fn parse_lenient(s: &str) -> Option<Value> {
    parse_noting(s).map(|(v, _)| v)
}

/// [`parse_lenient`], also saying what was repaired (`None`: the text was valid JSON).
pub fn parse_noting(s: &str) -> Option<(Value, Option<String>)> {
    if let Ok(v) = serde_json::from_str::<Value>(s) {
        return Some((v, None));
    }
    let (repaired, what) = repair(s)?;
    let v = serde_json::from_str::<Value>(&repaired).ok()?;
    Some((v, Some(what.join(", "))))
}

/// A JSON object or array at byte 0 that `stop` (its closing tag) cuts short: where `stop`
/// begins, outside any string with brackets still open, and the brackets that close them.
/// `None` when the value ends first, the brackets do not match, or `stop` is not there.
pub fn cut_by(s: &str, stop: &str) -> Option<(usize, String)> {
    let bytes = s.as_bytes();
    if !matches!(bytes.first(), Some(b'{' | b'[')) {
        return None;
    }
    let mut open: Vec<u8> = Vec::new();
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string(&mut quote, &mut escaped, b) {
            continue;
        }
        match b {
            b'"' | b'\'' => quote = Some(b),
            b'{' => open.push(b'}'),
            b'[' => open.push(b']'),
            // A mismatched closer, or the value ending before the tag: nothing to repair.
            b'}' | b']' if open.pop() != Some(b) || open.is_empty() => return None,
            _ if bytes[i..].starts_with(stop.as_bytes()) => {
                return Some((i, open.iter().rev().map(|&c| char::from(c)).collect()));
            }
            _ => {}
        }
    }
    None
}

/// The repaired text and what was repaired, or `None` when nothing needed it.
fn repair(s: &str) -> Option<(String, Vec<&'static str>)> {
    let mut out = String::with_capacity(s.len() + 8);
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut what: Vec<&'static str> = Vec::new();
    let mut note = |w: &'static str| {
        if !what.contains(&w) {
            what.push(w);
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' => {
                // Copy a double-quoted string verbatim.
                out.push(c);
                i += 1;
                while i < chars.len() {
                    let d = chars[i];
                    out.push(d);
                    i += 1;
                    if d == '\\' && i < chars.len() {
                        out.push(chars[i]);
                        i += 1;
                    } else if d == '"' {
                        break;
                    }
                }
                continue;
            }
            '\'' => {
                // A single-quoted string becomes a double-quoted one.
                note("single quotes");
                out.push('"');
                i += 1;
                while i < chars.len() {
                    let d = chars[i];
                    i += 1;
                    match d {
                        '\\' if i < chars.len() => {
                            let e = chars[i];
                            i += 1;
                            if e == '\'' {
                                out.push('\'');
                            } else {
                                out.push('\\');
                                out.push(e);
                            }
                        }
                        '\'' => break,
                        '"' => out.push_str("\\\""),
                        _ => out.push(d),
                    }
                }
                out.push('"');
                continue;
            }
            ',' => {
                let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
                if matches!(next, Some('}') | Some(']')) {
                    note("a trailing comma");
                    i += 1;
                    continue;
                }
            }
            'T' | 'F' | 'N' => {
                let word: String = chars[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .collect();
                let prev_ok = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
                let replacement = match word.as_str() {
                    "True" => Some("true"),
                    "False" => Some("false"),
                    "None" => Some("null"),
                    _ => None,
                };
                if let (Some(r), true) = (replacement, prev_ok) {
                    note("Python literals");
                    out.push_str(r);
                    i += word.chars().count();
                    continue;
                }
            }
            _ => {}
        }
        out.push(c);
        i += 1;
    }
    (!what.is_empty()).then_some((out, what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_resumed_scan_ends_where_a_whole_scan_does() {
        let text = r#"{"a": "}{", 'b': [1, {"c": "q\"}'"}]} tail"#;
        assert_eq!(value_end(text), End::Complete(text.len() - 5));
        for cut in 1..text.len() {
            let (first, progress) = value_end_from(&text[..cut], None);
            let resumed = match first {
                End::Incomplete => value_end_from(text, progress).0,
                done => done,
            };
            assert_eq!(resumed, value_end(text), "cut at {cut}");
        }
    }

    #[test]
    fn ends_are_string_aware() {
        assert_eq!(value_end(r#"{"a":"}"} tail"#), End::Complete(9));
        assert_eq!(value_end(r#"{"a":"\"}"}"#), End::Complete(11));
        assert_eq!(value_end(r#"{"a":[1,{"b":2}]"#), End::Incomplete);
        assert_eq!(value_end("x{}"), End::NotAValue);
        assert_eq!(value_end("[{'a': '}'}]"), End::Complete(12));
    }

    #[test]
    fn a_value_cut_short_by_its_closing_tag_gets_its_closers() {
        let t = r#"{"name": "f", "arguments": {"x": [1, "}</t>"]</t> tail"#;
        let (at, closers) = cut_by(t, "</t>").unwrap_or_default();
        assert_eq!((&t[at..], closers.as_str()), ("</t> tail", "}}"));
        // Complete first, or the tag only inside a string, or mismatched: nothing to repair.
        assert_eq!(cut_by(r#"{"a": 1}</t>"#, "</t>"), None);
        assert_eq!(cut_by(r#"{"a": "</t>"#, "</t>"), None);
        assert_eq!(cut_by(r#"{"a": [1}</t>"#, "</t>"), None);
        assert_eq!(
            parse_noting(r#"{"a": 1,}"#),
            Some((json!({"a": 1}), Some("a trailing comma".into())))
        );
        assert_eq!(parse_noting(r#"{"a": 1}"#), Some((json!({"a": 1}), None)));
    }

    #[test]
    fn lenient_parse_repairs_only_the_unambiguous() {
        assert_eq!(parse_lenient(r#"{"a": 1,}"#), Some(json!({"a": 1})));
        assert_eq!(
            parse_lenient("{'a': True, 'b': None, 'c': 'it\\'s'}"),
            Some(json!({"a": true, "b": null, "c": "it's"}))
        );
        assert_eq!(
            parse_lenient(r#"{"a": "True"}"#),
            Some(json!({"a": "True"}))
        );
        assert_eq!(parse_lenient(r#"{"a": }"#), None);
    }
}
