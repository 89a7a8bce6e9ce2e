//! Llama 3.x JSON tool calls: after `<|python_tag|>` (`{"name": …, "parameters": {…}}`, several
//! separated by `;`), or as a bare JSON object that is the *entire* message (Llama 3.1/3.2's
//! custom tool format, and many fine-tunes). A bare object counts only when nothing else is in
//! the message and every name is declared, so an answer that happens to be JSON stays content.

use super::{Call, Ctx, Format, Opener, Scan, WholeMessage};
use crate::json::{End, value_end};

pub struct PythonTag;

const TAG: &str = "<|python_tag|>";
const ENDS: &[&str] = &["<|eom_id|>", "<|eot_id|>"];

impl Format for PythonTag {
    fn names(&self) -> &'static [&'static str] {
        &["llama3"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[Opener {
            text: TAG,
            line_start: false,
            reply_start: false,
        }]
    }

    fn scan(&self, text: &str, _opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        let mut pos = TAG.len();
        let mut calls = Vec::new();
        loop {
            let rest = &text[pos..];
            let ws = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_whitespace() || c == ';')
                    .len();
            let r = &rest[ws..];
            if let Some(end) = ENDS.iter().find(|e| r.starts_with(**e)) {
                pos += ws + end.len();
                break;
            }
            if r.starts_with('{') {
                match ctx.value_end(r) {
                    End::Complete(n) => match ctx.calls_from_json_text(&r[..n]) {
                        Ok(mut c) => {
                            calls.append(&mut c);
                            pos += ws + n;
                        }
                        Err(reason) => {
                            return Scan::Reject {
                                len: pos + ws + n,
                                reason,
                            };
                        }
                    },
                    _ => return ctx.unterminated(text, TAG),
                }
                continue;
            }
            if r.is_empty() || ENDS.iter().any(|e| e.starts_with(r)) {
                if !ctx.at_end {
                    return Scan::NeedMore;
                }
                pos = text.len();
            }
            // Anything else ends the span; whitespace before it stays with the text after.
            break;
        }
        if calls.is_empty() {
            return Scan::Reject {
                len: TAG.len(),
                reason: "<|python_tag|> is not followed by a JSON call".into(),
            };
        }
        Scan::Calls {
            len: pos,
            format: "llama3",
            calls,
        }
    }
}

/// A message that is nothing but one or more JSON calls.
pub struct BareJson;

impl WholeMessage for BareJson {
    fn name(&self) -> &'static str {
        "llama3_json"
    }

    fn may_start_with(&self, c: char) -> bool {
        c == '{' || c == '['
    }

    fn parse(&self, text: &str, ctx: &Ctx<'_>) -> Result<Vec<Call>, String> {
        let mut calls: Vec<Call> = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            let End::Complete(n) = value_end(rest) else {
                return Err("the message is not only JSON tool calls".into());
            };
            calls.extend(ctx.calls_from_json_text(&rest[..n])?);
            rest = rest[n..].trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        }
        if calls.is_empty() {
            return Err("no calls".into());
        }
        Ok(calls)
    }

    /// Every value in the message is an object with a name and arguments (Rapid-MLX PR#703's
    /// rule), or a list of them: a call, even if not a valid one.
    fn looks_like_calls(&self, text: &str) -> bool {
        let call_shaped = |v: &serde_json::Value| {
            let inner = v.get("function").unwrap_or(v);
            inner.get("name").is_some_and(serde_json::Value::is_string)
                && ["arguments", "parameters", "args", "input"]
                    .iter()
                    .any(|k| inner.get(*k).is_some())
        };
        let mut rest = text.trim();
        let mut any = false;
        while !rest.is_empty() {
            let End::Complete(n) = value_end(rest) else {
                return false;
            };
            let shaped = match crate::json::parse_lenient(&rest[..n]) {
                Some(serde_json::Value::Array(items)) => {
                    !items.is_empty() && items.iter().all(call_shaped)
                }
                Some(v) => call_shaped(&v),
                None => false,
            };
            if !shaped {
                return false;
            }
            any = true;
            rest = rest[n..].trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{calls, with_ctx};
    use super::*;
    use serde_json::json;

    #[test]
    fn python_tag_with_several_calls() {
        let t = "<|python_tag|>{\"name\": \"search\", \"parameters\": {\"query\": \"a\"}}; {\"name\": \"get_weather\", \"parameters\": {\"city\": \"b\"}}<|eom_id|>";
        let (len, _, c) = calls(&PythonTag, t);
        assert_eq!((len, c.len()), (t.len(), 2));
    }

    #[test]
    fn bare_json_only_when_it_is_the_whole_message() {
        with_ctx(true, |ctx| {
            let c = BareJson
                .parse(
                    "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}\n",
                    ctx,
                )
                .unwrap();
            assert_eq!(
                serde_json::Value::Object(c[0].arguments.clone()),
                json!({"city": "Paris"})
            );
            assert!(
                BareJson
                    .parse(
                        "{\"name\": \"get_weather\", \"parameters\": {}} and more",
                        ctx
                    )
                    .is_err()
            );
            assert!(BareJson.parse("{\"answer\": 42}", ctx).is_err());
            // Shaped like a call (name and arguments) though not a valid one: worth a reason.
            assert!(BareJson.looks_like_calls(
                "{\"name\": \"nope\", \"arguments\": {}}; [{\"name\": \"x\", \"parameters\": {}}]"
            ));
            assert!(!BareJson.looks_like_calls("{\"name\": \"Bob\", \"age\": 41}"));
            assert!(!BareJson.looks_like_calls("{\"name\": \"x\", \"arguments\": {}} and prose"));
        })
    }
}
