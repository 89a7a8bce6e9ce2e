//! `<tool_call>…</tool_call>`, whose body decides the dialect (sniffed per call, so a model may
//! switch between turns, and Qwen3-Coder behind a Hermes parser still works):
//! - `{"name": …, "arguments": {…}}` — Hermes / Qwen 2.5 / Qwen3 (`hermes`);
//! - `<function=NAME><parameter=K>V</parameter></function>` — Qwen3-Coder (`qwen3_coder`), values
//!   as raw text, newline or compact layout;
//! - `NAME\n<arg_key>K</arg_key>\n<arg_value>V</arg_value>` — GLM 4.5/4.6/4.7 (`glm45`).
//!
//! Closing tags are found structurally: a `</parameter>` ends a value only when what follows is
//! the next `<parameter=`, `</function>`; a `</tool_call>` inside a JSON string is just text.

use super::{Call, Ctx, Format, Opener, Scan};
use crate::json::{End, value_end};

pub struct Tagged;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

impl Format for Tagged {
    fn names(&self) -> &'static [&'static str] {
        &["hermes", "qwen3_coder", "glm45"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[Opener {
            text: OPEN,
            line_start: false,
        }]
    }

    fn scan(&self, text: &str, _opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        let body_start = OPEN.len();
        let body = &text[body_start..];
        let lead = body.len() - body.trim_start().len();
        let rest = &body[lead..];
        if rest.is_empty() {
            return ctx.unterminated(text, "<tool_call>");
        }
        let (format, parsed) = if rest.starts_with('{') || rest.starts_with('[') {
            ("hermes", hermes(rest, ctx))
        } else if rest.starts_with("<function=") || "<function=".starts_with(rest) {
            ("qwen3_coder", qwen3_coder(rest, ctx))
        } else {
            ("glm45", glm(rest, ctx))
        };
        match parsed {
            Parsed::NeedMore => ctx.unterminated(text, "<tool_call>"),
            Parsed::Done { len, calls } => {
                let len = body_start + lead + len;
                if !(ctx.enabled)(format) {
                    return Scan::Reject {
                        len,
                        reason: format!("format {format} is not enabled (PARSER_FORMATS)"),
                    };
                }
                match calls {
                    Ok(calls) => Scan::Calls { len, format, calls },
                    Err(reason) => Scan::Reject { len, reason },
                }
            }
            Parsed::Bad(reason) => {
                // Give back the whole span up to its closing tag (or everything, at the end).
                match text.find(CLOSE) {
                    Some(i) => Scan::Reject {
                        len: i + CLOSE.len(),
                        reason,
                    },
                    None if ctx.at_end => Scan::Reject {
                        len: text.len(),
                        reason,
                    },
                    None => Scan::NeedMore,
                }
            }
        }
    }
}

enum Parsed {
    NeedMore,
    /// `len` bytes of the body (through `</tool_call>`), with the calls or why they are invalid.
    Done {
        len: usize,
        calls: Result<Vec<Call>, String>,
    },
    /// The body is not any known dialect.
    Bad(String),
}

/// After a body, expects optional whitespace and `</tool_call>`. A body that simply ends (the
/// server used `</tool_call>` as a stop sequence) is complete at the end of the output.
fn close(after: &str, ctx: &Ctx<'_>) -> Option<Result<usize, String>> {
    let ws = after.len() - after.trim_start().len();
    let rest = &after[ws..];
    if rest.starts_with(CLOSE) {
        return Some(Ok(ws + CLOSE.len()));
    }
    if rest.is_empty() || CLOSE.starts_with(rest) {
        return if ctx.at_end {
            Some(Ok(after.len()))
        } else {
            None
        };
    }
    Some(Err(format!(
        "expected </tool_call> after the call, found {:?}",
        preview(rest, &[CLOSE])
    )))
}

/// The text that showed the span was wrong: the shortest prefix of `s` that no expected marker
/// starts with. Exactly that much had to be seen, so the reason is the same however the text
/// arrived.
fn preview(s: &str, expected: &[&str]) -> String {
    let mut end = 0;
    for (i, c) in s.char_indices() {
        end = i + c.len_utf8();
        if !expected.iter().any(|m| m.starts_with(&s[..end])) {
            break;
        }
    }
    s[..end].to_owned()
}

fn hermes(body: &str, ctx: &Ctx<'_>) -> Parsed {
    match value_end(body) {
        End::Incomplete => Parsed::NeedMore,
        End::NotAValue => Parsed::Bad("not a JSON call".into()),
        End::Complete(n) => match close(&body[n..], ctx) {
            None => Parsed::NeedMore,
            Some(Ok(c)) => Parsed::Done {
                len: n + c,
                calls: ctx.calls_from_json_text(&body[..n]),
            },
            Some(Err(e)) => Parsed::Bad(e),
        },
    }
}

/// Finds the end of a value whose closing tag is `close`, structurally: the closing tag counts
/// only when whitespace and then one of `next` follow it. Returns (value end, after close tag).
fn structural_end(
    s: &str,
    close: &str,
    next: &[&str],
    at_end: bool,
) -> Option<Result<(usize, usize), ()>> {
    let mut from = 0;
    while let Some(i) = s[from..].find(close) {
        let at = from + i;
        let after = &s[at + close.len()..];
        let rest = after.trim_start();
        if next.iter().any(|n| rest.starts_with(n)) {
            return Some(Ok((at, at + close.len())));
        }
        if rest.is_empty() || next.iter().any(|n| n.starts_with(rest)) {
            // Can't tell yet whether this closing tag is structural.
            return if at_end {
                Some(Ok((at, at + close.len())))
            } else {
                None
            };
        }
        from = at + close.len();
    }
    if at_end { Some(Err(())) } else { None }
}

