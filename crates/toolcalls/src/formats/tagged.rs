//! `<tool_call>…</tool_call>`, whose body decides the dialect (sniffed per call, so a model may
//! switch between turns, and Qwen3-Coder behind a Hermes parser still works):
//! - `{"name": …, "arguments": {…}}` — Hermes / Qwen 2.5 / Qwen3 (`hermes`);
//! - `<function=NAME><parameter=K>V</parameter></function>` — Qwen3-Coder (`qwen3_coder`), values
//!   as raw text, newline or compact layout;
//! - `NAME\n<arg_key>K</arg_key>\n<arg_value>V</arg_value>` — GLM 4.5/4.6/4.7 (`glm45`).
//!
//! Closing tags are found structurally: a `</parameter>` ends a value only when the schema's
//! structure follows (see `xml.rs`); a `</tool_call>` inside a JSON string is just text, and one
//! that arrives with the JSON's brackets still open gets the missing closers (noted).

use super::xml::{Body, Functions, close_tag, settle};
use super::{Ctx, Format, Opener, Scan};
use crate::json::End;

pub struct Tagged;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
/// What every decision about a body, once recognised, waits for: `</tool_call>` (or a new
/// `<tool_call>`, which ends a broken span).
const NEEDLE: &str = "tool_call>";

impl Format for Tagged {
    fn names(&self) -> &'static [&'static str] {
        &["hermes", "qwen3_coder", "glm45"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[Opener {
            text: OPEN,
            line_start: false,
            reply_start: false,
        }]
    }

    fn scan(&self, text: &str, _opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        let body = &text[OPEN.len()..];
        let lead = body.len() - body.trim_start().len();
        let rest = &body[lead..];
        if rest.is_empty() {
            return ctx.unterminated(text, OPEN);
        }
        let (format, parsed) = if rest.starts_with('{') || rest.starts_with('[') {
            ("hermes", hermes(rest, ctx))
        } else if rest.starts_with(QWEN3_CODER.function) || QWEN3_CODER.function.starts_with(rest) {
            ("qwen3_coder", QWEN3_CODER.parse(rest, ctx))
        } else {
            ("glm45", glm(rest, ctx))
        };
        settle(text, OPEN, CLOSE, OPEN.len() + lead, format, parsed, ctx)
    }
}

/// Qwen3-Coder's body: `<function=NAME><parameter=K>V</parameter></function>`.
const QWEN3_CODER: Functions = Functions {
    open: OPEN,
    function: "<function=",
    function_close: "</function>",
    parameter: "<parameter=",
    parameter_close: "</parameter>",
    close: CLOSE,
};

fn hermes(body: &str, ctx: &Ctx<'_>) -> Body {
    let end = ctx.value_end(body);
    // The closing tag came with brackets still open: the model left out the last closers.
    // Repaired when the result is a valid call (else the span goes back).
    if let Some((json, at)) = ctx.closers_before(body, end, CLOSE) {
        return Body::Done {
            len: at + CLOSE.len(),
            calls: ctx.calls_from_json_text(&json),
        };
    }
    match end {
        End::Incomplete => Body::Await(NEEDLE),
        End::NotAValue => Body::Bad("not a JSON call".into()),
        End::Complete(n) => match close_tag(&body[n..], CLOSE, ctx) {
            None => Body::Await(NEEDLE),
            Some(Ok(c)) => Body::Done {
                len: n + c,
                calls: ctx.calls_from_json_text(&body[..n]),
            },
            Some(Err(e)) => Body::Bad(e),
        },
    }
}

const NOT_A_BODY: &str = "not a tool call body (neither JSON, <function=, nor a GLM name)";

/// A GLM function name: what a tool name can be, never prose.
fn glm_name_char(c: char) -> bool {
    c.is_alphanumeric() || "_-.:".contains(c)
}

