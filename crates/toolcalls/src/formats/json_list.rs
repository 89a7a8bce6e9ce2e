//! Shared reader for the dialects that put JSON calls between an opening marker and (usually) a
//! closing one: `<tool_calls>[…]</tool_calls>`, Nemotron's `<TOOLCALL>[…]</TOOLCALL>`, Granite's
//! `<|tool_call|>[…]`, Command R7B's `<|START_ACTION|>[…]<|END_ACTION|>`. The body is a JSON list
//! of calls, or objects one after another (MiniMax-M1 writes one per line).

use super::xml::{Body, settle, shared_suffix};
use super::{Call, Ctx, Format, Opener, Scan};
use crate::json::End;
use serde_json::Value;
use std::borrow::Cow;

/// A dialect of this family is one `static` of this type (see `nemotron.rs`).
pub struct JsonList {
    /// One name: the format's `PARSER_FORMATS` name.
    pub names: &'static [&'static str],
    /// One opener: the marker that starts the span.
    pub openers: &'static [Opener],
    /// `None`: the span ends with its (single) JSON value.
    pub close: Option<&'static str>,
    /// Each call is `{"NAME": {arguments}}` (Apertus) rather than `{"name": …, "arguments": …}`.
    pub keyed_by_name: bool,
}

impl Format for JsonList {
    fn names(&self) -> &'static [&'static str] {
        self.names
    }

    fn openers(&self) -> &'static [Opener] {
        self.openers
    }

    fn scan(&self, text: &str, opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        let open = opener.text;
        match self.close {
            Some(close) => {
                let body = self.body(&text[open.len()..], open, close, ctx);
                settle(text, open, close, open.len(), self.format(), body, ctx)
            }
            None => self.single(text, open, ctx),
        }
    }
}