/// Strips the one newline the layout puts after an opening tag and before a closing one.
fn layout_trim(v: &str) -> &str {
    let v = v
        .strip_prefix("\r\n")
        .or_else(|| v.strip_prefix('\n'))
        .unwrap_or(v);
    v.strip_suffix("\r\n")
        .or_else(|| v.strip_suffix('\n'))
        .unwrap_or(v)
}

fn qwen3_coder(body: &str, ctx: &Ctx<'_>) -> Parsed {
    const FN: &str = "<function=";
    if body.len() < FN.len() {
        return Parsed::NeedMore;
    }
    let Some(gt) = body.find('>') else {
        return if ctx.at_end {
            Parsed::Bad("unterminated <function=".into())
        } else {
            Parsed::NeedMore
        };
    };
    let name = body[FN.len()..gt].trim().to_owned();
    let mut pos = gt + 1;
    let mut pairs = Vec::new();
    loop {
        let rest = &body[pos..];
        let ws = rest.len() - rest.trim_start().len();
        let r = &rest[ws..];
        if let Some(after_key) = r.strip_prefix("<parameter=") {
            let Some(gt) = after_key.find('>') else {
                return if ctx.at_end {
                    Parsed::Bad("unterminated <parameter=".into())
                } else {
                    Parsed::NeedMore
                };
            };
            let key = after_key[..gt].trim().to_owned();
            let value_at = pos + ws + "<parameter=".len() + gt + 1;
            let value_text = &body[value_at..];
            match structural_end(
                value_text,
                "</parameter>",
                &["<parameter=", "</function>"],
                ctx.at_end,
            ) {
                None => return Parsed::NeedMore,
                Some(Err(())) => return Parsed::Bad("unterminated <parameter=…> value".into()),
                Some(Ok((end, after))) => {
                    pairs.push((key, layout_trim(&value_text[..end]).to_owned()));
                    pos = value_at + after;
                }
            }
        } else if let Some(after_fn) = r.strip_prefix("</function>") {
            let fn_end = pos + ws + "</function>".len();
            return match close(after_fn, ctx) {
                None => Parsed::NeedMore,
                Some(Ok(c)) => Parsed::Done {
                    len: fn_end + c,
                    calls: ctx
                        .call_from_text_pairs(&name, pairs, None)
                        .map(|c| vec![c]),
                },
                Some(Err(e)) => Parsed::Bad(e),
            };
        } else if r.is_empty() || "<parameter=".starts_with(r) || "</function>".starts_with(r) {
            return if ctx.at_end {
                Parsed::Bad("the function body was never closed".into())
            } else {
                Parsed::NeedMore
            };
        } else {
            return Parsed::Bad(format!(
                "unexpected text in the function body: {:?}",
                preview(r, &["<parameter=", "</function>"])
            ));
        }
    }
}

fn glm(body: &str, ctx: &Ctx<'_>) -> Parsed {
    let name_end = body.find(['\n', '<']).unwrap_or(body.len());
    if name_end == body.len() && !ctx.at_end {
        return Parsed::NeedMore;
    }
    let name = body[..name_end].trim().to_owned();
    if name.is_empty() || name.contains(char::is_whitespace) || name.len() > 128 {
        return Parsed::Bad(
            "not a tool call body (neither JSON, <function=, nor a GLM name)".into(),
        );
    }
    let mut pos = name_end;
    let mut pairs = Vec::new();
    loop {
        let rest = &body[pos..];
        let ws = rest.len() - rest.trim_start().len();
        let r = &rest[ws..];
        if let Some(after) = r.strip_prefix("<arg_key>") {
            let Some(k_end) = after.find("</arg_key>") else {
                return if ctx.at_end {
                    Parsed::Bad("unterminated <arg_key>".into())
                } else {
                    Parsed::NeedMore
                };
            };
            let key = after[..k_end].trim().to_owned();
            let after_key = &after[k_end + "</arg_key>".len()..];
            let vws = after_key.len() - after_key.trim_start().len();
            let v = &after_key[vws..];
            let Some(value_text) = v.strip_prefix("<arg_value>") else {
                if v.is_empty() || "<arg_value>".starts_with(v) {
                    return if ctx.at_end {
                        Parsed::Bad("an <arg_key> without <arg_value>".into())
                    } else {
                        Parsed::NeedMore
                    };
                }
                return Parsed::Bad("an <arg_key> without <arg_value>".into());
            };
            let value_at = pos
                + ws
                + "<arg_key>".len()
                + k_end
                + "</arg_key>".len()
                + vws
                + "<arg_value>".len();
            match structural_end(
                value_text,
                "</arg_value>",
                &["<arg_key>", CLOSE],
                ctx.at_end,
            ) {
                None => return Parsed::NeedMore,
                Some(Err(())) => return Parsed::Bad("unterminated <arg_value>".into()),
                Some(Ok((end, after))) => {
                    pairs.push((key, value_text[..end].to_owned()));
                    pos = value_at + after;
                }
            }
        } else {
            return match close(rest, ctx) {
                None => Parsed::NeedMore,
                Some(Ok(c)) => Parsed::Done {
                    len: pos + c,
                    calls: ctx
                        .call_from_text_pairs(&name, pairs, None)
                        .map(|c| vec![c]),
                },
                Some(Err(e)) => Parsed::Bad(e),
            };
        }
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
    fn incomplete_waits_and_bad_spans_are_rejected_whole() {
        assert!(matches!(
            scan(&Tagged, "<tool_call>{\"name\": \"get_w", false),
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