fn glm(body: &str, ctx: &Ctx<'_>) -> Body {
    let name_end = body.find(['\n', '<']).unwrap_or(body.len());
    let name = body[..name_end].trim_end();
    // Decided as soon as the text shows it (`<tool_call> tags are…`), so a mention of the tag
    // in prose never holds the stream back.
    if !name.chars().all(glm_name_char) || name.len() > 128 {
        return Body::NotACall(NOT_A_BODY.into());
    }
    if name_end == body.len() && !ctx.at_end {
        return Body::NeedMore;
    }
    if name.is_empty() {
        return Body::NotACall(NOT_A_BODY.into());
    }
    let name = name.to_owned();
    let mut pos = name_end;
    let mut pairs = Vec::new();
    loop {
        let rest = &body[pos..];
        let ws = rest.len() - rest.trim_start().len();
        let r = &rest[ws..];
        if let Some(after) = r.strip_prefix("<arg_key>") {
            let Some(k_end) = after.find("</arg_key>") else {
                return if ctx.at_end {
                    Body::Bad("unterminated <arg_key>".into())
                } else {
                    Body::Await(NEEDLE)
                };
            };
            let key = after[..k_end].trim().to_owned();
            let after_key = &after[k_end + "</arg_key>".len()..];
            let vws = after_key.len() - after_key.trim_start().len();
            let v = &after_key[vws..];
            let Some(value_text) = v.strip_prefix("<arg_value>") else {
                if v.is_empty() || "<arg_value>".starts_with(v) {
                    return if ctx.at_end {
                        Body::Bad("an <arg_key> without <arg_value>".into())
                    } else {
                        Body::Await(NEEDLE)
                    };
                }
                return Body::Bad("an <arg_key> without <arg_value>".into());
            };
            let value_at = pos
                + ws
                + "<arg_key>".len()
                + k_end
                + "</arg_key>".len()
                + vws
                + "<arg_value>".len();
            match glm_value_end(value_text, &name, &key, &pairs, ctx) {
                None => return Body::Await(NEEDLE),
                Some(Err(())) => return Body::Bad("unterminated <arg_value>".into()),
                Some(Ok((end, after))) => {
                    pairs.push((key, value_text[..end].to_owned()));
                    pos = value_at + after;
                }
            }
        } else if !ctx.at_end && (r.is_empty() || "<arg_key>".starts_with(r)) {
            // `<arg_key>` or `</tool_call>`? Only more text can tell.
            return glm_wait(&pairs);
        } else {
            return glm_close(rest, pos, &name, pairs, ctx);
        }
    }
}

/// Where a GLM value ends (value end, after its closing tag), by the same rule as the
/// `<parameter=…>` dialects: a `</arg_value>` counts only when structure follows it, the
/// block's end or an `<arg_key>` naming a parameter the tool declares (any, if it declares none)
/// and the call has not given yet. So a value holding GLM markup (an agent writing a chat
/// template) keeps it. `None`: more text must show; `Err`: the reply ended inside the value.
fn glm_value_end(
    value: &str,
    name: &str,
    key: &str,
    pairs: &[(String, String)],
    ctx: &Ctx<'_>,
) -> Option<Result<(usize, usize), ()>> {
    const VALUE_CLOSE: &str = "</arg_value>";
    const KEY: &str = "<arg_key>";
    let mut from = 0;
    while let Some(i) = value[from..].find(VALUE_CLOSE) {
        let at = from + i;
        let after = at + VALUE_CLOSE.len();
        let rest = value[after..].trim_start();
        if rest.starts_with(CLOSE) {
            return Some(Ok((at, after)));
        }
        if let Some(next) = rest.strip_prefix(KEY) {
            match next.find("</arg_key>") {
                Some(k_end) => {
                    let k = next[..k_end].trim();
                    if ctx.declares(name, k)
                        && k != key
                        && !pairs.iter().any(|(given, _)| given == k)
                    {
                        return Some(Ok((at, after)));
                    }
                }
                None if !ctx.at_end => return None,
                None => {}
            }
        } else if rest.is_empty() || KEY.starts_with(rest) || CLOSE.starts_with(rest) {
            // Can't tell yet whether this closing tag is structural.
            return if ctx.at_end {
                Some(Ok((at, after)))
            } else {
                None
            };
        }
        from = after;
    }
    if ctx.at_end { Some(Err(())) } else { None }
}

/// Before any `<arg_key>`, the next bytes may still show the span is prose (`NotACall`); after
/// one, only the closing tag decides.
fn glm_wait(pairs: &[(String, String)]) -> Body {
    if pairs.is_empty() {
        Body::NeedMore
    } else {
        Body::Await(NEEDLE)
    }
}