impl JsonList {
    fn format(&self) -> &'static str {
        self.names[0]
    }

    /// Values until `close`.
    fn body(&self, body: &str, open: &'static str, close: &'static str, ctx: &Ctx<'_>) -> Body {
        let mut pos = 0;
        let mut values: Vec<Cow<'_, str>> = Vec::new();
        loop {
            let rest = &body[pos..];
            let skip = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_whitespace() || c == ',')
                    .len();
            let r = &rest[skip..];
            if r.starts_with(close) {
                let len = pos + skip + close.len();
                if values.is_empty() {
                    return Body::Done {
                        len,
                        calls: Err(format!("an empty {}", open)),
                    };
                }
                return Body::Done {
                    len,
                    calls: self.calls(&values, ctx),
                };
            }
            if r.is_empty() || close.starts_with(r) {
                if !ctx.at_end {
                    // Before the first value, the next byte may show this is prose.
                    return if values.is_empty() {
                        Body::NeedMore
                    } else {
                        Body::Await(shared_suffix(open, close))
                    };
                }
                if values.is_empty() {
                    return Body::Bad(format!(
                        "{} was never closed (the output ended inside the call)",
                        open
                    ));
                }
                if !ctx.ends_normally {
                    return Body::Bad(super::xml::cut_off(close));
                }
                // The closing marker was a stop sequence: the values are the calls.
                return Body::Done {
                    len: body.len(),
                    calls: self.calls(&values, ctx),
                };
            }
            let end = ctx.value_end(r);
            if let Some((json, at)) = ctx.closers_before(r, end, close) {
                // The closing marker came with brackets still open: the model left out the
                // last closers (repaired only if the result is valid calls).
                values.push(Cow::Owned(json));
                pos += skip + at;
                continue;
            }
            match end {
                End::Complete(n) => {
                    values.push(Cow::Borrowed(&r[..n]));
                    pos += skip + n;
                }
                End::Incomplete if ctx.at_end => {
                    return Body::Bad(format!(
                        "{} was never closed (the output ended inside the call)",
                        open
                    ));
                }
                End::Incomplete => return Body::Await(shared_suffix(open, close)),
                End::NotAValue if values.is_empty() => {
                    return Body::NotACall(format!("{} is not followed by JSON calls", open));
                }
                End::NotAValue => return Body::Bad(format!("expected {close} after the calls")),
            }
        }
    }

    /// One JSON value right after the marker, and the span ends with it.
    fn single(&self, text: &str, open: &str, ctx: &Ctx<'_>) -> Scan {
        let after = &text[open.len()..];
        let ws = after.len() - after.trim_start().len();
        let body = &after[ws..];
        if body.is_empty() {
            return ctx.unterminated(text, open);
        }
        match ctx.value_end(body) {
            End::Incomplete => ctx.unterminated(text, open),
            End::NotAValue => Scan::Reject {
                len: open.len(),
                reason: format!("{} is not followed by JSON calls", open),
            },
            End::Complete(n) => {
                let len = open.len() + ws + n;
                if !(ctx.enabled)(self.format()) {
                    let reason =
                        format!("format {} is not enabled (PARSER_FORMATS)", self.format());
                    return Scan::Reject { len, reason };
                }
                match self.calls(&[&body[..n]], ctx) {
                    Ok(calls) => Scan::Calls {
                        len,
                        format: self.format(),
                        calls,
                    },
                    Err(reason) => Scan::Reject { len, reason },
                }
            }
        }
    }

    fn calls(&self, values: &[impl AsRef<str>], ctx: &Ctx<'_>) -> Result<Vec<Call>, String> {
        let mut calls = Vec::new();
        for v in values {
            let v = v.as_ref();
            if !self.keyed_by_name {
                calls.extend(ctx.calls_from_json_text(v)?);
                continue;
            }
            let value = ctx.parse_json(v).ok_or("the call is not valid JSON")?;
            let items = match value {
                Value::Array(items) => items,
                other => vec![other],
            };
            for item in items {
                let Some((name, args)) = item
                    .as_object()
                    .filter(|o| o.len() == 1)
                    .and_then(|o| o.iter().next())
                else {
                    return Err("a call must be an object with one key, the tool's name".into());
                };
                calls.push(
                    ctx.call_from_json(serde_json::json!({"name": name, "arguments": args}))?,
                );
            }
        }
        if calls.is_empty() {
            return Err("an empty list of calls".into());
        }
        Ok(calls)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::with_ctx;
    use super::*;
    use serde_json::json;

    const LIST: JsonList = JsonList {
        names: &["t"],
        openers: &[Opener {
            text: "<tool_calls>",
            line_start: false,
            reply_start: false,
        }],
        close: Some("</tool_calls>"),
        keyed_by_name: false,
    };
    const SINGLE: JsonList = JsonList {
        names: &["t"],
        openers: &[Opener {
            text: "<|tool_call|>",
            line_start: false,
            reply_start: false,
        }],
        close: None,
        keyed_by_name: false,
    };

    fn run(list: &JsonList, text: &str, at_end: bool) -> Scan {
        with_ctx(at_end, |ctx| list.scan(text, &list.openers[0], ctx))
    }

    fn args(scan: Scan) -> (usize, Vec<Value>) {
        match scan {
            Scan::Calls { len, calls, .. } => (
                len,
                calls
                    .into_iter()
                    .map(|c| Value::Object(c.arguments))
                    .collect(),
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_list_or_one_object_per_line() {
        let t = "<tool_calls>[{\"name\": \"search\", \"arguments\": {\"query\": \"a\"}}]</tool_calls> rest";
        assert_eq!(
            args(run(&LIST, t, false)),
            (t.len() - 5, vec![json!({"query": "a"})])
        );
        let t = "<tool_calls>\n{\"name\": \"search\", \"arguments\": {\"query\": \"a\"}}\n{\"name\": \"search\", \"arguments\": {}}\n</tool_calls>";
        assert_eq!(
            args(run(&LIST, t, true)).1,
            vec![json!({"query": "a"}), json!({})]
        );
    }

    #[test]
    fn prose_after_the_marker_gives_back_only_the_marker() {
        match run(&LIST, "<tool_calls> is the tag", false) {
            Scan::Reject { len, .. } => assert_eq!(len, "<tool_calls>".len()),
            other => panic!("{other:?}"),
        }
        match run(&SINGLE, "<|tool_call|> is the token", false) {
            Scan::Reject { len, .. } => assert_eq!(len, "<|tool_call|>".len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unclosed_waits_then_gives_back_everything() {
        let t = "<tool_calls>[{\"name\": \"search\", \"arguments\": {\"query\": \"a";
        assert!(matches!(
            run(&LIST, t, false),
            Scan::Await {
                needle: "tool_calls>"
            }
        ));
        match run(&LIST, t, true) {
            Scan::Reject { len, reason } => {
                assert_eq!((len, reason.contains("never closed")), (t.len(), true))
            }
            other => panic!("{other:?}"),
        }
        let t = "<|tool_call|>[{\"name\": \"search\", \"arguments\": {}}]";
        assert_eq!(args(run(&SINGLE, t, true)), (t.len(), vec![json!({})]));
    }
}