/// The end of a GLM call: `</tool_call>`. A word followed by anything else, before any
/// `<arg_key>`, was prose after a mention of the tag, not a call.
fn glm_close(
    rest: &str,
    pos: usize,
    name: &str,
    pairs: Vec<(String, String)>,
    ctx: &Ctx<'_>,
) -> Body {
    match close_tag(rest, CLOSE, ctx) {
        None => glm_wait(&pairs),
        Some(Ok(c)) => Body::Done {
            len: pos + c,
            calls: ctx.call_from_text_pairs(name, pairs, None).map(|c| vec![c]),
        },
        Some(Err(_)) if pairs.is_empty() => Body::NotACall(NOT_A_BODY.into()),
        Some(Err(e)) => Body::Bad(e),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{calls, scan};
    use super::*;
    use serde_json::json;

    #[test]
    fn hermes_json() {
        let t = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": \"3\"}}\n</tool_call> after";
        let (len, format, c) = calls(&Tagged, t);
        assert_eq!(&t[len..], " after");
        assert_eq!(format, "hermes");
        assert_eq!(
            c,
            vec![("get_weather".into(), json!({"city": "Paris", "days": 3}))]
        );
    }

    #[test]
    fn literal_close_tag_inside_a_json_string_does_not_end_the_call() {
        let t = "<tool_call>{\"name\": \"search\", \"arguments\": {\"query\": \"what is </tool_call>?\"}}</tool_call>";
        let (len, _, c) = calls(&Tagged, t);
        assert_eq!(len, t.len());
        assert_eq!(c[0].1, json!({"query": "what is </tool_call>?"}));
    }

    #[test]
    fn qwen3_coder_newline_and_compact_layouts() {
        let t = "<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Francisco\n</parameter>\n<parameter=days>\n5\n</parameter>\n</function>\n</tool_call>";
        let (len, format, c) = calls(&Tagged, t);
        assert_eq!((len, format), (t.len(), "qwen3_coder"));
        assert_eq!(c[0].1, json!({"city": "San Francisco", "days": 5}));
        let t = "<tool_call><function=search><parameter=query>a</parameter> literal</parameter></function></tool_call>";
        let (_, _, c) = calls(&Tagged, t);
        assert_eq!(c[0].1, json!({"query": "a</parameter> literal"}));
    }

    #[test]
    fn glm_key_values() {
        let t = "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>";
        let (len, format, c) = calls(&Tagged, t);
        assert_eq!((len, format), (t.len(), "glm45"));
        assert_eq!(c[0].1, json!({"city": "Paris", "days": 2}));
    }

    #[test]
    fn a_mention_of_the_tag_in_prose_gives_back_only_the_tag_without_waiting() {
        // Not at the end of the output: decided from the text so far, nothing held back.
        for t in [
            "<tool_call> tags wrap every call",
            "<tool_call> tag.\nMore prose",
        ] {
            match scan(&Tagged, t, false) {
                Scan::Reject { len, reason } => {
                    assert_eq!(len, OPEN.len(), "{t:?}");
                    assert!(reason.contains("not a tool call body"), "{reason}");
                }
                other => panic!("{t:?}: {other:?}"),
            }
        }
        // A word that may still be a GLM name waits.
        assert!(matches!(
            scan(&Tagged, "<tool_call>get_wea", false),
            Scan::NeedMore
        ));
    }

    #[test]
    fn a_broken_span_ends_at_the_next_opening_tag() {
        let t = "<tool_call>{\"name\": \"search\"} oops <tool_call>{\"name\": \"get_time\"}</tool_call>";
        match scan(&Tagged, t, false) {
            Scan::Reject { len, .. } => {
                assert_eq!(&t[len..], "<tool_call>{\"name\": \"get_time\"}</tool_call>")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn two_functions_in_one_block_are_two_calls() {
        let t = "<tool_call>\n<function=search>\n<parameter=query>\na\n</parameter>\n</function>\n<function=get_weather>\n<parameter=city>\nB\n</parameter>\n</function>\n</tool_call>";
        let (len, _, c) = calls(&Tagged, t);
        assert_eq!(len, t.len());
        assert_eq!(
            c,
            vec![
                ("search".into(), json!({"query": "a"})),
                ("get_weather".into(), json!({"city": "B"}))
            ]
        );
    }

    #[test]
    fn incomplete_waits_and_bad_spans_are_rejected_whole() {
        // A recognised body waits for its closing tag, searched for in new text only.
        assert!(matches!(
            scan(&Tagged, "<tool_call>{\"name\": \"get_w", false),
            Scan::Await {
                needle: "tool_call>"
            }
        ));
        assert!(matches!(
            scan(
                &Tagged,
                "<tool_call>\n<function=search>\n<parameter=query>\nlong",
                false
            ),
            Scan::Await {
                needle: "tool_call>"
            }
        ));
        // A GLM name before any <arg_key> may still turn out to be prose: plain waiting.
        assert!(matches!(
            scan(&Tagged, "<tool_call>get_time\n", false),
            Scan::NeedMore
        ));
        let t = "<tool_call>{\"name\": \"nope\", \"arguments\": {}}</tool_call>tail";
        match scan(&Tagged, t, true) {
            Scan::Reject { len, reason } => {
                assert_eq!(&t[len..], "tail");
                assert!(reason.contains("not declared"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Cut off by the end of the stream: the whole rest goes back to content.
        let t = "<tool_call>{\"name\": \"search\", \"arg";
        match scan(&Tagged, t, true) {
            Scan::Reject { len, .. } => assert_eq!(len, t.len()),
            other => panic!("{other:?}"),
        }
    }
}
